//! Listener queues that overflowed: the SYN (or the final ACK) is dropped silently and
//! the client retries until it times out.
//!
//! The kernel's counters show an overflow even when no connection of it is seen here
//! (its client is remote): the `overflow` record is explained on its own too.
use super::{who, Ctx, EventRule, Finding, Rule};
use crate::base::{
    reasons,
    record::{Kind, Queue, QueueKind, Record},
};
use crate::enrich::host::Host;

const WINDOW_NS: u64 = 10_000_000_000;

const SYN_QUEUE_FIX: &str = "sysctl net.ipv4.tcp_syncookies=1, raise net.ipv4.tcp_max_syn_backlog and the listen() backlog; check: nstat -az TcpExtTCPReqQFullDrop";

/// The fix for a full accept queue, then `check`.
fn accept_fix(somaxconn: Option<u32>, check: &str) -> String {
    format!(
        "make the server accept() faster or raise its listen() backlog (capped by net.core.somaxconn{}); {check}",
        somaxconn.map_or(String::new(), |s| format!(" = {s}"))
    )
}

/// `ss` showing whether the listener on `port` is full.
fn ss_full(port: u16) -> String {
    format!("ss -tlnp 'sport = :{port}' (Recv-Q above Send-Q means full)")
}

fn waiting(q: Option<&Queue>) -> String {
    q.map_or(String::new(), |q| {
        format!(" ({} waiting, backlog {})", q.depth, q.backlog)
    })
}

pub struct AcceptQueueOverflow;

impl Rule for AcceptQueueOverflow {
    fn id(&self) -> &'static str {
        "accept_queue_overflow"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let port = c.server_port();
        let ns = c.server_netns?;
        let in_story = c.story.drops(reasons::TCP_LISTEN_OVERFLOW).next().is_some()
            || c.story.evidence.iter().any(|r| {
                r.kind == Kind::SynackRetransmit
                    && r.queue.as_ref().is_some_and(|q| q.depth > q.backlog)
            });
        let seen = c.host.overflow_near(ns, port, c.at_ns, WINDOW_NS);
        let ov = seen.filter(|o| o.record.queue_kind == Some(QueueKind::Accept));
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
        let q = waiting(queue.as_ref());
        Some(Finding {
            cause: self.id(),
            confidence: if ov.is_some() { 0.9 } else { 0.8 },
            reason: format!(
                "the accept queue of {}'s listener on port {port} is full{q}: it does not accept() connections fast enough",
                who(&listener)
            ),
            fix: accept_fix(
                somaxconn,
                &format!(
                    "check: {}, nstat -az TcpExtListenOverflows",
                    ss_full(port)
                ),
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
        if ov.record.queue_kind != Some(QueueKind::Syn) {
            return None;
        }
        Some(Finding {
            cause: self.id(),
            confidence: 0.7,
            reason: format!(
                "the SYN queue in netns {} overflowed ({} SYNs dropped): too many half-open connections (SYN flood, or syncookies off)",
                c.host.netns_label(ns),
                ov.record.drops.unwrap_or(0)
            ),
            fix: SYN_QUEUE_FIX.into(),
            culprit: None,
        })
    }
}

/// An `overflow` record (the backlog counters' poll): a queue dropped connection
/// attempts, whether or not any of them is seen here.
pub struct QueueOverflowRecord;

impl EventRule for QueueOverflowRecord {
    fn id(&self) -> &'static str {
        "accept_queue_overflow"
    }

    fn outcome(&self) -> &'static str {
        "overflow"
    }

