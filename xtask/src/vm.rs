//! `cargo xtask vm-test`: the real-kernel tests on Debian's own 5.10, 6.1 and 6.12
//! cloud kernels, each booted under QEMU TCG (/dev/kvm here is a nested mode stock
//! kernels cannot run under) with a busybox initramfs built here.
//!
//! Kernels are fetched with `apt-get download` through a private apt configuration and
//! state under ~/.cache/rstrace/apt (the machine's apt setup is left alone, and
//! bullseye needs a source the machine does not have), unpacked under
//! ~/.cache/rstrace/vm. The guest gets statically linked rstrace, peer and test
//! executables, iproute2/nftables/util-linux tools with their shared libraries, and the
//! kernel modules the tests need; it prints `rstrace doctor`, runs every integration
//! test binary and ends with an `=== rc=N` line on the serial console, which is all
//! the host reads.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{cargo, run, setup, workspace_root};

/// Debian packages the VM tests need on the host, on top of setup's.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "xz-utils",
    "util-linux",
];
const MIRROR: &str = "http://deb.debian.org";
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Upper bound for one guest (boot, doctor, every test); TCG is 10-30x slower.
const GUEST_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Boots per kernel when the guest dies before running /init (see vm_test).
const BOOT_ATTEMPTS: u32 = 2;
const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";

/// One kernel flavour to test.
struct KernelSpec {
    label: &'static str,
    suite: &'static str,
    /// Package names (apt-cache search --names-only regex); the newest one is used.
    package_regex: &'static str,
}

const KERNELS: &[KernelSpec] = &[
    KernelSpec {
        label: "6.12",
        suite: "bookworm",
        package_regex: r"^linux-image-6\.12\.[0-9]+.*-cloud-amd64$",
    },
    KernelSpec {
        label: "6.1",
        suite: "bookworm",
        package_regex: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64$",
    },
    KernelSpec {
        label: "5.10",
        suite: "bullseye",
        package_regex: r"^linux-image-5\.10\.0-[0-9]+-cloud-amd64$",
    },
];

/// Modules loaded in the guest (with their dependencies), in this order. Those marked
/// required fail the run when missing; the others are loaded when the kernel has them
/// as modules (some are built in, some do not exist on older kernels).
const MODULES: &[(&str, bool)] = &[
    ("veth", true),
    ("nf_tables", true),
    ("inet_diag", true),
    ("tcp_diag", true),
    ("nft_reject_inet", false),
    ("nft_reject_ipv4", false),
    ("nft_reject_ipv6", false),
    ("nft_ct", false),
    ("nft_chain_nat", false),
    ("nft_nat", false),
    ("nft_limit", false),
    ("nft_counter", false),
    ("nft_compat", false),
    ("xt_tcpudp", false),
    ("xt_conntrack", false),
    ("ip_tables", false),
    ("iptable_filter", false),
    ("ipt_REJECT", false),
    ("sch_netem", false),
];

/// Host programs copied into the guest (with the libraries ldd lists), guest path →
/// host path. Optional ones are skipped when absent on the host.
const TOOLS: &[(&str, &str, bool)] = &[
    ("/usr/sbin/ip", "/usr/sbin/ip", true),
    ("/usr/sbin/nft", "/usr/sbin/nft", true),
    ("/usr/bin/setpriv", "/usr/bin/setpriv", true),
    ("/usr/sbin/iptables", "/usr/sbin/iptables", false),
    ("/usr/sbin/iptables-save", "/usr/sbin/iptables-save", false),
];
/// iptables loads its matches and targets with dlopen: ldd does not list them.
const XTABLES_DIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";

