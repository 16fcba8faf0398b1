//! Context records: what the host tells beside the kernel's evidence (namespace
//! addresses, listeners, sockets from before the agent, firewall rules, process exits,
//! backlog overflows, losses). Built here alone: by the live source from what it reads,
//! and by the host model for the snapshot that opens each rotated capture file.
use std::net::{IpAddr, SocketAddr};

use tracer_common::Hook;

use crate::{
    base::{
        clock::Clock,
        record::{
            ConntrackStats, FirewallRule, Kind, OwnerSource, Proc, Queue, Record, TcpState, Text,
        },
        workload::Workload,
    },
    source::netns::{self, Observation, Overflow},
};

/// A namespace's addresses, and its `ip netns` name when it has one.
pub fn addresses(
    now: u64,
    time: String,
    netns: u32,
    addrs: Vec<IpAddr>,
    name: Option<Text>,
) -> Record {
    let mut r = Record::new(Kind::Addresses, now, time);
    r.netns = Some(netns);
    r.addrs = Some(addrs);
    r.netns_name = name;
    r
}

/// A listener. `queue`: its accept queue when it was read from its namespace just now,
/// its owner then found in /proc; None for the host model's memory of it (the owner
/// may have come from the kernel, so it gets no source).
pub fn listener(
    now: u64,
    time: String,
    netns: u32,
    addr: SocketAddr,
    owner: Option<Proc>,
    v6only: Option<bool>,
    queue: Option<Queue>,
) -> Record {
    let mut r = Record::new(Kind::Listener, now, time);
    r.netns = Some(netns);
    r.src = Some(addr);
    r.owner_source = owner
        .as_ref()
        .filter(|_| queue.is_some())
        .map(|_| OwnerSource::Proc);
    r.queue = queue;
    r.owner = owner;
    r.v6only = v6only;
    r
}

/// A connected socket and the process holding it, found in /proc.
pub fn socket(
    now: u64,
    time: String,
    netns: u32,
    (src, dst): (SocketAddr, SocketAddr),
    state: TcpState,
    owner: Proc,
) -> Record {
    let mut r = Record::new(Kind::Socket, now, time);
    r.netns = Some(netns);
    r.src = Some(src);
    r.dst = Some(dst);
    r.state = Some(state);
    r.owner = Some(owner);
    r.owner_source = Some(OwnerSource::Proc);
    r
}

/// A namespace's rules that drop or reject the port of `dst` (empty: none found);
/// `missing` says what could not be read; `conntrack`, the namespace's conntrack
/// statistics read with them.
pub fn firewall_rule(
    now: u64,
    time: String,
    netns: u32,
    dst: SocketAddr,
    rules: Vec<FirewallRule>,
    missing: Option<Text>,
    conntrack: Option<ConntrackStats>,
) -> Record {
    let mut r = Record::new(Kind::FirewallRule, now, time);
    r.netns = Some(netns);
    r.dst = Some(dst);
    r.rules = Some(rules);
    r.reason = missing;
    r.conntrack = conntrack;
    r
}

/// A process gone (`how`: `SIGKILL`, `exit 1`, when its zombie told).
pub fn process_exit(now: u64, time: String, owner: Proc, how: Option<String>) -> Record {
    let mut r = Record::new(Kind::ProcessExit, now, time);
    r.owner = Some(owner);
    r.reason = how.map(Into::into);
    r
}

/// What a cgroup v2 id names (systemd unit, container, pod).
pub fn workload(now: u64, time: String, cgroup: u64, w: Workload) -> Record {
    let mut r = Record::new(Kind::Workload, now, time);
    r.cgroup = Some(cgroup);
    r.workload = Some(Box::new(w));
    r
}

/// Events of `hook` the kernel could not hand over, and why.
pub fn loss(now: u64, time: String, hook: Hook, lost: u64, why: &str) -> Record {
    let mut r = Record::new(Kind::Loss, now, time);
    r.hook = Some(hook);
    r.lost = Some(lost);
    r.reason = Some(why.into());
    r
}

/// A backlog overflow the counters showed.
pub fn overflow(now: u64, time: String, o: Overflow) -> Record {
    let mut r = Record::new(Kind::Overflow, now, time);
    r.netns = Some(o.netns);
    r.queue_kind = Some(o.queue_kind);
    r.drops = Some(o.drops);
    r.somaxconn = o.somaxconn;
    if let Some(l) = o.listener {
        r.src = Some(l.addr);
        r.queue = Some(Queue {
            depth: l.depth,
            backlog: l.backlog,
        });
    }
    if let Some(p) = o.owner {
        r.owner = Some(p);
        r.owner_source = Some(OwnerSource::Proc);
    }
    r
}

/// Context records for a namespace: its addresses, its listeners, then the connected
/// sockets that were there before the agent.
fn namespace(
    netns: u32,
    now: u64,
    (addrs, name): (Vec<IpAddr>, Option<Text>),
    listeners: netns::OwnedListeners,
    sockets: netns::OwnedSockets,
    clock: &Clock,
) -> Vec<Record> {
    let mut out = vec![addresses(now, clock.format(now), netns, addrs, name)];
    for (l, owner) in listeners {
        let queue = Queue {
            depth: l.depth,
            backlog: l.backlog,
        };
        out.push(listener(
            now,
            clock.format(now),
            netns,
            l.addr,
            owner,
            l.v6only,
            Some(queue),
        ));
    }
    out.extend(sockets_of(netns, now, sockets, clock));
    out
}

/// Context records for connected sockets and the processes holding them.
fn sockets_of(
    netns: u32,
    now: u64,
    sockets: netns::OwnedSockets,
    clock: &Clock,
) -> impl Iterator<Item = Record> + '_ {
    sockets.into_iter().map(move |(c, owner)| {
        let state = TcpState::from_kernel(c.state as i32);
        socket(now, clock.format(now), netns, (c.src, c.dst), state, owner)
    })
}

/// The records of what the namespace monitor observed (overflows are dated when
/// turned into records: the counters tell no time).
pub fn observed(o: Observation, clock: &Clock) -> Vec<Record> {
    match o {
        Observation::Overflow(o) => {
            let now = Clock::now().mono_ns;
            vec![overflow(now, clock.format(now), o)]
        }
        Observation::Namespace {
            netns,
            at_ns,
            addrs,
            name,
            listeners,
            sockets,
        } => namespace(netns, at_ns, (addrs, name), listeners, sockets, clock),
        Observation::Sockets {
            netns,
            at_ns,
            sockets,
        } => sockets_of(netns, at_ns, sockets, clock).collect(),
        Observation::Firewall {
            netns,
            dst,
            at_ns,
            rules,
            missing,
            conntrack,
        } => {
            let rules: Vec<FirewallRule> = rules.iter().map(|x| x.to_record()).collect();
            let missing =
                (rules.is_empty() && !missing.is_empty()).then(|| missing.join("; ").into());
            vec![firewall_rule(
                at_ns,
                clock.format(at_ns),
                netns,
                dst,
                rules,
                missing,
                conntrack,
            )]
        }
        Observation::Started => Vec::new(),
    }
}
