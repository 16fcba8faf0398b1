//! When a story is complete: the waits after an errno, for the other end, and for
//! the context answers (namespace addresses, socket owners, firewall rules) a story
//! needs before it can be explained.
use std::cmp::Reverse;

use super::{
    story::{FlowKey, Story},
    Engine, Explanation,
};
use crate::base::record::{Kind, Record};

pub(super) const MS: u64 = 1_000_000;
/// Wait after the errno for evidence from the other CPUs.
pub(super) const AFTER_ERRNO: u64 = 50 * MS;
/// Server-side refusal with no client on this host.
pub(super) const SERVER_ONLY_RST: u64 = 200 * MS;
/// Server-side SYN drop: a local client would retransmit within 1 s.
pub(super) const SERVER_ONLY_DROP: u64 = 1_200 * MS;
/// Segments of an established flow dropped here, with no outcome seen yet.
pub(super) const FLOW_DROP: u64 = 30_000 * MS;
/// Reset of an established connection: wait for the receiving side.
pub(super) const AFTER_RESET: u64 = 100 * MS;
/// A connection reset because its listener closed: wait past the pipeline's check
/// (200 ms after the close) of whether the listener's process exited.
pub(super) const AFTER_LISTENER_GONE: u64 = 500 * MS;
/// A connect error this soon after its socket's SYN_SENT->CLOSE is the same attempt
/// (both in one connect() call; 5.5 ms apart were seen under emulation). As long as a
/// death waits for its errno, so that the death is still open to be joined.
pub(super) const SAME_CONNECT: u64 = AFTER_ERRNO;
/// Extra wait once, for the namespaces' addresses, when the server is not placed.
pub(super) const CONTEXT_WAIT: u64 = 300 * MS;
/// Extra wait once, for the firewall rules of a namespace where netfilter dropped
/// packets of the story (live, the monitor reads them with nft and iptables-save).
pub(super) const FIREWALL_WAIT: u64 = 1_000 * MS;
/// Explained flows absorb their late evidence this long.
pub(super) const DONE_FOR: u64 = 3_000 * MS;
/// Stories with nothing to explain are forgotten after this (a connect given up by
/// the kernel reports within about 130 s, the default SYN retries).
pub(super) const IDLE_FOR: u64 = 180_000 * MS;
/// At most this many open stories: under a storm the oldest are explained early
/// rather than memory growing.
pub(super) const MAX_STORIES: usize = 50_000;
/// Explained flows are remembered in generations of this many (under a storm, for
/// less than DONE_FOR).
pub(super) const DONE_GENERATION_CAP: usize = 32_768;
/// How often idle stories and expired flows are swept.
pub(super) const SWEEP_EVERY: u64 = 1_000 * MS;

/// An explained flow, remembered to absorb its late evidence.
pub(super) struct Done {
    until: u64,
    /// The story's `slots`: evidence that fills one again is a new connection.
    slots: u16,
    established: bool,
}

