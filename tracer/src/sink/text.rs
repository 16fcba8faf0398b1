//! One readable line per record or explanation.
use std::{
    fmt::Write as _,
    io::{self, Write},
};

use tracer_common::Hook;

use crate::{
    base::{
        reasons,
        record::{Kind, Proc, QueueKind, Record, TcpFlags, TcpState},
    },
    explain::Explanation,
    sink::{Sink, Take},
};

pub struct TextLines<W: Write> {
    out: io::BufWriter<W>,
    events: bool,
    verbose: bool,
    buf: Vec<u8>,
}

impl<W: Write> TextLines<W> {
    /// Explanations (with their evidence when `verbose`), and with `events` every
    /// record (else only loss records).
    pub fn new(out: W, events: bool, verbose: bool) -> Self {
        TextLines {
            out: io::BufWriter::with_capacity(64 * 1024, out),
            events,
            verbose,
            buf: Vec::new(),
        }
    }

    fn line(&mut self) -> io::Result<()> {
        self.buf.push(b'\n');
        self.out.write_all(&self.buf)
    }
}

impl<W: Write> Sink for TextLines<W> {
    fn takes(&self, r: &Record) -> Take {
        if self.events || r.kind == Kind::Loss {
            Take::Timed
        } else {
            Take::No
        }
    }

    fn record(&mut self, r: &Record) -> io::Result<()> {
        self.buf.clear();
        record(r, &mut self.buf);
        self.line()
    }

