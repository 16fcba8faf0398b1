//! Refusals by the TCP stack (an RST answering the SYN): which of the classic reasons,
//! told apart with the listener table of the server's namespace.
use super::{ago, find_rule, ns_exec, ss_cmd, who, Ctx, Finding, Rule};
use crate::base::reasons;

/// How long after a listener closed a refusal is blamed on the restart.
const RESTART_WINDOW_NS: u64 = 30_000_000_000;

/// The server's namespace, when the server is on this host and the story is a refusal.
fn local_refusal(c: &Ctx) -> Option<u32> {
    if !c.refused() {
        return None;
    }
    c.server_netns
}

pub struct ServiceRestarting;

impl Rule for ServiceRestarting {
    fn id(&self) -> &'static str {
        "service_restarting"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let ns = local_refusal(c)?;
        let server = c.server?;
        let port = server.port();
        let fix = format!(
            "make clients retry with backoff across restarts (or hand the socket over: systemd socket activation, SO_REUSEPORT); check why it stopped: {}",
            ss_cmd(c.host, port, Some(ns))
        );
        // Opened only after the refusal: the service was not ready yet.
        if let Some(l) = c.host.listener_for(ns, server) {
            if l.since_ns > c.at_ns {
                return Some(Finding {
                    cause: self.id(),
                    confidence: 0.85,
                    reason: format!(
                        "nothing listened on port {port} yet; {} started listening on {} {} later (not ready)",
                        who(&l.owner),
                        l.addr,
                        ago(l.since_ns - c.at_ns)
                    ),
                    fix,
                    culprit: l.owner.clone(),
                });
            }
            return None;
        }
        let closed = c
            .host
            .recently_closed(ns, port, c.at_ns, RESTART_WINDOW_NS)?;
        if !closed.listener.takes(server) && closed.listener.addr.ip() != server.ip() {
            return None;
        }
        let owner = &closed.listener.owner;
        let how = match owner.as_ref().and_then(|p| c.host.exited(p.pid)) {
            Some(t) if t <= c.at_ns + 1_000_000_000 => "until it exited",
            _ => "until it closed the socket",
        };
        Some(Finding {
            cause: self.id(),
            confidence: 0.85,
            reason: format!(
                "nothing listens on port {port}; {} listened there {how} {} ago (service restarting or down)",
                who(owner),
                ago(c.at_ns.saturating_sub(closed.closed_ns))
            ),
            fix,
            culprit: owner.clone(),
        })
    }
}

/// An IPv4 client refused by a server whose listeners on that port are all IPv6-only:
/// bound to an IPv6 address (`::1`), or to `[::]` with IPV6_V6ONLY (or
/// net.ipv6.bindv6only=1). The flag is read through sock_diag (listener records, and
/// live when the listen() is seen); failing that, the server's own kernel shows it by
/// finding no socket for the SYN (RST or drop reason NO_SOCKET) while `[::]` listens
/// on the port: the one thing that makes `[::]` refuse IPv4.
pub struct FamilyMismatch;

impl Rule for FamilyMismatch {
    fn id(&self) -> &'static str {
        "family_mismatch"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let ns = local_refusal(c)?;
        let server = c.server?;
        if !server.is_ipv4() {
            return None;
        }
        let on_port: Vec<_> = c
            .host
            .listeners(ns)
            .iter()
            .filter(|l| l.addr.port() == server.port())
            .collect();
        // Every listener on the port is IPv6 (an IPv4 one elsewhere is another cause).
        if on_port.is_empty() || !on_port.iter().all(|l| is_v6(l.addr)) {
            return None;
        }
        let no_socket = c
            .story
            .rsts_sent()
            .chain(c.story.drops(reasons::NO_SOCKET))
            .any(|r| r.reason.as_deref() == Some(reasons::NO_SOCKET));
        let l = match c.host.listener_for(ns, server) {
            // `[::]` with V6ONLY not read (older captures): the kernel's NO_SOCKET says
            // it took no IPv4, the one thing that makes it refuse.
            Some(l) if no_socket && l.since_ns <= c.at_ns => l,
            Some(_) => return None,
            None => on_port[0],
        };
        let port = server.port();
        let how = match (l.addr.ip().is_unspecified(), l.v6only) {
            (true, Some(true)) => "only for IPv6 (IPV6_V6ONLY set)",
            (true, _) => "only for IPv6 (IPV6_V6ONLY, or net.ipv6.bindv6only=1)",
            (false, _) => "on an IPv6 address only",
        };
        let evidence = if no_socket {
            " (the server's kernel found no socket for the SYN: NO_SOCKET)"
        } else {
            ""
        };
        Some(Finding {
            cause: self.id(),
            confidence: 0.9,
            reason: format!(
                "{} listens on {} {how}, and the client connected over IPv4 to {}{evidence}: address-family mismatch",
                who(&l.owner),
                l.addr,
                server.ip(),
            ),
            fix: format!(
                "listen on both families: [::]:{port} without IPV6_V6ONLY (sysctl net.ipv6.bindv6only=0), or a second socket on 0.0.0.0:{port}; or connect over IPv6 (to {}); check: {}",
                if l.addr.ip().is_unspecified() {
                    format!("an IPv6 address of the server, port {port}")
                } else {
                    l.addr.to_string()
                },
                ss_cmd(c.host, port, Some(ns)),
            ),
            culprit: l.owner.clone(),
        })
    }
}

