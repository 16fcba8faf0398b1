//! When a story is complete: the waits after an errno, for the other end, and for
//! the context answers (namespace addresses, socket owners, firewall rules) a story
//! needs before it can be explained.
use crate::base::record::{TcpFlags, TcpState};
use std::{cmp::Reverse, collections::BinaryHeap, net::SocketAddr};

use super::story::{Ends, FlowKey, Story};
use crate::base::{
    generations::Generations,
    record::{Kind, Record},
    FastMap,
};
use crate::enrich::host::Host;

pub(super) const MS: u64 = 1_000_000;
/// Wait after the errno for evidence from the other CPUs.
const AFTER_ERRNO: u64 = 50 * MS;
/// Server-side refusal with no client on this host.
const SERVER_ONLY_RST: u64 = 200 * MS;
/// Server-side SYN drop: a local client would retransmit within 1 s.
const SERVER_ONLY_DROP: u64 = 1_200 * MS;
/// Segments of an established flow dropped here, with no outcome seen yet.
const FLOW_DROP: u64 = 30_000 * MS;
/// Reset of an established connection: wait for the receiving side.
const AFTER_RESET: u64 = 100 * MS;
/// A connection reset because its listener closed: wait past the pipeline's check
/// (200 ms after the close) of whether the listener's process exited.
const AFTER_LISTENER_GONE: u64 = 500 * MS;
/// A connect error this soon after its socket's SYN_SENT->CLOSE is the same attempt
/// (both in one connect() call; 5.5 ms apart were seen under emulation). As long as a
/// death waits for its errno, so that the death is still open to be joined.
const SAME_CONNECT: u64 = AFTER_ERRNO;
/// Extra wait once, for the namespaces' addresses, when the server is not placed.
const CONTEXT_WAIT: u64 = 300 * MS;
/// Extra wait once, for the firewall rules of a namespace where netfilter dropped
/// packets of the story (live, the monitor reads them with nft and iptables-save).
const FIREWALL_WAIT: u64 = 1_000 * MS;
/// Explained flows absorb their late evidence this long.
const DONE_FOR: u64 = 3_000 * MS;
/// Stories with nothing to explain are forgotten after this (a connect given up by
/// the kernel reports within about 130 s, the default SYN retries).
const IDLE_FOR: u64 = 180_000 * MS;
/// At most this many open stories: under a storm the oldest are explained early
/// rather than memory growing.
pub(super) const MAX_STORIES: usize = 50_000;
/// Explained flows are remembered in generations of this many (under a storm, for
/// less than DONE_FOR).
const DONE_GENERATION_CAP: usize = 32_768;
/// How often idle stories and expired flows are swept.
const SWEEP_EVERY: u64 = 1_000 * MS;

/// An explained flow, remembered to absorb its late evidence.
pub(super) struct Done {
    until: u64,
    /// The story's `slots`: evidence that fills one again is a new connection.
    slots: u16,
    /// The story's `ends`: a SYN after its end's death may be a new connection's.
    ends: Ends,
    established: bool,
}

/// Questions about a story that context records answer (live, the pipeline asks its
/// sources; a capture replays their answers): a story with one open waits for it once.
struct Questions {
    /// The server's namespace, or a local socket's owner.
    context: bool,
    /// The firewall rules of a namespace where netfilter dropped packets of the story.
    rules: bool,
}

impl Questions {
    /// The questions `s` has open, given what `host` knows. `rules_answered`: someone
    /// reads firewall rules (watch's monitor); without one (probe) a story must not
    /// wait for an answer that never comes.
    fn of(host: &Host, s: &Story, rules_answered: bool) -> Questions {
        Questions {
            context: needs_context(host, s),
            rules: rules_answered && needs_rules(host, s),
        }
    }

    /// How long to wait for the answers, if any is open.
    fn wait(&self) -> Option<u64> {
        if self.rules {
            Some(FIREWALL_WAIT)
        } else if self.context {
            Some(CONTEXT_WAIT)
        } else {
            None
        }
    }
}

/// The open stories and when each is complete enough to be explained.
pub(super) struct Scheduler {
    stories: FastMap<FlowKey, Story>,
    /// Stories' deadlines, earliest first, so that a tick costs what is due rather
    /// than a walk over every open story. An entry whose story has since changed its
    /// deadline (or was explained) is stale and skipped.
    due: BinaryHeap<Reverse<(u64, FlowKey)>>,
    last_sweep_ns: u64,
    done: Generations<Done>,
    wants_context: bool,
    /// Connecting sockets that died in their owner's own connect() or close(), by
    /// (pid, destination): a connect error reported just after is the same attempt.
    own_connect_deaths: FastMap<(u32, SocketAddr), (FlowKey, u64)>,
    /// The most stories open at once so far (what a storm costs in memory).
    peak: usize,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler {
            stories: FastMap::default(),
            due: BinaryHeap::new(),
            last_sweep_ns: 0,
            done: Generations::new(DONE_GENERATION_CAP, DONE_FOR),
            wants_context: false,
            own_connect_deaths: FastMap::default(),
            peak: 0,
        }
    }
}

