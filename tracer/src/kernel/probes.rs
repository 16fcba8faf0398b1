//! Loading and attaching the eBPF programs, degrading hook by hook.
use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, AsRawFd as _},
};

use anyhow::{anyhow, Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use tracer_common::{maps, Config, Hook, KernelOffsets, ListenKey, ListenOwner, NO_OFFSET};

use crate::kernel::{
    hooks::{spec, RawWhen},
    info::KernelInfo,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookStatus {
    Attached { program: &'static str },
    Missing { why: String },
}

pub struct Probes {
    pub ebpf: Ebpf,
    pub status: BTreeMap<Hook, HookStatus>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ProgramStat {
    pub hook: &'static str,
    pub program: &'static str,
    pub run_time_ns: u64,
    pub run_count: u64,
}

pub struct Maps {
    pub ring: RingBuf<MapData>,
    pub losses: PerCpuArray<MapData, u64>,
    pub listeners: HashMap<MapData, ListenKey, ListenOwner>,
    pub wakeups: Wakeups,
}

/// When the programs wake the reader. Reading, it polls the ring and is woken only
/// when a backlog builds up (a wakeup per event costs the kernel more than the
/// event); asleep, every event wakes it, so that an agent that sees nothing does not
/// poll.
pub struct Wakeups {
    map: Array<MapData, Config>,
    cfg: Config,
    backlog_bytes: u32,
}

impl Wakeups {
    pub fn set_asleep(&mut self, asleep: bool) -> Result<()> {
        // The rest of the configuration is written again unchanged: a program reading
        // it meanwhile sees the same bytes.
        self.cfg.wake_bytes = if asleep { 0 } else { self.backlog_bytes };
        self.map
            .set(0, self.cfg, 0)
            .context("writing the programs' wakeup policy")
    }
}

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

impl Probes {
    /// Loads the programs, attaches every hook this kernel has, then configures them
    /// for what got attached (until then they do nothing).
    pub fn load(info: &KernelInfo, offsets: KernelOffsets, ring_bytes: u32) -> Result<Probes> {
        let mut p = Probes::load_as(info, &offsets, ring_bytes, false)?;
        let mut cfg = info.program_config(offsets, ring_bytes, |h| p.attached(h));
        cfg.fold = p.fold(&offsets);
        let mut config: Array<_, Config> = Array::try_from(
            p.ebpf
                .map_mut(maps::CONFIG)
                .ok_or_else(|| anyhow!("no CONFIG map"))?,
        )?;
        config
            .set(0, cfg, 0)
            .context("writing the program configuration")?;
        Ok(p)
    }

    /// The empty programs on the same hooks, of the same program types: the
    /// benchmark's floor.
    pub fn load_floor(info: &KernelInfo, offsets: &KernelOffsets) -> Result<Probes> {
        Probes::load_as(info, offsets, 4096, true)
    }

    /// Which events the RST received by a connecting socket stands for
    /// (`tracer_common::fold`): only where each program involved sees the socket
    /// itself (the raw programs) and can tell a dead socket, so that the agent's
    /// unfolding matches what the kernel would have written.
    fn fold(&self, offsets: &KernelOffsets) -> u32 {
        let runs = |hook, program| matches!(self.status.get(&hook), Some(HookStatus::Attached { program: p }) if *p == program);
        if !(runs(Hook::ReceiveReset, "tcp_receive_reset_raw")
            && self.attached(Hook::SetState)
            && offsets.skc_state != NO_OFFSET)
        {
            return 0;
        }
        let mut bits = tracer_common::fold::DEATH;
        if runs(Hook::ErrorReport, "inet_sk_error_report_raw") && offsets.sk_flags != NO_OFFSET {
            bits |= tracer_common::fold::ERRNO;
        }
        bits
    }

    pub fn attached(&self, hook: Hook) -> bool {
        matches!(self.status.get(&hook), Some(HookStatus::Attached { .. }))
    }

    fn load_as(
        info: &KernelInfo,
        offsets: &KernelOffsets,
        ring_bytes: u32,
        floor: bool,
    ) -> Result<Probes> {
        if OBJECT.is_empty() {
            return Err(anyhow!("this rstrace was built without its eBPF programs"));
        }
        // No CO-RE relocations: the kernel's BTF (parsed by btf.rs for offsets) is not
        // needed by the loader, and parsing it twice doubled the peak memory.
        let mut ebpf = EbpfLoader::new()
            .btf(None)
            .map_max_entries(maps::EVENTS, ring_bytes)
            .load(OBJECT)
            .context("loading the eBPF object (BPF_PROG_LOAD/BPF_MAP_CREATE)")?;
        let mut status = BTreeMap::new();
        for hook in Hook::ALL {
            let st = match attach(&mut ebpf, info, offsets, hook, floor) {
                Ok(program) => HookStatus::Attached { program },
                Err(e) => HookStatus::Missing {
                    why: format!("{e:#}"),
                },
            };
            status.insert(hook, st);
        }
        Ok(Probes { ebpf, status })
    }

    /// The kernel's run statistics of each attached program (kernel.bpf_stats_enabled).
    pub fn program_stats(&self) -> Vec<ProgramStat> {
        let mut out = Vec::new();
        for (hook, st) in &self.status {
            let HookStatus::Attached { program } = st else {
                continue;
            };
            if let Some(Ok(info)) = self.ebpf.program(program).map(|p| p.info()) {
                out.push(ProgramStat {
                    hook: spec(*hook).name,
                    program,
                    run_time_ns: info.run_time().as_nanos() as u64,
                    run_count: info.run_count(),
                });
            }
        }
        out
    }

    /// Runs the kernel skipped, per hook, because another BPF program was already
    /// running on that CPU (a hook firing inside our own program's softirq, say):
    /// events lost before any of our code ran. From each program's fdinfo
    /// (`recursion_misses`, counted by 5.12+ kernels for raw tracepoints and by newer
    /// ones for tracepoints too); zero where the kernel does not count them.
    pub fn recursion_misses(&self) -> [u64; Hook::COUNT] {
        let mut out = [0; Hook::COUNT];
        for (hook, st) in &self.status {
            let HookStatus::Attached { program } = st else {
                continue;
            };
            let Some(Ok(fd)) = self.ebpf.program(program).map(|p| p.fd()) else {
                continue;
            };
            let path = format!("/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
            out[*hook as usize] = std::fs::read_to_string(path)
                .ok()
                .and_then(|t| fdinfo_value(&t, "recursion_misses"))
                .unwrap_or(0);
        }
        out
    }

    pub fn take_maps(&mut self) -> Result<Maps> {
        let ring = RingBuf::try_from(
            self.ebpf
                .take_map(maps::EVENTS)
                .ok_or_else(|| anyhow!("no EVENTS map"))?,
        )?;
        let losses = PerCpuArray::try_from(
            self.ebpf
                .take_map(maps::LOSSES)
                .ok_or_else(|| anyhow!("no LOSSES map"))?,
        )?;
        let listeners = HashMap::try_from(
            self.ebpf
                .take_map(maps::LISTENERS)
                .ok_or_else(|| anyhow!("no LISTENERS map"))?,
        )?;
        let map: Array<MapData, Config> = Array::try_from(
            self.ebpf
                .take_map(maps::CONFIG)
                .ok_or_else(|| anyhow!("no CONFIG map"))?,
        )?;
        let cfg = map
            .get(&0, 0)
            .context("reading the program configuration")?;
        Ok(Maps {
            ring,
            losses,
            listeners,
            wakeups: Wakeups {
                map,
                cfg,
                backlog_bytes: cfg.wake_bytes,
            },
        })
    }

    /// One warning per hook that could not be attached, naming what is lost.
    pub fn warn_degraded(&self) {
        for (hook, st) in &self.status {
            if let HookStatus::Missing { why } = st {
                let s = spec(*hook);
                log::warn!(
                    "{}:{} unavailable on this kernel ({why}); not visible: {}",
                    s.category,
                    s.name,
                    s.loses
                );
            }
        }
    }
}

/// Set, the socket hooks are attached as tracepoints even where they could be raw
/// tracepoints (diagnostics; the tests of the fallback).
const TRACEPOINTS_ENV: &str = "RSTRACE_TRACEPOINTS";

fn attach_raw(ebpf: &mut Ebpf, program: &'static str, name: &str) -> Result<&'static str> {
    let p: &mut RawTracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("program {program} missing from the object"))?
        .try_into()?;
    p.load().with_context(|| format!("loading {program}"))?;
    p.attach(name)
        .with_context(|| format!("attaching {program} to raw_tp {name}"))?;
    Ok(program)
}

/// Attaches the hook's program, or with `floor` its empty counterpart: the raw
/// tracepoint program where the table says it can run, else the tracepoint one.
fn attach(
    ebpf: &mut Ebpf,
    info: &KernelInfo,
    offsets: &KernelOffsets,
    hook: Hook,
    floor: bool,
) -> Result<&'static str> {
    let s = spec(hook);
    let (cat, name) = (s.category, s.name);
    let format = info
        .formats
        .get(&hook)
        .ok_or_else(|| anyhow!("no tracepoint {cat}:{name}"))?;
    if let Some(raw) = &s.raw {
        let program = raw.program.pick(format, floor);
        match raw.when {
            RawWhen::SockFieldsKnown => {
                if offsets.sock_fields_known()
                    && !std::env::var(TRACEPOINTS_ENV).is_ok_and(|v| v == "1")
                {
                    match attach_raw(ebpf, program, name) {
                        Ok(p) => return Ok(p),
                        Err(e) => log::warn!("{e:#}; using the tracepoint instead"),
                    }
                }
            }
            RawWhen::RecordHas { field, why_not } => {
                if format.field(field).is_none() {
                    return Err(anyhow!(why_not));
                }
                return attach_raw(ebpf, program, name);
            }
        }
    }
    let program = s
        .tracepoint
        .ok_or_else(|| anyhow!("{cat}:{name} has no tracepoint program"))?
        .pick(format, floor);
    let p: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| anyhow!("program {program} missing from the object"))?
        .try_into()?;
    p.load().with_context(|| format!("loading {program}"))?;
    p.attach(cat, name)
        .with_context(|| format!("attaching {program} to {cat}:{name}"))?;
    Ok(program)
}

fn fdinfo_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}

/// Total of each hook's lost-event counters over all CPUs.
pub fn read_losses(losses: &PerCpuArray<MapData, u64>) -> [u64; Hook::COUNT] {
    let mut out = [0; Hook::COUNT];
    for (i, slot) in out.iter_mut().enumerate() {
        if let Ok(values) = losses.get(&(i as u32), 0) {
            *slot = values.iter().sum();
        }
    }
    out
}

/// How full the ring buffer is, from the kernel's consumer and producer positions:
/// the first two pages of the ring's mapping (as aya maps them to read), mapped here
/// once more, read-only.
pub struct RingFill {
    at: std::ptr::NonNull<libc::c_void>,
    page: usize,
}

impl RingFill {
    pub fn new(ring: std::os::fd::BorrowedFd<'_>) -> std::io::Result<RingFill> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| std::io::Error::last_os_error())?;
        // SAFETY: a new read-only shared mapping of the ring's fd, at an address the
        // kernel picks; the kernel lets any page of a ring buffer be mapped read-only.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                ring.as_raw_fd(),
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let at = std::ptr::NonNull::new(at).ok_or_else(std::io::Error::last_os_error)?;
        Ok(RingFill { at, page })
    }

    /// Bytes written by the programs and not yet read.
    pub fn used(&self) -> u64 {
        let pos = |offset: usize| {
            // Each position starts a page of the mapping: aligned.
            let at = self
                .at
                .as_ptr()
                .wrapping_byte_add(offset)
                .cast::<std::sync::atomic::AtomicU64>();
            // SAFETY: a page-aligned u64 within the mapping, which lives as long as
            // `self`; the kernel and the reader only update it atomically.
            let pos = unsafe { &*at };
            pos.load(std::sync::atomic::Ordering::Acquire)
        };
        let (consumer, producer) = (pos(0), pos(self.page));
        producer.saturating_sub(consumer)
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, of that length, unmapped once.
        unsafe { libc::munmap(self.at.as_ptr(), 2 * self.page) };
    }
}

impl Probes {
    /// Each hook's state as `doctor` tells it: `attached`, `degraded` (attached, some
    /// of the fields its decoder reads missing from this kernel's format) or
    /// `missing`.
    pub fn hook_states(&self, info: &KernelInfo) -> Vec<(&'static str, &'static str)> {
        self.status
            .iter()
            .map(|(h, st)| {
                let complete = spec(*h).fields_by_presence(&info.formats).1.is_empty();
                let state = match st {
                    HookStatus::Missing { .. } => "missing",
                    HookStatus::Attached { .. } if complete => "attached",
                    HookStatus::Attached { .. } => "degraded",
                };
                (h.name(), state)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_counter_from_fdinfo() {
        let t = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nrun_time_ns:\t12\nrun_cnt:\t3\nrecursion_misses:\t7\nverified_insns:\t99\n";
        assert_eq!(fdinfo_value(t, "recursion_misses"), Some(7));
        assert_eq!(fdinfo_value(t, "run_cnt"), Some(3));
        assert_eq!(fdinfo_value("prog_type:\t5\n", "recursion_misses"), None);
    }
}
