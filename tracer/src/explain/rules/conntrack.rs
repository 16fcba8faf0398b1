//! Connection tracking: packets conntrack could not match to a valid state (marked
//! INVALID: the flow outlived its entry, the table was flushed or full, the replies
//! take another path, the segment fell out of the TCP window) dropped or rejected by
//! a `ct state invalid` rule (kube-proxy installs one). The kernel gives no drop
//! reason of its own for it (6.18: `NETFILTER_DROP` at nft_do_chain, as for any
//! rule): what tells it is the rule read from the namespace's ruleset, and the
//! namespace's conntrack counters read with it.
use super::{exec_all, Ctx, Finding, Rule};
use crate::base::record::{FirewallRule, TcpFlags};

pub struct ConntrackInvalid;

impl Rule for ConntrackInvalid {
    fn id(&self) -> &'static str {
        "conntrack_invalid"
    }

    fn check(&self, c: &Ctx) -> Option<Finding> {
        let drops: Vec<_> = c.story.drops("NETFILTER_DROP").collect();
        let first = drops.first()?;
        let ns = first.netns?;
        let port = first.dst?.port();
        let read = c.host.firewall_read(ns, port)?;
        let (invalid, others): (Vec<&FirewallRule>, Vec<&FirewallRule>) =
            read.rules.iter().partition(|r| r.matches_invalid());
        // A rule for the port itself drops valid packets as well (it is the
        // firewall's doing, named by firewall_drop); one for INVALID packets only
        // acts on what conntrack refused.
        let rule = invalid.first()?;
        if !others.is_empty() {
            return None;
        }
        let syn = first
            .tcp_flags
            .is_some_and(|f| f.contains(TcpFlags::SYN) && !f.contains(TcpFlags::ACK));
        let what = if syn && !c.story.was_established() {
            format!("the SYNs to port {port}")
        } else {
            "the packets of this established connection".to_string()
        };
        let verb = if rule.verdict.starts_with("reject") {
            "rejects"
        } else {
            "drops"
        };
        let also = match invalid.len() {
            1 => String::new(),
            n => format!(" ({} other rules for INVALID packets follow it)", n - 1),
        };
        let counters = read.conntrack.as_ref().map_or_else(
            || "; its conntrack counters could not be read".to_string(),
            |s| format!("; conntrack there counts {} (`conntrack -S`)", s.counters()),
        );
        let reason = format!(
            "conntrack in netns {} marked {what} INVALID (it has no valid state for them), and the rule `{}` ({}){also} {verb} them ({} {} at {}){counters}",
            c.host.netns_label(ns),
            rule.rule,
            rule.place(),
            drops.len(),
            if verb == "rejects" { "rejected" } else { "dropped" },
            first.location.as_deref().unwrap_or("netfilter"),
        );
        let ns_ = Some(ns);
        let (where_, look) = match c.host.netns_name(ns) {
            Some(_) => (String::new(), "Run: "),
            None => (format!(" In netns {ns}:"), ""),
        };
        let fix = format!(
            "conntrack lost or never had this flow's state: an idle flow outlived net.netfilter.nf_conntrack_tcp_timeout_established, the table was flushed or full, the replies take another path (asymmetric routing), or the segments fell out of its TCP window.{where_} {look}{}; check the routes both ways and the idle timeout against the clients' keepalives; to accept out-of-window segments: {}; or remove the rule: {}",
            exec_all(
                c.host,
                ns_,
                &["conntrack -S".into(), format!("conntrack -L -p tcp --dport {port}")]
            ),
            exec_all(
                c.host,
                ns_,
                &["sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1".into()]
            ),
            exec_all(c.host, ns_, &[rule.delete_command()])
        );
        Some(Finding {
            cause: self.id(),
            confidence: if syn { 0.8 } else { 0.85 },
            reason,
            fix,
            culprit: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::base::record::{ConntrackStats, FirewallRule, Kind, Record};
    use crate::explain::testing::*;

    /// The server namespace's rules read for port 8080 (handle, text), with its
    /// conntrack counters.
    fn rules_read(rules: &[(u64, &str)]) -> Record {
        with(
            Record::new(Kind::FirewallRule, 20 * 1_000_000, String::new()),
            |r| {
                r.netns = Some(SNS);
                r.dst = Some(S.parse().unwrap());
                r.rules = Some(
                    rules
                        .iter()
                        .map(|&(handle, rule)| FirewallRule {
                            source: "nft".into(),
                            family: "inet".into(),
                            table: "filter".into(),
                            chain: "input".into(),
                            hook: Some("input".into()),
                            priority: Some(0),
                            handle: Some(handle),
                            rule: rule.into(),
                            verdict: "drop".into(),
                        })
                        .collect(),
                );
                r.conntrack = Some(ConntrackStats {
                    entries: 1,
                    max: Some(262144),
                    invalid: 3,
                    ..Default::default()
                });
            },
        )
    }

    #[test]
    fn table() {
        check(vec![
            Row {
                name: "SYNs dropped by the rule for INVALID packets alone",
                records: vec![
                    drop_syn(0, "NETFILTER_DROP"),
                    rules_read(&[(2, "ct state invalid counter drop")]),
                    error(3_000, libc::ETIMEDOUT),
                ],
                cause: "conntrack_invalid",
                phrases: &[
                    "conntrack in netns 200 marked the SYNs to port 8080 INVALID (it has no valid state for them), and the rule `ct state invalid counter drop` (table inet filter, chain input, handle 2) drops them (1 dropped at nf_hook_slow+0x4c); conntrack there counts invalid 3, drop 0, early_drop 0, insert_failed 0; 1 entries (limit 262144) (`conntrack -S`)",
                    "sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=1",
                    "or remove the rule: nft delete rule inet filter input handle 2",
                ],
            },
            Row {
                // kube-proxy hosts have a rule for INVALID packets on every port: a
                // rule for the port itself is what drops a new connection's SYNs.
                name: "a rule for the port beside one for INVALID packets",
                records: vec![
                    drop_syn(0, "NETFILTER_DROP"),
                    rules_read(&[(2, "ct state invalid drop"), (4, "tcp dport 8080 drop")]),
                    error(3_000, libc::ETIMEDOUT),
                ],
                cause: "firewall_drop",
                phrases: &[
                    "the rule `tcp dport 8080 drop` (table inet filter, chain input, handle 4) in netns 200 drops SYNs",
                ],
            },
        ]);
    }
}
