//! One real-kernel scenario per explanation rule, between namespaces over veth: the
//! failure is created for real and the test asserts the cause id rstrace gives, the
//! process it names, the port, and that no other cause was given for that port.
#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]
use std::time::{Duration, Instant};

use serde_json::Value;
use tests::{
    capability, explain_json, failures, pid_of, port, require_root, s, time_scale, wait_until,
    Agent, Peer, Topology,
};

const SEC: Duration = Duration::from_secs(1);

/// Waits for the explanation of the failure on `p`, stops the agent (so that its
/// output is complete: late evidence has arrived or never will) and checks that every
/// explanation given for that port has the expected cause. Further waits on the
/// agent read what it printed before it stopped.
fn explained(agent: &mut Agent, p: u16, cause: &str, timeout: Duration) -> Value {
    let first = agent.wait_for(&format!("{cause} explanation for port {p}"), timeout, |v| {
        s(v, "kind") == "failure" && port(s(v, "dst")) == p
    });
    agent.stop();
    let all: Vec<Value> = agent
        .records()
        .into_iter()
        .filter(|v| s(v, "kind") == "failure" && port(s(v, "dst")) == p)
        .collect();
    let causes: Vec<&str> = all.iter().map(|v| s(v, "cause")).collect();
    assert!(
        causes.iter().all(|c| *c == cause),
        "expected only {cause} for port {p}, got {causes:?}:\n{}",
        all.iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(!s(&first, "fix").is_empty(), "no fix: {first}");
    first
}

fn addr(t: &Topology, p: u16) -> String {
    format!("{}:{p}", t.server_ip)
}

fn start(p: u16) -> Agent {
    Agent::start(&["--port", &p.to_string()])
}

#[test]
fn nothing_listening_is_explained_within_a_second() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut agent = start(8100);
    let client = Peer::spawn(&t.client, &["connect", &addr(&t, 8100)]);
    let cpid = client.pid as u64;
    assert_eq!(client.wait(10 * SEC), vec!["errno=111"]);
    let failed_at = Instant::now();
    let e = agent.wait_for("explanation", 5 * SEC, |v| s(v, "kind") == "failure");
    let latency = failed_at.elapsed();
    assert!(
        latency < SEC * time_scale(),
        "explained {latency:?} after the errno"
    );
    let e2 = explained(&mut agent, 8100, "nothing_listening", SEC);
    assert_eq!(e, e2);
    assert_eq!(pid_of(&e, "process"), Some(cpid), "{e}");
    assert_eq!(s(&e, "outcome"), "refused");
    assert_eq!(s(&e, "errno_name"), "ECONNREFUSED", "{e}");
    // Without errno events (5.10) the errno comes from how the socket died, and says so.
    assert_eq!(
        e.get("errno_inferred").is_some_and(|v| v == true),
        !capability("errno"),
        "{e}"
    );
    assert_eq!(e["server_netns"], t.server.inode);
    assert_eq!(e["netns"], t.client.inode);
    assert!(
        s(&e, "explanation").starts_with(&format!(
            "peer[{cpid}] -> {} refused: nothing listens on port 8100",
            addr(&t, 8100)
        )),
        "{e}"
    );
    assert!(s(&e, "fix").contains("ss -tlnp 'sport = :8100'"), "{e}");
}

#[test]
fn listener_on_another_address() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut agent = start(8101);
    let mut server = Peer::spawn(&t.server, &["listen", "127.0.0.1:8101"]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let client = Peer::spawn(&t.client, &["connect", &addr(&t, 8101)]);
    let cpid = client.pid as u64;
    assert_eq!(client.wait(10 * SEC), vec!["errno=111"]);
    let e = explained(&mut agent, 8101, "listener_other_address", 5 * SEC);
    assert_eq!(pid_of(&e, "process"), Some(cpid));
    assert_eq!(pid_of(&e, "culprit"), Some(server.pid as u64), "{e}");
    assert!(s(&e, "explanation").contains("only on 127.0.0.1"), "{e}");
}

#[test]
fn listener_in_another_namespace() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut agent = start(8102);
    // The service runs in the client's namespace, not the server's.
    let mut other = Peer::spawn(&t.client, &["listen", "0.0.0.0:8102"]);
    other.wait_line(5 * SEC, |l| l == "ready");
    let client = Peer::spawn(&t.client, &["connect", &addr(&t, 8102)]);
    let cpid = client.pid as u64;
    assert_eq!(client.wait(10 * SEC), vec!["errno=111"]);
    let e = explained(&mut agent, 8102, "listener_other_netns", 5 * SEC);
    assert_eq!(pid_of(&e, "process"), Some(cpid));
    assert_eq!(pid_of(&e, "culprit"), Some(other.pid as u64), "{e}");
    assert!(
        s(&e, "explanation").contains(&format!("in netns {}", t.client.label())),
        "{e}"
    );
}

#[test]
fn wrong_port_lists_the_ports_that_listen() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut agent = start(8103);
    let mut server = Peer::spawn(&t.server, &["listen", &addr(&t, 8003)]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let client = Peer::spawn(&t.client, &["connect", &addr(&t, 8103)]);
    assert_eq!(client.wait(10 * SEC), vec!["errno=111"]);
    let e = explained(&mut agent, 8103, "wrong_port", 5 * SEC);
    assert!(s(&e, "explanation").contains("listens on port 8003"), "{e}");
}

