//! Established connections that died: reset by an application (close with unread
//! data, SO_LINGER 0, data after shutdown, TIME_WAIT), by a listener that went away
//! with them still queued, by the peer, by keepalive, or timed out retransmitting to a
//! peer that stopped answering.
use super::{who, Ctx, Finding, Rule};
use crate::base::{
    reasons,
    record::{Kind, Record, TcpState},
};

/// The RST this host sent on an established connection.
fn app_rst<'a>(c: &'a Ctx) -> Option<&'a Record> {
    c.story.rsts_sent().find(|r| {
        !matches!(r.reason.as_deref(), Some(reasons::NO_SOCKET))
            && !matches!(r.state, None | Some(TcpState::Listen | TcpState::SynSent))
    })
}

/// Sent by a kernel timer rather than by the owning process (which is how a
/// keepalive reset looks on kernels without RST reasons).
fn from_timer(r: &Record) -> bool {
    match (&r.task, &r.owner) {
        (Some(t), Some(o)) => t.pid != o.pid,
        _ => false,
    }
}

/// A listener closed (or its process exited) with connections still in its accept
/// queue: the kernel resets every one of them (RST reason TCP_STATE, the same as a
/// SO_LINGER 0 close). Told apart by the child's death running in the closing task
/// within the same instant as its listener's LISTEN->CLOSE.
pub struct ListenerGoneWithQueue;

impl Rule for ListenerGoneWithQueue {
    fn id(&self) -> &'static str {
        "listener_closed_with_queue"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        // A reason other than TCP_STATE is not a queued child's (those are reset by
        // tcp_disconnect, whatever they hold).
        if app_rst(c).is_some_and(|r| r.reason.as_deref().is_some_and(|x| x != reasons::TCP_STATE))
        {
            return None;
        }
        let (closed, death) = c.story.evidence.iter().find_map(|r| {
            if r.kind != Kind::State || r.new_state != Some(TcpState::Close) {
                return None;
            }
            let closed = c.host.closed_with_queue(r.netns?, r.src?, r.mono_ns)?;
            Some((closed, r))
        })?;
        let owner = closed
            .listener
            .owner
            .clone()
            .or_else(|| death.owner.clone());
        let pid = owner.as_ref().map(|p| p.pid);
        let exited = pid.and_then(|p| c.host.exited(p)).is_some();
        let status = pid.and_then(|p| c.host.exit_status(p));
        let n = closed.queued_reset;
        let queued = if n == 1 {
            "1 connection".to_string()
        } else {
            format!("{n} connections")
        };
        let how = match (exited, status) {
            (true, Some(s)) if s.starts_with("exit") => format!("exited ({s})"),
            (true, Some(s)) => format!("was killed by {s}"),
            (true, None) => "exited".to_string(),
            (false, _) => "closed its listening socket".to_string(),
        };
        Some(Finding {
            cause: self.id(),
            confidence: 0.9,
            reason: format!(
                "{} {how} while {queued} waited in the accept queue of {} (never accepted): closing the listener reset each of them (RST reason TCP_STATE, in the same instant; not an application's abort){}",
                who(&owner),
                closed.listener.addr,
                if closed.still_served {
                    "; other sockets still listen there (SO_REUSEPORT): only this one's queue was lost"
                } else {
                    ""
                },
            ),
            fix: format!(
                "find why the server {}: its exit status (journalctl, the supervisor's log); shut down gracefully (stop listening, then accept and serve or close what is queued) and restart without a gap (systemd socket activation, or SO_REUSEPORT with the new process listening first); clients should retry on ECONNRESET before a request is sent",
                if exited { "exited" } else { "closed its listener" }
            ),
            culprit: owner,
        })
    }
}

pub struct ApplicationReset;

