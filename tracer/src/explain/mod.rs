//! Stage 5, explain (uses `base`, `decode` and `enrich`).
//!
//! From evidence to explanations: records are joined into one story per connection
//! (both ends when both are on this host), and when a story's failure is complete the
//! rules say why, who and what to do. Bursts of one cause collapse into a count.
//!
//! Time is the records' own (CLOCK_MONOTONIC): the engine is advanced by the live loop
//! with the clock, and by a capture replay with the records' timestamps, so both give
//! the same answers.
pub mod rules;
pub mod story;

use std::{cmp::Reverse, collections::BinaryHeap, net::SocketAddr};

use crate::base::{generations::Generations, FastMap};

use serde::Serialize;

use self::{
    rules::{Ctx, Finding, RULES},
    story::{FlowKey, Story, ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, ETIMEDOUT},
};
use crate::base::record::{errno_name, Kind, Proc, Record, SCHEMA_VERSION};
use crate::enrich::host::Host;

const MS: u64 = 1_000_000;
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
const MAX_STORIES: usize = 50_000;
/// Explained flows are remembered in generations of this many (under a storm, for
/// less than DONE_FOR).
const DONE_GENERATION_CAP: usize = 32_768;
/// How often idle stories and expired flows are swept.
const SWEEP_EVERY: u64 = 1_000 * MS;
/// Bursts of a cause for one port and process within this collapse into a count.
pub const COLLAPSE_WINDOW: u64 = 2_000 * MS;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    pub v: u32,
    /// Always "failure" (distinguishes explanations from event records).
    pub kind: &'static str,
    pub time: String,
    pub mono_ns: u64,
    /// Stable cause id, e.g. `nothing_listening`.
    pub cause: &'static str,
    pub confidence: f32,
    /// The process that failed (the connecting side, or the side that got the error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Proc>,
    /// The process responsible, when another (the listener's owner, the resetting app).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub culprit: Option<Proc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_netns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno_name: Option<&'static str>,
    /// True when no errno event was seen (kernels before 5.13) and `errno_name` is
    /// what the socket's death implies.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub errno_inferred: bool,
    /// "refused", "timed out", "reset", ...
    pub outcome: &'static str,
    /// One sentence: who, where, what happened and why.
    pub explanation: String,
    /// What to check or change.
    pub fix: String,
    /// Failures this line stands for: 1, or the size of a collapsed burst.
    pub count: u64,
    /// For collapsed bursts: the window they were counted in, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// The evidence the explanation rests on.
    pub evidence: Vec<Record>,
}

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

fn outcome(errno: Option<i32>, s: &Story) -> &'static str {
    match errno {
        Some(ECONNREFUSED) => "refused",
        Some(ETIMEDOUT) => "timed out",
        Some(EHOSTUNREACH) => "failed: host unreachable",
        Some(ENETUNREACH) => "failed: network unreachable",
        Some(libc::ECONNRESET) => "reset",
        Some(libc::EPIPE) => "broken (EPIPE)",
        Some(_) => "failed",
        None if s.was_established() => "reset",
        None if s
            .rsts_sent()
            .any(|r| r.reason.as_deref() == Some("NO_SOCKET")) =>
        {
            "refused"
        }
        None if s.drops("NETFILTER_DROP").next().is_some() => "blocked",
        None => "failed",
    }
}

/// An explained flow, remembered to absorb its late evidence.
struct Done {
    until: u64,
    /// The story's `slots`: evidence that fills one again is a new connection.
    slots: u16,
    established: bool,
}

