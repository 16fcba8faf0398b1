//! Connection tracking on the real kernel, between namespaces over veth: packets
//! conntrack marks INVALID (here: the segments of a connection it never saw the
//! start of, with `nf_conntrack_tcp_loose=0`, the way a flow it has forgotten looks)
//! dropped by a `ct state invalid` rule (kube-proxy installs one); the explanation
//! names the rule and the namespace's conntrack counters, live and from a capture.
#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]
use std::{path::PathBuf, process::Command, time::Duration};

use tests::{
    capability, explain_json, failures, pid_of, port, require_root, s, Agent, Peer, Topology,
};

fn scratch(name: &str) -> PathBuf {
    tests::scratch_file("conntrack", name)
}

const SEC: Duration = Duration::from_secs(1);

/// A connection to port `p` established before conntrack tracked the server's
/// namespace; then `block` installs the rule for INVALID packets there (which starts
/// conntrack), strict about mid-stream pick-up, and a recording agent starts. The
/// client then writes until its connection times out: returns the agent, the
/// client's pid and its lines.
fn forgotten_flow(
    t: &Topology,
    p: u16,
    file: &std::path::Path,
    block: impl FnOnce(),
) -> (Agent, u64, Vec<String>) {
    let mut server = Peer::spawn(&t.server, &["listen", &format!("{}:{p}", t.server_ip)]);
    server.wait_line(5 * SEC, |l| l == "ready");
    t.client
        .exec(&["sh", "-c", "echo 2 > /proc/sys/net/ipv4/tcp_retries2"]);
    let go = scratch(&format!("go-{p}"));
    let go_arg = go.to_string_lossy().into_owned();
    let mut client = Peer::spawn(
        &t.client,
        &[
            "connect",
            &format!("{}:{p}", t.server_ip),
            "--after",
            &go_arg,
            "--then",
            "write",
        ],
    );
    client.wait_line(10 * SEC, |l| l == "errno=0");
    let cpid = client.pid as u64;
    block();
    // Through /proc rather than sysctl(8): the QEMU guests' busybox lacks options.
    t.server.exec(&[
        "sh",
        "-c",
        "echo 0 > /proc/sys/net/netfilter/nf_conntrack_tcp_loose",
    ]);
    // The server, its connection and the rule were there before the agent.
    let agent = Agent::start(&["--port", &p.to_string(), "--record", file.to_str().unwrap()]);
    std::fs::write(&go, b"").unwrap();
    let lines = client.wait(60 * SEC);
    let _ = std::fs::remove_file(&go);
    (agent, cpid, lines)
}

