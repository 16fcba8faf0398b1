//! `rstrace probe HOST:PORT`: the connection runbook in one command. It resolves the
//! target as applications do, connects to each address with the eBPF programs
//! attached (so the failure is explained by the same rules as `watch`), traces the
//! path with TTL-limited SYNs when the SYNs go unanswered, reads the local firewall
//! rules and listeners for the port, and ends with a verdict, the runbook's fix and
//! an exit code a health check can use.
//!
//! Everything that needs privileges is optional: without root the probe still
//! resolves, connects and traces the path, and names the evidence it could not get.
mod local;
mod net;
mod resolve;
mod runbook;

use std::{
    fs, io,
    io::Write as _,
    net::SocketAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use tracer_common::{ListenKey, ListenOwner};

pub use self::resolve::Target;
use self::{local::Local, net::Attempt, resolve::Resolution};
use crate::{
    base::{
        clock::Clock,
        reasons,
        record::{errno_name, Kind, SCHEMA_VERSION},
    },
    cmd::watch,
    decode::Decoder,
    explain::Explanation,
    pipeline::{filter::Filter, Pipeline},
    sink::Collect,
    source::{
        exits::Exits,
        firewall::{self, Rule},
        netns::{self, Observation},
    },
};

/// Exit codes: what a health check can act on.
pub mod exit {
    pub const REACHABLE: u8 = 0;
    pub const ERROR: u8 = 1;
    pub const REFUSED: u8 = 2;
    pub const TIMED_OUT: u8 = 3;
    pub const UNRESOLVABLE: u8 = 4;
    pub const UNREACHABLE: u8 = 5;
}

#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub target: Target,
    pub netns: Option<String>,
    pub json: bool,
    pub verbose: bool,
    pub timeout: Duration,
    pub count: u32,
    pub interval: Duration,
    pub max_hops: u32,
    /// When the probe started: the timeout bounds the whole probe (loading the
    /// programs and resolving included), not only the connect.
    pub started: Instant,
}

#[derive(Debug, Serialize)]
pub struct AttemptReport {
    pub dst: SocketAddr,
    pub src_port: u16,
    /// `connected`, `refused`, `timed out`, `unreachable`, `failed`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno_name: Option<&'static str>,
    pub elapsed_ms: u64,
    /// ICMP errors the connect got, with their senders.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub icmp: Vec<net::Icmp>,
    /// rstrace's explanations of this connection (same as `watch`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub explanations: Vec<Explanation>,
}

#[derive(Debug, Serialize)]
pub struct Verdict {
    /// `reachable`, `refused`, `timed out`, `unresolvable`, `unreachable`, `failed`.
    pub status: &'static str,
    pub exit_code: u8,
    /// The cause id (as in `watch`), when the kernel evidence gave one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<&'static str>,
    pub explanation: String,
    /// The runbook's step for this cause, e.g. "open the port".
    pub runbook: String,
    /// What the probe found that points at the fix (rule, hop, listener, record).
    pub details: Vec<String>,
    /// Commands for the fix or the check.
    pub commands: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub v: u32,
    pub kind: &'static str,
    pub time: String,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    pub resolution: Resolution,
    pub attempts: Vec<AttemptReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<net::Path>,
    pub firewall: Vec<Rule>,
    /// Where the firewall rules were read (namespaces).
    pub firewall_checked: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<Local>,
    pub verdict: Verdict,
    /// Evidence the probe could not gather, and why.
    pub missing: Vec<String>,
    pub elapsed_ms: u64,
}

/// The agent's programs, the namespace monitor and a pipeline whose explanations are
/// kept for the probe instead of printed.
struct Tracer {
    _session: watch::Session,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    listeners: aya::maps::HashMap<aya::maps::MapData, ListenKey, ListenOwner>,
    decoder: Decoder,
    pipe: Pipeline<Collect>,
    /// Listeners' owners whose exit is watched, as `watch` does.
    exits: Exits,
    clock: Clock,
    observations: mpsc::Receiver<Observation>,
    stop: Arc<AtomicBool>,
    rescan: Arc<AtomicBool>,
    monitor: Option<thread::JoinHandle<()>>,
}

const RING_BYTES: u32 = 1 << 22;

