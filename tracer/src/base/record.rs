//! Decoded evidence: the domain types every sink prints. The JSON form is the
//! documented, stable schema (docs/events.md); fields that do not apply are omitted.
use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use crate::base::workload::Workload;
use serde::{Serialize, Serializer};
use tracer_common::Hook;

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
    /// Context: the workload (systemd unit, container, pod) of a cgroup v2 id, written
    /// when a record first carries the id, so that a capture replays with the names.
    Workload,
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
            Kind::Workload => "WORKLOAD",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Proc {
    pub pid: u32,
    pub comm: Text,
    /// The process's cgroup v2 id, which names its workload (a `Workload` context
    /// record maps it); taken by the kernel with the ownership entry, or from
    /// /proc/PID/cgroup for owners found there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<u64>,
    /// What that cgroup names (`unit`, `container`, `pod`), from the workload context
    /// records; filled by the enrich stage, never stored with the process. Shared:
    /// every record of a storm carries its owner's.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Arc<Workload>>,
}

impl Proc {
    /// `comm[pid]`, after its workload when it has one: `web.service (nginx[880])`.
    pub fn named(&self) -> String {
        match self.workload.as_ref().filter(|w| !w.is_empty()) {
            Some(w) => format!("{w} ({}[{}])", self.comm, self.pid),
            None => format!("{}[{}]", self.comm, self.pid),
        }
    }
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

/// Connection tracking statistics of a namespace (`conntrack -S`, from
/// `/proc/net/stat/nf_conntrack`), counters summed over the CPUs since boot (or since
/// the namespace was made).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ConntrackStats {
    /// Connections tracked in the namespace's table now.
    pub entries: u64,
    /// net.netfilter.nf_conntrack_max (the limit every namespace's table is held to),
    /// when it could be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u64>,
    /// Packets conntrack could not match to a valid state (marked INVALID: out of
    /// window, for a flow it does not know, malformed).
    pub invalid: u64,
    /// Packets conntrack itself dropped (a full table, no memory, an invalid packet
    /// its protocol tracker refused).
    pub drop: u64,
    /// Entries evicted early to make room in a full table.
    pub early_drop: u64,
    /// New entries that could not be inserted (a race, a NAT clash).
    pub insert_failed: u64,
}

impl ConntrackStats {
    /// The counters as a sentence shows them: `invalid 5, drop 0, early_drop 0,
    /// insert_failed 0; 3 entries (limit 262144)`.
    pub fn counters(&self) -> String {
        let limit = self.max.map_or(String::new(), |m| format!(" (limit {m})"));
        format!(
            "invalid {}, drop {}, early_drop {}, insert_failed {}; {} entries{limit}",
            self.invalid, self.drop, self.early_drop, self.insert_failed, self.entries
        )
    }
}

