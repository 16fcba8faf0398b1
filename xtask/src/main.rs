//! Project tasks: `cargo xtask setup | build | watch | test | vm-test | lint | man`.
//!
//! Every task first runs `setup`, which installs what a fresh machine lacks
//! (Debian packages, rust-src for nightly, bpf-linker built against nightly's LLVM)
//! idempotently, caching the linker under ~/.cache/rstrace.
mod setup;
mod stages;
mod vm;

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install everything the build and the tests need (idempotent, cached).
    Setup,
    /// Build rstrace (release with --release).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build rstrace in release mode and run `rstrace watch` with these arguments.
    Watch {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Run every test: unit tests, then the real-kernel integration tests (root).
    Test {
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// Run the real-kernel tests on Debian's 6.12, 6.1 and 5.10 kernels under QEMU, and
    /// rewrite README.md's support table (with --kernel all).
    VmTest {
        /// 6.12, 6.1, 5.10 or all.
        #[arg(long, default_value = "all")]
        kernel: String,
        /// Only tests whose name contains this.
        filter: Option<String>,
    },
    /// cargo fmt --check, the stage order, and clippy with warnings denied (on the
    /// eBPF programs too).
    Lint,
    /// Write the man pages (rstrace.1, rstrace-COMMAND.1), generated from the command
    /// line's definitions, into target/man/man1 (or DIR/man1).
    Man {
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Fuzz the capture reader for a bounded time (inputs that crash it are saved in
    /// fuzz-crashes/).
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Defaults to one derived from the clock (printed, to reproduce).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Measure what rstrace costs a busy server (a few minutes, root); writes
    /// BENCHMARKS.md.
    Bench {
        /// Seconds per measured run.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Repetitions of each baseline/floor/watch/record set (at least 5 for
        /// figures worth reporting).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Only the storms whose name contains this; prints instead of writing
        /// BENCHMARKS.md (for measuring one change).
        #[arg(long)]
        storm: Option<String>,
        /// Only the per-program kernel cost; prints instead of writing BENCHMARKS.md.
        #[arg(long)]
        costs: bool,
        /// Only reading a large capture (`summary`, `explain`: records/s, peak RSS);
        /// prints instead of writing BENCHMARKS.md.
        #[arg(long)]
        read: bool,
        /// Records of the capture the read step writes.
        #[arg(long, default_value_t = 30_000_000)]
        read_records: u64,
        /// Capture for the read step to read, kept (written first if it is missing):
        /// to compare builds on the same file.
        #[arg(long)]
        read_file: Option<PathBuf>,
        /// Only the soak (a storm of refusals and firewall-dropped SYNs under
        /// `watch --record`, RSS sampled every second); prints instead of writing
        /// BENCHMARKS.md.
        #[arg(long)]
        soak: bool,
        /// Length of the soak's storm, in seconds.
        #[arg(long, default_value_t = 60.0)]
        soak_seconds: f64,
        /// Only the idle agent's CPU; prints instead of writing BENCHMARKS.md.
        #[arg(long)]
        idle: bool,
        /// Length of each idle run, in seconds.
        #[arg(long, default_value_t = 60.0)]
        idle_seconds: f64,
        /// Idle runs.
        #[arg(long, default_value_t = 3)]
        idle_reps: usize,
    },
}

/// Runs the capture reader's fuzzer of the `profile` build (tracer-drivers); crashing
/// inputs are saved in fuzz-crashes/.
fn fuzz_capture(root: &Path, profile: &str, seconds: u64, seed: u64) -> Result<()> {
    run(
        Command::new(root.join("target").join(profile).join("tracer-drivers"))
            .args(["fuzz-capture", "--seconds", &seconds.to_string()])
            .args(["--seed", &seed.to_string()])
            .arg("--crashes")
            .arg(root.join("fuzz-crashes")),
    )
}

/// Clippy on the eBPF programs, for the target and with the toolchain tracer/build.rs
/// builds them with (aya-build: nightly, core rebuilt), in a target directory of its
/// own. Their unsafe code is the kernel side's.
fn ebpf_clippy(root: &Path) -> Command {
    let target = if cfg!(target_endian = "big") {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    };
    let mut c = Command::new("rustup");
    c.current_dir(root)
        .env("PATH", setup::path_with_tools())
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env("CARGO_TARGET_DIR", root.join("target/ebpf-lint"))
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        )
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "--package",
            "tracer-ebpf",
        ])
        .args(["--release", "--target", target, "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"]);
    c
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// A command run from the workspace root with bpf-linker on PATH.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c.env("PATH", setup::path_with_tools());
    c
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs the program as root: directly when we are root, else through sudo.
pub(crate) fn as_root(program: &Path, args: &[OsString], envs: &[(&str, OsString)]) -> Command {
    if is_root() {
        let mut c = Command::new(program);
        c.args(args);
        for (k, v) in envs {
            c.env(k, v);
        }
        c
    } else {
        let mut c = Command::new("sudo");
        c.arg("env");
        for (k, v) in envs {
            let mut kv = OsString::from(format!("{k}="));
            kv.push(v);
            c.arg(kv);
        }
        c.arg(program).args(args);
        c
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    setup::setup()?;
    match cli.task {
        Task::Setup => Ok(()),
        Task::Build { release } => {
            let mut c = cargo();
            c.args(["build", "--package", "tracer"]);
            if release {
                c.arg("--release");
            }
            run(&mut c)
        }
        Task::Watch { args } => {
            run(cargo().args(["build", "--release", "--package", "tracer"]))?;
            let bin = root.join("target/release/rstrace");
            let mut full = vec![OsString::from("watch")];
            full.extend(args);
            run(&mut as_root(&bin, &full, &[]))
        }
        Task::VmTest { kernel, filter } => vm::vm_test(&kernel, filter.as_deref()),
        Task::Fuzz { seconds, seed } => {
            run(cargo().args(["build", "--release", "--package", "tracer-drivers"]))?;
            let seed = seed.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs())
            });
            fuzz_capture(&root, "release", seconds, seed)
        }
        Task::Bench {
            seconds,
            reps,
            storm,
            costs,
            read,
            read_records,
            read_file,
            soak,
            soak_seconds,
            idle,
            idle_seconds,
            idle_reps,
        } => {
            run(cargo().args([
                "build",
                "--release",
                "--package",
                "tracer",
                "--package",
                "tracer-drivers",
                "--package",
                "tests",
                "--bins",
            ]))?;
            let mut args: Vec<OsString> = vec![
                "--rstrace".into(),
                root.join("target/release/rstrace").into_os_string(),
                "--drivers".into(),
                root.join("target/release/tracer-drivers").into_os_string(),
                "--out".into(),
                root.join("BENCHMARKS.md").into_os_string(),
                "--seconds".into(),
                seconds.to_string().into(),
                "--reps".into(),
                reps.to_string().into(),
            ];
            if let Some(s) = storm {
                args.extend(["--storm".into(), s.into()]);
            }
            if costs {
                args.push("--costs".into());
            }
            if read {
                args.push("--read".into());
            }
            args.extend(["--read-records".into(), read_records.to_string().into()]);
            if let Some(f) = read_file {
                args.extend(["--read-file".into(), f.into_os_string()]);
            }
            if soak {
                args.push("--soak".into());
            }
            if idle {
                args.push("--idle".into());
            }
            for (flag, v) in [
                ("--soak-seconds", soak_seconds.to_string()),
                ("--idle-seconds", idle_seconds.to_string()),
                ("--idle-reps", idle_reps.to_string()),
            ] {
                args.extend([flag.into(), v.into()]);
            }
            run(&mut as_root(&root.join("target/release/bench"), &args, &[]))
        }
        Task::Man { out } => {
            run(cargo().args(["build", "--package", "tracer"]))?;
            let dir = out.unwrap_or_else(|| root.join("target/man")).join("man1");
            run(Command::new(root.join("target/debug/rstrace"))
                .args(["man-pages", "--dir"])
                .arg(&dir))?;
            println!(
                "man pages in {} (man -l {}/rstrace.1)",
                dir.display(),
                dir.display()
            );
            Ok(())
        }
        Task::Lint => {
            run(cargo().args(["fmt", "--all", "--", "--check"]))?;
            stages::check(&root.join("tracer/src"))?;
            // The eBPF object is not needed to lint the agent.
            run(cargo().env("AYA_BUILD_SKIP", "1").args([
                "clippy",
                "--workspace",
                "--exclude",
                "tracer-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            run(&mut ebpf_clippy(&root))
        }
        Task::Test { filter } => {
            setup::debian_packages(setup::TEST_PACKAGES)?;
            // Unit tests (no root needed).
            let mut unit = cargo();
            unit.args([
                "test",
                "--workspace",
                "--exclude",
                "tracer-ebpf",
                "--exclude",
                "tests",
            ]);
            if let Some(f) = &filter {
                unit.arg(f);
            }
            run(&mut unit)?;
            // Real-kernel tests: build them, then run the binaries as root, serially.
            run(cargo().args([
                "build",
                "--package",
                "tracer",
                "--package",
                "tracer-drivers",
            ]))?;
            // A short, fixed-seed run of the capture reader's fuzzer (no root).
            fuzz_capture(&root, "debug", 15, 1)?;
            let out = cargo()
                .args([
                    "test",
                    "--package",
                    "tests",
                    "--no-run",
                    "--message-format=json",
                ])
                .output()
                .context("building the integration tests")?;
            if !out.status.success() {
                std::io::Write::write_all(&mut std::io::stderr(), &out.stderr)?;
                bail!("building the integration tests failed");
            }
            let bins = test_binaries(&String::from_utf8_lossy(&out.stdout));
            if bins.is_empty() {
                bail!("no integration test binaries were built");
            }
            // What the tests skipped, and why, is printed at the end.
            let skips = root.join("target/test-skips.txt");
            let _ = std::fs::remove_file(&skips);
            let envs = [
                (
                    "RSTRACE_BIN",
                    root.join("target/debug/rstrace").into_os_string(),
                ),
                ("RUST_BACKTRACE", OsString::from("1")),
                ("RSTRACE_TEST_SKIPS", skips.clone().into_os_string()),
            ];
            for bin in bins {
                let mut args = vec![OsString::from("--test-threads=1")];
                if let Some(f) = &filter {
                    args.push(f.into());
                }
                println!("running {} (as root)", bin.display());
                run(&mut as_root(&bin, &args, &envs))?;
            }
            let skipped = std::fs::read_to_string(&skips).unwrap_or_default();
            println!(
                "real-kernel tests: {} skip(s) on this kernel",
                skipped.lines().count()
            );
            print!("{skipped}");
            Ok(())
        }
    }
}

/// Test executables from cargo's JSON messages (`"executable":"..."` of test targets).
pub(crate) fn test_binaries(json: &str) -> Vec<PathBuf> {
    json.lines()
        .filter(|l| {
            l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"kind\":[\"test\"]")
        })
        .filter_map(|l| {
            let start = l.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = l[start..].find('"')? + start;
            Some(PathBuf::from(&l[start..end]))
        })
        .collect()
}