#[test]
fn service_restart_names_the_process_that_exited() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut agent = start(8104);
    let mut server = Peer::spawn(&t.server, &["listen", &addr(&t, 8104)]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let spid = server.pid as u64;
    drop(server); // SIGKILL: the listener closes as the process exits.
    std::thread::sleep(Duration::from_millis(600) * time_scale());
    let client = Peer::spawn(&t.client, &["connect", &addr(&t, 8104)]);
    assert_eq!(client.wait(10 * SEC), vec!["errno=111"]);
    let e = explained(&mut agent, 8104, "service_restarting", 5 * SEC);
    assert_eq!(pid_of(&e, "culprit"), Some(spid), "{e}");
    assert!(
        s(&e, "explanation").contains(&format!("peer[{spid}] listened there until it exited")),
        "{e}"
    );
}

#[test]
fn firewall_drop_times_out() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    t.server.nft_input("tcp dport 8105 drop");
    let mut agent = start(8105);
    let client = Peer::spawn(&t.client, &["connect", &addr(&t, 8105), "--syncnt", "1"]);
    let cpid = client.pid as u64;
    assert_eq!(client.wait(15 * SEC), vec!["errno=110"]);
    // Without drop reasons (before 5.17) the firewall is not visible: SYNs unanswered.
    let want = if capability("drop_reasons") {
        "firewall_drop"
    } else {
        "syn_unanswered"
    };
    let e = explained(&mut agent, 8105, want, 2 * SEC);
    assert_eq!(pid_of(&e, "process"), Some(cpid));
    assert_eq!(s(&e, "outcome"), "timed out");
    if want == "firewall_drop" {
        assert_names_rule(&e, &t, "tcp dport 8105 drop", "drops SYNs to port 8105");
    }
}

/// The explanation names the rule of the server's namespace, read from its ruleset,
/// and the fix is the command that deletes it.
fn assert_names_rule(e: &Value, t: &Topology, rule: &str, does: &str) {
    let h = t.server.nft_handle(rule);
    let (ns, name) = (t.server.label(), &t.server.name);
    assert!(
        s(e, "explanation").contains(&format!(
            "the rule `{rule}` (table inet rstrace_test, chain input, handle {h}) in netns {ns} {does}"
        )),
        "{e}"
    );
    assert!(
        s(e, "fix").starts_with(&format!(
            "run: ip netns exec {name} nft delete rule inet rstrace_test input handle {h} "
        )),
        "{e}"
    );
}

#[test]
fn firewall_reject_with_reset_is_not_a_tcp_refusal() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut server = Peer::spawn(&t.server, &["listen", &addr(&t, 8106)]);
    server.wait_line(5 * SEC, |l| l == "ready");
    t.server.nft_input("tcp dport 8106 reject with tcp reset");
    let mut agent = start(8106);
    let client = Peer::spawn(&t.client, &["connect", &addr(&t, 8106)]);
    assert_eq!(client.wait(10 * SEC), vec!["errno=111"]);
    let e = explained(&mut agent, 8106, "firewall_reject", 5 * SEC);
    if capability("drop_reasons") {
        assert!(s(&e, "explanation").contains("forged TCP reset"), "{e}");
        // The rule and the server were there before the agent.
        assert_names_rule(
            &e,
            &t,
            "tcp dport 8106 reject with tcp reset",
            "rejects SYNs to port 8106",
        );
    } else {
        // Inferred from a refusal despite a listener.
        assert!(
            s(&e, "explanation").contains("yet the SYN was refused"),
            "{e}"
        );
    }
}

#[test]
fn firewall_reject_with_icmp() {
    if !require_root() {
        return;
    }
    // nft's default ICMP reject (port unreachable) refuses; host-unreachable fails.
    for (p, how, errno, name) in [
        (8107u16, "host-unreachable", 113, "EHOSTUNREACH"),
        (8121, "port-unreachable", 111, "ECONNREFUSED"),
    ] {
        let t = Topology::new();
        t.server
            .nft_input(&format!("tcp dport {p} reject with icmp type {how}"));
        let mut agent = start(p);
        let client = Peer::spawn(&t.client, &["connect", &addr(&t, p)]);
        let cpid = client.pid as u64;
        assert_eq!(client.wait(15 * SEC), vec![format!("errno={errno}")]);
        if !capability("drop_reasons") {
            tests::skip("without drop reasons an ICMP reject is not told from a refusal");
            return;
        }
        let e = explained(&mut agent, p, "firewall_reject", 5 * SEC);
        assert!(s(&e, "explanation").contains("ICMP"), "{e}");
        let h = t.server.nft_handle(&format!("tcp dport {p} reject"));
        assert!(
            s(&e, "fix").contains(&format!(
                "nft delete rule inet rstrace_test input handle {h}"
            )),
            "{e}"
        );
        assert_eq!(pid_of(&e, "process"), Some(cpid), "{e}");
        if capability("errno") {
            // The application's errno, not the soft error (0) reported before it.
            assert_eq!(s(&e, "errno_name"), name, "{e}");
        }
    }
}

