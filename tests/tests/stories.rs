//! True stories on a server that was already running: sockets and listeners from
//! before the agent, a listen() that fails beside a live listener, and storms whose
//! 4-tuples repeat, counted exactly, up to the moment the agent is stopped.
use std::time::Duration;

use serde_json::Value;
use tests::{
    capability, failures, owner_pid, pid_of, port, require_root, s, wait_until, Agent, Peer,
    Topology,
};

const SEC: Duration = Duration::from_secs(1);

fn dump(v: &[Value]) -> String {
    v.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A refusal storm from one client whose ephemeral ports are narrowed to a few dozen,
/// so that every 4-tuple fails many times within a second, stopped by SIGTERM alone
/// right after: the counts of the lines add up to the refused connects.
#[test]
fn a_storm_reusing_its_ports_is_counted_exactly_up_to_sigterm() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    // 64 ports, of which connect() uses one parity: 32 distinct 4-tuples.
    t.client
        .exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40063"]);
    let capture = std::env::temp_dir().join(format!("rstrace-storm-{}.rst", std::process::id()));
    let _ = std::fs::remove_file(&capture);
    let capture_arg = capture.to_string_lossy().into_owned();
    let mut agent = Agent::start(&["--port", "8301", "--record", &capture_arg]);
    let n = 600;
    let client = Peer::spawn(
        &t.client,
        &[
            "connect",
            &format!("{}:8301", t.server_ip),
            "--count",
            &n.to_string(),
        ],
    );
    let lines = client.wait(60 * SEC);
    let refused = lines.iter().filter(|l| *l == "errno=111").count();
    assert_eq!(refused, n, "every connect refused: {lines:?}");
    // No second signal: SIGTERM alone must flush what is pending.
    let st = agent.stop_with(libc::SIGTERM);
    assert!(st.success(), "exit status {st}");
    let all = failures(&agent.records(), 8301);
    let counted: u64 = all.iter().map(|v| v["count"].as_u64().unwrap_or(0)).sum();
    assert_eq!(
        counted,
        n as u64,
        "counted failures vs refused connects:\n{}",
        dump(&all)
    );
    assert!(
        all.iter().all(|v| s(v, "cause") == "nothing_listening"),
        "{}",
        dump(&all)
    );
    // Explained again from the capture, offline: the same total.
    let replayed: u64 = tests::explain_json(&["--port", "8301"], &capture)
        .iter()
        .filter(|v| s(v, "kind") == "failure")
        .map(|v| v["count"].as_u64().unwrap_or(0))
        .sum();
    let _ = std::fs::remove_file(&capture);
    assert_eq!(replayed, n as u64, "counted from the capture");
}

/// Both ends of a connection opened before the agent started: the reset that ends it
/// names the client as the process that failed and the server as the one that reset,
/// from /proc (the kernel never saw these sockets being made).
#[test]
fn a_reset_on_a_connection_from_before_the_agent_names_both_ends() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let p = 8302;
    let mut server = Peer::spawn(
        &t.server,
        &["listen", &format!("{}:{p}", t.server_ip), "--close-unread"],
    );
    server.wait_line(5 * SEC, |l| l == "ready");
    let go = std::env::temp_dir().join(format!("rstrace-go-{}-{p}", std::process::id()));
    let _ = std::fs::remove_file(&go);
    let go_arg = go.to_string_lossy().into_owned();
    let mut client = Peer::spawn(
        &t.client,
        &[
            "connect",
            &format!("{}:{p}", t.server_ip),
            "--after",
            &go_arg,
            "--send",
            "100",
            "--then",
            "read",
        ],
    );
    client.wait_line(10 * SEC, |l| l == "errno=0");
    let cpid = client.pid as u64;
    let mut agent = Agent::start(&["--port", &p.to_string()]);
    std::fs::write(&go, b"").unwrap();
    let lines = client.wait(20 * SEC);
    let _ = std::fs::remove_file(&go);
    assert_eq!(lines, vec!["errno=0", "failed errno=104"]);
    let want = if capability("rst_sent_reason") {
        "reset_unread_data"
    } else {
        "reset_by_application"
    };
    agent.wait_for("the reset's explanation", 10 * SEC, |v| {
        s(v, "kind") == "failure" && port(s(v, "dst")) == p
    });
    agent.stop();
    let records = agent.records();
    let all = failures(&records, p);
    assert!(all.iter().all(|v| s(v, "cause") == want), "{}", dump(&all));
    let e = &all[0];
    assert_eq!(pid_of(e, "process"), Some(cpid), "{e}");
    assert_eq!(pid_of(e, "culprit"), Some(server.pid as u64), "{e}");
    // The RST's own record names the server, found through /proc.
    let rst = records
        .iter()
        .find(|v| s(v, "kind") == "rst_sent" && port(s(v, "src")) == p)
        .unwrap_or_else(|| panic!("no rst_sent from port {p}: {}", dump(&records)));
    assert_eq!(owner_pid(rst), Some(server.pid as u64), "{rst}");
    // From /proc, directly or through another event of the same socket.
    assert!(matches!(s(rst, "owner_source"), "proc" | "socket"), "{rst}");
}

