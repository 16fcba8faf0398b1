//! rstrace: explains why TCP connections are refused, reset or time out.
use std::{io, net::IpAddr, process::ExitCode, time::Duration};

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

mod btf;
mod decode;
mod doctor;
mod enrich;
mod explain;
mod filter;
mod kallsyms;
mod kernel;
mod netns;
mod privileges;
mod probes;
mod record;
mod sink;
mod tracefs;
mod watch;

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
    /// Show what this kernel lets rstrace see: hooks, fields, available evidence.
    Doctor {
        /// Machine-readable report.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct WatchArgs {
    /// JSON Lines output (schema: docs/events.md).
    #[arg(long)]
    json: bool,
    /// Also print every evidence record, not only the explained failures.
    #[arg(long)]
    events: bool,
    /// Only events whose local or remote port is PORT (repeatable).
    #[arg(long, value_name = "PORT")]
    port: Vec<u16>,
    /// Only events whose local or remote address is ADDR (repeatable).
    #[arg(long, value_name = "ADDR")]
    addr: Vec<IpAddr>,
    /// Only events on sockets owned by process PID (repeatable).
    #[arg(long, value_name = "PID")]
    pid: Vec<u32>,
    /// Only events on sockets owned by a process named COMM (repeatable).
    #[arg(long, value_name = "COMM")]
    comm: Vec<String>,
    /// Ring buffer size in bytes: a power of two, at least 4096.
    #[arg(long, value_name = "BYTES", default_value_t = tracer_common::DEFAULT_RING_BYTES)]
    ring_size: u32,
    /// How often to poll the namespaces' backlog counters, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 250)]
    overflow_interval: u64,
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
        for c in &a.comm {
            if c.is_empty() || c.len() > 15 {
                bail!("--comm {c:?}: process names are 1 to 15 bytes");
            }
        }
        Ok(watch::WatchConfig {
            json: a.json,
            events: a.events,
            verbose: false,
            filter: filter::Filter {
                ports: a.port,
                addrs: a.addr,
                pids: a.pid,
                comms: a.comm,
            },
            ring_bytes: a.ring_size,
            overflow_interval: Duration::from_millis(a.overflow_interval),
        })
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Watch(a) => {
            let mut cfg: watch::WatchConfig = a.try_into()?;
            cfg.verbose = cli.verbose > 0;
            watch::run(cfg)
        }
        Command::Doctor { json } => doctor::run(json),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
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