#[test]
fn unanswered_syns_blame_the_path() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    // An address nobody has, with a neighbour entry so that ARP does not fail:
    // the SYNs leave and vanish (the server's veth ignores frames not for it).
    let ghost = t.host_ip(3);
    t.client.exec(&[
        "ip",
        "neigh",
        "add",
        &ghost,
        "lladdr",
        "02:00:00:00:00:03",
        "dev",
        "veth0",
        "nud",
        "permanent",
    ]);
    let mut agent = start(8108);
    let client = Peer::spawn(
        &t.client,
        &["connect", &format!("{ghost}:8108"), "--syncnt", "1"],
    );
    assert_eq!(client.wait(15 * SEC), vec!["errno=110"]);
    let e = explained(&mut agent, 8108, "syn_unanswered", 2 * SEC);
    let retransmits = e["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| s(r, "kind") == "syn_retransmit")
        .count();
    assert!(retransmits >= 1, "{e}");
    let want = format!("{} SYNs to {ghost}:8108 got no answer", retransmits + 1);
    assert!(s(&e, "explanation").contains(&want), "{e}");
}

#[test]
fn neighbour_never_answers() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let absent = t.host_ip(9);
    let mut agent = start(8109);
    let client = Peer::spawn(&t.client, &["connect", &format!("{absent}:8109")]);
    assert_eq!(client.wait(20 * SEC), vec!["errno=113"]);
    if !capability("drop_reasons") && !capability("errno") {
        // Nothing tells a neighbour failure from unanswered SYNs there.
        explained(&mut agent, 8109, "syn_unanswered", 2 * SEC);
        return;
    }
    let e = explained(&mut agent, 8109, "neighbour_unreachable", 2 * SEC);
    assert!(
        s(&e, "fix").contains(&format!("ip neigh show {absent}")),
        "{e}"
    );
}

#[test]
fn no_route_and_prohibit_route_fail_before_any_packet() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    t.client
        .exec(&["ip", "route", "add", "prohibit", "203.0.113.0/24"]);
    let mut agent = start(8110);
    let client = Peer::spawn(&t.client, &["connect", "198.51.100.1:8110"]);
    let cpid = client.pid as u64;
    assert_eq!(client.wait(5 * SEC), vec!["errno=101"]);
    let e = explained(&mut agent, 8110, "no_route", 2 * SEC);
    assert_eq!(pid_of(&e, "process"), Some(cpid));
    assert_eq!(e["netns"], t.client.inode);
    let ce = agent.wait_for("the connect_error record", SEC, |v| {
        s(v, "kind") == "connect_error" && port(s(v, "dst")) == 8110
    });
    assert_eq!(tests::owner_pid(&ce), Some(cpid), "{ce}");
    assert_eq!(ce["errno"], 101, "{ce}");
    let mut agent = start(8111);
    let client = Peer::spawn(&t.client, &["connect", "203.0.113.5:8111"]);
    assert_eq!(client.wait(5 * SEC), vec!["errno=13"]);
    explained(&mut agent, 8111, "connect_prohibited", 2 * SEC);
}

#[test]
fn accept_queue_overflow_explains_the_clients_timeouts() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut agent = start(8112);
    let mut server = Peer::spawn(&t.server, &["listen", &addr(&t, 8112), "--backlog", "1"]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let client = Peer::spawn(
        &t.client,
        &[
            "connect",
            &addr(&t, 8112),
            "--count",
            "6",
            "--hold",
            "6000",
            "--syncnt",
            "1",
        ],
    );
    let e = agent.wait_for("the overflow explained", 10 * SEC, |v| {
        s(v, "kind") == "failure" && s(v, "outcome") == "overflow" && port(s(v, "dst")) == 8112
    });
    assert_eq!(s(&e, "cause"), "accept_queue_overflow", "{e}");
    assert_eq!(pid_of(&e, "culprit"), Some(server.pid as u64), "{e}");
    let timeout = agent.wait_for("a client timeout explained", 10 * SEC, |v| {
        s(v, "kind") == "failure" && s(v, "outcome") == "timed out" && port(s(v, "dst")) == 8112
    });
    assert_eq!(s(&timeout, "cause"), "accept_queue_overflow", "{timeout}");
    assert_eq!(pid_of(&timeout, "process"), Some(client.pid as u64));
    explained(&mut agent, 8112, "accept_queue_overflow", SEC);
}

#[test]
fn close_with_unread_data_resets() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut agent = start(8113);
    let mut server = Peer::spawn(&t.server, &["listen", &addr(&t, 8113), "--close-unread"]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let client = Peer::spawn(
        &t.client,
        &[
            "connect",
            &addr(&t, 8113),
            "--send",
            "100",
            "--then",
            "read",
        ],
    );
    let cpid = client.pid as u64;
    assert_eq!(client.wait(10 * SEC), vec!["errno=0", "failed errno=104"]);
    // Before 6.10 the RST carries no reason: an application reset, but not which kind.
    let want = if capability("rst_sent_reason") {
        "reset_unread_data"
    } else {
        "reset_by_application"
    };
    let e = explained(&mut agent, 8113, want, 5 * SEC);
    assert_eq!(pid_of(&e, "culprit"), Some(server.pid as u64), "{e}");
    assert_eq!(pid_of(&e, "process"), Some(cpid), "{e}");
}

#[test]
fn linger_zero_resets() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut agent = start(8114);
    let mut server = Peer::spawn(&t.server, &["listen", &addr(&t, 8114), "--linger0"]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let client = Peer::spawn(&t.client, &["connect", &addr(&t, 8114), "--then", "read"]);
    let cpid = client.pid as u64;
    // The reset may even beat connect()'s return (slow emulated guests).
    let lines = client.wait(10 * SEC);
    assert!(
        lines == ["errno=0", "failed errno=104"] || lines == ["errno=104"],
        "{lines:?}"
    );
    let want = if capability("rst_sent_reason") {
        "reset_linger_zero"
    } else {
        "reset_by_application"
    };
    let e = explained(&mut agent, 8114, want, 5 * SEC);
    assert_eq!(pid_of(&e, "culprit"), Some(server.pid as u64), "{e}");
    assert_eq!(pid_of(&e, "process"), Some(cpid), "{e}");
}

