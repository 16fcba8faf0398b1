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
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracer_common::{Hook, KernelOffsets, ListenKey, ListenOwner, SockOwner};

use crate::{
    base::{
        clock::Clock,
        record::{Kind, PortUse, Queue, Record, LOST_RECURSION, LOST_RING_FULL},
    },
    capture::{CaptureWriter, Header, RotatePolicy},
    decode::Decoder,
    kernel::{
        btf::KernelBtf,
        info::KernelInfo,
        privileges,
        probes::{read_losses, HookStatus, Probes},
        tracefs,
    },
    pipeline::{filter::Filter, Pipeline},
    sink::Output,
    source::netns::{self, Observation, Overflow},
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
    /// Also write everything to this capture file.
    pub record: Option<RecordTo>,
    /// At exit, write the event counts and the programs' run statistics here (JSON).
    pub stats: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct RecordTo {
    pub path: PathBuf,
    /// Replace an existing file at `path` (--force).
    pub replace: bool,
    pub rotate: RotatePolicy,
    pub flush_every: Duration,
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
    let probes = Probes::load(&info, offsets, ring_bytes)?;
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

pub fn overflow_record(o: Overflow, clock: &Clock) -> Record {
    let now = now_ns();
    let mut r = Record::new(Kind::Overflow, now, clock.format(now));
    r.netns = Some(o.netns);
    r.queue_kind = Some(o.queue_kind);
    r.drops = Some(o.drops);
    r.somaxconn = o.somaxconn;
    if let Some(l) = o.listener {
        r.src = Some(l.addr);
        r.queue = Some(Queue {
            depth: l.depth,
            backlog: l.backlog,
        });
    }
    if let Some(p) = o.owner {
        r.owner = Some(p);
        r.owner_source = Some("proc");
    }
    r
}

/// Context records for a namespace: its addresses, its listeners, then the connected
/// sockets that were there before the agent.
pub fn namespace_records(
    netns: u32,
    now: u64,
    addrs: Vec<std::net::IpAddr>,
    listeners: netns::OwnedListeners,
    sockets: netns::OwnedSockets,
    clock: &Clock,
) -> Vec<Record> {
    let mut a = Record::new(Kind::Addresses, now, clock.format(now));
    a.netns = Some(netns);
    a.addrs = Some(addrs);
    let mut out = vec![a];
    for (l, owner) in listeners {
        let mut r = Record::new(Kind::Listener, now, clock.format(now));
        r.netns = Some(netns);
        r.src = Some(l.addr);
        r.queue = Some(Queue {
            depth: l.depth,
            backlog: l.backlog,
        });
        r.owner_source = owner.as_ref().map(|_| "proc");
        r.owner = owner;
        r.v6only = l.v6only;
        out.push(r);
    }
    out.extend(socket_records(netns, now, sockets, clock));
    out
}

/// Context records for connected sockets and the processes holding them.
fn socket_records(
    netns: u32,
    now: u64,
    sockets: netns::OwnedSockets,
    clock: &Clock,
) -> impl Iterator<Item = Record> + '_ {
    sockets.into_iter().map(move |(c, owner)| {
        let mut r = Record::new(Kind::Socket, now, clock.format(now));
        r.netns = Some(netns);
        r.src = Some(c.src);
        r.dst = Some(c.dst);
        r.state = Some(crate::base::record::tcp_state_name(c.state as i32));
        r.owner = Some(owner);
        r.owner_source = Some("proc");
        r
    })
}

/// The context record of a namespace's rules that drop or reject the port of `dst`;
/// `reason` says what could not be read when none was found.
pub fn firewall_record(
    netns: u32,
    dst: std::net::SocketAddr,
    now: u64,
    rules: &[crate::source::firewall::Rule],
    missing: &[String],
    clock: &Clock,
) -> Record {
    let mut r = Record::new(Kind::FirewallRule, now, clock.format(now));
    r.netns = Some(netns);
    r.dst = Some(dst);
    r.rules = Some(rules.iter().map(|x| x.to_record()).collect());
    if rules.is_empty() && !missing.is_empty() {
        r.reason = Some(missing.join("; ").into());
    }
    r
}

pub(crate) fn on_observation<W: io::Write>(
    o: Observation,
    pipe: &mut Pipeline<W>,
    listener_map: &mut aya::maps::HashMap<aya::maps::MapData, ListenKey, ListenOwner>,
    clock: &Clock,
) -> io::Result<()> {
    match o {
        Observation::Overflow(o) => pipe.push(overflow_record(o, clock)),
        Observation::Namespace {
            netns,
            at_ns,
            addrs,
            listeners,
            sockets,
        } => {
            seed_listeners(listener_map, netns, at_ns, &listeners);
            namespace_records(netns, at_ns, addrs, listeners, sockets, clock)
                .into_iter()
                .try_for_each(|r| pipe.push(r))
        }
        Observation::Sockets {
            netns,
            at_ns,
            sockets,
        } => socket_records(netns, at_ns, sockets, clock).try_for_each(|r| pipe.push(r)),
        Observation::Firewall {
            netns,
            dst,
            at_ns,
            rules,
            missing,
        } => pipe.push(firewall_record(netns, dst, at_ns, &rules, &missing, clock)),
        Observation::Started => Ok(()),
    }
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

fn loss_record(hook: Hook, lost: u64, why: &str, clock: &Clock) -> Record {
    let now = now_ns();
    let mut r = Record::new(Kind::Loss, now, clock.format(now));
    r.hook = Some(hook.program());
    r.lost = Some(lost);
    r.reason = Some(why.into());
    r
}

pub fn run(cfg: WatchConfig) -> Result<()> {
    let mut session = start(cfg.ring_bytes)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_loop(&mut session, cfg))
}

/// How long a namespace's port use, read for a connect() that found no free port, is
/// reused for the next ones to the same destination (a retry loop fails thousands of
/// times a second; each read is a sock_diag dump of the namespace).
const PORT_USE_FOR_NS: u64 = 1_000_000_000;

/// Reads what the kernel's record cannot hold from the socket's namespace, before the
/// record is recorded (so that a replay explains with the same facts): the port range
/// and the sockets holding ports towards the destination for connect errors for want
/// of a local port; IPV6_V6ONLY for listeners opened on an IPv6 address.
#[derive(Default)]
struct LiveReads {
    /// None: the read failed (not retried within the window either).
    recent: std::collections::HashMap<(u32, std::net::SocketAddr), (u64, Option<PortUse>)>,
}

/// The namespace `ns` of a record owned by `pid`: the process's link while it lives
/// (and the pid was not reused, which the inode tells), else any process's or a bind
/// mount's, found by a walk.
fn netns_path(ns: u32, pid: u32) -> Option<std::path::PathBuf> {
    let path = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
    if std::fs::metadata(&path).is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == ns as u64)
    {
        return Some(path);
    }
    netns::scan_namespaces().remove(&ns).map(|n| n.path)
}