/// A server listening before the agent started, and one started after: the
/// connections they accept afterwards are owned by the server either way (the
/// listener enters the kernel's map from /proc at start-up).
#[test]
fn connections_accepted_by_a_server_from_before_the_agent_have_its_owner() {
    if !require_root() {
        return;
    }
    for (p, server_first) in [(8303u16, true), (8304, false)] {
        let t = Topology::new();
        let listen = |t: &Topology| {
            let mut server = Peer::spawn(
                &t.server,
                &["listen", &format!("{}:{p}", t.server_ip), "--linger0"],
            );
            server.wait_line(5 * SEC, |l| l == "ready");
            server
        };
        let early = server_first.then(|| listen(&t));
        let mut agent = Agent::start(&["--port", &p.to_string()]);
        let server = early.unwrap_or_else(|| listen(&t));
        let client = Peer::spawn(
            &t.client,
            &["connect", &format!("{}:{p}", t.server_ip), "--then", "read"],
        );
        let cpid = client.pid as u64;
        client.wait(10 * SEC);
        agent.wait_for("the reset's explanation", 10 * SEC, |v| {
            s(v, "kind") == "failure" && port(s(v, "dst")) == p
        });
        agent.stop();
        let records = agent.records();
        let rst = records
            .iter()
            .find(|v| s(v, "kind") == "rst_sent" && port(s(v, "src")) == p)
            .unwrap_or_else(|| panic!("no rst_sent from port {p}: {}", dump(&records)));
        assert_eq!(
            owner_pid(rst),
            Some(server.pid as u64),
            "server first: {server_first}: {rst}"
        );
        assert_eq!(
            s(rst, "owner_source"),
            "kernel",
            "server first: {server_first}: {rst}"
        );
        let all = failures(&records, p);
        let e = &all[0];
        assert_eq!(pid_of(e, "culprit"), Some(server.pid as u64), "{e}");
        assert_eq!(pid_of(e, "process"), Some(cpid), "{e}");
    }
}

