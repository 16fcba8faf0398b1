//! Wire types shared by the eBPF programs and the agent: the one source of truth for
//! what crosses the ring buffer and the configuration maps.
//!
//! The programs copy each tracepoint's raw record into the event after a fixed
//! header; the agent decodes the record with the field layout it read from the running
//! kernel's format files. That keeps the kernel side independent of layouts that move
//! between kernel versions.
#![no_std]

/// Names of the maps, shared so that neither side spells them twice.
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const LOSSES: &str = "LOSSES";
    pub const CONFIG: &str = "CONFIG";
    pub const LISTENERS: &str = "LISTENERS";
}

/// Bytes of a tracepoint record copied into an event (the largest record read today,
/// tcp_send_reset on 6.10+, is 88 bytes).
pub const RAW_MAX: usize = 96;

/// Default ring buffer size in bytes (a power of two, a multiple of the page size).
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// Kernel hooks, as carried in [`EventHeader::hook`] and as index of the loss counters.
/// What each attaches to and reads is the agent's hook table (tracer/src/kernel/hooks.rs).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    SendReset = 0,
    ReceiveReset = 1,
    RetransmitSkb = 2,
    RetransmitSynack = 3,
    KfreeSkb = 4,
    SetState = 5,
    ErrorReport = 6,
    DestroySock = 7,
    ConnectEnter = 8,
    ConnectExit = 9,
    AcceptExit = 10,
    Accept4Exit = 11,
}

impl Hook {
    pub const COUNT: usize = 12;
    pub const ALL: [Hook; Hook::COUNT] = [
        Hook::SendReset,
        Hook::ReceiveReset,
        Hook::RetransmitSkb,
        Hook::RetransmitSynack,
        Hook::KfreeSkb,
        Hook::SetState,
        Hook::ErrorReport,
        Hook::DestroySock,
        Hook::ConnectEnter,
        Hook::ConnectExit,
        Hook::AcceptExit,
        Hook::Accept4Exit,
    ];

    pub fn from_u8(v: u8) -> Option<Hook> {
        Hook::ALL.get(v as usize).copied()
    }

    /// The hook's name in records and captures: its tracepoint's name. The agent's hook
    /// table (tracer/src/kernel/hooks.rs) takes it from here, so that records, which
    /// come before the kernel stage, can name hooks too.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::SendReset => "tcp_send_reset",
            Hook::ReceiveReset => "tcp_receive_reset",
            Hook::RetransmitSkb => "tcp_retransmit_skb",
            Hook::RetransmitSynack => "tcp_retransmit_synack",
            Hook::KfreeSkb => "kfree_skb",
            Hook::SetState => "inet_sock_set_state",
            Hook::ErrorReport => "inet_sk_error_report",
            Hook::DestroySock => "tcp_destroy_sock",
            Hook::ConnectEnter => "sys_enter_connect",
            Hook::ConnectExit => "sys_exit_connect",
            Hook::AcceptExit => "sys_exit_accept",
            Hook::Accept4Exit => "sys_exit_accept4",
        }
    }
}

/// TCP states (include/net/tcp_states.h); the same on every kernel.
pub mod tcp_state {
    pub const ESTABLISHED: i32 = 1;
    pub const SYN_SENT: i32 = 2;
    pub const SYN_RECV: i32 = 3;
    pub const FIN_WAIT1: i32 = 4;
    pub const FIN_WAIT2: i32 = 5;
    pub const TIME_WAIT: i32 = 6;
    pub const CLOSE: i32 = 7;
    pub const CLOSE_WAIT: i32 = 8;
    pub const LAST_ACK: i32 = 9;
    pub const LISTEN: i32 = 10;
    pub const CLOSING: i32 = 11;
    pub const NEW_SYN_RECV: i32 = 12;
}

