//! What the explanations need to know about the host: listeners per network
//! namespace (live and recently closed, with owners), namespace addresses, processes
//! that exited, recent backlog overflows. Fed only from records, so that a capture
//! file replays exactly the context watch had.
use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::base::workload::Workload;
use crate::{
    base::{
        record::{ConntrackStats, FirewallRule, Kind, Proc, Record, Sock, TcpState, Text},
        FastMap,
    },
    source::context,
};

/// How many closed listeners and overflows are remembered.
const HISTORY: usize = 1024;
/// Connected sockets from before the agent remembered with their owners; past this,
/// later ones are not (their events then have no owner, as before the agent knew).
pub const MAX_EXISTING: usize = 262_144;

#[derive(Clone, Debug, PartialEq)]
pub struct Listening {
    pub netns: u32,
    pub addr: SocketAddr,
    pub owner: Option<Proc>,
    pub since_ns: u64,
    /// The listening socket, when its opening was seen (not for a snapshot's).
    pub sock: Option<Sock>,
    /// IPV6_V6ONLY of an IPv6 listener, when read.
    pub v6only: Option<bool>,
}

impl Listening {
    /// Whether it takes connections to `dst`: `accepts`, and a `[::]` listener known to
    /// be IPV6_V6ONLY takes no IPv4.
    pub fn takes(&self, dst: SocketAddr) -> bool {
        accepts(self.addr, dst) && !(self.v6only == Some(true) && dst.is_ipv4())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Closed {
    pub listener: Listening,
    pub closed_ns: u64,
    /// The process that closed it (the exiting one, when it died).
    pub closer: Option<Proc>,
    /// Connections of its accept queue the close reset: the kernel kills each
    /// never-accepted child in the same call, right after LISTEN->CLOSE.
    pub queued_reset: u32,
    /// The last of those resets (the close itself before the first).
    pub last_reset_ns: u64,
    /// Another socket still listened on the address (one of a SO_REUSEPORT group, or
    /// a failed listen() beside the real listener): its queue, if any, was reset, but
    /// the service had no gap.
    pub still_served: bool,
}

/// A child's death belongs to its listener's close when it follows the close, or the
/// previous child's death, by at most this (they are one call in the kernel,
/// inet_csk_listen_stop, so a long queue takes long only as a chain of short steps;
/// under emulation one step took over a millisecond).
pub const QUEUE_RESET_GAP_NS: u64 = 50_000_000;

#[derive(Clone, Debug)]
pub struct OverflowSeen {
    pub at_ns: u64,
    pub record: Record,
}

#[derive(Default)]
pub struct Host {
    listeners: FastMap<u32, Vec<Listening>>,
    closed: VecDeque<Closed>,
    addrs: FastMap<u32, Vec<IpAddr>>,
    /// When each process exited, and how (`SIGKILL`, `exit 1`) when known.
    exited: FastMap<u32, (u64, Option<Text>)>,
    overflows: VecDeque<OverflowSeen>,
    /// Owners of connected sockets that existed before the agent saw their namespace,
    /// by (netns, local, remote), until they die.
    existing: FastMap<(u32, SocketAddr, SocketAddr), (Proc, TcpState)>,
    /// The latest read of each namespace's rules dropping or rejecting a port, by
    /// (netns, port): the rules (empty: none found) and what could not be read.
    /// (The destination of the dropped packet they were read for is kept too.)
    firewall: FastMap<(u32, u16), RulesRead>,
    /// What each cgroup v2 id names, from workload context records (bounded).
    workloads: FastMap<u64, Arc<Workload>>,
    /// `ip netns` names of namespaces, from their addresses records.
    netns_names: FastMap<u32, Text>,
}

/// At most this many cgroups' workloads are remembered; past that the map starts
/// over (the live side writes an id's record again when it sees it again).
const MAX_WORKLOADS: usize = 32_768;

/// One read of a namespace's rules for a port.
#[derive(Clone, Debug)]
pub struct RulesRead {
    /// The destination of the dropped packet it was read for.
    dst: SocketAddr,
    /// The rules (empty: none found).
    pub rules: Vec<FirewallRule>,
    /// What could not be read.
    missing: Option<Text>,
    /// The namespace's conntrack statistics then.
    pub conntrack: Option<ConntrackStats>,
}

/// At most this many (namespace, port) firewall reads are remembered.
const MAX_FIREWALL: usize = 4096;

/// Whether a listener bound to `bound` accepts connections to `dst` (same port).
pub fn accepts(bound: SocketAddr, dst: SocketAddr) -> bool {
    if bound.port() != dst.port() {
        return false;
    }
    let b = bound.ip();
    if b.is_unspecified() {
        // 0.0.0.0 takes IPv4; [::] takes both unless IPV6_V6ONLY (not visible here).
        return b.is_ipv6() || dst.is_ipv4();
    }
    b == dst.ip()
}

impl Host {
    /// The workload of a cgroup v2 id, when a context record named it.
    pub fn workload(&self, cgroup: u64) -> Option<&Arc<Workload>> {
        self.workloads.get(&cgroup)
    }

    /// The `ip netns` name of a namespace, when it has one.
    pub fn netns_name(&self, netns: u32) -> Option<&str> {
        self.netns_names.get(&netns).map(|n| &**n)
    }

    /// A namespace as explanations name it: `server-ns (4026532301)` when it has an
    /// `ip netns` name, else its inode alone.
    pub fn netns_label(&self, netns: u32) -> String {
        match self.netns_name(netns) {
            Some(name) => format!("{name} ({netns})"),
            None => netns.to_string(),
        }
    }

    pub fn on_record(&mut self, r: &Record) {
        match r.kind {
            Kind::Listener => {
                if let (Some(ns), Some(addr)) = (r.netns, r.src) {
                    // A snapshot older than a close we saw must not resurrect it.
                    let closed_since = self.closed.iter().any(|c| {
                        !c.still_served
                            && c.listener.netns == ns
                            && c.listener.addr == addr
                            && c.closed_ns >= r.mono_ns
                    });
                    if closed_since {
                        return;
                    }
                    let v = self.listeners.entry(ns).or_default();
                    if !v.iter().any(|l| l.addr == addr) {
                        v.push(Listening {
                            netns: ns,
                            addr,
                            owner: r.owner.clone(),
                            // A snapshot says the listener exists, not since when.
                            since_ns: 0,
                            sock: None,
                            v6only: r.v6only,
                        });
                    } else {
                        if let Some(l) = v.iter_mut().find(|l| l.addr == addr && l.owner.is_none())
                        {
                            l.owner = r.owner.clone();
                        }
                        for l in v
                            .iter_mut()
                            .filter(|l| l.addr == addr && l.v6only.is_none())
                        {
                            l.v6only = r.v6only;
                        }
                    }
                }
            }
            Kind::Socket => {
                if let (Some(ns), Some(s), Some(d), Some(o)) = (r.netns, r.src, r.dst, &r.owner) {
                    if self.existing.len() < MAX_EXISTING || self.existing.contains_key(&(ns, s, d))
                    {
                        let state = r.state.unwrap_or(TcpState::Established);
                        self.existing.insert((ns, s, d), (o.clone(), state));
                    }
                }
            }
            Kind::State => {
                let (Some(ns), Some(addr)) = (r.netns, r.src) else {
                    return;
                };
                if r.new_state == Some(TcpState::Close) && r.old_state != Some(TcpState::Listen) {
                    if let Some(d) = r.dst {
                        self.existing.remove(&(ns, addr, d));
                    }
                    if let Some(c) = self.queue_reset_by(ns, addr, r) {
                        c.queued_reset += 1;
                        c.last_reset_ns = r.mono_ns;
                    }
                }
                match (r.old_state, r.new_state) {
                    (Some(TcpState::Close), Some(TcpState::Listen)) => {
                        let v = self.listeners.entry(ns).or_default();
                        // Another socket on the address stays: SO_REUSEPORT, or a
                        // listen() about to fail with EADDRINUSE (which the kernel
                        // shows as LISTEN, then CLOSE).
                        v.retain(|l| l.addr != addr || l.sock != r.sock);
                        v.push(Listening {
                            netns: ns,
                            addr,
                            owner: r.owner.clone(),
                            since_ns: r.mono_ns,
                            sock: r.sock,
                            v6only: r.v6only,
                        });
                    }
                    (Some(TcpState::Listen), Some(TcpState::Close)) => {
                        let v = self.listeners.entry(ns).or_default();
                        let by_sock = r.sock.is_some() && v.iter().any(|l| l.sock == r.sock);
                        let mut gone: Vec<Listening> = Vec::new();
                        v.retain(|l| {
                            let this = if by_sock {
                                l.sock == r.sock
                            } else {
                                l.addr == addr && (l.sock.is_none() || r.sock.is_none())
                            };
                            if this {
                                gone.push(l.clone());
                            }
                            !this
                        });
                        // The address is still served (a failed listen() beside the
                        // real listener, or one of a SO_REUSEPORT group): no gap, but a
                        // queue of its own may have been reset.
                        let still_served = v.iter().any(|l| l.addr == addr);
                        if still_served && gone.is_empty() {
                            return;
                        }
                        if gone.is_empty() {
                            gone.push(Listening {
                                netns: ns,
                                addr,
                                owner: r.owner.clone(),
                                since_ns: 0,
                                sock: r.sock,
                                v6only: None,
                            });
                        }
                        for mut l in gone {
                            if l.owner.is_none() {
                                l.owner = r.owner.clone();
                            }
                            self.closed.push_back(Closed {
                                listener: l,
                                closed_ns: r.mono_ns,
                                closer: r.task.clone().or_else(|| r.owner.clone()),
                                queued_reset: 0,
                                last_reset_ns: r.mono_ns,
                                still_served,
                            });
                        }
                        while self.closed.len() > HISTORY {
                            self.closed.pop_front();
                        }
                    }
                    _ => {}
                }
            }
            Kind::Workload => {
                if let (Some(id), Some(w)) = (r.cgroup, &r.workload) {
                    if self.workloads.len() >= MAX_WORKLOADS {
                        self.workloads.clear();
                    }
                    self.workloads.insert(id, Arc::new(Workload::clone(w)));
                }
            }
            Kind::Addresses => {
                if let (Some(ns), Some(a)) = (r.netns, &r.addrs) {
                    self.addrs.insert(ns, a.clone());
                    match &r.netns_name {
                        Some(n) => self.netns_names.insert(ns, n.clone()),
                        None => self.netns_names.remove(&ns),
                    };
                }
            }
            Kind::FirewallRule => {
                if let (Some(ns), Some(dst), Some(rules)) = (r.netns, r.dst, &r.rules) {
                    let key = (ns, dst.port());
                    // A read that failed does not hide what an earlier one found.
                    let failed = rules.is_empty() && r.reason.is_some();
                    if failed
                        && self
                            .firewall
                            .get(&key)
                            .is_some_and(|read| !read.rules.is_empty())
                    {
                        return;
                    }
                    if self.firewall.len() >= MAX_FIREWALL && !self.firewall.contains_key(&key) {
                        self.firewall.clear();
                    }
                    self.firewall.insert(
                        key,
                        RulesRead {
                            dst,
                            rules: rules.clone(),
                            missing: r.reason.clone(),
                            conntrack: r.conntrack.clone(),
                        },
                    );
                }
            }
            Kind::ProcessExit => {
                if let Some(p) = &r.owner {
                    self.exited.insert(p.pid, (r.mono_ns, r.reason.clone()));
                }
            }
            Kind::Overflow => {
                self.overflows.push_back(OverflowSeen {
                    at_ns: r.mono_ns,
                    record: r.clone(),
                });
                while self.overflows.len() > HISTORY {
                    self.overflows.pop_front();
                }
            }
            _ => {}
        }
    }

    /// The namespace holding `ip`. Loopback and addresses present in several
    /// namespaces resolve to `hint` (the other end's namespace) when it has them.
    pub fn netns_of(&self, ip: IpAddr, hint: Option<u32>) -> Option<u32> {
        if let Some(h) = hint {
            if ip.is_loopback() || self.addrs.get(&h).is_some_and(|a| a.contains(&ip)) {
                return Some(h);
            }
        }
        let mut found = self
            .addrs
            .iter()
            .filter(|(_, a)| a.contains(&ip))
            .map(|(ns, _)| *ns);
        let first = found.next()?;
        found.next().is_none().then_some(first)
    }

    pub fn listeners(&self, netns: u32) -> &[Listening] {
        self.listeners.get(&netns).map_or(&[], |v| v.as_slice())
    }

    /// The listener that would take a connection to `dst` in `netns`.
    pub fn listener_for(&self, netns: u32, dst: SocketAddr) -> Option<&Listening> {
        self.listeners(netns).iter().find(|l| l.takes(dst))
    }

    /// Listeners on the port of `dst` in another namespace.
    pub fn elsewhere(&self, netns: u32, port: u16) -> Vec<&Listening> {
        let mut v: Vec<&Listening> = self
            .listeners
            .iter()
            .filter(|(ns, _)| **ns != netns)
            .flat_map(|(_, v)| v.iter())
            .filter(|l| l.addr.port() == port)
            .collect();
        v.sort_by_key(|l| (l.netns, l.addr));
        v
    }

    /// The last listener on `port` in `netns` that was open at `at_ns` and closed within
    /// `window_ns` before it (or just after: events of other CPUs arrive out of order).
    pub fn recently_closed(
        &self,
        netns: u32,
        port: u16,
        at_ns: u64,
        window_ns: u64,
    ) -> Option<&Closed> {
        self.closed.iter().rev().find(|c| {
            !c.still_served
                && c.listener.netns == netns
                && c.listener.addr.port() == port
                && c.listener.since_ns <= at_ns
                && c.closed_ns <= at_ns + 1_000_000
                && at_ns.saturating_sub(c.closed_ns) <= window_ns
        })
    }

    /// The listener whose close killed the socket `local` that died in `r` (a child
    /// still in its accept queue): closed just before, on that address, by the task
    /// the death runs in. An accepted connection the application aborts later is not.
    fn queue_reset_by(&mut self, netns: u32, local: SocketAddr, r: &Record) -> Option<&mut Closed> {
        if !matches!(
            r.old_state,
            Some(TcpState::Established | TcpState::SynRecv | TcpState::CloseWait)
        ) {
            return None;
        }
        let task = r.task.as_ref()?.pid;
        self.closed.iter_mut().rev().find(|c| {
            c.listener.netns == netns
                && accepts(c.listener.addr, local)
                && c.closer.as_ref().is_some_and(|p| p.pid == task)
                && r.mono_ns >= c.last_reset_ns
                && r.mono_ns - c.last_reset_ns <= QUEUE_RESET_GAP_NS
        })
    }

    /// The listener on `local` in `netns` whose close at about `at_ns` reset queued
    /// connections (see `queue_reset_by`).
    pub fn closed_with_queue(&self, netns: u32, local: SocketAddr, at_ns: u64) -> Option<&Closed> {
        self.closed.iter().rev().find(|c| {
            c.queued_reset > 0
                && c.listener.netns == netns
                && accepts(c.listener.addr, local)
                && (c.closed_ns..=c.last_reset_ns).contains(&at_ns)
        })
    }

    /// The context as records, to open a new capture file with.
    pub fn snapshot(&self, now: u64, time: &str) -> Vec<Record> {
        let mut out = Vec::new();
        // First: the owners below are named by them.
        let mut workloads: Vec<_> = self.workloads.iter().collect();
        workloads.sort_by_key(|(id, _)| **id);
        for (id, w) in workloads {
            out.push(context::workload(
                now,
                time.to_string(),
                *id,
                Workload::clone(w),
            ));
        }
        let mut namespaces: Vec<_> = self.addrs.iter().collect();
        namespaces.sort_by_key(|(ns, _)| **ns);
        for (ns, a) in namespaces {
            out.push(context::addresses(
                now,
                time.to_string(),
                *ns,
                a.clone(),
                self.netns_names.get(ns).cloned(),
            ));
        }
        let mut listeners: Vec<&Listening> = self.listeners.values().flatten().collect();
        listeners.sort_by_key(|l| (l.netns, l.addr));
        for l in listeners {
            out.push(context::listener(
                now,
                time.to_string(),
                l.netns,
                l.addr,
                l.owner.clone(),
                l.v6only,
                None,
            ));
        }
        let mut sockets: Vec<_> = self.existing.iter().collect();
        sockets.sort_by_key(|(k, _)| **k);
        for ((ns, s, d), (owner, state)) in sockets {
            out.push(context::socket(
                now,
                time.to_string(),
                *ns,
                (*s, *d),
                *state,
                owner.clone(),
            ));
        }
        let mut firewall: Vec<_> = self.firewall.iter().collect();
        firewall.sort_by_key(|(k, _)| **k);
        for ((ns, _), read) in firewall {
            out.push(context::firewall_rule(
                now,
                time.to_string(),
                *ns,
                read.dst,
                read.rules.clone(),
                read.missing.clone(),
                read.conntrack.clone(),
            ));
        }
        out
    }

    /// The rules of namespace `netns` that drop or reject destination `port`, in the
    /// order netfilter runs them, when they were read (empty: none found).
    pub fn firewall_rules(&self, netns: u32, port: u16) -> Option<&[FirewallRule]> {
        self.firewall
            .get(&(netns, port))
            .map(|read| read.rules.as_slice())
    }

    /// The read of namespace `netns`'s rules for `port`, with the conntrack
    /// statistics read then.
    pub fn firewall_read(&self, netns: u32, port: u16) -> Option<&RulesRead> {
        self.firewall.get(&(netns, port))
    }

    /// The process holding a socket that existed before the agent saw its namespace.
    pub fn existing_owner(&self, netns: u32, src: SocketAddr, dst: SocketAddr) -> Option<&Proc> {
        self.existing.get(&(netns, src, dst)).map(|(p, _)| p)
    }

    /// When the process exited, if it did.
    pub fn exited(&self, pid: u32) -> Option<u64> {
        self.exited.get(&pid).map(|(t, _)| *t)
    }

    /// How the process ended (`SIGKILL`, `exit 1`), when its exit was seen and told.
    pub fn exit_status(&self, pid: u32) -> Option<&str> {
        self.exited.get(&pid)?.1.as_deref()
    }

    /// The most recent overflow of the listener on `port` in `netns` within the window.
    pub fn overflow_near(
        &self,
        netns: u32,
        port: u16,
        at_ns: u64,
        window_ns: u64,
    ) -> Option<&OverflowSeen> {
        self.overflows.iter().rev().find(|o| {
            o.record.netns == Some(netns)
                && o.record.src.is_none_or(|s| s.port() == port)
                && o.at_ns.abs_diff(at_ns) <= window_ns
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ns: u32, addr: &str, old: TcpState, new: TcpState, at: u64, pid: u32) -> Record {
        let mut r = Record::new(Kind::State, at, String::new());
        r.netns = Some(ns);
        r.src = Some(addr.parse().unwrap());
        r.old_state = Some(old);
        r.new_state = Some(new);
        r.owner = Some(Proc {
            pid,
            comm: "srv".into(),
            cgroup: None,
            workload: None,
        });
        r
    }

    #[test]
    fn bind_address_matching() {
        let d: SocketAddr = "10.0.0.2:80".parse().unwrap();
        assert!(accepts("0.0.0.0:80".parse().unwrap(), d));
        assert!(accepts("[::]:80".parse().unwrap(), d));
        assert!(accepts("10.0.0.2:80".parse().unwrap(), d));
        assert!(!accepts("127.0.0.1:80".parse().unwrap(), d));
        assert!(!accepts("0.0.0.0:81".parse().unwrap(), d));
        assert!(!accepts(
            "0.0.0.0:80".parse().unwrap(),
            "[2001:db8::1]:80".parse().unwrap()
        ));
    }

    #[test]
    fn tracks_listeners_and_their_closing() {
        let mut h = Host::default();
        h.on_record(&state(
            1,
            "0.0.0.0:8080",
            TcpState::Close,
            TcpState::Listen,
            10,
            7,
        ));
        let d: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        assert_eq!(h.listener_for(1, d).unwrap().owner.as_ref().unwrap().pid, 7);
        assert!(h.listener_for(2, d).is_none());
        assert_eq!(h.elsewhere(2, 8080).len(), 1);
        h.on_record(&state(
            1,
            "0.0.0.0:8080",
            TcpState::Listen,
            TcpState::Close,
            20,
            7,
        ));
        assert!(h.listener_for(1, d).is_none());
        let c = h
            .recently_closed(1, 8080, 1_000_000_020, 5_000_000_000)
            .unwrap();
        assert_eq!(c.closed_ns, 20);
        assert!(h
            .recently_closed(1, 8080, 10_000_000_000, 5_000_000_000)
            .is_none());
        assert!(h.recently_closed(1, 9090, 30, 5_000_000_000).is_none());
        // Opened after the moment asked about (and closed just after it): it was not
        // listening then.
        h.on_record(&state(
            1,
            "0.0.0.0:9000",
            TcpState::Close,
            TcpState::Listen,
            1_000_100,
            7,
        ));
        h.on_record(&state(
            1,
            "0.0.0.0:9000",
            TcpState::Listen,
            TcpState::Close,
            1_000_300,
            7,
        ));
        assert!(h
            .recently_closed(1, 9000, 1_000_000, 5_000_000_000)
            .is_none());
        assert!(h
            .recently_closed(1, 9000, 1_000_200, 5_000_000_000)
            .is_some());
    }

    #[test]
    fn a_failed_listen_beside_a_live_listener_changes_nothing() {
        let d: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        // The live listener seen opening (with its socket), or known from a snapshot.
        for seen_opening in [true, false] {
            let mut h = Host::default();
            if seen_opening {
                let mut open = state(1, "0.0.0.0:8080", TcpState::Close, TcpState::Listen, 10, 7);
                open.sock = Some(Sock(0xa));
                h.on_record(&open);
            } else {
                let mut l = Record::new(Kind::Listener, 10, String::new());
                l.netns = Some(1);
                l.src = Some("0.0.0.0:8080".parse().unwrap());
                l.owner = Some(Proc {
                    pid: 7,
                    comm: "srv".into(),
                    cgroup: None,
                    workload: None,
                });
                h.on_record(&l);
            }
            // listen() on the same address by another socket fails with EADDRINUSE.
            let mut try_open = state(1, "0.0.0.0:8080", TcpState::Close, TcpState::Listen, 20, 9);
            try_open.sock = Some(Sock(0xb));
            let mut fail = state(1, "0.0.0.0:8080", TcpState::Listen, TcpState::Close, 21, 9);
            fail.sock = Some(Sock(0xb));
            h.on_record(&try_open);
            h.on_record(&fail);
            let l = h.listener_for(1, d).expect("the live listener stays");
            assert_eq!(
                l.owner.as_ref().unwrap().pid,
                7,
                "seen opening: {seen_opening}"
            );
            assert!(h.recently_closed(1, 8080, 30, 5_000_000_000).is_none());
        }
    }

    #[test]
    fn a_stale_snapshot_does_not_resurrect_a_closed_listener() {
        let mut h = Host::default();
        h.on_record(&state(
            1,
            "10.0.0.2:80",
            TcpState::Close,
            TcpState::Listen,
            10,
            7,
        ));
        h.on_record(&state(
            1,
            "10.0.0.2:80",
            TcpState::Listen,
            TcpState::Close,
            30,
            7,
        ));
        let mut snap = Record::new(Kind::Listener, 20, String::new());
        snap.netns = Some(1);
        snap.src = Some("10.0.0.2:80".parse().unwrap());
        h.on_record(&snap);
        assert!(h.listener_for(1, "10.0.0.2:80".parse().unwrap()).is_none());
        snap.mono_ns = 40;
        h.on_record(&snap);
        assert!(h.listener_for(1, "10.0.0.2:80".parse().unwrap()).is_some());
    }

    #[test]
    fn a_snapshot_taken_after_a_failure_does_not_date_the_listener() {
        let mut h = Host::default();
        let mut snap = Record::new(Kind::Listener, 5_000, String::new());
        snap.netns = Some(1);
        snap.src = Some("0.0.0.0:80".parse().unwrap());
        h.on_record(&snap);
        let l = h.listener_for(1, "10.0.0.2:80".parse().unwrap()).unwrap();
        assert_eq!(l.since_ns, 0, "not 'started listening after the refusal'");
    }

    #[test]
    fn resolves_namespaces_by_address() {
        let mut h = Host::default();
        for (ns, a) in [(1, "10.0.0.1"), (2, "10.0.0.2")] {
            let mut r = Record::new(Kind::Addresses, 0, String::new());
            r.netns = Some(ns);
            r.addrs = Some(vec![a.parse().unwrap(), "127.0.0.1".parse().unwrap()]);
            h.on_record(&r);
        }
        assert_eq!(h.netns_of("10.0.0.2".parse().unwrap(), Some(1)), Some(2));
        assert_eq!(h.netns_of("127.0.0.1".parse().unwrap(), Some(1)), Some(1));
        assert_eq!(
            h.netns_of("127.0.0.1".parse().unwrap(), None),
            None,
            "ambiguous"
        );
        assert_eq!(h.netns_of("192.0.2.1".parse().unwrap(), None), None);
    }
}
