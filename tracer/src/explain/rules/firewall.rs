//! Firewalls: a DROP makes the client time out, a REJECT refuses it with a forged RST
//! or an ICMP error. Told apart from the TCP stack's own refusal by the kernel's drop
//! reason (NETFILTER_DROP) and by which RSTs the TCP stack itself sent.
use super::{exec_all, find_rule, in_netns, run_in, run_label, Ctx, Finding, Rule};
use crate::base::{
    reasons,
    record::{FirewallRule, TcpFlags},
};
use crate::enrich::host::Host;

fn nft_fix(host: &Host, port: u16, netns: Option<u32>) -> String {
    format!(
        "{}; allow the port or fix the destination",
        find_rule(host, netns, port)
    )
}

/// The rules read from the namespace that drop or reject `port` (a `firewall_rule`
/// record), those with a verdict like `verdict` first (they are the ones that can
/// have done what was seen): the acting one first. Empty when none was read. Rules
/// for packets conntrack marked INVALID are left out: they act on every port, and
/// only on what conntrack refused (see `conntrack_invalid`).
fn rules_for<'a>(
    c: &'a Ctx,
    netns: Option<u32>,
    port: u16,
    verdict: &str,
) -> Vec<&'a FirewallRule> {
    let Some(all) = netns.and_then(|ns| c.host.firewall_rules(ns, port)) else {
        return Vec::new();
    };
    let all: Vec<&FirewallRule> = all.iter().filter(|r| !r.matches_invalid()).collect();
    let like: Vec<&FirewallRule> = all
        .iter()
        .copied()
        .filter(|r| r.verdict.starts_with(verdict))
        .collect();
    if like.is_empty() {
        all
    } else {
        like
    }
}

/// Whether the first of `rules` (in the order netfilter runs them) is known to run
/// before the others: its chain is a base chain, and no other chain runs at the same
/// hook and priority (netfilter then runs them in registration order, not shown).
fn first_acts(rules: &[&FirewallRule]) -> bool {
    let Some(first) = rules.first() else {
        return false;
    };
    first.hook.is_some()
        && rules[1..].iter().all(|r| {
            (r.family == first.family && r.table == first.table && r.chain == first.chain)
                || r.hook != first.hook
                || r.priority != first.priority
        })
}

fn quoted(r: &FirewallRule) -> String {
    format!("`{}` ({})", r.rule, r.place())
}

/// Names the rule(s) `rules` in netns `ns` as the subject of `does` ("drops SYNs to
/// port 80"), and the fix: the exact commands. None when no rule was read.
/// `note` follows the namespace ("(the client's own output filter)").
fn named(
    host: &Host,
    rules: &[&FirewallRule],
    ns: Option<u32>,
    note: &str,
    port: u16,
    does: &str,
) -> Option<(String, String)> {
    let first = rules.first()?;
    let noted = format!("{}{note}", in_netns(host, ns));
    if rules.len() == 1 {
        return Some((
            format!("the rule {}{noted} {does}", quoted(first)),
            run_in(
                host,
                ns,
                &[first.delete_command()],
                &format!(
                    " (or let the port through before it: {})",
                    exec_all(host, ns, &[first.allow_command(port)])
                ),
            ),
        ));
    }
    let listed = rules
        .iter()
        .map(|r| {
            let at = match (&r.hook, r.priority) {
                (Some(h), Some(p)) => format!(" [hook {h}, priority {p}]"),
                (Some(h), None) => format!(" [hook {h}]"),
                _ => " [reached by a jump]".to_string(),
            };
            format!("{}{at}", quoted(r))
        })
        .collect::<Vec<_>>()
        .join(", ");
    let commands: Vec<String> = rules.iter().map(|r| r.delete_command()).collect();
    if first_acts(rules) {
        Some((
            format!(
                "{} rules{noted} match port {port}: {listed}; the first in hook/priority order, `{}`, runs first and {does}",
                rules.len(),
                first.rule
            ),
            format!(
                "{}, then the others that would block the port too: {}",
                run_in(host, ns, &commands[..1], " (the one that acts)"),
                exec_all(host, ns, &commands[1..])
            ),
        ))
    } else {
        Some((
            format!(
                "{} rules{noted} match port {port}: {listed}; which of them acts cannot be told (chains at the same hook and priority, or reached by a jump): one {does}",
                rules.len()
            ),
            format!(
                "{}, to remove every rule that blocks the port: {}",
                run_label(host, ns),
                exec_all(host, ns, &commands)
            ),
        ))
    }
}

/// A SYN dropped by netfilter in one of this host's namespaces.
fn netfilter_syn_drops<'a>(
    c: &'a Ctx,
) -> impl Iterator<Item = &'a crate::base::record::Record> + 'a {
    c.story.drops(reasons::NETFILTER_DROP).filter(|r| {
        r.tcp_flags
            .is_some_and(|f| f.contains(TcpFlags::SYN) && !f.contains(TcpFlags::ACK))
    })
}

