//! One story per connection: the evidence of both ends of one flow, joined by its
//! pair of endpoints (both ends' namespaces when both are on this host).
use crate::base::{
    reasons,
    record::{TcpFlags, TcpState},
};
use std::net::SocketAddr;

use crate::base::record::{Kind, Proc, Record};
use crate::enrich::host::Host;

/// Evidence kept per story; a flow that produces more keeps its first ones.
const MAX_EVIDENCE: usize = 64;
/// A SYN sent just before its socket died may be dropped just after (the softirq that
/// drops it deferred): one dropped this long after is another socket's.
const SYN_IN_FLIGHT_NS: u64 = 100_000_000;

/// Unordered pair of endpoints: both ends of a flow share it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey(pub SocketAddr, pub SocketAddr);

impl FlowKey {
    pub fn new(a: SocketAddr, b: SocketAddr) -> FlowKey {
        if a <= b {
            FlowKey(a, b)
        } else {
            FlowKey(b, a)
        }
    }

    /// The flow a record belongs to, if it is about one.
    pub fn of(r: &Record) -> Option<FlowKey> {
        match r.kind {
            Kind::RstSent
            | Kind::RstReceived
            | Kind::SynRetransmit
            | Kind::SynackRetransmit
            | Kind::Drop
            | Kind::Error => {}
            // No local port was bound: keyed on the unspecified address and port 0.
            Kind::ConnectError => return Some(FlowKey::new(r.src?, r.dst?)),
            Kind::State
                if r.new_state == Some(TcpState::Close)
                    && r.old_state != Some(TcpState::Listen) => {}
            _ => return None,
        }
        let (s, d) = (r.src?, r.dst?);
        if d.port() == 0 || s.port() == 0 {
            return None;
        }
        Some(FlowKey::new(s, d))
    }
}

/// What each end of a flow key (first, second) showed of its sockets' lives, to tell
/// a new connection's first evidence from the previous one's late evidence: a dropped
/// SYN or a SYN retransmit fills no once-per-connection slot (both repeat within one
/// connection), and a SYN dropped before any socket took it carries no socket.
#[derive(Clone, Copy, Debug)]
pub struct Ends {
    /// When the end's socket died; u64::MAX while not seen.
    died_ns: [u64; 2],
    /// The end's SYNs seen dropped, less its SYN retransmits: at 1 every SYN its
    /// socket sent (the first, then each retransmit) is accounted for.
    syn_balance: [i16; 2],
}

impl Default for Ends {
    fn default() -> Self {
        Ends {
            died_ns: [u64::MAX; 2],
            syn_balance: [0; 2],
        }
    }
}

impl Ends {
    fn of(key: &FlowKey, r: &Record) -> usize {
        usize::from(r.src != Some(key.0))
    }

    /// Counts in what `r` shows of its end.
    pub fn note(&mut self, key: &FlowKey, r: &Record) {
        let end = Ends::of(key, r);
        match r.kind {
            Kind::State if r.new_state == Some(TcpState::Close) => {
                self.died_ns[end] = self.died_ns[end].min(r.mono_ns);
            }
            Kind::Drop if r.tcp_flags == Some(TcpFlags::SYN) => {
                self.syn_balance[end] = self.syn_balance[end].saturating_add(1);
            }
            Kind::SynRetransmit => {
                self.syn_balance[end] = self.syn_balance[end].saturating_sub(1);
            }
            _ => {}
        }
    }

    /// A socket of the flow died.
    pub fn any_died(&self) -> bool {
        self.died_ns != [u64::MAX; 2]
    }

    /// `r` is a SYN its end sent after that end's socket died: the first evidence of a
    /// new connection on the 4-tuple. A SYN sent just before the death may be dropped
    /// just after (its softirq deferred), so a drop is the new connection's when every
    /// SYN of the dead socket is accounted for, or past the time one can be in flight.
    pub fn new_connection(&self, key: &FlowKey, r: &Record) -> bool {
        let end = Ends::of(key, r);
        let died = self.died_ns[end];
        match r.kind {
            // Retransmitted by a live socket: any after the death is another's.
            Kind::SynRetransmit => r.mono_ns > died,
            Kind::Drop if r.tcp_flags == Some(TcpFlags::SYN) => {
                r.mono_ns > died
                    && (self.syn_balance[end] >= 1
                        || r.mono_ns > died.saturating_add(SYN_IN_FLIGHT_NS))
            }
            _ => false,
        }
    }
}

