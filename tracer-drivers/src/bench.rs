//! The drivers behind `cargo xtask bench`: the empty-program floor and the capture
//! codec's throughput.
use std::{
    io,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracer_common::KernelOffsets;

use tracer::{
    base::{
        clock::Clock,
        reasons,
        record::{errno_name, Kind, OwnerSource, Proc, Record, Sock, TcpFlags, TcpState},
    },
    capture::{CaptureWriter, Header, Reader, RotatePolicy},
    kernel::{btf::KernelBtf, info::KernelInfo, privileges, probes::Probes, tracefs},
    pipeline::{filter::Filter, Pipeline},
    sink::JsonLines,
};

/// Attaches the empty programs to every hook until SIGINT/SIGTERM, then writes their
/// run statistics to `stats`.
pub fn floor(stats: PathBuf) -> Result<()> {
    privileges::check()?;
    privileges::raise_memlock();
    let tracefs = tracefs::ensure_tracefs()?;
    let btf = KernelBtf::load().ok();
    let info = KernelInfo::gather(&tracefs, btf.as_ref());
    let offsets = btf.as_ref().map_or(KernelOffsets::UNKNOWN, |b| {
        b.kernel_offsets(&mut Vec::new())
    });
    let probes = Probes::load_floor(&info, &offsets)?;
    eprintln!("rstrace: watching with empty programs (benchmark floor)");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        io::Result::Ok(())
    })?;
    let json = serde_json::json!({ "programs": probes.program_stats() });
    tracer::base::private_file::write(&stats, json.to_string().as_bytes())
        .with_context(|| format!("writing {}", stats.display()))
}

/// The records of `n` refused connections, as both ends on this host produce them.
pub fn refused_storm(n: u64) -> Vec<Record> {
    let clock = Clock::now();
    let mut out = Vec::with_capacity(n as usize * 6);
    let server = SocketAddr::from(([10, 0, 0, 2], 8080));
    let curl = Proc {
        pid: 4121,
        comm: "curl".into(),
        cgroup: None,
        workload: None,
    };
    let task = Proc {
        pid: 4121,
        comm: "curl".into(),
        cgroup: None,
        workload: None,
    };
    for i in 0..n {
        let t = clock.mono_ns + i * 20_000;
        let client = SocketAddr::from(([10, 0, 0, 1], 32768 + (i % 28000) as u16));
        let sock = Sock(0xffff_8880_0000_0000u64 + (i % 512) * 0x800);
        let mk = |kind: Kind, dt: u64, src, dst, netns: u32| {
            let mut r = Record::new(kind, t + dt, clock.format(t + dt));
            r.src = Some(src);
            r.dst = Some(dst);
            r.netns = Some(netns);
            r.task = Some(task.clone());
            r
        };
        let mut rst = mk(Kind::RstSent, 0, server, client, 4026532301);
        rst.reason = Some(reasons::NO_SOCKET.into());
        let mut drop = mk(Kind::Drop, 1_000, client, server, 4026532301);
        drop.reason = Some(reasons::NO_SOCKET.into());
        drop.location = Some("tcp_v4_rcv+0x91".into());
        drop.tcp_flags = Some(TcpFlags::SYN);
        let mut recv = mk(Kind::RstReceived, 2_000, client, server, 4026532230);
        recv.owner = Some(curl.clone());
        recv.owner_source = Some(OwnerSource::Kernel);
        recv.sock = Some(sock);
        let mut st = mk(Kind::State, 3_000, client, server, 4026532230);
        st.old_state = Some(TcpState::SynSent);
        st.new_state = Some(TcpState::Close);
        st.owner = Some(curl.clone());
        st.owner_source = Some(OwnerSource::Kernel);
        st.sock = Some(sock);
        let mut err = mk(Kind::Error, 4_000, client, server, 4026532230);
        err.errno = Some(111);
        err.errno_name = errno_name(111);
        let mut again = mk(
            Kind::Error,
            5_000,
            client,
            SocketAddr::new(server.ip(), 0),
            0,
        );
        again.errno = Some(0);
        out.extend([rst, drop, recv, st, err, again]);
    }
    out
}

/// Times writing and explaining a synthetic refusal storm; prints JSON.
pub fn codec(n: u64, path: PathBuf) -> Result<()> {
    let records = refused_storm(n);
    let clock = Clock::now();
    let header = Header {
        format: tracer::capture::file::FORMAT_VERSION,
        clock_mono_ns: clock.mono_ns,
        ..Default::default()
    };
    let started = Instant::now();
    // Repeated runs write the same file.
    let mut w = CaptureWriter::create(
        &path,
        true,
        header,
        RotatePolicy::NEVER,
        Duration::from_secs(1),
    )?;
    for r in &records {
        w.write(r)?;
        if w.records % 4096 == 0 {
            w.tick()?;
        }
    }
    w.flush()?;
    let write_s = started.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&path)?.len();

    let started = Instant::now();
    let mut readers = [Reader::open(&path)?];
    let clock = readers[0].header.clock();
    let mut pipe = Pipeline::new(clock, Filter::default(), JsonLines::new(io::sink(), false));
    let read = tracer::cmd::replay::run(&mut readers, &mut pipe)?.records;
    let explain_s = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    let json = serde_json::json!({
        "records": records.len(),
        "write_s": write_s,
        "write_per_s": records.len() as f64 / write_s,
        "bytes": bytes,
        "bytes_per_record": bytes as f64 / records.len() as f64,
        "explain_s": explain_s,
        "explain_per_s": read as f64 / explain_s,
    });
    println!("{json}");
    Ok(())
}
