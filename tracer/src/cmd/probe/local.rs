//! What listens on the target's port on this host: in every network namespace (a
//! service bound in a container's namespace, or only to 127.0.0.1, is the usual
//! surprise), with the owning process and its systemd unit or container.
use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::PathBuf,
};

use serde::Serialize;

use crate::{
    base::record::Proc,
    source::{netns, workload},
};

#[derive(Clone, Debug, Serialize)]
pub struct LocalListener {
    pub addr: SocketAddr,
    pub netns: u32,
    /// `ip netns` name of the namespace, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<Proc>,
    /// The systemd unit, container or pod of the owner, from its cgroup, as
    /// explanations name it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Connections waiting in the accept queue, and its limit.
    pub queue_depth: u32,
    pub backlog: u32,
    /// True when a connect to the target in its namespace would reach it.
    pub accepts_target: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Local {
    /// The namespace that has the target's address (None: not on this host).
    pub target_netns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_netns_name: Option<String>,
    pub listeners: Vec<LocalListener>,
    #[serde(skip)]
    pub missing: Vec<String>,
    /// Where each namespace can be entered, by inode.
    #[serde(skip)]
    pub paths: HashMap<u32, PathBuf>,
}

/// Inode of the calling thread's network namespace.
pub fn own_netns() -> Option<u32> {
    fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino() as u32)
}

/// `ip netns` names by namespace inode (the resolver's reading of /run/netns).
pub fn netns_names() -> HashMap<u32, String> {
    workload::names::netns_names(&[PathBuf::from(netns::IP_NETNS_DIR)])
        .into_iter()
        .map(|(ino, n)| (ino, n.to_string()))
        .collect()
}

/// The systemd unit, container or pod a process runs in, as explanations name it
/// (`nginx.service`, `container web (docker 0123456789ab)`).
pub fn unit_of(pid: u32) -> Option<String> {
    workload::of_pid(pid)
        .filter(|w| !w.is_empty())
        .map(|w| w.to_string())
}

/// Listeners on `port` in every namespace this process can enter, and which
/// namespace holds `ip`.
pub fn scan(ip: IpAddr, port: u16) -> Local {
    let mut local = Local::default();
    let own = own_netns();
    let names = netns_names();
    let mut spaces: HashMap<u32, PathBuf> = netns::scan_namespaces()
        .into_iter()
        .map(|(ino, r)| (ino, r.path))
        .collect();
    if let Some(o) = own {
        spaces.insert(o, PathBuf::from("/proc/thread-self/ns/net"));
    }
    let mut found = Vec::new();
    let mut holders = Vec::new();
    for (&ino, path) in &spaces {
        let res = if Some(ino) == own {
            netns::dump_listeners().and_then(|l| Ok((netns::local_addresses()?, l)))
        } else {
            netns::in_netns(path, || {
                Ok((netns::local_addresses()?, netns::dump_listeners()?))
            })
        };
        match res {
            Ok((addrs, listeners)) => {
                if addrs.contains(&ip) {
                    holders.push(ino);
                }
                found.extend(
                    listeners
                        .into_iter()
                        .filter(|l| l.addr.port() == port)
                        .map(|l| (ino, l)),
                );
            }
            Err(e) => local
                .missing
                .push(format!("listeners of netns {ino}: {e:#}")),
        }
    }
    local.target_netns = if ip.is_loopback() || holders.contains(&own.unwrap_or(0)) {
        own
    } else {
        holders.iter().min().copied()
    };
    local.target_netns_name = local.target_netns.and_then(|n| names.get(&n).cloned());
    let inodes: Vec<u32> = found
        .iter()
        .map(|(_, l)| l.inode)
        .filter(|&i| i != 0)
        .collect();
    let owners = netns::socket_owners(&inodes);
    let target = SocketAddr::new(ip, port);
    local.listeners = found
        .into_iter()
        .map(|(ns, l)| {
            let owner = owners.get(&l.inode).cloned();
            LocalListener {
                addr: l.addr,
                netns: ns,
                netns_name: names.get(&ns).cloned(),
                unit: owner.as_ref().and_then(|p| unit_of(p.pid)),
                owner,
                queue_depth: l.depth,
                backlog: l.backlog,
                accepts_target: Some(ns) == local.target_netns
                    && crate::enrich::host::accepts(l.addr, target),
            }
        })
        .collect();
    local
        .listeners
        .sort_by_key(|l| (!l.accepts_target, l.netns, l.addr));
    // SAFETY: geteuid has no preconditions.
    if local.listeners.iter().any(|l| l.owner.is_none()) && unsafe { libc::geteuid() } != 0 {
        local
            .missing
            .push("the owners of other users' listeners (needs root)".into());
    }
    local.paths = spaces;
    local
}