/// A SYN dropped on its way out of this host: it carries its sending socket's owner.
pub fn dropped_on_its_way_out(r: &Record) -> bool {
    r.kind == Kind::Drop && r.owner.is_some() && r.tcp_flags == Some(TcpFlags::SYN)
}

/// The record shows its connection established before it failed.
fn shows_established(r: &Record) -> bool {
    matches!(
        r.old_state,
        Some(TcpState::Established | TcpState::CloseWait)
    ) || matches!(
        r.state,
        Some(
            TcpState::Established
                | TcpState::CloseWait
                | TcpState::FinWait1
                | TcpState::FinWait2
                | TcpState::LastAck
        )
    )
}

pub const ECONNREFUSED: i32 = libc::ECONNREFUSED;
pub const ETIMEDOUT: i32 = libc::ETIMEDOUT;
pub const EHOSTUNREACH: i32 = libc::EHOSTUNREACH;
pub const ENETUNREACH: i32 = libc::ENETUNREACH;

#[derive(Clone, Debug)]
pub struct Story {
    pub key: FlowKey,
    pub first_ns: u64,
    pub last_ns: u64,
    pub evidence: Vec<Record>,
    /// When to explain, if the story is complete enough to be explained.
    pub deadline: Option<u64>,
    /// Asked the host view for fresh namespace addresses once.
    pub waited_for_context: bool,
    /// The once-per-connection events seen (`slot` bits): a second one means a new
    /// connection on the same 4-tuple.
    pub slots: u16,
    /// What each end showed of its socket's life.
    pub ends: Ends,
    /// Some evidence shows the connection established: kept by `add` rather than
    /// searched for, as each record pushed asks.
    established: bool,
    /// Not explained before this (0: no such bound).
    pub not_before: u64,
    /// The server's end, when the story is a queued connection its listener's close
    /// reset: with a remote client nothing else tells which end connected.
    pub listener_end: Option<SocketAddr>,
}

/// Bits of `Story::slots`: an event a connection produces once per end. Ports repeat
/// within a second in a storm, so a 4-tuple alone does not tell connections apart;
/// a second death, errno or refusal on it does.
pub mod slot {
    pub const DEATH: u16 = 1;
    pub const ERRNO: u16 = 2;
    pub const RST_RECEIVED: u16 = 4;
    pub const CONNECT_ERROR: u16 = 8;
    pub const REFUSAL_SENT: u16 = 16;
    pub const SYN_DROPPED_NO_SOCKET: u16 = 32;
    /// Bits of the first endpoint of the flow key; the second's are shifted by this.
    pub const SIDE_SHIFT: u32 = 8;
}

impl Story {
    pub fn new(key: FlowKey, r: &Record) -> Story {
        Story {
            key,
            first_ns: r.mono_ns,
            last_ns: r.mono_ns,
            evidence: Vec::new(),
            deadline: None,
            waited_for_context: false,
            slots: 0,
            ends: Ends::default(),
            established: false,
            not_before: 0,
            listener_end: None,
        }
    }

    /// The slot bit `r` fills in a story of flow `key`, 0 for evidence that can repeat
    /// within one connection (retransmits, soft errors, drops of a flow).
    pub fn slot_of(key: &FlowKey, r: &Record, established: bool) -> u16 {
        let bit = match r.kind {
            Kind::State if r.new_state == Some(TcpState::Close) => slot::DEATH,
            Kind::Error if r.errno.is_some_and(|e| e != 0) => slot::ERRNO,
            Kind::RstReceived => slot::RST_RECEIVED,
            Kind::ConnectError => slot::CONNECT_ERROR,
            // Segments in flight after an abort each get an RST: only the refusal of a
            // SYN is once per connection.
            Kind::RstSent
                if !established
                    && (r.state.is_none() || r.state == Some(TcpState::Listen))
                    && r.reason.as_deref().is_none_or(|x| x == reasons::NO_SOCKET) =>
            {
                slot::REFUSAL_SENT
            }
            Kind::Drop
                if r.tcp_flags == Some(TcpFlags::SYN)
                    && r.reason.as_deref() == Some(reasons::NO_SOCKET) =>
            {
                slot::SYN_DROPPED_NO_SOCKET
            }
            _ => 0,
        };
        if r.src == Some(key.0) {
            bit
        } else {
            bit << slot::SIDE_SHIFT
        }
    }

