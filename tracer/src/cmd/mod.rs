//! Stage 8, the commands: the command line, and each command wiring the stages
//! below it. The only layer that may use every stage.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};

pub mod doctor;
pub mod metrics;
pub mod probe;
pub mod progress;
pub mod replay;
pub mod service;
pub mod watch;

use crate::{capture, pipeline::filter};

/// Explains why TCP connections are refused, reset or time out, from kernel evidence.
#[derive(Parser, Debug)]
#[command(name = "rstrace", version)]
struct Cli {
    /// More diagnostics on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Explain TCP failures live, one line each (with --events, the raw evidence too).
    Watch(WatchArgs),
    /// `watch` as a node service: JSON Lines on stdout (or --json-file), the evidence
    /// recorded into rotating files in --capture-dir (default /var/lib/rstrace) within
    /// --disk-budget, each start in a file of its own.
    Agent(WatchArgs),
    /// Record the evidence and its context to a capture file, to explain later.
    Record(RecordArgs),
    /// Explain a capture file: what `watch` printed live for the same events.
    Explain(ReplayArgs),
    /// Count a capture file's failures by cause, port and process, with a timeline.
    Summary(ReplayArgs),
    /// Print every record of a capture file as JSON Lines (docs/events.md).
    Export(ReplayArgs),
    /// Run the connection runbook against HOST:PORT and explain the result: resolve,
    /// connect with the kernel evidence attached, trace the path when SYNs go
    /// unanswered, list the firewall rules and listeners for the port.
    ///
    /// Exit codes: 0 reachable, 2 refused, 3 timed out, 4 unresolvable, 5 unreachable
    /// (no route, host or network unreachable, other connect failures), 1 usage or
    /// internal error. With --count, 0 only when every run reached the target, else
    /// the code of the last failed run.
    Probe(ProbeArgs),
    /// Show what this kernel lets rstrace see: hooks, fields, available evidence, and
    /// the capabilities rstrace holds and uses.
    Doctor {
        /// Machine-readable report.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (e.g. `rstrace completions bash >
    /// /etc/bash_completion.d/rstrace`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (rstrace.1 and one per command) into DIR (`cargo xtask man`).
    #[command(hide = true)]
    ManPages {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Args, Debug)]
struct FilterArgs {
    /// Only failures and events whose local or remote port is PORT (repeatable).
    #[arg(long, value_name = "PORT")]
    port: Vec<u16>,
    /// Only failures and events whose local or remote address is ADDR (repeatable).
    #[arg(long, value_name = "ADDR")]
    addr: Vec<IpAddr>,
    /// Only failures of, or events on sockets owned by, process PID (repeatable).
    #[arg(long, value_name = "PID")]
    pid: Vec<u32>,
    /// Only failures of, or events on sockets owned by, a process named COMM
    /// (repeatable).
    #[arg(long, value_name = "COMM")]
    comm: Vec<String>,
    /// Only failures of, or events on sockets owned by, a process of systemd unit
    /// UNIT (`nginx` means `nginx.service`; repeatable).
    #[arg(long, value_name = "UNIT")]
    unit: Vec<String>,
    /// Only those of a process in container CONTAINER: its name, or a prefix of its
    /// id (repeatable).
    #[arg(long, value_name = "CONTAINER")]
    container: Vec<String>,
    /// Only those of a process in Kubernetes pod NAMESPACE/NAME (repeatable).
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pod: Vec<String>,
    /// Only those in network namespace NETNS: its `ip netns` name or its inode
    /// (either end's, for a failure; repeatable).
    #[arg(long, value_name = "NETNS")]
    netns: Vec<String>,
}

impl FilterArgs {
    fn filter(self) -> Result<filter::Filter> {
        for c in &self.comm {
            if c.is_empty() || c.len() > 15 {
                bail!("--comm {c:?}: process names are 1 to 15 bytes");
            }
        }
        let nonempty = |opt: &str, v: &[String]| match v.iter().find(|s| s.trim().is_empty()) {
            Some(_) => bail!("--{opt} needs a value"),
            None => Ok(()),
        };
        nonempty("unit", &self.unit)?;
        nonempty("container", &self.container)?;
        let pods = self
            .pod
            .iter()
            .map(|p| match p.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    Ok((ns.to_string(), name.to_string()))
                }
                _ => bail!("--pod {p:?}: expected NAMESPACE/NAME, e.g. default/web-0"),
            })
            .collect::<Result<_>>()?;
        let netns = self
            .netns
            .iter()
            .map(|n| match n.parse::<u32>() {
                Ok(ino) => Ok(filter::NetnsSel::Inode(ino)),
                Err(_) if !n.is_empty() && !n.contains('/') => {
                    Ok(filter::NetnsSel::Name(n.clone()))
                }
                Err(_) => bail!("--netns {n:?}: expected an `ip netns` name or an inode"),
            })
            .collect::<Result<_>>()?;
        Ok(filter::Filter {
            ports: self.port,
            addrs: self.addr,
            pids: self.pid,
            comms: self.comm,
            units: self.unit,
            containers: self.container,
            pods,
            netns,
            window: None,
        })
    }
}