/// `EventHeader::flags` bits.
pub mod flags {
    /// The owner fields come from the socket ownership map.
    pub const OWNER_KNOWN: u8 = 1;
    /// The event carries a [`super::DropInfo`] instead of a raw record.
    pub const DROP_INFO: u8 = 2;
    /// `ack_backlog`/`max_ack_backlog` hold the listener's accept queue.
    pub const QUEUE_KNOWN: u8 = 4;
    /// The event carries a [`super::ConnectInfo`] instead of a raw record.
    pub const CONNECT_INFO: u8 = 8;
    /// The event carries a [`super::SockInfo`] instead of a raw record.
    pub const SOCK_INFO: u8 = 16;
    /// An RST received by a connecting socket (SYN_SENT), which the kernel closes at
    /// once: the record stands for its SYN_SENT -> CLOSE change too, not written
    /// (see [`super::fold`]).
    pub const FOLDED_DEATH: u8 = 32;
    /// ... and for the ECONNREFUSED the kernel then hands the application (the
    /// socket was not yet closed by it), not written either.
    pub const FOLDED_ERRNO: u8 = 64;
}

/// `Config::fold` bits: which of the events that always follow an RST received in
/// SYN_SENT (`tcp_reset`: `tcp_done`, then the error report unless the socket is
/// dead) the RST's record stands for, so that a refused connect writes one event on
/// its side instead of three. Set by the agent only where the programs involved can
/// match the socket (raw tracepoints with the socket's fields known).
pub mod fold {
    /// The SYN_SENT -> CLOSE state change.
    pub const DEATH: u32 = 1;
    /// The ECONNREFUSED error report.
    pub const ERRNO: u32 = 2;
}

/// What a socket hook attached as a raw tracepoint (no record to copy) read from the
/// socket itself: the fields its tracepoint record would have held.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockInfo {
    /// inet_sock_set_state's transition; 0 for other hooks.
    pub oldstate: i32,
    pub newstate: i32,
    /// The socket's state (tcp_retransmit_skb); 0 when not part of the record.
    pub state: i32,
    /// sk_err (inet_sk_error_report); 0 otherwise.
    pub error: i32,
    /// IPv4 (2) or IPv6 (10).
    pub family: u16,
    /// Host byte order ports.
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    /// Network byte order addresses; IPv4 in the first four bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// A connect() that failed before any packet was sent (routing, policy): there is no
/// TCP tracepoint for it, only the syscall's return.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectInfo {
    /// The syscall's return: a negative errno.
    pub ret: i64,
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    /// The socket's TCP state when connect() failed: SYN_SENT when it got that far
    /// (the local port allocation failed), 0 when it failed before.
    pub state: u32,
    /// Network byte order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
}

/// Fixed part of every ring-buffer event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns).
    pub ts_ns: u64,
    /// Kernel address of the socket, 0 when the event has none.
    pub skaddr: u64,
    /// pid_tgid of the task that ran the hook; meaningful only in process context.
    pub cur_pid_tgid: u64,
    /// When the ownership entry was made (connect/listen), CLOCK_MONOTONIC ns.
    pub owner_since_ns: u64,
    /// The owner's cgroup v2 id, taken with the ownership entry; 0 when unknown.
    pub owner_cgroup: u64,
    /// Process (tgid) that owns the socket, 0 when unknown.
    pub owner_tgid: u32,
    /// Network namespace inode of the socket or packet, 0 when unknown.
    pub netns: u32,
    /// Listener accept queue depth, when `flags::QUEUE_KNOWN`.
    pub ack_backlog: u32,
    /// Listener accept queue limit, when `flags::QUEUE_KNOWN`.
    pub max_ack_backlog: u32,
    /// Retransmits the kernel counted on this socket before this event.
    pub retrans: u32,
    pub hook: u8,
    pub flags: u8,
    /// Bytes of `Event::raw` that hold the record.
    pub raw_len: u16,
    pub cur_comm: [u8; 16],
    pub owner_comm: [u8; 16],
}

