//! Routing and neighbour failures.
use super::{Ctx, Finding, Rule};
use crate::base::reasons;

pub struct NoRoute;

/// connect() refused at once by the routing table or a policy.
fn route_refusal(c: &Ctx) -> Option<Finding> {
    let r = c.story.connect_error()?;
    let dst = r.dst?;
    let ns = super::in_netns(c.host, r.netns);
    let check = match r.netns.filter(|&n| c.host.netns_name(n).is_some()) {
        Some(n) => super::ns_exec(c.host, n, &format!("ip route get {}", dst.ip())),
        None => format!(
            "ip route get {}{}",
            dst.ip(),
            if ns.is_empty() {
                ""
            } else {
                " (run in the client's namespace)"
            }
        ),
    };
    let (cause, reason, fix) = match r.errno? {
        libc::ENETUNREACH => (
            "no_route",
            format!("there is no route to {}{ns} (connect() failed before sending anything)", dst.ip()),
            format!("{check}; add a route (or a default route) or fix the address"),
        ),
        libc::EHOSTUNREACH => (
            "no_route",
            format!("the route to {}{ns} is of type unreachable (connect() failed at once)", dst.ip()),
            format!("{check}; ip route show table all | grep unreachable"),
        ),
        libc::EINVAL => (
            "no_route",
            format!("the route to {}{ns} is a blackhole, or the address is invalid (connect() failed with EINVAL)", dst.ip()),
            format!("{check}; ip route show table all | grep blackhole"),
        ),
        libc::EACCES | libc::EPERM => (
            "connect_prohibited",
            format!("connecting to {}{ns} is forbidden: a prohibit route, or a policy (cgroup BPF, LSM, firewall owner match) refuses it", dst.ip()),
            format!("{check}; ip route show table all | grep prohibit; check cgroup BPF programs (bpftool cgroup tree) and LSM policy"),
        ),
        libc::EADDRNOTAVAIL | libc::ENETDOWN => (
            "no_route",
            format!("no usable local address or interface towards {}{ns} (connect() failed at once)", dst.ip()),
            "ip -br addr; ip link (is the interface up, is the address configured?)".to_string(),
        ),
        _ => return None,
    };
    Some(Finding {
        cause,
        confidence: 0.9,
        reason,
        fix,
        culprit: None,
    })
}

impl Rule for NoRoute {
    fn id(&self) -> &'static str {
        "no_route"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        if let Some(f) = route_refusal(c) {
            return Some(f);
        }
        let dropped = c
            .story
            .drops(reasons::IP_OUTNOROUTES)
            .next()
            .or_else(|| c.story.drops(reasons::IP_INNOROUTES).next());
        if dropped.is_none() && c.errno != Some(libc::ENETUNREACH) {
            return None;
        }
        let server = c.server?;
        let ns = c.story.client_netns();
        Some(Finding {
            cause: self.id(),
            confidence: if dropped.is_some() { 0.9 } else { 0.7 },
            reason: format!(
                "there is no route to {}{}",
                server.ip(),
                ns.map_or(String::new(), |n| format!(
                    " from netns {}",
                    c.host.netns_label(n)
                ))
            ),
            fix: format!(
                "ip route get {} (in the client's namespace); add the route or fix the address",
                server.ip()
            ),
            culprit: None,
        })
    }
}

pub struct NeighbourUnreachable;

