//! Stage 5, explain (uses `base`, `decode` and `enrich`).
//!
//! From evidence to explanations: records are joined into one story per connection
//! (both ends when both are on this host), and when a story's failure is complete the
//! rules say why, who and what to do. Bursts of one cause collapse into a count.
//!
//! Time is the records' own (CLOCK_MONOTONIC): the engine is advanced by the live loop
//! with the clock, and by a capture replay with the records' timestamps, so both give
//! the same answers.
mod collapse;
mod render;
pub mod rules;
mod schedule;
pub mod story;

use crate::base::{clock::Clock, record::Record};
use crate::enrich::host::Host;

pub use self::collapse::COLLAPSE_WINDOW;
pub use self::render::{Explanation, Side};
use self::{collapse::Bursts, schedule::Scheduler, story::Story};

/// Records in, explanations out: the host model, the open stories and the bursts.
pub struct Engine {
    host: Host,
    stories: Scheduler,
    bursts: Bursts,
    /// Stories the scheduler handed over, kept to reuse its allocation.
    ready: Vec<Story>,
    clock: Option<Clock>,
    /// Collapse bursts of a cause into a count (off for `probe`, which needs the
    /// explanation of each of its own connections, among its path-trace SYNs').
    collapse: bool,
    /// Someone answers firewall-rule questions (watch's monitor); without one (probe)
    /// a story must not wait for an answer that never comes.
    rules_answered: bool,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            host: Host::default(),
            stories: Scheduler::default(),
            bursts: Bursts::default(),
            ready: Vec::new(),
            clock: None,
            collapse: true,
            rules_answered: true,
        }
    }
}

impl Engine {
    /// The most stories open at once so far (at most one more).
    pub fn peak_open_stories(&self) -> usize {
        self.stories.peak_open()
    }

    pub fn new(clock: Clock) -> Engine {
        Engine {
            clock: Some(clock),
            ..Default::default()
        }
    }

    /// True once after a story needed namespace addresses the engine does not have.
    /// For `probe`: no burst collapsing, and no waits for firewall-rule answers
    /// (probe reads the rules itself).
    pub fn for_probe(mut self) -> Engine {
        self.collapse = false;
        self.rules_answered = false;
        self
    }

    /// The host model the records built.
    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn take_context_request(&mut self) -> bool {
        self.stories.take_context_request()
    }

    /// Feeds one record (explanations are made by `advance`); the explanations of
    /// records that stand alone (overflows), which need no story, are appended to
    /// `out` at once.
    pub fn push(&mut self, r: Record, out: &mut Vec<Explanation>) {
        self.host.on_record(&r);
        if let Some(e) = render::explain_event(&self.host, &r, self.clock) {
            self.emit(e, std::slice::from_ref(&r), out);
            return;
        }
        let mut ready = std::mem::take(&mut self.ready);
        self.stories.push(&self.host, r, &mut ready);
        self.explain_ready(&mut ready, out);
        self.ready = ready;
    }

    /// Whether a later `advance` may explain something: a story waits for its
    /// deadline or a burst is still counting.
    pub fn waiting(&self) -> bool {
        self.stories.has_deadlines() || !self.bursts.is_empty()
    }

    /// Explains the stories due by `now` and closes finished bursts.
    pub fn advance(&mut self, now: u64, out: &mut Vec<Explanation>) {
        let mut ready = std::mem::take(&mut self.ready);
        self.stories
            .advance(now, &self.host, self.rules_answered, &mut ready);
        self.explain_ready(&mut ready, out);
        self.ready = ready;
        self.bursts.close(now, self.clock, out);
    }

    /// Explains everything still pending (end of a capture).
    pub fn finish(&mut self, out: &mut Vec<Explanation>) {
        self.stories.finish();
        // Twice: the first pass schedules what it finds over the stories' cap.
        self.advance(u64::MAX / 2, out);
        self.advance(u64::MAX / 2, out);
    }

    fn explain_ready(&mut self, ready: &mut Vec<Story>, out: &mut Vec<Explanation>) {
        for story in ready.drain(..) {
            let e = render::explain(&self.host, &story, self.clock);
            self.emit(e, &story.evidence, out);
        }
    }

    /// Appends `e` to `out` with its time and `evidence`, unless its burst counts it.
    fn emit(&mut self, mut e: Explanation, evidence: &[Record], out: &mut Vec<Explanation>) {
        let printed = if self.collapse {
            self.bursts.emit(e, self.clock, out)
        } else {
            e.time = render::time(self.clock, e.mono_ns);
            Some(e)
        };
        if let Some(mut e) = printed {
            e.evidence = render::timed(self.clock, evidence);
            out.push(e);
        }
    }
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
pub(crate) mod tests;
