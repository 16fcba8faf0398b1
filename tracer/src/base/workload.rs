//! The workload a process runs in, as people name it when they act on it: the
//! systemd unit to restart, the container (runtime, id, name) or the Kubernetes pod.
//! Found from the process's cgroup v2 path and the node's own runtime state
//! (`source::workload`); carried by records so that a capture replays with the same
//! names. Every part is optional: a host without that information has none of it.
use std::fmt;

use serde::Serialize;

use crate::base::record::Text;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Workload {
    /// The systemd service or scope unit (`nginx.service`, `session-3.scope`). Not
    /// set for a container's own scope (`docker-<id>.scope`): the container names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<Text>,
    /// Set when `unit` belongs to the systemd user manager of this uid
    /// (`user@1000.service`), not to the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_user: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
}

impl Workload {
    pub fn is_empty(&self) -> bool {
        self.unit.is_none() && self.container.is_none() && self.pod.is_none()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    Lxc,
    /// crun run directly (no engine above it): its id is the name it was given.
    Crun,
    /// A container of a Kubernetes pod whose cgroup (the cgroupfs driver's bare id)
    /// does not say which CRI runtime made it, and whose state was not found.
    Cri,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
            Runtime::Lxc => "lxc",
            Runtime::Crun => "crun",
            Runtime::Cri => "cri",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Container {
    pub runtime: Runtime,
    /// The runtime's id: 64 hex digits (LXC: the container's name).
    pub id: Text,
    /// The name the runtime gave it (`docker ps`, `podman ps`, the pod spec's
    /// container name), when its on-node state says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Text>,
    /// The runtime's monitor of that container (conmon), not the container itself.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub monitor: bool,
}

impl Container {
    /// The id as `docker ps` shows it; ids that are names (LXC, crun) whole.
    pub fn short_id(&self) -> &str {
        match self.runtime {
            Runtime::Lxc | Runtime::Crun => &self.id,
            _ => &self.id[..self.id.len().min(12)],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Pod {
    /// The pod's UID, with dashes (the systemd driver writes underscores).
    pub uid: Text,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Text>,
}

/// The most specific name first: `pod default/web container app`, `container web
/// (docker 0123456789ab)`, `nginx.service`.
impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        if let Some(p) = &self.pod {
            match (&p.namespace, &p.name) {
                (Some(ns), Some(name)) => write!(f, "pod {ns}/{name}")?,
                _ => write!(f, "pod {}", p.uid)?,
            }
            sep = " ";
        }
        if let Some(c) = &self.container {
            let what = if c.monitor {
                "monitor of container"
            } else {
                "container"
            };
            match (&c.name, self.pod.is_some()) {
                (Some(name), true) => write!(f, "{sep}{what} {name}")?,
                (Some(name), false) if **name == *c.id => {
                    write!(f, "{sep}{what} {name} ({})", c.runtime.name())?
                }
                (Some(name), false) => write!(
                    f,
                    "{sep}{what} {name} ({} {})",
                    c.runtime.name(),
                    c.short_id()
                )?,
                (None, _) => write!(f, "{sep}{what} {} {}", c.runtime.name(), c.short_id())?,
            }
            sep = " ";
        }
        if let Some(u) = &self.unit {
            if self.container.is_none() && self.pod.is_none() {
                write!(f, "{sep}{u}")?;
                if let Some(uid) = self.unit_user {
                    write!(f, " (user {uid})")?;
                }
            }
        }
        Ok(())
    }
}