impl LiveReads {
    fn enrich(&mut self, r: &mut Record) {
        self.v6only(r);
        self.ports(r);
    }

    fn v6only(&mut self, r: &mut Record) {
        let opened =
            r.kind == Kind::State && r.old_state == Some("CLOSE") && r.new_state == Some("LISTEN");
        let (Some(ns), Some(addr), Some(owner)) = (r.netns, r.src, &r.owner) else {
            return;
        };
        if !opened || !addr.is_ipv6() {
            return;
        }
        r.v6only = netns_path(ns, owner.pid).and_then(|path| {
            netns::listener_v6only(&path, addr)
                .map_err(|e| log::debug!("listeners of netns {ns}: {e:#}"))
                .ok()
                .flatten()
        });
    }

    fn ports(&mut self, r: &mut Record) {
        if r.kind != Kind::ConnectError
            || r.state != Some("SYN_SENT")
            || r.errno != Some(libc::EADDRNOTAVAIL)
        {
            return;
        }
        let (Some(ns), Some(dst), Some(owner)) = (r.netns, r.dst, &r.owner) else {
            return;
        };
        let now = r.mono_ns;
        self.recent
            .retain(|_, (at, _)| now.saturating_sub(*at) < PORT_USE_FOR_NS);
        if let Some((_, p)) = self.recent.get(&(ns, dst)) {
            r.ports = p.clone();
            return;
        }
        // A client that gives up at once has exited by now: netns_path walks then.
        let p = netns_path(ns, owner.pid).and_then(|path| {
            netns::port_use(&path, dst)
                .map_err(|e| log::debug!("port use of netns {ns}: {e:#}"))
                .ok()
        });
        self.recent.insert((ns, dst), (now, p.clone()));
        r.ports = p;
    }
}

/// Decodes and pushes everything waiting in the ring.
fn drain<W: io::Write>(
    rb: &mut aya::maps::RingBuf<aya::maps::MapData>,
    decoder: &mut Decoder,
    pipe: &mut Pipeline<W>,
    events: &mut u64,
    reads: &mut LiveReads,
) -> io::Result<()> {
    while let Some(item) = rb.next() {
        *events += 1;
        match decoder.decode(&item) {
            Ok(mut r) => {
                reads.enrich(&mut r);
                pipe.push(r)?
            }
            Err(e) => log::warn!("undecodable event: {e}"),
        }
    }
    Ok(())
}