/// The counters the explanation quotes: `invalid N` with N at least 1.
fn invalid_counted(text: &str) -> bool {
    text.split("conntrack there counts invalid ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n >= 1)
}

/// Checks the explanation live, the `firewall_rule` record's counters, and that a
/// replay of the capture explains the same.
fn assert_conntrack_invalid(
    agent: &mut Agent,
    t: &Topology,
    p: u16,
    cpid: u64,
    file: &std::path::Path,
    rule: &str,
    delete: &str,
) {
    let first = agent.wait_for("the conntrack explanation", 10 * SEC, |v| {
        s(v, "kind") == "failure" && port(s(v, "dst")) == p
    });
    agent.stop();
    let records = agent.records();
    let all = failures(&records, p);
    assert!(
        all.iter().all(|v| s(v, "cause") == "conntrack_invalid"),
        "{all:#?}"
    );
    let e = &first;
    let (ns, label, name) = (t.server.inode, t.server.label(), &t.server.name);
    assert_eq!(pid_of(e, "process"), Some(cpid), "{e}");
    let text = s(e, "explanation");
    assert!(
        text.contains(&format!(
            "conntrack in netns {label} marked the packets of this established connection INVALID (it has no valid state for them), and the rule `{rule}` ("
        )),
        "{e}"
    );
    assert!(invalid_counted(text), "no invalid packets counted: {e}");
    assert!(
        s(e, "fix").ends_with(&format!(
            "or remove the rule: ip netns exec {name} {delete}"
        )),
        "{e}"
    );
    assert!(s(e, "fix").contains("nf_conntrack_tcp_be_liberal=1"), "{e}");
    let fw = records
        .iter()
        .find(|v| s(v, "kind") == "firewall_rule" && v["netns"] == ns)
        .unwrap_or_else(|| panic!("no firewall_rule record for netns {ns}: {records:#?}"));
    assert!(
        fw["conntrack"]["invalid"].as_u64().is_some_and(|n| n >= 1),
        "{fw}"
    );
    // Offline, from the capture: the same cause, rule and counters.
    let again = failures(&explain_json(&["--port", &p.to_string()], file), p);
    assert_eq!(
        again.first().map(|v| (s(v, "cause"), s(v, "explanation"))),
        Some(("conntrack_invalid", text)),
        "{again:#?}"
    );
}

#[test]
fn a_flow_conntrack_does_not_know_is_dropped_by_a_ct_state_invalid_rule() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let p = 8601;
    let file = scratch("nft.rst");
    let (mut agent, cpid, lines) = forgotten_flow(&t, p, &file, || {
        t.server.nft_input("ct state invalid drop");
    });
    assert_eq!(lines, vec!["errno=0", "failed errno=110"]);
    if !capability("drop_reasons") {
        // Without drop reasons netfilter's drops are invisible: a flow that stopped
        // being answered.
        let e = agent.wait_for("the flow's explanation", 10 * SEC, |v| {
            s(v, "kind") == "failure" && port(s(v, "dst")) == p
        });
        assert_eq!(s(&e, "cause"), "flow_timeout", "{e}");
        return;
    }
    let h = t.server.nft_handle("ct state invalid drop");
    assert_conntrack_invalid(
        &mut agent,
        &t,
        p,
        cpid,
        &file,
        "ct state invalid drop",
        &format!("nft delete rule inet rstrace_test input handle {h}"),
    );
}

#[test]
fn an_iptables_ctstate_invalid_rule_is_named_from_iptables_save() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let p = 8602;
    let file = scratch("iptables.rst");
    let rule = "-A INPUT -m conntrack --ctstate INVALID -j DROP";
    let (mut agent, cpid, lines) = forgotten_flow(&t, p, &file, || {
        t.server.exec(&[
            "iptables",
            "-A",
            "INPUT",
            "-m",
            "conntrack",
            "--ctstate",
            "INVALID",
            "-j",
            "DROP",
        ]);
    });
    assert_eq!(lines, vec!["errno=0", "failed errno=110"]);
    if !capability("drop_reasons") {
        let e = agent.wait_for("the flow's explanation", 10 * SEC, |v| {
            s(v, "kind") == "failure" && port(s(v, "dst")) == p
        });
        assert_eq!(s(&e, "cause"), "flow_timeout", "{e}");
        return;
    }
    assert_conntrack_invalid(
        &mut agent,
        &t,
        p,
        cpid,
        &file,
        rule,
        "iptables -t filter -D INPUT -m conntrack --ctstate INVALID -j DROP",
    );
}

#[test]
fn a_rule_for_the_port_beside_one_for_invalid_packets_is_the_firewalls() {
    if !require_root() {
        return;
    }
    if !capability("drop_reasons") {
        tests::skip("without drop reasons the firewall is not visible");
        return;
    }
    // A kube-proxy host: a rule for INVALID packets on every port; a new connection's
    // SYNs are dropped by the rule for their port, not by conntrack.
    let t = Topology::new();
    let p = 8603;
    t.server.nft_input("ct state invalid drop");
    t.server.nft_input(&format!("tcp dport {p} drop"));
    let h = t.server.nft_handle(&format!("tcp dport {p} drop"));
    let mut agent = Agent::start(&["--port", &p.to_string()]);
    let client = Peer::spawn(
        &t.client,
        &["connect", &format!("{}:{p}", t.server_ip), "--syncnt", "1"],
    );
    assert_eq!(client.wait(15 * SEC), vec!["errno=110"]);
    let e = agent.wait_for("the drop's explanation", 10 * SEC, |v| {
        s(v, "kind") == "failure" && port(s(v, "dst")) == p
    });
    agent.stop();
    let all = failures(&agent.records(), p);
    assert!(
        all.iter().all(|v| s(v, "cause") == "firewall_drop"),
        "{all:#?}"
    );
    assert!(
        s(&e, "explanation").contains(&format!(
            "the rule `tcp dport {p} drop` (table inet rstrace_test, chain input, handle {h}) in netns {} drops SYNs to port {p}",
            t.server.label()
        )),
        "{e}"
    );
}

