//! Explanations: the rules' finding about a story (or a record that stands alone)
//! rendered as one sentence, who -> where, what happened and why, with the fix.
use std::net::SocketAddr;

use serde::Serialize;

use super::{
    rules::{Ctx, Finding, EVENT_RULES, RULES},
    story::{later_owner, Story, ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, ETIMEDOUT},
};
use crate::base::clock::Clock;
use crate::base::record::{errno_name, Proc, Record, Text, SCHEMA_VERSION};
use crate::base::workload::{Runtime, Workload};
use crate::enrich::host::Host;

/// Which end of the connection failed: the one whose process got the error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Side {
    #[default]
    Client,
    Server,
}

impl Side {
    pub fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    pub v: u32,
    /// Always "failure" (distinguishes explanations from event records).
    pub kind: &'static str,
    pub time: String,
    pub mono_ns: u64,
    /// Stable cause id, e.g. `nothing_listening`.
    pub cause: &'static str,
    pub confidence: f32,
    /// The process that failed (the connecting side, or the side that got the error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Proc>,
    /// The process responsible, when another (the listener's owner, the resetting app).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub culprit: Option<Proc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_netns: Option<u32>,
    /// The `ip netns` names of those namespaces, when they have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns_name: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_netns_name: Option<Text>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno_name: Option<&'static str>,
    /// True when no errno event was seen (kernels before 5.13) and `errno_name` is
    /// what the socket's death implies.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub errno_inferred: bool,
    /// "refused", "timed out", "reset", ...
    pub outcome: &'static str,
    /// One sentence: who, where, what happened and why.
    pub explanation: String,
    /// What to check or change.
    pub fix: String,
    /// Failures this line stands for: 1, or the size of a collapsed burst.
    pub count: u64,
    /// For collapsed bursts: the window they were counted in, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// The evidence the explanation rests on.
    pub evidence: Vec<Record>,
    /// The end that failed: the server when the failed end is the story's server,
    /// else the client. A metrics label only: the JSON schema has no field for it yet.
    #[serde(skip)]
    pub side: Side,
}

fn outcome(errno: Option<i32>, s: &Story) -> &'static str {
    match errno {
        Some(ECONNREFUSED) => "refused",
        Some(ETIMEDOUT) => "timed out",
        Some(EHOSTUNREACH) => "failed: host unreachable",
        Some(ENETUNREACH) => "failed: network unreachable",
        Some(libc::ECONNRESET) => "reset",
        Some(libc::EPIPE) => "broken (EPIPE)",
        Some(_) => "failed",
        None if s.was_established() => "reset",
        None if s
            .rsts_sent()
            .any(|r| r.reason.as_deref() == Some("NO_SOCKET")) =>
        {
            "refused"
        }
        None if s.drops("NETFILTER_DROP").next().is_some() => "blocked",
        None => "failed",
    }
}

/// Wall-clock text of a record time (empty without a clock: tests).
pub(super) fn time(clock: Option<Clock>, ns: u64) -> String {
    clock.map_or_else(String::new, |c| c.format(ns))
}

/// The explanation of a complete story: the first rule that finds its cause. Its time
/// text and evidence are left empty (see `Bursts::emit`).
pub(super) fn explain(host: &Host, s: &Story, clock: Option<Clock>) -> Explanation {
    let errno = s.errno().or_else(|| s.inferred_errno());
    let ctx = Ctx {
        host,
        story: s,
        client: s.client(),
        server: s.server(),
        server_netns: s.server_netns(host),
        errno,
        at_ns: s.failure_ns(),
    };
    let finding = RULES
        .iter()
        .find_map(|r| r.check(&ctx))
        .unwrap_or_else(|| unexplained(&ctx));
    let (src, dst) = match (ctx.client, ctx.server) {
        (Some(c), Some(sv)) => (Some(c), Some(sv)),
        _ => (
            s.errno_record().and_then(|r| r.src).or(Some(s.key.0)),
            s.errno_record().and_then(|r| r.dst).or(Some(s.key.1)),
        ),
    };
    let victim = s.victim().cloned().or_else(|| {
        let end = s.failed_end()?;
        s.evidence
            .iter()
            .filter(|r| r.src == Some(end))
            .find_map(|r| later_owner(host, r))
            .cloned()
    });
    let who = match &victim {
        Some(p) => p.named(),
        None => src.map_or("?".into(), |a| a.to_string()),
    };
    let out = outcome(errno, s);
    let side = match (s.failed_end(), ctx.server) {
        (Some(end), Some(server)) if end == server => Side::Server,
        _ => Side::Client,
    };
    let fix = with_workload_fix(
        finding.fix,
        finding.culprit.as_ref(),
        exit_since(host, clock, finding.culprit.as_ref()),
    );
    let explanation = format!(
        "{who} -> {} {out}: {}",
        dst.map_or("?".into(), |d| d.to_string()),
        finding.reason
    );
    Explanation {
        v: SCHEMA_VERSION,
        kind: "failure",
        time: String::new(),
        mono_ns: ctx.at_ns,
        cause: finding.cause,
        confidence: finding.confidence,
        process: victim,
        culprit: finding.culprit,
        netns: s.client_netns(),
        server_netns: ctx.server_netns,
        netns_name: name_of(host, s.client_netns()),
        server_netns_name: name_of(host, ctx.server_netns),
        src,
        dst,
        errno_name: errno.and_then(errno_name),
        errno_inferred: s.errno().is_none() && errno.is_some(),
        outcome: out,
        explanation,
        fix,
        count: 1,
        window_ms: None,
        evidence: Vec::new(),
        side,
    }
}

