//! A bounded mutation fuzzer for the capture reader (`cargo xtask fuzz`): valid
//! captures are damaged in the ways files get damaged (bit flips, cuts, inserted and
//! duplicated bytes, overwritten lengths) and read back through the reader and the
//! explanation pipeline, which must never panic; each is also read through a small
//! window with short reads, which must read the same records and warnings as reading
//! it whole. Not coverage-guided; deterministic for a given seed.
use std::{
    io,
    panic::{catch_unwind, AssertUnwindSafe},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use tracer::capture::{CaptureWriter, Header, Reader, RotatePolicy};
use tracer::{
    base::record::Record,
    pipeline::{filter::Filter, Pipeline},
    sink::TextLines,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// A valid capture of a small refusal storm, as bytes.
fn seed(dir: &Path, connections: u64) -> Result<Vec<u8>> {
    let path = dir.join("seed.rst");
    let records = crate::bench::refused_storm(connections);
    let header = Header {
        format: tracer::capture::file::FORMAT_VERSION,
        kernel: "fuzz".into(),
        ..Default::default()
    };
    let mut w = CaptureWriter::create(
        &path,
        true,
        header,
        RotatePolicy::NEVER,
        Duration::from_secs(60),
    )?;
    for (i, r) in records.iter().enumerate() {
        w.write(r)?;
        if i % 50 == 49 {
            w.flush()?;
        }
    }
    w.flush()?;
    let data = std::fs::read(&path)?;
    let _ = std::fs::remove_file(&path);
    Ok(data)
}

fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = data.len().max(1);
        match rng.below(6) {
            0 => {
                let i = rng.below(len).min(data.len().saturating_sub(1));
                if let Some(b) = data.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => data.truncate(rng.below(len)),
            2 => {
                let i = rng.below(len).min(data.len());
                let n = 1 + rng.below(16);
                for _ in 0..n {
                    data.insert(i, rng.next() as u8);
                }
            }
            3 => {
                let a = rng.below(len).min(data.len());
                let b = (a + rng.below(64)).min(data.len());
                let piece = data[a..b].to_vec();
                let at = rng.below(len).min(data.len());
                data.splice(at..at, piece);
            }
            4 => {
                // A length or count field overwritten with an edge value.
                let i = rng.below(len).min(data.len().saturating_sub(4));
                let v: u32 = [0, 1, 0x7f, 0x80, 0xffff, u32::MAX, 1 << 24][rng.below(7)];
                if data.len() >= i + 4 {
                    data[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            _ => {
                let i = rng.below(len).min(data.len());
                let n = rng.below(32).min(data.len() - i);
                data.drain(i..i + n);
            }
        }
    }
}

/// Hands out at most `most` bytes per read, so that chunks straddle the reader's
/// window edges as they do on a pipe or a slow disk.
struct Short {
    data: io::Cursor<Vec<u8>>,
    most: usize,
}

impl io::Read for Short {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.most);
        self.data.read(&mut buf[..n])
    }
}

type Outcome = std::result::Result<(Vec<Record>, Vec<String>), String>;

fn read_all(reader: Result<Reader>) -> Outcome {
    let mut r = reader.map_err(|e| format!("{e:#}"))?;
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk().map_err(|e| format!("{e:#}"))? {
        out.extend(c);
    }
    Ok((out, r.warnings))
}

/// Reads `data` whole and through a `window`-byte window with short reads (the two
/// must agree), then explains it the way `rstrace explain` does. Returns what
/// disagreed.
fn exercise(data: Vec<u8>, window: usize, most: usize) -> Option<String> {
    let whole = read_all(Reader::from_bytes(data.clone(), "fuzz"));
    let src = Short {
        data: io::Cursor::new(data.clone()),
        most,
    };
    let streamed = read_all(Reader::from_read(Box::new(src), "fuzz", window));
    if whole != streamed {
        return Some(format!(
            "read whole: {:?}; through a {window}-byte window: {:?}",
            whole.map(|(r, w)| (r.len(), w)),
            streamed.map(|(r, w)| (r.len(), w))
        ));
    }
    let Ok(reader) = Reader::from_bytes(data, "fuzz") else {
        return None;
    };
    let clock = reader.header.clock();
    let mut pipe = Pipeline::new(
        clock,
        Filter::default(),
        TextLines::new(io::sink(), true, true),
    );
    // Errors are fine (a clear message); only a panic or a disagreement is not.
    let _ = tracer::cmd::replay::run(&mut [reader], &mut pipe);
    None
}

pub fn run(seconds: u64, seed_value: u64, crashes: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("rstrace-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let seeds = [seed(&dir, 3)?, seed(&dir, 60)?];
    let mut rng = Rng(seed_value.max(1));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut runs = 0u64;
    // The reader logs each damage it skips; a fuzzer produces millions.
    log::set_max_level(log::LevelFilter::Error);
    while Instant::now() < deadline {
        let mut data = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut data);
        let input = data.clone();
        let window = [1, 13, 256, 4096, 1 << 20][rng.below(5)];
        let most = 1 + rng.below(window * 2);
        let outcome = catch_unwind(AssertUnwindSafe(|| exercise(data, window, most)));
        runs += 1;
        let failed = match outcome {
            Err(_) => Some("panicked".to_string()),
            Ok(Some(diff)) => Some(format!("disagreed ({diff})")),
            Ok(None) => None,
        };
        if let Some(what) = failed {
            std::fs::create_dir_all(crashes)?;
            let path = crashes.join(format!("crash-{seed_value}-{runs}.rst"));
            tracer::base::private_file::write(&path, &input)?;
            let _ = std::fs::remove_dir_all(&dir);
            bail!(
                "the reader {what} after {runs} inputs; input saved to {}",
                path.display()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!("fuzz: {runs} damaged captures read and explained in {seconds} s without a panic (seed {seed_value})");
    Ok(())
}
