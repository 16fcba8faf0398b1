//! The verdict: the cause, its sentence, the runbook's step for it and the commands,
//! from what the probe gathered; and the text forms of a report.
use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use super::{exit, Report, Verdict};

fn status(result: &str) -> (&'static str, u8) {
    match result {
        "connected" => ("reachable", exit::REACHABLE),
        "refused" => ("refused", exit::REFUSED),
        "timed out" => ("timed out", exit::TIMED_OUT),
        "unreachable" => ("unreachable", exit::UNREACHABLE),
        _ => ("failed", exit::UNREACHABLE),
    }
}

/// In `ip netns exec NAME` form when the rule lives in another named namespace.
fn in_ns(label: &str, cmd: String, probing: Option<&str>) -> String {
    let name = label
        .strip_prefix("netns ")
        .and_then(|l| l.split_whitespace().next())
        .filter(|n| !n.chars().all(|c| c.is_ascii_digit()));
    match name {
        Some(n) if Some(n) != probing => format!("ip netns exec {n} {cmd}"),
        _ => cmd,
    }
}

/// Adds `cmd` unless a command already given (the explanation's fix) has `key`.
fn add(commands: &mut Vec<String>, key: &str, cmd: String) {
    if !commands.iter().any(|c| c.contains(key)) {
        commands.push(cmd);
    }
}

/// Adds `cmd` when the explanation gave no fix.
fn fallback(commands: &mut Vec<String>, explained: bool, cmd: String) {
    if !explained {
        commands.push(cmd);
    }
}