fn name_of(host: &Host, netns: Option<u32>) -> Option<Text> {
    netns.and_then(|n| host.netns_name(n)).map(Text::from)
}

/// A minute before the culprit exited, in local time (`journalctl --since`), when
/// its exit was seen.
fn exit_since(host: &Host, clock: Option<Clock>, culprit: Option<&Proc>) -> Option<String> {
    let at = host.exited(culprit?.pid)?;
    let wall = clock?
        .wall_at(at)
        .checked_sub(std::time::Duration::from_secs(60))?;
    crate::base::clock::local_text(wall)
}

/// The fix, followed by the commands that look at the culprit's workload; `since`,
/// a minute before it exited, bounds its unit's journal.
fn with_workload_fix(fix: String, culprit: Option<&Proc>, since: Option<String>) -> String {
    match culprit
        .and_then(|p| p.workload.as_deref())
        .and_then(|w| workload_commands(w, since.as_deref()))
    {
        Some(cmds) => format!("{fix}; {cmds}"),
        None => fix,
    }
}

/// What to run to see why a workload's process went away: its pod, its container
/// runtime's view, or its systemd unit, the most specific first.
fn workload_commands(w: &Workload, since: Option<&str>) -> Option<String> {
    if let Some(p) = &w.pod {
        if let (Some(ns), Some(name)) = (&p.namespace, &p.name) {
            return Some(format!(
                "the pod: kubectl -n {ns} describe pod {name} (restarts, readiness probe), kubectl -n {ns} logs {name} --previous"
            ));
        }
    }
    if let Some(c) = &w.container {
        if w.pod.is_none() && !c.monitor {
            let name = c.name.as_deref().unwrap_or_else(|| c.short_id());
            return Some(match c.runtime {
                Runtime::Docker => {
                    format!("the container: docker ps -a --filter name={name}, docker logs {name}")
                }
                Runtime::Podman => {
                    format!("the container: podman ps -a --filter name={name}, podman logs {name}")
                }
                Runtime::Lxc => format!("the container: lxc-info -n {name}"),
                Runtime::Crun => format!("the container: crun state {name}, crun list"),
                Runtime::Containerd | Runtime::CriO | Runtime::Cri => {
                    format!(
                        "the container: crictl ps -a --id {}, crictl logs {}",
                        c.short_id(),
                        c.short_id()
                    )
                }
            });
        }
        return None;
    }
    let unit = w.unit.as_ref()?;
    let user = if w.unit_user.is_some() { "--user " } else { "" };
    let journal = match since {
        Some(t) => format!("--since '{t}'"),
        None => "-n 100".to_string(),
    };
    Some(format!(
        "the service: systemctl {user}status {unit}, journalctl {user}-u {unit} {journal}"
    ))
}

/// The explanation of a record that stands alone, if an event rule finds one. The
/// record's local address (a listener's) is what failed.
pub(super) fn explain_event(host: &Host, r: &Record, clock: Option<Clock>) -> Option<Explanation> {
    let (rule, finding) = EVENT_RULES
        .iter()
        .find_map(|rule| Some((rule, rule.check(host, r)?)))?;
    let fix = with_workload_fix(
        finding.fix,
        finding.culprit.as_ref(),
        exit_since(host, clock, finding.culprit.as_ref()),
    );
    Some(Explanation {
        v: SCHEMA_VERSION,
        kind: "failure",
        time: String::new(),
        mono_ns: r.mono_ns,
        cause: finding.cause,
        confidence: finding.confidence,
        process: None,
        culprit: finding.culprit,
        netns: None,
        server_netns: r.netns,
        netns_name: None,
        server_netns_name: name_of(host, r.netns),
        src: None,
        dst: r.src,
        errno_name: None,
        errno_inferred: false,
        outcome: rule.outcome(),
        explanation: finding.reason,
        fix,
        count: 1,
        window_ms: None,
        evidence: Vec::new(),
        // A listener's failure (its queue): the server's.
        side: Side::Server,
    })
}