pub fn vm_test(kernel: &str, filter: Option<&str>) -> Result<()> {
    let specs: Vec<&KernelSpec> = match kernel {
        "all" => KERNELS.iter().collect(),
        k => vec![KERNELS
            .iter()
            .find(|s| s.label == k)
            .with_context(|| format!("unknown kernel {k:?}; choose 6.12, 6.1, 5.10 or all"))?],
    };
    setup::debian_packages(PACKAGES)?;
    let started = Instant::now();
    let bins = build_guest_binaries()?;
    println!("vm-test: guest binaries built in {:.0?}", started.elapsed());

    let mut results = Vec::new();
    for spec in specs {
        // A kernel that cannot be had fails the run: it would pass untested.
        let kernel =
            fetch_kernel(spec).with_context(|| format!("fetching the {} kernel", spec.label))?;
        let initramfs = build_initramfs(&kernel, &bins, filter)
            .with_context(|| format!("building the initramfs for {}", kernel.release))?;
        let mut result = run_guest(spec.label, &kernel, &initramfs)?;
        // A guest kernel that dies before running /init never reached rstrace (seen
        // once in about 20 boots: an int3 Oops in sched_clock_tick under TCG). That
        // says nothing about the tests, so the boot is retried, a bounded number of
        // times; any failure after /init started stands.
        for attempt in 2..=BOOT_ATTEMPTS {
            if result.reached_init() {
                break;
            }
            println!(
                "vm-test: {} never ran /init (boot attempt {} of {BOOT_ATTEMPTS}); booting again",
                spec.label,
                attempt - 1
            );
            result = run_guest(spec.label, &kernel, &initramfs)?;
        }
        results.push(result);
    }

    println!("\nvm-test summary");
    for r in &results {
        println!(
            "  {:<5} {:<28} {:>6.0?}  {}  {}",
            r.label,
            r.release,
            r.duration,
            match r.rc {
                Some(0) => "ok".to_string(),
                Some(n) => format!("FAILED (rc={n})"),
                None => "FAILED (no rc line)".to_string(),
            },
            r.test_summary()
        );
    }
    println!("  total {:.0?}", started.elapsed());

    if kernel == "all" {
        let host = host_doctor(&bins.rstrace)?;
        let table = support_table(&host, &results);
        println!("\n{table}");
        rewrite_readme(&table)?;
        println!("vm-test: README.md support table rewritten");
    }

    let failed: Vec<&str> = results
        .iter()
        .filter(|r| r.rc != Some(0))
        .map(|r| r.label)
        .collect();
    if !failed.is_empty() {
        // The full output went by above (and is in target/vm/logs); repeat what failed:
        // each test binary's failure summary.
        for r in results.iter().filter(|r| r.rc != Some(0)) {
            println!("\n===== {}: failures =====", r.release);
            let mut inside = false;
            for l in &r.lines {
                if l.starts_with("=== test binary") {
                    println!("{l}");
                }
                inside |= l.trim() == "failures:";
                if inside {
                    println!("{l}");
                }
                inside &= !l.starts_with("test result:");
            }
        }
        bail!("vm-test failed on kernel(s) {failed:?} (guest output above)");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Guest binaries

struct GuestBins {
    rstrace: PathBuf,
    peer: PathBuf,
    tests: Vec<PathBuf>,
}

/// rstrace, peer and the integration tests, statically linked so that they run on any
/// guest, in target/vm so that the normal build is not invalidated.
fn build_guest_binaries() -> Result<GuestBins> {
    let root = workspace_root();
    let target_dir = root.join("target/vm");
    // `cargo <sub>` for the guest target.
    let static_cargo = |sub: &str| {
        let mut c = cargo();
        c.arg(sub)
            // Only for the guest target: with --target, build scripts and proc macros
            // do not get RUSTFLAGS, and aya-build's eBPF child sets its own
            // CARGO_ENCODED_RUSTFLAGS, which cargo prefers.
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            // A smaller initramfs; symbols stay for backtraces.
            .env("CARGO_PROFILE_DEV_DEBUG", "0")
            .env("CARGO_PROFILE_TEST_DEBUG", "0")
            .args(["--target", GUEST_TARGET, "--target-dir"])
            .arg(&target_dir);
        c
    };
    // rstrace optimized: a debug build under TCG is too slow to keep up with the
    // tests' bursts (hundreds of events within their 5 s waits).
    run(static_cargo("build").args(["--release", "--package", "tracer", "--bin", "rstrace"]))
        .context("building rstrace for the guest")?;
    let out = static_cargo("test")
        .args(["--package", "tests", "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("building the integration tests for the guest")?;
    if !out.status.success() {
        bail!("building the integration tests for the guest failed (see above)");
    }
    let tests = crate::test_binaries(&String::from_utf8_lossy(&out.stdout));
    if tests.is_empty() {
        bail!("no integration test binaries were built");
    }
    let out_dir = target_dir.join(GUEST_TARGET);
    let bins = GuestBins {
        rstrace: out_dir.join("release/rstrace"),
        peer: out_dir.join("debug/peer"),
        tests,
    };
    for b in [&bins.rstrace, &bins.peer].into_iter().chain(&bins.tests) {
        if has_interpreter(b)? {
            bail!(
                "{} is dynamically linked; the guest has no glibc for it",
                b.display()
            );
        }
    }
    Ok(bins)
}

/// True when the ELF file asks for a dynamic loader (PT_INTERP).
fn has_interpreter(path: &Path) -> Result<bool> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 {
        bail!("{} is not a 64-bit ELF file", path.display());
    }
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    Ok((0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        data.get(o..o + 4) == Some(&3u32.to_le_bytes())
    }))
}

// ---------------------------------------------------------------------------------
// Kernels

/// A private apt configuration: its own sources, lists and archives, so that neither the
/// machine's apt configuration nor its state change.
struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn new(suite: &str) -> Result<Apt> {
        let dir = setup::cache_dir().join("apt").join(suite);
        for d in ["state/lists/partial", "cache/archives/partial", "download"] {
            fs::create_dir_all(dir.join(d))
                .with_context(|| format!("creating {}", dir.join(d).display()))?;
        }
        let sources = format!(
            "deb [signed-by={KEYRING}] {MIRROR}/debian {suite} main\n\
             deb [signed-by={KEYRING}] {MIRROR}/debian-security {suite}-security main\n"
        );
        fs::write(dir.join("sources.list"), sources)?;
        let status = dir.join("state/status");
        if !status.exists() {
            fs::write(&status, "")?;
        }
        Ok(Apt { dir })
    }

    fn cmd(&self, program: &str) -> Command {
        let d = &self.dir;
        let mut c = Command::new(program);
        for (k, v) in [
            ("Dir::Etc::SourceList", d.join("sources.list")),
            ("Dir::Etc::SourceParts", PathBuf::from("/dev/null")),
            ("Dir::State", d.join("state")),
            ("Dir::State::status", d.join("state/status")),
            ("Dir::Cache", d.join("cache")),
            ("Acquire::Languages", PathBuf::from("none")),
            ("APT::Architectures", PathBuf::from("amd64")),
            // The unpacked files are ours; the _apt user could not write there.
            ("APT::Sandbox::User", PathBuf::from("root")),
        ] {
            c.arg("-o").arg(format!("{k}={}", v.display()));
        }
        c.env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    fn update(&self) -> Result<()> {
        let out = self
            .cmd("apt-get")
            .args(["-q", "update"])
            .output()
            .context("running apt-get update")?;
        let err = String::from_utf8_lossy(&out.stderr);
        // apt-get update exits 0 on unreachable mirrors; its warnings say so.
        if !out.status.success() || err.contains("W: Failed to fetch") || err.contains("E: ") {
            bail!(
                "apt-get update ({}) failed: {}",
                self.dir.display(),
                err.trim()
            );
        }
        Ok(())
    }

    /// The newest package whose name matches the regex (by the numbers in its name).
    fn newest(&self, regex: &str) -> Result<Option<String>> {
        let out = self
            .cmd("apt-cache")
            .args(["search", "--names-only", regex])
            .output()
            .context("running apt-cache search")?;
        if !out.status.success() {
            bail!(
                "apt-cache search {regex} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .max_by_key(|n| numbers(n))
            .map(str::to_string))
    }

    fn download(&self, package: &str) -> Result<PathBuf> {
        let dir = self.dir.join("download");
        for e in fs::read_dir(&dir)?.flatten() {
            fs::remove_file(e.path()).ok();
        }
        run(self
            .cmd("apt-get")
            .current_dir(&dir)
            .args(["-q", "download", package]))?;
        fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| format!("apt-get download {package} left no .deb"))
    }
}

fn numbers(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect()
}

struct Kernel {
    package: String,
    release: String,
    vmlinuz: PathBuf,
    /// lib/modules/<release>
    modules: PathBuf,
}

/// The newest kernel package of this flavour, unpacked in the cache. Falls back to the
/// cached one when the archive cannot be reached.
fn fetch_kernel(spec: &KernelSpec) -> Result<Kernel> {
    let base = setup::cache_dir().join("vm/kernels").join(spec.label);
    let apt = Apt::new(spec.suite)?;
    let newest = apt.update().and_then(|()| apt.newest(spec.package_regex));
    let package = match newest {
        Ok(Some(p)) => p,
        Ok(None) => bail!(
            "Debian {} has no package matching {}",
            spec.suite,
            spec.package_regex
        ),
        Err(e) => {
            let cached = fs::read_dir(&base)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().join(".complete").exists())
                .filter_map(|e| e.file_name().into_string().ok())
                .max_by_key(|n| numbers(n));
            match cached {
                Some(p) => {
                    println!(
                        "vm-test: Debian {} unreachable ({e:#}); using cached {p}",
                        spec.suite
                    );
                    p
                }
                None => {
                    return Err(e.context(format!(
                        "Debian {} cannot be reached and no {} kernel is cached",
                        spec.suite, spec.label
                    )))
                }
            }
        }
    };
    let dir = base.join(&package);
    if !dir.join(".complete").exists() {
        println!("vm-test: fetching {package}");
        let deb = apt.download(&package)?;
        let tmp = base.join(format!(".{package}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        fs::write(tmp.join(".complete"), "")?;
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&tmp, &dir)?;
        fs::remove_file(&deb).ok();
        // Older kernels of this flavour are not needed any more.
        for e in fs::read_dir(&base)?.flatten() {
            if e.path() != dir {
                fs::remove_dir_all(e.path()).ok();
            }
        }
    }
    let modules_root = dir.join("lib/modules");
    let release = fs::read_dir(&modules_root)
        .with_context(|| format!("reading {}", modules_root.display()))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .next()
        .with_context(|| format!("{} has no lib/modules", dir.display()))?;
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.exists() {
        bail!("{} not found in {package}", vmlinuz.display());
    }
    Ok(Kernel {
        package,
        modules: modules_root.join(&release),
        release,
        vmlinuz,
    })
}

// ---------------------------------------------------------------------------------
// Initramfs

/// A newc cpio archive assembled in memory: directories implied by the paths, files,
/// symlinks.
#[derive(Default)]
struct Cpio {
    entries: BTreeMap<String, Entry>,
}

enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    Symlink(String),
}

impl Cpio {
    fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/');
        let mut dir = Path::new(path).parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            self.entries
                .entry(d.to_string_lossy().into_owned())
                .or_insert(Entry::Dir);
            dir = d.parent();
        }
        self.entries.insert(path.to_string(), entry);
    }

    fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) {
        self.add(path, Entry::File { data, mode });
    }

    fn copy(&mut self, path: &str, host: &Path) -> Result<()> {
        let data = fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(host)?.permissions());
        self.file(path, data, mode & 0o7777);
        Ok(())
    }

    fn write(&self, out: &Path) -> Result<()> {
        let mut w = std::io::BufWriter::new(
            fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
        );
        let mut ino = 1;
        let mut put = |w: &mut std::io::BufWriter<fs::File>, name: &str, mode: u32, data: &[u8]| {
            let header = format!(
                "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
                0, 0, 1, 0, data.len(), 0, 0, 0, 0, name.len() + 1, 0
            );
            ino += 1;
            w.write_all(header.as_bytes())?;
            w.write_all(name.as_bytes())?;
            w.write_all(&[0])?;
            w.write_all(&[0; 3][..(4 - (110 + name.len() + 1) % 4) % 4])?;
            w.write_all(data)?;
            w.write_all(&[0; 3][..(4 - data.len() % 4) % 4])?;
            std::io::Result::Ok(())
        };
        // BTreeMap order puts every directory before what it contains.
        for (name, e) in &self.entries {
            match e {
                Entry::Dir => put(&mut w, name, 0o040755, &[])?,
                Entry::File { data, mode } => put(&mut w, name, 0o100000 | mode, data)?,
                Entry::Symlink(t) => put(&mut w, name, 0o120777, t.as_bytes())?,
            }
        }
        put(&mut w, "TRAILER!!!", 0, &[])?;
        w.flush()?;
        Ok(())
    }
}