/// What a kept skb drop carries instead of a tracepoint record (kfree_skb is read
/// through its raw tracepoint arguments, so there is no record to copy).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DropInfo {
    /// Kernel code address that dropped the packet.
    pub location: u64,
    /// Socket that received it (6.11+), 0 otherwise.
    pub rx_sk: u64,
    /// Raw `enum skb_drop_reason` value of the running kernel.
    pub reason: u32,
    /// IPv4 (2) or IPv6 (10); 0 when the headers could not be read.
    pub family: u16,
    /// TCP flags byte of the dropped segment.
    pub tcp_flags: u8,
    /// 1 when addresses and ports below are valid.
    pub parsed: u8,
    /// Network byte order addresses; IPv4 in the first four bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Host byte order ports.
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
}

/// One ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub hdr: EventHeader,
    /// The tracepoint record (from its offset 0), or a [`DropInfo`].
    pub raw: [u8; RAW_MAX],
}

/// Per-socket ownership, filled in process context.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockOwner {
    pub since_ns: u64,
    pub tgid: u32,
    pub netns: u32,
    pub retrans: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
    /// The owner's cgroup v2 id (`bpf_get_current_cgroup_id`), 0 when unknown.
    pub cgroup: u64,
}

/// Value of the listener map: the owner of a listening port and its socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ListenOwner {
    pub owner: SockOwner,
    /// The listening socket; 0 for an entry the agent made at start-up for a
    /// listener that was already there (its socket address is not visible from
    /// userspace).
    pub sk: u64,
}

/// Key of the listener map: a listening port in a namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenKey {
    pub netns: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
}

/// Field offset not available on this kernel.
pub const NO_FIELD: u16 = u16::MAX;

/// Where the programs find what they filter on, per tracepoint record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RecordLayout {
    /// Bytes to copy from the record (from offset 0), at most RAW_MAX.
    pub len: u16,
    pub skaddr: u16,
    pub skbaddr: u16,
    pub state: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub sport: u16,
    pub protocol: u16,
    /// sys_enter_connect's sockaddr pointer, sys_exit_connect's return value.
    pub uservaddr: u16,
    pub ret: u16,
    /// 1 when the record has the [`fixed`] layout, read without a helper call.
    pub fixed: u16,
    /// inet_sk_error_report's errno; tcp_retransmit_skb's result (6.18+).
    pub error: u16,
    pub dport: u16,
    pub _pad: u16,
}

/// Offsets of the fields the hottest programs filter on, identical on every kernel
/// from 4.16 to 6.18. When the running kernel's format matches (`RecordLayout::fixed`),
/// the programs read them straight from the record, at constant offsets the verifier
/// accepts, instead of copying the record with a helper first.
pub mod fixed {
    pub const SET_STATE_SKADDR: usize = 8;
    pub const SET_STATE_OLDSTATE: usize = 16;
    pub const SET_STATE_NEWSTATE: usize = 20;
    pub const SET_STATE_SPORT: usize = 24;
    pub const SET_STATE_PROTOCOL: usize = 30;
    pub const DESTROY_SKADDR: usize = 8;
    pub const CONNECT_USERVADDR: usize = 24;
    pub const CONNECT_RET: usize = 16;
    /// sys_exit_accept/accept4's return value (every sys_exit record has it there).
    pub const ACCEPT_RET: usize = 16;
}

impl RecordLayout {
    pub const MISSING: RecordLayout = RecordLayout {
        len: 0,
        skaddr: NO_FIELD,
        skbaddr: NO_FIELD,
        state: NO_FIELD,
        oldstate: NO_FIELD,
        newstate: NO_FIELD,
        sport: NO_FIELD,
        protocol: NO_FIELD,
        uservaddr: NO_FIELD,
        ret: NO_FIELD,
        fixed: 0,
        error: NO_FIELD,
        dport: NO_FIELD,
        _pad: 0,
    };
}

