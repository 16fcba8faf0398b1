//! Reason names rstrace acts on: the kernel's drop reasons (`enum skb_drop_reason`,
//! without `SKB_DROP_REASON_`) and RST reasons (`enum sk_rst_reason`, without
//! `SK_RST_REASON_`), as the running kernel names them (read from BTF or tracefs at
//! start, so they arrive as text), and the reasons of rstrace's own loss records.

/// Drop: no socket for the segment (a SYN to a closed port, 5.17+). RST: the RST
/// answers a segment for which no socket was found (6.10+).
pub const NO_SOCKET: &str = "NO_SOCKET";
pub const NETFILTER_DROP: &str = "NETFILTER_DROP";
pub const TCP_LISTEN_OVERFLOW: &str = "TCP_LISTEN_OVERFLOW";
pub const TCP_RESET: &str = "TCP_RESET";
pub const IP_INNOROUTES: &str = "IP_INNOROUTES";
pub const IP_OUTNOROUTES: &str = "IP_OUTNOROUTES";
pub const NEIGH_FAILED: &str = "NEIGH_FAILED";

/// RST reasons of an application's or the kernel's abort (also drop reasons, for
/// TCP_ABORT_ON_DATA).
pub const TCP_ABORT_ON_CLOSE: &str = "TCP_ABORT_ON_CLOSE";
pub const TCP_ABORT_ON_DATA: &str = "TCP_ABORT_ON_DATA";
pub const TCP_STATE: &str = "TCP_STATE";
pub const TCP_TIMEWAIT_SOCKET: &str = "TCP_TIMEWAIT_SOCKET";
pub const TCP_KEEPALIVE_TIMEOUT: &str = "TCP_KEEPALIVE_TIMEOUT";

/// Loss records: the ring buffer had no room.
pub const LOST_RING_FULL: &str = "RINGBUF_FULL";
/// Loss records: the kernel skipped the program (another BPF program was running).
pub const LOST_RECURSION: &str = "RECURSION";

/// Drop reasons worth reporting: TCP/IP failure evidence. Everything else (normal
/// teardown such as NOT_SPECIFIED or QUEUE_PURGE, congestion, other protocols) is
/// filtered out in the kernel. Names absent from the running kernel are ignored.
/// Some repeat what an RST event says (kernel::info, `drop_reported_by`).
pub const KEPT_DROP_REASONS: &[&str] = &[
    NO_SOCKET,
    NETFILTER_DROP,
    "SOCKET_FILTER",
    "SOCKET_CLOSE",
    "SOCKET_RCVBUFF",
    "SOCKET_BACKLOG",
    "PROTO_MEM",
    TCP_LISTEN_OVERFLOW,
    TCP_RESET,
    "TCP_INVALID_SYN",
    "TCP_CLOSE",
    "TCP_FLAGS",
    "TCP_CSUM",
    "TCP_ZEROWINDOW",
    "TCP_OFO_QUEUE_PRUNE",
    "TCP_RFC7323_PAWS",
    "TCP_MINTTL",
    "TCP_MD5NOTFOUND",
    "TCP_MD5UNEXPECTED",
    "TCP_MD5FAILURE",
    "TCP_AONOTFOUND",
    "TCP_AOUNEXPECTED",
    "TCP_AOKEYNOTFOUND",
    "TCP_AOFAILURE",
    TCP_ABORT_ON_DATA,
    "TCP_INVALID_ACK_SEQUENCE",
    "IP_INADDRERRORS",
    IP_INNOROUTES,
    IP_OUTNOROUTES,
    "IP_RPFILTER",
    "IP_LOCAL_SOURCE",
    "IP_INVALID_SOURCE",
    "IPV6DISABLED",
    NEIGH_FAILED,
    "NEIGH_QUEUEFULL",
    "NEIGH_DEAD",
    "NEIGH_CREATEFAIL",
    "BPF_CGROUP_EGRESS",
    "XFRM_POLICY",
    "SECURITY_HOOK",
];
