//! Reading a capture takes memory that does not grow with the file: `rstrace summary`
//! of a capture with a long stretch of damage (a 192 MiB hole of zeros between good
//! chunks, which the reader skips by resynchronizing) must peak well below the file's
//! size. A reader that held the whole file would need the file's size.
#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]
use std::{
    fs::{File, OpenOptions},
    io::Write as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use tracer::{
    base::record::{Kind, Record},
    capture::{CaptureWriter, Header, RotatePolicy},
};

const HOLE: u64 = 192 << 20;
const LIMIT_MIB: u64 = 64;

/// Peak RSS (KiB, wait4's ru_maxrss) and stdout of `rstrace args file`.
fn run_measured(args: &[&str], file: &Path) -> (u64, String) {
    let out = file.with_extension("out");
    #[expect(clippy::zombie_processes, reason = "reaped by wait4, for its rusage")]
    let child = Command::new(env!("CARGO_BIN_EXE_rstrace"))
        .args(args)
        .arg(file)
        .stdout(Stdio::from(File::create(&out).unwrap()))
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain data; zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: status and usage point to live locals; the child is ours, not reaped.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "rstrace {args:?} failed"
    );
    let stdout = std::fs::read_to_string(&out).unwrap();
    (usage.ru_maxrss as u64, stdout)
}

/// A capture of `chunks` chunks of 100 records each, as bytes.
fn capture(path: &Path, first: u64, chunks: u64) -> Vec<u8> {
    let header = Header {
        format: tracer::capture::file::FORMAT_VERSION,
        ..Default::default()
    };
    let mut w = CaptureWriter::create(
        path,
        true,
        header,
        RotatePolicy::NEVER,
        Duration::from_secs(60),
    )
    .unwrap();
    for i in first..first + chunks * 100 {
        let mut r = Record::new(Kind::Error, 1_000_000 + i * 1_000, String::new());
        r.errno = Some(111);
        w.write(&r).unwrap();
        if i % 100 == 99 {
            w.flush().unwrap();
        }
    }
    std::fs::read(path).unwrap()
}

#[test]
fn summary_of_a_capture_larger_than_the_bound_stays_within_it() {
    let dir = std::env::temp_dir().join(format!("rstrace-bounded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.rst");
    let head = capture(&path, 0, 1);
    let tail = capture(&dir.join("tail.rst"), 100, 2);
    let (_, header_len) = Header::decode(&tail).unwrap();
    std::fs::write(&path, &head).unwrap();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    // The hole: zeros the file system does not store, read back as any other bytes.
    f.set_len(head.len() as u64 + HOLE).unwrap();
    f.write_all(&tail[header_len..]).unwrap();
    drop(f);
    let size = std::fs::metadata(&path).unwrap().len();

    let (peak_kib, out) = run_measured(&["summary", "--json"], &path);
    let _ = std::fs::remove_dir_all(&dir);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["records"], 300, "{out}");
    assert_eq!(v["damaged_parts"], 1, "{out}");
    assert!(
        peak_kib < LIMIT_MIB << 10,
        "summary of a {} MiB capture peaked at {} MiB (limit {LIMIT_MIB} MiB)",
        size >> 20,
        peak_kib >> 10
    );
}
