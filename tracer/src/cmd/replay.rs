//! `rstrace explain`, `summary` and `export`: capture files through the same pipeline
//! as `watch`.
use std::{
    io::{self, IsTerminal as _},
    path::PathBuf,
    time::SystemTime,
};

use anyhow::{bail, Context as _, Result};

use super::progress::{Clearing, Progress};
use crate::capture::Reader;
use crate::{
    pipeline::{filter::Filter, Pipeline},
    sink::{JsonLines, Sink, Summary, TextLines},
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
pub fn run<S: Sink>(readers: &mut [Reader], pipe: &mut Pipeline<S>) -> Result<Stats> {
    run_with(readers, pipe, None)
}

/// `run`, showing `progress` (the bytes it counts are the readers' offsets).
pub fn run_with<S: Sink>(
    readers: &mut [Reader],
    pipe: &mut Pipeline<S>,
    mut progress: Option<Progress>,
) -> Result<Stats> {
    let mut stats = Stats::default();
    let mut next_step = 0u64;
    let mut done_bytes = 0u64;
    for reader in readers.iter_mut() {
        let mut warned = 0;
        loop {
            let chunk = reader.next_chunk()?;
            // The reader prints nothing itself: the progress line goes first.
            for w in &reader.warnings[warned..] {
                if let Some(p) = &progress {
                    p.finish();
                }
                log::warn!("{}: {w}", reader.name());
            }
            warned = reader.warnings.len();
            let Some(chunk) = chunk else { break };
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
            if let Some(p) = &mut progress {
                p.update(stats.records, done_bytes + reader.offset());
            }
        }
        done_bytes += reader.offset();
        stats.chunks += reader.chunks;
        stats.warnings += reader.warnings.len();
    }
    if let Some(p) = &progress {
        p.finish();
    }
    pipe.finish()?;
    Ok(stats)
}

/// A progress line for reading `readers`, when stderr is a terminal.
fn progress(readers: &[Reader]) -> Option<Progress> {
    Progress::stderr(readers.iter().map(|r| r.size().unwrap_or(0)).sum())
}

fn pipeline<S: Sink>(cfg: &ReplayConfig, readers: &[Reader], sink: S) -> Pipeline<S> {
    let clock = readers[0].header.clock();
    let mut filter = cfg.filter.clone();
    if cfg.since.is_some() || cfg.until.is_some() {
        let from = cfg.since.map_or(0, |t| to_mono(&clock, t));
        let to = cfg.until.map_or(u64::MAX, |t| to_mono(&clock, t));
        filter.window = Some((from, to));
    }
    Pipeline::new(clock, filter, sink)
}

/// Stdout, erasing the progress line before it writes when both are the terminal.
fn clearing<W: io::Write>(out: W, progress: &Option<Progress>) -> Clearing<W> {
    Clearing {
        inner: out,
        shown: progress
            .as_ref()
            .filter(|_| io::stdout().is_terminal())
            .map(Progress::shown),
    }
}

pub fn explain(cfg: ReplayConfig) -> Result<()> {
    let mut readers = open_all(&cfg.files)?;
    let progress = progress(&readers);
    let out = clearing(io::stdout().lock(), &progress);
    let sink: Box<dyn Sink> = if cfg.json {
        Box::new(JsonLines::new(out, cfg.events))
    } else {
        Box::new(TextLines::new(out, cfg.events, cfg.verbose))
    };
    let mut pipe = pipeline(&cfg, &readers, sink);
    let stats = run_with(&mut readers, &mut pipe, progress)?;
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
    let progress = progress(&readers);
    let out = clearing(io::stdout().lock(), &progress);
    let mut pipe = pipeline(&cfg, &readers, JsonLines::records_only(out));
    run_with(&mut readers, &mut pipe, progress)?;
    Ok(())
}

pub fn summary(cfg: ReplayConfig) -> Result<()> {
    let mut readers = open_all(&cfg.files)?;
    let progress = progress(&readers);
    let mut pipe = pipeline(&cfg, &readers, Summary::default());
    let stats = run_with(&mut readers, &mut pipe, progress)?;
    let mut s = pipe.into_sink();
    let clock = readers[0].header.clock();
    s.files = cfg.files.iter().map(|f| f.display().to_string()).collect();
    s.kernel = readers[0].header.kernel.clone();
    s.hostname = readers[0].header.hostname.clone();
    s.from = stats.first_ns.map(|t| clock.format(t));
    s.to = stats.first_ns.map(|_| clock.format(stats.last_ns));
    s.records = stats.records;
    s.chunks = stats.chunks;
    s.damaged_parts = stats.warnings;
    let written = s.write(cfg.json, io::stdout().lock());
    if cfg.json {
        written.context("writing the summary")?;
    } else {
        written?;
    }
    Ok(())
}