/// An established connection whose path then silently dies: the server's link goes
/// down, so nothing on this host drops the packets for a reason it reports.
fn black_holed(t: &Topology, p: u16, then: &str) -> (Peer, Peer) {
    let mut server = Peer::spawn(&t.server, &["listen", &addr(t, p)]);
    server.wait_line(5 * SEC, |l| l == "ready");
    t.client.exec(&["sysctl", "-qw", "net.ipv4.tcp_retries2=2"]);
    let mut client = Peer::spawn(&t.client, &["connect", &addr(t, p), "--then", then]);
    client.wait_line(5 * SEC, |l| l == "errno=0");
    t.pin_server_neighbour();
    t.server.exec(&["ip", "link", "set", "veth1", "down"]);
    (server, client)
}

#[test]
fn firewall_dropping_an_established_flow() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut agent = start(8118);
    let mut server = Peer::spawn(&t.server, &["listen", &addr(&t, 8118)]);
    server.wait_line(5 * SEC, |l| l == "ready");
    t.client.exec(&["sysctl", "-qw", "net.ipv4.tcp_retries2=2"]);
    let mut client = Peer::spawn(&t.client, &["connect", &addr(&t, 8118), "--then", "write"]);
    client.wait_line(5 * SEC, |l| l == "errno=0");
    t.server.nft_input("tcp dport 8118 drop");
    assert_eq!(client.wait(30 * SEC), vec!["errno=0", "failed errno=110"]);
    if !capability("drop_reasons") {
        // The firewall is invisible there: a flow that stopped being answered.
        explained(&mut agent, 8118, "flow_timeout", 5 * SEC);
        return;
    }
    let e = explained(&mut agent, 8118, "firewall_drop", 5 * SEC);
    assert!(
        s(&e, "explanation").contains("established connection"),
        "{e}"
    );
    assert_names_rule(
        &e,
        &t,
        "tcp dport 8118 drop",
        "drops the packets of this established connection",
    );
}

#[test]
fn of_several_rules_dropping_the_port_the_one_that_acts_is_named() {
    if !require_root() {
        return;
    }
    if !capability("drop_reasons") {
        tests::skip("without drop reasons the firewall is not visible");
        return;
    }
    let t = Topology::new();
    t.server.nft_input("tcp dport 8122 drop");
    // A prerouting chain runs before the input one: its rule is the one that drops.
    t.server.exec(&["nft", "add chain inet rstrace_test pre { type filter hook prerouting priority -150; policy accept; }"]);
    t.server.exec(&[
        "nft",
        "add rule inet rstrace_test pre tcp dport { 22, 8122 } drop",
    ]);
    let input = t.server.nft_handle("tcp dport 8122 drop");
    let pre = t.server.nft_handle("tcp dport { 22, 8122 } drop");
    let mut agent = start(8122);
    let client = Peer::spawn(&t.client, &["connect", &addr(&t, 8122), "--syncnt", "1"]);
    assert_eq!(client.wait(15 * SEC), vec!["errno=110"]);
    let e = explained(&mut agent, 8122, "firewall_drop", 2 * SEC);
    let (ns, name) = (t.server.label(), &t.server.name);
    assert!(
        s(&e, "explanation").contains(&format!(
            "2 rules in netns {ns} match port 8122: `tcp dport {{ 22, 8122 }} drop` (table inet rstrace_test, chain pre, handle {pre}) [hook prerouting, priority -150], `tcp dport 8122 drop` (table inet rstrace_test, chain input, handle {input}) [hook input, priority 0]; the first in hook/priority order, `tcp dport {{ 22, 8122 }} drop`, runs first and drops SYNs to port 8122"
        )),
        "{e}"
    );
    assert!(
        s(&e, "fix").starts_with(&format!(
            "run: ip netns exec {name} nft delete rule inet rstrace_test pre handle {pre} (the one that acts)"
        )),
        "{e}"
    );
}

#[test]
fn established_flow_times_out_when_black_holed() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut agent = start(8115);
    let (_server, client) = black_holed(&t, 8115, "write");
    let cpid = client.pid as u64;
    assert_eq!(client.wait(30 * SEC), vec!["errno=0", "failed errno=110"]);
    let e = explained(&mut agent, 8115, "flow_timeout", 5 * SEC);
    assert_eq!(pid_of(&e, "process"), Some(cpid), "{e}");
}

#[test]
fn keepalive_finds_the_peer_gone() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut agent = start(8116);
    let (_server, client) = black_holed(&t, 8116, "keepalive");
    let cpid = client.pid as u64;
    assert_eq!(client.wait(30 * SEC), vec!["errno=0", "failed errno=110"]);
    let e = explained(&mut agent, 8116, "keepalive_timeout", 5 * SEC);
    assert_eq!(pid_of(&e, "process"), Some(cpid), "{e}");
}