/// A listen() that fails with EADDRINUSE beside a live listener (the kernel shows it
/// as the socket entering LISTEN, then CLOSE) changes neither the listener's owner nor
/// the explanation of later failures.
#[test]
fn a_failed_listen_beside_a_live_listener_changes_nothing() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let p = 8305;
    let mut agent = Agent::start(&["--port", &p.to_string()]);
    let mut server = Peer::spawn(
        &t.server,
        &[
            "listen",
            &format!("{}:{p}", t.server_ip),
            "--linger0",
            "--failed-listen",
        ],
    );
    server.wait_line(5 * SEC, |l| l == "failed-listen errno=98");
    server.wait_line(5 * SEC, |l| l == "ready");
    let client = Peer::spawn(
        &t.client,
        &["connect", &format!("{}:{p}", t.server_ip), "--then", "read"],
    );
    client.wait(10 * SEC);
    // The host model still has the listener (on the server's first address only): a
    // connect to the namespace's other address is refused for that, not for nothing
    // listening. The accepted connection's owner above no longer shows the kernel map
    // alone (the accept hook names the accepting process too); this shows the rest.
    let other = t.host_ip(3);
    t.server
        .exec(&["ip", "addr", "add", &format!("{other}/24"), "dev", "veth1"]);
    let refused = Peer::spawn(&t.client, &["connect", &format!("{other}:{p}")]);
    assert_eq!(refused.wait(10 * SEC), vec!["errno=111"]);
    for ip in [&t.server_ip, &other] {
        agent.wait_for("both explanations", 10 * SEC, |v| {
            s(v, "kind") == "failure" && s(v, "dst") == format!("{ip}:{p}")
        });
    }
    agent.stop();
    let records = agent.records();
    let rst = records
        .iter()
        .find(|v| s(v, "kind") == "rst_sent" && port(s(v, "src")) == p)
        .unwrap_or_else(|| panic!("no rst_sent from port {p}: {}", dump(&records)));
    assert_eq!(owner_pid(rst), Some(server.pid as u64), "{rst}");
    assert_eq!(s(rst, "owner_source"), "kernel", "{rst}");
    let all = failures(&records, p);
    let want = if capability("rst_sent_reason") {
        "reset_linger_zero"
    } else {
        "reset_by_application"
    };
    let (resets, refusals): (Vec<&Value>, Vec<&Value>) = all
        .iter()
        .partition(|v| s(v, "dst") == format!("{}:{p}", t.server_ip));
    assert!(
        resets.iter().all(|v| s(v, "cause") == want),
        "{}",
        dump(&all)
    );
    assert_eq!(refusals.len(), 1, "{}", dump(&all));
    assert_eq!(
        s(refusals[0], "cause"),
        "listener_other_address",
        "{}",
        refusals[0]
    );
    assert_eq!(
        pid_of(refusals[0], "culprit"),
        Some(server.pid as u64),
        "{}",
        refusals[0]
    );
}

/// A pre-fork server: the process that listens forks a worker that accepts and closes
/// with unread data. The reset is the worker's, whether the server started before the
/// agent or after it (the listener's process is only the fallback).
#[test]
fn a_pre_fork_servers_worker_is_named_not_the_process_that_listened() {
    if !require_root() {
        return;
    }
    for (p, server_first) in [(8306u16, true), (8307, false)] {
        let t = Topology::new();
        let listen = |t: &Topology| {
            let mut server = Peer::spawn(
                &t.server,
                &[
                    "listen",
                    &format!("{}:{p}", t.server_ip),
                    "--fork-accept",
                    "--close-unread",
                ],
            );
            let child = server.wait_line(5 * SEC, |l| l.starts_with("child="));
            let child: u64 = child["child=".len()..].parse().unwrap();
            server.wait_line(5 * SEC, |l| l == "ready");
            (server, child)
        };
        let early = server_first.then(|| listen(&t));
        let mut agent = Agent::start(&["--port", &p.to_string()]);
        let (server, worker) = early.unwrap_or_else(|| listen(&t));
        assert_ne!(worker, server.pid as u64);
        let client = Peer::spawn(
            &t.client,
            &[
                "connect",
                &format!("{}:{p}", t.server_ip),
                "--send",
                "100",
                "--then",
                "read",
            ],
        );
        let cpid = client.pid as u64;
        assert_eq!(client.wait(10 * SEC), vec!["errno=0", "failed errno=104"]);
        agent.wait_for("the reset's explanation", 10 * SEC, |v| {
            s(v, "kind") == "failure" && port(s(v, "dst")) == p
        });
        agent.stop();
        let records = agent.records();
        let rst = records
            .iter()
            .find(|v| s(v, "kind") == "rst_sent" && port(s(v, "src")) == p)
            .unwrap_or_else(|| panic!("no rst_sent from port {p}: {}", dump(&records)));
        assert_eq!(
            owner_pid(rst),
            Some(worker),
            "server first: {server_first}: {rst}"
        );
        let all = failures(&records, p);
        let want = if capability("rst_sent_reason") {
            "reset_unread_data"
        } else {
            "reset_by_application"
        };
        assert!(all.iter().all(|v| s(v, "cause") == want), "{}", dump(&all));
        let e = &all[0];
        assert_eq!(pid_of(e, "culprit"), Some(worker), "{e}");
        assert_eq!(pid_of(e, "process"), Some(cpid), "{e}");
    }
}

