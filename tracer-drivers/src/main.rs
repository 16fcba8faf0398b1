//! `tracer-drivers`: the benchmark's and the fuzzer's commands (run by
//! `cargo xtask bench` and `cargo xtask fuzz`).
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use tracer_drivers::{bench, fuzz};

#[derive(Parser, Debug)]
#[command(name = "tracer-drivers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Empty programs on every hook (the benchmark's cost floor) until SIGINT/SIGTERM.
    BenchFloor {
        /// Where their run statistics are written at exit.
        #[arg(long)]
        stats: PathBuf,
    },
    /// Capture write and explain throughput, as JSON.
    BenchCodec {
        #[arg(long, default_value_t = 200_000)]
        connections: u64,
        /// Scratch capture file (replaced, then removed).
        #[arg(long)]
        file: PathBuf,
    },
    /// Write a large synthetic capture (a mixed storm) for the capture-read benchmark;
    /// prints JSON.
    WriteCapture {
        #[arg(long, default_value_t = 30_000_000)]
        records: u64,
        /// The capture file (replaced).
        #[arg(long)]
        file: PathBuf,
    },
    /// Fuzz the capture reader for a bounded time.
    FuzzCapture {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where inputs that make the reader panic are saved.
        #[arg(long, default_value = "fuzz-crashes")]
        crashes: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_target(false)
        .init();
    let res = match cli.command {
        Command::BenchFloor { stats } => bench::floor(stats),
        Command::BenchCodec { connections, file } => bench::codec(connections, file),
        Command::WriteCapture { records, file } => bench::write_capture(records, file),
        Command::FuzzCapture {
            seconds,
            seed,
            crashes,
        } => fuzz::run(seconds, seed, &crashes),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer-drivers: {e:#}");
            ExitCode::FAILURE
        }
    }
}
