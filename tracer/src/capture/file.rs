//! File framing: a header with what decoding and replay need (versions, kernel,
//! clock, the kernel's enums and tracepoint layouts), then chunks, each with a length
//! and a CRC32 so that a cut-off or damaged file still reads up to its last good
//! chunk, skipping damaged ones.
use std::{
    ffi::OsStr,
    fs::{self, File},
    io::{self, Read, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use bytes::{Buf, BufMut, BytesMut};

use super::codec::{decode_chunk, get_varint, put_varint, ChunkEncoder};
use crate::{
    base::{
        private_file::{self, file_id, Dir, FileId},
        record::Record,
    },
    kernel::{hooks, info::KernelInfo, tracefs::Field},
};

pub const MAGIC: &[u8; 8] = b"RSTRACE\0";
/// Format version written; readers accept every version up to theirs.
pub const FORMAT_VERSION: u16 = 1;
const CHUNK_MAGIC: u32 = u32::from_le_bytes(*b"CHNK");
const CHUNK_HEADER: usize = 12;
/// Chunks are closed at this size; longer ones are taken as damage.
const CHUNK_TARGET: usize = 256 * 1024;
const CHUNK_MAX: usize = 16 * 1024 * 1024;
/// Headers longer than this are refused unread (rstrace writes a few KiB).
const HEADER_MAX: usize = CHUNK_MAX;

// Header fields (tag, length, value); readers skip tags they do not know.
const T_VERSION: u8 = 1;
const T_KERNEL: u8 = 2;
const T_HOSTNAME: u8 = 3;
const T_CLOCK: u8 = 4;
const T_DROP_REASONS: u8 = 5;
const T_RST_REASONS: u8 = 6;
const T_FORMATS: u8 = 7;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Header {
    pub format: u16,
    pub rstrace_version: String,
    pub kernel: String,
    pub hostname: String,
    /// CLOCK_MONOTONIC and wall-clock (ns since the epoch) read at the same instant.
    pub clock_mono_ns: u64,
    pub clock_wall_ns: u64,
    pub drop_reasons: Vec<(u64, String)>,
    pub rst_reasons: Vec<(u64, String)>,
    /// Tracepoint layouts: (category:name, fields).
    pub formats: Vec<(String, Vec<Field>)>,
}

fn put_str(b: &mut BytesMut, s: &str) {
    put_varint(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

fn get_str(b: &mut &[u8]) -> Result<String> {
    let n = get_varint(b)? as usize;
    if b.remaining() < n {
        bail!("truncated string");
    }
    let s = String::from_utf8_lossy(&b[..n]).into_owned();
    b.advance(n);
    Ok(s)
}

fn put_table(b: &mut BytesMut, t: &[(u64, String)]) {
    put_varint(b, t.len() as u64);
    for (v, n) in t {
        put_varint(b, *v);
        put_str(b, n);
    }
}

fn get_table(b: &mut &[u8]) -> Result<Vec<(u64, String)>> {
    let n = get_varint(b)? as usize;
    let mut out = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let v = get_varint(b)?;
        out.push((v, get_str(b)?));
    }
    Ok(out)
}

impl Header {
    pub fn new(info: &KernelInfo, clock: crate::base::clock::Clock) -> Header {
        let sorted = |m: &std::collections::HashMap<u64, String>| {
            let mut v: Vec<(u64, String)> = m.iter().map(|(k, v)| (*k, v.clone())).collect();
            v.sort();
            v
        };
        let mut formats: Vec<(String, Vec<Field>)> = info
            .formats
            .iter()
            .map(|(h, f)| {
                let s = hooks::spec(*h);
                (format!("{}:{}", s.category, s.name), f.fields.clone())
            })
            .collect();
        formats.sort_by(|a, b| a.0.cmp(&b.0));
        Header {
            format: FORMAT_VERSION,
            rstrace_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel: info.release.clone(),
            hostname: fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            clock_mono_ns: clock.mono_ns,
            clock_wall_ns: clock
                .wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            drop_reasons: sorted(&info.drop_reasons),
            rst_reasons: sorted(&info.rst_reasons),
            formats,
        }
    }

    pub fn clock(&self) -> crate::base::clock::Clock {
        crate::base::clock::Clock {
            mono_ns: self.clock_mono_ns,
            wall: SystemTime::UNIX_EPOCH + Duration::from_nanos(self.clock_wall_ns),
        }
    }

    pub fn encode(&self) -> BytesMut {
        let mut body = BytesMut::new();
        let mut field = |tag: u8, f: &dyn Fn(&mut BytesMut)| {
            let mut v = BytesMut::new();
            f(&mut v);
            body.put_u8(tag);
            put_varint(&mut body, v.len() as u64);
            body.extend_from_slice(&v);
        };
        field(T_VERSION, &|b| put_str(b, &self.rstrace_version));
        field(T_KERNEL, &|b| put_str(b, &self.kernel));
        field(T_HOSTNAME, &|b| put_str(b, &self.hostname));
        field(T_CLOCK, &|b| {
            b.put_u64_le(self.clock_mono_ns);
            b.put_u64_le(self.clock_wall_ns);
        });
        field(T_DROP_REASONS, &|b| put_table(b, &self.drop_reasons));
        field(T_RST_REASONS, &|b| put_table(b, &self.rst_reasons));
        field(T_FORMATS, &|b| {
            put_varint(b, self.formats.len() as u64);
            for (name, fields) in &self.formats {
                put_str(b, name);
                put_varint(b, fields.len() as u64);
                for f in fields {
                    put_str(b, &f.name);
                    put_str(b, &f.ctype);
                    put_varint(b, f.offset as u64);
                    put_varint(b, f.size as u64);
                    b.put_u8(f.signed as u8);
                }
            }
        });
        let mut out = BytesMut::with_capacity(body.len() + 18);
        out.extend_from_slice(MAGIC);
        out.put_u16_le(FORMAT_VERSION);
        out.put_u32_le(body.len() as u32);
        out.put_u32_le(crc32fast::hash(&body));
        out.extend_from_slice(&body);
        out
    }

    /// Parses the header; returns it and the bytes it took.
    pub fn decode(data: &[u8]) -> Result<(Header, usize)> {
        if data.len() < 18 || &data[..8] != MAGIC {
            bail!("not an rstrace capture file (bad magic)");
        }
        let mut b = &data[8..];
        let format = b.get_u16_le();
        if format > FORMAT_VERSION {
            bail!("capture format {format} is newer than this rstrace reads ({FORMAT_VERSION}): upgrade rstrace");
        }
        let len = b.get_u32_le() as usize;
        let crc = b.get_u32_le();
        if len > HEADER_MAX {
            bail!("a header of {len} bytes is longer than any rstrace writes");
        }
        if b.remaining() < len {
            bail!("header cut off ({} of {len} bytes)", b.remaining());
        }
        let body = &b[..len];
        if crc32fast::hash(body) != crc {
            bail!("header checksum mismatch: the file's start is damaged");
        }
        let mut h = Header {
            format,
            ..Default::default()
        };
        let mut b = body;
        while b.has_remaining() {
            let tag = b.get_u8();
            let n = get_varint(&mut b)? as usize;
            if b.remaining() < n {
                bail!("header field {tag} cut off");
            }
            let mut v = &b[..n];
            b.advance(n);
            match tag {
                T_VERSION => h.rstrace_version = get_str(&mut v)?,
                T_KERNEL => h.kernel = get_str(&mut v)?,
                T_HOSTNAME => h.hostname = get_str(&mut v)?,
                T_CLOCK if v.len() >= 16 => {
                    h.clock_mono_ns = v.get_u64_le();
                    h.clock_wall_ns = v.get_u64_le();
                }
                T_DROP_REASONS => h.drop_reasons = get_table(&mut v)?,
                T_RST_REASONS => h.rst_reasons = get_table(&mut v)?,
                T_FORMATS => {
                    let n = get_varint(&mut v)? as usize;
                    for _ in 0..n.min(64) {
                        let name = get_str(&mut v)?;
                        let nf = get_varint(&mut v)? as usize;
                        let mut fields = Vec::new();
                        for _ in 0..nf.min(256) {
                            let fname = get_str(&mut v)?;
                            let ctype = get_str(&mut v)?;
                            let offset = get_varint(&mut v)? as usize;
                            let size = get_varint(&mut v)? as usize;
                            let signed = v.has_remaining() && v.get_u8() != 0;
                            fields.push(Field {
                                name: fname,
                                ctype,
                                offset,
                                size,
                                signed,
                            });
                        }
                        h.formats.push((name, fields));
                    }
                }
                _ => {} // A newer writer's field.
            }
        }
        Ok((h, 18 + len))
    }
}

fn frame(payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(payload.len() + CHUNK_HEADER);
    out.put_u32_le(CHUNK_MAGIC);
    out.put_u32_le(payload.len() as u32);
    out.put_u32_le(crc32fast::hash(payload));
    out.extend_from_slice(payload);
    out
}

/// When to start a new file and how many old ones to keep.
#[derive(Clone, Copy, Debug)]
pub struct RotatePolicy {
    pub max_bytes: Option<u64>,
    /// Rotated files kept (FILE.1 is the newest).
    pub keep: usize,
}

impl RotatePolicy {
    /// One file, however large.
    pub const NEVER: RotatePolicy = RotatePolicy {
        max_bytes: None,
        keep: 0,
    };
}

/// How a recording names its files.
enum Naming {
    /// One name; rotation shifts the old files to FILE.1, FILE.2 ... within the
    /// capture's directory, opened once.
    Shift(Dir),
    /// A new file named by its start time at each rotation, in a directory kept
    /// within a disk budget.
    InDir(super::dir::CaptureDir),
}

pub struct CaptureWriter {
    naming: Naming,
    /// The file being written (its name is the one in `naming`'s directory).
    path: PathBuf,
    file: File,
    /// The file being written, to tell whether its name still refers to it.
    id: FileId,
    header: Header,
    enc: ChunkEncoder,
    chunk_started: Option<Instant>,
    flush_every: Duration,
    rotate: RotatePolicy,
    written: u64,
    pub records: u64,
    pub chunks: u64,
}

impl CaptureWriter {
    /// Creates the capture file: an existing `path` is an error unless `replace`, and
    /// is then replaced by a new file (crate::base::private_file has the rules).
    pub fn create(
        path: &Path,
        replace: bool,
        header: Header,
        rotate: RotatePolicy,
        flush_every: Duration,
    ) -> Result<CaptureWriter> {
        let (dir, name) = Dir::of(path)?;
        let h = header.encode();
        let file = dir
            .create(&name, replace, &h)
            .with_context(|| format!("creating the capture file {}", path.display()))?;
        CaptureWriter::new(
            Naming::Shift(dir),
            path.to_path_buf(),
            file,
            h.len(),
            header,
            rotate,
            flush_every,
        )
    }

    /// Starts a new file in the directory `path` (created when missing), named by the
    /// time (capture::dir); the directory's oldest files are deleted whenever its
    /// files take more than `budget` bytes.
    pub fn in_dir(
        path: &Path,
        budget: u64,
        header: Header,
        rotate: RotatePolicy,
        flush_every: Duration,
    ) -> Result<CaptureWriter> {
        // The open file may pass its rotation size by one chunk before it rotates.
        let reserve = rotate.max_bytes.unwrap_or(budget) + CHUNK_TARGET as u64;
        let mut cd = super::dir::CaptureDir::open(path, budget, reserve)
            .with_context(|| format!("opening the capture directory {}", path.display()))?;
        let h = header.encode();
        let (file, name) = cd
            .create_next(&h)
            .with_context(|| format!("creating a capture file in {}", path.display()))?;
        cd.prune(&name)
            .with_context(|| format!("keeping {} within its disk budget", path.display()))?;
        CaptureWriter::new(
            Naming::InDir(cd),
            path.join(name),
            file,
            h.len(),
            header,
            rotate,
            flush_every,
        )
    }

    /// Both constructors' common part: `file` is open with its header written.
    fn new(
        naming: Naming,
        path: PathBuf,
        file: File,
        header_len: usize,
        header: Header,
        rotate: RotatePolicy,
        flush_every: Duration,
    ) -> Result<CaptureWriter> {
        Ok(CaptureWriter {
            naming,
            id: file_id(&file)?,
            path,
            file,
            header,
            enc: ChunkEncoder::default(),
            chunk_started: None,
            flush_every,
            rotate,
            written: header_len as u64,
            records: 0,
            chunks: 0,
        })
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its name in the capture's directory.
    fn name(&self) -> &OsStr {
        self.path.file_name().unwrap_or_default()
    }

    pub fn write(&mut self, r: &Record) -> io::Result<()> {
        self.enc.push(r);
        self.records += 1;
        self.chunk_started.get_or_insert_with(Instant::now);
        if self.enc.size() >= CHUNK_TARGET {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the open chunk if it is older than the flush interval.
    /// Whether records wait for the flush interval to be written.
    pub fn holds_records(&self) -> bool {
        self.chunk_started.is_some()
    }

    pub fn tick(&mut self) -> io::Result<()> {
        if self
            .chunk_started
            .is_some_and(|t| t.elapsed() >= self.flush_every)
        {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes the open chunk and makes it durable.
    pub fn flush(&mut self) -> io::Result<()> {
        self.chunk_started = None;
        if self.enc.is_empty() {
            return Ok(());
        }
        let payload = self.enc.finish();
        let framed = frame(&payload);
        self.file.write_all(&framed)?;
        self.file.sync_data()?;
        self.written += framed.len() as u64;
        self.chunks += 1;
        Ok(())
    }

    pub fn wants_rotation(&self) -> bool {
        self.rotate.max_bytes.is_some_and(|m| self.written >= m)
    }

    /// Starts a new file, shifting the old ones (FILE -> FILE.1 -> FILE.2 ...), and
    /// opens it with `context` so that it explains on its own. A rotation name holding
    /// anything but one of rstrace's own files stops the recording.
    pub fn rotate(&mut self, context: &[Record]) -> io::Result<()> {
        self.flush()?;
        if let Naming::Shift(dir) = &self.naming {
            self.shift(dir).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("rotating {}: {e}; recording stopped", self.path.display()),
                )
            })?;
        }
        let mut header = self.header.clone();
        let now = crate::base::clock::Clock::now();
        header.clock_mono_ns = now.mono_ns;
        header.clock_wall_ns = now
            .wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let h = header.encode();
        let file = match &mut self.naming {
            // A name planted since the shift makes this fail: nothing is overwritten.
            Naming::Shift(dir) => {
                dir.create(self.path.file_name().unwrap_or_default(), false, &h)?
            }
            Naming::InDir(cd) => {
                let (file, name) = cd.create_next(&h)?;
                if let Err(e) = cd.prune(&name) {
                    log::warn!(
                        "keeping {} within its disk budget: {e}",
                        cd.display(OsStr::new(""))
                    );
                }
                self.path.set_file_name(name);
                file
            }
        };
        self.id = file_id(&file)?;
        self.file = file;
        self.written = h.len() as u64;
        for r in context {
            self.enc.push(r);
        }
        self.flush()
    }

    /// Renames the files one place down. The checks make an attacker's planted link
    /// an error; they are not what keeps it safe: renameat and unlinkat act on the
    /// name and never follow it, whatever is swapped in after the check.
    fn shift(&self, dir: &Dir) -> io::Result<()> {
        let name = self.name();
        let rotated = |i: usize| {
            let mut n = name.to_os_string();
            n.push(format!(".{i}"));
            n
        };
        match dir.stat(name)? {
            Some(st) if private_file::id(&st) == self.id => {}
            _ => {
                return Err(io::Error::other(format!(
                    "{} is no longer the file this recording writes (moved or replaced)",
                    self.path.display()
                )))
            }
        }
        let keep = self.rotate.keep;
        if keep == 0 {
            return dir.unlink(name);
        }
        if dir.own_file(&rotated(keep))? {
            dir.unlink(&rotated(keep))?;
        }
        for i in (1..keep).rev() {
            if dir.own_file(&rotated(i))? {
                dir.own_file(&rotated(i + 1))?;
                dir.rename(&rotated(i), &rotated(i + 1))?;
            }
        }
        dir.own_file(&rotated(1))?;
        dir.rename(name, &rotated(1))
    }
}

/// Bytes asked of the file per read once the header is read; a chunk larger than this
/// grows the window to hold it whole (up to CHUNK_MAX).
const READ_SIZE: usize = 1024 * 1024;
/// The header is read with a smaller window: many rotated files are opened at once.
const HEADER_READ_SIZE: usize = 64 * 1024;

/// Reads a capture file chunk by chunk, skipping damage (the reasons are in
/// `warnings`). The file is streamed through a window that holds the chunk being
/// decoded and what the last read brought after it, so memory does not grow with the
/// file: each byte is read into the window once and decoded from there.
pub struct Reader {
    pub header: Header,
    src: Box<dyn Read>,
    /// The window: `buf[start..end]` is read and not yet consumed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    read_size: usize,
    /// File offset of `buf[start]`.
    offset: u64,
    /// The file's size when known (for progress).
    size: Option<u64>,
    pub warnings: Vec<String>,
    pub chunks: u64,
    name: String,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader> {
        let name = path.display().to_string();
        let file = File::open(path).with_context(|| format!("reading {name}"))?;
        let size = file
            .metadata()
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len());
        let mut r = Reader::from_read(Box::new(file), &name, READ_SIZE)?;
        r.size = size;
        Ok(r)
    }

    pub fn from_bytes(data: Vec<u8>, name: &str) -> Result<Reader> {
        let size = data.len() as u64;
        let mut r = Reader::from_read(Box::new(io::Cursor::new(data)), name, READ_SIZE)?;
        r.size = Some(size);
        Ok(r)
    }

    /// Reads the header from `src`; then reads `read_size` bytes at a time (small
    /// sizes are for tests that cut chunks at every window boundary).
    pub fn from_read(src: Box<dyn Read>, name: &str, read_size: usize) -> Result<Reader> {
        let mut r = Reader {
            header: Header::default(),
            src,
            buf: Vec::new(),
            start: 0,
            end: 0,
            eof: false,
            read_size: read_size.clamp(1, HEADER_READ_SIZE),
            offset: 0,
            size: None,
            warnings: Vec::new(),
            chunks: 0,
            name: name.to_string(),
        };
        let unreadable = || format!("{name}: unreadable header");
        let have = r.fill(18).with_context(|| format!("reading {name}"))?;
        let w = r.window();
        let len = if have >= 18 && w[..8] == MAGIC[..] {
            u32::from_le_bytes([w[10], w[11], w[12], w[13]]) as usize
        } else {
            0
        };
        // A length no rstrace writes (or a newer format) is refused by Header::decode
        // from the first 18 bytes: nothing after them is read.
        let want = 18 + if len <= HEADER_MAX { len } else { 0 };
        r.fill(want).with_context(|| format!("reading {name}"))?;
        let (header, used) = Header::decode(r.window()).with_context(unreadable)?;
        r.header = header;
        r.consume(used);
        r.read_size = read_size.max(1);
        Ok(r)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bytes of the file read and decoded (or skipped) so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The file's size, when it is a regular file.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    fn window(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.end - self.start);
        self.start += n;
        self.offset += n as u64;
    }

    /// Reads until the window holds `n` bytes or the file ends; returns what it holds.
    fn fill(&mut self, n: usize) -> io::Result<usize> {
        while self.end - self.start < n && !self.eof {
            if self.buf.len() - self.start < n {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                let size = n.max(self.read_size);
                if self.buf.len() < size {
                    self.buf.resize(size, 0);
                }
            }
            let to = self
                .buf
                .len()
                .min(self.end + self.read_size.max(n - (self.end - self.start)));
            match self.src.read(&mut self.buf[self.end..to]) {
                Ok(0) => self.eof = true,
                Ok(k) => self.end += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.end - self.start)
    }

    /// Next chunk's records, None at the end of the file. Damage is skipped (and
    /// recorded in `warnings`); only a failing read is an error.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<Record>>> {
        let got = self.next_chunk_io();
        if !matches!(got, Ok(Some(_))) {
            // Done with this file: its window is freed (several files are open).
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        }
        got.with_context(|| format!("reading {}", self.name))
    }

    fn next_chunk_io(&mut self) -> io::Result<Option<Vec<Record>>> {
        loop {
            let have = self.fill(CHUNK_HEADER)?;
            if have == 0 {
                return Ok(None);
            }
            if have < CHUNK_HEADER {
                self.warn(format!(
                    "cut off after {} complete chunks ({have} trailing bytes)",
                    self.chunks,
                ));
                self.consume(have);
                return Ok(None);
            }
            let mut h = self.window();
            let magic = h.get_u32_le();
            let len = h.get_u32_le() as usize;
            let crc = h.get_u32_le();
            if magic != CHUNK_MAGIC || len > CHUNK_MAX {
                self.resync("damaged chunk header")?;
                continue;
            }
            let have = self.fill(CHUNK_HEADER + len)?;
            if have < CHUNK_HEADER + len {
                self.warn(format!(
                    "cut off after {} complete chunks (last chunk has {} of {len} bytes)",
                    self.chunks,
                    have - CHUNK_HEADER
                ));
                self.consume(have);
                return Ok(None);
            }
            let payload = &self.window()[CHUNK_HEADER..CHUNK_HEADER + len];
            if crc32fast::hash(payload) != crc {
                self.resync("chunk checksum mismatch")?;
                continue;
            }
            let decoded = decode_chunk(payload);
            let at = self.offset;
            self.consume(CHUNK_HEADER + len);
            match decoded {
                Ok(records) => {
                    self.chunks += 1;
                    return Ok(Some(records));
                }
                Err(e) => self.warn(format!("chunk at byte {at} skipped: {e}")),
            }
        }
    }

    /// Skips to the next place that looks like a chunk.
    fn resync(&mut self, why: &str) -> io::Result<()> {
        let start = self.offset;
        let needle = CHUNK_MAGIC.to_le_bytes();
        self.consume(1);
        loop {
            let have = self.end - self.start;
            if let Some(i) = self.window().windows(4).position(|w| w == needle) {
                self.consume(i);
                break;
            }
            // The last three bytes may begin a magic the next read completes.
            let keep = have.min(3);
            self.consume(have - keep);
            if self.fill(keep + 1)? <= keep {
                self.consume(keep);
                break;
            }
        }
        self.warn(format!(
            "{why} at byte {start}: skipped {} bytes",
            self.offset - start
        ));
        Ok(())
    }

    /// Kept for the caller to report (the reader itself prints nothing, so that a
    /// progress line can be cleared first).
    fn warn(&mut self, w: String) {
        self.warnings.push(w);
    }
}