/// SYNs dropped by the client's own OUTPUT chain: the dropped packets carry their
/// socket, so the timeout names the client and its namespace, and says where the rule is.
#[test]
fn syns_dropped_on_their_way_out_name_the_client() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let p = 8308;
    t.client.nft_output(&format!("tcp dport {p} drop"));
    let mut agent = Agent::start(&["--port", &p.to_string()]);
    let client = Peer::spawn(
        &t.client,
        &["connect", &format!("{}:{p}", t.server_ip), "--syncnt", "1"],
    );
    let cpid = client.pid as u64;
    assert_eq!(client.wait(30 * SEC), vec!["errno=110"]);
    agent.wait_for("the timeout's explanation", 10 * SEC, |v| {
        s(v, "kind") == "failure" && port(s(v, "dst")) == p && v.get("errno_name").is_some()
    });
    agent.stop();
    let records = agent.records();
    let all = failures(&records, p);
    assert_eq!(all.len(), 1, "one failure: {}", dump(&all));
    let e = &all[0];
    assert_eq!(pid_of(e, "process"), Some(cpid), "{e}");
    assert_eq!(s(e, "errno_name"), "ETIMEDOUT", "{e}");
    if !capability("drop_reasons") {
        // No drop events (and no retransmit events for SYNs never sent): a timeout
        // that nothing visible explains.
        assert_eq!(s(e, "cause"), "syn_unanswered", "{e}");
        return;
    }
    assert_eq!(s(e, "cause"), "firewall_drop", "{e}");
    // The rule is named, read from the client's namespace.
    let h = t.client.nft_handle(&format!("tcp dport {p} drop"));
    assert!(
        s(e, "explanation").contains(&format!(
            "the rule `tcp dport {p} drop` (table inet rstrace_test, chain output, handle {h}) in netns {} (the client's own output filter) drops SYNs",
            t.client.label()
        )),
        "{e}"
    );
    assert!(
        s(e, "fix").contains(&format!(
            "nft delete rule inet rstrace_test output handle {h}"
        )),
        "{e}"
    );
    let drop = records
        .iter()
        .find(|v| s(v, "kind") == "drop" && port(s(v, "dst")) == p)
        .unwrap_or_else(|| panic!("no drop: {}", dump(&records)));
    assert_eq!(owner_pid(drop), Some(cpid), "{drop}");
}

/// A client bound to one source port connects again and again to a port whose SYNs a
/// rule drops: each attempt reuses the 4-tuple as soon as the last one timed out, its
/// first SYN dropped within milliseconds of the previous socket's death. Each is a
/// failure of its own, explained as the firewall's, none left unexplained.
#[test]
fn a_fixed_source_port_whose_syns_are_dropped_is_explained_every_time() {
    if !require_root() {
        return;
    }
    if !capability("drop_reasons") {
        eprintln!("skipped: no drop reasons on this kernel, no SYN drops to join");
        return;
    }
    let t = Topology::new();
    let p = 8314;
    t.server.nft_input(&format!("tcp dport {p} drop"));
    let mut agent = Agent::start(&["--port", &p.to_string()]);
    let n = 5;
    let client = Peer::spawn(
        &t.client,
        &[
            "connect",
            &format!("{}:{p}", t.server_ip),
            "--bind",
            &format!("{}:40777", t.client_ip),
            "--syncnt",
            "1",
            "--count",
            &n.to_string(),
        ],
    );
    assert_eq!(client.wait(60 * SEC), vec!["errno=110"; n]);
    let counted = |records: &[Value]| -> u64 {
        failures(records, p)
            .iter()
            .map(|v| v["count"].as_u64().unwrap_or(0))
            .sum()
    };
    // Bursts of one cause are counted in a line per 2 s window.
    wait_until("every attempt counted", 15 * SEC, || {
        counted(&agent.records()) >= n as u64
    });
    // Room for a failure too many (the unexplained close of an attempt whose SYNs were
    // taken for the previous one's).
    std::thread::sleep(3 * SEC);
    agent.stop();
    let records = agent.records();
    let all: Vec<Value> = records
        .iter()
        .filter(|v| s(v, "kind") == "failure")
        .cloned()
        .collect();
    assert_eq!(
        counted(&records),
        n as u64,
        "one failure per attempt:\n{}",
        dump(&all)
    );
    assert!(
        all.iter().all(|v| s(v, "cause") == "firewall_drop"),
        "{}",
        dump(&all)
    );
}

