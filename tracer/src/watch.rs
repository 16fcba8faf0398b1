//! `rstrace watch`: the live pipeline. Stages: load/attach -> read ring -> decode ->
//! enrich -> filter -> sink, plus two side sources merged into the stream: loss
//! counters (read every 250 ms) and backlog overflows (netns counters, see netns.rs).
use std::{
    io,
    os::fd::AsRawFd,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use anyhow::{anyhow, Context as _, Result};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};
use tracer_common::{Hook, KernelOffsets};

use crate::{
    btf::KernelBtf,
    decode::{Clock, Decoder},
    enrich::Enricher,
    filter::Filter,
    kernel::KernelInfo,
    netns::{self, Overflow},
    privileges,
    probes::{read_losses, HookStatus, Probes},
    record::{Kind, Queue, Record},
    sink::{json, text, LineSink, Sink},
    tracefs,
};

#[derive(Clone, Debug)]
pub struct WatchConfig {
    pub json: bool,
    pub filter: Filter,
    pub ring_bytes: u32,
    pub overflow_interval: Duration,
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
    let cfg = info.program_config(offsets);
    let probes = Probes::load(&info, &cfg, ring_bytes)?;
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

fn overflow_record(o: Overflow, clock: &Clock) -> Record {
    let now = Clock::now().mono_ns;
    let mut r = Record::new(Kind::Overflow, now, clock.format(now));
    r.netns = Some(o.netns);
    r.queue_kind = Some(o.queue_kind);
    r.drops = Some(o.drops);
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

fn loss_record(hook: Hook, lost: u64, clock: &Clock) -> Record {
    let now = Clock::now().mono_ns;
    let mut r = Record::new(Kind::Loss, now, clock.format(now));
    r.hook = Some(hook.program());
    r.lost = Some(lost);
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

async fn run_loop(session: &mut Session, cfg: WatchConfig) -> Result<()> {
    let maps = session.probes.take_maps()?;
    let clock = Clock::now();
    let mut decoder = Decoder::new(&session.info, clock);
    let mut enricher = Enricher::default();
    let stdout = io::stdout().lock();
    let mut sink: Box<dyn Sink> = if cfg.json {
        Box::new(LineSink::new(stdout, json::format))
    } else {
        Box::new(LineSink::new(stdout, text::format))
    };

    // SAFETY: the ring buffer's fd is owned by `maps.ring`, which the AsyncFd owns and
    // which outlives the registration.
    let mut ring = unsafe { AsyncFd::register_with_interest(maps.ring, Interest::READABLE) }
        .context("registering the ring buffer with epoll")?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut loss_tick = tokio::time::interval(Duration::from_millis(250));
    let mut lost_before = read_losses(&maps.losses);

    let stop = Arc::new(AtomicBool::new(false));
    let (otx, mut orx) = mpsc::channel::<Overflow>(256);
    let monitor = {
        let stop = stop.clone();
        let interval = cfg.overflow_interval;
        std::thread::spawn(move || {
            netns::run_monitor(interval, stop, |o| otx.blocking_send(o).is_ok())
        })
    };
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

    let mut emit = |r: &mut Record, sink: &mut Box<dyn Sink>| -> io::Result<()> {
        if enricher.process(r) && cfg.filter.matches(r) {
            sink.write(r)?;
        }
        Ok(())
    };

    let result: Result<()> = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let rb = guard.get_inner_mut();
                let mut out = Ok(());
                while let Some(item) = rb.next() {
                    match decoder.decode(&item) {
                        Ok(mut r) => {
                            if let Err(e) = emit(&mut r, &mut sink) { out = Err(e); break; }
                        }
                        Err(e) => log::warn!("undecodable event: {e}"),
                    }
                }
                guard.clear_ready();
                if let Err(e) = out.and_then(|_| sink.flush()) { break Err(e.into()); }
            }
            Some(o) = orx.recv() => {
                let mut r = overflow_record(o, &clock);
                if let Err(e) = emit(&mut r, &mut sink).and_then(|_| sink.flush()) { break Err(e.into()); }
            }
            _ = loss_tick.tick() => {
                let now = read_losses(&maps.losses);
                let mut res = Ok(());
                for hook in Hook::ALL {
                    let d = now[hook as usize].saturating_sub(lost_before[hook as usize]);
                    if d > 0 {
                        let mut r = loss_record(hook, d, &clock);
                        res = res.and_then(|_| emit(&mut r, &mut sink));
                    }
                }
                lost_before = now;
                if let Err(e) = res.and_then(|_| sink.flush()) { break Err(e.into()); }
            }
            _ = sigint.recv() => break Ok(()),
            _ = sigterm.recv() => break Ok(()),
        }
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(orx);
    let _ = monitor.join();
    let _ = sink.flush();
    let _ = ring.as_raw_fd();
    result
}
