//! Capture format: round trips, truncation at every byte, damaged chunks.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use proptest::prelude::*;

use super::{
    codec::{decode_chunk, ChunkEncoder},
    file::{CaptureWriter, Header, Reader, RotatePolicy},
};
use crate::base::record::{
    errno_name, Kind, OwnerSource, Proc, Queue, QueueKind, Record, Sock, TcpFlags, TcpState,
};

const KINDS: [Kind; 15] = [
    Kind::RstSent,
    Kind::RstReceived,
    Kind::SynRetransmit,
    Kind::SynackRetransmit,
    Kind::Drop,
    Kind::State,
    Kind::Error,
    Kind::Overflow,
    Kind::Loss,
    Kind::Listener,
    Kind::Addresses,
    Kind::ProcessExit,
    Kind::ConnectError,
    Kind::Socket,
    Kind::FirewallRule,
];

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    (arb_ip(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(ip, p))
}

fn arb_proc() -> impl Strategy<Value = Proc> {
    (any::<u32>(), "[a-z0-9/_-]{0,15}").prop_map(|(pid, comm)| Proc {
        pid,
        comm: comm.into(),
        cgroup: None,
        workload: None,
    })
}

fn arb_state() -> impl Strategy<Value = TcpState> {
    prop::sample::select(TcpState::ALL.to_vec())
}

prop_compose! {
    fn arb_rule()(
        words in proptest::collection::vec(".{0,20}", 6),
        hook in proptest::option::of("[a-z]{1,11}"),
        priority in proptest::option::of(any::<i32>()),
        handle in proptest::option::of(0u64..u64::MAX),
    ) -> crate::base::record::FirewallRule {
        crate::base::record::FirewallRule {
            source: words[0].as_str().into(),
            family: words[1].as_str().into(),
            table: words[2].as_str().into(),
            chain: words[3].as_str().into(),
            hook: hook.map(Into::into),
            priority,
            handle,
            rule: words[4].as_str().into(),
            verdict: words[5].as_str().into(),
        }
    }
}

prop_compose! {
    fn arb_record()(
        kind in 0..KINDS.len(),
        mono in 0u64..(1 << 62),
        netns in proptest::option::of(any::<u32>()),
        src in proptest::option::of(arb_addr()),
        dst in proptest::option::of(arb_addr()),
        states in (proptest::option::of(arb_state()), proptest::option::of(arb_state()), proptest::option::of(arb_state())),
        reason in proptest::option::of("[A-Z_]{1,24}"),
        errno in proptest::option::of(-200i32..200),
        owner in proptest::option::of(arb_proc()),
        owner_source in proptest::option::of(prop::sample::select(vec![OwnerSource::Kernel, OwnerSource::Socket, OwnerSource::Listener, OwnerSource::Proc])),
        task in proptest::option::of(arb_proc()),
        sock in proptest::option::of(any::<u64>()),
        numbers in (proptest::option::of(any::<u32>()), proptest::option::of((any::<u32>(), any::<u32>())), proptest::option::of(any::<u64>()), proptest::option::of(any::<u64>()), proptest::option::of(any::<u32>())),
        queue_kind in proptest::option::of(prop::sample::select(vec![QueueKind::Accept, QueueKind::Syn])),
        strings in (proptest::option::of(".{0,40}"), proptest::option::of(0u8..64)),
        hook in proptest::option::of(0..tracer_common::Hook::COUNT),
        addrs in proptest::option::of(proptest::collection::vec(arb_ip(), 0..5)),
        ports in proptest::option::of((any::<[u16; 2]>(), any::<u32>(), any::<u32>(), any::<u32>())),
        v6only in proptest::option::of(any::<bool>()),
        rules in proptest::option::of(proptest::collection::vec(arb_rule(), 0..4)),
        conntrack in proptest::option::of((any::<u64>(), proptest::option::of(0u64..u64::MAX), any::<[u64; 4]>())),
    ) -> Record {
        let mut r = Record::new(KINDS[kind], mono, String::new());
        r.netns = netns;
        r.src = src;
        r.dst = dst;
        (r.state, r.old_state, r.new_state) = states;
        r.reason = reason.map(Into::into);
        r.errno = errno;
        r.errno_name = errno.and_then(errno_name);
        // The owner's cgroup reuses the socket's draw: one more strategy in this
        // tuple overflows the test thread's stack in debug builds.
        r.owner = owner.map(|p| Proc { cgroup: sock, ..p });
        r.owner_source = owner_source;
        r.task = task;
        r.sock = sock.map(Sock);
        r.retransmits = numbers.0;
        r.queue = numbers.1.map(|(depth, backlog)| Queue { depth, backlog });
        r.drops = numbers.2;
        r.lost = numbers.3;
        r.somaxconn = numbers.4;
        r.queue_kind = queue_kind;
        r.location = strings.0.map(Into::into);
        r.tcp_flags = strings.1.map(TcpFlags::from_bits);
        r.hook = hook.map(|h| tracer_common::Hook::ALL[h]);
        r.addrs = addrs;
        r.v6only = v6only;
        r.rules = rules;
        r.conntrack = conntrack.map(|(entries, max, c)| crate::base::record::ConntrackStats {
            entries,
            max,
            invalid: c[0],
            drop: c[1],
            early_drop: c[2],
            insert_failed: c[3],
        });
        r.ports = ports.map(|(range, established, time_wait, other)| crate::base::record::PortUse {
            range,
            established,
            time_wait,
            other,
        });
        r
    }
}

