//! `rstrace watch`: the live pipeline. Stages: load/attach -> read ring -> decode ->
//! enrich -> explain -> filter -> sink. Side sources merged into the stream as
//! records: loss counters (every 250 ms), the monitor thread's namespace context and
//! backlog overflows (netns.rs), and exits of processes that owned listeners.
use std::{
    io,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use aya::maps::{MapData, PerCpuArray};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    time::MissedTickBehavior,
};
use tracer_common::{Hook, KernelOffsets, ListenKey, ListenOwner, SockOwner};

use crate::{
    base::private_file::AppendFile,
    base::{
        clock::Clock,
        reasons::{LOST_RECURSION, LOST_RING_FULL},
    },
    capture::{CaptureWriter, Header, RotatePolicy},
    decode::Decoder,
    kernel::{
        btf::KernelBtf,
        info::KernelInfo,
        privileges,
        probes::{read_losses, HookStatus, Probes, RingFill},
        tracefs,
    },
    pipeline::{filter::Filter, Pipeline},
    sink::{Fanout, JsonLines, Sink, TextLines},
    source::{
        context,
        exits::Exits,
        live::LiveReads,
        netns::{self, Observation},
        workload::Resolver,
    },
};

#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub json: bool,
    /// Also print the raw evidence records.
    pub events: bool,
    pub verbose: bool,
    pub filter: Filter,
    pub ring_bytes: u32,
    pub overflow_interval: Duration,
    /// Print nothing to stdout (`rstrace record`).
    pub quiet: bool,
    /// JSON Lines to this file (appended, reopened on SIGHUP) instead of stdout.
    pub json_file: Option<PathBuf>,
    /// Also write everything to this capture file.
    pub record: Option<RecordTo>,
    /// At exit, write the event counts and the programs' run statistics here (JSON).
    pub stats: Option<PathBuf>,
    /// Serve metrics, health and readiness over HTTP.
    pub metrics: Option<super::metrics::MetricsConfig>,
}

#[derive(Clone, Debug)]
pub struct RecordTo {
    pub path: PathBuf,
    /// `path` is a directory of files named by their start time, kept within this
    /// many bytes (--capture-dir, --disk-budget).
    pub budget: Option<u64>,
    /// Replace an existing file at `path` (--force).
    pub replace: bool,
    pub rotate: RotatePolicy,
    pub flush_every: Duration,
    /// `record`'s filters: evidence owned by others is not written (`Filter::keeps`).
    pub filter: Option<Filter>,
}

/// Everything learnt about the kernel and loaded into it.
pub struct Session {
    pub info: KernelInfo,
    pub probes: Probes,
}

pub fn start(ring_bytes: u32) -> Result<Session> {
    privileges::check()?;
    privileges::raise_memlock();
    let tracefs = tracefs::ensure_tracefs()?;
    let btf = match KernelBtf::load() {
        Ok(b) => Some(b),
        Err(e) => {
            log::warn!(
                "{e:#}: network namespaces, accept queues and dropped packets' addresses \
                 will not be shown"
            );
            None
        }
    };
    let mut info = KernelInfo::gather(&tracefs, btf.as_ref());
    let mut missing = Vec::new();
    let offsets = btf
        .as_ref()
        .map_or(KernelOffsets::UNKNOWN, |b| b.kernel_offsets(&mut missing));
    for m in &missing {
        log::warn!("kernel BTF lacks {m}; the dependent detail will be missing");
    }
    info.missing.extend(missing);
    let probes =
        Probes::load(&info, offsets, ring_bytes).map_err(privileges::explain_load_error)?;
    probes.warn_degraded();
    if !probes
        .status
        .values()
        .any(|s| matches!(s, HookStatus::Attached { .. }))
    {
        return Err(anyhow!(
            "no kernel hook could be attached; see the warnings above"
        ));
    }
    Ok(Session { info, probes })
}

fn now_ns() -> u64 {
    Clock::now().mono_ns
}

/// Pushes what the namespace monitor observed, as context records; a namespace's
/// listeners also enter the kernel's listener map.
pub(crate) fn on_observation<S: Sink>(
    o: Observation,
    pipe: &mut Pipeline<S>,
    listener_map: &mut aya::maps::HashMap<aya::maps::MapData, ListenKey, ListenOwner>,
    clock: &Clock,
) -> io::Result<()> {
    if let Observation::Namespace {
        netns,
        at_ns,
        listeners,
        ..
    } = &o
    {
        seed_listeners(listener_map, *netns, *at_ns, listeners);
    }
    context::observed(o, clock)
        .into_iter()
        .try_for_each(|r| pipe.push(r))
}

