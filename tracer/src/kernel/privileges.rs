//! The Linux capabilities rstrace uses, what each is for, and the drop to the few the
//! live loop still needs once the programs are attached.
//!
//! Checked up front so that a missing one fails with a clear message instead of an
//! EPERM from deep inside the loader. Which capability each operation needs was
//! measured on this project's kernels with `setpriv --bounding-set`, operation by
//! operation (README "Run it as a node service").
use std::collections::HashSet;

use anyhow::{bail, Context as _, Result};
use caps::{CapSet, Capability as Cap};
use serde::Serialize;

/// When rstrace needs a capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Loading and attaching; dropped once the programs are attached.
    Start,
    /// Kept for the live loop.
    Live,
}

/// One capability rstrace uses.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    pub cap: Cap,
    pub phase: Phase,
    /// What it is for.
    pub why: &'static str,
    /// What rstrace cannot do without it.
    pub without: &'static str,
}

/// Every capability rstrace uses. The service definitions (dist/) grant exactly these.
pub const NEEDS: &[Need] = &[
    Need {
        cap: Cap::CAP_BPF,
        phase: Phase::Live,
        why: "load the eBPF programs and maps; while watching, enter listeners found in \
              /proc into the listener map and read the loss counters (kernels before 6.5 \
              check it on every bpf() call when unprivileged BPF is disabled)",
        without: "no program can be loaded",
    },
    Need {
        cap: Cap::CAP_PERFMON,
        phase: Phase::Start,
        why: "attach the programs to tracepoints and let them read kernel memory",
        without: "no program can be attached",
    },
    Need {
        cap: Cap::CAP_SYS_ADMIN,
        phase: Phase::Live,
        why: "setns() into other network namespaces for their listeners, sockets, \
              backlog counters and firewall rules; mount tracefs when it is missing",
        without: "other namespaces are not read: their listeners, pre-existing sockets, \
                  backlog overflows and firewall rules are missing",
    },
    Need {
        cap: Cap::CAP_SYS_PTRACE,
        phase: Phase::Live,
        why: "read other processes' /proc/PID/ns/net and /proc/PID/fd links: which \
              namespace each lives in, which process holds a socket",
        without: "sockets and listeners from before the agent have no owner, and \
                  namespaces without a bind mount are not found",
    },
    Need {
        cap: Cap::CAP_DAC_READ_SEARCH,
        phase: Phase::Live,
        why: "list /proc/PID/fd of processes running as other users (www-data, \
              postgres...); open cgroups by id (open_by_handle_at) for the workload",
        without: "sockets of processes of other users have no owner, and cgroups \
                  are not found by id",
    },
    Need {
        cap: Cap::CAP_NET_ADMIN,
        phase: Phase::Live,
        why: "let `nft -j list ruleset` and `iptables-save` (run by rstrace) read a \
              namespace's firewall rules",
        without: "firewall drops and rejects do not name their rule",
    },
    Need {
        cap: Cap::CAP_SYSLOG,
        phase: Phase::Start,
        why: "open /proc/kallsyms with its addresses (kept open), to name the kernel \
              function that dropped a packet",
        without: "drop locations are hexadecimal addresses",
    },
    Need {
        cap: Cap::CAP_SYS_RESOURCE,
        phase: Phase::Start,
        why: "raise RLIMIT_MEMLOCK, which kernels before 5.11 charge BPF maps to (or \
              LimitMEMLOCK=infinity)",
        without: "before 5.11, maps may fail to load",
    },
    Need {
        cap: Cap::CAP_SETPCAP,
        phase: Phase::Start,
        why: "shrink the bounding set after start-up, so that the commands rstrace runs \
              as root (nft, iptables-save) get only the capabilities it kept",
        without: "those commands get the whole bounding set",
    },
];

/// Capabilities a capture file's rotation uses when the file is given to the user who
/// ran sudo, or lies in a directory of another user: kept only when recording there.
const RECORDING_ELSEWHERE: [Cap; 3] = [Cap::CAP_CHOWN, Cap::CAP_DAC_OVERRIDE, Cap::CAP_FOWNER];

fn effective() -> HashSet<Cap> {
    caps::read(None, CapSet::Effective).unwrap_or_default()
}