proptest! {
    #[test]
    fn records_round_trip(records in proptest::collection::vec(arb_record(), 1..40)) {
        let mut enc = ChunkEncoder::default();
        for r in &records {
            enc.push(r);
        }
        let payload = enc.finish();
        let back = decode_chunk(&payload).unwrap();
        prop_assert_eq!(back, records);
    }

    #[test]
    fn garbage_chunks_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_chunk(&bytes);
    }

    #[test]
    fn garbage_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), clock in any::<(u64, u64)>()) {
        // A valid header with any clock, then anything.
        let h = Header { format: 1, clock_mono_ns: clock.0, clock_wall_ns: clock.1, ..Default::default() };
        let mut data = h.encode().to_vec();
        data.extend_from_slice(&bytes);
        let _ = read_all(data);
    }
}

fn sample(i: u64) -> Record {
    let mut r = Record::new(Kind::Error, 1_000 + i * 1_000, String::new());
    r.src = Some(SocketAddr::from(([10, 0, 0, 1], 40_000 + i as u16)));
    r.dst = Some(SocketAddr::from(([10, 0, 0, 2], 8080)));
    r.errno = Some(111);
    r.errno_name = errno_name(111);
    r.owner = Some(Proc {
        pid: 4121,
        comm: "curl".into(),
        cgroup: None,
        workload: None,
    });
    r.netns = Some(4026531840);
    r
}

/// A small file: header, then `chunks` chunks of three records; the byte offset
/// where each chunk ends.
fn small_file(dir: &std::path::Path, chunks: u64) -> (Vec<u8>, Vec<usize>, Vec<Record>) {
    let path = dir.join("cap");
    let header = Header {
        format: 1,
        kernel: "6.18".into(),
        hostname: "h".into(),
        ..Default::default()
    };
    // Called twice on the same name by some tests.
    let mut w = CaptureWriter::create(
        &path,
        true,
        header,
        RotatePolicy::NEVER,
        Duration::from_secs(60),
    )
    .unwrap();
    let mut ends = Vec::new();
    let mut all = Vec::new();
    for c in 0..chunks {
        for i in 0..3 {
            let r = sample(c * 3 + i);
            w.write(&r).unwrap();
            all.push(r);
        }
        w.flush().unwrap();
        ends.push(std::fs::metadata(&path).unwrap().len() as usize);
    }
    (std::fs::read(&path).unwrap(), ends, all)
}