/// An IPv6 socket address that is not an IPv4-mapped one.
fn is_v6(a: std::net::SocketAddr) -> bool {
    a.ip().to_canonical().is_ipv6()
}

pub struct ListenerOtherAddress;

impl Rule for ListenerOtherAddress {
    fn id(&self) -> &'static str {
        "listener_other_address"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let ns = local_refusal(c)?;
        let server = c.server?;
        if c.host.listener_for(ns, server).is_some() {
            return None;
        }
        let l = c
            .host
            .listeners(ns)
            .iter()
            .find(|l| l.addr.port() == server.port())?;
        Some(Finding {
            cause: self.id(),
            confidence: 0.9,
            reason: format!(
                "{} listens on port {} only on {}, not on {}",
                who(&l.owner),
                server.port(),
                l.addr.ip(),
                server.ip()
            ),
            fix: format!(
                "make the service bind {} or 0.0.0.0 (its listen/bind address setting), or connect to {}; check: {}",
                server.ip(),
                l.addr,
                ss_cmd(c.host, server.port(), Some(ns))
            ),
            culprit: l.owner.clone(),
        })
    }
}

pub struct ListenerOtherNetns;

impl Rule for ListenerOtherNetns {
    fn id(&self) -> &'static str {
        "listener_other_netns"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let ns = local_refusal(c)?;
        let server = c.server?;
        if c.host.listener_for(ns, server).is_some() {
            return None;
        }
        let others = c.host.elsewhere(ns, server.port());
        let l = others.first()?;
        Some(Finding {
            cause: self.id(),
            confidence: 0.8,
            reason: format!(
                "nothing listens on port {} in netns {}, but {} listens on {} in netns {} (another container or namespace)",
                server.port(),
                c.host.netns_label(ns),
                who(&l.owner),
                l.addr,
                c.host.netns_label(l.netns)
            ),
            fix: format!(
                "connect to that namespace's address, or publish/forward port {} into netns {}; check: {}",
                server.port(),
                c.host.netns_label(ns),
                ss_cmd(c.host, server.port(), Some(l.netns))
            ),
            culprit: l.owner.clone(),
        })
    }
}

pub struct WrongPort;

impl Rule for WrongPort {
    fn id(&self) -> &'static str {
        "wrong_port"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let ns = local_refusal(c)?;
        let server = c.server?;
        if c.host.listener_for(ns, server).is_some() {
            return None;
        }
        let mut ports: Vec<u16> = c
            .host
            .listeners(ns)
            .iter()
            .filter(|l| l.takes(std::net::SocketAddr::new(server.ip(), l.addr.port())))
            .map(|l| l.addr.port())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        if ports.is_empty() {
            return None;
        }
        let list: Vec<String> = ports.iter().take(8).map(u16::to_string).collect();
        Some(Finding {
            cause: self.id(),
            confidence: 0.7,
            reason: format!(
                "nothing listens on port {}; {} listens on port{} {} (wrong port?)",
                server.port(),
                server.ip(),
                if ports.len() > 1 { "s" } else { "" },
                list.join(", ")
            ),
            fix: format!(
                "check the port the client is configured with; listening ports: {}",
                match c.host.netns_name(ns) {
                    Some(_) => ns_exec(c.host, ns, "ss -tlnp"),
                    None => format!("ss -tlnp (in netns {ns})"),
                }
            ),
            culprit: None,
        })
    }
}

pub struct NothingListening;

impl Rule for NothingListening {
    fn id(&self) -> &'static str {
        "nothing_listening"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let ns = local_refusal(c)?;
        let server = c.server?;
        if c.host.listener_for(ns, server).is_some() {
            return None;
        }
        let evidence = if c
            .story
            .rsts_sent()
            .any(|r| r.reason.as_deref() == Some(reasons::NO_SOCKET))
        {
            " (the server's kernel answered with RST, reason NO_SOCKET)"
        } else {
            ""
        };
        Some(Finding {
            cause: self.id(),
            confidence: if evidence.is_empty() { 0.8 } else { 0.95 },
            reason: format!(
                "nothing listens on port {} in netns {}{evidence}",
                server.port(),
                c.host.netns_label(ns)
            ),
            fix: format!(
                "start the service (or fix the port the client uses); check: {}",
                ss_cmd(c.host, server.port(), Some(ns))
            ),
            culprit: None,
        })
    }
}

/// Refused although a listener takes that address: the TCP stack does not do that
/// (short of tcp_abort_on_overflow), so something rejected the SYN before it. Kernels
/// with drop reasons show the firewall itself (`FirewallReject`); this is the
/// inference for those without.
pub struct RefusedDespiteListener;