async fn run_loop(session: &mut Session, cfg: WatchConfig) -> Result<()> {
    let maps = session.probes.take_maps()?;
    let mut listener_map = maps.listeners;
    let clock = Clock::now();
    let mut decoder = Decoder::new(&session.info);
    let mut reads = LiveReads::default();
    let sink: Box<dyn io::Write> = if cfg.quiet {
        Box::new(io::sink())
    } else {
        Box::new(io::stdout().lock())
    };
    let out = Output::new(sink, cfg.json, cfg.verbose);
    let mut pipe = Pipeline::new(cfg.filter.clone(), out, cfg.events, clock);
    pipe.live = true;
    if let Some(rec) = &cfg.record {
        let header = Header::new(&session.info, clock);
        pipe.capture = Some(CaptureWriter::create(
            &rec.path,
            rec.replace,
            header,
            rec.rotate,
            rec.flush_every,
        )?);
    }

    // SAFETY: the ring buffer's fd is owned by `maps.ring`, which the AsyncFd owns and
    // which outlives the registration.
    let mut ring = unsafe { AsyncFd::register_with_interest(maps.ring, Interest::READABLE) }
        .context("registering the ring buffer with epoll")?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut loss_tick = tokio::time::interval(Duration::from_millis(250));
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    // The programs wake the reader only when a backlog builds up (a wakeup per event
    // costs the kernel more than the event), so the ring is also read on this tick.
    let mut poll_tick = tokio::time::interval(Duration::from_millis(20));
    let loss_map = maps.losses;
    let losses = |probes: &Probes| [read_losses(&loss_map), probes.recursion_misses()];
    let mut lost_before = losses(&session.probes);
    let (mut events, mut lost) = (0u64, 0u64);

    let stop = Arc::new(AtomicBool::new(false));
    let rescan = Arc::new(AtomicBool::new(false));
    let (otx, mut orx) = mpsc::channel::<Observation>(1024);
    // Owners the kernel did not know, looked up in /proc by the monitor thread.
    let (lookup_tx, lookup_rx) = std::sync::mpsc::sync_channel(1024);
    pipe.lookups = Some(lookup_tx);
    let monitor = {
        let (stop, rescan) = (stop.clone(), rescan.clone());
        let interval = cfg.overflow_interval;
        std::thread::spawn(move || {
            netns::run_monitor(interval, stop, rescan, lookup_rx, |o| {
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

    let result: Result<()> = loop {
        let step: io::Result<()> = tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let res = drain(guard.get_inner_mut(), &mut decoder, &mut pipe, &mut events, &mut reads);
                guard.clear_ready();
                res
            }
            _ = poll_tick.tick() => drain(ring.get_mut(), &mut decoder, &mut pipe, &mut events, &mut reads),
            Some(o) = orx.recv() => on_observation(o, &mut pipe, &mut listener_map, &clock),
            _ = tick.tick() => {
                let r = pipe.advance(now_ns());
                if pipe.engine.take_context_request() {
                    rescan.store(true, Ordering::Relaxed);
                }
                r
            }
            _ = loss_tick.tick() => {
                let now = losses(&session.probes);
                let mut res = Ok(());
                for (i, why) in [LOST_RING_FULL, LOST_RECURSION].into_iter().enumerate() {
                    for hook in Hook::ALL {
                        let d = now[i][hook as usize].saturating_sub(lost_before[i][hook as usize]);
                        lost += d;
                        if d > 0 && res.is_ok() {
                            res = pipe.push(loss_record(hook, d, why, &clock));
                        }
                    }
                }
                lost_before = now;
                res
            }
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        };
        if let Err(e) = step.and_then(|_| pipe.out.flush()) {
            break Err(e.into());
        }
    };
    stop.store(true, Ordering::Relaxed);
    drop(orx);
    let _ = monitor.join();
    // What is still in the ring, the stories waiting for evidence and the bursts
    // still counting are explained before exit: the totals equal the failures.
    let result = result.and_then(|()| {
        drain(
            ring.get_mut(),
            &mut decoder,
            &mut pipe,
            &mut events,
            &mut reads,
        )?;
        pipe.finish()?;
        Ok(())
    });
    let _ = pipe.out.flush();
    eprintln!("rstrace: read {events} events, {lost} lost");
    if let Some(path) = &cfg.stats {
        let stats = serde_json::json!({
            "events": events,
            "lost": lost,
            "programs": session.probes.program_stats(),
        });
        crate::base::private_file::write(path, stats.to_string().as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(w) = pipe.capture.as_mut() {
        w.flush().context("writing the capture file")?;
        if let Some(rec) = &cfg.record {
            eprintln!(
                "rstrace: recorded {} records in {} chunks to {}",
                w.records,
                w.chunks,
                rec.path.display()
            );
        }
    }
    result
}