fn read_all(data: Vec<u8>) -> anyhow::Result<(Vec<Record>, Vec<String>)> {
    let mut r = Reader::from_bytes(data, "test")?;
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk()? {
        out.extend(c);
    }
    Ok((out, r.warnings))
}

fn tmp() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "rstrace-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn files_are_private_and_round_trip_with_their_header() {
    let d = tmp();
    let (data, _, all) = small_file(&d, 2);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.join("cap")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let r = Reader::from_bytes(data.clone(), "t").unwrap();
    assert_eq!(r.header.kernel, "6.18");
    let (records, warnings) = read_all(data).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(records, all);
}

#[test]
fn truncation_at_every_byte_recovers_every_complete_chunk() {
    let d = tmp();
    let (data, ends, all) = small_file(&d, 3);
    let header_len = Header::decode(&data).unwrap().1;
    for cut in 0..=data.len() {
        let got = read_all(data[..cut].to_vec());
        if cut < header_len {
            assert!(
                got.is_err(),
                "cut at {cut} inside the header must be an error, not a panic"
            );
            continue;
        }
        let (records, warnings) = got.unwrap();
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(records.len(), complete * 3, "cut at {cut}");
        assert_eq!(records[..], all[..complete * 3], "cut at {cut}");
        let partial = !ends.contains(&cut) && cut != header_len;
        assert_eq!(!warnings.is_empty(), partial, "cut at {cut}: {warnings:?}");
    }
}

#[test]
fn a_damaged_chunk_is_skipped_with_a_warning() {
    let d = tmp();
    let (mut data, ends, _) = small_file(&d, 3);
    // Flip a byte in the middle chunk's payload.
    let mid = (ends[0] + ends[1]) / 2;
    data[mid] ^= 0xff;
    let (records, warnings) = read_all(data.clone()).unwrap();
    assert_eq!(records.len(), 6, "chunks 1 and 3 survive");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    // A damaged chunk header (its magic) is skipped too, by resynchronizing.
    let (mut data, ends, _) = small_file(&d, 3);
    data[ends[0]] ^= 0xff;
    let (records, warnings) = read_all(data).unwrap();
    assert_eq!(records.len(), 6);
    assert!(!warnings.is_empty());
}

/// The reader as it was when it held the whole file: the streaming reader must skip
/// the same damage with the same words.
fn whole_file_read(data: &[u8]) -> Result<(Vec<Record>, Vec<String>), String> {
    use bytes::Buf;
    let (_, mut pos) = Header::decode(data).map_err(|e| format!("t: unreadable header: {e:#}"))?;
    let (mut out, mut warnings, mut chunks) = (Vec::new(), Vec::new(), 0);
    let magic_bytes = *b"CHNK";
    let resync = |pos: &mut usize, why: &str, warnings: &mut Vec<String>| {
        let start = *pos;
        *pos = data[start + 1..]
            .windows(4)
            .position(|w| w == magic_bytes)
            .map_or(data.len(), |i| start + 1 + i);
        warnings.push(format!(
            "{why} at byte {start}: skipped {} bytes",
            *pos - start
        ));
    };
    loop {
        let rest = &data[pos..];
        if rest.is_empty() {
            break;
        }
        if rest.len() < 12 {
            warnings.push(format!(
                "cut off after {chunks} complete chunks ({} trailing bytes)",
                rest.len()
            ));
            break;
        }
        let mut h = rest;
        let (magic, len, crc) = (h.get_u32_le(), h.get_u32_le() as usize, h.get_u32_le());
        if magic != u32::from_le_bytes(magic_bytes) || len > 16 * 1024 * 1024 {
            resync(&mut pos, "damaged chunk header", &mut warnings);
            continue;
        }
        if h.len() < len {
            warnings.push(format!(
                "cut off after {chunks} complete chunks (last chunk has {} of {len} bytes)",
                h.len()
            ));
            break;
        }
        if crc32fast::hash(&h[..len]) != crc {
            resync(&mut pos, "chunk checksum mismatch", &mut warnings);
            continue;
        }
        match decode_chunk(&h[..len]) {
            Ok(r) => {
                chunks += 1;
                out.extend(r);
            }
            Err(e) => warnings.push(format!("chunk at byte {pos} skipped: {e}")),
        }
        pos += 12 + len;
    }
    Ok((out, warnings))
}