pub struct FirewallReject;

impl Rule for FirewallReject {
    fn id(&self) -> &'static str {
        "firewall_reject"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let drop = netfilter_syn_drops(c).next()?;
        let tcp_stack_refused = c
            .story
            .rsts_sent()
            .any(|r| r.reason.as_deref() == Some(reasons::NO_SOCKET));
        let how = if c.story.rst_received().is_some() && !tcp_stack_refused {
            "with a forged TCP reset (REJECT --reject-with tcp-reset)"
        } else if c.story.soft_errors() > 0
            || matches!(
                c.errno,
                Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EACCES)
            )
        {
            "with an ICMP error (REJECT)"
        } else {
            return None;
        };
        let ns = drop.netns;
        let port = c.server_port();
        let does = format!("rejects SYNs to port {port} {how}");
        let rules = rules_for(c, ns, port, "reject");
        let (reason, fix) = match named(c.host, &rules, ns, "", port, &does) {
            Some((subject, fix)) => (
                format!("{subject}; the TCP stack itself did not refuse"),
                fix,
            ),
            None => (
                format!(
                    "a firewall rule{} {does}; the TCP stack itself did not refuse",
                    in_netns(c.host, ns),
                ),
                nft_fix(c.host, port, ns),
            ),
        };
        Some(Finding {
            cause: self.id(),
            confidence: 0.9,
            reason,
            fix,
            culprit: None,
        })
    }
}

pub struct FirewallDrop;

/// Segments of an established connection dropped by netfilter.
fn established_drops(c: &Ctx) -> Option<Finding> {
    let drops: Vec<_> = c.story.drops(reasons::NETFILTER_DROP).collect();
    let first = drops.first()?;
    let ns = first.netns;
    let port = first.dst.map_or(0, |d| d.port());
    let does = format!(
        "drops the packets of this established connection ({} dropped at {})",
        drops.len(),
        first.location.as_deref().unwrap_or("netfilter")
    );
    let rules = rules_for(c, ns, port, "drop");
    let (reason, fix) = named(c.host, &rules, ns, "", port, &does).unwrap_or_else(|| {
        (
            format!("a firewall rule{} {does}", in_netns(c.host, ns),),
            nft_fix(c.host, port, ns),
        )
    });
    Some(Finding {
        cause: "firewall_drop",
        confidence: 0.85,
        reason,
        fix,
        culprit: None,
    })
}

impl Rule for FirewallDrop {
    fn id(&self) -> &'static str {
        "firewall_drop"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        if netfilter_syn_drops(c).next().is_none() {
            return established_drops(c);
        }
        let drops: Vec<_> = netfilter_syn_drops(c).collect();
        let first = drops.first()?;
        if c.errno == Some(libc::ECONNREFUSED) {
            return None;
        }
        let ns = first.netns;
        let port = c.server_port();
        let outgoing = if crate::explain::story::dropped_on_its_way_out(first) {
            " (the client's own output filter)"
        } else {
            ""
        };
        let does = format!(
            "drops SYNs to port {port} ({} dropped at {})",
            drops.len(),
            first.location.as_deref().unwrap_or("netfilter")
        );
        let rules = rules_for(c, ns, port, "drop");
        let (reason, fix) = match named(c.host, &rules, ns, outgoing, port, &does) {
            Some(found) => found,
            None => (
                format!("a firewall rule{}{outgoing} {does}", in_netns(c.host, ns),),
                nft_fix(c.host, port, ns),
            ),
        };
        Some(Finding {
            cause: self.id(),
            confidence: 0.95,
            reason,
            fix,
            culprit: None,
        })
    }
}

pub struct IcmpReject;

impl Rule for IcmpReject {
    fn id(&self) -> &'static str {
        "icmp_reject"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        if c.story.soft_errors() == 0 || c.story.rst_received().is_some() {
            return None;
        }
        let e = c.errno?;
        Some(Finding {
            cause: self.id(),
            confidence: 0.75,
            reason: format!(
                "an ICMP error answered the SYN ({}): a firewall REJECT or a router on the path refuses traffic to {}",
                crate::base::record::errno_name(e).unwrap_or("error"),
                c.server.map_or("the server".to_string(), |s| s.to_string())
            ),
            fix: format!(
                "check the firewalls and routes towards {0}: tracepath {0}; on the server, nft list ruleset | grep -n 'dport {1}'",
                c.server.map_or("the server".to_string(), |s| s.ip().to_string()),
                c.server_port()
            ),
            culprit: None,
        })
    }
}

pub struct SynUnanswered;