impl Rule for RefusedDespiteListener {
    fn id(&self) -> &'static str {
        "firewall_reject"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let ns = local_refusal(c)?;
        let server = c.server?;
        let l = c.host.listener_for(ns, server)?;
        if l.since_ns > c.at_ns {
            return None;
        }
        Some(Finding {
            cause: self.id(),
            confidence: 0.6,
            reason: format!(
                "{} listens on {}, yet the SYN was refused: a firewall rule most likely rejects it with a reset (or the accept queue overflowed with net.ipv4.tcp_abort_on_overflow=1)",
                who(&l.owner),
                l.addr
            ),
            fix: format!(
                "{}; sysctl net.ipv4.tcp_abort_on_overflow",
                find_rule(c.host, Some(ns), server.port())
            ),
            culprit: None,
        })
    }
}

pub struct RefusedByRemote;

impl Rule for RefusedByRemote {
    fn id(&self) -> &'static str {
        "refused_by_remote"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        if !c.refused() || c.server_netns.is_some() {
            return None;
        }
        let server = c.server?;
        Some(Finding {
            cause: self.id(),
            confidence: 0.6,
            reason: format!(
                "{} answered with RST: nothing listens on port {} there, or a firewall on the way rejects it",
                server.ip(),
                server.port()
            ),
            fix: format!(
                "on {}: ss -tlnp 'sport = :{}' and its firewall (nft list ruleset); from here: nc -vz {} {}",
                server.ip(),
                server.port(),
                server.ip(),
                server.port()
            ),
            culprit: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::base::record::Kind;
    use crate::explain::testing::*;

    /// A listener, then a refusal.
    fn refused_beside(listener: crate::base::record::Record) -> Vec<crate::base::record::Record> {
        let mut v = vec![listener];
        v.extend(refused(10));
        v
    }

    #[test]
    fn table() {
        check(vec![
            Row {
                name: "no listener on the port",
                records: refused(10),
                cause: "nothing_listening",
                phrases: &[
                    "curl[4121] -> 10.0.0.2:8080 refused: nothing listens on port 8080 in netns 200 (the server's kernel answered with RST, reason NO_SOCKET)",
                    "start the service",
                ],
            },
            Row {
                name: "a listener on 127.0.0.1 only",
                records: refused_beside(listening(1, "127.0.0.1:8080", SNS, 880)),
                cause: "listener_other_address",
                phrases: &["python3[880] listens on port 8080 only on 127.0.0.1, not on 10.0.0.2"],
            },
            Row {
                name: "the port listens in another namespace",
                records: refused_beside(listening(1, "0.0.0.0:8080", 300, 880)),
                cause: "listener_other_netns",
                phrases: &["nothing listens on port 8080 in netns 200, but python3[880] listens on 0.0.0.0:8080 in netns 300"],
            },
            Row {
                name: "other ports listen",
                records: refused_beside(listening(1, "0.0.0.0:8000", SNS, 880)),
                cause: "wrong_port",
                phrases: &["nothing listens on port 8080; 10.0.0.2 listens on port 8000 (wrong port?)"],
            },
            Row {
                name: "the listener closed just before",
                records: [
                    vec![
                        listening(1, "0.0.0.0:8080", SNS, 880),
                        unlistening(5, "0.0.0.0:8080", SNS, 880),
                    ],
                    refused(2_005),
                ]
                .concat(),
                cause: "service_restarting",
                phrases: &["python3[880] listened there until it closed the socket 2.0 s ago (service restarting or down)"],
            },
            Row {
                name: "the listener opened just after",
                records: [refused(10), vec![listening(510, "0.0.0.0:8080", SNS, 880)]].concat(),
                cause: "service_restarting",
                phrases: &["nothing listened on port 8080 yet; python3[880] started listening on 0.0.0.0:8080 0.5 s later (not ready)"],
            },
            Row {
                name: "an IPv6-only listener",
                records: refused_beside(listening(1, "[::]:8080", SNS, 880)),
                cause: "family_mismatch",
                phrases: &[
                    "python3[880] listens on [::]:8080 only for IPv6",
                    "the client connected over IPv4 to 10.0.0.2",
                ],
            },
            Row {
                name: "refused beside a listener that takes the address",
                records: vec![
                    listening(1, "0.0.0.0:8080", SNS, 880),
                    client_owned(rec(Kind::RstReceived, 10, C, S, CNS)),
                    error(10, libc::ECONNREFUSED),
                ],
                cause: "firewall_reject",
                phrases: &["python3[880] listens on 0.0.0.0:8080, yet the SYN was refused"],
            },
            Row {
                name: "a remote server's RST",
                records: vec![
                    client_owned(rec(Kind::RstReceived, 10, C, "192.0.2.9:80", CNS)),
                    with(error(10, libc::ECONNREFUSED), |r| {
                        r.dst = Some("192.0.2.9:80".parse().unwrap())
                    }),
                ],
                cause: "refused_by_remote",
                phrases: &["curl[4121] -> 192.0.2.9:80 refused: 192.0.2.9 answered with RST"],
            },
        ]);
    }
}
