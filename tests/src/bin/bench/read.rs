//! Reading a large capture: `rstrace summary` and `rstrace explain` on a synthetic
//! capture of tens of millions of records (`tracer-drivers write-capture`), their
//! records/s and peak RSS, which must not grow with the capture.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use serde_json::Value;

/// The target: peak RSS of reading a capture of any size.
pub const RSS_LIMIT_MIB: f64 = 64.0;

/// One command's run over a capture.
pub struct ReadRun {
    pub secs: f64,
    /// Peak resident set of the child (its VmHWM, from wait4's rusage).
    pub peak_mib: f64,
    pub ok: bool,
}

/// Runs `cmd` to its end (its stdout as the caller set it), and measures its wall
/// time and peak RSS.
pub fn measure(cmd: &mut Command) -> ReadRun {
    let started = Instant::now();
    #[expect(clippy::zombie_processes, reason = "reaped by wait4, for its rusage")]
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let mut status = 0;
    // SAFETY: rusage is plain data; zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: status and usage point to live locals; the child is ours and not yet
    // reaped (std's Child is dropped without waiting).
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    ReadRun {
        secs: started.elapsed().as_secs_f64(),
        // ru_maxrss is in KiB on Linux.
        peak_mib: usage.ru_maxrss as f64 / 1024.0,
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
    }
}

/// Writes `file` (a mixed storm of at least `records` records) unless it exists;
/// returns its records and bytes.
pub fn ensure_capture(drivers: &Path, file: &Path, records: u64) -> (u64, u64) {
    if let Some(n) = fs::read_to_string(counted(file))
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        if let Ok(m) = fs::metadata(file) {
            return (n, m.len());
        }
    }
    eprintln!(
        "writing a capture of {records} records to {}",
        file.display()
    );
    let out = Command::new(drivers)
        .args(["write-capture", "--records", &records.to_string(), "--file"])
        .arg(file)
        .output()
        .expect("running tracer-drivers write-capture");
    assert!(
        out.status.success(),
        "write-capture: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("write-capture's JSON");
    let n = v["records"].as_u64().expect("records");
    eprintln!(
        "  {n} records, {} bytes in {:.1} s",
        v["bytes"],
        v["write_s"].as_f64().unwrap_or(0.0)
    );
    fs::write(counted(file), n.to_string()).expect("writing the record count");
    (n, fs::metadata(file).expect("the capture").len())
}

/// Where the record count of a kept capture is noted, so that a rerun reuses it.
fn counted(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".records");
    p.into()
}

/// The section of BENCHMARKS.md and the targets: each command once on the capture.
pub fn section(
    rstrace: &Path,
    drivers: &Path,
    file: &Path,
    records: u64,
) -> (String, Vec<(String, bool, String)>) {
    let (n, bytes) = ensure_capture(drivers, file, records);
    let mut md = format!(
        "\n## Reading a capture\n\n`rstrace summary` and `rstrace explain` (output to /dev/null) on a synthetic capture of {:.1} M records, {:.0} MB (`tracer-drivers write-capture`: refusals and firewall timeouts from 64 processes to 16 ports). Peak RSS is the child's (wait4 `ru_maxrss`).\n\n| command | seconds | records/s | MB/s | peak RSS MiB |\n|---|---|---|---|---|\n",
        n as f64 / 1e6,
        bytes as f64 / 1e6
    );
    let mut targets = Vec::new();
    for cmd in ["summary", "explain"] {
        let run = measure(
            Command::new(rstrace)
                .arg(cmd)
                .arg(file)
                .stdout(Stdio::null()),
        );
        assert!(run.ok, "rstrace {cmd} failed");
        eprintln!(
            "rstrace {cmd}: {:.1} s, {:.2} M records/s, peak RSS {:.1} MiB",
            run.secs,
            n as f64 / run.secs / 1e6,
            run.peak_mib
        );
        md.push_str(&format!(
            "| `{cmd}` | {:.1} | {:.0} | {:.0} | {:.1} |\n",
            run.secs,
            n as f64 / run.secs,
            bytes as f64 / 1e6 / run.secs,
            run.peak_mib
        ));
        targets.push((
            format!(
                "`{cmd}` of a {:.0} MB capture: peak RSS <= {RSS_LIMIT_MIB} MiB",
                bytes as f64 / 1e6
            ),
            run.peak_mib <= RSS_LIMIT_MIB,
            format!(
                "{:.1} MiB, {:.2} M records/s",
                run.peak_mib,
                n as f64 / run.secs / 1e6
            ),
        ));
    }
    (md, targets)
}
