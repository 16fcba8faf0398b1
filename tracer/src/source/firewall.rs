//! Local firewall rules that match a destination port: nftables (`nft -j list
//! ruleset`, parsed) and iptables (`iptables-save`), in the namespaces that matter
//! (for `probe`: the probing one, the target's when it is on this host, any where the
//! kernel saw the SYNs dropped; for `watch`: the one where netfilter dropped packets),
//! each with its table, chain, hook, priority, handle and verdict.
use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;
use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// Where it was read: the namespace's name or inode text.
    pub netns: String,
    /// `nft` or `iptables`/`ip6tables`.
    pub source: &'static str,
    pub family: String,
    pub table: String,
    pub chain: String,
    /// The netfilter hook of its chain, when a base chain (`input`, `output`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    /// Its chain's priority within the hook (lower runs first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    /// The rule as text (nft syntax, or the iptables-save line).
    pub rule: String,
    /// `drop`, `reject`, `accept`, `jump X`, ... (`none` when the rule has none).
    pub verdict: String,
}

impl Rule {
    pub fn blocks(&self) -> bool {
        self.verdict == "drop" || self.verdict.starts_with("reject")
    }

    /// The command that removes it (run in its namespace).
    pub fn delete_command(&self) -> String {
        self.to_record().delete_command()
    }

    /// The rule as a `firewall_rule` record carries it.
    pub fn to_record(&self) -> crate::base::record::FirewallRule {
        crate::base::record::FirewallRule {
            source: self.source.into(),
            family: self.family.as_str().into(),
            table: self.table.as_str().into(),
            chain: self.chain.as_str().into(),
            hook: self.hook.as_deref().map(Into::into),
            priority: self.priority,
            handle: self.handle,
            rule: self.rule.as_str().into(),
            verdict: self.verdict.as_str().into(),
        }
    }
}

/// Where a hook comes on a packet's way (ingress first); None for an unknown one.
pub fn hook_rank(hook: &str) -> Option<u8> {
    Some(match hook {
        "ingress" => 0,
        "prerouting" => 1,
        "input" => 2,
        "forward" => 3,
        "output" => 4,
        "postrouting" => 5,
        _ => return None,
    })
}

/// Orders rules as netfilter runs them: by hook, then chain priority; the listing
/// order (which is the order within a chain) is kept otherwise. Rules of chains only
/// reached by a jump (no hook) go last.
pub fn in_hook_order(rules: &mut [Rule]) {
    rules.sort_by_key(|r| {
        (
            r.hook.as_deref().and_then(hook_rank).unwrap_or(u8::MAX),
            r.priority.unwrap_or(i32::MAX),
        )
    });
}