#[test]
fn a_storm_of_refusals_collapses_into_a_count() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut agent = start(8117);
    let client = Peer::spawn(&t.client, &["connect", &addr(&t, 8117), "--count", "40"]);
    let results = client.wait(20 * SEC);
    assert_eq!(results.len(), 40);
    let summary = agent.wait_for("a collapsed summary", 5 * SEC, |v| {
        s(v, "kind") == "failure" && v.get("window_ms").is_some()
    });
    // Counted once the agent stopped: nothing more can come.
    agent.stop();
    let lines: Vec<Value> = agent
        .records()
        .into_iter()
        .filter(|v| s(v, "kind") == "failure")
        .collect();
    let total: u64 = lines.iter().map(|v| v["count"].as_u64().unwrap()).sum();
    assert_eq!(total, 40, "every refusal counted once: {lines:#?}");
    assert!(
        lines.len() <= 4,
        "a storm must stay readable, got {} lines",
        lines.len()
    );
    assert_eq!(s(&summary, "cause"), "nothing_listening");
}

#[test]
fn data_after_the_peer_closed_resets() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut agent = start(8119);
    let mut server = Peer::spawn(&t.server, &["listen", &addr(&t, 8119), "--close"]);
    server.wait_line(5 * SEC, |l| l == "ready");
    // The client keeps writing after the server closed: the server's kernel resets.
    let client = Peer::spawn(&t.client, &["connect", &addr(&t, 8119), "--then", "write"]);
    let cpid = client.pid as u64;
    let lines = client.wait(10 * SEC);
    assert_eq!(lines[0], "errno=0");
    assert!(
        lines[1] == "failed errno=104" || lines[1] == "failed errno=32",
        "{lines:?}"
    );
    // Depending on timing the closed socket is still FIN_WAIT (reset for data after
    // shutdown, by the server) or already TIME_WAIT (reset by the kernel for it).
    // Before 6.10 a TIME_WAIT socket's reset fires no event: only the client's side
    // shows, a reset by the peer.
    let e = agent.wait_for("the reset explained", 5 * SEC, |v| {
        s(v, "kind") == "failure" && port(s(v, "dst")) == 8119
    });
    let cause = s(&e, "cause");
    if capability("rst_sent_reason") {
        assert!(
            cause == "reset_after_shutdown" || cause == "reset_time_wait",
            "{e}"
        );
        explained(&mut agent, 8119, cause, SEC);
        if cause == "reset_after_shutdown" {
            assert_eq!(pid_of(&e, "culprit"), Some(server.pid as u64), "{e}");
        }
    } else {
        assert!(
            cause == "reset_by_peer" || cause == "reset_by_application",
            "{e}"
        );
        explained(&mut agent, 8119, cause, SEC);
    }
    assert_eq!(pid_of(&e, "process"), Some(cpid), "{e}");
}

#[test]
fn syn_queue_overflow_is_reported_for_the_namespace() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    // Half-open connections pile up: the client never answers the SYN-ACKs, and
    // without syncookies a full SYN queue drops new SYNs.
    t.server
        .exec(&["sysctl", "-qw", "net.ipv4.tcp_syncookies=0"]);
    t.client
        .nft_input("tcp flags & (syn | ack) == syn | ack drop");
    let agent = start(8120);
    let mut server = Peer::spawn(&t.server, &["listen", &addr(&t, 8120), "--backlog", "2"]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let _client = Peer::spawn(
        &t.client,
        &[
            "connect",
            &addr(&t, 8120),
            "--count",
            "12",
            "--hold",
            "4000",
        ],
    );
    let e = agent.wait_for("a SYN queue overflow", 10 * SEC * time_scale(), |v| {
        s(v, "kind") == "failure" && s(v, "cause") == "syn_queue_overflow"
    });
    assert_eq!(e["server_netns"], t.server.inode, "{e}");
    assert!(s(&e, "fix").contains("tcp_syncookies"), "{e}");
    // The listener retransmits the SYN-ACKs the client never answers: its own.
    let sa = agent.wait_for("a SYN-ACK retransmit", 10 * SEC * time_scale(), |v| {
        s(v, "kind") == "synack_retransmit" && port(s(v, "src")) == 8120
    });
    assert_eq!(tests::owner_pid(&sa), Some(server.pid as u64), "{sa}");
}

#[test]
fn an_established_flow_whose_next_hop_stops_answering() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let mut agent = start(8119);
    let mut server = Peer::spawn(&t.server, &["listen", &addr(&t, 8119)]);
    server.wait_line(5 * SEC, |l| l == "ready");
    // TCP gives up after ~13 s, well after the neighbour entry failed (~3 s): the
    // application then gets the neighbour's EHOSTUNREACH, not ETIMEDOUT.
    t.client.exec(&["sysctl", "-qw", "net.ipv4.tcp_retries2=5"]);
    let mut client = Peer::spawn(&t.client, &["connect", &addr(&t, 8119), "--then", "write"]);
    let cpid = client.pid as u64;
    client.wait_line(5 * SEC, |l| l == "errno=0");
    t.server.exec(&["ip", "link", "set", "veth1", "down"]);
    assert_eq!(client.wait(60 * SEC), vec!["errno=0", "failed errno=113"]);
    if !capability("drop_reasons") {
        tests::skip("without drop reasons the neighbour failure leaves no evidence");
        return;
    }
    let e = explained(&mut agent, 8119, "neighbour_unreachable", 5 * SEC);
    assert_eq!(pid_of(&e, "process"), Some(cpid), "{e}");
    assert_eq!(s(&e, "errno_name"), "EHOSTUNREACH", "{e}");
    assert!(s(&e, "explanation").contains("stopped answering"), "{e}");
}