/// Kernel struct member offsets (from BTF), 0xffff_ffff when unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelOffsets {
    /// sock -> __sk_common.skc_net.net (struct net *).
    pub sk_net: u32,
    /// net -> ns.inum.
    pub net_inum: u32,
    pub sk_ack_backlog: u32,
    pub sk_max_ack_backlog: u32,
    /// sk_buff -> dev, head, network_header (u16), protocol (be16).
    pub skb_dev: u32,
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_protocol: u32,
    /// net_device -> nd_net.net.
    pub dev_net: u32,
    /// task_struct -> nsproxy, nsproxy -> net_ns.
    pub task_nsproxy: u32,
    pub nsproxy_net: u32,
    /// What the raw-tracepoint state hook reads instead of a record, from where the
    /// tracepoint takes it: sock -> sk_protocol (u16 since 5.6), __sk_common's family,
    /// peer port and addresses; inet_sock (which begins with the sock) -> inet_sport
    /// and inet_saddr (skc_num is cleared when a socket closes, before the hook runs).
    pub sk_protocol: u32,
    pub skc_family: u32,
    pub inet_sport: u32,
    pub skc_dport: u32,
    pub skc_daddr: u32,
    pub inet_saddr: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// sock -> __sk_common.skc_state (u8), sk_err (int).
    pub skc_state: u32,
    pub sk_err: u32,
    /// From a descriptor to its socket (the accept hooks): task_struct -> files,
    /// files_struct -> fdt, fdtable -> fd (struct file **) and max_fds, file ->
    /// private_data (struct socket *), socket -> sk.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub fdtable_max_fds: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    /// sk_buff -> sk: the sending socket of a packet dropped on its way out.
    pub skb_sk: u32,
    /// sock -> sk_flags (unsigned long; SOCK_DEAD is bit 0).
    pub sk_flags: u32,
    /// Keeps the struct a multiple of 8 bytes (Config has no implicit padding).
    pub _pad: u32,
}

pub const NO_OFFSET: u32 = u32::MAX;

impl KernelOffsets {
    pub const UNKNOWN: KernelOffsets = KernelOffsets {
        sk_net: NO_OFFSET,
        net_inum: NO_OFFSET,
        sk_ack_backlog: NO_OFFSET,
        sk_max_ack_backlog: NO_OFFSET,
        skb_dev: NO_OFFSET,
        skb_head: NO_OFFSET,
        skb_network_header: NO_OFFSET,
        skb_protocol: NO_OFFSET,
        dev_net: NO_OFFSET,
        task_nsproxy: NO_OFFSET,
        nsproxy_net: NO_OFFSET,
        sk_protocol: NO_OFFSET,
        skc_family: NO_OFFSET,
        inet_sport: NO_OFFSET,
        skc_dport: NO_OFFSET,
        skc_daddr: NO_OFFSET,
        inet_saddr: NO_OFFSET,
        skc_v6_daddr: NO_OFFSET,
        skc_v6_rcv_saddr: NO_OFFSET,
        skc_state: NO_OFFSET,
        sk_err: NO_OFFSET,
        task_files: NO_OFFSET,
        files_fdt: NO_OFFSET,
        fdtable_fd: NO_OFFSET,
        fdtable_max_fds: NO_OFFSET,
        file_private_data: NO_OFFSET,
        socket_sk: NO_OFFSET,
        skb_sk: NO_OFFSET,
        sk_flags: NO_OFFSET,
        _pad: 0,
    };

    /// Whether the socket hooks can run as raw tracepoints (everything they read from
    /// the socket is known).
    pub fn sock_fields_known(&self) -> bool {
        [
            self.sk_net,
            self.net_inum,
            self.sk_protocol,
            self.skc_family,
            self.inet_sport,
            self.skc_dport,
            self.skc_daddr,
            self.inet_saddr,
            self.skc_v6_daddr,
            self.skc_v6_rcv_saddr,
            self.skc_state,
            self.sk_err,
        ]
        .iter()
        .all(|&o| o != NO_OFFSET)
    }
}