#[cfg(test)]
impl Explanation {
    /// A client's failure of `cause` with nothing else known.
    pub fn for_tests(cause: &'static str) -> Explanation {
        Explanation {
            v: SCHEMA_VERSION,
            kind: "failure",
            time: String::new(),
            mono_ns: 0,
            cause,
            confidence: 1.0,
            process: None,
            culprit: None,
            netns: None,
            server_netns: None,
            netns_name: None,
            server_netns_name: None,
            src: None,
            dst: None,
            errno_name: None,
            errno_inferred: false,
            outcome: "refused",
            explanation: String::new(),
            fix: String::new(),
            count: 1,
            window_ms: None,
            evidence: Vec::new(),
            side: Side::Client,
        }
    }
}

/// Evidence with its wall-clock text filled in.
pub(super) fn timed(clock: Option<Clock>, records: &[Record]) -> Vec<Record> {
    records
        .iter()
        .map(|r| {
            let mut r = r.clone();
            if r.time.is_empty() {
                r.time = time(clock, r.mono_ns);
            }
            r
        })
        .collect()
}

fn unexplained(c: &Ctx) -> Finding {
    let kinds: Vec<String> = c
        .story
        .evidence
        .iter()
        .map(|r| match (&r.reason, r.errno.and_then(errno_name)) {
            (Some(reason), _) => format!("{} {reason}", r.kind.label()),
            (None, Some(e)) => format!("{} {e}", r.kind.label()),
            _ => r.kind.label().to_string(),
        })
        .collect();
    Finding {
        cause: "unexplained",
        confidence: 0.0,
        reason: format!("no rule explains this; evidence: {}", kinds.join(", ")),
        fix: "run with -v (or --json) for the evidence and check the server and the path by hand"
            .into(),
        culprit: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::workload::{Container, Pod};

    #[test]
    fn the_fix_names_the_culprits_unit_container_or_pod() {
        let mut p = Proc {
            pid: 880,
            comm: "nginx".into(),
            cgroup: Some(7),
            workload: None,
        };
        assert_eq!(with_workload_fix("f".into(), Some(&p), None), "f");
        p.workload = Some(std::sync::Arc::new(Workload {
            unit: Some("nginx.service".into()),
            ..Default::default()
        }));
        assert_eq!(
            with_workload_fix("f".into(), Some(&p), None),
            "f; the service: systemctl status nginx.service, journalctl -u nginx.service -n 100"
        );
        assert_eq!(
            with_workload_fix("f".into(), Some(&p), Some("2026-12-01 01:04:21".into())),
            "f; the service: systemctl status nginx.service, journalctl -u nginx.service --since '2026-12-01 01:04:21'"
        );
        p.workload = Some(std::sync::Arc::new(Workload {
            unit: Some("docker-0123.scope".into()),
            container: Some(Container {
                runtime: Runtime::Docker,
                id: "0123456789abcdef".into(),
                name: Some("web".into()),
                monitor: false,
            }),
            ..Default::default()
        }));
        assert_eq!(
            with_workload_fix("f".into(), Some(&p), None),
            "f; the container: docker ps -a --filter name=web, docker logs web"
        );
        assert_eq!(
            p.named(),
            "container web (docker 0123456789ab) (nginx[880])"
        );
        let crun = Workload {
            container: Some(Container {
                runtime: Runtime::Crun,
                id: "rstrace-web-1".into(),
                name: Some("rstrace-web-1".into()),
                monitor: false,
            }),
            ..Default::default()
        };
        let q = Proc {
            workload: Some(std::sync::Arc::new(crun)),
            ..p.clone()
        };
        assert_eq!(
            with_workload_fix("f".into(), Some(&q), None),
            "f; the container: crun state rstrace-web-1, crun list"
        );
        assert_eq!(q.named(), "container rstrace-web-1 (crun) (nginx[880])");
        let w = std::sync::Arc::make_mut(p.workload.as_mut().unwrap());
        w.pod = Some(Pod {
            uid: "u".into(),
            qos: None,
            namespace: Some("shop".into()),
            name: Some("web-0".into()),
        });
        assert_eq!(
            with_workload_fix("f".into(), Some(&p), None),
            "f; the pod: kubectl -n shop describe pod web-0 (restarts, readiness probe), kubectl -n shop logs web-0 --previous"
        );
        assert_eq!(p.named(), "pod shop/web-0 container web (nginx[880])");
    }
}