impl Rule for ApplicationReset {
    fn id(&self) -> &'static str {
        "reset_by_application"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let rst = app_rst(c)?;
        let owner = rst.owner.clone().or_else(|| {
            c.host
                .existing_owner(rst.netns?, rst.src?, rst.dst?)
                .cloned()
        });
        let (cause, reason, fix) = match rst.reason.as_deref() {
            Some(reasons::TCP_ABORT_ON_CLOSE) => (
                "reset_unread_data",
                format!("{} closed its socket with unread data, which makes the kernel send an RST (reason TCP_ABORT_ON_CLOSE)", who(&owner)),
                "the application must read (or shutdown(SHUT_WR) and drain) what the peer sent before close()",
            ),
            Some(reasons::TCP_STATE) => (
                "reset_linger_zero",
                format!("{} aborted the connection (close with SO_LINGER 0, or a disconnect), sending an RST (reason TCP_STATE)", who(&owner)),
                "remove SO_LINGER {on, 0} unless an abortive close is intended, and close gracefully",
            ),
            Some(reasons::TCP_ABORT_ON_DATA) => (
                "reset_after_shutdown",
                format!("data arrived after {} had closed or shut down its socket (reason TCP_ABORT_ON_DATA)", who(&owner)),
                "the peer keeps sending after this side closed: fix the protocol's close sequence (or read until EOF before closing)",
            ),
            Some(reasons::TCP_TIMEWAIT_SOCKET) => (
                "reset_time_wait",
                "a segment arrived for a connection already in TIME_WAIT (reason TCP_TIMEWAIT_SOCKET)".to_string(),
                "the peer wrote into a connection this side had already closed: fix the close sequence, avoid reusing it",
            ),
            Some(reasons::TCP_KEEPALIVE_TIMEOUT) => return None,
            None if from_timer(rst) => return None,
            Some(other) => (
                "reset_by_application",
                format!("{} reset the connection (RST reason {other})", who(&owner)),
                "look at why that process aborts connections",
            ),
            // Kernels before 6.10 give no reason.
            None => (
                "reset_by_application",
                format!("{} reset the connection (close with unread data or SO_LINGER 0)", who(&owner)),
                "read all data before close() and avoid SO_LINGER {on, 0}",
            ),
        };
        Some(Finding {
            cause,
            confidence: 0.9,
            reason,
            fix: fix.to_string(),
            culprit: owner,
        })
    }
}

pub struct KeepaliveTimeout;

impl Rule for KeepaliveTimeout {
    fn id(&self) -> &'static str {
        "keepalive_timeout"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let rst = c.story.rsts_sent().find(|r| {
            r.reason.as_deref() == Some(reasons::TCP_KEEPALIVE_TIMEOUT)
                || (r.reason.is_none() && r.state == Some(TcpState::Established) && from_timer(r))
        })?;
        Some(Finding {
            cause: self.id(),
            confidence: 0.9,
            reason: format!(
                "keepalive probes to {} got no answer, so the kernel gave the connection up: the peer is gone or the path black-holes it",
                rst.dst.map_or("the peer".into(), |d| d.to_string())
            ),
            fix: "check the peer host and the path (NAT/firewall idle timeouts); tune net.ipv4.tcp_keepalive_time/intvl/probes".into(),
            culprit: None,
        })
    }
}

pub struct FlowTimeout;

impl Rule for FlowTimeout {
    fn id(&self) -> &'static str {
        "flow_timeout"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        if c.errno != Some(libc::ETIMEDOUT) || !c.story.was_established() {
            return None;
        }
        let retrans = c
            .story
            .evidence
            .iter()
            .filter_map(|r| r.retransmits)
            .max()
            .unwrap_or(0);
        let peer = c.story.errno_record().and_then(|r| r.dst);
        Some(Finding {
            cause: self.id(),
            confidence: 0.8,
            reason: format!(
                "the established connection timed out{}: {} stopped answering (peer down, or an idle flow black-holed by a NAT or firewall)",
                if retrans > 0 { format!(" after {retrans} retransmits") } else { String::new() },
                peer.or(c.server).map_or("the peer".into(), |p| p.to_string())
            ),
            fix: "enable TCP keepalives shorter than the middleboxes' idle timeout; check the peer and the path (tcp_retries2 bounds the wait)".into(),
            culprit: None,
        })
    }
}

pub struct ResetByPeer;