impl FirewallRule {
    /// Whether the rule matches packets conntrack marked INVALID (`ct state invalid`,
    /// `-m conntrack --ctstate INVALID`, `-m state --state INVALID`, also within a
    /// list of states), so that what it drops is what conntrack refused, whatever
    /// the port.
    pub fn matches_invalid(&self) -> bool {
        if &*self.source == "nft" {
            return nft_states_include_invalid(&self.rule);
        }
        let words: Vec<&str> = self.rule.split_whitespace().collect();
        words.iter().enumerate().any(|(i, w)| {
            matches!(*w, "--ctstate" | "--state")
                && (i == 0 || words[i - 1] != "!")
                && words.get(i + 1).is_some_and(|states| {
                    states.split(',').any(|s| s.eq_ignore_ascii_case("INVALID"))
                })
        })
    }

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

/// Whether the states an nft `ct state` match lists (one word or a `{ .. }` set)
/// include `invalid`; a negated match (`ct state != ..`) does not count.
fn nft_states_include_invalid(rule: &str) -> bool {
    let Some((_, rest)) = rule.split_once("ct state ") else {
        return false;
    };
    if rest.starts_with("!=") {
        return false;
    }
    let rest = rest.trim_start_matches("== ");
    let states = match rest.strip_prefix('{') {
        Some(set) => set.split('}').next().unwrap_or(""),
        None => rest.split_whitespace().next().unwrap_or(""),
    };
    states.split([',', ' ']).any(|s| s.trim() == "invalid")
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
    pub state: Option<TcpState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_state: Option<TcpState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_state: Option<TcpState>,
    /// Kernel reason name: sk_rst_reason for RSTs, skb_drop_reason for drops (the
    /// names rstrace acts on are in `base::reasons`).
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
    /// How the owner was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_source: Option<OwnerSource>,
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
    /// Overflow records: which queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_kind: Option<QueueKind>,
    /// Overflow records: connections dropped since the previous record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drops: Option<u64>,
    /// Drop records: kernel function that dropped the packet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Text>,
    /// Drop records: TCP flags of the dropped segment, e.g. "S" or "A".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<TcpFlags>,
    /// Loss records: the hook whose events were lost, by its program's name.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_hook"
    )]
    pub hook: Option<Hook>,
    /// Loss records: events lost since the previous loss record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// Addresses records: the namespace's addresses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addrs: Option<Vec<IpAddr>>,
    /// Addresses records: the namespace's `ip netns` name, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_name: Option<Text>,
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
    /// Firewall rule records: the namespace's connection tracking statistics, read
    /// with its rules (absent when conntrack is not loaded, or from older captures).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackStats>,
    /// Workload records: the cgroup v2 id and what it names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<u64>,
    /// Boxed: only workload records have one, and stories hold many records.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Box<Workload>>,
}

// Stories hold every record of a connection while it waits (a storm's worth of them
// under the waits of `explain::schedule`): a rarely set field that would make every
// record bigger belongs in a Box.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Record>() <= 512);

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
            netns_name: None,
            somaxconn: None,
            ports: None,
            v6only: None,
            rules: None,
            conntrack: None,
            cgroup: None,
            workload: None,
        }
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

/// A socket's TCP state (`enum` in include/net/tcp_states.h). The discriminant is
/// the kernel's value and the capture format's code; a value this build does not
/// know (a newer kernel's) is `Unknown`, code 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[repr(u8)]
pub enum TcpState {
    Unknown = 0,
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    pub const ALL: [TcpState; 13] = [
        TcpState::Unknown,
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    /// The state of the kernel's value `v`.
    pub fn from_kernel(v: i32) -> TcpState {
        usize::try_from(v)
            .ok()
            .and_then(|i| TcpState::ALL.get(i))
            .copied()
            .unwrap_or(TcpState::Unknown)
    }

    /// The kernel's name without its `TCP_` prefix, as the JSON has it.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Unknown => "UNKNOWN",
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a record's owner was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerSource {
    /// The kernel's ownership map, filled at connect, listen and accept.
    Kernel,
    /// Joined on the 4-tuple of another event of the same socket.
    Socket,
    /// The listener's owner (a connection not accepted yet).
    Listener,
    /// Read from /proc (sockets older than rstrace, or looked up by their 4-tuple).
    Proc,
}

/// Which queue of a listener overflowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    /// Established connections waiting for accept().
    Accept,
    /// Half-open connections (SYN received, SYN-ACK sent).
    Syn,
}

impl QueueKind {
    pub fn name(self) -> &'static str {
        match self {
            QueueKind::Accept => "accept",
            QueueKind::Syn => "syn",
        }
    }
}

fn serialize_hook<S: Serializer>(h: &Option<Hook>, s: S) -> Result<S::Ok, S::Error> {
    match h {
        Some(h) => s.serialize_str(h.name()),
        None => s.serialize_none(),
    }
}

const FLAG_NAMES: [(u8, char); 6] = [
    (0x02, 'S'),
    (0x10, 'A'),
    (0x01, 'F'),
    (0x04, 'R'),
    (0x08, 'P'),
    (0x20, 'U'),
];

