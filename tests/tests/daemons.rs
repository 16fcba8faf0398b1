//! Real daemons from Debian packages (nginx, redis) in the tests' namespaces, started
//! before the agent and after it: the failures they cause are explained with the same
//! processes either way. Their behaviour is what the toy `peer` cannot show: nginx's
//! workers accept what its master listens on; redis's accepted sockets outlive the
//! agent's start.
#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tests::{
    capability, owner_pid, pid_of, port, require_daemons, require_root, s, wait_until, Agent,
    Daemon, Topology,
};

const SEC: Duration = Duration::from_secs(1);

fn dump(v: &[Value]) -> String {
    v.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The explanations about a flow with `p` at either end.
fn failures(records: &[Value], p: u16) -> Vec<Value> {
    records
        .iter()
        .filter(|v| s(v, "kind") == "failure" && (port(s(v, "dst")) == p || port(s(v, "src")) == p))
        .cloned()
        .collect()
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rstrace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Whether something listens on `addr` in the namespace (ss, from iproute2).
fn listening(t: &Topology, ns: &tests::Netns, addr: &str) -> bool {
    let _ = t;
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "ss",
            "-Htln",
            &format!("src {addr}"),
        ])
        .output()
        .is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
}

/// nginx with two workers, answering every request by resetting the connection
/// (`return 444` with `reset_timedout_connection on`: an abortive close).
fn nginx(t: &Topology, p: u16) -> (Daemon, PathBuf) {
    let dir = scratch(&format!("nginx-{p}"));
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n\
         access_log off;\nclient_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
         reset_timedout_connection on;\n\
         server {{ listen {}:{p}; location / {{ return 444; }} }}\n}}\n",
        t.server_ip
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let master = Daemon::spawn(
        &t.server,
        &[
            "nginx",
            "-p",
            &d.to_string(),
            "-c",
            &format!("{d}/nginx.conf"),
        ],
    );
    let addr = format!("{}:{p}", t.server_ip);
    wait_until("nginx listening with 2 workers", 10 * SEC, || {
        listening(t, &t.server, &addr) && master.children().len() == 2
    });
    (master, dir)
}

/// curl in the client namespace; its pid and exit code.
fn curl(t: &Topology, url: &str) -> (u32, i32) {
    let mut c = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.client.name,
            "curl",
            "-s",
            "-m",
            "10",
            url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = c.id();
    let st = c.wait().unwrap();
    (pid, st.code().unwrap_or(-1))
}

/// nginx's master listens, its workers accept: the reset a worker sends names that
/// worker (never the master, never curl), with nginx started before or after the agent.
#[test]
fn nginx_workers_reset_is_theirs_whether_nginx_started_before_or_after() {
    if !require_root() || !require_daemons(&["nginx", "curl"]) {
        return;
    }
    for (p, nginx_first) in [(8401u16, true), (8402, false)] {
        let t = Topology::new();
        let early = nginx_first.then(|| nginx(&t, p));
        let mut agent = Agent::start(&["--port", &p.to_string()]);
        let (master, dir) = early.unwrap_or_else(|| nginx(&t, p));
        let workers = master.children();
        let (cpid, code) = curl(&t, &format!("http://{}:{p}/", t.server_ip));
        // 56: failure receiving network data (the connection was reset).
        assert_eq!(code, 56, "curl's exit code");
        agent.wait_for("the reset's explanation", 10 * SEC, |v| {
            s(v, "kind") == "failure" && port(s(v, "dst")) == p
        });
        agent.stop();
        let records = agent.records();
        let rst = records
            .iter()
            .find(|v| s(v, "kind") == "rst_sent" && port(s(v, "src")) == p)
            .unwrap_or_else(|| panic!("no rst_sent from port {p}: {}", dump(&records)));
        let owner = owner_pid(rst).map(|o| o as u32);
        assert!(
            owner.is_some_and(|o| workers.contains(&o)),
            "nginx first: {nginx_first}: owner {owner:?}, workers {workers:?}, master {}: {rst}",
            master.pid
        );
        let all = failures(&records, p);
        let want = if capability("rst_sent_reason") {
            "reset_linger_zero"
        } else {
            "reset_by_application"
        };
        assert!(all.iter().all(|v| s(v, "cause") == want), "{}", dump(&all));
        let e = &all[0];
        assert_eq!(pid_of(e, "process"), Some(cpid as u64), "{e}");
        assert_eq!(pid_of(e, "culprit").map(|p| p as u32), owner, "{e}");
        drop(master);
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn redis(t: &Topology, p: u16) -> Daemon {
    let d = Daemon::spawn(
        &t.server,
        &[
            "redis-server",
            "--port",
            &p.to_string(),
            "--bind",
            &t.server_ip,
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
    );
    let addr = format!("{}:{p}", t.server_ip);
    wait_until("redis listening", 10 * SEC, || {
        listening(t, &t.server, &addr)
    });
    d
}

fn redis_cli(t: &Topology, p: u16, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &t.client.name,
            "redis-cli",
            "-h",
            &t.server_ip,
        ])
        .args(["-p", &p.to_string()])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "redis-cli {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A subscriber killed with unread data resets its connection to redis: redis-server
/// is the process that failed (it got the ECONNRESET) and the subscriber the culprit,
/// never the other way round, with the connection made before or after the agent.
#[test]
fn a_redis_subscriber_killed_with_unread_data_is_the_culprit_not_the_victim() {
    if !require_root() || !require_daemons(&["redis-server", "redis-cli"]) {
        return;
    }
    for (p, first) in [(8403u16, true), (8404, false)] {
        let t = Topology::new();
        let start = |t: &Topology| {
            let server = redis(t, p);
            let sub = Daemon::spawn(
                &t.client,
                &[
                    "redis-cli",
                    "-h",
                    &t.server_ip,
                    "-p",
                    &p.to_string(),
                    "subscribe",
                    "news",
                ],
            );
            wait_until("the subscriber subscribed", 10 * SEC, || {
                redis_cli(t, p, &["pubsub", "numsub", "news"])
                    .lines()
                    .nth(1)
                    .is_some_and(|n| n.trim() == "1")
            });
            (server, sub)
        };
        let early = first.then(|| start(&t));
        let mut agent = Agent::start(&["--port", &p.to_string()]);
        let (server, mut sub) = early.unwrap_or_else(|| start(&t));
        // Stopped, it reads nothing: what is published waits in its socket.
        sub.signal(libc::SIGSTOP);
        let payload = "x".repeat(2000);
        for _ in 0..5 {
            redis_cli(&t, p, &["publish", "news", &payload]);
        }
        sub.signal(libc::SIGKILL);
        sub.wait(10 * SEC);
        agent.wait_for("the reset's explanation", 10 * SEC, |v| {
            s(v, "kind") == "failure" && (port(s(v, "src")) == p || port(s(v, "dst")) == p)
        });
        agent.stop();
        let records = agent.records();
        let all = failures(&records, p);
        let want = if capability("rst_sent_reason") {
            "reset_unread_data"
        } else {
            "reset_by_application"
        };
        assert!(
            all.iter().all(|v| s(v, "cause") == want),
            "first: {first}: {}",
            dump(&records)
        );
        let e = &all[0];
        assert_eq!(
            pid_of(e, "culprit"),
            Some(sub.pid as u64),
            "first: {first}: {e}"
        );
        assert_eq!(
            pid_of(e, "process"),
            Some(server.pid as u64),
            "first: {first}: {e}"
        );
        assert!(
            s(e, "explanation").starts_with(&format!("redis-server[{}]", server.pid)),
            "{e}"
        );
    }
}
