//! `watch --metrics`: a real Prometheus (Debian's package) scrapes the agent on
//! loopback while real failures happen in the test's namespaces, and PromQL through
//! its HTTP API counts them by cause and port; `promtool check metrics` passes on the
//! exposition; /readyz turns 200 once attached; garbage requests are refused without
//! harm.
use std::{
    fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    require_daemons, require_root, rstrace_bin, scratch_file, time_scale, Agent, KillOnDrop, Peer,
    Topology,
};

const SEC: Duration = Duration::from_secs(1);

/// A port free on loopback now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One HTTP/1.0 exchange with `127.0.0.1:port`: the status and the body; None when
/// nothing answers.
fn http(port: u16, request: &[u8]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(10 * SEC)).ok()?;
    s.write_all(request).ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).ok()?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    Some((status, body))
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http(
        port,
        format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes(),
    )
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A PromQL instant query's vector: (labels, value) pairs.
fn query(port: u16, promql: &str) -> Vec<(Value, f64)> {
    let Some((200, body)) = get(port, &format!("/api/v1/query?query={}", url_encode(promql)))
    else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["data"]["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|x| {
                    let n = x["value"][1].as_str()?.parse().ok()?;
                    Some((x["metric"].clone(), n))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A real `prometheus` on loopback scraping `target` every second, its storage in a
/// scratch directory; killed (by pid) and removed on drop.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(target: u16) -> Prometheus {
        let dir = scratch_file("metrics", "prometheus");
        fs::create_dir_all(&dir).expect("prometheus scratch directory");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: rstrace\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .expect("prometheus.yml");
        let port = free_port();
        let log = fs::File::create(dir.join("log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning prometheus");
        let p = Prometheus { child, port, dir };
        tests::wait_until("prometheus ready", 30 * SEC, || {
            matches!(get(port, "/-/ready"), Some((200, _)))
        });
        p
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill takes no pointers; the pid is our child, not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Failures by (cause, port) as Prometheus has them.
fn prometheus_failures(p: &Prometheus) -> Vec<(String, String, u64)> {
    let mut v: Vec<(String, String, u64)> =
        query(p.port, "sum by (cause,port)(rstrace_failures_total)")
            .into_iter()
            .map(|(m, n)| {
                let l = |k: &str| m[k].as_str().unwrap_or_default().to_string();
                (l("cause"), l("port"), n as u64)
            })
            .collect();
    v.sort();
    v
}

#[test]
fn prometheus_counts_the_failures_by_cause_and_port() {
    if !require_root() || !require_daemons(&["prometheus", "promtool"]) {
        return;
    }
    let t = Topology::new();
    t.server.nft_input("tcp dport 8302 drop");
    let mport = free_port();
    let metrics = format!("127.0.0.1:{mport}");
    // Only this test's failures (the filter applies to the metrics too).
    let mut agent = Agent::start(&["--addr", &t.server_ip, "--metrics", &metrics]);
    let prom = Prometheus::start(mport);

    // N refusals by one process (one line, then "+N-1 more"), M timeouts by
    // netfilter drops, from M processes at once.
    const N: usize = 6;
    const M: usize = 2;
    let refused = Peer::spawn(
        &t.client,
        &[
            "connect",
            &format!("{}:8301", t.server_ip),
            "--count",
            &N.to_string(),
        ],
    );
    let dropped: Vec<Peer> = (0..M)
        .map(|_| {
            Peer::spawn(
                &t.client,
                &["connect", &format!("{}:8302", t.server_ip), "--syncnt", "1"],
            )
        })
        .collect();
    assert_eq!(refused.wait(15 * SEC), vec!["errno=111"; N]);
    for d in dropped {
        assert_eq!(d.wait(15 * SEC), vec!["errno=110"]);
    }

    let want = vec![
        ("firewall_drop".to_string(), "8302".to_string(), M as u64),
        (
            "nothing_listening".to_string(),
            "8301".to_string(),
            N as u64,
        ),
    ];
    let deadline = Instant::now() + 30 * SEC * time_scale();
    let mut got = Vec::new();
    while Instant::now() < deadline {
        got = prometheus_failures(&prom);
        if got == want {
            break;
        }
        std::thread::sleep(SEC / 2);
    }
    assert_eq!(
        got,
        want,
        "Prometheus's sum by (cause,port)(rstrace_failures_total); up: {:?}\n\
         the agent's explanations: {:?}\nprometheus log:\n{}",
        query(prom.port, "up"),
        agent
            .records()
            .iter()
            .filter(|v| v["kind"] == "failure")
            .map(|v| format!("{} {} x{}", v["cause"], v["dst"], v["count"]))
            .collect::<Vec<_>>(),
        prom.log()
    );
    let sides = query(prom.port, "sum by (side)(rstrace_failures_total)");
    assert_eq!(sides.len(), 1, "{sides:?}");
    assert_eq!(sides[0].0["side"], "client", "{sides:?}");
    // Evidence by kind and the agent's own series reach Prometheus too.
    for q in [
        "rstrace_events_total{kind=\"rst_sent\"}",
        "rstrace_events_total{kind=\"syn_retransmit\"}",
        "rstrace_build_info",
        "rstrace_hook_state{state=\"attached\"}",
        "rstrace_ring_buffer_size_bytes",
        "rstrace_start_time_seconds",
    ] {
        let r = query(prom.port, q);
        assert!(
            !r.is_empty() && r.iter().all(|(_, v)| *v > 0.0),
            "{q}: {r:?}"
        );
    }

    // The exposition passes promtool's checks (the Prometheus text format, which it
    // reads) with nothing to say.
    let (status, exposition) = get(mport, "/metrics").expect("the agent answers");
    assert_eq!(status, 200);
    assert!(
        exposition.contains("rstrace_failures_total{"),
        "{exposition}"
    );
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .expect("stdin")
        .write_all(exposition.as_bytes())
        .expect("writing to promtool");
    let out = check.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}: {said}\n{exposition}",
        out.status
    );
    drop(prom);
    assert!(agent.stop().success());
}

/// /readyz answers 503 while the programs load and 200 once attached; /healthz 200
/// while the loop runs; garbage gets 4xx and the agent goes on explaining.
#[test]
fn readiness_and_garbage_requests() {
    if !require_root() {
        return;
    }
    let mport = free_port();
    let mut child = Command::new(rstrace_bin())
        .args([
            "watch",
            "--json",
            "--metrics",
            &format!("127.0.0.1:{mport}"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning rstrace");
    let _kill = KillOnDrop(child.id());
    let deadline = Instant::now() + 60 * SEC * time_scale();
    let mut seen: Vec<u16> = Vec::new();
    loop {
        if let Some((status, _)) = get(mport, "/readyz") {
            if seen.last() != Some(&status) {
                seen.push(status);
            }
            if status == 200 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "/readyz not 200 within 60 s: {seen:?}"
        );
        assert!(child.try_wait().expect("wait").is_none(), "rstrace exited");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(seen, [503, 200], "/readyz while loading, then attached");

    let long = vec![b'a'; 20_000];
    for (req, want) in [
        (&b"\x00\x01\x02garbage\r\n\r\n"[..], 400),
        (b"GET /metrics\r\n\r\n", 400),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", 405),
        (&long[..], 431),
        (b"GET /nothing HTTP/1.1\r\n\r\n", 404),
    ] {
        let got = http(mport, req).map(|r| r.0);
        assert_eq!(
            got,
            Some(want),
            "{:?}",
            String::from_utf8_lossy(&req[..20.min(req.len())])
        );
    }
    // A request cut short, and connections opened and left: each ends on its own.
    drop(TcpStream::connect(("127.0.0.1", mport)).map(|mut s| s.write_all(b"GET /me")));
    let idle: Vec<_> = (0..8)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", mport)).ok())
        .collect();
    drop(idle);
    tests::wait_until("/healthz 200 after the garbage", 10 * SEC, || {
        matches!(get(mport, "/healthz"), Some((200, _)))
    });
    assert_eq!(get(mport, "/metrics").map(|r| r.0), Some(200));
    assert!(child.try_wait().expect("wait").is_none(), "rstrace exited");

    // SAFETY: kill takes no pointers; the pid is our child, not reaped yet.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().expect("wait");
    assert!(st.success(), "{st}");
}

/// A taken address is an error naming it, before anything is loaded.
#[test]
fn an_address_in_use_is_a_clear_error() {
    if !require_root() {
        return;
    }
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = Command::new(rstrace_bin())
        .args(["watch", "--metrics", &addr.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("rstrace");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("--metrics {addr}: address in use")),
        "{err}"
    );
    assert!(!err.contains("watching"), "{err}");
}
