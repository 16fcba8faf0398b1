//! `rstrace doctor`: what this kernel lets rstrace see, hook by hook and field by field,
//! and therefore which evidence is available or degraded.
use std::{io::Write, path::Path};

use anyhow::Result;
use serde::Serialize;
use tracer_common::{Hook, KernelOffsets, NO_OFFSET};

use crate::kernel::{
    btf::{KernelBtf, VMLINUX},
    info::KernelInfo,
    privileges,
    probes::{hook_loss, HookStatus, Probes},
    tracefs,
};

/// Fields each hook's decoding uses, by name.
fn wanted_fields(hook: Hook) -> &'static [&'static str] {
    match hook {
        Hook::SendReset => &["skaddr", "skbaddr", "state", "reason", "saddr", "daddr"],
        Hook::ReceiveReset | Hook::DestroySock => &[
            "skaddr", "sport", "dport", "family", "saddr", "daddr", "saddr_v6", "daddr_v6",
        ],
        Hook::RetransmitSkb => &[
            "skaddr", "state", "sport", "dport", "family", "saddr", "daddr",
        ],
        Hook::RetransmitSynack => &["skaddr", "sport", "dport", "family", "saddr", "daddr"],
        Hook::KfreeSkb => &["reason", "rx_sk", "location"],
        Hook::SetState => &[
            "skaddr", "oldstate", "newstate", "sport", "dport", "family", "protocol", "saddr",
            "daddr",
        ],
        Hook::ErrorReport => &[
            "error", "sport", "dport", "family", "protocol", "saddr", "daddr",
        ],
        Hook::ConnectEnter => &["uservaddr"],
        Hook::ConnectExit | Hook::AcceptExit | Hook::Accept4Exit => &["ret"],
    }
}

#[derive(Serialize)]
pub struct HookReport {
    pub tracepoint: String,
    pub attached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub fields_present: Vec<&'static str>,
    pub fields_missing: Vec<&'static str>,
    /// What cannot be seen when this hook is missing.
    pub loses: &'static str,
}

#[derive(Serialize)]
pub struct Capability {
    pub name: &'static str,
    pub available: bool,
    pub detail: &'static str,
}

#[derive(Serialize)]
pub struct Report {
    pub kernel: String,
    pub btf: bool,
    pub tracefs: Option<String>,
    pub privileged: bool,
    pub hooks: Vec<HookReport>,
    pub offsets_missing: Vec<String>,
    pub drop_reasons_known: usize,
    pub rst_reasons_known: usize,
    pub capabilities: Vec<Capability>,
}

