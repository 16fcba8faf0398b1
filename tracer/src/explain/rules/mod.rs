//! Explanation rules, one per cause, tried in order; the first that matches explains
//! the story. Each has a stable id (the `cause` of the output), a confidence, the
//! sentence's reason and the runbook's fix.
mod backlog;
mod conntrack;
mod firewall;
mod ports;
mod refusal;
mod reset;
mod unreachable;

use std::net::SocketAddr;

use super::story::Story;
use crate::base::{
    reasons,
    record::{Proc, Record},
};
use crate::enrich::host::Host;

pub struct Ctx<'a> {
    pub host: &'a Host,
    pub story: &'a Story,
    pub client: Option<SocketAddr>,
    pub server: Option<SocketAddr>,
    /// The server's namespace, from its own evidence or its address.
    pub server_netns: Option<u32>,
    pub errno: Option<i32>,
    pub at_ns: u64,
}

impl Ctx<'_> {
    pub fn server_port(&self) -> u16 {
        self.server.map_or(0, |s| s.port())
    }

    pub fn refused(&self) -> bool {
        !self.story.was_established()
            && (self.errno == Some(libc::ECONNREFUSED)
                || self
                    .story
                    .rsts_sent()
                    .any(|r| r.reason.as_deref() == Some(reasons::NO_SOCKET))
                || (self.errno.is_none() && self.story.rst_received().is_some()))
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub cause: &'static str,
    /// 0 to 1: how sure the evidence makes the rule.
    pub confidence: f32,
    /// Why, in words that follow "<who> -> <where> <outcome>: ".
    pub reason: String,
    /// What to check or change, with the command.
    pub fix: String,
    /// The process that caused it, when another than the one that failed.
    pub culprit: Option<Proc>,
}

pub trait Rule: Sync {
    fn id(&self) -> &'static str;
    fn check(&self, c: &Ctx) -> Option<Finding>;
}

/// A rule for a record that stands alone, with no connection to join it to (a
/// queue overflow the kernel only counts). Its finding's reason is the whole sentence.
pub trait EventRule: Sync {
    fn id(&self) -> &'static str;
    /// What happened, as the explanation's `outcome`.
    fn outcome(&self) -> &'static str;
    fn check(&self, host: &Host, r: &Record) -> Option<Finding>;
}

pub static EVENT_RULES: &[&dyn EventRule] = &[&backlog::QueueOverflowRecord];

/// In priority order: specific evidence before inference from absence.
pub static RULES: &[&dyn Rule] = &[
    &backlog::AcceptQueueOverflow,
    &backlog::SynQueueOverflow,
    &conntrack::ConntrackInvalid,
    &firewall::FirewallReject,
    &firewall::FirewallDrop,
    &ports::LocalPortsExhausted,
    &unreachable::NoRoute,
    &unreachable::NeighbourUnreachable,
    &firewall::IcmpReject,
    &refusal::ServiceRestarting,
    &refusal::FamilyMismatch,
    &refusal::ListenerOtherAddress,
    &refusal::ListenerOtherNetns,
    &refusal::WrongPort,
    &refusal::NothingListening,
    &refusal::RefusedDespiteListener,
    &refusal::RefusedByRemote,
    &firewall::SynUnanswered,
    &reset::ListenerGoneWithQueue,
    &reset::ApplicationReset,
    &reset::KeepaliveTimeout,
    &reset::FlowTimeout,
    &reset::ResetByPeer,
];

pub fn who(p: &Option<Proc>) -> String {
    p.as_ref()
        .map_or_else(|| "an unknown process".to_string(), |p| p.named())
}

pub fn ago(ns: u64) -> String {
    format!("{:.1} s", ns as f64 / 1e9)
}

/// `ss` filtered on a port, to run in the given namespace.
pub fn ss_cmd(host: &Host, port: u16, netns: Option<u32>) -> String {
    let base = format!("ss -tlnp 'sport = :{port}'");
    match netns {
        Some(ns) if host.netns_name(ns).is_some() => ns_exec(host, ns, &base),
        Some(ns) => format!("{base} (in netns {ns}: nsenter --net=<path of net:[{ns}]>)"),
        None => base,
    }
}

/// ` in netns LABEL` (`server-ns (4026532301)` when it has an `ip netns` name), or
/// nothing without a namespace.
pub fn in_netns(host: &Host, netns: Option<u32>) -> String {
    netns.map_or(String::new(), |ns| {
        format!(" in netns {}", host.netns_label(ns))
    })
}

/// `cmd` as run in a namespace: `ip netns exec NAME cmd` when it has a name, else
/// `cmd` (the text around it says where).
pub fn ns_exec(host: &Host, netns: u32, cmd: &str) -> String {
    match host.netns_name(netns) {
        Some(name) => format!("ip netns exec {name} {cmd}"),
        None => cmd.to_string(),
    }
}

/// `run in netns N`, or `run` when the namespace has a name (the commands then
/// say where: see `exec_all`).
pub fn run_label(host: &Host, netns: Option<u32>) -> String {
    match netns.filter(|&ns| host.netns_name(ns).is_some()) {
        Some(_) => "run".to_string(),
        None => format!("run{}", in_netns(host, netns)),
    }
}

/// Commands to run in a namespace, joined: each as `ip netns exec NAME cmd` when it
/// has a name.
pub fn exec_all(host: &Host, netns: Option<u32>, cmds: &[String]) -> String {
    cmds.iter()
        .map(|c| match netns {
            Some(ns) => ns_exec(host, ns, c),
            None => c.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `run in netns N: cmd; cmd`, or `run: ip netns exec NAME cmd; ...`; `tail` follows.
pub fn run_in(host: &Host, netns: Option<u32>, cmds: &[String], tail: &str) -> String {
    format!(
        "{}: {}{tail}",
        run_label(host, netns),
        exec_all(host, netns, cmds)
    )
}

/// Where to look for the rule that blocks a port in a namespace.
pub fn find_rule(host: &Host, netns: Option<u32>, port: u16) -> String {
    let nft = format!("nft list ruleset | grep -n 'dport {port}'");
    let ipt = format!("iptables-save | grep -- '--dport {port}'");
    match netns.filter(|&ns| host.netns_name(ns).is_some()) {
        Some(ns) => format!(
            "find the rule: {} (or {})",
            ns_exec(host, ns, &nft),
            ns_exec(host, ns, &ipt)
        ),
        None => format!("find the rule{}: {nft} (or {ipt})", in_netns(host, netns)),
    }
}