/// The namespace's `invalid` counter (`conntrack -S`), summed over CPUs.
fn invalid_count(ns: &tests::Netns) -> u64 {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "cat",
            "/proc/net/stat/nf_conntrack",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let col = header
        .iter()
        .position(|h| *h == "invalid")
        .unwrap_or_else(|| panic!("no invalid column: {text}"));
    lines
        .filter_map(|l| l.split_whitespace().nth(col))
        .map(|v| u64::from_str_radix(v, 16).unwrap())
        .sum()
}

#[test]
fn a_flow_conntrack_forgot_behind_a_dnat_is_reset_by_the_router_and_only_counted_invalid() {
    if !require_root() {
        return;
    }
    // The kube-proxy intermittent reset, with no rule for INVALID packets: the router
    // DNATs its own address to the server; once conntrack forgets the idle flow (a
    // 2 s established timeout, no mid-stream pick-up), the client's next segment is
    // not NATed and the router's own TCP stack, where nothing listens, resets it.
    let t = tests::RoutedTopology::new();
    let p = 8604;
    let r = &t.router;
    r.exec(&["nft", "add table ip rstrace_nat"]);
    r.exec(&[
        "nft",
        "add chain ip rstrace_nat pre { type nat hook prerouting priority -100; }",
    ]);
    r.exec(&[
        "nft",
        &format!(
            "add rule ip rstrace_nat pre ip daddr {} tcp dport {p} dnat to {}:{p}",
            t.router_ip, t.server_ip
        ),
    ]);
    r.exec(&[
        "sh",
        "-c",
        "echo 0 > /proc/sys/net/netfilter/nf_conntrack_tcp_loose; \
         echo 2 > /proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established",
    ]);
    let mut server = Peer::spawn(&t.server, &["listen", &format!("0.0.0.0:{p}")]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let go = scratch(&format!("go-{p}"));
    let go_arg = go.to_string_lossy().into_owned();
    let mut client = Peer::spawn(
        &t.client,
        &[
            "connect",
            &format!("{}:{p}", t.router_ip),
            "--after",
            &go_arg,
            "--then",
            "write",
        ],
    );
    client.wait_line(10 * SEC, |l| l == "errno=0");
    let mut agent = Agent::start(&["--port", &p.to_string()]);
    // Past the conntrack entry's idle timeout.
    std::thread::sleep(4 * SEC);
    let before = invalid_count(r);
    std::fs::write(&go, b"").unwrap();
    let lines = client.wait(20 * SEC);
    let _ = std::fs::remove_file(&go);
    assert_eq!(lines, vec!["errno=0", "failed errno=104"]);
    let after = invalid_count(r);
    // The only trace of conntrack: its namespace-wide counter.
    assert!(after > before, "invalid {before} -> {after}");
    let e = agent.wait_for("the reset's explanation", 10 * SEC, |v| {
        s(v, "kind") == "failure" && port(s(v, "dst")) == p
    });
    agent.stop();
    let records = agent.records();
    if capability("rst_for_closed_port") {
        // The router's own stack answered: no socket there for the router's address.
        assert!(
            records.iter().any(|v| s(v, "kind") == "rst_sent"
                && v["netns"] == r.inode
                && s(v, "reason") == "NO_SOCKET"
                && s(v, "src") == format!("{}:{p}", t.router_ip)),
            "{records:#?}"
        );
    }
    // Not told apart (see the README's "Conntrack"): the reset as seen.
    assert_eq!(s(&e, "cause"), "reset_by_peer", "{e}");
    assert_eq!(s(&e, "errno_name"), "ECONNRESET", "{e}");
}
