//! Network namespaces, their TCP counters and their listeners.
//!
//! A SYN dropped because a listener's accept queue (or SYN queue) is full fires no
//! tracepoint, and fentry/kprobes on the listen path are not available everywhere
//! (not on the kernels this project's machines run). So backlog overflows are caught
//! from the kernel's own per-namespace counters (TcpExt ListenOverflows, ListenDrops,
//! TCPReqQFullDrop) polled at a short interval: when one grows, the namespace's
//! listeners are read through sock_diag and the full ones reported with their queue
//! depth, limit and owner. Limits: an overflow is seen up to one interval late; a
//! queue that drained within the interval is reported as the fullest listener of the
//! namespace; the SYN-queue counter does not say which listener, so that report names
//! the namespace only. The in-kernel hooks add what does fire: the final-ACK drop
//! (TCP_LISTEN_OVERFLOW, with the listener), SYN-ACK retransmits and LISTEN resets.
use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, SocketAddr},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};

use crate::base::record::{PortUse, Proc, QueueKind};

/// How to enter a network namespace: a /proc/PID/ns/net link or a bind mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsRef {
    pub path: PathBuf,
    /// A process living in it, when one was found (its /proc/PID/net is that netns).
    pub pid: Option<u32>,
}

/// Where namespaces without a process are kept by bind mounts: `ip netns` and docker.
pub const NETNS_DIRS: [&str; 2] = [IP_NETNS_DIR, "/var/run/docker/netns"];

/// Where `ip netns add NAME` binds a namespace: its file names are the names.
pub const IP_NETNS_DIR: &str = "/run/netns";

/// Every network namespace in use, by inode: those of processes, and those kept by
/// bind mounts (`ip netns add`, container runtimes) even with no process inside.
pub fn scan_namespaces() -> HashMap<u32, NetnsRef> {
    let mut out: HashMap<u32, NetnsRef> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            if let Ok(link) = fs::read_link(&path) {
                if let Some(ino) = parse_ns_link(&link.to_string_lossy()) {
                    out.entry(ino).or_insert(NetnsRef {
                        path,
                        pid: Some(pid),
                    });
                }
            }
        }
    }
    for dir in NETNS_DIRS {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            if let Ok(meta) = fs::metadata(e.path()) {
                out.entry(meta.ino() as u32).or_insert(NetnsRef {
                    path: e.path(),
                    pid: None,
                });
            }
        }
    }
    out
}

fn parse_ns_link(s: &str) -> Option<u32> {
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpCounters {
    pub listen_overflows: u64,
    pub listen_drops: u64,
    pub reqq_full_drop: u64,
}

/// TcpExt counters of a namespace.
/// The namespace's connection tracking statistics; None when conntrack is not loaded.
pub fn read_conntrack(ns: &NetnsRef) -> Result<Option<crate::base::record::ConntrackStats>> {
    match ns.pid {
        Some(pid) => crate::source::conntrack::read(Path::new(&format!("/proc/{pid}/net"))),
        // /proc/thread-self/net follows the calling thread's namespace.
        None => in_netns(&ns.path, || {
            crate::source::conntrack::read(Path::new("/proc/thread-self/net"))
        }),
    }
}

pub fn read_counters(ns: &NetnsRef) -> Result<TcpCounters> {
    let text = match ns.pid {
        Some(pid) => fs::read_to_string(format!("/proc/{pid}/net/netstat"))?,
        // /proc/thread-self/net follows the calling thread's namespace.
        None => in_netns(&ns.path, || {
            Ok(fs::read_to_string("/proc/thread-self/net/netstat")?)
        })?,
    };
    parse_netstat(&text)
}

pub fn parse_netstat(text: &str) -> Result<TcpCounters> {
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let Some(values) = lines.next() else { break };
        let Some(names) = names.strip_prefix("TcpExt:") else {
            continue;
        };
        let values = values
            .strip_prefix("TcpExt:")
            .ok_or_else(|| anyhow!("bad TcpExt"))?;
        let map: HashMap<&str, u64> = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .filter_map(|(n, v)| Some((n, v.parse().ok()?)))
            .collect();
        let g = |n: &str| map.get(n).copied().unwrap_or(0);
        return Ok(TcpCounters {
            listen_overflows: g("ListenOverflows"),
            listen_drops: g("ListenDrops"),
            reqq_full_drop: g("TCPReqQFullDrop"),
        });
    }
    bail!("no TcpExt counters")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    /// Accept queue depth (sk_ack_backlog).
    pub depth: u32,
    /// Accept queue limit (sk_max_ack_backlog).
    pub backlog: u32,
    pub inode: u32,
    /// IPv6 sockets: IPV6_V6ONLY (INET_DIAG_SKV6ONLY); None for IPv4 ones.
    pub v6only: Option<bool>,
}