pub fn gather() -> Report {
    let privileged = privileges::check().is_ok();
    let tracefs = tracefs::ensure_tracefs().ok();
    let btf = KernelBtf::load().ok();
    let info = tracefs
        .as_deref()
        .map(|t| KernelInfo::gather(t, btf.as_ref()))
        .unwrap_or_else(|| KernelInfo::gather(Path::new("/nonexistent"), btf.as_ref()));
    let mut offsets_missing = Vec::new();
    let offsets = btf.as_ref().map_or(KernelOffsets::UNKNOWN, |b| {
        b.kernel_offsets(&mut offsets_missing)
    });
    if btf.is_none() {
        offsets_missing.push(format!("{VMLINUX} not readable"));
    }
    let status = if privileged && tracefs.is_some() {
        privileges::raise_memlock();
        match Probes::load(&info, offsets, tracer_common::DEFAULT_RING_BYTES) {
            Ok(p) => Some(p.status.clone()),
            Err(e) => {
                log::warn!("{e:#}");
                None
            }
        }
    } else {
        None
    };
    let hooks: Vec<HookReport> = Hook::ALL
        .iter()
        .map(|&h| {
            let (cat, name) = h.tracepoint();
            let fmt = info.formats.get(&h);
            let (present, missing) = wanted_fields(h)
                .iter()
                .partition(|f| fmt.is_some_and(|fm| fm.field(f).is_some()));
            let (attached, program, error) = match status.as_ref().and_then(|s| s.get(&h)) {
                Some(HookStatus::Attached { program }) => (true, Some(*program), None),
                Some(HookStatus::Missing { why }) => (false, None, Some(why.clone())),
                None if fmt.is_none() => (false, None, Some(format!("no tracepoint {cat}:{name}"))),
                None => (
                    false,
                    None,
                    Some("not tried (needs root and tracefs)".into()),
                ),
            };
            HookReport {
                tracepoint: format!("{cat}:{name}"),
                attached,
                program,
                error,
                fields_present: present,
                fields_missing: missing,
                loses: hook_loss(h),
            }
        })
        .collect();
    let attached = |h: Hook| hooks[h as usize].attached;
    let has_field = |h: Hook, f: &str| info.formats.get(&h).is_some_and(|fm| fm.field(f).is_some());
    let capabilities = vec![
        Capability {
            name: "rst_sent_reason",
            available: attached(Hook::SendReset) && has_field(Hook::SendReset, "reason"),
            detail: "why the kernel sent an RST (NO_SOCKET, TCP_STATE, ...; 6.10+)",
        },
        Capability {
            name: "rst_for_closed_port",
            available: attached(Hook::SendReset) && has_field(Hook::SendReset, "reason"),
            detail: "an RST event for a SYN to a closed port (6.10+; before, refusals are explained from the client's side)",
        },
        Capability { name: "rst_received", available: attached(Hook::ReceiveReset), detail: "RSTs arriving on local sockets" },
        Capability { name: "syn_retransmits", available: attached(Hook::RetransmitSkb), detail: "unanswered SYNs" },
        Capability { name: "synack_retransmits", available: attached(Hook::RetransmitSynack), detail: "unanswered SYN-ACKs on listeners" },
        Capability { name: "drop_reasons", available: attached(Hook::KfreeSkb), detail: "packet drops with the kernel's reason (5.17+)" },
        Capability {
            name: "drop_listener",
            available: attached(Hook::KfreeSkb) && has_field(Hook::KfreeSkb, "rx_sk"),
            detail: "the socket a dropped packet was for (6.11+)",
        },
        Capability { name: "errno", available: attached(Hook::ErrorReport), detail: "the errno handed to the application (5.13+)" },
        Capability {
            name: "connect_errors",
            available: attached(Hook::ConnectEnter) && attached(Hook::ConnectExit),
            detail: "connect() failing before any packet (no route, prohibit, no free local port)",
        },
        Capability { name: "ownership", available: attached(Hook::SetState), detail: "the process owning each socket, listener changes" },
        Capability {
            name: "accept_owner",
            available: attached(Hook::SetState)
                && (attached(Hook::AcceptExit) || attached(Hook::Accept4Exit))
                && [offsets.task_files, offsets.files_fdt, offsets.fdtable_fd, offsets.fdtable_max_fds, offsets.file_private_data, offsets.socket_sk]
                    .iter()
                    .all(|&o| o != NO_OFFSET),
            detail: "accepted connections owned by the process that accepted them (pre-fork workers)",
        },
        Capability { name: "netns", available: offsets.sk_net != NO_OFFSET && offsets.net_inum != NO_OFFSET, detail: "network namespace of each event (BTF)" },
        Capability {
            name: "accept_queue",
            available: offsets.sk_ack_backlog != NO_OFFSET && offsets.sk_max_ack_backlog != NO_OFFSET,
            detail: "listener accept queue depth in kernel events (BTF)",
        },
        Capability {
            name: "drop_addresses",
            available: attached(Hook::KfreeSkb) && offsets.skb_head != NO_OFFSET && offsets.skb_network_header != NO_OFFSET,
            detail: "addresses and ports of dropped packets (BTF)",
        },
        Capability {
            name: "backlog_counters",
            available: Path::new("/proc/self/net/netstat").exists(),
            detail: "accept/SYN queue overflows from TcpExt counters",
        },
    ];
    Report {
        kernel: info.release.clone(),
        btf: btf.is_some(),
        tracefs: tracefs.map(|p| p.display().to_string()),
        privileged,
        hooks,
        offsets_missing,
        drop_reasons_known: info.drop_reasons.len(),
        rst_reasons_known: info.rst_reasons.len(),
        capabilities,
    }
}

pub fn run(json: bool) -> Result<()> {
    let r = gather();
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    let yes = |b: bool| if b { "yes" } else { "NO" };
    writeln!(out, "kernel       {}", r.kernel)?;
    writeln!(out, "btf          {}", yes(r.btf))?;
    writeln!(
        out,
        "tracefs      {}",
        r.tracefs
            .as_deref()
            .unwrap_or("NOT MOUNTED (and could not mount it)")
    )?;
    writeln!(
        out,
        "privileges   {}",
        if r.privileged {
            "ok"
        } else {
            "MISSING: run as root"
        }
    )?;
    writeln!(
        out,
        "reasons      {} drop reasons, {} reset reasons known",
        r.drop_reasons_known, r.rst_reasons_known
    )?;
    writeln!(out, "\nhooks")?;
    for h in &r.hooks {
        let state = if h.attached {
            format!("attached ({})", h.program.unwrap_or(""))
        } else {
            "NOT ATTACHED".into()
        };
        writeln!(out, "  {:<28} {state}", h.tracepoint)?;
        if let Some(e) = &h.error {
            writeln!(out, "      {e}; not visible: {}", h.loses)?;
        }
        if !h.fields_missing.is_empty() {
            writeln!(out, "      fields missing: {}", h.fields_missing.join(", "))?;
        }
    }
    if !r.offsets_missing.is_empty() {
        writeln!(out, "\nkernel structures (BTF) missing")?;
        for m in &r.offsets_missing {
            writeln!(out, "  {m}")?;
        }
    }
    writeln!(out, "\nevidence")?;
    for c in &r.capabilities {
        writeln!(
            out,
            "  {:<20} {:<4} {}",
            c.name,
            if c.available { "yes" } else { "no" },
            c.detail
        )?;
    }
    Ok(())
}
