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

use std::{cmp::Reverse, collections::BinaryHeap, net::SocketAddr};

use crate::base::{generations::Generations, FastMap};
use crate::enrich::host::Host;

pub use self::collapse::COLLAPSE_WINDOW;
pub use self::render::Explanation;
use self::{
    collapse::Burst,
    schedule::{Done, DONE_FOR, DONE_GENERATION_CAP},
    story::{FlowKey, Story},
};

pub struct Engine {
    pub host: Host,
    stories: FastMap<FlowKey, Story>,
    /// Stories' deadlines, earliest first, so that a tick costs what is due rather
    /// than a walk over every open story. An entry whose story has since changed its
    /// deadline (or was explained) is stale and skipped.
    due: BinaryHeap<Reverse<(u64, FlowKey)>>,
    last_sweep_ns: u64,
    done: Generations<Done>,
    bursts: FastMap<(&'static str, u16, u32), Burst>,
    wants_context: bool,
    /// Connecting sockets that died in their owner's own connect() or close(), by
    /// (pid, destination): a connect error reported just after is the same attempt.
    own_connect_deaths: FastMap<(u32, SocketAddr), (FlowKey, u64)>,
    clock: Option<crate::base::clock::Clock>,
    /// Collapse bursts of a cause into a count (off for `probe`, which needs the
    /// explanation of each of its own connections, among its path-trace SYNs').
    pub collapse: bool,
    /// Someone answers firewall-rule questions (watch's monitor); without one (probe)
    /// a story must not wait for an answer that never comes.
    pub rules_answered: bool,
}

impl Default for Engine {
    fn default() -> Self {
        Engine {
            host: Host::default(),
            stories: FastMap::default(),
            due: BinaryHeap::new(),
            last_sweep_ns: 0,
            done: Generations::new(DONE_GENERATION_CAP, DONE_FOR),
            bursts: FastMap::default(),
            wants_context: false,
            own_connect_deaths: FastMap::default(),
            clock: None,
            collapse: true,
            rules_answered: true,
        }
    }
}

impl Engine {
    pub fn new(clock: crate::base::clock::Clock) -> Engine {
        Engine {
            clock: Some(clock),
            ..Default::default()
        }
    }

    fn time(&self, ns: u64) -> String {
        self.clock.map_or_else(String::new, |c| c.format(ns))
    }

    /// True once after a story needed namespace addresses the engine does not have.
    pub fn take_context_request(&mut self) -> bool {
        std::mem::take(&mut self.wants_context)
    }
}

#[cfg(test)]
mod tests;