/// A capture file for this test process (removed first if left over).
fn recording(name: &str) -> std::path::PathBuf {
    tests::scratch_file("explain", name)
}

/// Stops the agent and checks that its recording explains port `p` as it did live:
/// same causes, processes, culprits and sentences.
fn replay_matches_live(agent: &mut Agent, file: &std::path::Path, p: u16) {
    assert!(agent.stop().success());
    let key = |v: &Value| {
        (
            s(v, "cause").to_string(),
            pid_of(v, "process"),
            pid_of(v, "culprit"),
            s(v, "explanation").to_string(),
            v["count"].as_u64(),
        )
    };
    // Sorted: what is still pending at the end is explained in no set order.
    let mut live: Vec<_> = agent
        .records()
        .iter()
        .filter(|v| s(v, "kind") == "failure" && port(s(v, "dst")) == p)
        .map(key)
        .collect();
    let mut replay: Vec<_> = failures(&explain_json(&["--port", &p.to_string()], file), p)
        .iter()
        .map(key)
        .collect();
    live.sort();
    replay.sort();
    assert!(!live.is_empty());
    assert_eq!(replay, live, "replay differs from live");
}

/// A server killed with connections in its accept queue (it never accepts): every
/// queued client is reset, and the explanation names the server and the queue, not an
/// application's SO_LINGER 0 close. The server starts before the agent or after it.
fn listener_gone_with_queue(p: u16, server_first: bool, sig: i32, sig_name: &str) {
    let t = Topology::new();
    let file = recording(&format!("gone-{p}.rst"));
    let server_addr = addr(&t, p);
    let spawn_server = || {
        let mut server = Peer::spawn(&t.server, &["listen", &server_addr, "--backlog", "8"]);
        server.wait_line(5 * SEC, |l| l == "ready");
        server
    };
    let early = server_first.then(spawn_server);
    let mut agent = Agent::start(&["--port", &p.to_string(), "--record", file.to_str().unwrap()]);
    let server = early.unwrap_or_else(spawn_server);
    let client = Peer::spawn(
        &t.client,
        &["connect", &addr(&t, p), "--count", "3", "--hold", "20000"],
    );
    let cpid = client.pid as u64;
    // All three handshakes complete into the queue (nobody accepts).
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill takes no pointers; the pid is a child this test started.
    unsafe { libc::kill(server.pid as i32, sig) };
    let e = explained(&mut agent, p, "listener_closed_with_queue", 5 * SEC);
    assert_eq!(pid_of(&e, "process"), Some(cpid), "{e}");
    assert_eq!(pid_of(&e, "culprit"), Some(server.pid as u64), "{e}");
    assert_eq!(s(&e, "outcome"), "reset", "{e}");
    assert!(
        s(&e, "explanation").contains(&format!(
            "peer[{}] was killed by {sig_name} while 3 connections waited in the accept queue of {server_addr} (never accepted)",
            server.pid
        )),
        "{e}"
    );
    // The other two are counted into the first's burst.
    let counted = agent.wait_for("the burst's count", 5 * SEC, |v| {
        s(v, "kind") == "failure" && port(s(v, "dst")) == p && v["count"] == 2
    });
    assert_eq!(s(&counted, "cause"), "listener_closed_with_queue");
    replay_matches_live(&mut agent, &file, p);
    drop(client);
}

#[test]
fn a_server_killed_with_a_full_accept_queue_resets_the_queued_clients() {
    if !require_root() {
        return;
    }
    listener_gone_with_queue(8130, false, libc::SIGKILL, "SIGKILL");
}

#[test]
fn a_server_from_before_the_agent_terminated_with_queued_clients() {
    if !require_root() {
        return;
    }
    listener_gone_with_queue(8131, true, libc::SIGTERM, "SIGTERM");
}

/// An IPv4 client refused by an IPv6-only listener on the same port (`[::]` with
/// IPV6_V6ONLY), across veth; the listener started before the agent (its flag comes
/// from the start-up sock_diag read) or after it (read when its listen() is seen).
fn v6only_listener(p: u16, server_first: bool) {
    let t = Topology::new();
    let file = recording(&format!("family-v6only-{p}.rst"));
    let spawn_server = || {
        let mut server = Peer::spawn(&t.server, &["listen", &format!("[::]:{p}"), "--v6only"]);
        server.wait_line(5 * SEC, |l| l == "ready");
        server
    };
    let early = server_first.then(spawn_server);
    let mut agent = Agent::start(&["--port", &p.to_string(), "--record", file.to_str().unwrap()]);
    let server = early.unwrap_or_else(spawn_server);
    let client = Peer::spawn(&t.client, &["connect", &addr(&t, p)]);
    let cpid = client.pid as u64;
    assert_eq!(client.wait(10 * SEC), vec!["errno=111"]);
    let e = explained(&mut agent, p, "family_mismatch", 5 * SEC);
    assert_eq!(pid_of(&e, "process"), Some(cpid), "{e}");
    assert_eq!(pid_of(&e, "culprit"), Some(server.pid as u64), "{e}");
    assert!(
        s(&e, "explanation").contains(&format!(
            "peer[{}] listens on [::]:{p} only for IPv6 (IPV6_V6ONLY set), and the client connected over IPv4 to {}",
            server.pid, t.server_ip
        )),
        "{e}"
    );
    assert!(s(&e, "fix").contains("without IPV6_V6ONLY"), "{e}");
    replay_matches_live(&mut agent, &file, p);
}

