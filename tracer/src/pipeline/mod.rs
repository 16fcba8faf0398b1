//! Stage 7, the pipeline (uses every stage before it; not the commands).
//!
//! The stages after decoding, shared by `watch` (live) and `explain` (replay):
//! capture -> enrich -> filter -> sinks (evidence) -> explain -> filter -> sinks
//! (explanations). Everything the stages use arrives as records (what only a live
//! host can tell, such as process exits, the live source turns into records first),
//! so a replay of the captured records gives what live gave.
pub mod filter;

use std::{io, sync::Arc};

use crate::{
    base::{
        clock::Clock,
        reasons,
        record::{Kind, Record, TcpState},
    },
    capture::CaptureWriter,
    enrich::Enricher,
    explain::{Engine, Explanation},
    pipeline::filter::Filter,
    sink::{Sink, Take},
    source::{
        context,
        workload::{Resolver, Workload},
    },
};

/// The stages after decoding, joined. Built by `new` (what replay needs), with the
/// live additions given by the `with_` methods.
pub struct Pipeline<S: Sink> {
    enricher: Enricher,
    engine: Engine,
    filter: Filter,
    sink: S,
    capture: Option<CaptureWriter>,
    clock: Clock,
    explained: Vec<Explanation>,
    /// Live: where to ask for the owner of a socket the kernel did not know (answered
    /// with `socket` context records, so that a replay sees the same).
    lookups: Option<std::sync::mpsc::SyncSender<crate::source::netns::Ask>>,
    /// Sockets and rulesets already asked about, and when (bounded).
    asked: crate::base::FastMap<crate::source::netns::Ask, u64>,
    /// Live: names the owners' cgroups, written as workload context records.
    workloads: Option<Workloads>,
    /// `record`'s filters: what the capture file keeps (see `Filter::keeps`).
    capture_filter: Option<Filter>,
}

/// The cgroups whose workload record was written, with what it said.
struct Workloads {
    resolver: Resolver,
    written: crate::base::FastMap<u64, Arc<Workload>>,
}

/// At most this many cgroups are remembered as written (then the map starts over,
/// and the next record of each writes it again).
const MAX_WRITTEN: usize = 32_768;

/// A socket is asked about once in this long.
const ASK_AGAIN_NS: u64 = 10_000_000_000;
/// A namespace's rules for a port are read again after this long (a SYN flood that
/// the firewall drops would otherwise read the ruleset per packet).
const RULES_AGAIN_NS: u64 = 5_000_000_000;
/// At most this many sockets are remembered as asked about.
const MAX_ASKED: usize = 4096;

impl<S: Sink> Pipeline<S> {
    /// Records whose time is read with `clock`, those `filter` passes and every
    /// explanation it passes going to `sink`.
    pub fn new(clock: Clock, filter: Filter, sink: S) -> Self {
        Pipeline {
            enricher: Enricher::default(),
            engine: Engine::new(clock),
            filter,
            sink,
            capture: None,
            clock,
            explained: Vec::new(),
            lookups: None,
            asked: crate::base::FastMap::default(),
            workloads: None,
            capture_filter: None,
        }
    }

    /// Live: names the workload of each owner's cgroup, once per cgroup (again when
    /// names missing at first are found), in a context record before the first
    /// record that carries it.
    pub fn with_workloads(mut self, resolver: Resolver) -> Self {
        self.workloads = Some(Workloads {
            resolver,
            written: crate::base::FastMap::default(),
        });
        self
    }

    /// The workload record `r`'s owner's cgroup needs first, if any.
    fn workload_record(&mut self, r: &Record) -> Option<Record> {
        let id = r.owner.as_ref()?.cgroup?;
        let ws = self.workloads.as_mut()?;
        let w = ws.resolver.resolve(id)?;
        if ws.written.get(&id).is_some_and(|old| Arc::ptr_eq(old, &w)) {
            return None;
        }
        if ws.written.len() >= MAX_WRITTEN {
            ws.written.clear();
        }
        ws.written.insert(id, w.clone());
        if w.is_empty() {
            return None;
        }
        Some(context::workload(
            r.mono_ns,
            String::new(),
            id,
            (*w).clone(),
        ))
    }

    /// Also writes every record, as it comes, to a capture file.
    pub fn with_capture(mut self, w: CaptureWriter) -> Self {
        self.capture = Some(w);
        self
    }

    /// Writes to the capture file only what `filter` keeps (`Filter::keeps`).
    pub fn with_capture_filter(mut self, filter: Filter) -> Self {
        self.capture_filter = Some(filter);
        self
    }

    /// Live: asks the namespace monitor for what records lack (owners of unknown
    /// sockets, the rules of a firewall that dropped packets).
    pub fn with_lookups(
        mut self,
        lookups: std::sync::mpsc::SyncSender<crate::source::netns::Ask>,
    ) -> Self {
        self.lookups = Some(lookups);
        self
    }