/// Enters listeners found in /proc into the kernel's listener map, so that the
/// connections they accept from now on carry their owner. An entry the kernel already
/// has (a listener opened since the agent started) is left alone.
fn seed_listeners(
    map: &mut aya::maps::HashMap<aya::maps::MapData, ListenKey, ListenOwner>,
    netns: u32,
    at_ns: u64,
    listeners: &netns::OwnedListeners,
) {
    const BPF_NOEXIST: u64 = 1;
    for (l, owner) in listeners {
        let Some(p) = owner else { continue };
        let mut comm = [0u8; 16];
        let n = p.comm.len().min(15);
        comm[..n].copy_from_slice(&p.comm.as_bytes()[..n]);
        let key = ListenKey {
            netns,
            port: l.addr.port(),
            _pad: 0,
        };
        let value = ListenOwner {
            owner: SockOwner {
                since_ns: at_ns,
                tgid: p.pid,
                netns,
                retrans: 0,
                _pad: 0,
                comm,
                cgroup: p.cgroup.unwrap_or(0),
            },
            sk: 0,
        };
        match map.insert(key, value, BPF_NOEXIST) {
            Ok(()) => {}
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => log::debug!("entering listener {} of netns {netns}: {e}", l.addr),
        }
    }
}

pub fn run(cfg: WatchConfig) -> Result<()> {
    // Bound before loading anything: a taken address fails at once.
    let endpoint = cfg
        .metrics
        .as_ref()
        .map(super::metrics::Endpoint::start)
        .transpose()?;
    let mut session = start(cfg.ring_bytes)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_loop(&mut session, cfg, endpoint.as_ref()))
}

/// The live source: ring-buffer events decoded, completed with what the host tells
/// (`LiveReads`), and the exits of listeners' owners turned into records.
#[derive(Default)]
struct Live {
    reads: LiveReads,
    exits: Exits,
    /// Events read from the ring.
    events: u64,
    /// The records' time at which a drain next moves the pipeline on.
    next_step: u64,
}

/// While a drain reads a backlog, the pipeline is moved on by the records' own time
/// at this step, as a replay does (replay::STEP_NS): a story whose wait ended before
/// a later record is explained without it, however late the reader is (a loaded
/// host, a slow guest), as it would be from the capture.
const DRAIN_STEP_NS: u64 = 10_000_000;

impl Live {
    /// Decodes and pushes everything waiting in the ring.
    fn drain<S: Sink>(
        &mut self,
        rb: &mut aya::maps::RingBuf<aya::maps::MapData>,
        decoder: &mut Decoder,
        pipe: &mut Pipeline<S>,
        clock: &Clock,
    ) -> io::Result<()> {
        while let Some(item) = rb.next() {
            self.events += 1;
            match decoder.decode(&item) {
                Ok(r) => {
                    if r.mono_ns >= self.next_step {
                        self.advance(r.mono_ns, pipe, clock)?;
                        self.next_step = r.mono_ns + DRAIN_STEP_NS;
                    }
                    let more = decoder.unfold(&r);
                    for mut r in std::iter::once(r).chain(more.into_iter().flatten()) {
                        self.reads.enrich(&mut r);
                        pipe.push_seen(r, |r| self.exits.saw(r))?;
                    }
                }
                Err(e) => log::warn!("undecodable event: {e}"),
            }
        }
        Ok(())
    }

    /// Moves the pipeline to `now`, after pushing the exits found due by then.
    fn advance<S: Sink>(
        &mut self,
        now: u64,
        pipe: &mut Pipeline<S>,
        clock: &Clock,
    ) -> io::Result<()> {
        for r in self.exits.check(now, clock) {
            pipe.push(r)?;
        }
        pipe.advance(now)
    }

    /// Moves the pipeline to the present; a request of the engine for the namespaces'
    /// context is passed on to the monitor.
    fn advance_now<S: Sink>(
        &mut self,
        pipe: &mut Pipeline<S>,
        clock: &Clock,
        monitor: &Monitor,
    ) -> io::Result<()> {
        let r = self.advance(now_ns(), pipe, clock);
        if pipe.take_context_request() {
            monitor.rescan.store(true, Ordering::Relaxed);
            monitor.wake();
        }
        r
    }
}

