//! Stage 7, the pipeline (uses every stage before it; not the commands).
//!
//! The stages after decoding, shared by `watch` (live) and `explain` (replay):
//! capture -> enrich -> print evidence -> explain -> filter -> print explanations.
//! Everything the stages use arrives as records, so a replay of the captured records
//! gives what live gave.
pub mod filter;

use std::io;

use crate::{
    base::{
        clock::Clock,
        record::{Kind, Proc, Record},
    },
    capture::CaptureWriter,
    enrich::Enricher,
    explain::{Engine, Explanation},
    pipeline::filter::Filter,
    sink::Output,
};

pub struct Pipeline<W: io::Write> {
    pub enricher: Enricher,
    pub engine: Engine,
    pub filter: Filter,
    pub out: Output<W>,
    pub events: bool,
    /// Live: check /proc for exited listener owners (replay reads those from the file).
    pub live: bool,
    pub capture: Option<CaptureWriter>,
    /// Keep explanations here instead of printing them (summary).
    pub collected: Option<Vec<Explanation>>,
    clock: Clock,
    explained: Vec<Explanation>,
    /// Listener owners to check for exit, and when.
    exits: Vec<(Proc, u64)>,
    /// Live: where to ask for the owner of a socket the kernel did not know (answered
    /// with `socket` context records, so that a replay sees the same).
    pub lookups: Option<std::sync::mpsc::SyncSender<crate::source::netns::Ask>>,
    /// Sockets and rulesets already asked about, and when (bounded).
    asked: crate::base::FastMap<crate::source::netns::Ask, u64>,
}

/// A socket is asked about once in this long.
const ASK_AGAIN_NS: u64 = 10_000_000_000;
/// A namespace's rules for a port are read again after this long (a SYN flood that
/// the firewall drops would otherwise read the ruleset per packet).
const RULES_AGAIN_NS: u64 = 5_000_000_000;
/// At most this many sockets are remembered as asked about.
const MAX_ASKED: usize = 4096;

/// Whether the process is gone or a zombie (dead, not yet reaped by its parent), and
/// then how it ended when the zombie still tells.
fn exited(pid: u32) -> Option<Option<String>> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => zombie_status(&stat),
        Err(_) => Some(None),
    }
}

/// For a zombie's /proc/PID/stat: `Some(how it ended)` (`SIGKILL`, `exit 1`, from its
/// exit_code, field 52, 3.5+); None for a live process.
fn zombie_status(stat: &str) -> Option<Option<String>> {
    // The fields after the command name, which may hold anything but ends with ')'.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    if !matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    // exit_code is field 52; `fields` starts at field 3 (the state).
    let code: Option<i32> = fields.nth(52 - 4).and_then(|v| v.parse().ok());
    Some(code.map(|c| match c & 0x7f {
        0 => format!("exit {}", (c >> 8) & 0xff),
        sig => signal_name(sig),
    }))
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return format!("signal {sig}"),
    };
    name.to_string()
}

/// How long after its listener closed a process is checked for having exited.
const EXIT_CHECK_NS: u64 = 200_000_000;

impl<W: io::Write> Pipeline<W> {
    pub fn new(filter: Filter, out: Output<W>, events: bool, clock: Clock) -> Self {
        Pipeline {
            enricher: Enricher::default(),
            engine: Engine::new(clock),
            filter,
            out,
            events,
            live: false,
            capture: None,
            collected: None,
            clock,
            explained: Vec::new(),
            exits: Vec::new(),
            lookups: None,
            asked: crate::base::FastMap::default(),
        }
    }

    pub fn push(&mut self, mut r: Record) -> io::Result<()> {
        if let Some(w) = self.capture.as_mut() {
            w.write(&r)?;
        }
        if !self.enricher.process(&mut r, &self.engine.host) {
            return Ok(());
        }
        self.ask_owner(&r);
        self.ask_rules(&r);
        if self.live
            && r.kind == Kind::State
            && r.old_state == Some("LISTEN")
            && r.new_state == Some("CLOSE")
        {
            // A listener from before the agent has no owner from the kernel; its
            // close runs in the closing process, which is the one to check.
            if let Some(p) = r.owner.as_ref().or(r.task.as_ref()) {
                self.exits.push((p.clone(), r.mono_ns + EXIT_CHECK_NS));
            }
        }
        if (self.events || r.kind == Kind::Loss) && self.filter.matches(&r) {
            if r.time.is_empty() {
                r.time = self.clock.format(r.mono_ns);
            }
            self.out.record(&r)?;
        }
        self.engine.push(r, &mut self.explained);
        self.drain()
    }