/// Hands out at most a few bytes per read, as a pipe or a slow disk may.
struct Trickle {
    data: std::io::Cursor<Vec<u8>>,
    rng: u64,
    most: u64,
}

impl std::io::Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = (1 + (self.rng >> 33) % self.most) as usize;
        let n = n.min(buf.len());
        self.data.read(&mut buf[..n])
    }
}

fn streamed(
    data: &[u8],
    read_size: usize,
    most: u64,
) -> Result<(Vec<Record>, Vec<String>), String> {
    let src = Trickle {
        data: std::io::Cursor::new(data.to_vec()),
        rng: read_size as u64,
        most,
    };
    let mut r = Reader::from_read(Box::new(src), "t", read_size).map_err(|e| format!("{e:#}"))?;
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk().map_err(|e| format!("{e:#}"))? {
        out.extend(c);
    }
    assert_eq!(r.offset(), data.len() as u64, "every byte is consumed");
    Ok((out, r.warnings))
}

#[test]
fn streaming_reads_damaged_files_as_the_whole_file_reader_did() {
    let d = tmp();
    let (data, _, _) = small_file(&d, 4);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n.max(1) as u64) as usize
    };
    let mut damaged = 0;
    for case in 0..3000 {
        let mut bad = data.clone();
        for _ in 0..1 + next(3) {
            let i = next(bad.len());
            match next(5) {
                0 => bad[i] ^= 1 << next(8),
                1 => bad.truncate(i),
                2 => {
                    // A length overwritten with an edge value (chunk or header).
                    let v: u32 = [0, 11, 0x7f, 1 << 24, (1 << 24) + 1, u32::MAX][next(6)];
                    let at = [10, i][next(2)].min(bad.len().saturating_sub(4));
                    if bad.len() >= at + 4 {
                        bad[at..at + 4].copy_from_slice(&v.to_le_bytes());
                    }
                }
                3 => {
                    // Chunk magics planted across window edges.
                    let at = i.min(bad.len());
                    bad.splice(at..at, *b"CHNKCHN");
                }
                _ => {
                    let n = next(40).min(bad.len() - i.min(bad.len()));
                    bad.drain(i..i + n);
                }
            }
        }
        let want = whole_file_read(&bad);
        damaged += want.as_ref().map_or(0, |(_, w)| w.len().min(1));
        for (read_size, most) in [(1, 1), (7, 5), (64, 100), (4096, 1 << 20)] {
            let got = streamed(&bad, read_size, most);
            assert_eq!(got, want, "case {case}, read size {read_size}");
        }
    }
    // The cases are not all clean ones.
    assert!(damaged > 1000, "{damaged} damaged cases");
}

#[test]
fn newer_formats_and_other_files_are_refused_clearly() {
    let d = tmp();
    let (mut data, _, _) = small_file(&d, 1);
    data[8] = 99;
    let e = read_all(data).unwrap_err();
    assert!(
        format!("{e:#}").contains("newer than this rstrace reads"),
        "{e:#}"
    );
    let e = read_all(b"GIF89a not a capture".to_vec()).unwrap_err();
    assert!(
        format!("{e:#}").contains("not an rstrace capture file"),
        "{e:#}"
    );
}