/// The namespace monitor thread's controls.
struct Monitor {
    stop: Arc<AtomicBool>,
    rescan: Arc<AtomicBool>,
    /// Set while the reader sleeps: the monitor polls less (see netns::QUIET_SCAN).
    quiet: Arc<AtomicBool>,
    /// Wakes it from its wait for questions.
    asks: std::sync::mpsc::SyncSender<netns::Ask>,
}

impl Monitor {
    fn wake(&self) {
        // A full queue wakes it as well.
        let _ = self.asks.try_send(netns::Ask::Wake);
    }
}

/// Empty polls of the ring after which the reader sleeps until the kernel wakes it
/// (100 ms at the 20 ms poll: a failure's events come closer together than that).
const QUIET_POLLS: u32 = 5;

/// No events for this long: the monitor polls the namespaces less (see
/// netns::QUIET_SCAN) until the next event wakes the reader.
const QUIET_HOST: Duration = Duration::from_secs(10);

/// Idle ticks (1 s) between readings of the losses while the reader sleeps.
const IDLE_LOSS_TICKS: u32 = 5;

/// The programs' loss counters (ring full, recursion), turned into loss records.
struct Losses {
    map: PerCpuArray<MapData, u64>,
    before: [[u64; Hook::COUNT]; 2],
    /// Reported so far: ring full, recursion.
    total: [u64; 2],
}

impl Losses {
    fn new(map: PerCpuArray<MapData, u64>, probes: &Probes) -> Losses {
        let before = [read_losses(&map), probes.recursion_misses()];
        Losses {
            map,
            before,
            total: [0; 2],
        }
    }

    fn report<S: Sink>(
        &mut self,
        probes: &Probes,
        pipe: &mut Pipeline<S>,
        clock: &Clock,
    ) -> io::Result<()> {
        let now = [read_losses(&self.map), probes.recursion_misses()];
        let mut res = Ok(());
        for (i, why) in [LOST_RING_FULL, LOST_RECURSION].into_iter().enumerate() {
            for hook in Hook::ALL {
                let d = now[i][hook as usize].saturating_sub(self.before[i][hook as usize]);
                self.total[i] += d;
                if d > 0 && res.is_ok() {
                    let t = now_ns();
                    res = pipe.push(context::loss(t, clock.format(t), hook, d, why));
                }
            }
        }
        self.before = now;
        res
    }
}