/// Runs `f` in a thread that joined the network namespace at `path`.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    thread::spawn(move || {
        // SAFETY: `ns` is an open namespace file; setns moves only this new thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow!("setns: {}", std::io::Error::last_os_error()));
        }
        f()
    })
    .join()
    .map_err(|_| anyhow!("namespace thread panicked"))?
}

/// Listening TCP sockets of the current namespace, through sock_diag.
pub fn dump_listeners() -> Result<Vec<Listener>> {
    Ok(dump(StateFlags::LISTEN, usize::MAX)?
        .into_iter()
        .map(|r| Listener {
            addr: SocketAddr::new(
                r.header.socket_id.source_address,
                r.header.socket_id.source_port,
            ),
            depth: r.header.recv_queue,
            backlog: r.header.send_queue,
            inode: r.header.inode,
            v6only: r.v6only,
        })
        .collect())
}

/// IPV6_V6ONLY of the IPv6 listener on `addr` in the namespace at `path` (any of a
/// SO_REUSEPORT group: they share the flag or could not share the port).
pub fn listener_v6only(path: &Path, addr: SocketAddr) -> Result<Option<bool>> {
    in_netns(path, move || {
        Ok(dump_listeners()?
            .into_iter()
            .find(|l| l.addr == addr)
            .and_then(|l| l.v6only))
    })
}

/// A connected TCP socket, as sock_diag shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// TCP state number.
    pub state: u8,
    pub inode: u32,
}

/// At most this many connected sockets are read per namespace when it is first seen:
/// their owners cost a walk of every process's descriptors, and the sockets opened
/// after the agent started are attributed in the kernel anyway.
pub const MAX_CONNECTED: usize = 65_536;

/// Connected TCP sockets of the current namespace that have an owner (TIME_WAIT and
/// orphans have none), up to `max`.
pub fn dump_connected(max: usize) -> Result<Vec<Connected>> {
    let states = StateFlags::ESTABLISHED
        | StateFlags::SYN_SENT
        | StateFlags::SYN_RECV
        | StateFlags::FIN_WAIT1
        | StateFlags::FIN_WAIT2
        | StateFlags::CLOSE_WAIT
        | StateFlags::LAST_ACK
        | StateFlags::CLOSING;
    Ok(dump(states, max)?
        .into_iter()
        .map(|r| r.header)
        .filter(|h| h.inode != 0)
        .map(|h| Connected {
            src: SocketAddr::new(h.socket_id.source_address, h.socket_id.source_port),
            dst: SocketAddr::new(
                h.socket_id.destination_address,
                h.socket_id.destination_port,
            ),
            state: h.state,
            inode: h.inode,
        })
        .collect())
}

/// At most this many sockets are read for a port-exhaustion report (counts stop
/// there: a namespace that has them all in use has at most 64 K per address anyway).
const MAX_PORT_USE: usize = 1 << 20;

