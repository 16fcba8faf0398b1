//! Record filters of `watch` (--port, --addr, --pid, --comm). Each given criterion
//! must match; within one, any value may. Loss records always pass: a filter must
//! never hide that evidence is missing.
use std::net::{IpAddr, SocketAddr};

use crate::{
    base::record::{Kind, Proc, Record},
    explain::Explanation,
};

#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub ports: Vec<u16>,
    pub addrs: Vec<IpAddr>,
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    /// CLOCK_MONOTONIC bounds (replay's --since/--until).
    pub window: Option<(u64, u64)>,
}

impl Filter {
    fn in_window(&self, mono_ns: u64) -> bool {
        self.window
            .is_none_or(|(from, to)| (from..=to).contains(&mono_ns))
    }

    pub fn matches(&self, r: &Record) -> bool {
        if !self.in_window(r.mono_ns) {
            return false;
        }
        // Neither names an endpoint; a workload record names the owners that follow.
        if matches!(r.kind, Kind::Loss | Kind::Workload) {
            return true;
        }
        self.check(r.src.iter().chain(r.dst.iter()), r.owner.iter())
    }

    /// An explanation matches on its endpoints and on its process or culprit.
    pub fn matches_explanation(&self, e: &Explanation) -> bool {
        self.in_window(e.mono_ns)
            && self.check(
                e.src.iter().chain(e.dst.iter()),
                e.process.iter().chain(e.culprit.iter()),
            )
    }

    fn check<'a>(
        &self,
        ends: impl Iterator<Item = &'a SocketAddr> + Clone,
        procs: impl Iterator<Item = &'a Proc> + Clone,
    ) -> bool {
        if !self.ports.is_empty() && !ends.clone().any(|a| self.ports.contains(&a.port())) {
            return false;
        }
        if !self.addrs.is_empty() && !ends.clone().any(|a| self.addrs.contains(&a.ip())) {
            return false;
        }
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
        true
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
        assert!(Filter::default().matches(&r));
        let f = Filter {
            ports: vec![8080],
            ..Default::default()
        };
        assert!(f.matches(&r));
        let f = Filter {
            ports: vec![9],
            ..Default::default()
        };
        assert!(!f.matches(&r));
        let f = Filter {
            ports: vec![8080],
            pids: vec![41],
            ..Default::default()
        };
        assert!(!f.matches(&r));
        let f = Filter {
            addrs: vec!["10.0.0.2".parse().unwrap()],
            comms: vec!["curl".into()],
            ..Default::default()
        };
        assert!(f.matches(&r));
        let mut unowned = rec();
        unowned.owner = None;
        assert!(!Filter {
            pids: vec![42],
            ..Default::default()
        }
        .matches(&unowned));
    }

    #[test]
    fn losses_always_pass() {
        let r = Record::new(Kind::Loss, 0, String::new());
        assert!(Filter {
            ports: vec![1],
            pids: vec![2],
            ..Default::default()
        }
        .matches(&r));
    }
}
