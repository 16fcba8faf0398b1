//! Listener queues that overflowed: the SYN (or the final ACK) is dropped silently and
//! the client retries until it times out.
use super::{who, Ctx, Finding, Rule};
use crate::base::record::Kind;

const WINDOW_NS: u64 = 10_000_000_000;

pub struct AcceptQueueOverflow;

impl Rule for AcceptQueueOverflow {
    fn id(&self) -> &'static str {
        "accept_queue_overflow"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let port = c.server_port();
        let ns = c.server_netns?;
        let in_story = c.story.drops("TCP_LISTEN_OVERFLOW").next().is_some()
            || c.story.evidence.iter().any(|r| {
                r.kind == Kind::SynackRetransmit
                    && r.queue.as_ref().is_some_and(|q| q.depth > q.backlog)
            });
        let seen = c.host.overflow_near(ns, port, c.at_ns, WINDOW_NS);
        let ov = seen.filter(|o| o.record.queue_kind == Some("accept"));
        if ov.is_none() && !in_story {
            return None;
        }
        let rec = ov.map(|o| &o.record);
        let listener = rec.and_then(|r| r.owner.clone()).or_else(|| {
            c.host
                .listener_for(ns, c.server?)
                .and_then(|l| l.owner.clone())
        });
        let queue = rec
            .and_then(|r| r.queue.clone())
            .or_else(|| c.story.evidence.iter().find_map(|r| r.queue.clone()));
        let somaxconn = rec.and_then(|r| r.somaxconn);
        let q = queue.as_ref().map_or(String::new(), |q| {
            format!(" ({} waiting, backlog {})", q.depth, q.backlog)
        });
        Some(Finding {
            cause: self.id(),
            confidence: if ov.is_some() { 0.9 } else { 0.8 },
            reason: format!(
                "the accept queue of {}'s listener on port {port} is full{q}: it does not accept() connections fast enough",
                who(&listener)
            ),
            fix: format!(
                "make the server accept() faster or raise its listen() backlog (capped by net.core.somaxconn{}); check: ss -tlnp 'sport = :{port}' (Recv-Q above Send-Q means full), nstat -az TcpExtListenOverflows",
                somaxconn.map_or(String::new(), |s| format!(" = {s}"))
            ),
            culprit: listener,
        })
    }
}

pub struct SynQueueOverflow;

impl Rule for SynQueueOverflow {
    fn id(&self) -> &'static str {
        "syn_queue_overflow"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let ns = c.server_netns?;
        let ov = c
            .host
            .overflow_near(ns, c.server_port(), c.at_ns, WINDOW_NS)?;
        if ov.record.queue_kind != Some("syn") {
            return None;
        }
        Some(Finding {
            cause: self.id(),
            confidence: 0.7,
            reason: format!(
                "the SYN queue in netns {ns} overflowed ({} SYNs dropped): too many half-open connections (SYN flood, or syncookies off)",
                ov.record.drops.unwrap_or(0)
            ),
            fix: "sysctl net.ipv4.tcp_syncookies=1, raise net.ipv4.tcp_max_syn_backlog and the listen() backlog; check: nstat -az TcpExtTCPReqQFullDrop".into(),
            culprit: None,
        })
    }
}