/// Drop reasons below this value can be selected; larger ones (subsystem reasons) are
/// never TCP/IP-relevant and are filtered out.
pub const DROP_REASON_BITS: usize = 512;

/// Everything the programs are told at load time; index 0 of the CONFIG array.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub layouts: [RecordLayout; Hook::COUNT],
    pub offsets: KernelOffsets,
    /// Bitmap of `enum skb_drop_reason` values worth reporting.
    pub keep_drop: [u64; DROP_REASON_BITS / 64],
    /// Value of SKB_DROP_REASON_TCP_LISTEN_OVERFLOW, u32::MAX when absent.
    pub listen_overflow_reason: u32,
    /// Wake the reader only once this many bytes wait in the ring (it also polls):
    /// a wakeup per event costs more than the event. 0 while the reader sleeps.
    pub wake_bytes: u32,
    /// [`fold`] bits.
    pub fold: u32,
    /// 1 when the configuration was written (programs do nothing before).
    pub ready: u32,
}

impl Config {
    pub const EMPTY: Config = Config {
        layouts: [RecordLayout::MISSING; Hook::COUNT],
        offsets: KernelOffsets::UNKNOWN,
        keep_drop: [0; DROP_REASON_BITS / 64],
        listen_overflow_reason: u32::MAX,
        wake_bytes: 0,
        fold: 0,
        ready: 0,
    };

    pub fn keeps_drop(&self, reason: u32) -> bool {
        let r = reason as usize;
        r < DROP_REASON_BITS && self.keep_drop[r / 64] & (1u64 << (r % 64)) != 0
    }
}

const _: () = assert!(core::mem::size_of::<EventHeader>() == 96);
const _: () = assert!(core::mem::size_of::<Event>() == 96 + RAW_MAX);
const _: () = assert!(core::mem::size_of::<DropInfo>() <= RAW_MAX);
const _: () = assert!(core::mem::size_of::<ConnectInfo>() <= RAW_MAX);
const _: () = assert!(core::mem::size_of::<SockInfo>() <= RAW_MAX);
// Config is copied to the kernel as bytes: no implicit padding.
const _: () = assert!(
    core::mem::offset_of!(Config, keep_drop)
        == core::mem::offset_of!(Config, offsets) + core::mem::size_of::<KernelOffsets>()
);
// Nor anywhere else: RecordLayout and KernelOffsets are all u16 and all u32.
const _: () = assert!(
    core::mem::offset_of!(Config, offsets) == core::mem::size_of::<[RecordLayout; Hook::COUNT]>()
);
const _: () = assert!(
    core::mem::size_of::<Config>()
        == core::mem::offset_of!(Config, keep_drop) + DROP_REASON_BITS / 8 + 4 * 4
);
const _: () = assert!(core::mem::size_of::<Event>().is_multiple_of(8));
const _: () = assert!(core::mem::size_of::<SockOwner>() == 48);
const _: () = assert!(core::mem::size_of::<ListenKey>() == 8);
const _: () = assert!(core::mem::size_of::<ListenOwner>() == 56);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // Pod needs every bit pattern valid and no uninitialized (padding) bytes. All four
    // are `#[repr(C)]` structs of integers and arrays or structs of integers, and the
    // asserts above pin their sizes to the sum of their fields.
    // SAFETY: integers only; no implicit padding (sizes asserted).
    unsafe impl aya::Pod for Config {}
    // SAFETY: integers only; no implicit padding (48 bytes asserted).
    unsafe impl aya::Pod for SockOwner {}
    // SAFETY: integers only; no implicit padding (8 bytes asserted).
    unsafe impl aya::Pod for ListenKey {}
    // SAFETY: integers only; no implicit padding (56 bytes asserted).
    unsafe impl aya::Pod for ListenOwner {}
}