    /// Asks for the owner of a local socket's event that has none (a socket the kernel
    /// hooks did not see made: its ownership entry evicted, or passed from another
    /// process), while the socket may still exist.
    fn ask_owner(&mut self, r: &Record) {
        if self.lookups.is_none() {
            return;
        }
        if r.owner.is_some()
            || r.sock.is_none()
            || !matches!(
                r.kind,
                Kind::RstSent | Kind::RstReceived | Kind::SynRetransmit | Kind::State
            )
            || r.old_state == Some("LISTEN")
            || r.new_state == Some("LISTEN")
        {
            return;
        }
        let (Some(ns), Some(s), Some(d)) = (r.netns, r.src, r.dst) else {
            return;
        };
        if s.port() == 0 || d.port() == 0 {
            return;
        }
        let key = crate::source::netns::Ask::Socket((ns, s, d));
        self.ask(key, key, r.mono_ns, ASK_AGAIN_NS);
    }

    /// Asks for the firewall rules that drop or reject the destination port of a
    /// packet netfilter dropped in a namespace here (answered with a `firewall_rule`
    /// context record, so that a replay names the same rule).
    fn ask_rules(&mut self, r: &Record) {
        if self.lookups.is_none()
            || r.kind != Kind::Drop
            || r.reason.as_deref() != Some("NETFILTER_DROP")
        {
            return;
        }
        let (Some(netns), Some(d)) = (r.netns, r.dst) else {
            return;
        };
        if d.port() == 0 {
            return;
        }
        // Remembered per namespace and port: the rules are matched on the port.
        let port_only = std::net::SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), d.port());
        self.ask(
            crate::source::netns::Ask::Firewall {
                netns,
                dst: port_only,
            },
            crate::source::netns::Ask::Firewall { netns, dst: d },
            r.mono_ns,
            RULES_AGAIN_NS,
        );
    }

    /// Sends `ask` to the monitor unless `key` was asked about within `again_ns`.
    fn ask(
        &mut self,
        key: crate::source::netns::Ask,
        ask: crate::source::netns::Ask,
        now: u64,
        again_ns: u64,
    ) {
        let Some(tx) = &self.lookups else { return };
        if self.asked.get(&key).is_some_and(|&t| now < t + again_ns) {
            return;
        }
        if self.asked.len() >= MAX_ASKED {
            self.asked.clear();
        }
        self.asked.insert(key, now);
        // A full queue (a storm of unknown sockets) drops the question, not the event.
        let _ = tx.try_send(ask);
    }

    pub fn advance(&mut self, now: u64) -> io::Result<()> {
        let due: Vec<Proc> = self
            .exits
            .iter()
            .filter(|(_, t)| *t <= now)
            .map(|(p, _)| p.clone())
            .collect();
        self.exits.retain(|(_, t)| *t > now);
        for p in due {
            if let Some(how) = exited(p.pid) {
                let mut r = Record::new(Kind::ProcessExit, now, self.clock.format(now));
                r.owner = Some(p);
                r.reason = how.map(Into::into);
                self.push(r)?;
            }
        }
        self.engine.advance(now, &mut self.explained);
        if let Some(w) = self.capture.as_mut() {
            w.tick()?;
            if w.wants_rotation() {
                let context = self.engine.host.snapshot(now, &self.clock.format(now));
                w.rotate(&context)?;
            }
        }
        self.drain()
    }

    /// Explains what is still pending (end of a replay).
    pub fn finish(&mut self) -> io::Result<()> {
        self.engine.finish(&mut self.explained);
        self.drain()?;
        self.out.flush()
    }

    fn drain(&mut self) -> io::Result<()> {
        for e in std::mem::take(&mut self.explained) {
            if !self.filter.matches_explanation(&e) {
                continue;
            }
            match self.collected.as_mut() {
                Some(c) => c.push(e),
                None => self.out.explanation(&e)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A /proc/PID/stat line in state `state` with exit_code (field 52) `code`.
    fn stat(state: &str, code: i32) -> String {
        let middle = vec!["0"; 52 - 4].join(" ");
        format!("4242 (a) b) {state} {middle} {code}\n")
    }

    #[test]
    fn a_zombie_tells_how_it_ended() {
        assert_eq!(zombie_status(&stat("Z", 9)), Some(Some("SIGKILL".into())));
        assert_eq!(zombie_status(&stat("Z", 15)), Some(Some("SIGTERM".into())));
        assert_eq!(
            zombie_status(&stat("Z", 1 << 8)),
            Some(Some("exit 1".into()))
        );
        assert_eq!(zombie_status(&stat("S", 0)), None, "alive");
        assert_eq!(
            zombie_status("4242 (a) Z"),
            Some(None),
            "no exit_code field"
        );
    }
}