/// The port range of the namespace at `path` and its sockets towards `dst` by state
/// (TIME_WAIT included: it holds its port), for a connect() that found no free port.
pub fn port_use(path: &Path, dst: SocketAddr) -> Result<PortUse> {
    in_netns(path, move || {
        let text = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .context("reading ip_local_port_range")?;
        let range = parse_port_range(&text).ok_or_else(|| anyhow!("bad port range {text:?}"))?;
        let mut p = PortUse {
            range,
            ..Default::default()
        };
        let want = (dst.ip().to_canonical(), dst.port());
        for r in dump(StateFlags::all() - StateFlags::LISTEN, MAX_PORT_USE)? {
            let h = r.header;
            let id = &h.socket_id;
            if (id.destination_address.to_canonical(), id.destination_port) != want {
                continue;
            }
            match h.state {
                TCP_ESTABLISHED => p.established += 1,
                TCP_TIME_WAIT => p.time_wait += 1,
                _ => p.other += 1,
            }
        }
        Ok(p)
    })
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_TIME_WAIT: u8 = 6;

fn parse_port_range(s: &str) -> Option<[u16; 2]> {
    let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
    Some([it.next()??, it.next()??])
}

/// The connected TCP socket of the current namespace with this 4-tuple, if any (one
/// exact sock_diag request, not a dump).
pub fn lookup_connected(src: SocketAddr, dst: SocketAddr) -> Result<Option<Connected>> {
    let family = if src.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut id = if src.is_ipv4() {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    id.source_address = src.ip();
    id.source_port = src.port();
    id.destination_address = dst.ip();
    id.destination_port = dst.port();
    // INET_DIAG_NOCOOKIE: any socket with that 4-tuple.
    id.cookie = [0xff; 8];
    let found = query(family, StateFlags::all(), Some(id), 1)?;
    Ok(found
        .into_iter()
        .map(|r| r.header)
        .find(|h| h.inode != 0)
        .map(|h| Connected {
            src,
            dst,
            state: h.state,
            inode: h.inode,
        }))
}

/// What is kept of a sock_diag answer: its header and the IPV6_V6ONLY flag. The
/// attributes are dropped at once: kept whole, each answer weighs about a kilobyte,
/// and a start-up scan reads tens of thousands.
struct Diag {
    header: netlink_packet_sock_diag::inet::InetResponseHeader,
    v6only: Option<bool>,
}

impl From<InetResponse> for Diag {
    fn from(r: InetResponse) -> Diag {
        Diag {
            v6only: r.nlas.iter().find_map(|n| match n {
                Nla::SkV6Only(v) => Some(*v),
                _ => None,
            }),
            header: r.header,
        }
    }
}

/// TCP sockets of the current namespace in `states`, both families, up to `max`.
fn dump(states: StateFlags, max: usize) -> Result<Vec<Diag>> {
    let mut out = query(AF_INET, states, None, max)?;
    out.extend(query(
        AF_INET6,
        states,
        None,
        max.saturating_sub(out.len()),
    )?);
    Ok(out)
}

/// One sock_diag request: a dump of `family`'s sockets in `states`, or with `exact`
/// the one socket of that id (the kernel answers ENOENT when there is none).
fn query(family: u8, states: StateFlags, exact: Option<SocketId>, max: usize) -> Result<Vec<Diag>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).context("opening a sock_diag socket")?;
    socket.bind_auto()?;
    socket.connect(&NlAddr::new(0, 0))?;
    let mut out = Vec::new();
    {
        let mut hdr = NetlinkHeader::default();
        hdr.flags = if exact.is_some() {
            NLM_F_REQUEST
        } else {
            NLM_F_REQUEST | NLM_F_DUMP
        };
        let mut packet = NetlinkMessage::new(
            hdr,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states,
                socket_id: exact.clone().unwrap_or_else(|| {
                    if family == AF_INET {
                        SocketId::new_v4()
                    } else {
                        SocketId::new_v6()
                    }
                }),
            })
            .into(),
        );
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        socket.send(&buf, 0)?;
        let mut rx = vec![0u8; 64 * 1024];
        // The dump is read to its end even past `max`, so that the next request on
        // this socket does not read the rest of this one. An exact request gets one
        // answer: the socket, or an error (ENOENT: none).
        'recv: loop {
            let n = socket.recv(&mut &mut rx[..], 0)?;
            let mut off = 0;
            while off < n {
                let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[off..n])
                    .map_err(|e| anyhow!("sock_diag reply: {e}"))?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                        if out.len() < max {
                            out.push(Diag::from(*r));
                        }
                        if exact.is_some() {
                            break 'recv;
                        }
                    }
                    NetlinkPayload::Done(_) => break 'recv,
                    NetlinkPayload::Error(_) if exact.is_some() => break 'recv,
                    NetlinkPayload::Error(e) => bail!("sock_diag error: {e:?}"),
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }
    Ok(out)
}

/// Socket inode to the process holding it, from /proc/*/fd, for the inodes wanted.
pub fn socket_owners(wanted: &[u32]) -> HashMap<u32, Proc> {
    let mut out = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    let wanted: std::collections::HashSet<u32> = wanted.iter().copied().collect();
    let Ok(procs) = procfs::process::all_processes() else {
        return out;
    };
    for p in procs.flatten() {
        let Ok(fds) = p.fd() else { continue };
        for fd in fds.flatten() {
            if let procfs::process::FDTarget::Socket(ino) = fd.target {
                let ino = ino as u32;
                if wanted.contains(&ino) && !out.contains_key(&ino) {
                    let comm = p.stat().map(|s| s.comm).unwrap_or_default();
                    out.insert(
                        ino,
                        Proc {
                            pid: p.pid as u32,
                            comm: comm.into(),
                            cgroup: crate::source::workload::id_of_pid(p.pid as u32),
                            workload: None,
                        },
                    );
                }
            }
        }
        if out.len() == wanted.len() {
            break;
        }
    }
    out
}