const INIT: &str = r#"#!/bin/sh
# rstrace vm-test guest: mount what the tests and rstrace need, load the modules,
# print rstrace doctor, run the tests, report `=== rc=N`, power off.
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin RUST_BACKTRACE=1 RSTRACE_BIN=/rstrace/bin/rstrace RSTRACE_TEST_TIME_SCALE=5 RSTRACE_TEST_NO_DAEMONS=1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
# The unified hierarchy, as systemd mounts it: the workload tests make cgroups there.
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo 1 > /proc/sys/kernel/printk
while read -r m; do insmod "$m" || echo "=== insmod $m failed"; done < /etc/rstrace/modules
ip link set lo up
# The hooks' tracepoints stay enabled (nothing recorded: tracing_on is 0), so that
# rstrace's many attaches and detaches do not flip their static keys: live code
# patching under multi-threaded TCG once hit its own breakpoint (Oops: int3 in
# syscall_trace_enter, 6.12 guest) and panicked the guest.
T=/sys/kernel/tracing
echo 0 > $T/tracing_on
for e in tcp/tcp_send_reset tcp/tcp_receive_reset tcp/tcp_retransmit_skb \
    tcp/tcp_retransmit_synack tcp/tcp_destroy_sock skb/kfree_skb sock/inet_sock_set_state \
    sock/inet_sk_error_report syscalls/sys_enter_connect syscalls/sys_exit_connect \
    syscalls/sys_exit_accept syscalls/sys_exit_accept4; do
    [ -e $T/events/$e/enable ] && echo 1 > $T/events/$e/enable
