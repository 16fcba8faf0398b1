//! The kernel hooks, one row each: where a hook attaches and with which programs, the
//! record it produces and the fields it reads, the layout its program relies on, what
//! is lost without it, and the evidence it gives. Loading, the layout checks, decoding
//! and `doctor` all read these tables, so a new hook is one row here, its program in
//! tracer-ebpf and its id in tracer-common.
use std::{collections::HashMap, path::Path};

use tracer_common::{fixed, Hook, KernelOffsets, NO_OFFSET};

use crate::{
    base::{reasons, record::Kind},
    kernel::tracefs::Format,
};

/// A program and its empty counterpart on the same hook (the benchmark's floor).
#[derive(Clone, Copy, Debug)]
pub struct Program {
    pub name: &'static str,
    /// The variant for records that have this field, instead of `name`.
    pub with_field: Option<(&'static str, &'static str)>,
    pub floor: &'static str,
}

impl Program {
    const fn new(name: &'static str, floor: &'static str) -> Program {
        Program {
            name,
            with_field: None,
            floor,
        }
    }

    /// The program to load for a record of `format`, or with `floor` the empty one.
    pub fn pick(&self, format: &Format, floor: bool) -> &'static str {
        match self.with_field {
            _ if floor => self.floor,
            Some((field, program)) if format.field(field).is_some() => program,
            _ => self.name,
        }
    }
}

/// When a hook's raw tracepoint program is used.
#[derive(Clone, Copy, Debug)]
pub enum RawWhen {
    /// It reads the socket instead of a record: when BTF gave every socket field
    /// (`KernelOffsets::sock_fields_known`); else, or when it fails to attach, the
    /// tracepoint program.
    SockFieldsKnown,
    /// Always, when the record has this field (the raw arguments follow the
    /// record's); without it the hook is missing, for the reason given.
    RecordHas {
        field: &'static str,
        why_not: &'static str,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct RawProgram {
    pub program: Program,
    pub when: RawWhen,
}

/// A field a program reads at a constant offset (the `fixed` module of
/// tracer-common), and the size it reads.
#[derive(Clone, Copy, Debug)]
pub struct FixedField {
    pub name: &'static str,
    pub offset: usize,
    pub size: usize,
}

const fn at(name: &'static str, offset: usize, size: usize) -> FixedField {
    FixedField { name, offset, size }
}

#[derive(Clone, Copy, Debug)]
pub struct HookSpec {
    pub hook: Hook,
    /// Tracepoint category and name; the name is also the hook's name in records,
    /// program statistics and captures.
    pub category: &'static str,
    pub name: &'static str,
    /// None when the hook is only attached as a raw tracepoint.
    pub tracepoint: Option<Program>,
    pub raw: Option<RawProgram>,
    /// The record its events decode to (ownership-only hooks give `State`).
    pub kind: Kind,
    /// The record fields its evidence depends on, as `doctor` checks them. Decoding
    /// takes the reset reason, the errno and the state transition only from hooks
    /// that list `reason`, `error` and `oldstate`/`newstate`.
    pub fields: &'static [&'static str],
    /// The layout its program reads without a helper when the record has it exactly;
    /// empty when it always copies the record.
    pub fixed: &'static [FixedField],
    /// What is not visible without this hook, for the warning and `doctor`.
    pub loses: &'static str,
    /// Drops its events already report, which kfree_skb then leaves out.
    pub reports_drops: Option<ReportsDrop>,
}

/// A drop reason whose drops a hook's events report too: each would be a sixth of a
/// refusal's events.
#[derive(Clone, Copy, Debug)]
pub struct ReportsDrop {
    pub reason: &'static str,
    /// Only when the hook's record has this field.
    pub needs_field: Option<&'static str>,
}

impl HookSpec {
    pub fn reads(&self, field: &str) -> bool {
        self.fields.contains(&field)
    }

