//! Listener queues that overflowed: the SYN (or the final ACK) is dropped silently and
//! the client retries until it times out.
use super::{who, Ctx, Finding, Rule};
use crate::base::record::{Kind, Record, SCHEMA_VERSION};
use crate::enrich::host::Host;
use crate::explain::Explanation;

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

/// The explanation of an `overflow` record, which stands alone (no story).
pub fn overflow(host: &Host, r: &Record) -> Option<Explanation> {
    let listener = r.src;
    let port = listener.map_or(0, |l| l.port());
    let (cause, reason, fix) = match r.queue_kind {
            Some("syn") => (
                "syn_queue_overflow",
                format!(
                    "the SYN queue in netns {} overflowed: {} SYNs dropped (SYN flood, or syncookies off)",
                    r.netns.unwrap_or(0),
                    r.drops.unwrap_or(0)
                ),
                "sysctl net.ipv4.tcp_syncookies=1, raise net.ipv4.tcp_max_syn_backlog and the listen() backlog; check: nstat -az TcpExtTCPReqQFullDrop".to_string(),
            ),
            _ if listener.is_none() => {
                // The queue drained before the counters' poll read the listeners: name
                // the namespace's listeners as the candidates, never a port 0.
                let ns = r.netns.unwrap_or(0);
                let mut candidates: Vec<String> = host
                    .listeners(ns)
                    .iter()
                    .map(|l| match &l.owner {
                        Some(p) => format!("{} ({}[{}])", l.addr, p.comm, p.pid),
                        None => l.addr.to_string(),
                    })
                    .collect();
                candidates.sort();
                candidates.dedup();
                (
                    "accept_queue_overflow",
                    format!(
                        "{} connection attempts were dropped in netns {ns}: an accept queue was full (it drained before its listener could be read; {})",
                        r.drops.unwrap_or(0),
                        if candidates.is_empty() {
                            "no listener is known there".to_string()
                        } else {
                            format!("listeners there: {}", candidates.join(", "))
                        }
                    ),
                    format!(
                        "make the server accept() faster or raise its listen() backlog (capped by net.core.somaxconn{}); check in netns {ns}: ss -tlnp (Recv-Q above Send-Q means full) and nstat -az TcpExtListenOverflows",
                        r.somaxconn.map_or(String::new(), |s| format!(" = {s}"))
                    ),
                )
            }
            _ => (
                "accept_queue_overflow",
                format!(
                    "{} connection attempts to {} were dropped: the accept queue of {} is full{}, it does not accept() fast enough",
                    r.drops.unwrap_or(0),
                    listener.map_or("a listener".into(), |l| l.to_string()),
                    who(&r.owner),
                    r.queue.as_ref().map_or(String::new(), |q| format!(" ({} waiting, backlog {})", q.depth, q.backlog))
                ),
                format!(
                    "make the server accept() faster or raise its listen() backlog (capped by net.core.somaxconn{}); check: ss -tlnp 'sport = :{port}' (Recv-Q above Send-Q means full)",
                    r.somaxconn.map_or(String::new(), |s| format!(" = {s}"))
                ),
            ),
        };
    Some(Explanation {
        v: SCHEMA_VERSION,
        kind: "failure",
        time: String::new(),
        mono_ns: r.mono_ns,
        cause,
        confidence: 0.9,
        process: None,
        culprit: r.owner.clone(),
        netns: None,
        server_netns: r.netns,
        src: None,
        dst: listener,
        errno_name: None,
        errno_inferred: false,
        outcome: "overflow",
        explanation: match listener {
            Some(l) => format!("listener {l}: {reason}"),
            None => reason,
        },
        fix,
        count: 1,
        window_ms: None,
        evidence: Vec::new(),
    })
}