struct Burst {
    first: Explanation,
    until: u64,
    more: u64,
}

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
    fn conclude(&mut self, key: FlowKey, story: Story, now: u64, out: &mut Vec<Explanation>) {
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

    fn schedule(&mut self, key: FlowKey, deadline: u64) {
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

    fn summary(&self, b: Burst) -> Explanation {
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
    fn emit(&mut self, mut e: Explanation, out: &mut Vec<Explanation>) -> Option<Explanation> {
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

    fn server_netns(&self, s: &Story) -> Option<u32> {
        s.server_netns_seen()
            .or_else(|| self.host.netns_of(s.server()?.ip(), s.client_netns()))
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

    /// The owner the host model learnt since for the socket of `r` (a `socket` context
    /// record that came after it).
    fn owner_of(&self, r: &Record) -> Option<&Proc> {
        self.host.existing_owner(r.netns?, r.src?, r.dst?)
    }

    fn explain(&self, s: &Story) -> Explanation {
        let errno = s.errno().or_else(|| s.inferred_errno());
        let ctx = Ctx {
            host: &self.host,
            story: s,
            client: s.client(),
            server: s.server(),
            server_netns: self.server_netns(s),
            errno,
            at_ns: s.failure_ns(),
        };
        let finding = RULES
            .iter()
            .find_map(|r| r.check(&ctx))
            .unwrap_or_else(|| unexplained(&ctx));
        let (src, dst) = match (ctx.client, ctx.server) {
            (Some(c), Some(sv)) => (Some(c), Some(sv)),
            _ => (
                s.errno_record().and_then(|r| r.src).or(Some(s.key.0)),
                s.errno_record().and_then(|r| r.dst).or(Some(s.key.1)),
            ),
        };
        let victim = s.victim().cloned().or_else(|| {
            let end = s.failed_end()?;
            s.evidence
                .iter()
                .filter(|r| r.src == Some(end))
                .find_map(|r| self.owner_of(r))
                .cloned()
        });
        let who = match &victim {
            Some(p) => format!("{}[{}]", p.comm, p.pid),
            None => src.map_or("?".into(), |a| a.to_string()),
        };
        let out = outcome(errno, s);
        let explanation = format!(
            "{who} -> {} {out}: {}",
            dst.map_or("?".into(), |d| d.to_string()),
            finding.reason
        );
        Explanation {
            v: SCHEMA_VERSION,
            kind: "failure",
            time: String::new(),
            mono_ns: ctx.at_ns,
            cause: finding.cause,
            confidence: finding.confidence,
            process: victim,
            culprit: finding.culprit,
            netns: s.client_netns(),
            server_netns: ctx.server_netns,
            src,
            dst,
            errno_name: errno.and_then(errno_name),
            errno_inferred: s.errno().is_none() && errno.is_some(),
            outcome: out,
            explanation,
            fix: finding.fix,
            count: 1,
            window_ms: None,
            evidence: Vec::new(),
        }
    }

    /// Evidence with its wall-clock text filled in.
    fn timed(&self, records: &[Record]) -> Vec<Record> {
        records
            .iter()
            .map(|r| {
                let mut r = r.clone();
                if r.time.is_empty() {
                    r.time = self.time(r.mono_ns);
                }
                r
            })
            .collect()
    }

    fn overflow(&self, r: &Record) -> Option<Explanation> {
        let listener = r.src;
        let port = listener.map_or(0, |l| l.port());
        let (cause, reason, fix) = match r.queue_kind {
            Some("syn") => (
                "syn_queue_overflow",
                format!(
                    "the SYN queue in netns {} overflowed: {} SYNs dropped (SYN flood, or syncookies off)",
                    r.netns.unwrap_or(0),
                    r.drops.unwrap_or(0)
                ),
                "sysctl net.ipv4.tcp_syncookies=1, raise net.ipv4.tcp_max_syn_backlog and the listen() backlog; check: nstat -az TcpExtTCPReqQFullDrop".to_string(),
            ),
            _ if listener.is_none() => {
                // The queue drained before the counters' poll read the listeners: name
                // the namespace's listeners as the candidates, never a port 0.
                let ns = r.netns.unwrap_or(0);
                let mut candidates: Vec<String> = self
                    .host
                    .listeners(ns)
                    .iter()
                    .map(|l| match &l.owner {
                        Some(p) => format!("{} ({}[{}])", l.addr, p.comm, p.pid),
                        None => l.addr.to_string(),
                    })
                    .collect();
                candidates.sort();
                candidates.dedup();
                (
                    "accept_queue_overflow",
                    format!(
                        "{} connection attempts were dropped in netns {ns}: an accept queue was full (it drained before its listener could be read; {})",
                        r.drops.unwrap_or(0),
                        if candidates.is_empty() {
                            "no listener is known there".to_string()
                        } else {
                            format!("listeners there: {}", candidates.join(", "))
                        }
                    ),
                    format!(
                        "make the server accept() faster or raise its listen() backlog (capped by net.core.somaxconn{}); check in netns {ns}: ss -tlnp (Recv-Q above Send-Q means full) and nstat -az TcpExtListenOverflows",
                        r.somaxconn.map_or(String::new(), |s| format!(" = {s}"))
                    ),
                )
            }
            _ => (
                "accept_queue_overflow",
                format!(
                    "{} connection attempts to {} were dropped: the accept queue of {} is full{}, it does not accept() fast enough",
                    r.drops.unwrap_or(0),
                    listener.map_or("a listener".into(), |l| l.to_string()),
                    rules::who(&r.owner),
                    r.queue.as_ref().map_or(String::new(), |q| format!(" ({} waiting, backlog {})", q.depth, q.backlog))
                ),
                format!(
                    "make the server accept() faster or raise its listen() backlog (capped by net.core.somaxconn{}); check: ss -tlnp 'sport = :{port}' (Recv-Q above Send-Q means full)",
                    r.somaxconn.map_or(String::new(), |s| format!(" = {s}"))
                ),
            ),
        };
        Some(Explanation {
            v: SCHEMA_VERSION,
            kind: "failure",
            time: String::new(),
            mono_ns: r.mono_ns,
            cause,
            confidence: 0.9,
            process: None,
            culprit: r.owner.clone(),
            netns: None,
            server_netns: r.netns,
            src: None,
            dst: listener,
            errno_name: None,
            errno_inferred: false,
            outcome: "overflow",
            explanation: match listener {
                Some(l) => format!("listener {l}: {reason}"),
                None => reason,
            },
            fix,
            count: 1,
            window_ms: None,
            evidence: Vec::new(),
        })
    }
}

fn unexplained(c: &Ctx) -> Finding {
    let kinds: Vec<String> = c
        .story
        .evidence
        .iter()
        .map(|r| match (&r.reason, r.errno.and_then(errno_name)) {
            (Some(reason), _) => format!("{} {reason}", r.kind.label()),
            (None, Some(e)) => format!("{} {e}", r.kind.label()),
            _ => r.kind.label().to_string(),
        })
        .collect();
    Finding {
        cause: "unexplained",
        confidence: 0.0,
        reason: format!("no rule explains this; evidence: {}", kinds.join(", ")),
        fix: "run with -v (or --json) for the evidence and check the server and the path by hand"
            .into(),
        culprit: None,
    }
}

#[cfg(test)]
mod tests;