impl Rule for ResetByPeer {
    fn id(&self) -> &'static str {
        "reset_by_peer"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let rst = c.story.rst_received()?;
        if !c.story.was_established() && c.errno != Some(libc::ECONNRESET) {
            return None;
        }
        let peer = rst.dst?;
        Some(Finding {
            cause: self.id(),
            confidence: 0.6,
            reason: format!("the peer {peer} reset the connection (its application aborted it, or it lost the connection's state)"),
            fix: format!("look at the application on {} for aborts (SO_LINGER 0, close with unread data) or restarts", peer.ip()),
            culprit: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::base::record::TcpState;
    use crate::base::record::{Kind, Proc, Record};
    use crate::explain::testing::*;

    /// The server's application resets an established connection (RST `reason`, sent
    /// in task `task`); the client gets ECONNRESET.
    fn app_reset(reason: Option<&str>, task: u32) -> Vec<Record> {
        vec![
            with(rec(Kind::RstSent, 10, S, C, SNS), |r| {
                r.reason = reason.map(Into::into);
                r.state = Some(TcpState::Established);
                r.owner = python3(880);
                r.task = Some(Proc {
                    pid: task,
                    comm: "x".into(),
                    cgroup: None,
                    workload: None,
                });
            }),
            client_owned(rec(Kind::RstReceived, 10, C, S, CNS)),
            error(10, libc::ECONNRESET),
        ]
    }

    fn client_died(at_ms: u64, f: impl FnOnce(&mut Record)) -> Record {
        with(client_owned(rec(Kind::State, at_ms, C, S, CNS)), |d| {
            d.old_state = Some(TcpState::Established);
            d.new_state = Some(TcpState::Close);
            f(d);
        })
    }

    /// A listener closed with C's connection in its queue: the child dies in the
    /// closing task and sends an RST with TCP_STATE; the client gets ECONNRESET.
    fn queued_reset() -> Vec<Record> {
        let at = |mut r: Record| {
            r.mono_ns = 100_010_000;
            r
        };
        vec![
            listening(1, S, SNS, 880),
            unlistening(100, S, SNS, 880),
            at(with(rec(Kind::State, 0, S, C, SNS), |d| {
                d.old_state = Some(TcpState::Established);
                d.new_state = Some(TcpState::Close);
                d.owner = python3(880);
                d.task = python3(880);
            })),
            at(with(rec(Kind::RstSent, 0, S, C, SNS), |r| {
                r.state = Some(TcpState::Close);
                r.reason = Some("TCP_STATE".into());
                r.owner = python3(880);
                r.task = python3(880);
            })),
            at(client_owned(rec(Kind::RstReceived, 0, C, S, CNS))),
            at(error(0, libc::ECONNRESET)),
        ]
    }

    #[test]
    fn table() {
        let peer = "192.0.2.9:6379";
        check(vec![
            Row {
                name: "close with unread data",
                records: app_reset(Some("TCP_ABORT_ON_CLOSE"), 880),
                cause: "reset_unread_data",
                phrases: &["curl[4121] -> 10.0.0.2:8080 reset: python3[880] closed its socket with unread data"],
            },
            Row {
                name: "SO_LINGER 0",
                records: app_reset(Some("TCP_STATE"), 880),
                cause: "reset_linger_zero",
                phrases: &["python3[880] aborted the connection (close with SO_LINGER 0, or a disconnect)"],
            },
            Row {
                name: "data after shutdown",
                records: app_reset(Some("TCP_ABORT_ON_DATA"), 880),
                cause: "reset_after_shutdown",
                phrases: &["data arrived after python3[880] had closed or shut down its socket"],
            },
            Row {
                name: "TIME_WAIT",
                records: app_reset(Some("TCP_TIMEWAIT_SOCKET"), 880),
                cause: "reset_time_wait",
                phrases: &["a segment arrived for a connection already in TIME_WAIT"],
            },
            Row {
                name: "another reason",
                records: app_reset(Some("NOT_SPECIFIED"), 880),
                cause: "reset_by_application",
                phrases: &["python3[880] reset the connection (RST reason NOT_SPECIFIED)"],
            },
            Row {
                name: "no reason (before 6.10), in the owner's task",
                records: app_reset(None, 880),
                cause: "reset_by_application",
                phrases: &["python3[880] reset the connection (close with unread data or SO_LINGER 0)"],
            },
            Row {
                name: "keepalive, by reason",
                records: app_reset(Some("TCP_KEEPALIVE_TIMEOUT"), 880),
                cause: "keepalive_timeout",
                phrases: &["keepalive probes to 10.0.0.1:40000 got no answer"],
            },
            Row {
                name: "keepalive, no reason, from a timer",
                records: app_reset(None, 0),
                cause: "keepalive_timeout",
                phrases: &["the kernel gave the connection up"],
            },
            Row {
                name: "an established flow timed out",
                records: vec![
                    client_died(10_000, |d| d.retransmits = Some(15)),
                    error(10_000, libc::ETIMEDOUT),
                ],
                cause: "flow_timeout",
                phrases: &["the established connection timed out after 15 retransmits: 10.0.0.2:8080 stopped answering"],
            },
            Row {
                name: "a remote peer's reset",
                records: vec![
                    client_owned(rec(Kind::RstReceived, 10, C, peer, CNS)),
                    with(client_died(10, |_| {}), |d| {
                        d.dst = Some(peer.parse().unwrap())
                    }),
                    with(error(10, libc::ECONNRESET), |r| {
                        r.dst = Some(peer.parse().unwrap())
                    }),
                ],
                cause: "reset_by_peer",
                phrases: &["curl[4121] -> 192.0.2.9:6379 reset: the peer 192.0.2.9:6379 reset the connection"],
            },
            Row {
                name: "a listener closed with its queue",
                records: queued_reset(),
                cause: "listener_closed_with_queue",
                phrases: &["python3[880] closed its listening socket while 1 connection waited in the accept queue of 10.0.0.2:8080 (never accepted)"],
            },
        ]);
    }
}