impl Scheduler {
    /// True once after a story needed namespace addresses the engine does not have.
    pub(super) fn take_context_request(&mut self) -> bool {
        std::mem::take(&mut self.wants_context)
    }

    #[cfg(test)]
    pub(super) fn open_stories(&self) -> usize {
        self.stories.len()
    }

    pub(super) fn peak_open(&self) -> usize {
        self.peak
    }

    /// Adds a record of a flow to its story; a story it completes (a new connection on
    /// the same 4-tuple) goes to `ready`.
    pub(super) fn push(&mut self, host: &Host, r: Record, ready: &mut Vec<Story>) {
        let Some(key) = FlowKey::of(&r) else { return };
        if let Some(open) = self.stories.get(&key) {
            if open.repeats(&r) {
                // A new connection on the same 4-tuple: the open story is complete.
                let story = self.stories.remove(&key).expect("present");
                self.conclude(key, story, r.mono_ns, ready);
            }
        } else {
            let done = self.done.key(&key);
            if let Some(d) = self.done.get_mut(done) {
                if r.mono_ns <= d.until {
                    let bit = Story::slot_of(&key, &r, d.established);
                    if d.slots & bit == 0 && !d.ends.new_connection(&key, &r) {
                        // Late evidence of the flow just explained.
                        d.slots |= bit;
                        d.ends.note(&key, &r);
                        return;
                    }
                }
            }
        }
        let now = r.mono_ns;
        let kind = r.kind;
        let kept_drop = kind == Kind::Drop
            && matches!(
                r.reason.as_deref(),
                Some("NETFILTER_DROP" | "NO_SOCKET" | "TCP_LISTEN_OVERFLOW")
            );
        let syn = r.tcp_flags == Some(TcpFlags::SYN);
        // The socket died: whatever the application was told (if this kernel reports
        // errnos at all) comes in the same call chain.
        let died = kind == Kind::State && r.new_state == Some(TcpState::Close);
        let listener_gone = if died {
            r.netns
                .zip(r.src)
                .and_then(|(ns, src)| host.closed_with_queue(ns, src, now))
                .map(|c| (c.closed_ns + AFTER_LISTENER_GONE, r.src))
        } else {
            None
        };
        let connecting_pid = match (&r.owner, &r.task) {
            (Some(o), Some(t)) if o.pid == t.pid => Some(o.pid),
            _ => None,
        };
        // A connect() that fails after SYN_SENT (no free local port) shows the socket's
        // death, with its local address, then the errno keyed without it: one story.
        let mut merged = None;
        if let (Some(pid), Some(dst)) = (connecting_pid, r.dst) {
            if died && r.old_state == Some(TcpState::SynSent) {
                self.own_connect_deaths.insert((pid, dst), (key, now));
            } else if kind == Kind::ConnectError && r.state == Some(TcpState::SynSent) {
                if let Some((k, at)) = self.own_connect_deaths.remove(&(pid, dst)) {
                    if now.saturating_sub(at) <= SAME_CONNECT && k != key {
                        merged = self.stories.remove(&k);
                    }
                }
            }
        }
        // At most one more than were open (one less when the story was).
        self.peak = self.peak.max(self.stories.len() + 1);
        let story = self
            .stories
            .entry(key)
            .or_insert_with(|| Story::new(key, &r));
        let before = story.deadline;
        story.add(r);
        for e in merged.into_iter().flat_map(|m| m.evidence) {
            story.add(e);
        }
        if kind == Kind::ConnectError {
            // Nothing else will come: the connect never left the host.
            story.deadline = Some(now);
        }
        let errno = story.errno();
        if errno.is_some() || died {
            story.deadline = Some(
                story
                    .deadline
                    .map_or(now + AFTER_ERRNO, |d| d.min(now + AFTER_ERRNO)),
            );
        } else if story.client_is_local() && !story.was_established() && !story.ends.any_died() {
            // The client's errno will come; wait for it (a death already set how long:
            // evidence after it, a SYN's drop deferred past its close, must not unset it).
            story.deadline = None;
        } else if story.was_established() && matches!(kind, Kind::RstSent | Kind::RstReceived) {
            story.deadline.get_or_insert(now + AFTER_RESET);
        } else if kind == Kind::RstSent {
            story
                .deadline
                .get_or_insert(story.first_ns + SERVER_ONLY_RST);
        } else if kept_drop {
            // A dropped SYN from a local client is followed by its retransmit within
            // 1 s; dropped segments of an established flow by its errno or reset.
            let wait = if syn { SERVER_ONLY_DROP } else { FLOW_DROP };
            story.deadline.get_or_insert(story.first_ns + wait);
        }
        if let Some((t, server)) = listener_gone {
            story.not_before = story.not_before.max(t);
            story.listener_end = server;
        }
        if let Some(d) = story.deadline {
            story.deadline = Some(d.max(story.not_before));
        }
        if story.deadline != before {
            if let Some(d) = story.deadline {
                self.due.push(Reverse((d, key)));
            }
        }
    }