#[derive(Args, Debug)]
struct WatchArgs {
    /// JSON Lines output (schema: docs/events.md).
    #[arg(long)]
    json: bool,
    /// Also print every evidence record, not only the explained failures.
    #[arg(long)]
    events: bool,
    #[command(flatten)]
    filter: FilterArgs,
    /// Ring buffer size in bytes: a power of two, at least 4096.
    #[arg(long, value_name = "BYTES", default_value_t = tracer_common::DEFAULT_RING_BYTES)]
    ring_size: u32,
    /// How often to poll the namespaces' backlog counters, in milliseconds (at most
    /// once a second while no event has come for 10 s).
    #[arg(long, value_name = "MS", default_value_t = 250)]
    overflow_interval: u64,
    /// JSON Lines to FILE instead of stdout (`-`: stdout): appended, created mode 0600,
    /// reopened on SIGHUP (after logrotate renamed it).
    #[arg(long, value_name = "FILE")]
    json_file: Option<PathBuf>,
    /// Also record everything to this capture file (see `rstrace record`).
    #[arg(long, value_name = "FILE")]
    record: Option<PathBuf>,
    /// Also record everything into DIR (created mode 0700 when missing): a new file
    /// at each start and rotation, named by its start time
    /// (rstrace-20261201T010203Z.rst), never one that exists.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["record", "force", "keep"])]
    capture_dir: Option<PathBuf>,
    /// With --capture-dir: the most MiB its capture files take (the oldest are
    /// deleted first; at least twice --rotate-mib). Default 1024.
    #[arg(long, value_name = "MIB")]
    disk_budget: Option<u64>,
    /// At exit, write event counts and program statistics here (benchmarks).
    #[arg(long, value_name = "FILE", hide = true)]
    stats: Option<PathBuf>,
    #[command(flatten)]
    capture: CaptureArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
}

/// The metrics endpoint's options (`watch`, and every mode that runs its loop).
#[derive(Args, Debug, Clone)]
struct MetricsArgs {
    /// Serve Prometheus metrics (/metrics), /healthz and /readyz over HTTP on ADDR
    /// (IP:PORT; 127.0.0.1:9977 when given alone).
    #[arg(long, value_name = "ADDR", num_args = 0..=1, value_parser = parse_listen,
          default_missing_value = metrics::DEFAULT_ADDR)]
    metrics: Option<SocketAddr>,
    /// Ports with series of their own in rstrace_failures_total: the N with the most
    /// failures; the others are counted as port "other".
    #[arg(long, value_name = "N", default_value_t = 20)]
    metrics_top_ports: usize,
    /// Seconds after which a failure series not counted since (a workload gone, a port
    /// no longer failing) is removed from the metrics.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    metrics_expiry: u64,
}

/// IP:PORT, [IPv6]:PORT, or an IPv6 address with the port after its last colon (what
/// a DaemonSet's `$(POD_IP):9977` becomes on an IPv6 cluster).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse().or_else(|_| {
        s.rsplit_once(':')
            .and_then(|(ip, port)| {
                let ip: std::net::Ipv6Addr = ip.parse().ok()?;
                Some(SocketAddr::new(ip.into(), port.parse().ok()?))
            })
            .ok_or_else(|| format!("expected IP:PORT (e.g. 127.0.0.1:9977, [::1]:9977), not {s:?}"))
    })
}