impl Rule for NeighbourUnreachable {
    fn id(&self) -> &'static str {
        "neighbour_unreachable"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let neigh = c.story.drops(reasons::NEIGH_FAILED).next().is_some();
        let silent_unreach = c.errno == Some(libc::EHOSTUNREACH)
            && c.story.soft_errors() == 0
            && c.story.rst_received().is_none();
        if !neigh && !silent_unreach {
            return None;
        }
        // An established flow tells no direction: its peer is where the errno's socket
        // (or the dropped segments) went.
        let peer = c
            .server
            .or_else(|| c.story.errno_record().and_then(|r| r.dst))
            .or_else(|| c.story.drops(reasons::NEIGH_FAILED).find_map(|d| d.dst))?;
        let reason = if c.story.was_established() {
            format!(
                "{} (or the gateway towards it) stopped answering ARP/neighbour discovery during the connection: the host went down or left the link",
                peer.ip()
            )
        } else {
            format!(
                "{} (or the gateway towards it) never answered ARP/neighbour discovery on the local link: the host is down or not on that subnet",
                peer.ip()
            )
        };
        let server = peer;
        Some(Finding {
            cause: self.id(),
            confidence: if neigh { 0.9 } else { 0.6 },
            reason,
            fix: format!("ip neigh show {0}; ping -c1 {0}; check the host is up and the address and subnet are right", server.ip()),
            culprit: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::base::record::{Kind, Record};
    use crate::base::record::{TcpFlags, TcpState};
    use crate::explain::testing::*;

    fn connect_error(errno: i32) -> Record {
        with(
            client_owned(rec(Kind::ConnectError, 10, "0.0.0.0:0", S, CNS)),
            |r| r.errno = Some(errno),
        )
    }

    #[test]
    fn table() {
        check(vec![
            Row {
                name: "connect(): no route",
                records: vec![connect_error(libc::ENETUNREACH)],
                cause: "no_route",
                phrases: &[
                    "curl[4121] -> 10.0.0.2:8080 failed: network unreachable: there is no route to 10.0.0.2 in netns 100 (connect() failed before sending anything)",
                    "ip route get 10.0.0.2 (run in the client's namespace)",
                ],
            },
            Row {
                name: "connect(): an unreachable route",
                records: vec![connect_error(libc::EHOSTUNREACH)],
                cause: "no_route",
                phrases: &["the route to 10.0.0.2 in netns 100 is of type unreachable"],
            },
            Row {
                name: "connect(): a blackhole route",
                records: vec![connect_error(libc::EINVAL)],
                cause: "no_route",
                phrases: &["is a blackhole, or the address is invalid"],
            },
            Row {
                name: "connect(): no usable local address",
                records: vec![connect_error(libc::EADDRNOTAVAIL)],
                cause: "no_route",
                phrases: &["no usable local address or interface towards 10.0.0.2"],
            },
            Row {
                name: "connect(): a prohibit route",
                records: vec![connect_error(libc::EACCES)],
                cause: "connect_prohibited",
                phrases: &[
                    "connecting to 10.0.0.2 in netns 100 is forbidden: a prohibit route, or a policy",
                    "bpftool cgroup tree",
                ],
            },
            Row {
                name: "connect(): a policy",
                records: vec![connect_error(libc::EPERM)],
                cause: "connect_prohibited",
                phrases: &["is forbidden"],
            },
            Row {
                name: "a SYN sent, then ENETUNREACH",
                records: vec![syn_retransmit(1_000), error(1_500, libc::ENETUNREACH)],
                cause: "no_route",
                phrases: &["there is no route to 10.0.0.2 from netns 100"],
            },
            Row {
                name: "no ARP answer for a SYN",
                records: vec![
                    syn_retransmit(1_000),
                    with(drop_syn(2_000, "NEIGH_FAILED"), |d| d.netns = Some(CNS)),
                    error(3_000, libc::EHOSTUNREACH),
                ],
                cause: "neighbour_unreachable",
                phrases: &[
                    "10.0.0.2 (or the gateway towards it) never answered ARP/neighbour discovery on the local link",
                    "ip neigh show 10.0.0.2",
                ],
            },
            Row {
                name: "no ARP answer during an established flow",
                records: vec![
                    with(rec(Kind::Drop, 2_000, C, S, CNS), |d| {
                        d.reason = Some("NEIGH_FAILED".into());
                        d.tcp_flags = Some(TcpFlags::PSH | TcpFlags::ACK);
                    }),
                    with(client_owned(rec(Kind::State, 3_000, C, S, CNS)), |d| {
                        d.old_state = Some(TcpState::Established);
                        d.new_state = Some(TcpState::Close);
                    }),
                    error(3_000, libc::EHOSTUNREACH),
                ],
                cause: "neighbour_unreachable",
                phrases: &["stopped answering ARP/neighbour discovery during the connection"],
            },
        ]);
    }
}