/// The name as the kernel and capsh spell it (`CAP_BPF`).
pub fn name(c: Cap) -> String {
    c.to_string()
}

/// Each capability rstrace uses, and whether this process holds it.
pub fn held() -> Vec<(Need, bool)> {
    let eff = effective();
    NEEDS.iter().map(|n| (*n, eff.contains(&n.cap))).collect()
}

/// Fails, naming what is missing, when the programs cannot be loaded; warns for each
/// capability whose absence only degrades the output.
pub fn check() -> Result<()> {
    let eff = effective();
    let has = |c: Cap| eff.contains(&c);
    // CAP_SYS_ADMIN alone covers BPF and perf events too.
    let mut lines: Vec<String> = if has(Cap::CAP_SYS_ADMIN) {
        Vec::new()
    } else {
        NEEDS
            .iter()
            .filter(|n| matches!(n.cap, Cap::CAP_BPF | Cap::CAP_PERFMON) && !has(n.cap))
            .map(|n| format!("  {}: {}", name(n.cap), n.why))
            .collect()
    };
    if let Some(why) =
        tracefs_unreadable(has(Cap::CAP_DAC_READ_SEARCH) || has(Cap::CAP_DAC_OVERRIDE))
    {
        lines.push(format!("  {}: {why}", name(Cap::CAP_DAC_READ_SEARCH)));
    }
    let memlock = memlock_short(has(Cap::CAP_SYS_RESOURCE));
    if !lines.is_empty() {
        if let Some(m) = &memlock {
            lines.push(format!("  {}: {m}", name(Cap::CAP_SYS_RESOURCE)));
        }
        bail!(
            "rstrace lacks the capabilities it needs to load and attach its eBPF programs:\n\
             {}\nRun it as root (sudo), or grant what `rstrace doctor` lists (the systemd \
             unit in dist/systemd does).",
            lines.join("\n")
        );
    }
    if let Some(m) = &memlock {
        // The limit may still be enough: the loader's error says when it is not.
        log::warn!("without {}: {m}", name(Cap::CAP_SYS_RESOURCE));
    }
    for n in NEEDS {
        if n.phase == Phase::Live && !has(n.cap) && n.cap != Cap::CAP_BPF {
            log::warn!("without {}: {}", name(n.cap), n.without);
        }
    }
    Ok(())
}

/// Why tracefs cannot be read, when it is there but only root may read it (mode 0700)
/// and this process runs as another user without a capability that overrides that.
fn tracefs_unreadable(dac_override: bool) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 || dac_override {
        return None;
    }
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .into_iter()
        .find_map(|d| match std::fs::read_dir(d) {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Some(format!(
                "read tracefs ({d}, readable by root only) as uid {euid}: the tracepoints' \
                 formats and ids"
            )),
            _ => None,
        })
}

/// The release is older than 5.11: BPF maps are charged to RLIMIT_MEMLOCK rather than
/// to the memory cgroup.
pub fn charges_memlock(release: &str) -> bool {
    let mut v = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    (major, minor) < (5, 11)
}

fn memlock_limit() -> Option<libc::rlimit> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit, written by the call.
    (unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } == 0).then_some(r)
}

/// On a kernel that charges maps to RLIMIT_MEMLOCK, when the limit is finite and this
/// process may not lift it: what that means, for the messages.
fn memlock_short(sys_resource: bool) -> Option<String> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let release = release.trim();
    let limit = memlock_limit()?;
    if sys_resource || !charges_memlock(release) || limit.rlim_max == libc::RLIM_INFINITY {
        return None;
    }
    Some(format!(
        "this kernel ({release}, before 5.11) charges BPF maps to RLIMIT_MEMLOCK, which is \
         {} KiB here and which only CAP_SYS_RESOURCE may raise past {} KiB: grant \
         CAP_SYS_RESOURCE, or start rstrace with the limit lifted (LimitMEMLOCK=infinity in \
         a systemd unit, `ulimit -l unlimited`, `--ulimit memlock=-1` for a container)",
        limit.rlim_cur / 1024,
        limit.rlim_max / 1024
    ))
}

