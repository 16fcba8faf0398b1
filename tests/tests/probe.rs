//! `rstrace probe`: each runbook case made for real between namespaces (client,
//! router, server joined by veth), probed from the client's namespace. Each case
//! checks the verdict, the hop or rule or listener it names, the runbook's step and
//! the exit code, in JSON and in text, and that the probe ends within twice its
//! timeout.
#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]
use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    capability, require_root, rstrace_bin, s, time_scale, NetnsHosts, Peer, RoutedTopology,
};

const SEC: Duration = Duration::from_secs(1);
/// The probe's timeout in these tests (its default).
const TIMEOUT: Duration = Duration::from_secs(3);

struct Probe {
    json: Value,
    text: String,
    code: i32,
}

/// Runs `rstrace probe --netns NS TARGET` in JSON then in text; both must agree on
/// the exit code, and each must end within twice the timeout, start-up (loading the
/// programs, reading the namespaces) and exit included. The probe aims at its
/// timeout; the slack is for a loaded machine (CI saw 4.4 s for a 3 s probe), while
/// a probe that ignored its timeout would wait for the kernel's SYN retries, minutes.
fn probe(ns: &str, target: &str, extra: &[&str]) -> Probe {
    let run = |json: bool| {
        let started = Instant::now();
        let mut cmd = Command::new(rstrace_bin());
        cmd.args(["probe", "--netns", ns, target]).args(extra);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().expect("running rstrace probe");
        let took = started.elapsed();
        let bound = 2 * TIMEOUT * time_scale();
        assert!(
            took < bound,
            "probe {target} took {took:?} (bound {bound:?}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (out, took)
    };
    let (out, took) = run(true);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "probe --json printed no JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let code = out.status.code().expect("exit code");
    eprintln!("probe {target}: exit {code} in {took:?}\n{json:#}");
    let (tout, _) = run(false);
    let text = String::from_utf8_lossy(&tout.stdout).into_owned();
    eprintln!("{text}");
    assert_eq!(
        tout.status.code(),
        Some(code),
        "text and JSON exit codes differ"
    );
    assert_eq!(json["verdict"]["exit_code"], code, "{json:#}");
    Probe { json, text, code }
}

fn verdict(p: &Probe) -> &Value {
    &p.json["verdict"]
}

/// The verdict's status, cause, runbook step and exit code, in both forms.
fn assert_verdict(p: &Probe, status: &str, cause: Option<&str>, runbook: &str, code: i32) {
    let v = verdict(p);
    assert_eq!(p.code, code, "{:#}", p.json);
    assert_eq!(s(v, "status"), status, "{v:#}");
    assert_eq!(v["cause"].as_str(), cause, "{v:#}");
    assert_eq!(s(v, "runbook"), runbook, "{v:#}");
    let line = format!(
        "verdict: {status} (exit {code}){}",
        cause.map_or(String::new(), |c| format!(" [{c}]"))
    );
    assert!(p.text.contains(&line), "no {line:?} in:\n{}", p.text);
    assert!(
        p.text.contains(&format!("runbook: {runbook}\n")),
        "no runbook {runbook:?} in:\n{}",
        p.text
    );
}

fn details(p: &Probe) -> String {
    verdict(p)["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|x| x.as_str().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

fn commands(p: &Probe) -> String {
    verdict(p)["commands"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|x| x.as_str().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[test]
fn healthy_target_is_reachable() {
    if !require_root() {
        return;
    }
    let t = RoutedTopology::new();
    let mut server = Peer::spawn(&t.server, &["listen", "0.0.0.0:8200"]);
    server.wait_line(5 * SEC, |l| l == "ready");
    // Rules of the target's namespace (on this host) that match the port are listed
    // with their verdict, also when they let it through.
    t.server.nft_input("tcp dport 8200 accept");
    let p = probe(&t.client.name, &format!("{}:8200", t.server_ip), &[]);
    assert_verdict(&p, "reachable", None, "nothing to fix", 0);
    assert_eq!(s(&p.json["attempts"][0], "result"), "connected");
    let rule = &p.json["firewall"][0];
    assert_eq!(s(rule, "verdict"), "accept", "{:#}", p.json);
    assert_eq!(s(rule, "chain"), "input", "{rule:#}");
    assert!(s(rule, "netns").contains(&t.server.name), "{rule:#}");
    assert!(
        p.text.contains("tcp dport 8200 accept [accept]"),
        "{}",
        p.text
    );
    // The listener table names the server's process in the server's namespace.
    let l = &p.json["local"];
    assert_eq!(l["target_netns"], t.server.inode, "{l:#}");
    let listener = &l["listeners"][0];
    assert_eq!(listener["owner"]["pid"], server.pid, "{l:#}");
    assert_eq!(listener["accepts_target"], true, "{l:#}");
}

#[test]
fn nothing_listening_is_refused() {
    if !require_root() {
        return;
    }
    let t = RoutedTopology::new();
    let p = probe(&t.client.name, &format!("{}:8201", t.server_ip), &[]);
    assert_verdict(
        &p,
        "refused",
        Some("nothing_listening"),
        "restart the service",
        2,
    );
    // It looked, and says where: the probing namespace and the target's.
    let checked = p.json["firewall_checked"].to_string();
    assert!(
        checked.contains(&t.client.name) && checked.contains(&t.server.name),
        "{checked}"
    );
    assert!(
        p.text.contains("firewall: no rule for the port in netns"),
        "{}",
        p.text
    );
    assert!(
        s(verdict(&p), "explanation").contains("nothing listens on port 8201"),
        "{:#}",
        p.json
    );
    assert_eq!(s(&p.json["attempts"][0], "errno_name"), "ECONNREFUSED");
}

#[test]
fn listener_bound_to_loopback_needs_its_bind_address_fixed() {
    if !require_root() {
        return;
    }
    let t = RoutedTopology::new();
    let mut server = Peer::spawn(&t.server, &["listen", "127.0.0.1:8202"]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let p = probe(&t.client.name, &format!("{}:8202", t.server_ip), &[]);
    assert_verdict(
        &p,
        "refused",
        Some("listener_other_address"),
        "fix the bind address",
        2,
    );
    let listener = &p.json["local"]["listeners"][0];
    assert_eq!(s(listener, "addr"), "127.0.0.1:8202", "{listener:#}");
    assert_eq!(listener["owner"]["pid"], server.pid, "{listener:#}");
    assert_eq!(listener["accepts_target"], false, "{listener:#}");
    assert!(
        p.text.contains("127.0.0.1:8202") && p.text.contains(&format!("peer[{}]", server.pid)),
        "{}",
        p.text
    );
}

#[test]
fn drop_on_the_router_names_the_hop_where_the_trail_stops() {
    if !require_root() {
        return;
    }
    let t = RoutedTopology::new();
    let mut server = Peer::spawn(&t.server, &["listen", "0.0.0.0:8203"]);
    server.wait_line(5 * SEC, |l| l == "ready");
    t.router.nft_forward("tcp dport 8203 drop");
    let p = probe(&t.client.name, &format!("{}:8203", t.server_ip), &[]);
    // Without drop reasons (5.10) nothing says where the SYNs were dropped, so no
    // namespace's rules are blamed: the path is what to look at.
    let (cause, runbook) = if capability("drop_reasons") {
        ("firewall_drop", "open the port")
    } else {
        ("syn_unanswered", "find where the path drops the SYNs")
    };
    assert_verdict(&p, "timed out", Some(cause), runbook, 3);
    // The router answers TTL 1 and nothing answers beyond it.
    let path = &p.json["path"];
    assert_eq!(path["reached"], false, "{path:#}");
    assert_eq!(path["last_answer"]["ttl"], 1, "{path:#}");
    assert_eq!(s(&path["last_answer"], "addr"), t.router_ip, "{path:#}");
    assert_eq!(
        s(&path["last_answer"], "answer"),
        "time exceeded",
        "{path:#}"
    );
    let hop = format!("the trail stops after hop 1 ({}", t.router_ip);
    assert!(details(&p).contains(&hop), "{:#}", p.json);
    assert!(p.text.contains(&hop), "{}", p.text);
    if cause == "firewall_drop" {
        // The kernel saw the drop in the router's namespace: its rule is listed.
        let rule = p.json["firewall"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| s(r, "chain") == "forward" && s(r, "verdict") == "drop")
            .unwrap_or_else(|| panic!("no forward drop rule listed: {:#}", p.json));
        assert!(s(rule, "netns").contains(&t.router.name), "{rule:#}");
        assert!(
            commands(&p).contains(&format!(
                "ip netns exec {} nft delete rule inet rstrace_test forward handle",
                t.router.name
            )),
            "{:#}",
            p.json
        );
    }
}

#[test]
fn reject_rule_is_named_with_its_chain() {
    if !require_root() {
        return;
    }
    let t = RoutedTopology::new();
    let mut server = Peer::spawn(&t.server, &["listen", "0.0.0.0:8204"]);
    server.wait_line(5 * SEC, |l| l == "ready");
    t.server.nft_input("tcp dport 8204 reject with tcp reset");
    let p = probe(&t.client.name, &format!("{}:8204", t.server_ip), &[]);
    assert_verdict(&p, "refused", Some("firewall_reject"), "open the port", 2);
    let rule = p.json["firewall"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| s(r, "verdict") == "reject")
        .unwrap_or_else(|| panic!("no reject rule listed: {:#}", p.json));
    assert_eq!(s(rule, "chain"), "input", "{rule:#}");
    assert!(s(rule, "netns").contains(&t.server.name), "{rule:#}");
    assert!(
        s(rule, "rule").contains("tcp dport 8204 reject with tcp reset"),
        "{rule:#}"
    );
    assert!(
        commands(&p).contains(&format!(
            "ip netns exec {} nft delete rule inet rstrace_test input handle",
            t.server.name
        )),
        "{:#}",
        p.json
    );
    assert!(
        p.text
            .contains("tcp dport 8204 reject with tcp reset [reject]"),
        "{}",
        p.text
    );
}

#[test]
fn icmp_reject_on_the_router_names_the_router_and_its_rule() {
    if !require_root() {
        return;
    }
    let t = RoutedTopology::new();
    let mut server = Peer::spawn(&t.server, &["listen", "0.0.0.0:8209"]);
    server.wait_line(5 * SEC, |l| l == "ready");
    t.router
        .nft_forward("tcp dport 8209 reject with icmp type admin-prohibited");
    let p = probe(&t.client.name, &format!("{}:8209", t.server_ip), &[]);
    assert_eq!(p.code, 5, "{:#}", p.json);
    let icmp = &p.json["attempts"][0]["icmp"][0];
    assert_eq!(s(icmp, "from"), t.router_ip, "{:#}", p.json);
    assert_eq!(s(icmp, "name"), "administratively prohibited", "{icmp:#}");
    if !capability("drop_reasons") {
        tests::skip("without drop reasons an ICMP reject is not told from the path's");
        return;
    }
    assert_verdict(
        &p,
        "unreachable",
        Some("firewall_reject"),
        "open the port",
        5,
    );
    assert!(
        commands(&p).contains(&format!(
            "ip netns exec {} nft delete rule inet rstrace_test forward handle",
            t.router.name
        )),
        "{:#}",
        p.json
    );
    assert!(
        p.text
            .contains("reject with icmp admin-prohibited [reject]"),
        "{}",
        p.text
    );
}

#[test]
fn no_route_on_the_router_is_unreachable_and_names_the_router() {
    if !require_root() {
        return;
    }
    let t = RoutedTopology::new();
    let target = format!("{}:8205", t.unrouted_ip());
    let p = probe(&t.client.name, &target, &[]);
    assert_eq!(p.code, 5, "{:#}", p.json);
    assert_eq!(s(verdict(&p), "status"), "unreachable");
    if capability("errno") {
        // Without errno events (5.10) the kernel evidence may name the ICMP error
        // rather than the route.
        assert_eq!(s(verdict(&p), "runbook"), "fix the route", "{:#}", p.json);
        assert!(commands(&p).contains(&format!("ip route get {}", t.unrouted_ip())));
    }
    // The router's ICMP error, with the router as its sender.
    let icmp = &p.json["attempts"][0]["icmp"][0];
    assert_eq!(s(icmp, "from"), t.router_ip, "{:#}", p.json);
    assert_eq!(s(icmp, "name"), "network unreachable", "{icmp:#}");
    let line = format!("ICMP network unreachable from {}", t.router_ip);
    assert!(p.text.contains(&line), "{}", p.text);
}

#[test]
fn full_accept_queue_needs_the_backlog_scaled() {
    if !require_root() {
        return;
    }
    let t = RoutedTopology::new();
    let addr = format!("{}:8206", t.server_ip);
    let mut server = Peer::spawn(&t.server, &["listen", &addr, "--backlog", "1"]);
    server.wait_line(5 * SEC, |l| l == "ready");
    // Connections that fill the queue (never accepted) and stay open meanwhile.
    let _filler = Peer::spawn(
        &t.client,
        &[
            "connect", &addr, "--count", "3", "--hold", "30000", "--syncnt", "1",
        ],
    );
    std::thread::sleep(SEC);
    let p = probe(&t.client.name, &addr, &[]);
    assert_verdict(
        &p,
        "timed out",
        Some("accept_queue_overflow"),
        "scale the backlog",
        3,
    );
    let listener = &p.json["local"]["listeners"][0];
    assert_eq!(listener["owner"]["pid"], server.pid, "{listener:#}");
    assert!(
        listener["queue_depth"].as_u64() > listener["backlog"].as_u64(),
        "{listener:#}"
    );
}

#[test]
fn stale_hosts_entry_needs_the_record_fixed() {
    if !require_root() {
        return;
    }
    if !std::path::Path::new("/etc/hosts").exists() {
        tests::skip("no /etc/hosts to bind a namespace's hosts file over");
        return;
    }
    let t = RoutedTopology::new();
    let mut server = Peer::spawn(&t.server, &["listen", "0.0.0.0:8207"]);
    server.wait_line(5 * SEC, |l| l == "ready");
    // The service moved to the server's address; the client's hosts file still has
    // the old one.
    let ghost = t.ghost_ip();
    let _hosts = NetnsHosts::new(
        &t.client,
        &format!("127.0.0.1 localhost\n{ghost} svc.rstrace.test svc\n"),
    );
    let p = probe(&t.client.name, "svc.rstrace.test:8207", &[]);
    assert_verdict(&p, "timed out", Some("syn_unanswered"), "fix the record", 3);
    let answer = &p.json["resolution"]["answers"][0];
    assert_eq!(s(answer, "addr"), ghost, "{answer:#}");
    assert_eq!(s(answer, "source"), "hosts", "{answer:#}");
    assert_eq!(answer["hosts_line"], 2, "{answer:#}");
    let hosts = format!("/etc/netns/{}/hosts line 2", t.client.name);
    assert!(details(&p).contains(&hosts), "{:#}", p.json);
    assert!(p.text.contains(&hosts), "{}", p.text);
    // The router answered: the trail stops past it, at the vanished host.
    assert_eq!(s(&p.json["path"]["last_answer"], "addr"), t.router_ip);
}

#[test]
fn unresolvable_name_and_bad_input() {
    if !require_root() {
        return;
    }
    let t = RoutedTopology::new();
    let _hosts = NetnsHosts::new(&t.client, "127.0.0.1 localhost\n");
    let p = probe(&t.client.name, "no-such-host.invalid:80", &[]);
    assert_eq!(p.code, 4, "{:#}", p.json);
    assert_eq!(s(verdict(&p), "status"), "unresolvable");
    for (args, why) in [
        (vec!["probe", "nohost"], "expected HOST:PORT"),
        (
            vec!["probe", "--netns", "rstrace-no-such-ns", "127.0.0.1:1"],
            "ip netns list",
        ),
        (vec!["probe", "--timeout", "0", "127.0.0.1:1"], "--timeout"),
    ] {
        let out = Command::new(rstrace_bin()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // 1: a usage error (2 would read as "refused" to a health check).
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
}

#[test]
fn repeated_probes_are_summarised() {
    if !require_root() {
        return;
    }
    let t = RoutedTopology::new();
    let mut server = Peer::spawn(&t.server, &["listen", "0.0.0.0:8208"]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let target = format!("{}:8208", t.server_ip);
    let args = [
        "probe",
        "--netns",
        &t.client.name,
        &target,
        "--count",
        "3",
        "--interval",
        "0.2",
    ];
    let out = Command::new(rstrace_bin())
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(
        lines[..3].iter().all(|l| s(l, "kind") == "probe"),
        "{lines:#?}"
    );
    let summary = &lines[3];
    assert_eq!(s(summary, "kind"), "probe_summary", "{summary:#}");
    assert_eq!(
        (summary["runs"].as_u64(), summary["reachable"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(out.status.code(), Some(0));
    // One failing run of three makes the whole check fail, with its code.
    drop(server);
    let out = Command::new(rstrace_bin()).args(args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "{target}: 0/3 reachable, 3 refused (nothing_listening x3)"
        )),
        "{text}"
    );
}

/// Runs rstrace as nobody (no capabilities): its JSON report and exit code.
fn probe_as_nobody(target: &str) -> (Value, i32) {
    use std::os::unix::process::CommandExt as _;
    let out = Command::new(rstrace_bin())
        .args(["probe", "--json", target])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out.status.code().expect("exit code"))
}

#[test]
fn without_root_it_still_resolves_and_connects_and_says_what_it_missed() {
    if !require_root() {
        return;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = l.local_addr().unwrap().to_string();
    let (v, code) = probe_as_nobody(&target);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(s(&v["attempts"][0], "result"), "connected", "{v:#}");
    let missing = v["missing"].to_string();
    for what in ["kernel evidence", "firewall rules"] {
        assert!(missing.contains(what), "{what} not said missing: {v:#}");
    }
    // Closed: refused, and the listener table (readable without privileges in our
    // own namespace) still tells that nothing listens there.
    drop(l);
    let (v, code) = probe_as_nobody(&target);
    assert_eq!(code, 2, "{v:#}");
    assert_eq!(s(&v["verdict"], "cause"), "nothing_listening", "{v:#}");
    assert!(
        s(&v["verdict"], "explanation").contains("without kernel evidence"),
        "{v:#}"
    );
}