    /// `r` is evidence of another connection on the same 4-tuple: this story already
    /// holds the once-per-connection event it stands for.
    pub fn repeats(&self, r: &Record) -> bool {
        self.slots & Story::slot_of(&self.key, r, self.was_established()) != 0
            || self.ends.new_connection(&self.key, r)
    }

    pub fn add(&mut self, r: Record) {
        self.slots |= Story::slot_of(&self.key, &r, self.established);
        self.ends.note(&self.key, &r);
        self.last_ns = self.last_ns.max(r.mono_ns);
        if self.evidence.len() < MAX_EVIDENCE {
            self.established |= shows_established(&r);
            self.evidence.push(r);
        }
    }

    fn of(&self, kind: Kind) -> impl Iterator<Item = &Record> {
        self.evidence.iter().filter(move |r| r.kind == kind)
    }

    /// The connecting end, from the first evidence that tells direction.
    pub fn client(&self) -> Option<SocketAddr> {
        self.client_seen().or_else(|| {
            let s = self.listener_end?;
            Some(if s == self.key.0 {
                self.key.1
            } else {
                self.key.0
            })
        })
    }

    fn client_seen(&self) -> Option<SocketAddr> {
        self.evidence.iter().find_map(|r| match r.kind {
            Kind::SynRetransmit | Kind::ConnectError => r.src,
            Kind::State if r.old_state == Some(TcpState::SynSent) => r.src,
            Kind::RstSent if r.state.is_none() || r.state == Some(TcpState::Listen) => r.dst,
            Kind::Drop if r.tcp_flags == Some(TcpFlags::SYN) => r.src,
            Kind::SynackRetransmit => r.dst,
            Kind::Error
                if matches!(
                    r.errno,
                    Some(ECONNREFUSED | ETIMEDOUT | EHOSTUNREACH | ENETUNREACH)
                ) && !self.was_established() =>
            {
                r.src
            }
            _ => None,
        })
    }

    pub fn server(&self) -> Option<SocketAddr> {
        let c = self.client()?;
        Some(if c == self.key.0 {
            self.key.1
        } else {
            self.key.0
        })
    }

    /// The connection was established before it failed.
    pub fn was_established(&self) -> bool {
        self.established
    }

    /// The errno the application got, ignoring soft (0) reports.
    pub fn errno(&self) -> Option<i32> {
        self.errno_record().and_then(|r| r.errno)
    }

    pub fn errno_record(&self) -> Option<&Record> {
        self.evidence.iter().find(|r| {
            matches!(r.kind, Kind::Error | Kind::ConnectError) && r.errno.is_some_and(|e| e != 0)
        })
    }

    /// What the application was most likely told, when the kernel has no errno event
    /// (5.10): read from how the socket died. A socket the application closed itself
    /// (in its own context, with no RST) was told nothing.
    pub fn inferred_errno(&self) -> Option<i32> {
        let death = self
            .evidence
            .iter()
            .find(|r| r.kind == Kind::State && r.new_state == Some(TcpState::Close))?;
        let by_kernel = match (&death.task, &death.owner) {
            (Some(t), Some(o)) => t.pid != o.pid,
            _ => true,
        };
        match (death.old_state, self.rst_received().is_some()) {
            (Some(TcpState::SynSent), true) => Some(ECONNREFUSED),
            // Given up by the kernel's timer: retransmitted, or (SYNs dropped on their
            // way out, which no retransmit event reports) not even sent.
            (Some(TcpState::SynSent), false) if by_kernel => Some(ETIMEDOUT),
            (Some(TcpState::Established | TcpState::CloseWait), true) => Some(libc::ECONNRESET),
            // A kernel-initiated death of an established socket, with no RST either
            // way, is a timeout (retransmissions, zero-window probes, user timeout).
            (Some(TcpState::Established | TcpState::CloseWait), false)
                if by_kernel && self.rsts_sent().next().is_none() =>
            {
                Some(ETIMEDOUT)
            }
            _ => None,
        }
    }

    /// connect() failed before the SYN (routing or policy).
    pub fn connect_error(&self) -> Option<&Record> {
        self.of(Kind::ConnectError).next()
    }

    /// ICMP errors that did not end the connection (error reports with errno 0).
    pub fn soft_errors(&self) -> usize {
        self.of(Kind::Error).filter(|r| r.errno == Some(0)).count()
    }

    pub fn syn_retransmits(&self) -> usize {
        self.of(Kind::SynRetransmit).count()
    }