/// The TCP flags of a segment that rstrace names (FIN, SYN, RST, PSH, ACK, URG; ECE
/// and CWR are dropped). Written as letters, e.g. "S" or "SA", in the JSON, the text
/// and the capture format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(u8);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const PSH: TcpFlags = TcpFlags(0x08);
    pub const ACK: TcpFlags = TcpFlags(0x10);
    pub const URG: TcpFlags = TcpFlags(0x20);

    /// The flags of the TCP header's flag byte `b`.
    pub const fn from_bits(b: u8) -> TcpFlags {
        TcpFlags(b & 0x3f)
    }

    pub const fn bits(self) -> u8 {
        self.0
    }

    /// True when every flag of `other` is set.
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// The flags as letters, e.g. "S" or "SA".
    pub fn letters(self) -> &'static str {
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
        table[self.0 as usize]
    }

    /// The flags written by `letters`, from their letters; None for anything else.
    pub fn parse(s: &str) -> Option<TcpFlags> {
        let mut f = 0u8;
        for c in s.chars() {
            f |= FLAG_NAMES.iter().find(|(_, n)| *n == c)?.0;
        }
        let f = TcpFlags(f);
        (f.letters() == s).then_some(f)
    }
}

impl std::ops::BitOr for TcpFlags {
    type Output = TcpFlags;

    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.letters())
    }
}

impl Serialize for TcpFlags {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.letters())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    #[test]
    fn enum_names_are_their_json() {
        for s in TcpState::ALL {
            assert_eq!(json(&s), format!("\"{}\"", s.name()));
            assert_eq!(TcpState::from_kernel(s as i32), s);
        }
        assert_eq!(TcpState::from_kernel(13), TcpState::Unknown);
        assert_eq!(TcpState::from_kernel(-1), TcpState::Unknown);
        for q in [QueueKind::Accept, QueueKind::Syn] {
            assert_eq!(json(&q), format!("\"{}\"", q.name()));
        }
    }

    #[test]
    fn tcp_flags_read_back_from_their_letters() {
        for b in 0..=255u8 {
            let f = TcpFlags::from_bits(b);
            assert_eq!(TcpFlags::parse(f.letters()), Some(f));
        }
        assert_eq!(TcpFlags::from_bits(0x12).letters(), "SA");
        assert_eq!(TcpFlags::parse("AS"), None);
        assert_eq!(TcpFlags::parse("X"), None);
    }

    fn rule(source: &str, text: &str) -> FirewallRule {
        FirewallRule {
            source: source.into(),
            family: "inet".into(),
            table: "t".into(),
            chain: "input".into(),
            hook: Some("input".into()),
            priority: Some(0),
            handle: Some(2),
            rule: text.into(),
            verdict: "drop".into(),
        }
    }

    #[test]
    fn rules_matching_packets_conntrack_marked_invalid() {
        for (source, text, want) in [
            ("nft", "ct state invalid counter drop", true),
            ("nft", "ct state { invalid, untracked } drop", true),
            ("nft", "tcp dport 80 ct state invalid reject with tcp reset", true),
            ("nft", "ct state != invalid drop", false),
            ("nft", "ct state { established, related } accept", false),
            ("nft", "ct status dnat drop", false),
            ("nft", "tcp dport 8080 drop", false),
            ("iptables", "-A INPUT -m conntrack --ctstate INVALID -j DROP", true),
            ("iptables", "-A INPUT -m state --state INVALID -j DROP", true),
            (
                "iptables",
                "-A INPUT -p tcp -m conntrack --ctstate INVALID,UNTRACKED -j REJECT --reject-with tcp-reset",
                true,
            ),
            ("iptables", "-A INPUT -m conntrack ! --ctstate INVALID -j DROP", false),
            ("ip6tables", "-A INPUT -m conntrack --ctstate NEW -j DROP", false),
            ("iptables", "-A INPUT -p tcp --dport 80 -j DROP", false),
        ] {
            assert_eq!(rule(source, text).matches_invalid(), want, "{source}: {text}");
        }
    }
}