    /// The fields its decoder reads, as (those this kernel's format has, those it
    /// lacks): what `doctor` and the metrics call a degraded hook.
    pub fn fields_by_presence(
        &self,
        formats: &HashMap<Hook, Format>,
    ) -> (Vec<&'static str>, Vec<&'static str>) {
        self.fields
            .iter()
            .partition(|f| has_field(formats, self.hook, f))
    }
}

fn has_field(formats: &HashMap<Hook, Format>, hook: Hook, field: &str) -> bool {
    formats
        .get(&hook)
        .is_some_and(|fm| fm.field(field).is_some())
}

const CONNECT_LOSES: &str =
    "connect() failures before any packet (no route, prohibit, policy, no free local port)";
const ACCEPT_LOSES: &str =
    "which process accepted a connection (pre-fork workers are named as their listener's process)";
const SOCK_ADDRS: &[&str] = &[
    "skaddr", "sport", "dport", "family", "saddr", "daddr", "saddr_v6", "daddr_v6",
];

/// Every hook, in `Hook` id order.
pub const HOOKS: [HookSpec; Hook::COUNT] = [
    HookSpec {
        hook: Hook::SendReset,
        category: "tcp",
        name: Hook::SendReset.name(),
        tracepoint: Some(Program::new("tcp_send_reset", "floor_send_reset")),
        raw: None,
        kind: Kind::RstSent,
        fields: &["skaddr", "skbaddr", "state", "reason", "saddr", "daddr"],
        fixed: &[],
        loses: "RSTs sent by this host",
        // 6.10+ traces the RST answering a segment to a closed port, with its reason.
        reports_drops: Some(ReportsDrop {
            reason: reasons::NO_SOCKET,
            needs_field: Some("reason"),
        }),
    },
    HookSpec {
        hook: Hook::ReceiveReset,
        category: "tcp",
        name: Hook::ReceiveReset.name(),
        tracepoint: Some(Program::new("tcp_receive_reset", "floor_receive_reset")),
        raw: Some(RawProgram {
            program: Program::new("tcp_receive_reset_raw", "floor_raw_receive_reset"),
            when: RawWhen::SockFieldsKnown,
        }),
        kind: Kind::RstReceived,
        fields: SOCK_ADDRS,
        fixed: &[],
        loses: "RSTs received by this host",
        // A received RST is freed as TCP_RESET once this hook has reported it.
        reports_drops: Some(ReportsDrop {
            reason: reasons::TCP_RESET,
            needs_field: None,
        }),
    },
    HookSpec {
        hook: Hook::RetransmitSkb,
        category: "tcp",
        name: Hook::RetransmitSkb.name(),
        tracepoint: Some(Program::new("tcp_retransmit_skb", "floor_retransmit_skb")),
        raw: Some(RawProgram {
            program: Program {
                name: "tcp_retransmit_skb_raw",
                // 6.18+ passes the result of the retransmit.
                with_field: Some(("err", "tcp_retransmit_skb_raw_err")),
                floor: "floor_raw_retransmit_skb",
            },
            when: RawWhen::SockFieldsKnown,
        }),
        kind: Kind::SynRetransmit,
        fields: &[
            "skaddr", "state", "sport", "dport", "family", "saddr", "daddr",
        ],
        fixed: &[],
        loses: "SYN retransmits (unanswered connects)",
        reports_drops: None,
    },
    HookSpec {
        hook: Hook::RetransmitSynack,
        category: "tcp",
        name: Hook::RetransmitSynack.name(),
        tracepoint: Some(Program::new(
            "tcp_retransmit_synack",
            "floor_retransmit_synack",
        )),
        raw: None,
        kind: Kind::SynackRetransmit,
        fields: &["skaddr", "sport", "dport", "family", "saddr", "daddr"],
        fixed: &[],
        loses: "SYN-ACK retransmits",
        reports_drops: None,
    },
    HookSpec {
        hook: Hook::KfreeSkb,
        category: "skb",
        name: Hook::KfreeSkb.name(),
        tracepoint: None,
        raw: Some(RawProgram {
            program: Program {
                name: "kfree_skb",
                // 6.11+ names the socket the packet was for.
                with_field: Some(("rx_sk", "kfree_skb_rx")),
                floor: "floor_kfree_skb",
            },
            when: RawWhen::RecordHas {
                field: "reason",
                why_not: "kfree_skb has no drop reason (kernel < 5.17); drops cannot be filtered",
            },
        }),
        kind: Kind::Drop,
        fields: &["reason", "rx_sk", "location"],
        fixed: &[],
        loses: "packet drops (firewall, no socket, routing)",
        reports_drops: None,
    },
    HookSpec {
        hook: Hook::SetState,
        category: "sock",
        name: Hook::SetState.name(),
        tracepoint: Some(Program::new("inet_sock_set_state", "floor_set_state")),
        raw: Some(RawProgram {
            program: Program::new("inet_sock_set_state_raw", "floor_raw_set_state"),
            when: RawWhen::SockFieldsKnown,
        }),
        kind: Kind::State,
        fields: &[
            "skaddr", "oldstate", "newstate", "sport", "dport", "family", "protocol", "saddr",
            "daddr",
        ],
        fixed: &[
            at("skaddr", fixed::SET_STATE_SKADDR, 8),
            at("oldstate", fixed::SET_STATE_OLDSTATE, 4),
            at("newstate", fixed::SET_STATE_NEWSTATE, 4),
            at("sport", fixed::SET_STATE_SPORT, 2),
            at("protocol", fixed::SET_STATE_PROTOCOL, 2),
        ],
        loses: "listener and connection state changes, and socket ownership",
        reports_drops: None,
    },
    HookSpec {
        hook: Hook::ErrorReport,
        category: "sock",
        name: Hook::ErrorReport.name(),
        tracepoint: Some(Program::new("inet_sk_error_report", "floor_error_report")),
        raw: Some(RawProgram {
            program: Program::new("inet_sk_error_report_raw", "floor_raw_error_report"),
            when: RawWhen::SockFieldsKnown,
        }),
        kind: Kind::Error,
        fields: &[
            "error", "sport", "dport", "family", "protocol", "saddr", "daddr",
        ],
        fixed: &[],
        loses: "errnos handed to applications",
        reports_drops: None,
    },
    HookSpec {
        hook: Hook::DestroySock,
        category: "tcp",
        name: Hook::DestroySock.name(),
        tracepoint: Some(Program::new("tcp_destroy_sock", "floor_destroy_sock")),
        raw: Some(RawProgram {
            program: Program::new("tcp_destroy_sock_raw", "floor_raw_destroy_sock"),
            when: RawWhen::SockFieldsKnown,
        }),
        // Reports nothing; only ownership.
        kind: Kind::State,
        fields: SOCK_ADDRS,
        fixed: &[at("skaddr", fixed::DESTROY_SKADDR, 8)],
        loses: "socket lifetimes (ownership entries then age out instead)",
        reports_drops: None,
    },
    HookSpec {
        hook: Hook::ConnectEnter,
        category: "syscalls",
        name: Hook::ConnectEnter.name(),
        tracepoint: Some(Program::new("sys_enter_connect", "floor_enter_connect")),
        raw: None,
        kind: Kind::State,
        fields: &["uservaddr"],
        fixed: &[at("uservaddr", fixed::CONNECT_USERVADDR, 8)],
        loses: CONNECT_LOSES,
        reports_drops: None,
    },
    HookSpec {
        hook: Hook::ConnectExit,
        category: "syscalls",
        name: Hook::ConnectExit.name(),
        tracepoint: Some(Program::new("sys_exit_connect", "floor_exit_connect")),
        raw: None,
        kind: Kind::ConnectError,
        fields: &["ret"],
        fixed: &[at("ret", fixed::CONNECT_RET, 8)],
        loses: CONNECT_LOSES,
        reports_drops: None,
    },
    HookSpec {
        hook: Hook::AcceptExit,
        category: "syscalls",
        name: Hook::AcceptExit.name(),
        tracepoint: Some(Program::new("sys_exit_accept", "floor_exit_accept")),
        raw: None,
        kind: Kind::State,
        fields: &["ret"],
        fixed: &[at("ret", fixed::ACCEPT_RET, 8)],
        loses: ACCEPT_LOSES,
        reports_drops: None,
    },
    HookSpec {
        hook: Hook::Accept4Exit,
        category: "syscalls",
        name: Hook::Accept4Exit.name(),
        tracepoint: Some(Program::new("sys_exit_accept4", "floor_exit_accept4")),
        raw: None,
        kind: Kind::State,
        fields: &["ret"],
        fixed: &[at("ret", fixed::ACCEPT_RET, 8)],
        loses: ACCEPT_LOSES,
        reports_drops: None,
    },
];