#[test]
fn an_ipv4_client_of_a_v6only_listener_is_a_family_mismatch() {
    if !require_root() {
        return;
    }
    v6only_listener(8132, false);
}

#[test]
fn an_ipv4_client_of_a_v6only_listener_from_before_the_agent() {
    if !require_root() {
        return;
    }
    v6only_listener(8139, true);
}

/// The same with a listener on `::1` started before the agent (known from the
/// start-up snapshot), and a client of 127.0.0.1 in its namespace.
#[test]
fn an_ipv4_client_of_a_listener_on_ipv6_loopback_from_before_the_agent() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let p = 8133;
    let mut server = Peer::spawn(&t.server, &["listen", &format!("[::1]:{p}")]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let file = recording("family-loopback.rst");
    let mut agent = Agent::start(&["--port", &p.to_string(), "--record", file.to_str().unwrap()]);
    let client = Peer::spawn(&t.server, &["connect", &format!("127.0.0.1:{p}")]);
    let cpid = client.pid as u64;
    assert_eq!(client.wait(10 * SEC), vec!["errno=111"]);
    let e = explained(&mut agent, p, "family_mismatch", 5 * SEC);
    assert_eq!(pid_of(&e, "process"), Some(cpid), "{e}");
    assert_eq!(pid_of(&e, "culprit"), Some(server.pid as u64), "{e}");
    assert!(
        s(&e, "explanation").contains(&format!(
            "listens on [::1]:{p} on an IPv6 address only, and the client connected over IPv4 to 127.0.0.1"
        )),
        "{e}"
    );
    assert!(
        s(&e, "fix").contains(&format!("connect over IPv6 (to [::1]:{p})")),
        "{e}"
    );
    replay_matches_live(&mut agent, &file, p);
}

/// Narrows the client namespace's ephemeral ports to four (40000-40003).
fn four_ports(t: &Topology) {
    t.client
        .exec(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40003"]);
}

/// A client whose four ephemeral ports towards the server are all held by open
/// connections (the server, started before the agent, never accepts them): its next
/// connect() fails with EADDRNOTAVAIL before sending anything, and the explanation
/// names it, the destination, the range and the sockets holding it.
#[test]
fn connects_without_a_free_local_port_are_port_exhaustion() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    four_ports(&t);
    let p = 8134;
    let mut server = Peer::spawn(&t.server, &["listen", &addr(&t, p)]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let file = recording("ports-established.rst");
    let mut agent = Agent::start(&["--port", &p.to_string(), "--record", file.to_str().unwrap()]);
    let mut holder = Peer::spawn(
        &t.client,
        &["connect", &addr(&t, p), "--count", "4", "--hold", "20000"],
    );
    for _ in 0..4 {
        holder.wait_line(5 * SEC, |l| l == "errno=115");
    }
    // The four handshakes complete (the sockets are then ESTABLISHED).
    std::thread::sleep(Duration::from_millis(300));
    let client = Peer::spawn(&t.client, &["connect", &addr(&t, p), "--count", "2"]);
    let cpid = client.pid as u64;
    assert_eq!(client.wait(10 * SEC), vec!["errno=99", "errno=99"]);
    let e = explained(&mut agent, p, "local_ports_exhausted", 5 * SEC);
    assert_eq!(pid_of(&e, "process"), Some(cpid), "{e}");
    assert_eq!(s(&e, "errno_name"), "EADDRNOTAVAIL", "{e}");
    assert!(
        e.get("errno_inferred").is_none(),
        "the errno is the kernel's: {e}"
    );
    assert_eq!(e["netns"], t.client.inode);
    assert_eq!(
        s(&e, "explanation"),
        format!(
            "peer[{cpid}] -> {0} failed: no free local port for a connection to {0} in netns {1} (connect() failed with EADDRNOTAVAIL before sending anything): the ephemeral port range 40000-40003 (4 ports; net.ipv4.ip_local_port_range) is used up: 4 sockets hold ports towards {0}, 4 ESTABLISHED, 0 in TIME_WAIT, 0 in other states",
            addr(&t, p),
            t.client.label()
        ),
        "{e}"
    );
    assert!(s(&e, "fix").starts_with("reuse connections"), "{e}");
    replay_matches_live(&mut agent, &file, p);
}

/// The same with the ports held in TIME_WAIT (the client closed first; over veth,
/// unlike loopback, tcp_tw_reuse=2 does not reuse them), the server after the agent.
#[test]
fn connects_with_every_port_in_time_wait_are_port_exhaustion() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    four_ports(&t);
    let p = 8135;
    let file = recording("ports-time-wait.rst");
    let mut agent = Agent::start(&["--port", &p.to_string(), "--record", file.to_str().unwrap()]);
    // It closes each connection once the client's FIN arrives: the client, which
    // closed first, keeps the port in TIME_WAIT.
    let mut server = Peer::spawn(&t.server, &["listen", &addr(&t, p), "--close-unread"]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let first = Peer::spawn(&t.client, &["connect", &addr(&t, p), "--count", "4"]);
    assert_eq!(first.wait(10 * SEC), vec!["errno=0"; 4]);
    for _ in 0..4 {
        server.wait_line(5 * SEC, |l| l == "closed");
    }
    // No TIME_WAIT reuse, whatever the kernel's default, and the four ports in
    // TIME_WAIT (not on their way there) before the next connect: a slow guest once
    // connected at once.
    t.client.exec(&["sysctl", "-qw", "net.ipv4.tcp_tw_reuse=0"]);
    let port_hex = format!(":{p:04X} ");
    wait_until(
        "the client's four ports in TIME_WAIT",
        5 * SEC * time_scale(),
        || {
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &t.client.name, "cat", "/proc/net/tcp"])
                .output()
                .expect("ip netns exec");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            // Columns: sl local remote st ...; TIME_WAIT is 06.
            text.lines()
                .filter(|l| l.contains(&port_hex) && l.split_whitespace().nth(3) == Some("06"))
                .count()
                == 4
        },
    );
    let client = Peer::spawn(&t.client, &["connect", &addr(&t, p)]);
    let cpid = client.pid as u64;
    assert_eq!(client.wait(10 * SEC), vec!["errno=99"]);
    let e = explained(&mut agent, p, "local_ports_exhausted", 5 * SEC);
    assert_eq!(pid_of(&e, "process"), Some(cpid), "{e}");
    assert!(
        s(&e, "explanation").ends_with(&format!(
            "4 sockets hold ports towards {}, 0 ESTABLISHED, 4 in TIME_WAIT, 0 in other states",
            addr(&t, p)
        )),
        "{e}"
    );
    assert!(
        s(&e, "fix").starts_with(
            "let new connections reuse TIME_WAIT ports: sysctl -w net.ipv4.tcp_tw_reuse=1"
        ),
        "{e}"
    );
    replay_matches_live(&mut agent, &file, p);
}