/// Namespaces that appear after the agent started (containers started during an
/// incident): their addresses and listeners are learnt in time to explain the first
/// failure in them.
#[test]
fn a_namespace_that_appears_after_the_agent_is_explained_like_the_others() {
    if !require_root() {
        return;
    }
    let p = 8309;
    let mut agent = Agent::start(&["--port", &p.to_string()]);
    let t = Topology::new();
    let mut lo = Peer::spawn(&t.server, &["listen", &format!("127.0.0.1:{p}")]);
    lo.wait_line(5 * SEC, |l| l == "ready");
    let client = Peer::spawn(&t.client, &["connect", &format!("{}:{p}", t.server_ip)]);
    let cpid = client.pid as u64;
    assert_eq!(client.wait(10 * SEC), vec!["errno=111"]);
    agent.wait_for("the refusal's explanation", 10 * SEC, |v| {
        s(v, "kind") == "failure" && port(s(v, "dst")) == p
    });
    agent.stop();
    let all = failures(&agent.records(), p);
    assert_eq!(all.len(), 1, "{}", dump(&all));
    let e = &all[0];
    assert_eq!(s(e, "cause"), "listener_other_address", "{e}");
    assert_eq!(pid_of(e, "process"), Some(cpid), "{e}");
    assert_eq!(pid_of(e, "culprit"), Some(lo.pid as u64), "{e}");
    assert_eq!(e["server_netns"], t.server.inode, "{e}");
}

/// The context records: a namespace's addresses, and the exit of a process that owned
/// a listener (what "service restarting" rests on), as `watch --events` prints them.
#[test]
fn context_records_give_namespace_addresses_and_listener_owners_exits() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut agent = Agent::start(&[]);
    let mut server = Peer::spawn(&t.server, &["listen", &format!("{}:8310", t.server_ip)]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let spid = server.pid as u64;
    drop(server); // SIGKILL: its listener closes as it exits.
    let exit = agent.wait_for("the listener owner's exit", 10 * SEC, |v| {
        s(v, "kind") == "process_exit" && owner_pid(v) == Some(spid)
    });
    assert!(exit.get("mono_ns").is_some(), "{exit}");
    let a = agent.wait_for("the server namespace's addresses", 10 * SEC, |v| {
        s(v, "kind") == "addresses" && v["netns"] == t.server.inode
    });
    let addrs: Vec<&str> = a["addrs"]
        .as_array()
        .expect("addrs")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(addrs.contains(&t.server_ip.as_str()), "{a}");
    agent.stop();
}