/// Runs `cmd` with its network namespace set to the one at `ns` (None: ours).
pub fn output_in(ns: Option<&Path>, cmd: &str, args: &[&str]) -> Result<String> {
    let mut c = Command::new(cmd);
    c.args(args);
    let file = ns
        .map(|p| File::open(p).with_context(|| format!("opening {}", p.display())))
        .transpose()?;
    if let Some(f) = &file {
        let fd = f.as_raw_fd();
        let join = move || {
            // SAFETY: `fd` is `file`'s, open until after the spawn (the child's copy
            // until its exec).
            if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        // SAFETY: the hook only calls setns, which is async-signal-safe (allowed
        // between fork and exec); it allocates nothing and takes no lock.
        unsafe { c.pre_exec(join) };
    }
    let out = c.output().with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether an nft value (number, set, range, named set reference) holds `port`.
fn holds(v: &Value, port: u16, sets: &[(String, Value)]) -> bool {
    match v {
        Value::Number(n) => n.as_u64() == Some(u64::from(port)),
        Value::Array(a) => a.iter().any(|x| holds(x, port, sets)),
        Value::String(s) => s
            .strip_prefix('@')
            .and_then(|name| sets.iter().find(|(n, _)| n == name))
            .is_some_and(|(_, elems)| holds(elems, port, sets)),
        Value::Object(o) => {
            if let Some(r) = o.get("range").and_then(Value::as_array) {
                let lo = r.first().and_then(Value::as_u64).unwrap_or(u64::MAX);
                let hi = r.get(1).and_then(Value::as_u64).unwrap_or(0);
                return (lo..=hi).contains(&u64::from(port));
            }
            o.get("set")
                .or_else(|| o.get("elem"))
                .or_else(|| o.get("val"))
                .is_some_and(|x| holds(x, port, sets))
        }
        _ => false,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(" "),
        Value::Object(o) => {
            if let Some(p) = o.get("payload") {
                return format!("{} {}", text(&p["protocol"]), text(&p["field"]));
            }
            if let Some(m) = o.get("meta") {
                return format!("meta {}", text(&m["key"]));
            }
            if let Some(c) = o.get("ct") {
                return format!("ct {}", text(&c["key"]));
            }
            if let Some(r) = o.get("range").and_then(Value::as_array) {
                return r.iter().map(text).collect::<Vec<_>>().join("-");
            }
            if let Some(s) = o.get("set") {
                let items = match s {
                    Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
                    other => text(other),
                };
                return format!("{{ {items} }}");
            }
            if let Some(p) = o.get("prefix") {
                return format!("{}/{}", text(&p["addr"]), text(&p["len"]));
            }
            o.keys().cloned().collect::<Vec<_>>().join(" ")
        }
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
    }
}

/// One expression as nft prints it (near enough to find the rule by eye).
fn expr_text(e: &Value) -> (String, Option<String>) {
    let Some((k, v)) = e.as_object().and_then(|o| o.iter().next()) else {
        return (String::new(), None);
    };
    match k.as_str() {
        "match" => {
            let op = v["op"].as_str().unwrap_or("==");
            let op = if op == "==" || op == "in" {
                String::new()
            } else {
                format!("{op} ")
            };
            (
                format!("{} {op}{}", text(&v["left"]), text(&v["right"])),
                None,
            )
        }
        "drop" | "accept" | "return" | "continue" => (k.clone(), Some(k.clone())),
        "reject" => {
            let with = match v.get("type").and_then(Value::as_str) {
                Some("tcp reset") => " with tcp reset".to_string(),
                Some(t) => format!(" with {t} {}", v.get("expr").map(text).unwrap_or_default())
                    .trim_end()
                    .to_string(),
                None => String::new(),
            };
            (format!("reject{with}"), Some("reject".into()))
        }
        "jump" | "goto" => {
            let t = format!("{k} {}", text(&v["target"]));
            (t.clone(), Some(t))
        }
        "counter" => ("counter".into(), None),
        "log" => ("log".into(), None),
        other => (other.to_string(), None),
    }
}

/// Whether an nft match expression is `ct state` holding `invalid` (not negated).
fn matches_ct_invalid(m: &Value) -> bool {
    m["left"]["ct"]["key"].as_str() == Some("state") && m["op"].as_str() != Some("!=") && {
        let r = &m["right"];
        let has = |v: &Value| v.as_str() == Some("invalid");
        has(r)
            || r.as_array().is_some_and(|a| a.iter().any(has))
            || r["set"].as_array().is_some_and(|a| a.iter().any(has))
    }
}

/// The rules of an `nft -j list ruleset` that match destination port `port`; with
/// `invalid_too`, also the rules for packets conntrack marked INVALID that match no
/// other port (`ct state invalid drop`: they act on every port).
pub fn nft_rules(json: &str, port: u16, netns: &str, invalid_too: bool) -> Result<Vec<Rule>> {
    let v: Value = serde_json::from_str(json).context("parsing nft -j output")?;
    let items = v["nftables"].as_array().cloned().unwrap_or_default();
    let sets: Vec<(String, Value)> = items
        .iter()
        .filter_map(|i| {
            let s = i.get("set")?;
            Some((s["name"].as_str()?.to_string(), s.get("elem")?.clone()))
        })
        .collect();
    // Base chains: (family, table, name) -> (hook, priority).
    type BaseChain = ((String, String, String), (String, Option<i32>));
    let chains: Vec<BaseChain> = items
        .iter()
        .filter_map(|i| {
            let c = i.get("chain")?;
            let key = (
                c["family"].as_str()?.to_string(),
                c["table"].as_str()?.to_string(),
                c["name"].as_str()?.to_string(),
            );
            let prio = c["prio"].as_i64().and_then(|p| i32::try_from(p).ok());
            Some((key, (c["hook"].as_str()?.to_string(), prio)))
        })
        .collect();
    let mut out = Vec::new();
    for item in &items {
        let Some(r) = item.get("rule") else { continue };
        let exprs = r["expr"].as_array().cloned().unwrap_or_default();
        let dport_match = exprs.iter().any(|e| {
            let Some(m) = e.get("match") else {
                return false;
            };
            let is_dport = m["left"]["payload"]["field"].as_str() == Some("dport");
            let negated = m["op"].as_str() == Some("!=");
            is_dport && holds(&m["right"], port, &sets) != negated
        });
        let any_dport = exprs
            .iter()
            .any(|e| e["match"]["left"]["payload"]["field"].as_str() == Some("dport"));
        let ct_invalid = exprs
            .iter()
            .any(|e| e.get("match").is_some_and(matches_ct_invalid));
        // A rule for INVALID packets that names no port acts on this one too.
        let for_every_port = invalid_too && ct_invalid && !any_dport;
        if !(dport_match || for_every_port) {
            continue;
        }
        let mut words = Vec::new();
        let mut verdict = None;
        for e in &exprs {
            let (t, v) = expr_text(e);
            if !t.is_empty() {
                words.push(t);
            }
            verdict = v.or(verdict);
        }
        let family = r["family"].as_str().unwrap_or("").to_string();
        let table = r["table"].as_str().unwrap_or("").to_string();
        let chain = r["chain"].as_str().unwrap_or("").to_string();
        let base = chains
            .iter()
            .find(|(k, _)| k.0 == family && k.1 == table && k.2 == chain)
            .map(|(_, v)| v.clone());
        out.push(Rule {
            netns: netns.to_string(),
            source: "nft",
            family,
            table,
            chain,
            hook: base.as_ref().map(|b| b.0.clone()),
            priority: base.and_then(|b| b.1),
            handle: r["handle"].as_u64(),
            rule: words.join(" "),
            verdict: verdict.unwrap_or_else(|| "none".into()),
        });
    }
    Ok(out)
}

/// Whether an iptables `--dport`/`--dports` argument holds `port`.
fn ipt_holds(arg: &str, port: u16) -> bool {
    arg.split(',').any(|p| match p.split_once(':') {
        Some((a, b)) => {
            let lo = a.parse().unwrap_or(0);
            let hi = b.parse().unwrap_or(u16::MAX);
            (lo..=hi).contains(&port)
        }
        None => p.parse() == Ok(port),
    })
}

/// The lines of an `iptables-save` that match destination port `port`; with
/// `invalid_too`, also those for packets conntrack marked INVALID (`--ctstate
/// INVALID`, `--state INVALID`) that name no port.
pub fn iptables_rules(
    save: &str,
    port: u16,
    netns: &str,
    source: &'static str,
    invalid_too: bool,
) -> Vec<Rule> {
    let mut table = String::new();
    let mut out = Vec::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
            continue;
        }
        let Some(rest) = line.strip_prefix("-A ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        let is_dport = |w: &str| matches!(w, "--dport" | "--dports" | "--destination-port");
        let matched = words
            .windows(2)
            .any(|w| is_dport(w[0]) && ipt_holds(w[1], port));
        let invalid = invalid_too
            && !words.iter().any(|w| is_dport(w))
            && crate::base::record::FirewallRule {
                source: source.into(),
                family: "".into(),
                table: "".into(),
                chain: "".into(),
                hook: None,
                priority: None,
                handle: None,
                rule: line.into(),
                verdict: "".into(),
            }
            .matches_invalid();
        if !matched && !invalid {
            continue;
        }
        let verdict = words
            .windows(2)
            .find(|w| w[0] == "-j")
            .map_or("none".to_string(), |w| w[1].to_ascii_lowercase());
        let chain = words.first().unwrap_or(&"").to_string();
        // The built-in chains are hooks; the tables' priorities are fixed.
        let hook = match chain.as_str() {
            "PREROUTING" | "INPUT" | "FORWARD" | "OUTPUT" | "POSTROUTING" => {
                Some(chain.to_ascii_lowercase())
            }
            _ => None,
        };
        let priority = hook.as_ref().and_then(|_| {
            Some(match table.as_str() {
                "raw" => -300,
                "mangle" => -150,
                "nat" if chain == "POSTROUTING" || chain == "INPUT" => 100,
                "nat" => -100,
                "filter" => 0,
                "security" => 50,
                _ => return None,
            })
        });
        out.push(Rule {
            netns: netns.to_string(),
            source,
            family: if source == "ip6tables" { "ip6" } else { "ip" }.into(),
            table: table.clone(),
            chain,
            hook,
            priority,
            handle: None,
            rule: line.to_string(),
            verdict,
        });
    }
    out
}

/// The rules matching `port` in the namespace at `ns` (None: ours), named `label`
/// (with `invalid_too`, also those for packets conntrack marked INVALID, on any
/// port); and what could not be read.
pub fn rules_in(
    ns: Option<&Path>,
    label: &str,
    port: u16,
    invalid_too: bool,
) -> (Vec<Rule>, Vec<String>) {
    let mut rules = Vec::new();
    let mut missing = Vec::new();
    match output_in(ns, "nft", &["-j", "list", "ruleset"]) {
        Ok(json) => match nft_rules(&json, port, label, invalid_too) {
            Ok(r) => rules.extend(r),
            Err(e) => missing.push(format!("nftables rules in {label}: {e:#}")),
        },
        Err(e) => missing.push(format!("nftables rules in {label}: {e:#}")),
    }
    for (bin, source) in [
        ("iptables-save", "iptables"),
        ("ip6tables-save", "ip6tables"),
    ] {
        match output_in(ns, bin, &[]) {
            Ok(save) => {
                for r in iptables_rules(&save, port, label, source, invalid_too) {
                    // iptables-nft rules also show in the nft ruleset: list each once.
                    if !rules
                        .iter()
                        .any(|x| x.chain == r.chain && x.verdict == r.verdict && x.source == "nft")
                    {
                        rules.push(r);
                    }
                }
            }
            // A missing iptables (nft-only hosts) hides nothing nft did not show.
            Err(e)
                if e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
                }) => {}
            Err(e) => missing.push(format!("{source} rules in {label}: {e:#}")),
        }
    }
    (rules, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULESET: &str = r#"{"nftables": [{"metainfo": {"json_schema_version": 1}},
      {"table": {"family": "inet", "name": "f", "handle": 1}},
      {"chain": {"family": "inet", "table": "f", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": -10, "policy": "accept"}},
      {"set": {"family": "inet", "name": "web", "table": "f", "type": "inet_service", "handle": 3, "elem": [80, 443]}},
      {"rule": {"family": "inet", "table": "f", "chain": "input", "handle": 4, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8105}},
        {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}},
      {"rule": {"family": "inet", "table": "f", "chain": "input", "handle": 5, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [22, {"range": [8000, 8200]}]}}},
        {"reject": {"type": "tcp reset"}}]}},
      {"rule": {"family": "inet", "table": "f", "chain": "input", "handle": 6, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": "@web"}},
        {"accept": null}]}},
      {"rule": {"family": "inet", "table": "f", "chain": "input", "handle": 7, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "sport"}}, "right": 8105}},
        {"drop": null}]}}]}"#;

    #[test]
    fn nft_rules_matching_the_port_with_their_verdicts() {
        let r = nft_rules(RULESET, 8105, "host", false).unwrap();
        let got: Vec<(u64, &str, &str)> = r
            .iter()
            .map(|r| (r.handle.unwrap(), r.verdict.as_str(), r.rule.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (4, "drop", "tcp dport 8105 counter drop"),
                (
                    5,
                    "reject",
                    "tcp dport { 22, 8000-8200 } reject with tcp reset"
                ),
            ]
        );
        assert!(r[0].blocks());
        assert_eq!(
            (r[0].hook.as_deref(), r[0].priority),
            (Some("input"), Some(-10))
        );
        assert_eq!(
            r[0].delete_command(),
            "nft delete rule inet f input handle 4"
        );
        let web = nft_rules(RULESET, 443, "host", false).unwrap();
        assert_eq!(web.len(), 1);
        assert_eq!(web[0].verdict, "accept");
        assert!(nft_rules(RULESET, 9999, "host", false).unwrap().is_empty());
    }

    /// As nft 1.0.6 lists `ct state invalid counter drop`, a port's own
    /// `ct state invalid` reject, and an iptables-nft `-m conntrack` rule (an opaque
    /// `xt` match there: only iptables-save shows its states).
    const CT_RULESET: &str = r#"{"nftables": [
      {"chain": {"family": "inet", "table": "t", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}},
      {"rule": {"family": "inet", "table": "t", "chain": "input", "handle": 2, "expr": [
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}},
        {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}},
      {"rule": {"family": "inet", "table": "t", "chain": "input", "handle": 3, "expr": [
        {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}},
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": "invalid"}},
        {"reject": {"type": "tcp reset"}}]}},
      {"rule": {"family": "inet", "table": "t", "chain": "input", "handle": 4, "expr": [
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
        {"accept": null}]}},
      {"rule": {"family": "ip", "table": "filter", "chain": "INPUT", "handle": 5, "expr": [
        {"xt": {"type": "match", "name": "conntrack"}}, {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}]}}]}"#;

    #[test]
    fn conntrack_invalid_rules_match_every_port_when_asked() {
        let r = nft_rules(CT_RULESET, 8080, "host", true).unwrap();
        let got: Vec<(u64, &str)> = r
            .iter()
            .map(|r| (r.handle.unwrap(), r.rule.as_str()))
            .collect();
        assert_eq!(got, vec![(2, "ct state invalid counter drop")]);
        assert!(r[0].to_record().matches_invalid());
        // A port's own rule, and the rule for INVALID packets of every port.
        let on_80: Vec<u64> = nft_rules(CT_RULESET, 80, "host", true)
            .unwrap()
            .iter()
            .map(|r| r.handle.unwrap())
            .collect();
        assert_eq!(on_80, vec![2, 3]);
        // Not asked (probe's port listing): only the port's rules.
        assert!(nft_rules(CT_RULESET, 8080, "host", false)
            .unwrap()
            .is_empty());
        let save = "*filter\n-A INPUT -m conntrack --ctstate INVALID -j DROP\n-A INPUT -p tcp --dport 22 -m state --state INVALID -j DROP\n-A INPUT -m conntrack --ctstate NEW -j DROP\nCOMMIT\n";
        let r = iptables_rules(save, 8080, "host", "iptables", true);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].rule, "-A INPUT -m conntrack --ctstate INVALID -j DROP");
        assert_eq!(r[0].verdict, "drop");
        assert!(iptables_rules(save, 8080, "host", "iptables", false).is_empty());
        assert_eq!(iptables_rules(save, 22, "host", "iptables", true).len(), 2);
    }

    #[test]
    fn iptables_save_lines_matching_the_port() {
        let save = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 8106 -j REJECT --reject-with tcp-reset\n-A INPUT -p tcp -m multiport --dports 80,8000:8200 -j DROP\n-A INPUT -p tcp --dport 22 -j ACCEPT\nCOMMIT\n";
        let r = iptables_rules(save, 8106, "host", "iptables", false);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].chain.as_str(), r[0].verdict.as_str()),
            ("INPUT", "reject")
        );
        assert_eq!(r[1].verdict, "drop");
        assert_eq!(
            (r[0].hook.as_deref(), r[0].priority),
            (Some("input"), Some(0))
        );
        assert_eq!(
            r[0].delete_command(),
            "iptables -t filter -D INPUT -p tcp -m tcp --dport 8106 -j REJECT --reject-with tcp-reset"
        );
        assert!(iptables_rules(save, 9000, "host", "iptables", false).is_empty());
    }

    #[test]
    fn rules_in_the_order_netfilter_runs_them() {
        let rule = |chain: &str, hook: Option<&str>, prio: Option<i32>| Rule {
            netns: "host".into(),
            source: "nft",
            family: "inet".into(),
            table: "t".into(),
            chain: chain.into(),
            hook: hook.map(Into::into),
            priority: prio,
            handle: Some(1),
            rule: "tcp dport 1 drop".into(),
            verdict: "drop".into(),
        };
        let mut v = vec![
            rule("jumped", None, None),
            rule("late", Some("input"), Some(10)),
            rule("pre", Some("prerouting"), Some(0)),
            rule("early", Some("input"), Some(-5)),
            rule("early2", Some("input"), Some(-5)),
        ];
        in_hook_order(&mut v);
        let got: Vec<&str> = v.iter().map(|r| r.chain.as_str()).collect();
        assert_eq!(got, ["pre", "early", "early2", "late", "jumped"]);
    }
}
