//! `rstrace explain`, `summary` and `export`: capture files through the same pipeline
//! as `watch`.
use std::{
    collections::BTreeMap,
    io::{self, Write},
    path::PathBuf,
    time::SystemTime,
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::capture::Reader;
use crate::{
    explain::Explanation,
    pipeline::{filter::Filter, Pipeline},
    sink::Output,
};

/// The pipeline is advanced at this granularity of the records' own time (live, the
/// clock ticks every 50 ms).
const STEP_NS: u64 = 10_000_000;

pub struct ReplayConfig {
    pub files: Vec<PathBuf>,
    pub json: bool,
    pub events: bool,
    pub verbose: bool,
    pub filter: Filter,
    pub since: Option<SystemTime>,
    pub until: Option<SystemTime>,
}

#[derive(Default, Debug)]
pub struct Stats {
    pub records: u64,
    pub chunks: u64,
    pub warnings: usize,
    pub first_ns: Option<u64>,
    pub last_ns: u64,
}

/// Opens the files in the order they were written (by their header's clock).
fn open_all(files: &[PathBuf]) -> Result<Vec<Reader>> {
    if files.is_empty() {
        bail!("no capture file given");
    }
    let mut readers = files
        .iter()
        .map(|f| Reader::open(f))
        .collect::<Result<Vec<_>>>()?;
    readers.sort_by_key(|r| r.header.clock_wall_ns);
    Ok(readers)
}

fn to_mono(clock: &crate::base::clock::Clock, t: SystemTime) -> u64 {
    match t.duration_since(clock.wall) {
        Ok(d) => clock.mono_ns.saturating_add(d.as_nanos() as u64),
        Err(e) => clock.mono_ns.saturating_sub(e.duration().as_nanos() as u64),
    }
}

/// Replays the readers' records through `pipe` as `explain` does (also used by the
/// codec benchmark and the fuzzer).
pub fn run<W: Write>(readers: &mut [Reader], pipe: &mut Pipeline<W>) -> Result<Stats> {
    let mut stats = Stats::default();
    let mut next_step = 0u64;
    for reader in readers.iter_mut() {
        while let Some(chunk) = reader.next_chunk() {
            for r in chunk {
                if r.mono_ns >= next_step {
                    pipe.advance(r.mono_ns)?;
                    next_step = r.mono_ns + STEP_NS;
                }
                stats.first_ns.get_or_insert(r.mono_ns);
                stats.last_ns = stats.last_ns.max(r.mono_ns);
                stats.records += 1;
                pipe.push(r)?;
            }
        }
        stats.chunks += reader.chunks;
        stats.warnings += reader.warnings.len();
    }
    pipe.finish()?;
    Ok(stats)
}

fn pipeline<W: Write>(cfg: &ReplayConfig, readers: &[Reader], out: W) -> Pipeline<W> {
    let clock = readers[0].header.clock();
    let mut filter = cfg.filter.clone();
    if cfg.since.is_some() || cfg.until.is_some() {
        let from = cfg.since.map_or(0, |t| to_mono(&clock, t));
        let to = cfg.until.map_or(u64::MAX, |t| to_mono(&clock, t));
        filter.window = Some((from, to));
    }
    Pipeline::new(
        filter,
        Output::new(out, cfg.json, cfg.verbose),
        cfg.events,
        clock,
    )
}

pub fn explain(cfg: ReplayConfig) -> Result<()> {
    let mut readers = open_all(&cfg.files)?;
    let mut pipe = pipeline(&cfg, &readers, io::stdout().lock());
    let stats = run(&mut readers, &mut pipe)?;
    if stats.warnings > 0 {
        eprintln!(
            "rstrace: {} damaged or cut-off part(s) skipped; see the warnings above",
            stats.warnings
        );
    }
    Ok(())
}

/// Every record, enriched, as JSON Lines (the schema of docs/events.md).
pub fn export(cfg: ReplayConfig) -> Result<()> {
    let mut readers = open_all(&cfg.files)?;
    let cfg = ReplayConfig {
        json: true,
        events: true,
        ..cfg
    };
    let mut pipe = pipeline(&cfg, &readers, io::stdout().lock());
    pipe.collected = Some(Vec::new());
    run(&mut readers, &mut pipe)?;
    Ok(())
}

#[derive(Serialize, Default)]
struct Summary {
    files: Vec<String>,
    kernel: String,
    hostname: String,
    from: Option<String>,
    to: Option<String>,
    records: u64,
    chunks: u64,
    damaged_parts: usize,
    failures: u64,
    by_cause: BTreeMap<&'static str, u64>,
    by_port: BTreeMap<u16, BTreeMap<&'static str, u64>>,
    by_process: BTreeMap<String, u64>,
    /// Minute (UTC, "YYYY-MM-DDTHH:MM") to failures by cause.
    timeline: BTreeMap<String, BTreeMap<&'static str, u64>>,
}

fn summarize(explanations: &[Explanation]) -> Summary {
    let mut s = Summary::default();
    for e in explanations {
        let n = e.count;
        s.failures += n;
        *s.by_cause.entry(e.cause).or_default() += n;
        if let Some(d) = e.dst {
            *s.by_port
                .entry(d.port())
                .or_default()
                .entry(e.cause)
                .or_default() += n;
        }
        if let Some(p) = e.process.as_ref().or(e.culprit.as_ref()) {
            *s.by_process
                .entry(format!("{}[{}]", p.comm, p.pid))
                .or_default() += n;
        }
        let minute = e.time.get(..16).unwrap_or(&e.time).to_string();
        *s.timeline
            .entry(minute)
            .or_default()
            .entry(e.cause)
            .or_default() += n;
    }
    s
}

pub fn summary(cfg: ReplayConfig) -> Result<()> {
    let mut readers = open_all(&cfg.files)?;
    let mut pipe = pipeline(&cfg, &readers, io::sink());
    pipe.collected = Some(Vec::new());
    let stats = run(&mut readers, &mut pipe)?;
    let mut s = summarize(pipe.collected.as_deref().unwrap_or_default());
    let clock = readers[0].header.clock();
    s.files = cfg.files.iter().map(|f| f.display().to_string()).collect();
    s.kernel = readers[0].header.kernel.clone();
    s.hostname = readers[0].header.hostname.clone();
    s.from = stats.first_ns.map(|t| clock.format(t));
    s.to = stats.first_ns.map(|_| clock.format(stats.last_ns));
    s.records = stats.records;
    s.chunks = stats.chunks;
    s.damaged_parts = stats.warnings;
    let mut out = io::stdout().lock();
    if cfg.json {
        serde_json::to_writer_pretty(&mut out, &s).context("writing the summary")?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "capture   {} (Linux {}, host {})",
        s.files.join(" "),
        s.kernel,
        s.hostname
    )?;
    writeln!(
        out,
        "span      {} .. {}",
        s.from.as_deref().unwrap_or("-"),
        s.to.as_deref().unwrap_or("-")
    )?;
    writeln!(
        out,
        "records   {} in {} chunks{}",
        s.records,
        s.chunks,
        if s.damaged_parts > 0 {
            format!(", {} damaged part(s) skipped", s.damaged_parts)
        } else {
            String::new()
        }
    )?;
    writeln!(out, "failures  {}", s.failures)?;
    let mut causes: Vec<_> = s.by_cause.iter().collect();
    causes.sort_by(|a, b| b.1.cmp(a.1));
    writeln!(out, "\nby cause")?;
    for (c, n) in causes {
        writeln!(out, "  {n:>8}  {c}")?;
    }
    writeln!(out, "\nby port")?;
    for (p, m) in &s.by_port {
        let parts: Vec<String> = m.iter().map(|(c, n)| format!("{c} {n}")).collect();
        writeln!(out, "  {p:>8}  {}", parts.join(", "))?;
    }
    writeln!(out, "\nby process")?;
    let mut procs: Vec<_> = s.by_process.iter().collect();
    procs.sort_by(|a, b| b.1.cmp(a.1));
    for (p, n) in procs.iter().take(20) {
        writeln!(out, "  {n:>8}  {p}")?;
    }
    writeln!(out, "\ntimeline (UTC, per minute)")?;
    for (m, causes) in &s.timeline {
        let parts: Vec<String> = causes.iter().map(|(c, n)| format!("{c} {n}")).collect();
        writeln!(out, "  {m}  {}", parts.join(", "))?;
    }
    Ok(())
}
