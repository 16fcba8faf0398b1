//! Installs what the build and tests need on a fresh machine, idempotently:
//! Debian packages, nightly's rust-src, and bpf-linker built against the nightly
//! toolchain's own libLLVM (see shared/BUILD.md), cached under ~/.cache/rstrace.
use std::{
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::run;

/// Debian packages the agent and every task use.
const PACKAGES: &[&str] = &["iproute2", "iptables", "nftables"];
/// Real daemons and clients the tests run in their namespaces (their own instances,
/// started and stopped by pid; the image's policy-rc.d keeps the packages' services
/// from starting on the host).
pub const TEST_PACKAGES: &[&str] = &[
    "nginx-light",
    "redis-server",
    "redis-tools",
    "socat",
    "apache2-utils",
    "curl",
    // A real Prometheus scrapes the agent (tests/tests/metrics.rs); promtool checks
    // the exposition.
    "prometheus",
    // A real container from a locally built root filesystem (tests/tests/workload.rs).
    "crun",
    "busybox-static",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"));
    base.join("rstrace")
}

fn tools_dir() -> PathBuf {
    cache_dir().join("tools")
}

pub fn path_with_tools() -> OsString {
    let mut p = OsString::from(tools_dir().join("bin"));
    if let Some(old) = std::env::var_os("PATH") {
        p.push(":");
        p.push(old);
    }
    p
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn setup() -> Result<()> {
    debian_packages(PACKAGES)?;
    rust_src()?;
    bpf_linker()
}

/// Installs the Debian packages that are not installed yet (dpkg-query keeps it cheap).
pub fn debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages {missing:?}");
    let sudo = !is_root();
    let apt = |args: &[&str]| {
        let mut c = if sudo {
            Command::new("sudo")
        } else {
            Command::new("apt-get")
        };
        if sudo {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["update", "-qq"]))?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing);
    // The daemons' packages start their services when installed: not here, where the
    // tests run their own instances. A policy-rc.d that forbids it (the image has
    // one; elsewhere one is put in place for the install only).
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = is_root() && !policy.exists();
    if ours {
        fs::write(
            policy,
            "#!/bin/sh\n# rstrace xtask: no service starts during its install\nexit 101\n",
        )
        .context("writing /usr/sbin/policy-rc.d")?;
        let mut perms = fs::metadata(policy)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        fs::set_permissions(policy, perms)?;
    }
    let result = run(&mut install);
    if ours {
        let _ = fs::remove_file(policy);
    }
    result
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|s| s.trim() == "0")
}

fn rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context(
        "rustup has no nightly toolchain; install it with `rustup toolchain install nightly`",
    )?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    eprintln!("setup: adding rust-src to the nightly toolchain");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    let tools = tools_dir();
    let verbose = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let llvm_major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV names no LLVM version")?
        .to_string();
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let nightly_lib = Path::new(sysroot.trim()).join("lib");
    // The linker is tied to the exact libLLVM of this nightly: key the cache on it.
    let stamp_want = format!("{BPF_LINKER_VERSION} {}", verbose.replace('\n', " "));
    let stamp = tools.join("bpf-linker.stamp");
    let bin = tools.join("bin/bpf-linker");
    if bin.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_want) {
        return Ok(());
    }
    let libllvm = fs::read_dir(&nightly_lib)
        .with_context(|| format!("reading {}", nightly_lib.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so"))
        })
        .with_context(|| format!("no libLLVM.so in {}", nightly_lib.display()))?;
    let prefix = tools.join("llvm");
    fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {llvm_major} (about a minute)");
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--force",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
            "--root",
        ])
        .arg(&tools)
        .env("LLVM_PREFIX", &prefix)
        .env(
            "RUSTFLAGS",
            format!("-C link-arg=-Wl,-rpath,{}", nightly_lib.display()),
        ))?;
    fs::write(&stamp, stamp_want)?;
    Ok(())
}
