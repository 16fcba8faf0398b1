//! `rstrace doctor`: what this kernel lets rstrace see, hook by hook and field by field,
//! and therefore which evidence is available or degraded.
use std::{io::Write, path::Path};

use anyhow::Result;
use serde::Serialize;
use tracer_common::{Hook, KernelOffsets};

use crate::kernel::{
    btf::{KernelBtf, VMLINUX},
    hooks::{EVIDENCE, HOOKS},
    info::KernelInfo,
    privileges,
    probes::{HookStatus, Probes},
    tracefs,
};

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

/// A Linux capability rstrace uses: whether this process holds it, and when and why
/// rstrace needs it.
#[derive(Serialize)]
pub struct CapabilityUse {
    pub name: String,
    pub held: bool,
    /// `start`: dropped once the programs are attached; `live`: kept while watching.
    pub phase: privileges::Phase,
    pub why: &'static str,
    pub without: &'static str,
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
    /// The Linux capabilities rstrace uses (the service definitions in dist/ grant
    /// exactly these).
    pub linux_capabilities: Vec<CapabilityUse>,
    /// The host's files rstrace reads: what a container needs mounted from the host.
    pub host_paths: Vec<HostPath>,
}

#[derive(Serialize)]
pub struct HostPath {
    pub path: String,
    pub why: &'static str,
}

/// The host's files rstrace reads (a container sees the host's processes through the
/// host's PID namespace, not through a mount).
fn host_paths() -> Vec<HostPath> {
    let mut out = vec![
        HostPath {
            path: "/sys/kernel/tracing".into(),
            why: "tracefs: the tracepoints' formats and ids (/sys/kernel/debug/tracing on \
                  kernels that only have it there)",
        },
        HostPath {
            path: VMLINUX.into(),
            why: "kernel BTF: raw tracepoints, structure offsets, namespaces",
        },
        HostPath {
            path: "/proc".into(),
            why: "the host's processes (socket owners, namespaces, exits), \
                  /proc/kallsyms, TcpExt counters: the host's PID namespace",
        },
    ];
    out.extend(crate::source::netns::NETNS_DIRS.iter().map(|d| HostPath {
        path: d.to_string(),
        why: "network namespaces kept by bind mounts, with no process inside",
    }));
    out.push(HostPath {
        path: "/sys/fs/cgroup".into(),
        why: "the cgroup tree: the workload (unit, container, pod) owning a socket",
    });
    let roots = crate::source::workload::names::StateRoots::default();
    let runtime = "container runtimes' and the kubelet's state: container and pod names";
    for p in [&roots.docker].into_iter().chain(&roots.storage).chain([
        &roots.containerd_tasks,
        &roots.pod_logs,
        &roots.container_logs,
    ]) {
        out.push(HostPath {
            path: p.display().to_string(),
            why: runtime,
        });
    }
    out
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
    let hooks: Vec<HookReport> = HOOKS
        .iter()
        .map(|s| {
            let (h, cat, name) = (s.hook, s.category, s.name);
            let fmt = info.formats.get(&h);
            let (present, missing) = s.fields_by_presence(&info.formats);
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
                loses: s.loses,
            }
        })
        .collect();
    let attached = |h: Hook| hooks[h as usize].attached;
    let capabilities = EVIDENCE
        .iter()
        .map(|e| Capability {
            name: e.name,
            available: e.available(attached, &info.formats, &offsets),
            detail: e.detail,
        })
        .collect();
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
        linux_capabilities: privileges::held()
            .into_iter()
            .map(|(n, held)| CapabilityUse {
                name: privileges::name(n.cap),
                held,
                phase: n.phase,
                why: n.why,
                without: n.without,
            })
            .collect(),
        host_paths: host_paths(),
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
    writeln!(out, "\nlinux capabilities (held: when)")?;
    for c in &r.linux_capabilities {
        let when = match c.phase {
            privileges::Phase::Start => "start-up only",
            privileges::Phase::Live => "kept while watching",
        };
        writeln!(
            out,
            "  {:<20} {:<4} {when}: {}",
            c.name,
            if c.held { "yes" } else { "NO" },
            c.why
        )?;
        if !c.held {
            writeln!(out, "      without it: {}", c.without)?;
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