pub fn owner_of_inode(inode: u32) -> Option<Proc> {
    socket_owners(&[inode]).remove(&inode)
}

/// Addresses configured in the current namespace.
pub fn local_addresses() -> Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is writable; the list it gets is freed below, once.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        bail!("getifaddrs: {}", std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: getifaddrs returned a valid list, freed below.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: a non-null ifa_addr points at a socket address of the list.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a whole sockaddr_in.
                let sin =
                    unsafe { std::ptr::read_unaligned(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a whole sockaddr_in6.
                let sin6 =
                    unsafe { std::ptr::read_unaligned(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and nothing refers to the list any more.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

/// A backlog overflow seen from the counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overflow {
    pub netns: u32,
    /// net.core.somaxconn of the namespace, which caps every listen() backlog.
    pub somaxconn: Option<u32>,
    pub queue_kind: QueueKind,
    pub listener: Option<Listener>,
    pub owner: Option<Proc>,
    pub drops: u64,
}

/// Among the namespace's listeners, those the overflow is about: the full ones, or
/// else the fullest non-empty one (its queue may have drained since).
pub fn overflowing(listeners: &[Listener]) -> Vec<Listener> {
    let full: Vec<Listener> = listeners
        .iter()
        .filter(|l| l.depth > l.backlog)
        .cloned()
        .collect();
    if !full.is_empty() {
        return full;
    }
    listeners
        .iter()
        .filter(|l| l.depth > 0)
        .max_by(|a, b| {
            (a.depth as u64 * b.backlog.max(1) as u64)
                .cmp(&(b.depth as u64 * a.backlog.max(1) as u64))
        })
        .cloned()
        .into_iter()
        .collect()
}

/// Listeners of a namespace with the processes holding them.
pub type OwnedListeners = Vec<(Listener, Option<Proc>)>;

/// Connected sockets of a namespace with the processes holding them.
pub type OwnedSockets = Vec<(Connected, Proc)>;

/// What the monitor thread reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    Overflow(Overflow),
    /// A namespace's addresses and listeners (with owners), when first seen and
    /// whenever its addresses change; its connected sockets when first seen.
    Namespace {
        netns: u32,
        /// CLOCK_MONOTONIC ns just before the namespace was read: later events win.
        at_ns: u64,
        addrs: Vec<IpAddr>,
        /// Its `ip netns` name (a bind mount in /run/netns), when it has one.
        name: Option<crate::base::record::Text>,
        listeners: OwnedListeners,
        sockets: OwnedSockets,
    },
    /// Every namespace present at start-up was described.
    Started,
    /// Owners of sockets looked up on demand (their events had none).
    Sockets {
        netns: u32,
        at_ns: u64,
        sockets: OwnedSockets,
    },
    /// The firewall rules of a namespace that drop or reject a destination port, in
    /// the order netfilter runs them, read on demand (netfilter dropped packets to
    /// it); `missing` says what could not be read.
    Firewall {
        netns: u32,
        /// The destination of the dropped packet; the rules match its port.
        dst: SocketAddr,
        at_ns: u64,
        rules: Vec<crate::source::firewall::Rule>,
        missing: Vec<String>,
        /// The namespace's conntrack statistics, read with the rules (None: conntrack
        /// not loaded, or unreadable).
        conntrack: Option<crate::base::record::ConntrackStats>,
    },
}

/// Addresses and owned listeners of one namespace, and its owned connected sockets
/// when `with_sockets` (one walk of /proc for both).
fn describe(
    ns: &NetnsRef,
    with_sockets: bool,
) -> Result<(Vec<IpAddr>, OwnedListeners, OwnedSockets)> {
    let (addrs, listeners, connected) = in_netns(&ns.path, move || {
        let connected = if with_sockets {
            dump_connected(MAX_CONNECTED).unwrap_or_else(|e| {
                log::debug!("listing connected sockets: {e:#}");
                Vec::new()
            })
        } else {
            Vec::new()
        };
        Ok((local_addresses()?, dump_listeners()?, connected))
    })?;
    let inodes: Vec<u32> = listeners
        .iter()
        .map(|l| l.inode)
        .chain(connected.iter().map(|c| c.inode))
        .filter(|&i| i != 0)
        .collect();
    let mut owners = socket_owners(&inodes);
    let sockets = connected
        .into_iter()
        .filter_map(|c| {
            let o = owners.get(&c.inode)?.clone();
            Some((c, o))
        })
        .collect();
    let listeners = listeners
        .into_iter()
        .map(|l| {
            let o = owners.remove(&l.inode);
            (l, o)
        })
        .collect();
    Ok((addrs, listeners, sockets))
}

/// While the host is quiet (no events for 10 s), the namespaces are listed and
/// described this often instead of every 2 s (each listing walks /proc), and their
/// counters polled at most once a second: an idle agent then costs under 0.1% of a
/// core. A namespace whose socket shows up in an event is read at once anyway
/// (`rescan`), and counters are cumulative, so a slower poll delays an overflow's
/// record but loses no drop.
const QUIET_SCAN: Duration = Duration::from_secs(30);
const QUIET_POLL: Duration = Duration::from_secs(1);

/// Watches the namespaces until `stop`: describes each new one (and re-describes
/// all every 10 s, or at once when `rescan` is set), and polls their backlog counters
/// every `interval` (see QUIET_SCAN while `quiet`). Stops when `report` returns false.
pub fn run_monitor(
    interval: Duration,
    stop: Arc<AtomicBool>,
    rescan: Arc<AtomicBool>,
    quiet: Arc<AtomicBool>,
    lookups: std::sync::mpsc::Receiver<Ask>,
    mut report: impl FnMut(Observation) -> bool,
) {
    let mut namespaces: HashMap<u32, NetnsRef> = HashMap::new();
    // What was last reported of each namespace: its addresses and `ip netns` name.
    let mut described: HashMap<u32, (Vec<IpAddr>, Option<crate::base::record::Text>)> =
        HashMap::new();
    let mut last_scan: Option<Instant> = None;
    let mut last_full: Option<Instant> = None;
    let mut prev: HashMap<u32, TcpCounters> = HashMap::new();
    let mut started = false;
    // Diagnostics (and the tests of the on-demand lookups): no start-up socket scan.
    let startup_sockets = std::env::var(NO_STARTUP_SOCKETS_ENV).map_or(true, |v| v != "1");
    while !stop.load(Ordering::Relaxed) {
        let forced = rescan.swap(false, Ordering::Relaxed);
        let is_quiet = quiet.load(Ordering::Relaxed);
        let scan_every = if is_quiet {
            QUIET_SCAN
        } else {
            Duration::from_secs(2)
        };
        if forced || last_scan.is_none_or(|t| t.elapsed() >= scan_every) {
            namespaces = scan_namespaces();
            let names = crate::source::workload::names::netns_names(&[PathBuf::from(IP_NETNS_DIR)]);
            prev.retain(|ns, _| namespaces.contains_key(ns));
            described.retain(|ns, _| namespaces.contains_key(ns));
            last_scan = Some(Instant::now());
            let full = last_full.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
            if full {
                last_full = Some(Instant::now());
            }
            for (&netns, ns) in &namespaces {
                let at_ns = crate::base::clock::Clock::now().mono_ns;
                let new = !described.contains_key(&netns);
                let name = names.get(&netns).cloned();
                // A namespace named (or renamed) since is described again at once.
                let renamed = described.get(&netns).is_some_and(|(_, n)| *n != name);
                if !full && !forced && !new && !renamed {
                    continue;
                }
                match describe(ns, new && startup_sockets) {
                    Ok((addrs, listeners, sockets)) => {
                        let seen = (addrs, name);
                        let changed = described.get(&netns) != Some(&seen);
                        described.insert(netns, seen.clone());
                        let (addrs, name) = seen;
                        if (new || changed)
                            && !report(Observation::Namespace {
                                netns,
                                at_ns,
                                addrs,
                                name,
                                listeners,
                                sockets,
                            })
                        {
                            return;
                        }
                    }
                    Err(e) => log::debug!("describing netns {netns}: {e:#}"),
                }
            }
        }
        for (&netns, ns) in &namespaces {
            let Ok(now) = read_counters(ns) else { continue };
            let Some(before) = prev.insert(netns, now) else {
                continue;
            };
            let accept = now.listen_overflows.saturating_sub(before.listen_overflows);
            let syn = now.reqq_full_drop.saturating_sub(before.reqq_full_drop);
            if accept == 0 && syn == 0 {
                continue;
            }
            let (listeners, somaxconn) = in_netns(&ns.path, || {
                let somaxconn = fs::read_to_string("/proc/sys/net/core/somaxconn")
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                Ok((dump_listeners()?, somaxconn))
            })
            .unwrap_or_else(|e| {
                log::debug!("listing listeners of netns {netns}: {e:#}");
                (Vec::new(), None)
            });
            let mut out = Vec::new();
            if accept > 0 {
                let chosen = overflowing(&listeners);
                if chosen.is_empty() {
                    out.push(Overflow {
                        netns,
                        somaxconn,
                        queue_kind: QueueKind::Accept,
                        listener: None,
                        owner: None,
                        drops: accept,
                    });
                }
                for l in chosen {
                    let owner = owner_of_inode(l.inode);
                    out.push(Overflow {
                        netns,
                        somaxconn,
                        queue_kind: QueueKind::Accept,
                        listener: Some(l),
                        owner,
                        drops: accept,
                    });
                }
            }
            if syn > 0 {
                out.push(Overflow {
                    netns,
                    somaxconn,
                    queue_kind: QueueKind::Syn,
                    listener: None,
                    owner: None,
                    drops: syn,
                });
            }
            for o in out {
                if !report(Observation::Overflow(o)) {
                    return;
                }
            }
        }
        if !started {
            started = true;
            if !report(Observation::Started) {
                return;
            }
        }
        // Waits for a question until the next poll, so that a lookup (or a rescan
        // request, which comes with `Ask::Wake`) is served at once.
        let until = Instant::now()
            + if is_quiet {
                interval.max(QUIET_POLL)
            } else {
                interval
            };
        while !stop.load(Ordering::Relaxed) && !rescan.load(Ordering::Relaxed) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let first = match lookups.recv_timeout(left) {
                Ok(a) => a,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                // No one asks any more: only the stop flag can end the wait.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    thread::sleep(Duration::from_millis(10).min(left));
                    continue;
                }
            };
            let mut batch: Vec<Lookup> = Vec::new();
            let mut rulesets: Vec<(u32, SocketAddr)> = Vec::new();
            for a in std::iter::once(first).chain(lookups.try_iter().take(MAX_LOOKUPS - 1)) {
                match a {
                    Ask::Wake => {}
                    Ask::Socket(l) => batch.push(l),
                    Ask::Firewall { netns, dst } => {
                        if !rulesets
                            .iter()
                            .any(|&(n, d)| n == netns && d.port() == dst.port())
                        {
                            rulesets.push((netns, dst));
                        }
                    }
                }
            }
            if !batch.is_empty() {
                for o in look_up(&namespaces, batch) {
                    if !report(o) {
                        return;
                    }
                }
            }
            for (netns, dst) in rulesets.into_iter().take(MAX_RULESETS) {
                if let Some(o) = firewall_rules(&namespaces, netns, dst) {
                    if !report(o) {
                        return;
                    }
                }
            }
        }
    }
}

/// A socket whose owner the kernel did not know: (netns, local end, remote end).
pub type Lookup = (u32, SocketAddr, SocketAddr);

/// What the live pipeline asks the monitor to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ask {
    /// The owner of a socket.
    Socket(Lookup),
    /// The rules of a namespace's firewall that drop or reject the port of `dst`
    /// (the destination of a packet netfilter dropped there).
    Firewall { netns: u32, dst: SocketAddr },
    /// Nothing to read: the monitor looks at `rescan` and `stop` now.
    Wake,
}