    fn explanation(&mut self, e: &Explanation) -> io::Result<()> {
        self.buf.clear();
        explanation(e, self.verbose, &mut self.buf);
        self.line()
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn who(p: &Option<Proc>) -> String {
    match p {
        Some(p) => format!("{}[{}]", p.comm, p.pid),
        None => "?".to_string(),
    }
}

fn addr(a: &Option<std::net::SocketAddr>) -> String {
    a.map_or_else(|| "?".to_string(), |a| a.to_string())
}

/// Time of day from the RFC 3339 stamp, to the microsecond.
fn clock(time: &str) -> &str {
    time.get(11..26).unwrap_or(time)
}

/// `[cause] sentence -- fix: ...`, the evidence below it when verbose.
pub fn explanation(e: &Explanation, verbose: bool, out: &mut Vec<u8>) {
    let mut s = String::with_capacity(256);
    let _ = write!(s, "{} [{}] ", clock(&e.time), e.cause);
    if let Some(w) = e.window_ms {
        let _ = write!(s, "+{} more in {:.1} s: ", e.count, w as f64 / 1000.0);
    }
    let _ = write!(s, "{} -- fix: {}", e.explanation, e.fix);
    if verbose {
        let _ = write!(s, "\n    confidence {:.2}", e.confidence);
        for r in &e.evidence {
            let mut line = Vec::new();
            record(r, &mut line);
            let _ = write!(s, "\n    {}", String::from_utf8_lossy(&line));
        }
    }
    let _ = out.write_all(s.as_bytes());
}

pub fn record(r: &Record, out: &mut Vec<u8>) {
    let mut s = String::with_capacity(160);
    let (src, dst) = (addr(&r.src), addr(&r.dst));
    let owner = who(&r.owner);
    let _ = write!(s, "{} {:<14} ", clock(&r.time), r.kind.label());
    match r.kind {
        Kind::RstSent => {
            let _ = write!(
                s,
                "{owner} {src} -> {dst} reason {}",
                r.reason.as_deref().unwrap_or("-")
            );
            if let Some(st) = r.state {
                let _ = write!(s, " state {st}");
            }
        }
        Kind::RstReceived => {
            let _ = write!(s, "{owner} {src} <- {dst}");
        }
        Kind::SynRetransmit => {
            let _ = write!(s, "{owner} {src} -> {dst} SYN unanswered, retransmitted");
        }
        Kind::SynackRetransmit => {
            let _ = write!(s, "{owner} listener {src} -> {dst} SYN-ACK retransmitted");
        }
        Kind::Drop => {
            let _ = write!(
                s,
                "{src} -> {dst} [{}] dropped {} at {}",
                r.tcp_flags.map_or("?", TcpFlags::letters),
                r.reason.as_deref().unwrap_or("-"),
                r.location.as_deref().unwrap_or("?")
            );
            if r.owner.is_some() {
                let _ = write!(s, " socket of {owner}");
            }
        }
        Kind::State => match (r.old_state, r.new_state) {
            (Some(TcpState::Close), Some(TcpState::Listen)) => {
                let _ = write!(s, "{owner} listens on {src}");
            }
            (Some(TcpState::Listen), Some(TcpState::Close)) => {
                let _ = write!(s, "{owner} stopped listening on {src}");
            }
            (old, new) => {
                let _ = write!(
                    s,
                    "{owner} {src} -> {dst} {} -> {} (closed without FIN handshake)",
                    old.map_or("?", TcpState::name),
                    new.map_or("?", TcpState::name)
                );
            }
        },
        Kind::Error => {
            let e = r.errno.unwrap_or(0);
            match r.errno_name {
                Some(n) => {
                    let _ = write!(s, "{owner} {src} -> {dst} {n} ({e})");
                }
                None if e == 0 => {
                    let _ = write!(s, "{owner} {src} -> {dst} soft error (ICMP)");
                }
                None => {
                    let _ = write!(s, "{owner} {src} -> {dst} errno {e}");
                }
            }
        }
        Kind::ConnectError => {
            let e = r.errno.unwrap_or(0);
            let _ = write!(
                s,
                "{owner} connect to {dst} failed at once: {} ({e})",
                r.errno_name.unwrap_or("errno")
            );
            if let Some(p) = &r.ports {
                let _ = write!(
                    s,
                    "; ports {}-{}, towards {dst}: {} established, {} time-wait, {} other",
                    p.range[0], p.range[1], p.established, p.time_wait, p.other
                );
            }
        }
        Kind::Overflow => {
            let q = r.queue_kind.unwrap_or(QueueKind::Accept).name();
            let _ = write!(s, "{owner} listener {src} {q} queue overflow");
            if let Some(qu) = &r.queue {
                let _ = write!(s, " (depth {} / backlog {})", qu.depth, qu.backlog);
            }
            if let Some(d) = r.drops {
                let _ = write!(s, ": {d} connection attempts dropped");
            }
        }
        Kind::Loss => {
            let why = match r.reason.as_deref() {
                Some(reasons::LOST_RECURSION) => {
                    "the kernel skipped the program: another BPF program was running on that CPU"
                }
                _ => "ring buffer full; raise --ring-size",
            };
            let _ = write!(
                s,
                "{} events lost from {} ({why})",
                r.lost.unwrap_or(0),
                r.hook.map_or("?", Hook::name)
            );
        }
        Kind::Listener => {
            let _ = write!(s, "{owner} listens on {src}");
        }
        Kind::Addresses => {
            let list: Vec<String> = r.addrs.iter().flatten().map(|a| a.to_string()).collect();
            let _ = write!(s, "addresses {}", list.join(" "));
        }
        Kind::ProcessExit => {
            let _ = write!(s, "{owner} exited");
            if let Some(how) = &r.reason {
                let _ = write!(s, " ({how})");
            }
        }
        Kind::Socket => {
            let _ = write!(s, "{owner} holds {src} -> {dst}");
        }
        Kind::Workload => {
            let id = r.cgroup.unwrap_or(0);
            let w = r.workload.as_deref().cloned().unwrap_or_default();
            let _ = write!(s, "cgroup {id} is {w}");
        }
        Kind::FirewallRule => {
            let port = r.dst.map_or(0, |d| d.port());
            let rules = r.rules.as_deref().unwrap_or(&[]);
            if rules.is_empty() {
                let _ = write!(s, "no rule found that drops or rejects port {port}");
                if let Some(why) = &r.reason {
                    let _ = write!(s, " ({why})");
                }
            }
            let listed: Vec<String> = rules
                .iter()
                .map(|x| format!("`{}` ({}, {})", x.rule, x.place(), x.verdict))
                .collect();
            if !listed.is_empty() {
                let _ = write!(s, "port {port} blocked by {}", listed.join("; "));
            }
            if let Some(c) = &r.conntrack {
                let _ = write!(s, "; conntrack: {}", c.counters());
            }
        }
    }
    if let Some(n) = r.retransmits {
        let _ = write!(s, " after {n} retransmits");
    }
    if let (Some(q), Kind::RstSent | Kind::SynackRetransmit | Kind::Drop) = (&r.queue, r.kind) {
        let _ = write!(s, " accept queue {}/{}", q.depth, q.backlog);
    }
    if let Some(ns) = r.netns {
        let _ = write!(s, " netns {ns}");
    }
    let _ = out.write_all(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firewall_rule_line_names_the_rule_or_says_none_was_found() {
        let mut r = Record::new(Kind::FirewallRule, 0, "2026-11-22T00:40:23.123456Z".into());
        r.netns = Some(7);
        r.dst = Some("10.0.0.2:8081".parse().unwrap());
        r.rules = Some(vec![crate::base::record::FirewallRule {
            source: "nft".into(),
            family: "inet".into(),
            table: "filter".into(),
            chain: "input".into(),
            hook: Some("input".into()),
            priority: Some(0),
            handle: Some(4),
            rule: "tcp dport 8081 drop".into(),
            verdict: "drop".into(),
        }]);
        let mut out = Vec::new();
        record(&r, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "00:40:23.123456 FIREWALL-RULE  port 8081 blocked by `tcp dport 8081 drop` (table inet filter, chain input, handle 4, drop) netns 7"
        );
        r.rules = Some(Vec::new());
        r.reason = Some("nftables rules in netns 7: running nft: not found".into());
        let mut out = Vec::new();
        record(&r, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "00:40:23.123456 FIREWALL-RULE  no rule found that drops or rejects port 8081 (nftables rules in netns 7: running nft: not found) netns 7"
        );
        r.reason = None;
        r.conntrack = Some(crate::base::record::ConntrackStats {
            entries: 3,
            max: Some(262144),
            invalid: 5,
            drop: 0,
            early_drop: 0,
            insert_failed: 1,
        });
        let mut out = Vec::new();
        record(&r, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "00:40:23.123456 FIREWALL-RULE  no rule found that drops or rejects port 8081; conntrack: invalid 5, drop 0, early_drop 0, insert_failed 1; 3 entries (limit 262144) netns 7"
        );
    }

    #[test]
    fn refusal_line_names_process_and_errno() {
        let mut r = Record::new(Kind::Error, 0, "2026-11-22T00:40:23.123456Z".into());
        r.src = Some("10.0.0.1:4000".parse().unwrap());
        r.dst = Some("10.0.0.2:8080".parse().unwrap());
        r.owner = Some(Proc {
            pid: 4121,
            comm: "curl".into(),
            cgroup: None,
            workload: None,
        });
        r.errno = Some(111);
        r.errno_name = Some("ECONNREFUSED");
        r.netns = Some(7);
        let mut out = Vec::new();
        record(&r, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "00:40:23.123456 ERROR          curl[4121] 10.0.0.1:4000 -> 10.0.0.2:8080 ECONNREFUSED (111) netns 7"
        );
    }
}