done
echo "=== kernel $(uname -r)"
echo "=== rstrace doctor"
$RSTRACE_BIN doctor
echo "=== doctor-json-begin"
$RSTRACE_BIN doctor --json
echo "=== doctor-json-end"
rc=0
for t in /rstrace/t/deps/*; do
    echo "=== test binary ${t##*/}"
    "$t" --test-threads=1 --nocapture $TEST_FILTER || rc=1
done
echo "=== rc=$rc"
poweroff -f
"#;

fn build_initramfs(kernel: &Kernel, bins: &GuestBins, filter: Option<&str>) -> Result<PathBuf> {
    let mut cpio = Cpio::default();
    let init = match filter {
        Some(f) => INIT.replace("$TEST_FILTER", &shell_quote(f)),
        None => INIT.replace("$TEST_FILTER", ""),
    };
    cpio.file("init", init.into_bytes(), 0o755);
    cpio.copy("bin/busybox", Path::new("/bin/busybox"))?;
    cpio.add("bin/sh", Entry::Symlink("busybox".into()));
    cpio.add("var/run", Entry::Symlink("../run".into()));
    for d in ["proc", "sys", "dev", "run", "tmp", "etc"] {
        cpio.add(d, Entry::Dir);
    }
    cpio.file(
        "etc/passwd",
        b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n".to_vec(),
        0o644,
    );
    cpio.file(
        "etc/group",
        b"root:x:0:\nnogroup:x:65534:\n".to_vec(),
        0o644,
    );

    // The harness finds peer at <test exe>/../../peer and rstrace through RSTRACE_BIN.
    cpio.copy("rstrace/bin/rstrace", &bins.rstrace)?;
    cpio.copy("rstrace/t/peer", &bins.peer)?;
    for t in &bins.tests {
        let name = t.file_name().context("test binary name")?.to_string_lossy();
        cpio.copy(&format!("rstrace/t/deps/{name}"), t)?;
    }

    let mut libs = BTreeSet::new();
    for (guest, host, required) in TOOLS {
        let host = Path::new(host);
        if !host.exists() {
            if *required {
                bail!("{} is missing on the host", host.display());
            }
            continue;
        }
        // Copy the file a symlink (Debian alternatives) points to, under the name the
        // tests call.
        let real = fs::canonicalize(host)?;
        cpio.copy(guest, &real)?;
        libs.extend(shared_libraries(&real)?);
    }
    if Path::new(XTABLES_DIR).is_dir() && Path::new("/usr/sbin/iptables").exists() {
        for e in fs::read_dir(XTABLES_DIR)?.flatten() {
            let p = e.path();
            cpio.copy(&p.to_string_lossy(), &p)?;
            libs.extend(shared_libraries(&p)?);
        }
    }
    for lib in libs {
        cpio.copy(&lib.to_string_lossy(), &fs::canonicalize(&lib)?)?;
    }

    let order = module_load_order(kernel)?;
    let mut list = String::new();
    for (name, path) in order {
        let data = if path.extension().is_some_and(|e| e == "xz") {
            let out = Command::new("xz")
                .arg("-dc")
                .arg(&path)
                .output()
                .context("running xz (xz-utils)")?;
            if !out.status.success() {
                bail!("xz -dc {} failed", path.display());
            }
            out.stdout
        } else {
            fs::read(&path)?
        };
        let guest = format!("lib/modules/{}/{name}.ko", kernel.release);
        cpio.file(&guest, data, 0o644);
        list.push_str(&format!("/{guest}\n"));
    }
    cpio.file("etc/rstrace/modules", list.into_bytes(), 0o644);

    let out_dir = workspace_root().join("target/vm/initramfs");
    fs::create_dir_all(&out_dir)?;
    let out = out_dir.join(format!("{}.cpio", kernel.release));
    cpio.write(&out)?;
    Ok(out)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Libraries (and the loader) a dynamically linked host program needs, from ldd.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .with_context(|| format!("running ldd {}", program.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// The wanted modules and their dependencies (from each module's `depends=` modinfo),
/// dependencies first, as (name, path in the kernel package).
fn module_load_order(kernel: &Kernel) -> Result<Vec<(String, PathBuf)>> {
    let mut index = HashMap::new();
    index_modules(&kernel.modules.join("kernel"), &mut index)?;
    let builtin: BTreeSet<String> = fs::read_to_string(kernel.modules.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Path::new(l).file_name())
        .map(|n| module_name(&n.to_string_lossy()))
        .collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, required) in MODULES {
        if !index.contains_key(*name) {
            if builtin.contains(*name) {
                continue;
            }
            if *required {
                bail!("kernel {} has no module {name}", kernel.release);
            }
            println!("vm-test: {} has no module {name} (skipped)", kernel.release);
            continue;
        }
        visit_module(name, &index, &mut seen, &mut order)?;
    }
    Ok(order)
}

fn visit_module(
    name: &str,
    index: &HashMap<String, PathBuf>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<(String, PathBuf)>,
) -> Result<()> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    // Built-in dependencies are not in the index and need no loading.
    let Some(path) = index.get(name) else {
        return Ok(());
    };
    let data = if path.extension().is_some_and(|e| e == "xz") {
        Command::new("xz").arg("-dc").arg(path).output()?.stdout
    } else {
        fs::read(path)?
    };
    for dep in modinfo_depends(&data) {
        visit_module(&dep, index, seen, order)?;
    }
    order.push((name.to_string(), path.clone()));
    Ok(())
}

/// `depends=a,b` from the module's .modinfo section.
fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(start) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[start + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(module_name)
        .collect()
}

fn module_name(file: &str) -> String {
    file.trim_end_matches(".xz")
        .trim_end_matches(".ko")
        .replace('-', "_")
}

fn index_modules(dir: &Path, index: &mut HashMap<String, PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            index_modules(&p, index)?;
        } else if let Some(n) = p.file_name().map(|n| n.to_string_lossy().into_owned()) {
            if n.ends_with(".ko") || n.ends_with(".ko.xz") {
                index.insert(module_name(&n), p);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Running a guest

struct GuestResult {
    label: &'static str,
    release: String,
    duration: Duration,
    rc: Option<i32>,
    lines: Vec<String>,
    doctor: Option<Value>,
}

impl GuestResult {
    /// Whether the guest ran the init script (its first line; the console may put
    /// escape codes before it on the same line).
    fn reached_init(&self) -> bool {
        self.lines.iter().any(|l| l.contains("=== kernel "))
    }

    /// libtest's "test result:" lines, summed.
    fn test_summary(&self) -> String {
        let (mut passed, mut failed) = (0, 0);
        for l in &self.lines {
            if let Some(rest) = l.split("test result: ").nth(1) {
                let n = |what: &str| {
                    rest.split(';')
                        .find(|p| p.contains(what))
                        .and_then(|p| numbers(p).first().copied())
                        .unwrap_or(0)
                };
                passed += n("passed");
                failed += n("failed");
            }
        }
        format!("{passed} passed, {failed} failed")
    }
}

fn run_guest(label: &'static str, kernel: &Kernel, initramfs: &Path) -> Result<GuestResult> {
    println!(
        "vm-test: booting {} ({}) under QEMU TCG",
        kernel.release, kernel.package
    );
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "1024",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-kernel",
        ])
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        // panic=-1 with -no-reboot: a guest panic ends QEMU instead of hanging.
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (package qemu-system-x86)")?;
    let (tx, rx) = mpsc::channel();
    for out in [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\r', '\n'])
                    .to_string();
                if tx.send(line).is_err() {
                    break;
                }
                buf.clear();
            }
        });
    }
    drop(tx);
    let deadline = started + GUEST_TIMEOUT;
    let mut lines = Vec::new();
    let mut timed_out = false;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => {
                println!("[{label}] {l}");
                lines.push(l);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    if timed_out {
        println!("vm-test: {label} still running after {GUEST_TIMEOUT:?}: killing QEMU");
        child.kill().ok();
    }
    let status = child.wait().context("waiting for QEMU")?;
    let duration = started.elapsed();
    let rc = lines
        .iter()
        .rev()
        .find_map(|l| l.split("=== rc=").nth(1))
        .and_then(|n| n.trim().parse().ok());
    if rc.is_none() {
        println!("vm-test: {label} gave no `=== rc=` line (QEMU {status})");
    }
    let doctor = doctor_json(&lines);
    let log_dir = workspace_root().join("target/vm/logs");
    fs::create_dir_all(&log_dir)?;
    let log = log_dir.join(format!("{label}.log"));
    fs::write(&log, lines.join("\n") + "\n")
        .with_context(|| format!("writing {}", log.display()))?;
    println!(
        "vm-test: {label} finished in {duration:.0?} (log in {})",
        log.display()
    );
    Ok(GuestResult {
        label,
        release: kernel.release.clone(),
        duration,
        rc,
        lines,
        doctor,
    })
}

