//! Stage 6, sinks (use `base` and `explain`).
//!
//! Where records and explanations go. Each sink is a peer in its own file: text for
//! people (`text`), JSON Lines for machines (`json`), explanations kept for the caller
//! (`collect`), a capture's counts by cause, port and process (`summary`), Prometheus
//! metrics (`metrics`). A pipeline
//! feeds one sink; `Fanout` makes several one.
pub mod collect;
#[cfg(test)]
mod golden;
pub mod json;
pub mod metrics;
pub mod summary;
pub mod text;

use std::io;

use crate::{base::record::Record, explain::Explanation};

pub use self::{
    collect::Collect, json::JsonLines, metrics::MetricsSink, summary::Summary, text::TextLines,
};

/// What a sink wants of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Take {
    No,
    /// The record without its wall-clock text (a count needs only its kind).
    Untimed,
    /// The record with its wall-clock text.
    Timed,
}

/// A destination of the pipeline's output. Records reach it after the filter, and
/// only those it `takes`; explanations after the filter, all of them.
pub trait Sink {
    /// Whether it wants record `r` (evidence or context), and with its time: asked
    /// before the record's time is formatted, which only a record some sink takes
    /// `Timed` pays for.
    fn takes(&self, r: &Record) -> Take;
    fn record(&mut self, r: &Record) -> io::Result<()>;
    fn explanation(&mut self, e: &Explanation) -> io::Result<()>;
    /// Writes out what is buffered (live: after every step, and at the end).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: Sink + ?Sized> Sink for Box<S> {
    fn takes(&self, r: &Record) -> Take {
        (**self).takes(r)
    }
    fn record(&mut self, r: &Record) -> io::Result<()> {
        (**self).record(r)
    }
    fn explanation(&mut self, e: &Explanation) -> io::Result<()> {
        (**self).explanation(e)
    }
    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
}

/// Several sinks fed as one, in order.
#[derive(Default)]
pub struct Fanout(pub Vec<Box<dyn Sink>>);

impl Sink for Fanout {
    fn takes(&self, r: &Record) -> Take {
        self.0.iter().map(|s| s.takes(r)).max().unwrap_or(Take::No)
    }
    fn record(&mut self, r: &Record) -> io::Result<()> {
        for s in self.0.iter_mut().filter(|s| s.takes(r) != Take::No) {
            s.record(r)?;
        }
        Ok(())
    }
    fn explanation(&mut self, e: &Explanation) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.explanation(e))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.iter_mut().try_for_each(|s| s.flush())
    }
}
