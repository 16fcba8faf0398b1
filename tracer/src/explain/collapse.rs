//! Bursts of one cause for one port and process collapse into one line with a count:
//! the first failure is printed at once, the others counted until the window closes.
use super::{render::time, schedule::MS, Explanation};
use crate::base::{clock::Clock, FastMap};

/// Bursts of a cause for one port and process within this collapse into a count.
pub const COLLAPSE_WINDOW: u64 = 2_000 * MS;

impl Explanation {
    fn collapse_key(&self) -> (&'static str, u16, u32) {
        let port = self.dst.map_or(0, |d| d.port());
        let pid = self
            .process
            .as_ref()
            .or(self.culprit.as_ref())
            .map_or(0, |p| p.pid);
        (self.cause, port, pid)
    }
}

struct Burst {
    first: Explanation,
    until: u64,
    more: u64,
}

/// The open bursts, by cause, port and process.
#[derive(Default)]
pub(super) struct Bursts {
    open: FastMap<(&'static str, u16, u32), Burst>,
}

fn summary(b: Burst, clock: Option<Clock>) -> Explanation {
    let mut e = b.first;
    e.count = b.more;
    e.window_ms = Some(COLLAPSE_WINDOW / MS);
    e.mono_ns = b.until;
    e.time = time(clock, b.until);
    e.evidence.clear();
    e
}

impl Bursts {
    /// Counts `e` into its burst, or opens a burst and gives `e` back, timed, to be
    /// printed (after the count line of the burst it ends, if `close` had not
    /// closed it yet). The time text and the evidence (which the caller adds) are
    /// only made for the explanations printed: a storm's are mostly counted. So
    /// the renderer leaves both empty.
    #[must_use]
    pub(super) fn emit(
        &mut self,
        mut e: Explanation,
        clock: Option<Clock>,
        out: &mut Vec<Explanation>,
    ) -> Option<Explanation> {
        let key = e.collapse_key();
        if let Some(b) = self.open.get_mut(&key) {
            if e.mono_ns <= b.until {
                b.more += e.count;
                return None;
            }
        }
        e.time = time(clock, e.mono_ns);
        let ended = self.open.insert(
            key,
            Burst {
                first: e.clone(),
                until: e.mono_ns + COLLAPSE_WINDOW,
                more: 0,
            },
        );
        if let Some(b) = ended.filter(|b| b.more > 0) {
            out.push(summary(b, clock));
        }
        Some(e)
    }

    /// Closes the bursts whose window ended by `now`, with their count line.
    pub(super) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    pub(super) fn close(&mut self, now: u64, clock: Option<Clock>, out: &mut Vec<Explanation>) {
        let closed: Vec<_> = self
            .open
            .iter()
            .filter(|(_, b)| b.until <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in closed {
            let b = self.open.remove(&k).expect("present");
            if b.more > 0 {
                out.push(summary(b, clock));
            }
        }
    }
}