/// Endless zeros after `head`, counting what was read.
struct Endless {
    head: std::io::Cursor<Vec<u8>>,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl std::io::Read for Endless {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut n = self.head.read(buf)?;
        if n == 0 {
            buf.fill(0);
            n = buf.len();
        }
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

#[test]
fn a_header_length_no_rstrace_writes_is_refused_unread() {
    let d = tmp();
    let (mut data, _, _) = small_file(&d, 1);
    data[10..14].copy_from_slice(&u32::MAX.to_le_bytes());
    data.truncate(18);
    let read = std::rc::Rc::default();
    let src = Endless {
        head: std::io::Cursor::new(data),
        read: std::rc::Rc::clone(&read),
    };
    let Err(e) = Reader::from_read(Box::new(src), "t", 1 << 20) else {
        panic!("a header of 4 GiB was read");
    };
    assert!(
        format!("{e:#}").contains("a header of 4294967295 bytes is longer than any rstrace writes"),
        "{e:#}"
    );
    // One read of the header's window, not the 4 GiB the length claims.
    assert!(read.get() <= 64 << 10, "{} bytes read", read.get());
}

#[test]
fn rotation_keeps_a_bounded_number_of_self_contained_files() {
    let d = tmp();
    let path = d.join("rot");
    let header = Header {
        format: 1,
        ..Default::default()
    };
    let mut w = CaptureWriter::create(
        &path,
        false,
        header,
        RotatePolicy {
            max_bytes: Some(200),
            keep: 2,
        },
        Duration::from_secs(60),
    )
    .unwrap();
    let mut ctx = Record::new(Kind::Listener, 5, String::new());
    ctx.netns = Some(1);
    ctx.src = Some(SocketAddr::from(([0, 0, 0, 0], 80)));
    for i in 0..20 {
        w.write(&sample(i)).unwrap();
        w.flush().unwrap();
        if w.wants_rotation() {
            w.rotate(std::slice::from_ref(&ctx)).unwrap();
        }
    }
    assert!(path.exists());
    assert!(d.join("rot.1").exists() && d.join("rot.2").exists());
    assert!(!d.join("rot.3").exists(), "only 2 rotated files kept");
    let (records, _) = read_all(std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        records.first().map(|r| r.kind),
        Some(Kind::Listener),
        "a new file starts with the context"
    );
}

mod hostile_paths {
    //! Names another user may have planted where a capture is written.
    use std::{
        fs,
        os::unix::fs::{symlink, MetadataExt, PermissionsExt},
        path::Path,
    };

    use super::*;

    fn header() -> Header {
        Header {
            format: 1,
            ..Default::default()
        }
    }

    fn create(path: &Path, replace: bool, rotate: RotatePolicy) -> anyhow::Result<CaptureWriter> {
        CaptureWriter::create(path, replace, header(), rotate, Duration::from_secs(60))
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn fresh(name: &str) -> std::path::PathBuf {
        let d = tmp().join(name);
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_existing_file_is_refused_and_left_as_it_was() {
        let d = fresh("existing");
        let path = d.join("cap");
        fs::write(&path, "earlier data").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = create(&path, false, RotatePolicy::NEVER).err().unwrap();
        assert!(format!("{e:#}").contains("already exists"), "{e:#}");
        assert!(format!("{e:#}").contains("--force"), "{e:#}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "earlier data");
        assert_eq!(mode(&path), 0o644);
    }

    #[test]
    fn force_renames_a_new_file_over_the_name_and_never_writes_the_old_one() {
        let d = fresh("force");
        let path = d.join("cap");
        let other = d.join("other");
        fs::write(&other, "another file's data").unwrap();
        fs::set_permissions(&other, fs::Permissions::from_mode(0o644)).unwrap();
        // The name is a hard link to another file: truncating it in place would
        // destroy that file.
        fs::hard_link(&other, &path).unwrap();
        let ino = fs::metadata(&other).unwrap().ino();
        let mut w = create(&path, true, RotatePolicy::NEVER).unwrap();
        w.write(&sample(1)).unwrap();
        w.flush().unwrap();
        assert_eq!(fs::read_to_string(&other).unwrap(), "another file's data");
        assert_eq!(mode(&other), 0o644);
        assert_ne!(fs::metadata(&path).unwrap().ino(), ino, "a new file");
        assert_eq!(mode(&path), 0o600);
        let (records, _) = read_all(fs::read(&path).unwrap()).unwrap();
        assert_eq!(records, vec![sample(1)]);
        let names: Vec<_> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
    }

    #[test]
    fn a_symlink_is_refused_even_with_force_and_its_target_untouched() {
        let d = fresh("symlink");
        let target = d.join("target");
        fs::write(&target, "root's file").unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
        let link = d.join("cap");
        symlink(&target, &link).unwrap();
        // Dangling too: following it would create the target.
        let dangling = d.join("dangling");
        symlink(d.join("created-through-link"), &dangling).unwrap();
        for replace in [false, true] {
            for p in [&link, &dangling] {
                let e = create(p, replace, RotatePolicy::NEVER).err().unwrap();
                assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
            }
        }
        assert_eq!(fs::read_to_string(&target).unwrap(), "root's file");
        assert_eq!(mode(&target), 0o644);
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(!d.join("created-through-link").exists());
    }

    /// Writes until the writer has rotated `n` times.
    fn rotate_times(w: &mut CaptureWriter, n: usize) -> std::io::Result<()> {
        let mut done = 0;
        let mut i = 0;
        while done < n {
            w.write(&sample(i))?;
            w.flush()?;
            i += 1;
            if w.wants_rotation() {
                w.rotate(&[])?;
                done += 1;
            }
        }
        Ok(())
    }

    #[test]
    fn rotation_onto_a_planted_symlink_stops_with_an_error() {
        let policy = RotatePolicy {
            max_bytes: Some(200),
            keep: 3,
        };
        // At the first rotation name, and at one reached only by shifting.
        for (planted, rotations_before) in [("cap.1", 0), ("cap.2", 0), ("cap.3", 2)] {
            let d = fresh(&format!("rotate-{planted}"));
            let target = d.join("target");
            fs::write(&target, "root's file").unwrap();
            let path = d.join("cap");
            let mut w = create(&path, false, policy).unwrap();
            rotate_times(&mut w, rotations_before).unwrap();
            symlink(&target, d.join(planted)).unwrap();
            let e = rotate_times(&mut w, 1).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{planted}: {e}");
            assert!(
                e.to_string().contains("recording stopped"),
                "{planted}: {e}"
            );
            assert_eq!(fs::read_to_string(&target).unwrap(), "root's file");
            assert!(
                fs::symlink_metadata(d.join(planted))
                    .unwrap()
                    .file_type()
                    .is_symlink(),
                "{planted}: the link is left where it was"
            );
        }
    }

    #[test]
    fn rotation_refuses_a_name_that_is_not_a_regular_file_or_not_its_own() {
        let d = fresh("rotate-dir");
        let path = d.join("cap");
        let policy = RotatePolicy {
            max_bytes: Some(200),
            keep: 2,
        };
        let mut w = create(&path, false, policy).unwrap();
        fs::create_dir(d.join("cap.1")).unwrap();
        let e = rotate_times(&mut w, 1).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");

        // A file of another user's (uid 65534 owns it here), at the name the oldest
        // file would be dropped from.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return; // Giving a file away needs root.
        }
        let d = fresh("rotate-foreign");
        let path = d.join("cap");
        let mut w = create(&path, false, policy).unwrap();
        fs::write(d.join("cap.2"), "nobody's").unwrap();
        std::os::unix::fs::chown(d.join("cap.2"), Some(65534), Some(65534)).unwrap();
        let e = rotate_times(&mut w, 1).unwrap_err();
        assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
        assert_eq!(fs::read_to_string(d.join("cap.2")).unwrap(), "nobody's");
    }

    #[test]
    fn a_capture_replaced_under_the_writer_stops_rotation() {
        let d = fresh("replaced");
        let path = d.join("cap");
        let policy = RotatePolicy {
            max_bytes: Some(200),
            keep: 2,
        };
        let mut w = create(&path, false, policy).unwrap();
        fs::rename(&path, d.join("moved")).unwrap();
        fs::write(&path, "someone else's").unwrap();
        let e = rotate_times(&mut w, 1).unwrap_err();
        assert!(e.to_string().contains("no longer the file"), "{e}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "someone else's");
    }

    /// Run by `every_file_is_0600_whatever_the_umask` in a process of its own, since
    /// the umask is per process and would change other tests' files.
    #[test]
    fn umask_child() {
        let (Ok(umask), Ok(dir)) = (
            std::env::var("RSTRACE_TEST_UMASK"),
            std::env::var("RSTRACE_TEST_DIR"),
        ) else {
            return;
        };
        // SAFETY: umask has no preconditions (this test runs alone in its process).
        unsafe { libc::umask(u32::from_str_radix(&umask, 8).unwrap()) };
        let d = Path::new(&dir);
        let rotating = RotatePolicy {
            max_bytes: Some(200),
            keep: 2,
        };
        let mut w = create(&d.join("cap"), false, rotating).unwrap();
        rotate_times(&mut w, 3).unwrap();
        let forced = d.join("forced");
        fs::write(&forced, "old").unwrap();
        create(&forced, true, RotatePolicy::NEVER).unwrap();
    }

    #[test]
    fn every_file_is_0600_whatever_the_umask() {
        // 000 would let a loose creation mode through; 277 would take the owner's write
        // bit from 0600.
        for umask in ["000", "277"] {
            let d = fresh(&format!("umask-{umask}"));
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "capture::tests::hostile_paths::umask_child"])
                .env("RSTRACE_TEST_UMASK", umask)
                .env("RSTRACE_TEST_DIR", &d)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("1 passed"),
                "umask {umask}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            for n in ["cap", "cap.1", "cap.2", "forced"] {
                assert_eq!(mode(&d.join(n)), 0o600, "{n} with umask {umask}");
            }
        }
    }
}

#[test]
fn workload_records_round_trip() {
    use crate::base::workload::{Container, Pod, Qos, Runtime, Workload};
    let full = Workload {
        unit: Some("cri-containerd-0123.scope".into()),
        unit_user: Some(1000),
        container: Some(Container {
            runtime: Runtime::Containerd,
            id: "0123456789abcdef".into(),
            name: Some("app".into()),
            monitor: true,
        }),
        pod: Some(Pod {
            uid: "7a1b6c2e-3f4d-4a5b-9c8d-0e1f2a3b4c5d".into(),
            qos: Some(Qos::Burstable),
            namespace: Some("default".into()),
            name: Some("web-0".into()),
        }),
    };
    let unit = Workload {
        unit: Some("web.service".into()),
        ..Default::default()
    };
    let mut records = Vec::new();
    for (i, w) in [full, unit].into_iter().enumerate() {
        let mut r = Record::new(Kind::Workload, i as u64, String::new());
        r.cgroup = Some(9000 + i as u64);
        r.workload = Some(Box::new(w));
        records.push(r);
    }
    let mut enc = ChunkEncoder::default();
    for r in &records {
        enc.push(r);
    }
    assert_eq!(decode_chunk(&enc.finish()).unwrap(), records);
}

#[test]
fn netns_names_round_trip() {
    let mut named = Record::new(Kind::Addresses, 1, String::new());
    named.netns = Some(4026532301);
    named.addrs = Some(vec!["10.0.0.2".parse().unwrap()]);
    named.netns_name = Some("server-ns".into());
    let mut unnamed = named.clone();
    unnamed.netns_name = None;
    let mut enc = ChunkEncoder::default();
    enc.push(&named);
    enc.push(&unnamed);
    assert_eq!(decode_chunk(&enc.finish()).unwrap(), vec![named, unnamed]);
}