/// A client that binds a fixed local port before connect(), while that port already
/// has a connection to the same server: EADDRNOTAVAIL too, but the 4-tuple is in use,
/// not the range (one explanation, not an unexplained death beside it).
#[test]
fn a_connect_from_a_bound_port_already_connected_there() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let p = 8136;
    let mut server = Peer::spawn(&t.server, &["listen", &addr(&t, p)]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let mut agent = start(p);
    let local = format!("{}:45000", t.client_ip);
    let mut holder = Peer::spawn(
        &t.client,
        &["connect", &addr(&t, p), "--bind", &local, "--hold", "20000"],
    );
    holder.wait_line(5 * SEC, |l| l == "errno=115");
    std::thread::sleep(Duration::from_millis(300));
    let client = Peer::spawn(&t.client, &["connect", &addr(&t, p), "--bind", &local]);
    let cpid = client.pid as u64;
    assert_eq!(client.wait(10 * SEC), vec!["errno=99"]);
    let e = explained(&mut agent, p, "local_address_in_use", 5 * SEC);
    assert_eq!(pid_of(&e, "process"), Some(cpid), "{e}");
    assert!(
        s(&e, "explanation").contains(&format!(
            "the socket was bound to {local} before connect(), and {local} already has a connection to {}",
            addr(&t, p)
        )),
        "{e}"
    );
}

/// The classic dual-stack case stays what it was: the client tries ::1 first (as
/// `localhost` resolves), the service listens on 127.0.0.1 only. The address is what
/// is wrong, not the family rule's IPv4-client case.
#[test]
fn an_ipv6_client_of_a_listener_on_ipv4_loopback_is_a_listener_on_another_address() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let p = 8137;
    let mut agent = start(p);
    let mut server = Peer::spawn(&t.server, &["listen", &format!("127.0.0.1:{p}")]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let client = Peer::spawn(&t.server, &["connect", &format!("[::1]:{p}")]);
    let cpid = client.pid as u64;
    assert_eq!(client.wait(10 * SEC), vec!["errno=111"]);
    let e = explained(&mut agent, p, "listener_other_address", 5 * SEC);
    assert_eq!(pid_of(&e, "process"), Some(cpid), "{e}");
    assert_eq!(pid_of(&e, "culprit"), Some(server.pid as u64), "{e}");
    assert!(
        s(&e, "explanation").contains(&format!(
            "listens on port {p} only on 127.0.0.1, not on ::1"
        )),
        "{e}"
    );
}

/// One of two SO_REUSEPORT listeners killed with connections in its own queue: those
/// are reset and blamed on it, the port is still served (no restart gap).
#[test]
fn one_of_two_reuseport_listeners_killed_with_its_queue() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let p = 8138;
    let mut agent = start(p);
    let spawn = || {
        let mut l = Peer::spawn(&t.server, &["listen", &addr(&t, p), "--reuseport"]);
        l.wait_line(5 * SEC, |l| l == "ready");
        l
    };
    let (victim, _other) = (spawn(), spawn());
    // Twelve connections spread over both queues by the reuseport hash (all twelve in
    // the other queue: 1 in 4096).
    let client = Peer::spawn(
        &t.client,
        &["connect", &addr(&t, p), "--count", "12", "--hold", "20000"],
    );
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill takes no pointers; the pid is a child this test started.
    unsafe { libc::kill(victim.pid as i32, libc::SIGKILL) };
    let e = explained(&mut agent, p, "listener_closed_with_queue", 5 * SEC);
    assert_eq!(pid_of(&e, "process"), Some(client.pid as u64), "{e}");
    assert_eq!(pid_of(&e, "culprit"), Some(victim.pid as u64), "{e}");
    assert!(
        s(&e, "explanation").ends_with(
            "other sockets still listen there (SO_REUSEPORT): only this one's queue was lost"
        ),
        "{e}"
    );
}
