//! Decoded evidence: the domain types every sink prints. The JSON form is the
//! documented, stable schema (docs/events.md); fields that do not apply are omitted.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use serde::{Serialize, Serializer};

/// Immutable shared text (process names, kernel reason and symbol names). Records are
/// cloned into stories and explanations and these names repeat across a storm, so a
/// clone is a reference count, not an allocation.
pub type Text = Arc<str>;

/// A kernel socket address; printed in hex, as the kernel's own traces do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sock(pub u64);

impl fmt::Display for Sock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl Serialize for Sock {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Why events were lost, in a loss record's `reason`.
pub const LOST_RING_FULL: &str = "RINGBUF_FULL";
pub const LOST_RECURSION: &str = "RECURSION";

/// Version of the JSON Lines schema, carried by every record.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An RST left this host.
    RstSent,
    /// An RST arrived on a socket of this host.
    RstReceived,
    /// A SYN was retransmitted (connect not answered yet).
    SynRetransmit,
    /// A SYN-ACK was retransmitted by a listener.
    SynackRetransmit,
    /// A TCP/IP-relevant packet drop.
    Drop,
    /// A listener opened or closed, or a socket died without the FIN handshake.
    State,
    /// The kernel handed an errno to the application.
    Error,
    /// connect() failed before sending anything (routing or policy).
    ConnectError,
    /// A listener's accept queue or SYN queue overflowed.
    Overflow,
    /// Events were lost (ring buffer full).
    Loss,
    /// Context: a listener that existed when rstrace started or a namespace was found.
    Listener,
    /// Context: the addresses of a network namespace.
    Addresses,
    /// Context: a process that owned a listener has exited.
    ProcessExit,
    /// Context: a connected socket that existed when rstrace first saw its namespace,
    /// with the process holding it (its events carry no owner from the kernel).
    Socket,
    /// Context: the firewall rules of a namespace that drop or reject a destination
    /// port, read when netfilter was seen dropping packets to it.
    FirewallRule,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::RstSent => "RST-SENT",
            Kind::RstReceived => "RST-RECV",
            Kind::SynRetransmit => "SYN-RETRANS",
            Kind::SynackRetransmit => "SYNACK-RETRANS",
            Kind::Drop => "DROP",
            Kind::State => "STATE",
            Kind::Error => "ERROR",
            Kind::ConnectError => "CONNECT-ERROR",
            Kind::Overflow => "OVERFLOW",
            Kind::Loss => "LOSS",
            Kind::Listener => "LISTENER",
            Kind::Addresses => "ADDRESSES",
            Kind::ProcessExit => "EXIT",
            Kind::Socket => "SOCKET",
            Kind::FirewallRule => "FIREWALL-RULE",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Proc {
    pub pid: u32,
    pub comm: Text,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Queue {
    /// Connections waiting in the accept queue.
    pub depth: u32,
    /// The listener's accept queue limit (listen() backlog capped by somaxconn).
    pub backlog: u32,
}

/// Local ports of a namespace and the sockets holding them towards one destination,
/// read through sock_diag when a connect() found no free port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PortUse {
    /// net.ipv4.ip_local_port_range (it applies to IPv6 too), inclusive.
    pub range: [u16; 2],
    /// Sockets towards the destination, by state.
    pub established: u32,
    pub time_wait: u32,
    /// In any other state (SYN_SENT, FIN_WAIT, CLOSE_WAIT, ...).
    pub other: u32,
}

/// A netfilter rule that drops or rejects packets to a port, as read from its
/// namespace's ruleset (`nft -j list ruleset`, `iptables-save`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FirewallRule {
    /// `nft`, `iptables` or `ip6tables`.
    pub source: Text,
    /// `inet`, `ip`, `ip6`, ...
    pub family: Text,
    pub table: Text,
    pub chain: Text,
    /// The netfilter hook of its (base) chain: `prerouting`, `input`, `forward`,
    /// `output`, `postrouting`; absent for a chain only reached by a jump.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<Text>,
    /// The chain's priority within its hook (lower runs first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// nftables rule handle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    /// The rule as text (nft syntax, or the iptables-save line).
    pub rule: Text,
    /// `drop` or `reject`.
    pub verdict: Text,
}

impl FirewallRule {
    /// Where it is, for a sentence: `table inet filter, chain input, handle 4`.
    pub fn place(&self) -> String {
        let mut s = format!("table {} {}, chain {}", self.family, self.table, self.chain);
        if let Some(h) = self.handle {
            s.push_str(&format!(", handle {h}"));
        }
        s
    }

    /// The command that removes it (run in its namespace).
    pub fn delete_command(&self) -> String {
        match (&*self.source, self.handle) {
            ("nft", Some(h)) => format!(
                "nft delete rule {} {} {} handle {h}",
                self.family, self.table, self.chain
            ),
            _ => format!(
                "{} -t {} {}",
                if &*self.source == "ip6tables" {
                    "ip6tables"
                } else {
                    "iptables"
                },
                self.table,
                self.rule.replacen("-A ", "-D ", 1)
            ),
        }
    }

