//! Firewalls: a DROP makes the client time out, a REJECT refuses it with a forged RST
//! or an ICMP error. Told apart from the TCP stack's own refusal by the kernel's drop
//! reason (NETFILTER_DROP) and by which RSTs the TCP stack itself sent.
use super::{Ctx, Finding, Rule};

fn nft_fix(port: u16, netns: Option<u32>) -> String {
    let where_ = netns.map_or(String::new(), |ns| format!(" in netns {ns}"));
    format!("find the rule{where_}: nft list ruleset | grep -n 'dport {port}' (or iptables-save | grep -- '--dport {port}'); allow the port or fix the destination")
}

/// A SYN dropped by netfilter in one of this host's namespaces.
fn netfilter_syn_drops<'a>(c: &'a Ctx) -> impl Iterator<Item = &'a crate::record::Record> + 'a {
    c.story.drops("NETFILTER_DROP").filter(|r| {
        r.tcp_flags
            .is_some_and(|f| f.contains('S') && !f.contains('A'))
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
            .any(|r| r.reason.as_deref() == Some("NO_SOCKET"));
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
        Some(Finding {
            cause: self.id(),
            confidence: 0.9,
            reason: format!(
                "a firewall rule{} rejects SYNs to port {} {how}; the TCP stack itself did not refuse",
                ns.map_or(String::new(), |n| format!(" in netns {n}")),
                c.server_port()
            ),
            fix: nft_fix(c.server_port(), ns),
            culprit: None,
        })
    }
}

pub struct FirewallDrop;

/// Segments of an established connection dropped by netfilter.
fn established_drops(c: &Ctx) -> Option<Finding> {
    let drops: Vec<_> = c.story.drops("NETFILTER_DROP").collect();
    let first = drops.first()?;
    let ns = first.netns;
    let port = first.dst.map_or(0, |d| d.port());
    Some(Finding {
        cause: "firewall_drop",
        confidence: 0.85,
        reason: format!(
            "a firewall rule{} drops the packets of this established connection ({} dropped at {})",
            ns.map_or(String::new(), |n| format!(" in netns {n}")),
            drops.len(),
            first.location.as_deref().unwrap_or("netfilter")
        ),
        fix: nft_fix(port, ns),
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
        let outgoing = if crate::explain::story::dropped_on_its_way_out(first) {
            " (the client's own output filter)"
        } else {
            ""
        };
        Some(Finding {
            cause: self.id(),
            confidence: 0.95,
            reason: format!(
                "a firewall rule{}{outgoing} drops SYNs to port {} ({} dropped at {})",
                ns.map_or(String::new(), |n| format!(" in netns {n}")),
                c.server_port(),
                drops.len(),
                first.location.as_deref().unwrap_or("netfilter")
            ),
            fix: nft_fix(c.server_port(), ns),
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
                crate::record::errno_name(e).unwrap_or("error"),
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