impl MetricsArgs {
    fn config(&self) -> Result<Option<metrics::MetricsConfig>> {
        let Some(addr) = self.metrics else {
            return Ok(None);
        };
        if !(1..=1000).contains(&self.metrics_top_ports) {
            bail!("--metrics-top-ports must be between 1 and 1000");
        }
        if !(10..=31 * 86_400).contains(&self.metrics_expiry) {
            bail!("--metrics-expiry must be between 10 s and 31 days (2678400 s)");
        }
        Ok(Some(metrics::MetricsConfig {
            addr,
            top_ports: self.metrics_top_ports,
            expiry: Duration::from_secs(self.metrics_expiry),
        }))
    }
}

#[derive(Args, Debug)]
struct ProbeArgs {
    /// HOST:PORT, [IPv6]:PORT or NAME:PORT.
    #[arg(value_name = "TARGET")]
    target: probe::Target,
    /// Probe from inside this named network namespace (as `ip netns exec NAME`,
    /// including its /etc/netns/NAME/hosts).
    #[arg(long, value_name = "NAME")]
    netns: Option<String>,
    /// One JSON object per run (and a summary with --count); schema: docs/events.md.
    #[arg(long)]
    json: bool,
    /// Seconds the probe may take, start-up and resolution included (the connect
    /// gets what is left, at least 1 s; SYN retransmits are capped to fit), 1 to 120.
    #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
    timeout: f64,
    /// Probe this many times and summarise (like a blackbox probe).
    #[arg(long, value_name = "N", default_value_t = 1)]
    count: u32,
    /// Seconds between runs with --count.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0)]
    interval: f64,
    /// Most hops the path trace tries.
    #[arg(long, value_name = "N", default_value_t = 16)]
    max_hops: u32,
}

impl ProbeArgs {
    fn config(self, verbose: bool) -> Result<probe::ProbeConfig> {
        if !(1.0..=120.0).contains(&self.timeout) {
            bail!("--timeout must be between 1 and 120 seconds");
        }
        if !(0.0..=3600.0).contains(&self.interval) {
            bail!("--interval must be between 0 and 3600 seconds");
        }
        if !(1..=100_000).contains(&self.count) {
            bail!("--count must be between 1 and 100000");
        }
        if !(1..=64).contains(&self.max_hops) {
            bail!("--max-hops must be between 1 and 64");
        }
        Ok(probe::ProbeConfig {
            target: self.target,
            netns: self.netns,
            json: self.json,
            verbose,
            timeout: Duration::from_secs_f64(self.timeout),
            count: self.count,
            interval: Duration::from_secs_f64(self.interval),
            max_hops: self.max_hops,
            started: std::time::Instant::now(),
        })
    }
}

#[derive(Args, Debug)]
struct CaptureArgs {
    /// Start a new capture file when it reaches this many MiB (0: never).
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    rotate_mib: u64,
    /// Rotated capture files to keep (FILE.1 is the newest).
    #[arg(long, value_name = "N", default_value_t = 4)]
    keep: usize,
    /// Most time recorded events may wait before reaching the disk, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    flush_interval: u64,
    /// Replace an existing capture file (a new file is renamed over it; without this
    /// an existing file is an error). Symlinks are refused even so.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct RecordArgs {
    /// The capture file (created mode 0600; an existing one is an error, see --force).
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Ring buffer size in bytes: a power of two, at least 4096.
    #[arg(long, value_name = "BYTES", default_value_t = tracer_common::DEFAULT_RING_BYTES)]
    ring_size: u32,
    /// What to record: evidence owned by processes the filters exclude is left out;
    /// context, and evidence with no owner (the other end's kernel), is kept.
    #[command(flatten)]
    filter: FilterArgs,
    #[command(flatten)]
    capture: CaptureArgs,
    /// At exit, write event counts and program statistics here (benchmarks).
    #[arg(long, value_name = "FILE", hide = true)]
    stats: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// Capture files (rotated ones in any order), or directories of them
    /// (`--capture-dir`).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// JSON Lines output (schema: docs/events.md).
    #[arg(long)]
    json: bool,
    /// Also print every evidence record.
    #[arg(long)]
    events: bool,
    #[command(flatten)]
    filter: FilterArgs,
    /// Only from this time (RFC 3339, e.g. 2026-11-22T01:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    since: Option<SystemTime>,
    /// Only until this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    until: Option<SystemTime>,
}

fn parse_time(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| format!("{e} (expected RFC 3339, e.g. 2026-11-22T01:00:00Z)"))
}