pub fn verdict(r: &Report, primary: usize, hosts_label: &str) -> Verdict {
    let a = &r.attempts[primary];
    let port = a.dst.port();
    let (status, exit_code) = status(a.result);
    let story = a.explanations.iter().find(|e| e.outcome != "overflow");
    let overflow = a.explanations.iter().find(|e| e.outcome == "overflow");
    let local = r.local.as_ref();
    let mut details = Vec::new();
    let mut commands = Vec::new();
    // Without kernel evidence, the listener table still tells the commonest causes.
    let inferred = if story.is_none() && status == "refused" {
        local.and_then(|l| {
            let ns = l.target_netns?;
            let here: Vec<_> = l.listeners.iter().filter(|x| x.netns == ns).collect();
            if here.is_empty() {
                Some((
                    "nothing_listening",
                    format!("nothing listens on port {port} in netns {ns}"),
                ))
            } else if !here.iter().any(|x| x.accepts_target) {
                Some((
                    "listener_other_address",
                    format!(
                        "port {port} listens only on {}, not on {}",
                        here.iter()
                            .map(|x| x.addr.ip().to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        a.dst.ip()
                    ),
                ))
            } else {
                None
            }
        })
    } else {
        None
    };
    let cause = story
        .map(|e| e.cause)
        .or(overflow.map(|e| e.cause))
        .or(inferred.as_ref().map(|i| i.0))
        .filter(|_| status != "reachable");
    let explanation = match (status, story.or(overflow), &inferred) {
        ("reachable", _, _) => format!("{} accepted the connection in {} ms", a.dst, a.elapsed_ms),
        (_, Some(e), _) => e.explanation.clone(),
        (_, None, Some((_, why))) => format!(
            "connect to {} {status} ({}): {why} (inferred from the listener table, without kernel evidence)",
            a.dst,
            a.errno_name.unwrap_or("?")
        ),
        _ => format!(
            "connect to {} {status} ({}) after {} ms; no kernel evidence explains it",
            a.dst,
            a.errno_name.unwrap_or("?"),
            a.elapsed_ms
        ),
    };
    if let Some(e) = story.or(overflow) {
        commands.push(e.fix.clone());
    }
    for i in &a.icmp {
        details.push(format!(
            "ICMP {} from {}",
            i.name,
            i.from.map_or("?".into(), |f| f.to_string())
        ));
    }
    if let Some(p) = &r.path {
        match (&p.last_answer, p.reached) {
            (_, true) => details.push(format!(
                "path: the target answered TTL-limited SYNs at hop {}",
                p.hops.last().map_or(0, |h| h.ttl)
            )),
            (Some(h), false) => details.push(format!(
                "path: the trail stops after hop {} ({}, {}): the SYNs are lost beyond it",
                h.ttl,
                h.addr.map_or("?".into(), |x| x.to_string()),
                h.answer
            )),
            (None, false) => details.push(
                "path: no hop answered a TTL-limited SYN: the SYNs are lost at the first hop or on this host"
                    .into(),
            ),
        }
    }
    let blocking: Vec<_> = r.firewall.iter().filter(|f| f.blocks()).collect();
    for f in &blocking {
        details.push(format!(
            "firewall: {} {} {} {} chain {}{}: {} [{}]",
            f.netns,
            f.source,
            f.family,
            f.table,
            f.chain,
            f.handle.map_or(String::new(), |h| format!(" handle {h}")),
            f.rule,
            f.verdict
        ));
    }
    if let Some(l) = local {
        for x in &l.listeners {
            details.push(format!(
                "listener: {} in netns {}{}{}{} (queue {}/{}){}",
                x.addr,
                x.netns_name.clone().unwrap_or_else(|| x.netns.to_string()),
                x.owner
                    .as_ref()
                    .map_or(String::new(), |p| format!(" by {}[{}]", p.comm, p.pid)),
                x.unit.as_ref().map_or(String::new(), |u| format!(" ({u})")),
                if x.accepts_target {
                    ""
                } else {
                    ", not for this address"
                },
                x.queue_depth,
                x.backlog,
                if x.queue_depth > x.backlog {
                    " FULL"
                } else {
                    ""
                },
            ));
        }
    }
    let hosts_answer = r
        .resolution
        .answers
        .iter()
        .find(|x| x.addr == a.dst.ip() && x.source == "hosts");
    let stale = status != "reachable"
        && hosts_answer.is_some()
        && (matches!(status, "timed out" | "unreachable")
            || r.resolution.warnings.iter().any(|w| w.contains("stale")));
    let probing = r.netns.as_deref();
    let unit = local.and_then(|l| l.listeners.iter().find_map(|x| x.unit.clone()));
    // The explanation's fix already names the check: the runbook's own commands
    // are for what it cannot know (no kernel evidence), or concrete (a unit).
    let explained = !commands.is_empty();
    let runbook = if stale {
        let h = hosts_answer.expect("checked");
        details.insert(
            0,
            format!(
                "the name comes from {hosts_label} line {} ({} -> {}), and nothing answers at that address: the record is stale or wrong",
                h.hosts_line.unwrap_or(0),
                r.target.rsplit_once(':').map_or("", |x| x.0),
                h.addr
            ),
        );
        commands.insert(
            0,
            format!(
                "fix line {} of {hosts_label} (or remove it to use DNS); check: getent hosts {}",
                h.hosts_line.unwrap_or(0),
                r.target.rsplit_once(':').map_or("", |x| x.0)
            ),
        );
        "fix the record"
    } else {
        match cause.unwrap_or(status) {
            "reachable" => "nothing to fix",
            "nothing_listening" | "service_restarting" | "refused_by_remote" => {
                match &unit {
                    Some(u) => commands.insert(
                        0,
                        format!("systemctl restart {u}; journalctl -u {u} -n 50 (its logs)"),
                    ),
                    None if !explained => commands.push(format!(
                        "start the service; check: ss -tlnp 'sport = :{port}' in the target's namespace, and its logs"
                    )),
                    None => {}
                }
                "restart the service"
            }
            "listener_other_address" => {
                fallback(&mut commands, explained, format!(
                    "make the service listen on {} or 0.0.0.0 (its bind/listen setting), restart it; check: ss -tlnp 'sport = :{port}'",
                    a.dst.ip()
                ));
                "fix the bind address"
            }
            "listener_other_netns" => "publish the port in the target's namespace",
            "wrong_port" => "fix the port the client uses",
            "firewall_drop" | "firewall_reject" => {
                for f in &blocking {
                    commands.insert(0, in_ns(&f.netns, f.delete_command(), probing));
                }
                "open the port"
            }
            "icmp_reject" => "fix the host or router that rejects (named by its ICMP error)",
            "syn_unanswered" | "timed out" => {
                for f in &blocking {
                    commands.insert(0, in_ns(&f.netns, f.delete_command(), probing));
                }
                add(&mut commands, "tcptraceroute", format!("tcptraceroute {} {port}; check the firewall or security group just past the last hop that answered", a.dst.ip()));
                if blocking.is_empty() {
                    "find where the path drops the SYNs"
                } else {
                    "open the port"
                }
            }
            "no_route" | "connect_prohibited" | "unreachable" => {
                add(
                    &mut commands,
                    "ip route get",
                    format!("ip route get {}", a.dst.ip()),
                );
                "fix the route"
            }
            "neighbour_unreachable" => "bring the host up, or fix the address",
            "accept_queue_overflow" | "syn_queue_overflow" => {
                fallback(&mut commands, explained, format!(
                    "raise the listen() backlog and net.core.somaxconn, add workers or accept faster; check: ss -tlnp 'sport = :{port}' (Recv-Q above Send-Q), nstat -az TcpExtListenOverflows"
                ));
                "scale the backlog"
            }
            "refused" => "check the service and the firewall",
            _ => "check the server and the path by hand",
        }
    };
    Verdict {
        status,
        exit_code,
        cause,
        explanation,
        runbook: runbook.into(),
        details,
        commands,
    }
}

pub fn text(r: &Report, verbose: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "rstrace probe {}{}",
        r.target,
        r.netns
            .as_ref()
            .map_or(String::new(), |n| format!(" (from netns {n})"))
    );
    let _ = writeln!(s, "resolution:");
    for x in &r.resolution.answers {
        let _ = writeln!(
            s,
            "  {:<28} {}{}",
            x.addr,
            x.source,
            x.hosts_line
                .map_or(String::new(), |l| format!(" (line {l})"))
        );
    }
    if let Some(d) = &r.resolution.dns {
        let d: Vec<String> = d.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            s,
            "  DNS answers: {}",
            if d.is_empty() {
                "none".into()
            } else {
                d.join(", ")
            }
        );
    }
    for w in &r.resolution.warnings {
        let _ = writeln!(s, "  warning: {w}");
    }
    if !r.attempts.is_empty() {
        let _ = writeln!(s, "connect:");
    }
    for a in &r.attempts {
        let _ = writeln!(
            s,
            "  {:<28} {}{} in {} ms (local port {})",
            a.dst,
            a.result,
            a.errno_name.map_or(String::new(), |e| format!(" ({e})")),
            a.elapsed_ms,
            a.src_port
        );
        for i in &a.icmp {
            let _ = writeln!(
                s,
                "    ICMP {} from {}",
                i.name,
                i.from.map_or("?".into(), |f| f.to_string())
            );
        }
        for e in &a.explanations {
            let _ = writeln!(s, "    [{}] {} -- fix: {}", e.cause, e.explanation, e.fix);
            if verbose {
                for ev in &e.evidence {
                    let mut line = Vec::new();
                    crate::sink::text::record(ev, &mut line);
                    let _ = writeln!(s, "      {}", String::from_utf8_lossy(&line));
                }
            }
        }
    }
    if let Some(p) = &r.path {
        let _ = writeln!(s, "path (TTL-limited SYNs):");
        for h in &p.hops {
            let _ = writeln!(
                s,
                "  {:>2}  {:<28} {}",
                h.ttl,
                h.addr.map_or("*".into(), |a| a.to_string()),
                h.answer
            );
        }
    }
    if r.firewall.is_empty() && !r.firewall_checked.is_empty() {
        let _ = writeln!(
            s,
            "firewall: no rule for the port in {}",
            r.firewall_checked.join(", ")
        );
    }
    if !r.firewall.is_empty() {
        let _ = writeln!(s, "firewall rules for the port:");
        for f in &r.firewall {
            let _ = writeln!(
                s,
                "  {}: {} {} {} chain {}{}: {} [{}]",
                f.netns,
                f.source,
                f.family,
                f.table,
                f.chain,
                f.handle.map_or(String::new(), |h| format!(" handle {h}")),
                f.rule,
                f.verdict
            );
        }
    }
    if let Some(l) = &r.local {
        match l.target_netns {
            Some(ns) => {
                let _ = writeln!(
                    s,
                    "the target is on this host (netns {}{})",
                    ns,
                    l.target_netns_name
                        .as_ref()
                        .map_or(String::new(), |n| format!(" {n}"))
                );
            }
            None => {
                let _ = writeln!(s, "the target is not on this host");
            }
        }
        if !l.listeners.is_empty() {
            let _ = writeln!(s, "listeners on the port:");
            for x in &l.listeners {
                let _ = writeln!(
                    s,
                    "  {:<28} netns {}{}{} queue {}/{}{}",
                    x.addr,
                    x.netns_name.clone().unwrap_or_else(|| x.netns.to_string()),
                    x.owner
                        .as_ref()
                        .map_or(String::new(), |p| format!(" {}[{}]", p.comm, p.pid)),
                    x.unit.as_ref().map_or(String::new(), |u| format!(" ({u})")),
                    x.queue_depth,
                    x.backlog,
                    if x.accepts_target {
                        ""
                    } else {
                        " (not for this address)"
                    }
                );
            }
        }
    }
    let v = &r.verdict;
    let _ = writeln!(
        s,
        "verdict: {} (exit {}){}",
        v.status,
        v.exit_code,
        v.cause.map_or(String::new(), |c| format!(" [{c}]"))
    );
    let _ = writeln!(s, "  {}", v.explanation);
    for d in &v.details {
        let _ = writeln!(s, "  - {d}");
    }
    let _ = writeln!(s, "runbook: {}", v.runbook);
    for c in &v.commands {
        let _ = writeln!(s, "  $ {c}");
    }
    for m in &r.missing {
        let _ = writeln!(s, "not gathered: {m}");
    }
    let _ = writeln!(s, "took {} ms", r.elapsed_ms);
    s
}