/// Rulesets read per serving of the questions (each runs nft and iptables-save).
const MAX_RULESETS: usize = 8;

/// The drop and reject rules matching the port of `dst` in namespace `netns`, in
/// the order netfilter runs them; None when the namespace is gone.
fn firewall_rules(
    namespaces: &HashMap<u32, NetnsRef>,
    netns: u32,
    dst: SocketAddr,
) -> Option<Observation> {
    // A namespace made since the last scan, or whose process found then has exited,
    // is looked for again.
    let ns = match namespaces.get(&netns) {
        Some(n) if n.path.exists() => n.clone(),
        _ => scan_namespaces().remove(&netns)?,
    };
    let at_ns = crate::base::clock::Clock::now().mono_ns;
    // Read first, closest to the drop: the rules take two commands to read.
    let conntrack = read_conntrack(&ns).unwrap_or_else(|e| {
        log::debug!("reading the conntrack statistics of netns {netns}: {e:#}");
        None
    });
    let label = format!("netns {netns}");
    let (rules, missing) =
        crate::source::firewall::rules_in(Some(&ns.path), &label, dst.port(), true);
    let mut rules: Vec<_> = rules.into_iter().filter(|r| r.blocks()).collect();
    crate::source::firewall::in_hook_order(&mut rules);
    Some(Observation::Firewall {
        netns,
        dst,
        at_ns,
        rules,
        missing,
        conntrack,
    })
}