// `spec` indexes the table by hook id.
const _: () = {
    let mut i = 0;
    while i < Hook::COUNT {
        assert!(HOOKS[i].hook as usize == i);
        i += 1;
    }
};

pub fn spec(hook: Hook) -> &'static HookSpec {
    &HOOKS[hook as usize]
}

/// The hook named `name` (its tracepoint's name, as records and captures carry it).
pub fn by_name(name: &str) -> Option<Hook> {
    HOOKS.iter().find(|s| s.name == name).map(|s| s.hook)
}

/// Whether `f` has the hook's fixed layout exactly (offsets and sizes), so that its
/// program may read the record without a helper.
pub fn fixed_layout(hook: Hook, f: &Format) -> bool {
    let fixed = spec(hook).fixed;
    !fixed.is_empty()
        && fixed.iter().all(|x| {
            f.field(x.name)
                .is_some_and(|fl| fl.offset == x.offset && fl.size == x.size)
        })
}

/// What a piece of evidence needs.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// The hook attached.
    Hook(Hook),
    /// One of these hooks attached.
    AnyHook(&'static [Hook]),
    /// The hook's record has the field.
    Field(Hook, &'static str),
    /// Kernel struct offsets known (BTF): whether those it reads are.
    Offsets(fn(&KernelOffsets) -> bool),
    /// The file exists.
    File(&'static str),
}

/// Evidence the hooks give, as `doctor` reports it, in its order.
#[derive(Clone, Copy, Debug)]
pub struct Evidence {
    pub name: &'static str,
    pub detail: &'static str,
    pub needs: &'static [Need],
}

impl Evidence {
    pub fn available(
        &self,
        attached: impl Fn(Hook) -> bool,
        formats: &HashMap<Hook, Format>,
        offsets: &KernelOffsets,
    ) -> bool {
        self.needs.iter().all(|n| match *n {
            Need::Hook(h) => attached(h),
            Need::AnyHook(hs) => hs.iter().any(|&h| attached(h)),
            Need::Field(h, f) => has_field(formats, h, f),
            Need::Offsets(has) => has(offsets),
            Need::File(p) => Path::new(p).exists(),
        })
    }
}

fn known(offsets: &[u32]) -> bool {
    offsets.iter().all(|&o| o != NO_OFFSET)
}

pub const EVIDENCE: &[Evidence] = &[
    Evidence {
        name: "rst_sent_reason",
        detail: "why the kernel sent an RST (NO_SOCKET, TCP_STATE, ...; 6.10+)",
        needs: &[Need::Hook(Hook::SendReset), Need::Field(Hook::SendReset, "reason")],
    },
    Evidence {
        name: "rst_for_closed_port",
        detail: "an RST event for a SYN to a closed port (6.10+; before, refusals are explained from the client's side)",
        needs: &[Need::Hook(Hook::SendReset), Need::Field(Hook::SendReset, "reason")],
    },
    Evidence {
        name: "rst_received",
        detail: "RSTs arriving on local sockets",
        needs: &[Need::Hook(Hook::ReceiveReset)],
    },
    Evidence {
        name: "syn_retransmits",
        detail: "unanswered SYNs",
        needs: &[Need::Hook(Hook::RetransmitSkb)],
    },
    Evidence {
        name: "synack_retransmits",
        detail: "unanswered SYN-ACKs on listeners",
        needs: &[Need::Hook(Hook::RetransmitSynack)],
    },
    Evidence {
        name: "drop_reasons",
        detail: "packet drops with the kernel's reason (5.17+)",
        needs: &[Need::Hook(Hook::KfreeSkb)],
    },
    Evidence {
        name: "drop_listener",
        detail: "the socket a dropped packet was for (6.11+)",
        needs: &[Need::Hook(Hook::KfreeSkb), Need::Field(Hook::KfreeSkb, "rx_sk")],
    },
    Evidence {
        name: "errno",
        detail: "the errno handed to the application (5.13+)",
        needs: &[Need::Hook(Hook::ErrorReport)],
    },
    Evidence {
        name: "connect_errors",
        detail: "connect() failing before any packet (no route, prohibit, no free local port)",
        needs: &[Need::Hook(Hook::ConnectEnter), Need::Hook(Hook::ConnectExit)],
    },
    Evidence {
        name: "ownership",
        detail: "the process owning each socket, listener changes",
        needs: &[Need::Hook(Hook::SetState)],
    },
    Evidence {
        name: "accept_owner",
        detail: "accepted connections owned by the process that accepted them (pre-fork workers)",
        needs: &[
            Need::Hook(Hook::SetState),
            Need::AnyHook(&[Hook::AcceptExit, Hook::Accept4Exit]),
            Need::Offsets(|o| {
                known(&[
                    o.task_files,
                    o.files_fdt,
                    o.fdtable_fd,
                    o.fdtable_max_fds,
                    o.file_private_data,
                    o.socket_sk,
                ])
            }),
        ],
    },
    Evidence {
        name: "netns",
        detail: "network namespace of each event (BTF)",
        needs: &[Need::Offsets(|o| known(&[o.sk_net, o.net_inum]))],
    },
    Evidence {
        name: "accept_queue",
        detail: "listener accept queue depth in kernel events (BTF)",
        needs: &[Need::Offsets(|o| known(&[o.sk_ack_backlog, o.sk_max_ack_backlog]))],
    },
    Evidence {
        name: "drop_addresses",
        detail: "addresses and ports of dropped packets (BTF)",
        needs: &[
            Need::Hook(Hook::KfreeSkb),
            Need::Offsets(|o| known(&[o.skb_head, o.skb_network_header])),
        ],
    },
    Evidence {
        name: "backlog_counters",
        detail: "accept/SYN queue overflows from TcpExt counters",
        needs: &[Need::File("/proc/self/net/netstat")],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Hook names are part of the JSON schema (a loss record's `hook`) and of program
    /// statistics.
    #[test]
    fn hook_names_are_stable() {
        let names: Vec<_> = HOOKS.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "tcp_send_reset",
                "tcp_receive_reset",
                "tcp_retransmit_skb",
                "tcp_retransmit_synack",
                "kfree_skb",
                "inet_sock_set_state",
                "inet_sk_error_report",
                "tcp_destroy_sock",
                "sys_enter_connect",
                "sys_exit_connect",
                "sys_exit_accept",
                "sys_exit_accept4",
            ]
        );
        for s in &HOOKS {
            assert_eq!(by_name(s.name), Some(s.hook));
        }
    }

    #[test]
    fn every_hook_has_a_program() {
        for s in &HOOKS {
            assert!(s.tracepoint.is_some() || s.raw.is_some(), "{}", s.name);
        }
    }

    #[test]
    fn fixed_layout_needs_every_field_at_its_offset() {
        let f = |text: &str| Format::parse(text).unwrap();
        let destroy = f("\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n");
        assert!(fixed_layout(Hook::DestroySock, &destroy));
        // A hook without a fixed layout never has one.
        assert!(!fixed_layout(Hook::ReceiveReset, &destroy));
        let moved = f("\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n");
        assert!(!fixed_layout(Hook::DestroySock, &moved));
        assert!(!fixed_layout(Hook::SetState, &destroy));
    }
}
