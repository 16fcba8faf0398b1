//! Owner, never the interrupted task. Over veth the receiving side's softirq normally
//! runs inside the sender's own syscall, so an agent that named the current task would
//! look right. Here the receive work of both veths is steered (RPS) to CPU 1 and the
//! peers run on CPU 0, while a CPU-bound bystander process runs on each CPU: softirqs
//! and timers then interrupt whatever runs there (a bystander, the test itself, the
//! agent). Every record must still name the socket's owner, and for each hook some
//! record must show another task than its owner (else the set-up proved nothing).
use std::time::Duration;

use serde_json::Value;
use tests::{owner_pid, pid_of, port, require_root, s, Agent, Peer, Topology};

const SEC: Duration = Duration::from_secs(1);

fn dump(v: &[Value]) -> String {
    v.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn task_pid(v: &Value) -> Option<u64> {
    pid_of(v, "task")
}

/// Steers the receive processing of `dev` in `ns` to CPU 1.
fn rps_to_cpu1(ns: &tests::Netns, dev: &str) {
    ns.exec(&[
        "sh",
        "-c",
        &format!("echo 2 > /sys/class/net/{dev}/queues/rx-0/rps_cpus"),
    ]);
}

#[test]
fn every_owner_is_the_sockets_process_never_the_interrupted_task() {
    if !require_root() {
        return;
    }
    assert!(
        std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2,
        "this test needs two CPUs"
    );
    let t = Topology::new();
    rps_to_cpu1(&t.client, "veth0");
    rps_to_cpu1(&t.server, "veth1");
    // The server runs before the agent, as on a server under investigation: its
    // listener is known from /proc, the connections it accepts from the kernel.
    let mut server = Peer::spawn(
        &t.server,
        &[
            "--cpu",
            "0",
            "listen",
            &format!("{}:8503", t.server_ip),
            "--linger0",
        ],
    );
    server.wait_line(5 * SEC, |l| l == "ready");
    let mut agent = Agent::start(&["--addr", &t.server_ip]);
    let mut bystanders: Vec<Peer> = ["0", "1"]
        .iter()
        .map(|cpu| {
            let mut b = Peer::spawn(&t.client, &["--cpu", cpu, "spin", "60"]);
            b.wait_line(5 * SEC, |l| l == "spinning");
            b
        })
        .collect();
    let bystander_pids: Vec<u64> = bystanders.iter().map(|b| b.pid as u64).collect();

    // A refusal (RST for a closed port, the client's RST, death and errno), SYN
    // retransmits to a port whose SYNs are dropped (timers), and a reset of an
    // established connection by the server (received by the client in softirq).
    t.server.nft_input("tcp dport 8502 drop");
    let refused = Peer::spawn(
        &t.client,
        &[
            "--cpu",
            "0",
            "connect",
            &format!("{}:8501", t.server_ip),
            "--count",
            "20",
        ],
    );
    let dropped = Peer::spawn(
        &t.client,
        &[
            "--cpu",
            "0",
            "connect",
            &format!("{}:8502", t.server_ip),
            "--syncnt",
            "2",
        ],
    );
    let reset = Peer::spawn(
        &t.client,
        &[
            "--cpu",
            "0",
            "connect",
            &format!("{}:8503", t.server_ip),
            "--then",
            "read",
            "--count",
            "5",
        ],
    );
    let clients = [
        (8501u16, refused.pid as u64),
        (8502, dropped.pid as u64),
        (8503, reset.pid as u64),
    ];
    refused.wait(30 * SEC);
    dropped.wait(30 * SEC);
    reset.wait(30 * SEC);
    agent.wait_for("the timeout's explanation", 10 * SEC, |v| {
        s(v, "kind") == "failure" && port(s(v, "dst")) == 8502
    });
    agent.stop();
    for b in &mut bystanders {
        drop(std::mem::replace(b, Peer::spawn(&t.client, &["spin", "0"])));
    }
    let records = agent.records();
    let ours: Vec<&Value> = records
        .iter()
        .filter(|v| {
            s(v, "kind") != "failure"
                && [8501u16, 8502, 8503]
                    .iter()
                    .any(|p| port(s(v, "dst")) == *p || port(s(v, "src")) == *p)
        })
        .collect();
    // Events that ran in another task than their socket's owner: softirqs and timers
    // that interrupted a bystander, the test or the agent (not the idle task).
    let interrupted: Vec<&&Value> = ours
        .iter()
        .filter(|v| task_pid(v).is_some_and(|p| p != 0 && Some(p) != owner_pid(v)))
        .collect();
    for v in &ours {
        let owner = owner_pid(v);
        assert!(
            owner.is_none_or(|o| !bystander_pids.contains(&o)),
            "a bystander named as owner: {v}"
        );
    }
    // Each hook that reports an owner, seen in another task's context, with the right one.
    let mut hooks = vec![
        ("rst_received", clients[0]),
        ("state", clients[0]),
        ("syn_retransmit", clients[1]),
        ("rst_received", clients[2]),
    ];
    if tests::capability("errno") {
        hooks.push(("error", clients[0]));
    }
    for (kind, (p, cpid)) in hooks {
        let seen = interrupted
            .iter()
            .filter(|v| s(v, "kind") == kind && port(s(v, "dst")) == p)
            .collect::<Vec<_>>();
        assert!(
            !seen.is_empty(),
            "no {kind} ran in another task: the test proves nothing\n{}",
            dump(&records)
        );
        for v in seen {
            assert_eq!(owner_pid(v), Some(cpid), "{v}");
        }
    }
    for (p, cpid) in clients {
        let lines: Vec<Value> = records
            .iter()
            .filter(|v| s(v, "kind") == "failure" && port(s(v, "dst")) == p)
            .cloned()
            .collect();
        assert!(
            !lines.is_empty(),
            "port {p} not explained:\n{}",
            dump(&records)
        );
        for e in &lines {
            assert_eq!(pid_of(e, "process"), Some(cpid), "port {p}: {e}");
            assert!(
                pid_of(e, "culprit").is_none_or(|c| !bystander_pids.contains(&c)),
                "{e}"
            );
        }
    }
}