pub fn one_line(r: &Report) -> String {
    let v = &r.verdict;
    format!(
        "{} {} {}{} in {} ms: {} -- runbook: {}",
        r.time,
        r.target,
        v.status,
        v.cause.map_or(String::new(), |c| format!(" [{c}]")),
        r.attempts.first().map_or(r.elapsed_ms, |a| a.elapsed_ms),
        v.explanation,
        v.runbook
    )
}

/// `--count N`: what the runs add up to.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub v: u32,
    pub kind: &'static str,
    pub target: String,
    pub runs: usize,
    pub reachable: usize,
    /// Runs by status.
    pub statuses: BTreeMap<&'static str, usize>,
    /// Failed runs by cause.
    pub causes: BTreeMap<&'static str, usize>,
    /// Connect time of the reachable runs, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_ms: Option<[u64; 3]>,
    /// 0 when every run reached the target, else the last failure's code.
    pub exit_code: u8,
}

impl Summary {
    pub fn of(runs: &[Report]) -> Summary {
        let mut statuses = BTreeMap::new();
        let mut causes = BTreeMap::new();
        let mut times = Vec::new();
        let mut exit_code = exit::REACHABLE;
        for r in runs {
            *statuses.entry(r.verdict.status).or_insert(0) += 1;
            if let Some(c) = r.verdict.cause {
                *causes.entry(c).or_insert(0) += 1;
            }
            if r.verdict.exit_code == exit::REACHABLE {
                times.extend(
                    r.attempts
                        .iter()
                        .filter(|a| a.result == "connected")
                        .map(|a| a.elapsed_ms)
                        .take(1),
                );
            } else {
                exit_code = r.verdict.exit_code;
            }
        }
        let connect_ms = (!times.is_empty()).then(|| {
            let sum: u64 = times.iter().sum();
            [
                *times.iter().min().expect("non-empty"),
                sum / times.len() as u64,
                *times.iter().max().expect("non-empty"),
            ]
        });
        Summary {
            v: super::SCHEMA_VERSION,
            kind: "probe_summary",
            target: runs.first().map_or(String::new(), |r| r.target.clone()),
            runs: runs.len(),
            reachable: statuses.get("reachable").copied().unwrap_or(0),
            statuses,
            causes,
            connect_ms,
            exit_code,
        }
    }

    pub fn text(&self) -> String {
        let mut s = format!(
            "{}: {}/{} reachable",
            self.target, self.reachable, self.runs
        );
        for (k, n) in &self.statuses {
            if *k != "reachable" {
                let _ = write!(s, ", {n} {k}");
            }
        }
        if !self.causes.is_empty() {
            let c: Vec<String> = self
                .causes
                .iter()
                .map(|(k, n)| format!("{k} x{n}"))
                .collect();
            let _ = write!(s, " ({})", c.join(", "));
        }
        if let Some([min, avg, max]) = self.connect_ms {
            let _ = write!(s, "; connect min/avg/max {min}/{avg}/{max} ms");
        }
        s.push('\n');
        s
    }
}
