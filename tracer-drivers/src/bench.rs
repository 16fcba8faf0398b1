//! The drivers behind `cargo xtask bench`: the empty-program floor and the capture
//! codec's throughput.
use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};
use tracer_common::KernelOffsets;

use tracer::{
    base::{
        clock::Clock,
        reasons,
        record::{
            errno_name, FirewallRule, Kind, OwnerSource, Proc, Record, Sock, TcpFlags, TcpState,
        },
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
    for i in 0..n {
        storm_connection(&clock, i, Storm::Refused, &mut out);
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Storm {
    /// One client and one port, every record timed as it arrives.
    Refused,
    /// 64 processes, 16 ports, and one connection in five timing out on a firewall
    /// drop; record times not formatted (a capture does not store them).
    Mixed,
}

/// Appends the records of connection `i` of a storm.
fn storm_connection(clock: &Clock, i: u64, storm: Storm, out: &mut Vec<Record>) {
    let mixed = storm == Storm::Mixed;
    let t = clock.mono_ns + i * 20_000;
    let port = if mixed { 8080 + (i % 16) as u16 } else { 8080 };
    let server = SocketAddr::from(([10, 0, 0, 2], port));
    let pid = if mixed { 4121 + (i % 64) as u32 } else { 4121 };
    let comm: tracer::base::record::Text = if mixed && i % 2 == 1 {
        "python3".into()
    } else {
        "curl".into()
    };
    let curl = Proc {
        pid,
        comm,
        cgroup: None,
        workload: None,
    };
    let client = SocketAddr::from(([10, 0, 0, 1], 32768 + (i % 28000) as u16));
    let sock = Sock(0xffff_8880_0000_0000u64 + (i % 512) * 0x800);
    let mk = |kind: Kind, dt: u64, src, dst, netns: u32| {
        let time = if mixed {
            String::new()
        } else {
            clock.format(t + dt)
        };
        let mut r = Record::new(kind, t + dt, time);
        r.src = Some(src);
        r.dst = Some(dst);
        r.netns = Some(netns);
        r.task = Some(curl.clone());
        r
    };
    if mixed && i % 5 == 4 {
        // SYNs dropped by a firewall rule until connect() times out.
        for k in 0..3 {
            let mut drop = mk(Kind::Drop, k * 1_000, client, server, 4026532301);
            drop.reason = Some(reasons::NETFILTER_DROP.into());
            drop.location = Some("nft_do_chain+0x3e8".into());
            drop.tcp_flags = Some(TcpFlags::SYN);
            out.push(drop);
            if k > 0 {
                let mut re = mk(
                    Kind::SynRetransmit,
                    k * 1_000 + 500,
                    client,
                    server,
                    4026532230,
                );
                re.state = Some(TcpState::SynSent);
                re.owner = Some(curl.clone());
                re.owner_source = Some(OwnerSource::Kernel);
                re.sock = Some(sock);
                re.retransmits = Some(k as u32);
                out.push(re);
            }
        }
        let mut err = mk(Kind::Error, 4_000, client, server, 4026532230);
        err.errno = Some(110);
        err.errno_name = errno_name(110);
        out.push(err);
        return;
    }
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

/// Context records at time `t`: the storm's namespaces' addresses and firewall rules.
fn context(t: u64, out: &mut Vec<Record>) {
    let ctx = |kind: Kind, netns: u32| {
        let mut r = Record::new(kind, t, String::new());
        r.netns = Some(netns);
        r
    };
    for (netns, ip) in [(4026532301, [10, 0, 0, 2]), (4026532230, [10, 0, 0, 1])] {
        let mut r = ctx(Kind::Addresses, netns);
        r.addrs = Some(vec![std::net::IpAddr::from(ip)]);
        out.push(r);
    }
    for (k, port) in (8080..8096u16).enumerate() {
        let mut r = ctx(Kind::FirewallRule, 4026532301);
        r.dst = Some(SocketAddr::from(([10, 0, 0, 2], port)));
        r.rules = Some(vec![FirewallRule {
            source: "nft".into(),
            family: "inet".into(),
            table: "filter".into(),
            chain: "input".into(),
            hook: Some("input".into()),
            priority: Some(0),
            handle: Some(4 + k as u64),
            rule: format!("tcp dport {port} drop").into(),
            verdict: "drop".into(),
        }]);
        out.push(r);
    }
}

/// Writes a capture of at least `records` records of a mixed storm (refusals and
/// firewall timeouts) to `path`, generated as it is written; prints JSON.
pub fn write_capture(records: u64, path: PathBuf) -> Result<()> {
    let clock = Clock::now();
    let started = Instant::now();
    let mut w = bench_writer(&path, &clock)?;
    let mut batch = Vec::with_capacity(16);
    let mut i = 0;
    while w.records < records {
        if i % 50_000 == 0 {
            // The context `rstrace record` writes (first, then as the monitor rereads
            // it): each namespace's addresses and the firewall rules where SYNs are
            // dropped, so that stories wait only as they do on a real capture.
            context(clock.mono_ns + i * 20_000, &mut batch);
        }
        storm_connection(&clock, i, Storm::Mixed, &mut batch);
        for r in batch.drain(..) {
            w.write(&r)?;
        }
        i += 1;
    }
    w.flush()?;
    let json = serde_json::json!({
        "records": w.records,
        "connections": i,
        "bytes": std::fs::metadata(&path)?.len(),
        "write_s": started.elapsed().as_secs_f64(),
    });
    println!("{json}");
    Ok(())
}

/// A capture file at `path`, replaced if it exists (repeated runs write the same
/// file), its header's clock `clock`.
fn bench_writer(path: &Path, clock: &Clock) -> Result<CaptureWriter> {
    let header = Header {
        format: tracer::capture::file::FORMAT_VERSION,
        kernel: "bench".into(),
        clock_mono_ns: clock.mono_ns,
        clock_wall_ns: clock
            .wall
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        ..Default::default()
    };
    CaptureWriter::create(
        path,
        true,
        header,
        RotatePolicy::NEVER,
        Duration::from_secs(1),
    )
    .with_context(|| format!("creating {}", path.display()))
}

/// Times writing and explaining a synthetic refusal storm; prints JSON.
pub fn codec(n: u64, path: PathBuf) -> Result<()> {
    let records = refused_storm(n);
    let started = Instant::now();
    let mut w = bench_writer(&path, &Clock::now())?;
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