async fn run_loop(
    session: &mut Session,
    cfg: WatchConfig,
    endpoint: Option<&super::metrics::Endpoint>,
) -> Result<()> {
    let maps = session.probes.take_maps()?;
    let ring_fill = endpoint.and_then(|_| {
        RingFill::new(std::os::fd::AsFd::as_fd(&maps.ring))
            .map_err(|e| log::warn!("mapping the ring buffer's positions for its fill: {e}"))
            .ok()
    });
    if let Some(ep) = endpoint {
        ep.attached(&session.probes, &session.info, cfg.ring_bytes);
    }
    let mut listener_map = maps.listeners;
    let clock = Clock::now();
    let mut decoder = Decoder::new(&session.info);
    let mut live = Live::default();
    // Set on SIGHUP: the JSON file is reopened by name.
    let mut reopen = None;
    let out: Box<dyn io::Write> = if cfg.quiet {
        Box::new(io::sink())
    } else if let Some(path) = &cfg.json_file {
        let f = AppendFile::open(path)?;
        reopen = Some(f.reopen_flag());
        Box::new(f)
    } else {
        Box::new(io::stdout().lock())
    };
    let sink: Box<dyn Sink> = if cfg.json {
        Box::new(JsonLines::new(out, cfg.events))
    } else {
        Box::new(TextLines::new(out, cfg.events, cfg.verbose))
    };
    // Owners the kernel did not know, looked up in /proc by the monitor thread.
    let (lookup_tx, lookup_rx) = std::sync::mpsc::sync_channel(1024);
    let mut sinks = vec![sink];
    if let Some(ep) = endpoint {
        sinks.push(Box::new(ep.sink()));
    }
    let mut pipe = Pipeline::new(clock, cfg.filter.clone(), Fanout(sinks))
        .with_lookups(lookup_tx.clone())
        .with_workloads(Resolver::new());
    if let Some(rec) = &cfg.record {
        let header = Header::new(&session.info, clock);
        let w = match rec.budget {
            Some(budget) => {
                CaptureWriter::in_dir(&rec.path, budget, header, rec.rotate, rec.flush_every)?
            }
            None => {
                CaptureWriter::create(&rec.path, rec.replace, header, rec.rotate, rec.flush_every)?
            }
        };
        pipe = pipe.with_capture(w);
        if let Some(f) = &rec.filter {
            pipe = pipe.with_capture_filter(f.clone());
        }
    }

    // Attached, maps and files open: from here on only what the live loop uses. Before
    // the monitor thread starts, which inherits this thread's capabilities.
    let recording_elsewhere = cfg.record.as_ref().is_some_and(|r| {
        // A capture directory's files are written in it, not beside it.
        let file = match r.budget {
            Some(_) => r.path.join("file"),
            None => r.path.clone(),
        };
        crate::base::private_file::written_for_another_user(&file)
    });
    privileges::drop_all_but(&privileges::live_set(recording_elsewhere))?;

    // SAFETY: the ring buffer's fd is owned by `maps.ring`, which the AsyncFd owns and
    // which outlives the registration.
    let mut ring = unsafe { AsyncFd::register_with_interest(maps.ring, Interest::READABLE) }
        .context("registering the ring buffer with epoll")?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    // Only with a JSON file: otherwise a hangup ends rstrace as it ends any program.
    let mut sighup = reopen
        .as_ref()
        .map(|_| signal(SignalKind::hangup()))
        .transpose()?;
    let every = |ms| {
        let mut i = tokio::time::interval(Duration::from_millis(ms));
        i.set_missed_tick_behavior(MissedTickBehavior::Skip);
        i
    };
    // Reading: the ring is polled (the programs wake the reader only when a backlog
    // builds up) and the losses read. Asleep after QUIET_POLLS empty polls: every
    // event wakes the reader, and what has no deadline of its own (the engine's sweep
    // of old stories, losses by recursion, which write no event) runs on `idle_tick`.
    let mut poll_tick = every(20);
    let mut loss_tick = every(250);
    let mut idle_tick = every(1000);
    // While something waits for a time (a story's deadline, a burst, a flush, an
    // exit check): the pipeline is moved on.
    let mut tick = every(50);
    let mut wakeups = maps.wakeups;
    let mut asleep = false;
    let mut asleep_since = std::time::Instant::now();
    let mut idle_ticks = 0u32;
    let mut quiet_polls = 0u32;
    let mut losses = Losses::new(maps.losses, &session.probes);

    let monitor = Monitor {
        stop: Arc::new(AtomicBool::new(false)),
        rescan: Arc::new(AtomicBool::new(false)),
        quiet: Arc::new(AtomicBool::new(false)),
        asks: lookup_tx,
    };
    let (otx, mut orx) = mpsc::channel::<Observation>(1024);
    let monitor_thread = {
        let (stop, rescan) = (monitor.stop.clone(), monitor.rescan.clone());
        let quiet = monitor.quiet.clone();
        let interval = cfg.overflow_interval;
        std::thread::spawn(move || {
            netns::run_monitor(interval, stop, rescan, quiet, lookup_rx, |o| {
                otx.blocking_send(o).is_ok()
            })
        })
    };
    // The context of the sockets and listeners already there goes first: the events
    // read after it (the ring holds those of the start-up meanwhile) find their owners.
    let started = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(o) = orx.recv().await {
            match o {
                Observation::Started => return Ok(()),
                o => on_observation(o, &mut pipe, &mut listener_map, &clock)?,
            }
        }
        Ok::<(), io::Error>(())
    })
    .await;
    match started {
        Ok(r) => r?,
        Err(_) => log::warn!(
            "the namespaces present at start-up took over 30 s to read; early events may \
             lack their owners"
        ),
    }
    let attached = session
        .probes
        .status
        .values()
        .filter(|s| matches!(s, HookStatus::Attached { .. }))
        .count();
    eprintln!(
        "rstrace: watching {attached}/{} kernel hooks on Linux {} (Ctrl-C to stop)",
        Hook::COUNT,
        session.info.release
    );
    super::service::notify_ready();
    if let Some(ep) = endpoint {
        ep.ready();
    }

    let result: Result<()> = loop {
        let waiting = !asleep || pipe.waiting() || live.exits.waiting();
        let step: Result<()> = tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let woke = if asleep {
                    asleep = false;
                    quiet_polls = 0;
                    monitor.quiet.store(false, Ordering::Relaxed);
                    wakeups.set_asleep(false)
                } else {
                    Ok(())
                };
                let res = live.drain(guard.get_inner_mut(), &mut decoder, &mut pipe, &clock);
                guard.clear_ready();
                woke.and(res.map_err(Into::into))
            }
            _ = poll_tick.tick(), if !asleep => {
                let before = live.events;
                live.drain(ring.get_mut(), &mut decoder, &mut pipe, &clock).map_err(Into::into).and_then(|()| {
                    quiet_polls = if live.events == before { quiet_polls + 1 } else { 0 };
                    if quiet_polls < QUIET_POLLS {
                        return Ok(());
                    }
                    wakeups.set_asleep(true)?;
                    asleep = true;
                    asleep_since = std::time::Instant::now();
                    // What the programs wrote before they were told is read now.
                    Ok(live.drain(ring.get_mut(), &mut decoder, &mut pipe, &clock)?)
                })
            }
            Some(o) = orx.recv() => Ok(on_observation(o, &mut pipe, &mut listener_map, &clock)?),
            _ = tick.tick(), if waiting => Ok(live.advance_now(&mut pipe, &clock, &monitor)?),
            _ = loss_tick.tick(), if !asleep => Ok(losses.report(&session.probes, &mut pipe, &clock)?),
            _ = idle_tick.tick(), if asleep => {
                if asleep_since.elapsed() >= QUIET_HOST {
                    monitor.quiet.store(true, Ordering::Relaxed);
                }
                idle_ticks += 1;
                live.drain(ring.get_mut(), &mut decoder, &mut pipe, &clock)
                    .and_then(|()| live.advance_now(&mut pipe, &clock, &monitor))
                    .and_then(|()| {
                        // Recursion losses are read from each program's fdinfo: every
                        // few seconds is soon enough on a host that writes no events.
                        if idle_ticks.is_multiple_of(IDLE_LOSS_TICKS) {
                            losses.report(&session.probes, &mut pipe, &clock)
                        } else {
                            Ok(())
                        }
                    })
                    .map_err(Into::into)
            }
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
            Some(_) = async { sighup.as_mut()?.recv().await }, if sighup.is_some() => {
                // Lines so far to the old file, the next ones to a new one.
                pipe.flush().map_err(Into::into).map(|()| {
                    if let Some(r) = &reopen {
                        r.store(true, Ordering::Relaxed);
                    }
                })
            }
        };
        if let Err(e) = step.and_then(|_| Ok(pipe.flush()?)) {
            break Err(e);
        }
        if let Some(ep) = endpoint {
            ep.beat(ring_fill.as_ref().map(RingFill::used), cfg.ring_bytes);
        }
    };
    super::service::notify_stopping();
    if let Some(ep) = endpoint {
        ep.stopping();
    }
    monitor.stop.store(true, Ordering::Relaxed);
    monitor.wake();
    drop(orx);
    let _ = monitor_thread.join();
    // What is still in the ring, the stories waiting for evidence and the bursts
    // still counting are explained before exit: the totals equal the failures.
    let result = result.and_then(|()| {
        live.drain(ring.get_mut(), &mut decoder, &mut pipe, &clock)?;
        // Losses since the last tick are reported too: the totals include them.
        losses.report(&session.probes, &mut pipe, &clock)?;
        pipe.finish()?;
        Ok(())
    });
    let _ = pipe.flush();
    let (events, [ring_full, recursion]) = (live.events, losses.total);
    let lost = ring_full + recursion;
    eprintln!("rstrace: read {events} events, {lost} lost");
    if let Some(path) = &cfg.stats {
        let stats = serde_json::json!({
            "events": events,
            "lost": lost,
            "lost_ring_full": ring_full,
            "lost_recursion": recursion,
            "peak_open_stories": pipe.peak_open_stories(),
            "programs": session.probes.program_stats(),
        });
        crate::base::private_file::write(path, stats.to_string().as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(w) = pipe.capture() {
        w.flush().context("writing the capture file")?;
        if cfg.record.is_some() {
            eprintln!(
                "rstrace: recorded {} records in {} chunks to {}",
                w.records,
                w.chunks,
                w.path().display()
            );
        }
    }
    result
}