impl Engine {
    /// Feeds one record (explanations are made by `advance`); overflow explanations,
    /// which need no story, are appended to `out` at once.
    pub fn push(&mut self, r: Record, out: &mut Vec<Explanation>) {
        self.host.on_record(&r);
        if r.kind == Kind::Overflow {
            if let Some(e) = self.overflow(&r) {
                if let Some(mut e) = self.emit(e, out) {
                    e.evidence = self.timed(std::slice::from_ref(&r));
                    out.push(e);
                }
            }
            return;
        }
        let Some(key) = FlowKey::of(&r) else { return };
        if let Some(open) = self.stories.get(&key) {
            if open.repeats(&r) {
                // A new connection on the same 4-tuple: the open story is complete.
                let story = self.stories.remove(&key).expect("present");
                self.conclude(key, story, r.mono_ns, out);
            }
        } else {
            let done = self.done.key(&key);
            if let Some(d) = self.done.get_mut(done) {
                if r.mono_ns <= d.until {
                    let bit = Story::slot_of(&key, &r, d.established);
                    if d.slots & bit == 0 {
                        // Late evidence of the flow just explained.
                        d.slots |= bit;
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
        let syn = r.tcp_flags == Some("S");
        // The socket died: whatever the application was told (if this kernel reports
        // errnos at all) comes in the same call chain.
        let died = kind == Kind::State && r.new_state == Some("CLOSE");
        let listener_gone = if died {
            r.netns
                .zip(r.src)
                .and_then(|(ns, src)| self.host.closed_with_queue(ns, src, now))
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
            if died && r.old_state == Some("SYN_SENT") {
                self.own_connect_deaths.insert((pid, dst), (key, now));
            } else if kind == Kind::ConnectError && r.state == Some("SYN_SENT") {
                if let Some((k, at)) = self.own_connect_deaths.remove(&(pid, dst)) {
                    if now.saturating_sub(at) <= SAME_CONNECT && k != key {
                        merged = self.stories.remove(&k);
                    }
                }
            }
        }
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
        } else if story.client_is_local() && !story.was_established() {
            // The client's errno will come; wait for it.
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

    /// Explains `story` (taken out of the open ones) and remembers its flow for a
    /// while, to absorb its late evidence.
    pub(super) fn conclude(
        &mut self,
        key: FlowKey,
        story: Story,
        now: u64,
        out: &mut Vec<Explanation>,
    ) {
        let e = self.explain(&story);
        let done = self.done.key(&key);
        self.done.insert(
            done,
            Done {
                until: story.last_ns.max(now) + DONE_FOR,
                slots: story.slots,
                established: story.was_established(),
            },
            now,
        );
        if let Some(mut e) = self.emit(e, out) {
            e.evidence = self.timed(&story.evidence);
            out.push(e);
        }
    }

    pub(super) fn schedule(&mut self, key: FlowKey, deadline: u64) {
        if let Some(s) = self.stories.get_mut(&key) {
            s.deadline = Some(deadline);
            self.due.push(Reverse((deadline, key)));
        }
    }

    /// Explains the stories due by `now` and closes finished bursts.
    pub fn advance(&mut self, now: u64, out: &mut Vec<Explanation>) {
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
                let rules = self.needs_rules(&story);
                if rules || self.needs_context(&story) {
                    story.waited_for_context = true;
                    self.wants_context |= !rules || self.needs_context(&story);
                    self.stories.insert(key, story);
                    let wait = if rules { FIREWALL_WAIT } else { CONTEXT_WAIT };
                    self.schedule(key, now + wait);
                    continue;
                }
            }
            self.conclude(key, story, now, out);
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
        let closed: Vec<_> = self
            .bursts
            .iter()
            .filter(|(_, b)| b.until <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in closed {
            let b = self.bursts.remove(&k).expect("present");
            if b.more > 0 {
                out.push(self.summary(b));
            }
        }
    }

    /// Explains everything still pending (end of a capture).
    pub fn finish(&mut self, out: &mut Vec<Explanation>) {
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
        // Twice: the first pass schedules what it finds over the stories' cap.
        self.advance(u64::MAX / 2, out);
        self.advance(u64::MAX / 2, out);
    }

    /// The server's namespace is unknown although its address might be on this host,
    /// or a local socket's owner is unknown (live, it is being looked up in /proc).
    fn needs_context(&self, s: &Story) -> bool {
        (s.connect_error().is_none() && s.server().is_some() && self.server_netns(s).is_none())
            || s.evidence.iter().any(|r| {
                r.owner.is_none()
                    && r.sock.is_some()
                    && self.owner_of(r).is_none()
                    && matches!(
                        r.kind,
                        Kind::RstSent | Kind::RstReceived | Kind::SynRetransmit | Kind::State
                    )
                    && r.old_state != Some("LISTEN")
                    && r.new_state != Some("LISTEN")
            })
    }

    /// Netfilter dropped packets of the story in a namespace whose rules for that port
    /// were not read yet (live, they are being read: see `Pipeline::ask_rules`).
    fn needs_rules(&self, s: &Story) -> bool {
        self.rules_answered
            && s.drops("NETFILTER_DROP").any(|r| {
                let (Some(ns), Some(d)) = (r.netns, r.dst) else {
                    return false;
                };
                self.host.firewall_rules(ns, d.port()).is_none()
            })
    }
}