/// The loader's error, said plainly when it is the locked-memory limit: an EPERM from
/// creating maps on a kernel that charges them to RLIMIT_MEMLOCK, which this process
/// could not lift.
pub fn explain_load_error(e: anyhow::Error) -> anyhow::Error {
    let eperm = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
    }) || format!("{e:#}").contains("Operation not permitted");
    match memlock_short(effective().contains(&Cap::CAP_SYS_RESOURCE)) {
        Some(m) if eperm => e.context(format!(
            "the eBPF maps could not be created within the locked-memory limit: {m}"
        )),
        _ => e,
    }
}

/// Kept for the live loop: the live needs this process holds, and the recording ones
/// when `recording_elsewhere`.
pub fn live_set(recording_elsewhere: bool) -> HashSet<Cap> {
    let eff = effective();
    NEEDS
        .iter()
        .filter(|n| n.phase == Phase::Live)
        .map(|n| n.cap)
        .chain(
            recording_elsewhere
                .then_some(RECORDING_ELSEWHERE)
                .into_iter()
                .flatten(),
        )
        .filter(|c| eff.contains(c))
        .collect()
}

/// Drops every capability but `keep`, for this thread and those it starts from now on
/// (capabilities are per thread: call it before any other thread exists), and for the
/// commands it runs: the bounding set (as root an exec gets all of it) and the
/// ambient set (without root, an exec keeps only those).
pub fn drop_all_but(keep: &HashSet<Cap>) -> Result<()> {
    let before = effective();
    if before.contains(&Cap::CAP_SETPCAP) {
        for c in caps::all().difference(keep) {
            caps::drop(None, CapSet::Bounding, *c)
                .with_context(|| format!("dropping {c} from the bounding set"))?;
        }
    } else {
        log::info!(
            "without CAP_SETPCAP the bounding set stays as it is: commands rstrace runs as \
             root (nft, iptables-save) get all of it"
        );
    }
    // The ambient set must stay within the inheritable one, which must stay within the
    // permitted one.
    caps::clear(None, CapSet::Ambient).context("clearing the ambient capabilities")?;
    caps::set(None, CapSet::Inheritable, keep).context("setting inheritable capabilities")?;
    for c in keep {
        if let Err(e) = caps::raise(None, CapSet::Ambient, *c) {
            log::debug!("raising ambient {c}: {e}");
        }
    }
    caps::set(None, CapSet::Effective, keep).context("setting effective capabilities")?;
    caps::set(None, CapSet::Permitted, keep).context("setting permitted capabilities")?;
    let mut kept: Vec<String> = keep.iter().map(|c| name(*c)).collect();
    kept.sort();
    log::info!(
        "programs attached: kept {} of {} capabilities ({})",
        keep.len(),
        before.len(),
        kept.join(", ")
    );
    Ok(())
}

/// Drops every capability of the calling thread alone (capabilities are per thread):
/// for a thread that serves the network and needs none.
pub fn drop_all_in_this_thread() -> Result<()> {
    caps::clear(None, CapSet::Ambient).context("clearing the ambient capabilities")?;
    for set in [CapSet::Inheritable, CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).with_context(|| format!("clearing the {set:?} capabilities"))?;
    }
    Ok(())
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK.
pub fn raise_memlock() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `rlim` is a valid rlimit alive for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
        log::debug!(
            "setrlimit(RLIMIT_MEMLOCK): {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_capability_is_listed_once() {
        let set: HashSet<Cap> = NEEDS.iter().map(|n| n.cap).collect();
        assert_eq!(set.len(), NEEDS.len());
        for c in RECORDING_ELSEWHERE {
            assert!(!set.contains(&c), "{c} is a recording extra, not a need");
        }
    }

    #[test]
    fn kernels_before_5_11_charge_maps_to_memlock() {
        assert!(charges_memlock("5.10.0-35-cloud-amd64"));
        assert!(charges_memlock("4.19.0"));
        assert!(!charges_memlock("5.11.0"));
        assert!(!charges_memlock("6.1.0-40-cloud-amd64"));
        assert!(!charges_memlock("6.18.44-fc-v657"));
        assert!(!charges_memlock("10.0"));
    }

    #[test]
    fn names_are_the_kernels() {
        assert_eq!(name(Cap::CAP_DAC_READ_SEARCH), "CAP_DAC_READ_SEARCH");
        assert_eq!(name(Cap::CAP_BPF), "CAP_BPF");
    }
}
