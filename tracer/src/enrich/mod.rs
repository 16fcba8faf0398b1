//! Stage 4, enrich (uses `base`, and `source`'s context records for the host model's
//! snapshot; the host model in `host` is fed only from records).
//!
//! Fills in what one event alone cannot say: the owner of sockets whose events carry
//! no socket address (errno reports), and of listeners created before rstrace started.
//! Owners only ever come from socket ownership, never from the task a softirq ran in.
pub mod host;

use std::sync::Arc;

use crate::{
    base::{
        generations::Generations,
        reasons,
        record::{Kind, OwnerSource, Proc, Record, TcpState},
    },
    enrich::host::Host,
};

/// Sockets' 4-tuples are remembered at least 15 s after their last event, less under
/// a storm of short-lived sockets (then at least the last 16k): an errno report comes
/// in the same call chain as the socket's own event, so the join needs little memory.
const SOCKET_GENERATION_NS: u64 = 15 * 1_000_000_000;
const SOCKET_GENERATION_CAP: usize = 16_384;

#[derive(Clone, Debug)]
struct Seen {
    owner: Option<Proc>,
    netns: Option<u32>,
}

pub struct Enricher {
    sockets: Generations<Seen>,
}

impl Default for Enricher {
    fn default() -> Self {
        Enricher {
            sockets: Generations::new(SOCKET_GENERATION_CAP, SOCKET_GENERATION_NS),
        }
    }
}

impl Enricher {
    /// Completes `r`; false when the record is noise to be dropped (the spurious
    /// second errno report of a failed blocking connect, with error 0 and port 0).
    pub fn process(&mut self, r: &mut Record, host: &Host) -> bool {
        if r.kind == Kind::Error && r.errno == Some(0) && r.dst.is_none_or(|d| d.port() == 0) {
            return false;
        }
        // Drops are oriented by packet, not by socket; loss and overflow have no tuple;
        // context records are the host model's (a socket from before the agent is
        // remembered there for its whole life, not for a generation).
        let socket_tuple = !matches!(
            r.kind,
            Kind::Drop
                | Kind::Loss
                | Kind::Overflow
                | Kind::Socket
                | Kind::Listener
                | Kind::Addresses
                | Kind::ProcessExit
                | Kind::FirewallRule
                | Kind::Workload
        );
        if socket_tuple && r.owner.is_none() {
            // A socket from before the agent: the kernel never saw its owner.
            if let (Some(ns), Some(s), Some(d)) = (r.netns, r.src, r.dst) {
                if let Some(o) = host.existing_owner(ns, s, d) {
                    r.owner = Some(o.clone());
                    r.owner_source = Some(OwnerSource::Proc);
                }
            }
        }
        if socket_tuple {
            if let (Some(s), Some(d)) = (r.src, r.dst) {
                let key = self.sockets.key(&(s, d));
                if r.owner.is_some() {
                    self.sockets.insert(
                        key,
                        Seen {
                            owner: r.owner.clone(),
                            netns: r.netns,
                        },
                        r.mono_ns,
                    );
                } else if let Some(seen) = self.sockets.get(key) {
                    if seen.owner.is_some() {
                        r.owner = seen.owner.clone();
                        r.owner_source = Some(OwnerSource::Socket);
                    }
                    if r.netns.is_none() {
                        r.netns = seen.netns;
                    }
                }
            }
        }
        if r.owner.is_none() && self.is_about_listener(r) {
            if let (Some(ns), Some(port)) = (r.netns, self.listener_port(r)) {
                if let Some(o) = host
                    .listeners(ns)
                    .iter()
                    .find(|l| l.addr.port() == port)
                    .and_then(|l| l.owner.clone())
                {
                    r.owner = Some(o);
                    r.owner_source = Some(OwnerSource::Listener);
                }
            }
        }
        // The owner's workload, named by a context record (captures store the id).
        if let Some(o) = r.owner.as_mut() {
            if o.workload.is_none() {
                o.workload = o.cgroup.and_then(|id| host.workload(id)).map(Arc::clone);
            }
        }
        true
    }

    fn is_about_listener(&self, r: &Record) -> bool {
        matches!(r.kind, Kind::SynackRetransmit | Kind::Overflow)
            || r.state == Some(TcpState::Listen)
            || r.reason.as_deref() == Some(reasons::TCP_LISTEN_OVERFLOW)
    }

    fn listener_port(&self, r: &Record) -> Option<u16> {
        match r.kind {
            // A drop's destination is the listener's port.
            Kind::Drop => r.dst.map(|d| d.port()),
            _ => r.src.map(|s| s.port()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: Kind, src: &str, dst: &str) -> Record {
        let mut r = Record::new(kind, 1, String::new());
        r.src = Some(src.parse().unwrap());
        r.dst = Some(dst.parse().unwrap());
        r
    }

    #[test]
    fn errno_report_inherits_owner_of_its_socket() {
        let mut e = Enricher::default();
        let h = Host::default();
        let mut rst = rec(Kind::RstReceived, "10.0.0.1:4000", "10.0.0.2:80");
        rst.owner = Some(Proc {
            pid: 7,
            comm: "curl".into(),
            cgroup: None,
            workload: None,
        });
        rst.netns = Some(99);
        assert!(e.process(&mut rst, &h));
        let mut err = rec(Kind::Error, "10.0.0.1:4000", "10.0.0.2:80");
        err.errno = Some(111);
        assert!(e.process(&mut err, &h));
        assert_eq!(err.owner, rst.owner);
        assert_eq!(err.owner_source, Some(OwnerSource::Socket));
        assert_eq!(err.netns, Some(99));
        // Another socket is not joined.
        let mut other = rec(Kind::Error, "10.0.0.1:4001", "10.0.0.2:80");
        assert!(e.process(&mut other, &h));
        assert_eq!(other.owner, None);
    }

    #[test]
    fn drops_the_spurious_second_errno_report() {
        let mut e = Enricher::default();
        let h = Host::default();
        let mut err = rec(Kind::Error, "10.0.0.1:4000", "10.0.0.2:0");
        err.errno = Some(0);
        assert!(!e.process(&mut err, &h));
        let mut soft = rec(Kind::Error, "10.0.0.1:4000", "10.0.0.2:80");
        soft.errno = Some(0);
        assert!(e.process(&mut soft, &h));
    }

    #[test]
    fn listener_events_fall_back_to_the_listener_owner() {
        let mut e = Enricher::default();
        let mut h = Host::default();
        let mut open = rec(Kind::State, "0.0.0.0:8080", "0.0.0.0:0");
        open.old_state = Some(TcpState::Close);
        open.new_state = Some(TcpState::Listen);
        open.netns = Some(5);
        open.owner = Some(Proc {
            pid: 880,
            comm: "python3".into(),
            cgroup: None,
            workload: None,
        });
        h.on_record(&open);
        let mut synack = rec(Kind::SynackRetransmit, "10.0.0.2:8080", "10.0.0.1:5000");
        synack.netns = Some(5);
        assert!(e.process(&mut synack, &h));
        assert_eq!(synack.owner.as_ref().map(|p| p.pid), Some(880));
        assert_eq!(synack.owner_source, Some(OwnerSource::Listener));
        // Another namespace's port 8080 is not this listener.
        let mut elsewhere = rec(Kind::SynackRetransmit, "10.0.0.2:8080", "10.0.0.1:5000");
        elsewhere.netns = Some(6);
        assert!(e.process(&mut elsewhere, &h));
        assert_eq!(elsewhere.owner, None);
    }
}