    fn check(&self, host: &Host, r: &Record) -> Option<Finding> {
        if r.kind != Kind::Overflow {
            return None;
        }
        let drops = r.drops.unwrap_or(0);
        let ns = r.netns.unwrap_or(0);
        let label = host.netns_label(ns);
        let (cause, reason, fix) = match (r.queue_kind, r.src) {
            (Some(QueueKind::Syn), _) => (
                "syn_queue_overflow",
                format!(
                    "the SYN queue in netns {label} overflowed: {drops} SYNs dropped (SYN flood, or syncookies off)"
                ),
                SYN_QUEUE_FIX.to_string(),
            ),
            (_, None) => {
                // The queue drained before the counters' poll read the listeners: name
                // the namespace's listeners as the candidates, never a port 0.
                let mut candidates: Vec<String> = host
                    .listeners(ns)
                    .iter()
                    .map(|l| match &l.owner {
                        Some(p) => format!("{} ({})", l.addr, p.named()),
                        None => l.addr.to_string(),
                    })
                    .collect();
                candidates.sort();
                candidates.dedup();
                (
                    self.id(),
                    format!(
                        "{drops} connection attempts were dropped in netns {label}: an accept queue was full (it drained before its listener could be read; {})",
                        if candidates.is_empty() {
                            "no listener is known there".to_string()
                        } else {
                            format!("listeners there: {}", candidates.join(", "))
                        }
                    ),
                    accept_fix(
                        r.somaxconn,
                        &match host.netns_name(ns) {
                            Some(_) => format!(
                                "check: {} (Recv-Q above Send-Q means full) and {}",
                                super::ns_exec(host, ns, "ss -tlnp"),
                                super::ns_exec(host, ns, "nstat -az TcpExtListenOverflows")
                            ),
                            None => format!("check in netns {ns}: ss -tlnp (Recv-Q above Send-Q means full) and nstat -az TcpExtListenOverflows"),
                        },
                    ),
                )
            }
            (_, Some(l)) => (
                self.id(),
                format!(
                    "{drops} connection attempts to {l} were dropped: the accept queue of {} is full{}, it does not accept() fast enough",
                    who(&r.owner),
                    waiting(r.queue.as_ref())
                ),
                accept_fix(r.somaxconn, &format!("check: {}", ss_full(l.port()))),
            ),
        };
        Some(Finding {
            cause,
            confidence: 0.9,
            reason: match r.src {
                Some(l) => format!("listener {l}: {reason}"),
                None => reason,
            },
            fix,
            culprit: r.owner.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::base::record::{Kind, Queue, QueueKind, Record};
    use crate::explain::testing::*;

    fn overflow(queue_kind: QueueKind, listener: Option<&str>, drops: u64) -> Record {
        let mut r = rec(Kind::Overflow, 500, S, S, SNS);
        r.src = listener.map(|l| l.parse().unwrap());
        r.dst = None;
        r.queue_kind = Some(queue_kind);
        r.drops = Some(drops);
        r
    }

    #[test]
    fn table() {
        check(vec![
            Row {
                name: "record: a known listener's accept queue",
                records: vec![
                    listening(1, S, SNS, 880),
                    with(overflow(QueueKind::Accept, Some(S), 3), |r| {
                        r.queue = Some(Queue {
                            depth: 2,
                            backlog: 1,
                        });
                        r.somaxconn = Some(4096);
                        r.owner = python3(880);
                    }),
                ],
                cause: "accept_queue_overflow",
                phrases: &[
                    "listener 10.0.0.2:8080: 3 connection attempts to 10.0.0.2:8080 were dropped: the accept queue of python3[880] is full (2 waiting, backlog 1)",
                    "(capped by net.core.somaxconn = 4096); check: ss -tlnp 'sport = :8080' (Recv-Q above Send-Q means full)",
                ],
            },
            Row {
                name: "record: the listener not read",
                records: vec![
                    listening(1, S, SNS, 880),
                    overflow(QueueKind::Accept, None, 7),
                ],
                cause: "accept_queue_overflow",
                phrases: &[
                    "7 connection attempts were dropped in netns 200: an accept queue was full",
                    "listeners there: 10.0.0.2:8080 (python3[880])",
                    "check in netns 200: ss -tlnp (Recv-Q above Send-Q means full)",
                ],
            },
            Row {
                name: "record: the SYN queue",
                records: vec![overflow(QueueKind::Syn, Some(S), 5)],
                cause: "syn_queue_overflow",
                phrases: &[
                    "listener 10.0.0.2:8080: the SYN queue in netns 200 overflowed: 5 SYNs dropped",
                    "sysctl net.ipv4.tcp_syncookies=1",
                ],
            },
            Row {
                name: "story: SYN-ACKs retransmitted from a full queue",
                records: vec![
                    listening(1, S, SNS, 880),
                    syn_retransmit(1_000),
                    with(rec(Kind::SynackRetransmit, 1_000, S, C, SNS), |r| {
                        r.queue = Some(Queue {
                            depth: 5,
                            backlog: 4,
                        });
                    }),
                    error(3_000, libc::ETIMEDOUT),
                ],
                cause: "accept_queue_overflow",
                phrases: &[
                    "curl[4121] -> 10.0.0.2:8080 timed out: the accept queue of python3[880]'s listener on port 8080 is full (5 waiting, backlog 4)",
                    "check: ss -tlnp 'sport = :8080' (Recv-Q above Send-Q means full), nstat -az TcpExtListenOverflows",
                ],
            },
            Row {
                name: "story: timeouts after a SYN queue overflow",
                records: vec![
                    overflow(QueueKind::Syn, Some(S), 5),
                    syn_retransmit(1_000),
                    error(3_000, libc::ETIMEDOUT),
                ],
                cause: "syn_queue_overflow",
                phrases: &[
                    "curl[4121] -> 10.0.0.2:8080 timed out: the SYN queue in netns 200 overflowed (5 SYNs dropped): too many half-open connections",
                ],
            },
        ]);
    }
}
