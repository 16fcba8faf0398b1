//! A capture in counts: failures by cause, port and process, and per minute
//! (`rstrace summary`). Counted as the explanations come; printed once at the end,
//! with what the caller knows of the files.
use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use serde::Serialize;

use crate::{
    base::record::Record,
    explain::Explanation,
    sink::{Sink, Take},
};

#[derive(Serialize, Default)]
pub struct Summary {
    pub files: Vec<String>,
    pub kernel: String,
    pub hostname: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub records: u64,
    pub chunks: u64,
    pub damaged_parts: usize,
    failures: u64,
    by_cause: BTreeMap<&'static str, u64>,
    by_port: BTreeMap<u16, BTreeMap<&'static str, u64>>,
    by_process: BTreeMap<String, u64>,
    /// Minute (UTC, "YYYY-MM-DDTHH:MM") to failures by cause.
    timeline: BTreeMap<String, BTreeMap<&'static str, u64>>,
}

impl Sink for Summary {
    fn takes(&self, _: &Record) -> Take {
        Take::No
    }

    fn record(&mut self, _: &Record) -> io::Result<()> {
        Ok(())
    }

    fn explanation(&mut self, e: &Explanation) -> io::Result<()> {
        let n = e.count;
        self.failures += n;
        *self.by_cause.entry(e.cause).or_default() += n;
        if let Some(d) = e.dst {
            *self
                .by_port
                .entry(d.port())
                .or_default()
                .entry(e.cause)
                .or_default() += n;
        }
        if let Some(p) = e.process.as_ref().or(e.culprit.as_ref()) {
            *self
                .by_process
                .entry(format!("{}[{}]", p.comm, p.pid))
                .or_default() += n;
        }
        let minute = e.time.get(..16).unwrap_or(&e.time).to_string();
        *self
            .timeline
            .entry(minute)
            .or_default()
            .entry(e.cause)
            .or_default() += n;
        Ok(())
    }
}

impl Summary {
    /// Prints the summary: pretty JSON, or a report for people.
    pub fn write(&self, json: bool, mut out: impl Write) -> io::Result<()> {
        let s = self;
        if json {
            serde_json::to_writer_pretty(&mut out, s)?;
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
}