impl Rule for SynUnanswered {
    fn id(&self) -> &'static str {
        "syn_unanswered"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        if c.story.was_established() || c.errno != Some(libc::ETIMEDOUT) {
            return None;
        }
        let server = c.server?;
        let local_server = c.server_netns.is_some();
        let n = c.story.syn_retransmits() + 1;
        let (reason, conf) = if local_server {
            (
                format!("{n} SYNs to {server} got no answer although the server is on this host and nothing dropped them visibly"),
                0.4,
            )
        } else {
            (
                format!("{n} SYNs to {server} got no answer and nothing on this host dropped them: a firewall, security group or routing upstream drops them, or the host is down"),
                0.7,
            )
        };
        Some(Finding {
            cause: self.id(),
            confidence: conf,
            reason,
            fix: format!(
                "test the path from here: nc -vz -w3 {} {}; check the remote firewall/security group and the routes (ip route get {})",
                server.ip(),
                server.port(),
                server.ip()
            ),
            culprit: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::base::record::{Kind, Record};
    use crate::base::record::{TcpFlags, TcpState};
    use crate::explain::testing::*;

    const REMOTE: &str = "192.0.2.9:8080";

    fn to(remote: &str, mut r: Record) -> Record {
        r.dst = Some(remote.parse().unwrap());
        r
    }

    #[test]
    fn table() {
        check(vec![
            Row {
                name: "SYNs dropped by netfilter, the client timed out",
                records: vec![
                    drop_syn(0, "NETFILTER_DROP"),
                    syn_retransmit(1_000),
                    drop_syn(1_000, "NETFILTER_DROP"),
                    error(3_000, libc::ETIMEDOUT),
                ],
                cause: "firewall_drop",
                phrases: &[
                    "curl[4121] -> 10.0.0.2:8080 timed out: a firewall rule in netns 200 drops SYNs to port 8080 (2 dropped at nf_hook_slow+0x4c)",
                    "nft list ruleset | grep -n 'dport 8080'",
                ],
            },
            Row {
                name: "segments of an established flow dropped",
                records: vec![
                    with(rec(Kind::Drop, 2_000, C, S, SNS), |d| {
                        d.reason = Some("NETFILTER_DROP".into());
                        d.tcp_flags = Some(TcpFlags::PSH | TcpFlags::ACK);
                    }),
                    with(client_owned(rec(Kind::State, 3_000, C, S, CNS)), |d| {
                        d.old_state = Some(TcpState::Established);
                        d.new_state = Some(TcpState::Close);
                    }),
                    error(3_000, libc::ETIMEDOUT),
                ],
                cause: "firewall_drop",
                phrases: &[
                    "a firewall rule in netns 200 drops the packets of this established connection (1 dropped at netfilter)",
                ],
            },
            Row {
                name: "a forged reset",
                records: vec![
                    drop_syn(0, "NETFILTER_DROP"),
                    client_owned(rec(Kind::RstReceived, 0, C, S, CNS)),
                    error(0, libc::ECONNREFUSED),
                ],
                cause: "firewall_reject",
                phrases: &[
                    "rejects SYNs to port 8080 with a forged TCP reset (REJECT --reject-with tcp-reset); the TCP stack itself did not refuse",
                ],
            },
            Row {
                name: "an ICMP error from a rule here",
                records: vec![
                    drop_syn(0, "NETFILTER_DROP"),
                    error(1, 0),
                    syn_retransmit(1_000),
                    drop_syn(1_000, "NETFILTER_DROP"),
                    error(1_001, libc::EHOSTUNREACH),
                ],
                cause: "firewall_reject",
                phrases: &["rejects SYNs to port 8080 with an ICMP error (REJECT)"],
            },
            Row {
                name: "an ICMP error from off the host",
                records: vec![
                    to(REMOTE, error(1, 0)),
                    to(REMOTE, syn_retransmit(1_000)),
                    to(REMOTE, error(1_001, libc::EHOSTUNREACH)),
                ],
                cause: "icmp_reject",
                phrases: &[
                    "curl[4121] -> 192.0.2.9:8080 failed: host unreachable: an ICMP error answered the SYN (EHOSTUNREACH): a firewall REJECT or a router on the path refuses traffic to 192.0.2.9:8080",
                    "tracepath 192.0.2.9",
                ],
            },
            Row {
                name: "SYNs to a remote server unanswered",
                records: vec![
                    to(REMOTE, syn_retransmit(1_000)),
                    to(REMOTE, syn_retransmit(3_000)),
                    to(REMOTE, error(7_000, libc::ETIMEDOUT)),
                ],
                cause: "syn_unanswered",
                phrases: &[
                    "3 SYNs to 192.0.2.9:8080 got no answer and nothing on this host dropped them",
                    "nc -vz -w3 192.0.2.9 8080",
                ],
            },
            Row {
                name: "SYNs to a server on this host unanswered",
                records: vec![syn_retransmit(1_000), error(3_000, libc::ETIMEDOUT)],
                cause: "syn_unanswered",
                phrases: &["2 SYNs to 10.0.0.2:8080 got no answer although the server is on this host"],
            },
        ]);
    }
}
