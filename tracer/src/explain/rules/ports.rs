//! Local port exhaustion: connect() finds no free ephemeral port towards the
//! destination (every port of the namespace's range is held by a socket to the same
//! address and port, open or in TIME_WAIT) and fails with EADDRNOTAVAIL after the
//! socket reached SYN_SENT. No packet is sent; the kernel's only word is the errno,
//! reported by the connect() exit hook, with the port use read live through sock_diag.
//! The same errno for a socket bound to a fixed port beforehand means that port already
//! has a connection to the destination: its death (SYN_SENT->CLOSE, in the owner's
//! own call, joined to the errno by the engine) shows the bound address.
use super::{Ctx, Finding, Rule};
use crate::base::record::{Kind, TcpState};

pub struct LocalPortsExhausted;

impl Rule for LocalPortsExhausted {
    fn id(&self) -> &'static str {
        "local_ports_exhausted"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let r = c.story.connect_error()?;
        // EADDRNOTAVAIL before SYN_SENT is another failure (no usable local address).
        if r.errno != Some(libc::EADDRNOTAVAIL)
            || (r.state != Some(TcpState::SynSent) && r.ports.is_none())
        {
            return None;
        }
        let dst = r.dst?;
        let ns = super::in_netns(c.host, r.netns);
        let bound = c.story.evidence.iter().find_map(|e| {
            (e.kind == Kind::State && e.old_state == Some(TcpState::SynSent))
                .then_some(e.src?)
                .filter(|s| s.port() != 0)
        });
        if let Some(src) = bound {
            return Some(Finding {
                cause: "local_address_in_use",
                confidence: 0.9,
                reason: format!(
                    "the socket was bound to {src} before connect(), and {src} already has a connection to {dst}: that 4-tuple is in use (connect() failed with EADDRNOTAVAIL before sending anything)"
                ),
                fix: format!(
                    "do not bind() a fixed local port before connect() (let the kernel pick one; to choose only the address, set IP_BIND_ADDRESS_NO_PORT before bind()); if the port must be fixed, wait for its previous connection to end; check: ss -tan src {src} dst {dst}"
                ),
                culprit: None,
            });
        }
        let (usage, tw_first) = match &r.ports {
            Some(p) => {
                let size = (p.range[1] as u32 + 1).saturating_sub(p.range[0] as u32);
                (
                    format!(
                        "the ephemeral port range {}-{} ({size} ports; net.ipv4.ip_local_port_range) is used up: {} sockets hold ports towards {dst}, {} ESTABLISHED, {} in TIME_WAIT, {} in other states",
                        p.range[0],
                        p.range[1],
                        p.established + p.time_wait + p.other,
                        p.established,
                        p.time_wait,
                        p.other
                    ),
                    p.time_wait > p.established,
                )
            }
            None => (
                format!("every port of the ephemeral range (net.ipv4.ip_local_port_range) is held by a socket towards {dst} (not measured here)"),
                false,
            ),
        };
        let check = format!(
            "ss -tan state time-wait dst {dst} | wc -l; ss -tan state established dst {dst} | wc -l; sysctl net.ipv4.ip_local_port_range{}",
            if ns.is_empty() { "" } else { " (in the client's namespace)" }
        );
        let tw = "let new connections reuse TIME_WAIT ports: sysctl -w net.ipv4.tcp_tw_reuse=1";
        let pool =
            "reuse connections (a connection pool, HTTP keep-alive) instead of one per request";
        let wider = "widen the range: sysctl -w net.ipv4.ip_local_port_range='1024 65535'";
        let steps = if tw_first {
            [tw, pool, wider]
        } else {
            [pool, wider, tw]
        };
        Some(Finding {
            cause: self.id(),
            confidence: if r.ports.is_some() { 0.95 } else { 0.85 },
            reason: format!(
                "no free local port for a connection to {dst}{ns} (connect() failed with EADDRNOTAVAIL before sending anything): {usage}"
            ),
            fix: format!("{}; check: {check}", steps.join("; ")),
            culprit: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::base::record::TcpState;
    use crate::base::record::{Kind, PortUse, Record};
    use crate::explain::testing::*;

    fn no_local_port(state: Option<TcpState>, ports: Option<PortUse>) -> Record {
        with(
            client_owned(rec(Kind::ConnectError, 10, "0.0.0.0:0", S, CNS)),
            |r| {
                r.errno = Some(libc::EADDRNOTAVAIL);
                r.state = state;
                r.ports = ports;
            },
        )
    }

    #[test]
    fn table() {
        let held = |established, time_wait| PortUse {
            range: [40000, 40003],
            established,
            time_wait,
            other: 0,
        };
        check(vec![
            Row {
                name: "the range used up, mostly ESTABLISHED",
                records: vec![no_local_port(Some(TcpState::SynSent), Some(held(3, 1)))],
                cause: "local_ports_exhausted",
                phrases: &[
                    "curl[4121] -> 10.0.0.2:8080 failed: no free local port for a connection to 10.0.0.2:8080 in netns 100",
                    "the ephemeral port range 40000-40003 (4 ports; net.ipv4.ip_local_port_range) is used up: 4 sockets hold ports towards 10.0.0.2:8080, 3 ESTABLISHED, 1 in TIME_WAIT",
                    "reuse connections (a connection pool, HTTP keep-alive)",
                ],
            },
            Row {
                name: "mostly TIME_WAIT",
                records: vec![no_local_port(Some(TcpState::SynSent), Some(held(0, 4)))],
                cause: "local_ports_exhausted",
                phrases: &["let new connections reuse TIME_WAIT ports: sysctl -w net.ipv4.tcp_tw_reuse=1; reuse connections"],
            },
            Row {
                name: "the port use not read",
                records: vec![no_local_port(Some(TcpState::SynSent), None)],
                cause: "local_ports_exhausted",
                phrases: &["(not measured here)"],
            },
            Row {
                name: "a bound port already connected there",
                records: vec![
                    with(client_owned(rec(Kind::State, 10, C, S, CNS)), |d| {
                        d.old_state = Some(TcpState::SynSent);
                        d.new_state = Some(TcpState::Close);
                        d.task = d.owner.clone();
                    }),
                    with(no_local_port(Some(TcpState::SynSent), None), |r| {
                        r.task = r.owner.clone();
                    }),
                ],
                cause: "local_address_in_use",
                phrases: &[
                    "the socket was bound to 10.0.0.1:40000 before connect(), and 10.0.0.1:40000 already has a connection to 10.0.0.2:8080",
                    "IP_BIND_ADDRESS_NO_PORT",
                ],
            },
        ]);
    }
}