fn doctor_json(lines: &[String]) -> Option<Value> {
    let start = lines
        .iter()
        .position(|l| l.ends_with("=== doctor-json-begin"))?;
    let end = start
        + lines[start..]
            .iter()
            .position(|l| l.ends_with("=== doctor-json-end"))?;
    serde_json::from_str(&lines[start + 1..end].join("\n")).ok()
}

// ---------------------------------------------------------------------------------
// Support table

fn host_doctor(rstrace: &Path) -> Result<Value> {
    let out = crate::as_root(rstrace, &["doctor".into(), "--json".into()], &[])
        .stderr(Stdio::inherit())
        .output()
        .context("running rstrace doctor --json on the host")?;
    serde_json::from_slice(&out.stdout).context("parsing the host's rstrace doctor --json")
}

fn support_table(host: &Value, guests: &[GuestResult]) -> String {
    let mut columns: Vec<(String, Option<&Value>)> = vec![(
        format!("{} (host)", host["kernel"].as_str().unwrap_or("host")),
        Some(host),
    )];
    for g in guests {
        columns.push((g.release.clone(), g.doctor.as_ref()));
    }
    let caps = |v: &Value| -> BTreeMap<String, bool> {
        v["capabilities"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| Some((c["name"].as_str()?.to_string(), c["available"].as_bool()?)))
            .collect()
    };
    let per_column: Vec<Option<BTreeMap<String, bool>>> =
        columns.iter().map(|(_, v)| v.map(caps)).collect();
    let mut s = String::from("| capability |");
    for (name, _) in &columns {
        s.push_str(&format!(" {name} |"));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(columns.len()));
    s.push('\n');
    // Rows in the order doctor lists them, with its description.
    for c in host["capabilities"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("?");
        s.push_str(&format!("| `{name}` |"));
        for col in &per_column {
            let cell = match col.as_ref().map(|m| m.get(name)) {
                Some(Some(true)) => "yes",
                Some(Some(false)) => "no",
                Some(None) => "?",
                None => "not run",
            };
            s.push_str(&format!(" {cell} |"));
        }
        s.push('\n');
    }
    s.push_str(
        "\nGenerated by `cargo xtask vm-test` from `rstrace doctor --json` on the host and \
         in each guest (Debian cloud kernels under QEMU).\n",
    );
    s
}

const TABLE_START: &str = "<!-- support-table:start -->";
const TABLE_END: &str = "<!-- support-table:end -->";

fn rewrite_readme(table: &str) -> Result<()> {
    let path = workspace_root().join("README.md");
    let text = fs::read_to_string(&path).context("reading README.md")?;
    let (Some(a), Some(b)) = (text.find(TABLE_START), text.find(TABLE_END)) else {
        bail!("README.md lacks the {TABLE_START} / {TABLE_END} markers");
    };
    let new = format!("{}{TABLE_START}\n{table}{}", &text[..a], &text[b..]);
    fs::write(&path, new).context("writing README.md")
}