impl Tracer {
    fn start() -> Result<Tracer> {
        let mut session = watch::start(RING_BYTES)?;
        let maps = session.probes.take_maps()?;
        let clock = Clock::now();
        // Probe reads the rules itself and asks the monitor for none.
        let pipe = Pipeline::new(clock, Filter::default(), Collect::default()).for_probe();
        let stop = Arc::new(AtomicBool::new(false));
        let rescan = Arc::new(AtomicBool::new(false));
        let (tx, observations) = mpsc::sync_channel(1024);
        // A short interval: an overflow caused by the probe's own SYN must be seen
        // within the probe.
        let monitor = {
            let (stop, rescan) = (stop.clone(), rescan.clone());
            // The probe's own sockets are all known to the kernel: no lookups.
            let (_, lookups) = mpsc::sync_channel(1);
            thread::spawn(move || {
                let busy = Arc::new(AtomicBool::new(false));
                netns::run_monitor(
                    Duration::from_millis(100),
                    stop,
                    rescan,
                    busy,
                    lookups,
                    |o| tx.send(o).is_ok(),
                )
            })
        };
        let mut t = Tracer {
            decoder: Decoder::new(&session.info),
            _session: session,
            ring: maps.ring,
            listeners: maps.listeners,
            pipe,
            exits: Exits::default(),
            clock,
            observations,
            stop,
            rescan,
            monitor: Some(monitor),
        };
        // The listeners and addresses already there go in first, as in `watch`.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match t.observations.recv_timeout(left) {
                Ok(Observation::Started) => break,
                Ok(o) => watch::on_observation(o, &mut t.pipe, &mut t.listeners, &t.clock)?,
                Err(_) => {
                    log::warn!(
                        "the namespaces took over 10 s to read; explanations may lack context"
                    );
                    break;
                }
            }
        }
        Ok(t)
    }

    /// Feeds what the kernel and the monitor reported so far.
    fn pump(&mut self) {
        while let Some(item) = self.ring.next() {
            match self.decoder.decode(&item) {
                Ok(r) => {
                    let more = self.decoder.unfold(&r);
                    for r in std::iter::once(r).chain(more.into_iter().flatten()) {
                        let _ = self.pipe.push_seen(r, |r| self.exits.saw(r));
                    }
                }
                Err(e) => log::warn!("undecodable event: {e}"),
            }
        }
        while let Ok(o) = self.observations.try_recv() {
            let _ = watch::on_observation(o, &mut self.pipe, &mut self.listeners, &self.clock);
        }
        let now = Clock::now().mono_ns;
        for r in self.exits.check(now, &self.clock) {
            let _ = self.pipe.push(r);
        }
        let _ = self.pipe.advance(now);
        if self.pipe.take_context_request() {
            self.rescan.store(true, Ordering::Relaxed);
        }
    }

    /// The explanations of attempt `a`: late evidence is awaited briefly (a failed
    /// attempt until the engine explains it by itself, which includes its waits for
    /// context, up to 1.2 s), then the engine is made to conclude what is pending.
    /// Concluding at once made a slow host's verdict lack the context it asked for.
    fn explain(&mut self, a: &Attempt) -> Vec<Explanation> {
        let start = Instant::now();
        let (least, most) = (Duration::from_millis(150), Duration::from_millis(1200));
        loop {
            self.pump();
            let waited = start.elapsed();
            let ours = |e: &Explanation| e.src.is_some_and(|s| s.port() == a.src_port);
            let done = waited >= least
                && (a.errno == 0 || self.pipe.sink().explanations().iter().any(ours));
            if done || waited >= most {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.pump();
        let _ = self.pipe.finish();
        let all = self.pipe.sink().take();
        let me = std::process::id();
        for e in &all {
            log::debug!(
                "explained: {} {:?} -> {:?}: {}",
                e.cause,
                e.src,
                e.dst,
                e.explanation
            );
        }
        let port = a.dst.port();
        let mut out: Vec<Explanation> = all
            .iter()
            .filter(|e| {
                let ours = e.src.is_some_and(|s| s.port() == a.src_port)
                    || (a.immediate && e.process.as_ref().is_some_and(|p| p.pid == me));
                ours && e.outcome != "overflow" && e.dst.map(|d| d.port()) == Some(port)
            })
            .cloned()
            .collect();
        // The listener's latest overflow report (one per counter poll while the
        // queue stays full: the last says it all).
        if let Some(o) = all
            .into_iter()
            .rev()
            .find(|e| e.outcome == "overflow" && e.dst.is_some_and(|d| d.port() == port))
        {
            out.push(o);
        }
        out
    }

    /// Namespaces where the kernel dropped evidence of `e` (firewall drops).
    fn drop_netns(e: &Explanation) -> Vec<u32> {
        let mut out: Vec<u32> = e
            .evidence
            .iter()
            .filter(|r| {
                r.kind == Kind::Drop && r.reason.as_deref() == Some(reasons::NETFILTER_DROP)
            })
            .filter_map(|r| r.netns)
            .collect();
        out.extend(e.server_netns.filter(|_| e.cause.starts_with("firewall")));
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // The monitor stops at its next check; it is not waited for (it may be
        // half-way through reading every namespace), so the probe's exit is not late.
        self.stop.store(true, Ordering::Relaxed);
        drop(self.monitor.take());
    }
}

/// Joins the named namespace as `ip netns exec` does: its network namespace, and its
/// /etc/netns/NAME/hosts over /etc/hosts in a mount namespace of our own. Called
/// before any thread starts, so that every thread runs there.
fn enter_netns(name: &str) -> Result<(Option<PathBuf>, Option<String>)> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("--netns {name:?}: not a namespace name");
    }
    let path = Path::new("/run/netns").join(name);
    let f = fs::File::open(&path).map_err(|e| {
        anyhow!(
            "--netns {name}: {} ({e}); `ip netns list` shows the named namespaces",
            path.display()
        )
    })?;
    // SAFETY: `f` is an open namespace file for the call.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        bail!("--netns {name}: joining it: {e} (entering a namespace needs root)");
    }
    let hosts = Path::new("/etc/netns").join(name).join("hosts");
    if !hosts.exists() {
        return Ok((None, None));
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (src, dst, root) = (c(&hosts.to_string_lossy()), c(resolve::HOSTS), c("/"));
    // SAFETY: no pointers; it changes only this thread's mount namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        bail!(
            "--netns {name}: unshare(CLONE_NEWNS) for its hosts file: {}",
            io::Error::last_os_error()
        );
    }
    // Keep our bind mount from propagating to the host.
    // SAFETY: `root` is a NUL-terminated string alive for the call; the others may be
    // null for a propagation change.
    let slave = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_SLAVE | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if slave != 0 {
        bail!(
            "--netns {name}: making mounts private: {}",
            io::Error::last_os_error()
        );
    }
    // SAFETY: `src` and `dst` are NUL-terminated strings alive for the call; type and
    // data may be null for a bind mount.
    let bind = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    if bind != 0 {
        // As `ip netns exec` does: say so, and go on with the host's file.
        return Ok((
            None,
            Some(format!(
                "the namespace's hosts file: bind-mounting {} over {}: {}; names \
                 resolve as on the host",
                hosts.display(),
                resolve::HOSTS,
                io::Error::last_os_error()
            )),
        ));
    }
    Ok((Some(hosts), None))
}