    /// The command that lets `port` through before it (run in its namespace).
    pub fn allow_command(&self, port: u16) -> String {
        match (&*self.source, self.handle) {
            ("nft", Some(h)) => format!(
                "nft insert rule {} {} {} handle {h} tcp dport {port} accept",
                self.family, self.table, self.chain
            ),
            _ => format!(
                "{} -t {} -I {} -p tcp --dport {port} -j ACCEPT",
                if &*self.source == "ip6tables" {
                    "ip6tables"
                } else {
                    "iptables"
                },
                self.table,
                self.chain
            ),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Record {
    /// Schema version.
    pub v: u32,
    /// Wall-clock time, RFC 3339 with microseconds, UTC.
    pub time: String,
    /// CLOCK_MONOTONIC nanoseconds (the kernel's timestamp).
    pub mono_ns: u64,
    pub kind: Kind,
    /// Network namespace inode (as in /proc/PID/ns/net), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// Local end (for drops: the packet's source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<SocketAddr>,
    /// Remote end (for drops: the packet's destination).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<SocketAddr>,
    /// TCP state of the socket (RST and retransmit events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_state: Option<&'static str>,
    /// Kernel reason name: sk_rst_reason for RSTs, skb_drop_reason for drops.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Text>,
    /// errno number handed to the application (error records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// errno name, e.g. ECONNREFUSED.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno_name: Option<&'static str>,
    /// Process owning the socket (from socket ownership, never the softirq's task).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Proc>,
    /// How the owner was found: "kernel" (ownership map), "socket" (joined on the
    /// 4-tuple of another event of the same socket), "listener", or "proc".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_source: Option<&'static str>,
    /// Task that happened to run the hook; only meaningful in process context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<Proc>,
    /// Kernel socket address, hex; identifies a socket until it is destroyed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sock: Option<Sock>,
    /// Retransmits counted on the socket before this event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retransmits: Option<u32>,
    /// Listener accept queue at the time of the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<Queue>,
    /// Overflow records: which queue ("accept" or "syn").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_kind: Option<&'static str>,
    /// Overflow records: connections dropped since the previous record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drops: Option<u64>,
    /// Drop records: kernel function that dropped the packet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Text>,
    /// Drop records: TCP flags of the dropped segment, e.g. "S" or "A".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<&'static str>,
    /// Loss records: the hook whose events were lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<&'static str>,
    /// Loss records: events lost since the previous loss record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// Addresses records: the namespace's addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addrs: Option<Vec<IpAddr>>,
    /// Overflow records: net.core.somaxconn of the listener's namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub somaxconn: Option<u32>,
    /// Connect errors for want of a local port: the namespace's port range and the
    /// sockets holding ports towards the destination (live only; not on every record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortUse>,
    /// Listeners on an IPv6 address (listener records, CLOSE->LISTEN of `[::]`):
    /// IPV6_V6ONLY, read through sock_diag; absent when unknown or IPv4.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v6only: Option<bool>,
    /// Firewall rule records: the rules that drop or reject the port of `dst`, in the order
    /// netfilter runs them (hook, then chain priority, then position); empty when
    /// none was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<FirewallRule>>,
}

impl Record {
    pub fn new(kind: Kind, mono_ns: u64, time: String) -> Record {
        Record {
            v: SCHEMA_VERSION,
            time,
            mono_ns,
            kind,
            netns: None,
            src: None,
            dst: None,
            state: None,
            old_state: None,
            new_state: None,
            reason: None,
            errno: None,
            errno_name: None,
            owner: None,
            owner_source: None,
            task: None,
            sock: None,
            retransmits: None,
            queue: None,
            queue_kind: None,
            drops: None,
            location: None,
            tcp_flags: None,
            hook: None,
            lost: None,
            addrs: None,
            somaxconn: None,
            ports: None,
            v6only: None,
            rules: None,
        }
    }
}

pub fn tcp_state_name(s: i32) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

pub fn errno_name(e: i32) -> Option<&'static str> {
    Some(match e {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNRESET => "ECONNRESET",
        libc::EPIPE => "EPIPE",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EPROTO => "EPROTO",
        libc::EHOSTDOWN => "EHOSTDOWN",
        libc::ENETDOWN => "ENETDOWN",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::ENOPROTOOPT => "ENOPROTOOPT",
        libc::EINVAL => "EINVAL",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        _ => return None,
    })
}

const FLAG_NAMES: [(u8, char); 6] = [
    (0x02, 'S'),
    (0x10, 'A'),
    (0x01, 'F'),
    (0x04, 'R'),
    (0x08, 'P'),
    (0x20, 'U'),
];

/// The named TCP flags of `f` as letters, e.g. "S" or "SA" (ECE and CWR are not named).
pub fn tcp_flags_str(f: u8) -> &'static str {
    static TABLE: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        (0..64u8)
            .map(|f| {
                let s: String = FLAG_NAMES
                    .iter()
                    .filter(|(b, _)| f & b != 0)
                    .map(|(_, c)| *c)
                    .collect();
                &*Box::leak(s.into_boxed_str())
            })
            .collect()
    });
    table[(f & 0x3f) as usize]
}

/// The flags written by `tcp_flags_str`, from their letters; None for anything else.
pub fn tcp_flags_parse(s: &str) -> Option<u8> {
    let mut f = 0u8;
    for c in s.chars() {
        f |= FLAG_NAMES.iter().find(|(_, n)| *n == c)?.0;
    }
    (tcp_flags_str(f) == s).then_some(f)
}
