//! Capture files against the real kernel: what `explain` says of a recording must be
//! what `watch` printed live, and a recording cut off by kill -9 still explains.
use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use serde_json::Value;
use tests::{capability, pid_of, port, require_root, rstrace_bin, s, Agent, Peer, Topology};

const SEC: Duration = Duration::from_secs(1);

fn explain(file: &Path, addr: &str) -> Vec<Value> {
    let out = Command::new(rstrace_bin())
        .args(["explain", "--json", "--addr", addr])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "explain failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON ({e}): {l}")))
        .collect()
}

/// What must match between live and replay: cause, port, the processes, outcome.
fn key(v: &Value) -> (String, u16, Option<u64>, Option<u64>, String, u64) {
    (
        s(v, "cause").to_string(),
        port(s(v, "dst")),
        pid_of(v, "process"),
        pid_of(v, "culprit"),
        s(v, "outcome").to_string(),
        v["count"].as_u64().unwrap_or(0),
    )
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rstrace-capture-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

#[test]
fn explaining_a_recording_gives_what_watch_printed_live() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let file = scratch("live.rst");
    let mut agent = Agent::start(&["--addr", &t.server_ip, "--record", file.to_str().unwrap()]);
    // A refusal, a listener on the wrong address, a firewall drop, an application reset.
    let c = Peer::spawn(&t.client, &["connect", &format!("{}:8201", t.server_ip)]);
    c.wait(10 * SEC);
    let mut lo = Peer::spawn(&t.server, &["listen", "127.0.0.1:8202"]);
    lo.wait_line(5 * SEC, |l| l == "ready");
    let c = Peer::spawn(&t.client, &["connect", &format!("{}:8202", t.server_ip)]);
    c.wait(10 * SEC);
    t.server.nft_input("tcp dport 8203 drop");
    let c = Peer::spawn(
        &t.client,
        &["connect", &format!("{}:8203", t.server_ip), "--syncnt", "1"],
    );
    c.wait(15 * SEC);
    let mut l0 = Peer::spawn(
        &t.server,
        &["listen", &format!("{}:8204", t.server_ip), "--linger0"],
    );
    l0.wait_line(5 * SEC, |l| l == "ready");
    let c = Peer::spawn(
        &t.client,
        &[
            "connect",
            &format!("{}:8204", t.server_ip),
            "--then",
            "read",
        ],
    );
    c.wait(10 * SEC);
    for p in [8201, 8202, 8203, 8204] {
        agent.wait_for(&format!("live explanation for {p}"), 5 * SEC, |v| {
            s(v, "kind") == "failure" && port(s(v, "dst")) == p
        });
    }
    std::thread::sleep(SEC);
    assert!(agent.stop().success());

    let live: BTreeSet<_> = agent
        .records()
        .iter()
        .filter(|v| s(v, "kind") == "failure")
        .map(key)
        .collect();
    let replay: BTreeSet<_> = explain(&file, &t.server_ip).iter().map(key).collect();
    let causes: BTreeSet<&str> = live.iter().map(|k| k.0.as_str()).collect();
    // What each kernel's evidence allows (see the explain tests).
    let drop = if capability("drop_reasons") {
        "firewall_drop"
    } else {
        "syn_unanswered"
    };
    let reset = if capability("rst_sent_reason") {
        "reset_linger_zero"
    } else {
        "reset_by_application"
    };
    assert_eq!(
        causes,
        [drop, "listener_other_address", "nothing_listening", reset]
            .into_iter()
            .collect(),
        "live: {live:#?}"
    );
    assert_eq!(replay, live, "replay differs from live");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_recording_killed_with_sigkill_still_explains() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let file = scratch("killed.rst");
    let agent = Agent::start(&["--addr", &t.server_ip, "--record", file.to_str().unwrap()]);
    let c = Peer::spawn(&t.client, &["connect", &format!("{}:8205", t.server_ip)]);
    let cpid = c.pid as u64;
    c.wait(10 * SEC);
    agent.wait_for("live explanation", 5 * SEC, |v| s(v, "kind") == "failure");
    // Chunks reach the disk within a second.
    std::thread::sleep(Duration::from_millis(1500));
    agent.signal(libc::SIGKILL);
    let replay = explain(&file, &t.server_ip);
    let e = replay
        .iter()
        .find(|v| port(s(v, "dst")) == 8205)
        .expect("the refusal survives kill -9");
    assert_eq!(s(e, "cause"), "nothing_listening");
    assert_eq!(pid_of(e, "process"), Some(cpid));
}