/// Where `agent` records and how much disk it may take, unless told otherwise.
const AGENT_CAPTURE_DIR: &str = "/var/lib/rstrace";
const DEFAULT_DISK_BUDGET_MIB: u64 = 1024;

impl CaptureArgs {
    fn to(&self, path: PathBuf) -> Result<watch::RecordTo> {
        self.record_to(path, None)
    }

    /// Into a directory within `budget_mib`.
    fn to_dir(&self, path: PathBuf, budget_mib: u64) -> Result<watch::RecordTo> {
        if self.rotate_mib == 0 {
            bail!("--capture-dir needs files that rotate: --rotate-mib must be above 0");
        }
        if budget_mib < 2 * self.rotate_mib {
            bail!(
                "--disk-budget {budget_mib} MiB holds less than two files of --rotate-mib {} \
                 MiB: a restart would delete the previous run's evidence at once; raise the \
                 budget or lower --rotate-mib",
                self.rotate_mib
            );
        }
        let budget = budget_mib
            .checked_mul(1 << 20)
            .ok_or_else(|| anyhow::anyhow!("--disk-budget {budget_mib} MiB is too large"))?;
        self.record_to(path, Some(budget))
    }

    fn record_to(&self, path: PathBuf, budget: Option<u64>) -> Result<watch::RecordTo> {
        if !(10..=60_000).contains(&self.flush_interval) {
            bail!("--flush-interval must be between 10 and 60000 ms");
        }
        Ok(watch::RecordTo {
            path,
            budget,
            replace: self.force,
            rotate: capture::RotatePolicy {
                max_bytes: (self.rotate_mib > 0).then_some(self.rotate_mib << 20),
                keep: self.keep,
            },
            flush_every: Duration::from_millis(self.flush_interval),
            filter: None,
        })
    }
}

impl ReplayArgs {
    fn config(self, verbose: bool) -> Result<replay::ReplayConfig> {
        // A directory stands for the capture files `--capture-dir` wrote there.
        let mut files = Vec::new();
        for f in self.files {
            if f.is_dir() {
                let inside = capture::dir::files_in(&f)
                    .with_context(|| format!("listing {}", f.display()))?;
                if inside.is_empty() {
                    bail!(
                        "{} holds no capture file of rstrace's names (rstrace-*.rst)",
                        f.display()
                    );
                }
                files.extend(inside);
            } else {
                files.push(f);
            }
        }
        Ok(replay::ReplayConfig {
            files,
            json: self.json,
            events: self.events,
            verbose,
            filter: self.filter.filter()?,
            since: self.since,
            until: self.until,
        })
    }
}

fn check_ring(size: u32) -> Result<()> {
    if size < 4096 || !size.is_power_of_two() {
        bail!("--ring-size must be a power of two of at least 4096, not {size}");
    }
    Ok(())
}

impl WatchArgs {
    /// `agent`: JSON Lines, and recording into AGENT_CAPTURE_DIR unless told otherwise.
    fn agent(mut self) -> Result<watch::WatchConfig> {
        self.json = true;
        if self.record.is_none() && self.capture_dir.is_none() {
            self.capture_dir = Some(PathBuf::from(AGENT_CAPTURE_DIR));
        }
        self.try_into()
    }
}

impl TryFrom<WatchArgs> for watch::WatchConfig {
    type Error = anyhow::Error;

    fn try_from(a: WatchArgs) -> Result<Self> {
        if a.ring_size < 4096 || !a.ring_size.is_power_of_two() {
            bail!(
                "--ring-size must be a power of two of at least 4096, not {}",
                a.ring_size
            );
        }
        if !(10..=60_000).contains(&a.overflow_interval) {
            bail!("--overflow-interval must be between 10 and 60000 ms");
        }
        let record = match (a.record, a.capture_dir) {
            (Some(p), _) => Some(a.capture.to(p)?),
            (None, Some(d)) => Some(
                a.capture
                    .to_dir(d, a.disk_budget.unwrap_or(DEFAULT_DISK_BUDGET_MIB))?,
            ),
            (None, None) if a.disk_budget.is_some() => {
                bail!("--disk-budget applies to --capture-dir, which is not given")
            }
            (None, None) => None,
        };
        let json = a.json || a.json_file.is_some();
        let json_file = a.json_file.filter(|p| p.as_os_str() != "-");
        Ok(watch::WatchConfig {
            json,
            events: a.events,
            verbose: false,
            filter: a.filter.filter()?,
            ring_bytes: a.ring_size,
            overflow_interval: Duration::from_millis(a.overflow_interval),
            quiet: false,
            json_file,
            record,
            stats: a.stats,
            metrics: a.metrics.config()?,
        })
    }
}

