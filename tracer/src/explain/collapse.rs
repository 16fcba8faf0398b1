//! Bursts of one cause for one port and process collapse into one line with a count.
use super::{schedule::MS, Engine, Explanation};

/// Bursts of a cause for one port and process within this collapse into a count.
pub const COLLAPSE_WINDOW: u64 = 2_000 * MS;

impl Explanation {
    pub(super) fn collapse_key(&self) -> (&'static str, u16, u32) {
        let port = self.dst.map_or(0, |d| d.port());
        let pid = self
            .process
            .as_ref()
            .or(self.culprit.as_ref())
            .map_or(0, |p| p.pid);
        (self.cause, port, pid)
    }
}

pub(super) struct Burst {
    pub(super) first: Explanation,
    pub(super) until: u64,
    pub(super) more: u64,
}

impl Engine {
    pub(super) fn summary(&self, b: Burst) -> Explanation {
        let mut e = b.first;
        e.count = b.more;
        e.window_ms = Some(COLLAPSE_WINDOW / MS);
        e.mono_ns = b.until;
        e.time = self.time(b.until);
        e.evidence.clear();
        e
    }

    /// Counts `e` into its burst, or opens a burst and gives `e` back, timed, to be
    /// printed (after the count line of the burst it ends, if `advance` had not
    /// closed it yet). The time text and the evidence (which the caller adds) are
    /// only made for the explanations printed: a storm's are mostly counted. So
    /// `explain` and `overflow` leave both empty.
    #[must_use]
    pub(super) fn emit(
        &mut self,
        mut e: Explanation,
        out: &mut Vec<Explanation>,
    ) -> Option<Explanation> {
        if !self.collapse {
            e.time = self.time(e.mono_ns);
            return Some(e);
        }
        let key = e.collapse_key();
        if let Some(b) = self.bursts.get_mut(&key) {
            if e.mono_ns <= b.until {
                b.more += e.count;
                return None;
            }
        }
        e.time = self.time(e.mono_ns);
        let ended = self.bursts.insert(
            key,
            Burst {
                first: e.clone(),
                until: e.mono_ns + COLLAPSE_WINDOW,
                more: 0,
            },
        );
        if let Some(b) = ended.filter(|b| b.more > 0) {
            out.push(self.summary(b));
        }
        Some(e)
    }
}
