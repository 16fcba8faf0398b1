//! Which systemd unit, container or Kubernetes pod a socket's owner runs in, from
//! its cgroup v2 id.
//!
//! The kernel gives a cgroup id cheaply at the moment ownership is recorded, and the
//! id outlives the process: a service that exited is still named by what its id
//! resolved to while it ran. Userspace turns the id into a path (`cgroupfs`: by file
//! handle, else by walking the v2 mount at a bounded rate), the path into a workload
//! (`path`: a pure grammar of the names systemd, the container runtimes and the
//! kubelet give their cgroups) and completes it with names from the node's own state
//! (`names`: runtime state files, the kubelet's log layout, `ip netns` names). Results
//! are cached and bounded. Without a v2 hierarchy (a v1-only host) it warns once and
//! names nothing, so the output is what it was without it.
//!
//! How the rest plugs in (to be built on the typed records and the hook table):
//! - eBPF: the owner entries (connect, listen, accept) gain the owner's
//!   `bpf_get_current_cgroup_id()`, taken in the owning task's context like its pid
//!   (the helper is allowed in tracepoint and raw tracepoint programs since 4.18). On
//!   a hybrid host it is the unified hierarchy's cgroup, the one this module walks.
//! - `Proc` gains `cgroup: u64` (0: unknown); owners found in /proc (sock_diag at
//!   start-up, lookups of unknown owners) take it from /proc/PID/cgroup
//!   ([`Resolver::id_of_pid`]).
//! - A context record maps a cgroup id to its [`Workload`], written once per id
//!   when a record first carries it (a capture then replays with the names, offline
//!   and without this host); namespaces gain their `ip netns` name the same way.
//! - Explanations and JSON: owners, process and culprit gain `unit`,
//!   `container {runtime,id,name}`, `pod {namespace,name,uid}`; the fix names the
//!   unit's `systemctl status` / `journalctl -u`, the container's runtime command or
//!   `kubectl -n <ns> describe pod <pod>`.
//! - Filters `--unit`, `--container` (name or id prefix), `--pod` (`ns/name`),
//!   `--netns` (name or inode) match the resolved workload of either owner.
use std::{
    collections::HashMap,
    fs,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

pub mod cgroupfs;
pub mod names;
pub mod path;

pub use crate::base::workload::Workload;
use crate::base::FastMap;
use cgroupfs::CgroupFs;
use names::{Names, StateRoots};

/// Resolved workloads kept; past this the cache starts over (a host rarely has more
/// cgroups, and each is resolved again on its next use).
const KNOWN_LIMIT: usize = 32_768;
/// An id not found is not looked up again for this long.
const MISS_RETRY: Duration = Duration::from_secs(1);
/// The hierarchy is walked at most this often.
const WALK_INTERVAL: Duration = Duration::from_secs(1);
/// A container or pod resolved before its runtime or the kubelet wrote its names
/// (the kubelet links a container's log after it starts) is completed again this
/// long after, at most `NAME_TRIES` times.
const NAME_RETRY: Duration = Duration::from_secs(2);
const NAME_TRIES: u8 = 3;

struct Known {
    w: Arc<Workload>,
    /// When to look for names again; None when complete or out of tries.
    retry_at: Option<Instant>,
    tries: u8,
}

fn unnamed(w: &Workload) -> bool {
    w.container.as_ref().is_some_and(|c| c.name.is_none())
        || w.pod.as_ref().is_some_and(|p| p.name.is_none())
}

pub struct Resolver {
    fs: Option<CgroupFs>,
    names: Names,
    known: FastMap<u64, Known>,
    misses: FastMap<u64, Instant>,
    walked: Option<(Instant, HashMap<u64, String>)>,
    /// Walks done, for tests and diagnostics.
    pub walks: u32,
    /// `NAME_RETRY`, shorter in tests.
    pub name_retry: Duration,
}

impl Resolver {
    /// The host's v2 hierarchy and the runtimes' packaged state directories. Warns
    /// once when there is no v2 hierarchy.
    pub fn new() -> Self {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mount = cgroupfs::v2_mount(&mountinfo);
        if mount.is_none() {
            log::warn!(
                "no cgroup v2 hierarchy is mounted: processes are named without their systemd unit, container or pod"
            );
        }
        Self::with(mount, StateRoots::from_env())
    }

    pub fn with(mount: Option<PathBuf>, roots: StateRoots) -> Self {
        Resolver {
            fs: mount.map(CgroupFs::new),
            names: Names::new(roots),
            known: FastMap::default(),
            misses: FastMap::default(),
            walked: None,
            walks: 0,
            name_retry: NAME_RETRY,
        }
    }

    pub fn available(&self) -> bool {
        self.fs.is_some()
    }

    /// The workload of a cgroup id; None when the id is unknown here (gone before it
    /// was first asked about, or no v2 hierarchy). The root cgroup and unnamed ones
    /// give an empty workload. The answer for an id changes only when names missing
    /// at first are found later (compare with the last one to emit a record again).
    pub fn resolve(&mut self, id: u64) -> Option<Arc<Workload>> {
        let now = Instant::now();
        if let Some(k) = self.known.get_mut(&id) {
            if k.retry_at.is_some_and(|t| now >= t) {
                let mut w = (*k.w).clone();
                self.names.complete(&mut w);
                k.tries += 1;
                k.retry_at = (unnamed(&w) && k.tries < NAME_TRIES).then(|| now + self.name_retry);
                k.w = Arc::new(w);
            }
            return Some(k.w.clone());
        }
        if self.misses.get(&id).is_some_and(|t| now < *t + MISS_RETRY) {
            return None;
        }
        let Some(path) = self.path(id, now) else {
            if self.misses.len() >= KNOWN_LIMIT {
                self.misses.clear();
            }
            self.misses.insert(id, now);
            return None;
        };
        let mut w = path::parse(&path);
        self.names.complete(&mut w);
        let retry_at = unnamed(&w).then(|| now + self.name_retry);
        let w = Arc::new(w);
        if self.known.len() >= KNOWN_LIMIT {
            self.known.clear();
        }
        self.known.insert(
            id,
            Known {
                w: w.clone(),
                retry_at,
                tries: 0,
            },
        );
        self.misses.remove(&id);
        Some(w)
    }

    /// The cgroup path of an id, relative to the v2 mount.
    pub fn path(&mut self, id: u64, now: Instant) -> Option<String> {
        let fs = self.fs.as_ref()?;
        if let Some(p) = fs.path_by_handle(id) {
            return Some(p);
        }
        // No CAP_DAC_READ_SEARCH (or no handle support): the last walk, or a new one
        // if it is old enough.
        if let Some(p) = self.walked.as_ref().and_then(|(_, m)| m.get(&id)) {
            return Some(p.clone());
        }
        if self
            .walked
            .as_ref()
            .is_some_and(|(t, _)| now < *t + WALK_INTERVAL)
        {
            return None;
        }
        let map = fs.walk(cgroupfs::WALK_LIMIT);
        self.walks += 1;
        let found = map.get(&id).cloned();
        self.walked = Some((now, map));
        found
    }

    /// The cgroup id of a process, from /proc/PID/cgroup (for owners found in /proc
    /// rather than by the kernel hooks).
    pub fn id_of_pid(&self, pid: u32) -> Option<u64> {
        let fs = self.fs.as_ref()?;
        let rel = cgroupfs::path_of_pid(pid)?;
        cgroupfs::id_of_dir(&fs.mount.join(rel.trim_start_matches('/')))
    }
}

/// The cgroup v2 id of a process, from /proc/PID/cgroup, for owners found in /proc
/// where no resolver is at hand; None without a v2 hierarchy.
pub fn id_of_pid(pid: u32) -> Option<u64> {
    static MOUNT: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let mount = MOUNT.get_or_init(|| {
        cgroupfs::v2_mount(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
    });
    let rel = cgroupfs::path_of_pid(pid)?;
    cgroupfs::id_of_dir(&mount.as_ref()?.join(rel.trim_start_matches('/')))
}

/// The workload of a running process from /proc/PID/cgroup, with the names the
/// node's state gives (for one-off questions such as `probe`'s; the live pipeline
/// resolves cgroup ids with a `Resolver`).
pub fn of_pid(pid: u32) -> Option<Workload> {
    let mut w = path::parse(&cgroupfs::path_of_pid(pid)?);
    Names::new(StateRoots::from_env()).complete(&mut w);
    Some(w)
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests;