/// Runs the command; its exit code.
fn run(cli: Cli) -> Result<u8> {
    if let Command::Probe(a) = cli.command {
        return probe::run(a.config(cli.verbose > 0)?);
    }
    run_other(cli).map(|()| 0)
}

fn run_other(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Probe(_) => unreachable!("handled by run"),
        Command::Watch(a) => {
            let mut cfg: watch::WatchConfig = a.try_into()?;
            cfg.verbose = cli.verbose > 0;
            watch::run(cfg)
        }
        Command::Agent(a) => {
            let mut cfg = a.agent()?;
            cfg.verbose = cli.verbose > 0;
            watch::run(cfg)
        }
        Command::Record(a) => {
            check_ring(a.ring_size)?;
            watch::run(watch::WatchConfig {
                json: false,
                events: false,
                verbose: false,
                filter: filter::Filter::default(),
                ring_bytes: a.ring_size,
                overflow_interval: Duration::from_millis(250),
                quiet: true,
                json_file: None,
                record: Some(watch::RecordTo {
                    filter: Some(a.filter.filter()?),
                    ..a.capture.to(a.output)?
                }),
                stats: a.stats,
                metrics: None,
            })
        }
        Command::Explain(a) => replay::explain(a.config(cli.verbose > 0)?),
        Command::Summary(a) => replay::summary(a.config(cli.verbose > 0)?),
        Command::Export(a) => replay::export(a.config(cli.verbose > 0)?),
        Command::Doctor { json } => doctor::run(json),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "rstrace", &mut io::stdout().lock());
            Ok(())
        }
        Command::ManPages { dir } => man_pages(&dir),
    }
}

/// rstrace.1 and rstrace-COMMAND.1 for each command shown in --help, from the clap
/// definitions.
fn man_pages(dir: &std::path::Path) -> Result<()> {
    use anyhow::Context as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = <Cli as clap::CommandFactory>::command();
    let write = |name: &str, page: clap::Command| -> Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(page).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
    };
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = format!("rstrace-{}", sub.get_name());
        write(&name, sub.clone().display_name(name.clone()))?;
    }
    write("rstrace", cmd)
}

pub fn main() -> ExitCode {
    // Usage errors exit 1, not clap's 2: `probe` gives 2 its own meaning (refused).
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<io::Error>()
                    .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            eprintln!("rstrace: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(args: &[&str]) -> Result<watch::WatchConfig> {
        let cli = Cli::try_parse_from([&["rstrace", "watch"][..], args].concat())?;
        match cli.command {
            Command::Watch(a) => a.try_into(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn metrics_address_default_and_forms() {
        let addr = |args: &[&str]| watch(args).unwrap().metrics.map(|m| m.addr.to_string());
        assert_eq!(addr(&[]), None, "off by default");
        assert_eq!(addr(&["--metrics"]).as_deref(), Some(metrics::DEFAULT_ADDR));
        assert_eq!(
            addr(&["--metrics", "--json"]).as_deref(),
            Some(metrics::DEFAULT_ADDR)
        );
        assert_eq!(
            addr(&["--metrics", "0.0.0.0:9100"]).as_deref(),
            Some("0.0.0.0:9100")
        );
        assert_eq!(
            addr(&["--metrics=[::1]:9977"]).as_deref(),
            Some("[::1]:9977")
        );
        assert_eq!(
            addr(&["--metrics", "fd00::12:9977"]).as_deref(),
            Some("[fd00::12]:9977")
        );
        for bad in ["localhost:9977", "9977", "1.2.3.4", "1.2.3.4:99999"] {
            assert!(watch(&["--metrics", bad]).is_err(), "{bad}");
        }
        assert!(watch(&["--metrics", "--metrics-top-ports", "0"]).is_err());
        assert!(watch(&["--metrics", "--metrics-expiry", "1"]).is_err());
        let m = watch(&["--metrics"]).unwrap().metrics.unwrap();
        assert_eq!((m.top_ports, m.expiry.as_secs()), (20, 3600));
    }
}
