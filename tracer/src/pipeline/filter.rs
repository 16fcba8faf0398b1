//! Record filters of `watch`, `record` and `explain` (--port, --addr, --pid, --comm,
//! --unit, --container, --pod, --netns). Each given criterion must match; within
//! one, any value may. Loss records always pass: a filter must never hide that
//! evidence is missing.
//!
//! Workloads and namespace names come from the host model (the workload and
//! addresses context records), so a capture is filtered offline as it was live.
use std::net::{IpAddr, SocketAddr};

use crate::{
    base::{
        record::{Kind, Proc, Record},
        workload::Workload,
    },
    enrich::host::Host,
    explain::Explanation,
};

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub ports: Vec<u16>,
    pub addrs: Vec<IpAddr>,
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    /// systemd units (`nginx.service`; `nginx` means `nginx.service`).
    pub units: Vec<String>,
    /// Containers by name, or by a prefix of their id.
    pub containers: Vec<String>,
    /// Pods as (namespace, name).
    pub pods: Vec<(String, String)>,
    pub netns: Vec<NetnsSel>,
    /// CLOCK_MONOTONIC bounds (replay's --since/--until).
    pub window: Option<(u64, u64)>,
}

/// A network namespace by inode or by `ip netns` name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetnsSel {
    Inode(u32),
    Name(String),
}

impl NetnsSel {
    fn is(&self, ns: u32, host: &Host) -> bool {
        match self {
            NetnsSel::Inode(i) => *i == ns,
            NetnsSel::Name(n) => host.netns_name(ns) == Some(n.as_str()),
        }
    }
}

impl Filter {
    fn in_window(&self, mono_ns: u64) -> bool {
        self.window
            .is_none_or(|(from, to)| (from..=to).contains(&mono_ns))
    }

    pub fn matches(&self, r: &Record, host: &Host) -> bool {
        if !self.in_window(r.mono_ns) {
            return false;
        }
        // Neither names an endpoint; a workload record names the owners that follow.
        if matches!(r.kind, Kind::Loss | Kind::Workload) {
            return true;
        }
        self.check(
            r.src.iter().chain(r.dst.iter()),
            r.owner.iter(),
            r.netns.iter().copied(),
            host,
        )
    }

    /// An explanation matches on its endpoints, on its process or culprit, and on
    /// either end's namespace.
    pub fn matches_explanation(&self, e: &Explanation, host: &Host) -> bool {
        self.in_window(e.mono_ns)
            && self.check(
                e.src.iter().chain(e.dst.iter()),
                e.process.iter().chain(e.culprit.iter()),
                e.netns.iter().chain(e.server_netns.iter()).copied(),
                host,
            )
    }

    /// What `record` writes: context always (the explanations of what it keeps
    /// need it: listeners, namespaces, exits, rules, workloads), and evidence unless
    /// its owner fails the process, workload or namespace criteria. Evidence with no
    /// owner (the peer kernel's answer: an RST for a closed port, a dropped SYN) is
    /// kept, so that the stories of what is kept stay whole; listeners opening and
    /// closing are context too.
    pub fn keeps(&self, r: &Record, host: &Host) -> bool {
        let context = matches!(
            r.kind,
            Kind::Loss
                | Kind::Workload
                | Kind::Listener
                | Kind::Addresses
                | Kind::ProcessExit
                | Kind::Socket
                | Kind::FirewallRule
        ) || (r.kind == Kind::State
            && (r.old_state == Some(crate::base::record::TcpState::Listen)
                || r.new_state == Some(crate::base::record::TcpState::Listen)));
        if context {
            return true;
        }
        self.ends_ok(r.src.iter().chain(r.dst.iter()))
            && (r.owner.is_none() || self.owners_ok(r.owner.iter(), r.netns.iter().copied(), host))
    }