    /// `probe`: every failure explained alone (no bursts), and firewall rules awaited
    /// from no one (it reads them itself).
    pub fn for_probe(mut self) -> Self {
        self.engine = self.engine.for_probe();
        self
    }

    pub fn push(&mut self, r: Record) -> io::Result<()> {
        self.push_seen(r, |_| {})
    }

    /// Pushes `r`, showing it to `seen` once enriched (the live source watches
    /// listeners close there).
    pub fn push_seen(&mut self, mut r: Record, seen: impl FnOnce(&Record)) -> io::Result<()> {
        if let Some(w) = self.workload_record(&r) {
            self.push(w)?;
        }
        if let Some(w) = self.capture.as_mut() {
            if self
                .capture_filter
                .as_ref()
                .is_none_or(|f| f.keeps(&r, self.engine.host()))
            {
                w.write(&r)?;
            }
        }
        if !self.enricher.process(&mut r, self.engine.host()) {
            return Ok(());
        }
        self.ask_owner(&r);
        self.ask_rules(&r);
        seen(&r);
        let take = self.sink.takes(&r);
        if take != Take::No && self.filter.matches(&r, self.engine.host()) {
            if take == Take::Timed && r.time.is_empty() {
                r.time = self.clock.format(r.mono_ns);
            }
            self.sink.record(&r)?;
        }
        self.engine.push(r, &mut self.explained);
        self.drain()
    }

    /// The most stories the engine held open at once (see Engine).
    pub fn peak_open_stories(&self) -> usize {
        self.engine.peak_open_stories()
    }

    /// Whether the engine wants the namespaces read again (it met a failure whose
    /// context is missing); asked once.
    pub fn take_context_request(&mut self) -> bool {
        self.engine.take_context_request()
    }

    pub fn sink(&mut self) -> &mut S {
        &mut self.sink
    }

    pub fn into_sink(self) -> S {
        self.sink
    }

    pub fn capture(&mut self) -> Option<&mut CaptureWriter> {
        self.capture.as_mut()
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
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
            || r.old_state == Some(TcpState::Listen)
            || r.new_state == Some(TcpState::Listen)
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
            || r.reason.as_deref() != Some(reasons::NETFILTER_DROP)
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

    /// Moves time to `now` (monotonic ns): stories whose wait is over are explained,
    /// the capture file gets its chunk and, when due, its next file.
    pub fn advance(&mut self, now: u64) -> io::Result<()> {
        self.engine.advance(now, &mut self.explained);
        if let Some(w) = self.capture.as_mut() {
            w.tick()?;
            if w.wants_rotation() {
                let context = self.engine.host().snapshot(now, &self.clock.format(now));
                w.rotate(&context)?;
            }
        }
        self.drain()
    }

    /// Whether `advance` has work due at a later time (a story's deadline, a burst's
    /// end, the capture's flush interval).
    pub fn waiting(&self) -> bool {
        self.engine.waiting() || self.capture.as_ref().is_some_and(|w| w.holds_records())
    }

    /// Explains what is still pending (end of a replay).
    pub fn finish(&mut self) -> io::Result<()> {
        self.engine.finish(&mut self.explained);
        self.drain()?;
        self.sink.flush()
    }

    fn drain(&mut self) -> io::Result<()> {
        for e in std::mem::take(&mut self.explained) {
            if !self.filter.matches_explanation(&e, self.engine.host()) {
                continue;
            }
            self.sink.explanation(&e)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{base::record::Kind, sink::Fanout};

    /// Takes every record as `0` says; notes whether each came with its time.
    struct Times(Take, Vec<bool>);

    impl Sink for Times {
        fn takes(&self, _: &Record) -> Take {
            self.0
        }
        fn record(&mut self, r: &Record) -> io::Result<()> {
            self.1.push(!r.time.is_empty());
            Ok(())
        }
        fn explanation(&mut self, _: &Explanation) -> io::Result<()> {
            Ok(())
        }
    }

    /// A record's wall-clock text is made only for a sink that reads it: counting a
    /// storm's records (metrics) formats none of them.
    #[test]
    fn records_are_timed_only_for_sinks_that_take_them_timed() {
        let clock = Clock::now();
        let rst = Record::new(Kind::RstSent, clock.mono_ns, String::new());
        for (take, timed) in [(Take::Untimed, false), (Take::Timed, true)] {
            let mut p = Pipeline::new(clock, Filter::default(), Times(take, Vec::new()));
            p.push(rst.clone()).unwrap();
            assert_eq!(p.into_sink().1, [timed], "{take:?}");
        }
        let fanout = |a, b| {
            Fanout(vec![
                Box::new(Times(a, Vec::new())),
                Box::new(Times(b, Vec::new())),
            ])
        };
        assert_eq!(fanout(Take::Untimed, Take::No).takes(&rst), Take::Untimed);
        assert_eq!(fanout(Take::Untimed, Take::Timed).takes(&rst), Take::Timed);
        assert_eq!(fanout(Take::No, Take::No).takes(&rst), Take::No);
    }
}