fn status_of(errno: i32) -> (&'static str, u8) {
    match errno {
        0 => ("reachable", exit::REACHABLE),
        libc::ECONNREFUSED | libc::ECONNRESET => ("refused", exit::REFUSED),
        libc::ETIMEDOUT => ("timed out", exit::TIMED_OUT),
        libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EACCES | libc::EPERM | libc::EINVAL => {
            ("unreachable", exit::UNREACHABLE)
        }
        _ => ("failed", exit::UNREACHABLE),
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis() as u64
}

pub fn run(cfg: ProbeConfig) -> Result<u8> {
    let (hosts_file, hosts_missing) = match &cfg.netns {
        Some(n) => enter_netns(n)?,
        None => (None, None),
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut base_missing: Vec<String> = hosts_missing.into_iter().collect();
    let mut tracer = if crate::kernel::privileges::check().is_ok() {
        match Tracer::start() {
            Ok(t) => Some(t),
            Err(e) => {
                base_missing.push(format!("kernel evidence (eBPF): {e:#}"));
                None
            }
        }
    } else {
        base_missing.push(
            "kernel evidence (eBPF programs need root, or CAP_BPF and CAP_PERFMON): the \
             verdict rests on the errno and the listener table"
                .to_string(),
        );
        None
    };
    if !root {
        base_missing.push(
            "firewall rules (nft and iptables need root) and the listeners of other \
             namespaces"
                .to_string(),
        );
    }
    let hosts_label = hosts_file
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| resolve::HOSTS.to_string());
    let mut stdout = io::stdout().lock();
    let mut runs = Vec::new();
    for i in 0..cfg.count.max(1) {
        let run_start = if i > 0 {
            thread::sleep(cfg.interval);
            Instant::now()
        } else {
            cfg.started
        };
        let report = probe_once(
            &cfg,
            run_start,
            tracer.as_mut(),
            &base_missing,
            &hosts_label,
            root,
        );
        if cfg.json {
            serde_json::to_writer(&mut stdout, &report)?;
            writeln!(stdout)?;
        } else if cfg.count > 1 {
            writeln!(stdout, "{}", runbook::one_line(&report))?;
        } else {
            stdout.write_all(runbook::text(&report, cfg.verbose).as_bytes())?;
        }
        stdout.flush()?;
        runs.push(report);
    }
    drop(tracer.take());
    if cfg.count > 1 {
        let s = runbook::Summary::of(&runs);
        if cfg.json {
            serde_json::to_writer(&mut stdout, &s)?;
            writeln!(stdout)?;
        } else {
            stdout.write_all(s.text().as_bytes())?;
        }
        return Ok(s.exit_code);
    }
    Ok(runs[0].verdict.exit_code)
}

fn probe_once(
    cfg: &ProbeConfig,
    started: Instant,
    mut tracer: Option<&mut Tracer>,
    base_missing: &[String],
    hosts_label: &str,
    root: bool,
) -> Report {
    let time = Clock::now().format(Clock::now().mono_ns);
    let mut missing = base_missing.to_vec();
    let mut report = Report {
        v: SCHEMA_VERSION,
        kind: "probe",
        time,
        target: cfg.target.to_string(),
        netns: cfg.netns.clone(),
        resolution: Resolution::default(),
        attempts: Vec::new(),
        path: None,
        firewall: Vec::new(),
        firewall_checked: Vec::new(),
        local: None,
        verdict: Verdict {
            status: "unresolvable",
            exit_code: exit::UNRESOLVABLE,
            cause: None,
            explanation: String::new(),
            runbook: String::new(),
            details: Vec::new(),
            commands: Vec::new(),
        },
        missing: Vec::new(),
        elapsed_ms: 0,
    };
    // What is left of the timeout, keeping time to explain and report.
    let left = || {
        cfg.timeout
            .saturating_sub(started.elapsed() + Duration::from_millis(250))
            .max(Duration::from_secs(1))
    };
    match resolve::resolve(&cfg.target, left()) {
        Ok(r) => report.resolution = r,
        Err(e) => {
            report.verdict.explanation = format!("{} does not resolve: {e:#}", cfg.target.host);
            report.verdict.runbook = "fix the record".into();
            report.verdict.commands = vec![
                format!("getent ahosts {}", cfg.target.host),
                format!("grep -n {} {hosts_label}", cfg.target.host),
                format!(
                    "dig {} (and check /etc/resolv.conf, /etc/nsswitch.conf)",
                    cfg.target.host
                ),
            ];
            report.missing = missing;
            report.elapsed_ms = millis(started.elapsed());
            return report;
        }
    }
    let mut path_thread = None;
    let mut explanations_ns = Vec::new();
    for answer in report.resolution.answers.clone() {
        let dst = SocketAddr::new(answer.addr, cfg.target.port);
        let attempt = {
            let tr = &mut tracer;
            let path_thread = &mut path_thread;
            let (timeout, hops) = (left(), cfg.max_hops);
            net::connect(dst, timeout, |waited| {
                if let Some(t) = tr.as_deref_mut() {
                    t.pump();
                }
                // The first SYN went unanswered (its retransmit is due at 1 s): trace
                // the path meanwhile, within what is left of the timeout.
                if waited >= Duration::from_millis(1000) && path_thread.is_none() {
                    let budget = timeout
                        .saturating_sub(waited + Duration::from_millis(500))
                        .clamp(Duration::from_millis(500), Duration::from_secs(2));
                    *path_thread = Some(thread::spawn(move || net::trace(dst, hops, budget)));
                }
            })
        };
        let attempt = match attempt {
            Ok(a) => a,
            Err(e) => {
                missing.push(format!("connect to {dst}: {e}"));
                continue;
            }
        };
        let explanations = tracer
            .as_deref_mut()
            .map(|t| t.explain(&attempt))
            .unwrap_or_default();
        for e in &explanations {
            explanations_ns.extend(Tracer::drop_netns(e));
        }
        let (result, _) = status_of(attempt.errno);
        report.attempts.push(AttemptReport {
            dst,
            src_port: attempt.src_port,
            result: if attempt.errno == 0 {
                "connected"
            } else {
                result
            },
            errno_name: (attempt.errno != 0)
                .then(|| errno_name(attempt.errno))
                .flatten(),
            elapsed_ms: millis(attempt.elapsed),
            icmp: attempt.icmp,
            explanations,
        });
    }
    if let Some(h) = path_thread {
        match h.join() {
            Ok(Ok(p)) => report.path = Some(p),
            Ok(Err(e)) => missing.push(format!("path trace: {e}")),
            Err(_) => missing.push("path trace: panicked".into()),
        }
    }
    // The address that decides: the first that answered, else the first tried.
    let primary = report
        .attempts
        .iter()
        .position(|a| a.result == "connected")
        .unwrap_or(0);
    if let Some(a) = report.attempts.get(primary) {
        let local = local::scan(a.dst.ip(), a.dst.port());
        missing.extend(local.missing.iter().cloned());
        if root {
            let own = local::own_netns();
            let mut spaces: Vec<Option<u32>> = vec![None];
            spaces.extend(local.target_netns.filter(|&n| Some(n) != own).map(Some));
            spaces.extend(
                explanations_ns
                    .iter()
                    .filter(|&&n| Some(n) != own)
                    .map(|&n| Some(n)),
            );
            spaces.dedup();
            let names = local::netns_names();
            let mut seen = Vec::new();
            for ns in spaces {
                if seen.contains(&ns) {
                    continue;
                }
                seen.push(ns);
                let (path, label) = match ns {
                    None => (
                        None,
                        match &cfg.netns {
                            Some(n) => format!("netns {n} (probing)"),
                            None => "this host".to_string(),
                        },
                    ),
                    Some(n) => match local.paths.get(&n) {
                        Some(p) => (
                            Some(p.as_path()),
                            match names.get(&n) {
                                Some(name) => format!("netns {name} ({n})"),
                                None => format!("netns {n}"),
                            },
                        ),
                        None => continue,
                    },
                };
                let (rules, miss) = firewall::rules_in(path, &label, a.dst.port(), false);
                report.firewall.extend(rules);
                report.firewall_checked.push(label);
                missing.extend(miss);
            }
        }
        report.local = Some(local);
    } else {
        report.verdict.status = "failed";
        report.verdict.exit_code = exit::ERROR;
        report.verdict.explanation = "no connect could be made".into();
    }
    if !report.attempts.is_empty() {
        report.verdict = runbook::verdict(&report, primary, hosts_label);
    }
    report.missing = missing;
    report.elapsed_ms = millis(started.elapsed());
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_map_to_documented_exit_codes() {
        assert_eq!(status_of(0), ("reachable", 0));
        assert_eq!(status_of(libc::ECONNREFUSED), ("refused", 2));
        assert_eq!(status_of(libc::ETIMEDOUT), ("timed out", 3));
        assert_eq!(status_of(libc::EHOSTUNREACH), ("unreachable", 5));
        assert_eq!(status_of(libc::ENETUNREACH), ("unreachable", 5));
    }

    #[test]
    fn unknown_namespace_is_a_clear_error() {
        let e = enter_netns("rstrace-no-such-ns").unwrap_err().to_string();
        assert!(e.contains("ip netns list"), "{e}");
        assert!(enter_netns("../etc").is_err());
    }
}