/// Set to 1, the connected sockets already there are not read (their owners are then
/// looked up on demand only).
pub const NO_STARTUP_SOCKETS_ENV: &str = "RSTRACE_NO_STARTUP_SOCKETS";

/// Lookups served in one walk of /proc.
const MAX_LOOKUPS: usize = 256;

/// The owners of the sockets asked about that still exist, one namespace's at a time.
fn look_up(namespaces: &HashMap<u32, NetnsRef>, batch: Vec<Lookup>) -> Vec<Observation> {
    let mut by_ns: HashMap<u32, Vec<(SocketAddr, SocketAddr)>> = HashMap::new();
    for (ns, s, d) in batch {
        by_ns.entry(ns).or_default().push((s, d));
    }
    let mut found: Vec<(u32, Connected)> = Vec::new();
    for (netns, tuples) in by_ns {
        let Some(ns) = namespaces.get(&netns) else {
            continue;
        };
        let at = in_netns(&ns.path, move || {
            Ok(tuples
                .into_iter()
                .filter_map(|(s, d)| lookup_connected(s, d).ok().flatten())
                .collect::<Vec<_>>())
        });
        match at {
            Ok(v) => found.extend(v.into_iter().map(|c| (netns, c))),
            Err(e) => log::debug!("looking up sockets in netns {netns}: {e:#}"),
        }
    }
    let inodes: Vec<u32> = found.iter().map(|(_, c)| c.inode).collect();
    let owners = socket_owners(&inodes);
    let at_ns = crate::base::clock::Clock::now().mono_ns;
    let mut per_ns: HashMap<u32, OwnedSockets> = HashMap::new();
    for (netns, c) in found {
        if let Some(o) = owners.get(&c.inode) {
            per_ns.entry(netns).or_default().push((c, o.clone()));
        }
    }
    per_ns
        .into_iter()
        .map(|(netns, sockets)| Observation::Sockets {
            netns,
            at_ns,
            sockets,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcpext_counters() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPReqQFullDrop\n\
                    TcpExt: 0 7 9 3\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        let c = parse_netstat(text).unwrap();
        assert_eq!(
            c,
            TcpCounters {
                listen_overflows: 7,
                listen_drops: 9,
                reqq_full_drop: 3
            }
        );
        assert!(parse_netstat("IpExt: A\nIpExt: 1\n").is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some([32768, 60999]));
        assert_eq!(parse_port_range("40000 40003"), Some([40000, 40003]));
        assert_eq!(parse_port_range("40000"), None);
    }

    #[test]
    fn namespace_links() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[1]"), None);
    }

    fn l(port: u16, depth: u32, backlog: u32) -> Listener {
        Listener {
            addr: SocketAddr::from(([0, 0, 0, 0], port)),
            depth,
            backlog,
            inode: port as u32,
            v6only: None,
        }
    }

    #[test]
    fn picks_full_listeners_then_the_fullest() {
        let ls = [l(1, 2, 1), l(2, 0, 128), l(3, 5, 4)];
        let got: Vec<u16> = overflowing(&ls).iter().map(|l| l.addr.port()).collect();
        assert_eq!(got, vec![1, 3]);
        let ls = [l(1, 1, 10), l(2, 3, 4), l(3, 0, 1)];
        let got: Vec<u16> = overflowing(&ls).iter().map(|l| l.addr.port()).collect();
        assert_eq!(got, vec![2]);
        assert!(overflowing(&[l(1, 0, 1)]).is_empty());
    }
}