    /// Hands `story` (taken out of the open ones) over to be explained and remembers
    /// its flow for a while, to absorb its late evidence.
    fn conclude(&mut self, key: FlowKey, story: Story, now: u64, ready: &mut Vec<Story>) {
        let done = self.done.key(&key);
        self.done.insert(
            done,
            Done {
                until: story.last_ns.max(now) + DONE_FOR,
                slots: story.slots,
                ends: story.ends,
                established: story.was_established(),
            },
            now,
        );
        ready.push(story);
    }

    fn schedule(&mut self, key: FlowKey, deadline: u64) {
        if let Some(s) = self.stories.get_mut(&key) {
            s.deadline = Some(deadline);
            self.due.push(Reverse((deadline, key)));
        }
    }

    /// Whether a story waits for a deadline (possibly one since moved or met).
    pub(super) fn has_deadlines(&self) -> bool {
        !self.due.is_empty()
    }

    /// Hands the stories due by `now` over to `ready`, in deadline order; a story with
    /// questions open waits once more for their answers.
    pub(super) fn advance(
        &mut self,
        now: u64,
        host: &Host,
        rules_answered: bool,
        ready: &mut Vec<Story>,
    ) {
        while let Some(&Reverse((deadline, key))) = self.due.peek() {
            if deadline > now {
                break;
            }
            self.due.pop();
            if self.stories.get(&key).and_then(|s| s.deadline) != Some(deadline) {
                continue;
            }
            let Some(mut story) = self.stories.remove(&key) else {
                continue;
            };
            if !story.waited_for_context {
                let open = Questions::of(host, &story, rules_answered);
                if let Some(wait) = open.wait() {
                    story.waited_for_context = true;
                    // A storm's first stories all wait here: without the room left for
                    // evidence that rarely comes (half their size for a dropped SYN).
                    story.evidence.shrink_to_fit();
                    self.wants_context |= open.context;
                    self.stories.insert(key, story);
                    self.schedule(key, now + wait);
                    continue;
                }
            }
            self.conclude(key, story, now, ready);
        }
        if self.stories.len() > MAX_STORIES {
            let mut oldest: Vec<(u64, FlowKey)> =
                self.stories.iter().map(|(k, s)| (s.first_ns, *k)).collect();
            oldest.sort_unstable();
            let excess = self.stories.len() - MAX_STORIES * 9 / 10;
            for &(_, k) in oldest.iter().take(excess) {
                if let Some(s) = self.stories.get_mut(&k) {
                    s.waited_for_context = true;
                }
                self.schedule(k, now);
            }
        }
        if now >= self.last_sweep_ns + SWEEP_EVERY {
            self.last_sweep_ns = now;
            self.stories
                .retain(|_, s| s.deadline.is_some() || now.saturating_sub(s.last_ns) < IDLE_FOR);
            self.own_connect_deaths
                .retain(|_, (_, at)| now.saturating_sub(*at) <= SAME_CONNECT);
            if self.due.len() > 4 * self.stories.len() + 1024 {
                let live = self
                    .stories
                    .iter()
                    .filter_map(|(k, s)| Some(Reverse((s.deadline?, *k))));
                self.due = live.collect();
            }
        }
    }

    /// Makes every open story due without more waiting (end of a capture): then two
    /// `advance` passes hand them all over.
    pub(super) fn finish(&mut self) {
        let mut waiting = Vec::new();
        for (k, s) in self.stories.iter_mut() {
            s.waited_for_context = true;
            if s.deadline.is_none() && s.errno().is_none() && !s.client_is_local() {
                waiting.push((*k, s.last_ns));
            }
        }
        for (k, at) in waiting {
            self.schedule(k, at);
        }
    }
}

/// The server's namespace is unknown although its address might be on this host,
/// or a local socket's owner is unknown (live, it is being looked up in /proc).
fn needs_context(host: &Host, s: &Story) -> bool {
    (s.connect_error().is_none() && s.server().is_some() && s.server_netns(host).is_none())
        || s.evidence.iter().any(|r| {
            r.owner.is_none()
                && r.sock.is_some()
                && super::story::later_owner(host, r).is_none()
                && matches!(
                    r.kind,
                    Kind::RstSent | Kind::RstReceived | Kind::SynRetransmit | Kind::State
                )
                && r.old_state != Some(TcpState::Listen)
                && r.new_state != Some(TcpState::Listen)
        })
}

/// Netfilter dropped packets of the story in a namespace whose rules for that port
/// were not read yet (live, they are being read: see `Pipeline::ask_rules`).
fn needs_rules(host: &Host, s: &Story) -> bool {
    s.drops("NETFILTER_DROP").any(|r| {
        let (Some(ns), Some(d)) = (r.netns, r.dst) else {
            return false;
        };
        host.firewall_rules(ns, d.port()).is_none()
    })
}