/// A socket whose owner the kernel hooks never saw (made before the agent, with the
/// start-up scan off so that only the on-demand lookup can find it): its SYN
/// retransmits carry no owner, and the owner is looked up in /proc while the socket
/// still exists, so that the timeout names the client.
#[test]
fn an_unknown_sockets_owner_is_looked_up_while_it_exists() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let p = 8311;
    t.server.nft_input(&format!("tcp dport {p} drop"));
    // 4 SYN retries: about 15 s of retransmits, most of them after the agent started.
    let client = Peer::spawn(
        &t.client,
        &["connect", &format!("{}:{p}", t.server_ip), "--syncnt", "4"],
    );
    let cpid = client.pid as u64;
    std::thread::sleep(Duration::from_millis(300));
    let mut agent = Agent::start_env(
        &["--port", &p.to_string()],
        &[("RSTRACE_NO_STARTUP_SOCKETS", "1")],
    );
    assert_eq!(client.wait(40 * SEC), vec!["errno=110"]);
    agent.wait_for("the timeout's explanation", 10 * SEC, |v| {
        s(v, "kind") == "failure" && port(s(v, "dst")) == p
    });
    agent.stop();
    let records = agent.records();
    let retransmits: Vec<&Value> = records
        .iter()
        .filter(|v| s(v, "kind") == "syn_retransmit" && port(s(v, "dst")) == p)
        .collect();
    assert!(!retransmits.is_empty(), "{}", dump(&records));
    // The kernel did not know it; once looked up, later events carry it from /proc.
    assert_eq!(
        owner_pid(retransmits[0]),
        None,
        "the kernel knew the owner after all: the test proves nothing\n{}",
        dump(&records)
    );
    for v in &retransmits[1..] {
        if owner_pid(v).is_some() {
            assert_eq!(owner_pid(v), Some(cpid), "{v}");
            assert_eq!(s(v, "owner_source"), "proc", "{v}");
        }
    }
    let found = records
        .iter()
        .find(|v| s(v, "kind") == "socket" && port(s(v, "dst")) == p)
        .unwrap_or_else(|| panic!("no socket record from a lookup:\n{}", dump(&records)));
    assert_eq!(owner_pid(found), Some(cpid), "{found}");
    let all = failures(&records, p);
    assert_eq!(all.len(), 1, "{}", dump(&all));
    assert_eq!(pid_of(&all[0], "process"), Some(cpid), "{}", all[0]);
}

/// The main scenarios over IPv6 between namespaces: a refusal, and a reset on a
/// connection made before the agent started, named on both ends.
#[test]
fn ipv6_refusals_and_resets_name_both_ends() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let (_, s6) = t.ipv6();
    let (refused, reset) = (8312u16, 8313u16);
    let mut server = Peer::spawn(
        &t.server,
        &["listen", &format!("[{s6}]:{reset}"), "--close-unread"],
    );
    server.wait_line(5 * SEC, |l| l == "ready");
    let go = std::env::temp_dir().join(format!("rstrace-go6-{}", std::process::id()));
    let _ = std::fs::remove_file(&go);
    let go_arg = go.to_string_lossy().into_owned();
    let mut early = Peer::spawn(
        &t.client,
        &[
            "connect",
            &format!("[{s6}]:{reset}"),
            "--after",
            &go_arg,
            "--send",
            "100",
            "--then",
            "read",
        ],
    );
    early.wait_line(10 * SEC, |l| l == "errno=0");
    let early_pid = early.pid as u64;
    let mut agent = Agent::start(&["--addr", &s6]);
    let client = Peer::spawn(&t.client, &["connect", &format!("[{s6}]:{refused}")]);
    let cpid = client.pid as u64;
    assert_eq!(client.wait(10 * SEC), vec!["errno=111"]);
    std::fs::write(&go, b"").unwrap();
    let lines = early.wait(20 * SEC);
    let _ = std::fs::remove_file(&go);
    assert_eq!(lines, vec!["errno=0", "failed errno=104"]);
    for p in [refused, reset] {
        agent.wait_for(&format!("the explanation for port {p}"), 10 * SEC, |v| {
            s(v, "kind") == "failure" && port(s(v, "dst")) == p
        });
    }
    agent.stop();
    let records = agent.records();
    let r = &failures(&records, refused)[0];
    // The server namespace listens on the other port.
    assert_eq!(s(r, "cause"), "wrong_port", "{r}");
    assert!(
        s(r, "explanation").contains(&format!("listens on port {reset}")),
        "{r}"
    );
    assert_eq!(pid_of(r, "process"), Some(cpid), "{r}");
    assert_eq!(r["server_netns"], t.server.inode, "{r}");
    assert!(s(r, "dst").starts_with(&format!("[{s6}]")), "{r}");
    let e = &failures(&records, reset)[0];
    let want = if capability("rst_sent_reason") {
        "reset_unread_data"
    } else {
        "reset_by_application"
    };
    assert_eq!(s(e, "cause"), want, "{e}");
    assert_eq!(pid_of(e, "process"), Some(early_pid), "{e}");
    assert_eq!(pid_of(e, "culprit"), Some(server.pid as u64), "{e}");
}