    pub fn drops(&self, reason: &str) -> impl Iterator<Item = &Record> {
        let reason = reason.to_string();
        self.of(Kind::Drop)
            .filter(move |r| r.reason.as_deref() == Some(reason.as_str()))
    }

    pub fn rsts_sent(&self) -> impl Iterator<Item = &Record> {
        self.of(Kind::RstSent)
    }

    pub fn rst_received(&self) -> Option<&Record> {
        self.of(Kind::RstReceived).next()
    }

    /// Local evidence of the connecting side (its socket is on this host).
    fn client_record(&self) -> Option<&Record> {
        let c = self.client()?;
        self.evidence.iter().find(|r| {
            r.src == Some(c)
                && (matches!(
                    r.kind,
                    Kind::Error
                        | Kind::ConnectError
                        | Kind::RstReceived
                        | Kind::SynRetransmit
                        | Kind::State
                ) || self::dropped_on_its_way_out(r))
        })
    }

    pub fn client_is_local(&self) -> bool {
        self.client_record().is_some()
    }

    pub fn client_netns(&self) -> Option<u32> {
        let c = self.client()?;
        self.evidence
            .iter()
            .filter(|r| r.src == Some(c) && !matches!(r.kind, Kind::Drop))
            .find_map(|r| r.netns)
    }

    /// The local end that failed: the socket the errno was handed to, else the one
    /// that received an RST, else the connecting side's.
    pub fn failed_end(&self) -> Option<SocketAddr> {
        self.errno_record()
            .and_then(|r| r.src)
            .or_else(|| self.rst_received().and_then(|r| r.src))
            .or_else(|| self.client_record().and_then(|r| r.src))
    }

    /// The process that failed: the owner of the failed end's socket. Never another
    /// socket's owner (in a reset that is the side that reset it: the culprit).
    pub fn victim(&self) -> Option<&Proc> {
        match self.failed_end() {
            Some(end) => self
                .evidence
                .iter()
                .filter(|r| {
                    r.src == Some(end)
                        && matches!(
                            r.kind,
                            Kind::Error
                                | Kind::ConnectError
                                | Kind::RstReceived
                                | Kind::SynRetransmit
                                | Kind::State
                        )
                })
                .find_map(|r| r.owner.as_ref()),
            // A queued connection's dead socket is the server's: the client is remote.
            None => self.client_process().or_else(|| {
                self.dead_socket_owner()
                    .filter(|_| self.listener_end.is_none())
            }),
        }
    }

    /// The owner of a socket of this story that died (->CLOSE).
    pub fn dead_socket_owner(&self) -> Option<&Proc> {
        self.evidence
            .iter()
            .filter(|r| r.kind == Kind::State && r.new_state == Some(TcpState::Close))
            .find_map(|r| r.owner.as_ref())
    }

    /// The process on the connecting side.
    pub fn client_process(&self) -> Option<&Proc> {
        let c = self.client()?;
        self.evidence
            .iter()
            .filter(|r| r.src == Some(c) && !matches!(r.kind, Kind::Drop | Kind::RstSent))
            .find_map(|r| r.owner.as_ref())
    }

    /// The server's namespace as shown by its own evidence.
    pub fn server_netns_seen(&self) -> Option<u32> {
        let s = self.server()?;
        self.evidence.iter().find_map(|r| match r.kind {
            Kind::RstSent | Kind::SynackRetransmit if r.src == Some(s) => r.netns,
            Kind::State if r.src == Some(s) => r.netns,
            Kind::Drop if r.dst == Some(s) && r.tcp_flags == Some(TcpFlags::SYN) => r.netns,
            _ => None,
        })
    }

    /// The server's namespace, from its own evidence or, failing that, its address.
    pub fn server_netns(&self, host: &Host) -> Option<u32> {
        self.server_netns_seen()
            .or_else(|| host.netns_of(self.server()?.ip(), self.client_netns()))
    }

    /// The errno, or failing that the time the evidence ends.
    pub fn failure_ns(&self) -> u64 {
        self.errno_record().map_or(self.last_ns, |r| r.mono_ns)
    }
}

/// The owner the host model learnt since for the socket of `r` (a `socket` context
/// record that came after it).
pub fn later_owner<'a>(host: &'a Host, r: &Record) -> Option<&'a Proc> {
    host.existing_owner(r.netns?, r.src?, r.dst?)
}