    fn check<'a>(
        &self,
        ends: impl Iterator<Item = &'a SocketAddr> + Clone,
        procs: impl Iterator<Item = &'a Proc> + Clone,
        netns: impl Iterator<Item = u32> + Clone,
        host: &Host,
    ) -> bool {
        self.ends_ok(ends) && self.owners_ok(procs, netns, host)
    }

    fn ends_ok<'a>(&self, ends: impl Iterator<Item = &'a SocketAddr> + Clone) -> bool {
        if !self.ports.is_empty() && !ends.clone().any(|a| self.ports.contains(&a.port())) {
            return false;
        }
        self.addrs.is_empty() || ends.clone().any(|a| self.addrs.contains(&a.ip()))
    }

    /// The process, workload and namespace criteria.
    fn owners_ok<'a>(
        &self,
        procs: impl Iterator<Item = &'a Proc> + Clone,
        netns: impl Iterator<Item = u32> + Clone,
        host: &Host,
    ) -> bool {
        if !self.pids.is_empty() && !procs.clone().any(|p| self.pids.contains(&p.pid)) {
            return false;
        }
        if !self.comms.is_empty()
            && !procs
                .clone()
                .any(|p| self.comms.iter().any(|c| **c == *p.comm))
        {
            return false;
        }
        if self.units.is_empty() && self.containers.is_empty() && self.pods.is_empty() {
            return self.netns_ok(netns, host);
        }
        let workloads = procs.filter_map(|p| {
            p.workload
                .as_ref()
                .or_else(|| p.cgroup.and_then(|id| host.workload(id)))
        });
        if !self.units.is_empty() && !workloads.clone().any(|w| self.unit_is(w)) {
            return false;
        }
        if !self.containers.is_empty() && !workloads.clone().any(|w| self.container_is(w)) {
            return false;
        }
        if !self.pods.is_empty() && !workloads.clone().any(|w| self.pod_is(w)) {
            return false;
        }
        self.netns_ok(netns, host)
    }

    fn netns_ok(&self, mut netns: impl Iterator<Item = u32>, host: &Host) -> bool {
        self.netns.is_empty() || netns.any(|ns| self.netns.iter().any(|s| s.is(ns, host)))
    }

    fn unit_is(&self, w: &Workload) -> bool {
        let Some(unit) = w.unit.as_deref() else {
            return false;
        };
        self.units
            .iter()
            .any(|u| unit == u || unit.strip_suffix(".service") == Some(u.as_str()))
    }

    fn container_is(&self, w: &Workload) -> bool {
        let Some(c) = &w.container else {
            return false;
        };
        self.containers
            .iter()
            .any(|x| c.name.as_deref() == Some(x.as_str()) || c.id.starts_with(x.as_str()))
    }

    fn pod_is(&self, w: &Workload) -> bool {
        let Some(p) = &w.pod else { return false };
        self.pods.iter().any(|(ns, name)| {
            p.namespace.as_deref() == Some(ns.as_str()) && p.name.as_deref() == Some(name.as_str())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> Record {
        let mut r = Record::new(Kind::RstReceived, 0, String::new());
        r.src = Some("10.0.0.1:4000".parse().unwrap());
        r.dst = Some("10.0.0.2:8080".parse().unwrap());
        r.owner = Some(Proc {
            pid: 42,
            comm: "curl".into(),
            cgroup: None,
            workload: None,
        });
        r
    }

    #[test]
    fn every_criterion_must_match() {
        let r = rec();
        assert!(Filter::default().matches(&r, &Host::default()));
        let f = Filter {
            ports: vec![8080],
            ..Default::default()
        };
        assert!(f.matches(&r, &Host::default()));
        let f = Filter {
            ports: vec![9],
            ..Default::default()
        };
        assert!(!f.matches(&r, &Host::default()));
        let f = Filter {
            ports: vec![8080],
            pids: vec![41],
            ..Default::default()
        };
        assert!(!f.matches(&r, &Host::default()));
        let f = Filter {
            addrs: vec!["10.0.0.2".parse().unwrap()],
            comms: vec!["curl".into()],
            ..Default::default()
        };
        assert!(f.matches(&r, &Host::default()));
        let mut unowned = rec();
        unowned.owner = None;
        assert!(!Filter {
            pids: vec![42],
            ..Default::default()
        }
        .matches(&unowned, &Host::default()));
    }

    #[test]
    fn workloads_and_namespaces_match_live_and_from_context_records() {
        use crate::base::workload::{Container, Pod, Runtime};
        let h = Host::default();
        let mut r = rec();
        let w = Workload {
            unit: None,
            unit_user: None,
            container: Some(Container {
                runtime: Runtime::Containerd,
                id: "4f797c539e6c745de61a93ca3ff892358ecbcaccd8414d5db545c38428142970".into(),
                name: Some("app".into()),
                monitor: false,
            }),
            pod: Some(Pod {
                uid: "u".into(),
                qos: None,
                namespace: Some("shop".into()),
                name: Some("web-0".into()),
            }),
        };
        r.owner.as_mut().unwrap().workload = Some(std::sync::Arc::new(w.clone()));
        r.netns = Some(4026532301);
        let f = |g: fn(&mut Filter)| {
            let mut f = Filter::default();
            g(&mut f);
            f
        };
        for (want, filter) in [
            (true, f(|f| f.pods = vec![("shop".into(), "web-0".into())])),
            (false, f(|f| f.pods = vec![("shop".into(), "web-1".into())])),
            (
                false,
                f(|f| f.pods = vec![("default".into(), "web-0".into())]),
            ),
            (true, f(|f| f.containers = vec!["app".into()])),
            (true, f(|f| f.containers = vec!["4f797c53".into()])),
            (false, f(|f| f.containers = vec!["db".into()])),
            (false, f(|f| f.units = vec!["app".into()])),
            (true, f(|f| f.netns = vec![NetnsSel::Inode(4026532301)])),
            (
                false,
                f(|f| f.netns = vec![NetnsSel::Name("server-ns".into())]),
            ),
        ] {
            assert_eq!(filter.matches(&r, &h), want, "{filter:?}");
        }
        // Offline: the owner carries only its cgroup id, which a workload record
        // named; the namespace's name comes from its addresses record.
        let mut h = Host::default();
        let mut named = Record::new(Kind::Workload, 0, String::new());
        named.cgroup = Some(7);
        named.workload = Some(Box::new(Workload {
            unit: Some("web.service".into()),
            ..Default::default()
        }));
        h.on_record(&named);
        let mut addrs = Record::new(Kind::Addresses, 0, String::new());
        addrs.netns = Some(4026532301);
        addrs.addrs = Some(vec![]);
        addrs.netns_name = Some("server-ns".into());
        h.on_record(&addrs);
        let o = r.owner.as_mut().unwrap();
        o.workload = None;
        o.cgroup = Some(7);
        for (want, filter) in [
            (true, f(|f| f.units = vec!["web.service".into()])),
            (true, f(|f| f.units = vec!["web".into()])),
            (false, f(|f| f.units = vec!["db".into()])),
            (false, f(|f| f.pods = vec![("shop".into(), "web-0".into())])),
            (
                true,
                f(|f| f.netns = vec![NetnsSel::Name("server-ns".into())]),
            ),
        ] {
            assert_eq!(filter.matches(&r, &h), want, "{filter:?}");
        }
    }

    #[test]
    fn record_keeps_context_and_unowned_evidence() {
        let h = Host::default();
        let f = Filter {
            pids: vec![7],
            ..Default::default()
        };
        let r = rec();
        assert!(!f.keeps(&r, &h), "evidence of another process");
        let mut unowned = rec();
        unowned.owner = None;
        assert!(f.keeps(&unowned, &h), "the peer kernel's answer");
        let mut close = rec();
        close.kind = Kind::State;
        close.old_state = Some(crate::base::record::TcpState::Listen);
        assert!(f.keeps(&close, &h), "a listener closing");
        let ports = Filter {
            ports: vec![9],
            ..Default::default()
        };
        assert!(!ports.keeps(&unowned, &h));
    }

    #[test]
    fn losses_always_pass() {
        let r = Record::new(Kind::Loss, 0, String::new());
        assert!(Filter {
            ports: vec![1],
            pids: vec![2],
            ..Default::default()
        }
        .matches(&r, &Host::default()));
    }
}
