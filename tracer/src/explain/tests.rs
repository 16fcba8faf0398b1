//! Rule logic on synthetic evidence (the real-kernel scenarios are in tests/).
use super::schedule::{MAX_STORIES, MS};
use super::testing::*;
use super::*;
use crate::base::record::{Kind, Record};
use crate::base::record::{Proc, Queue};
use crate::base::record::{QueueKind, TcpFlags, TcpState};

pub(crate) mod golden;

fn listen(e: &mut Engine, at_ms: u64, addr: &str, ns: u32, pid: u32, out: &mut Vec<Explanation>) {
    let mut r = rec(Kind::State, at_ms, addr, "0.0.0.0:0", ns);
    r.old_state = Some(TcpState::Close);
    r.new_state = Some(TcpState::Listen);
    r.owner = Some(Proc {
        pid,
        comm: "python3".into(),
        cgroup: None,
        workload: None,
    });
    e.push(r, out);
}

fn unlisten(e: &mut Engine, at_ms: u64, addr: &str, ns: u32, pid: u32, out: &mut Vec<Explanation>) {
    let mut r = rec(Kind::State, at_ms, addr, "0.0.0.0:0", ns);
    r.old_state = Some(TcpState::Listen);
    r.new_state = Some(TcpState::Close);
    r.owner = Some(Proc {
        pid,
        comm: "python3".into(),
        cgroup: None,
        workload: None,
    });
    e.push(r, out);
}

/// A refusal as the kernel shows it when both ends are here (6.10+).
fn refusal(e: &mut Engine, at_ms: u64, out: &mut Vec<Explanation>) {
    let mut rst = rec(Kind::RstSent, at_ms, S, C, SNS);
    rst.reason = Some("NO_SOCKET".into());
    e.push(rst, out);
    e.push(client_owned(rec(Kind::RstReceived, at_ms, C, S, CNS)), out);
    e.push(error(at_ms, libc::ECONNREFUSED), out);
}

#[test]
fn refusal_rules_by_listener_table() {
    let cases: Vec<(&str, Setup)> = vec![
        ("nothing_listening", Box::new(|e, o| refusal(e, 10, o))),
        (
            "listener_other_address",
            Box::new(|e, o| {
                listen(e, 1, "127.0.0.1:8080", SNS, 880, o);
                refusal(e, 10, o)
            }),
        ),
        (
            "listener_other_netns",
            Box::new(|e, o| {
                listen(e, 1, "0.0.0.0:8080", 300, 880, o);
                refusal(e, 10, o)
            }),
        ),
        (
            "wrong_port",
            Box::new(|e, o| {
                listen(e, 1, "0.0.0.0:8000", SNS, 880, o);
                refusal(e, 10, o)
            }),
        ),
        (
            "service_restarting",
            Box::new(|e, o| {
                listen(e, 1, "0.0.0.0:8080", SNS, 880, o);
                unlisten(e, 5, "0.0.0.0:8080", SNS, 880, o);
                refusal(e, 2_000, o)
            }),
        ),
    ];
    for (want, setup) in cases {
        let out = run(setup);
        assert_eq!(causes(&out), vec![want], "{:#?}", out);
        let x = &out[0];
        assert_eq!(x.process.as_ref().map(|p| p.pid), Some(4121), "{want}");
        assert_eq!(x.dst, Some(S.parse().unwrap()));
        assert_eq!(x.outcome, "refused");
        assert!(!x.errno_inferred, "the errno event was there");
        assert!(
            x.explanation
                .starts_with("curl[4121] -> 10.0.0.2:8080 refused: "),
            "{}",
            x.explanation
        );
        assert!(!x.fix.is_empty());
    }
}

#[test]
fn restart_names_the_exited_owner_and_time() {
    let out = run(|e, o| {
        listen(e, 1, "0.0.0.0:8080", SNS, 880, o);
        unlisten(e, 100, "0.0.0.0:8080", SNS, 880, o);
        let mut exit = Record::new(Kind::ProcessExit, 120 * MS, String::new());
        exit.owner = Some(Proc {
            pid: 880,
            comm: "python3".into(),
            cgroup: None,
            workload: None,
        });
        e.push(exit, o);
        refusal(e, 2_200, o);
    });
    assert_eq!(
        out[0].explanation,
        "curl[4121] -> 10.0.0.2:8080 refused: nothing listens on port 8080; python3[880] listened there until it exited 2.1 s ago (service restarting or down)"
    );
    assert_eq!(out[0].culprit.as_ref().map(|p| p.pid), Some(880));
}

#[test]
fn refusal_without_server_side_evidence_uses_addresses() {
    // 6.1: no RST event for a SYN to a closed port; only the client's side.
    let out = run(|e, o| {
        e.push(client_owned(rec(Kind::RstReceived, 10, C, S, CNS)), o);
        let mut st = client_owned(rec(Kind::State, 10, C, S, CNS));
        st.old_state = Some(TcpState::SynSent);
        st.new_state = Some(TcpState::Close);
        e.push(st, o);
        e.push(error(10, libc::ECONNREFUSED), o);
    });
    assert_eq!(causes(&out), vec!["nothing_listening"]);
    assert_eq!(out[0].server_netns, Some(SNS));
}

#[test]
fn remote_refusal_when_the_server_is_not_here() {
    let mut e = Engine::default();
    let mut out = Vec::new();
    e.push(
        client_owned(rec(Kind::RstReceived, 10, C, "192.0.2.9:80", CNS)),
        &mut out,
    );
    let mut err = client_owned(rec(Kind::Error, 10, C, "192.0.2.9:80", CNS));
    err.errno = Some(libc::ECONNREFUSED);
    e.push(err, &mut out);
    e.advance(100 * MS, &mut out);
    assert!(out.is_empty(), "waits once for namespace addresses");
    assert!(e.take_context_request());
    e.advance(1_000 * MS, &mut out);
    assert_eq!(causes(&out), vec!["refused_by_remote"]);
}

/// A SYN to 8080 dropped by netfilter, and the rule of the server's namespace that
/// drops it (`tcp dport 8080 drop`, table inet filter, chain input, handle 4).
fn dropped_by_input_rule(e: &mut Engine, out: &mut Vec<Explanation>) {
    e.push(drop_syn(0, "NETFILTER_DROP"), out);
    e.push(
        fw_rules(
            20,
            &[(
                "input",
                Some("input"),
                Some(0),
                4,
                "tcp dport 8080 drop",
                "drop",
            )],
        ),
        out,
    );
}

/// A `firewall_rule` record: the rules of the server's namespace blocking 8080.
/// (chain, hook, priority, handle, rule text, verdict)
type FwRule<'a> = (&'a str, Option<&'a str>, Option<i32>, u64, &'a str, &'a str);

fn fw_rules(at_ms: u64, rules: &[FwRule]) -> Record {
    let mut r = Record::new(Kind::FirewallRule, at_ms * MS, String::new());
    r.netns = Some(SNS);
    r.dst = Some(S.parse().unwrap());
    r.rules = Some(
        rules
            .iter()
            .map(|&(chain, hook, priority, handle, rule, verdict)| {
                crate::base::record::FirewallRule {
                    source: "nft".into(),
                    family: "inet".into(),
                    table: "filter".into(),
                    chain: chain.into(),
                    hook: hook.map(Into::into),
                    priority,
                    handle: Some(handle),
                    rule: rule.into(),
                    verdict: verdict.into(),
                }
            })
            .collect(),
    );
    r
}

#[test]
fn firewall_drop_waits_for_the_local_clients_timeout() {
    let mut e = Engine::default();
    let mut out = Vec::new();
    addresses(&mut e, &mut out);
    e.push(drop_syn(0, "NETFILTER_DROP"), &mut out);
    e.push(syn_retransmit(1_000), &mut out);
    e.push(drop_syn(1_000, "NETFILTER_DROP"), &mut out);
    e.advance(2_900 * MS, &mut out);
    assert!(out.is_empty(), "explained before the errno: {out:#?}");
    e.push(error(3_000, libc::ETIMEDOUT), &mut out);
    // The rules were never read (a capture of an older version): the story waits for
    // them once, then says what it can.
    e.advance(3_100 * MS, &mut out);
    assert!(out.is_empty(), "did not wait for the rules: {out:#?}");
    e.advance(4_100 * MS, &mut out);
    assert_eq!(causes(&out), vec!["firewall_drop"]);
    assert_eq!(out[0].outcome, "timed out");
    assert!(
        out[0].explanation.contains(
            "a firewall rule in netns 200 drops SYNs to port 8080 (2 dropped at nf_hook_slow"
        ),
        "{}",
        out[0].explanation
    );
    assert!(out[0].fix.contains("nft list ruleset"), "{}", out[0].fix);
}

#[test]
fn a_firewall_drop_names_the_rule_read_from_the_namespace() {
    let mut e = Engine::default();
    let mut out = Vec::new();
    addresses(&mut e, &mut out);
    dropped_by_input_rule(&mut e, &mut out);
    e.push(error(3_000, libc::ETIMEDOUT), &mut out);
    e.advance(3_100 * MS, &mut out);
    assert_eq!(causes(&out), vec!["firewall_drop"]);
    assert!(
        out[0].explanation.contains(
            "the rule `tcp dport 8080 drop` (table inet filter, chain input, handle 4) in netns 200 drops SYNs to port 8080 (1 dropped at nf_hook_slow"
        ),
        "{}",
        out[0].explanation
    );
    assert_eq!(
        out[0].fix,
        "run in netns 200: nft delete rule inet filter input handle 4 (or let the port through \
         before it: nft insert rule inet filter input handle 4 tcp dport 8080 accept)"
    );
}

/// Namespaces with an `ip netns` name are named with it, and the fix runs the
/// commands there through `ip netns exec`; a refusal's JSON carries the names.
#[test]
fn named_namespaces_are_named_and_their_fixes_use_ip_netns_exec() {
    let named = |e: &mut Engine, out: &mut Vec<Explanation>| {
        for (ns, a, name) in [
            (CNS, "10.0.0.1", "client-ns"),
            (SNS, "10.0.0.2", "server-ns"),
        ] {
            let mut r = Record::new(Kind::Addresses, 0, String::new());
            r.netns = Some(ns);
            r.addrs = Some(vec![a.parse().unwrap()]);
            r.netns_name = Some(name.into());
            e.push(r, out);
        }
    };
    let mut e = Engine::default();
    let mut out = Vec::new();
    named(&mut e, &mut out);
    dropped_by_input_rule(&mut e, &mut out);
    e.push(error(3_000, libc::ETIMEDOUT), &mut out);
    e.advance(3_100 * MS, &mut out);
    assert_eq!(causes(&out), vec!["firewall_drop"]);
    assert!(
        out[0]
            .explanation
            .contains("handle 4) in netns server-ns (200) drops SYNs to port 8080"),
        "{}",
        out[0].explanation
    );
    assert_eq!(
        out[0].fix,
        "run: ip netns exec server-ns nft delete rule inet filter input handle 4 (or let the \
         port through before it: ip netns exec server-ns nft insert rule inet filter input \
         handle 4 tcp dport 8080 accept)"
    );
    let out = run(|e, o| {
        named(e, o);
        for r in refused(0) {
            e.push(r, o);
        }
    });
    assert_eq!(causes(&out), vec!["nothing_listening"]);
    assert!(
        out[0]
            .explanation
            .contains("nothing listens on port 8080 in netns server-ns (200)"),
        "{}",
        out[0].explanation
    );
    assert!(
        out[0]
            .fix
            .ends_with("check: ip netns exec server-ns ss -tlnp 'sport = :8080'"),
        "{}",
        out[0].fix
    );
    assert_eq!(
        (
            out[0].netns_name.as_deref(),
            out[0].server_netns_name.as_deref()
        ),
        (Some("client-ns"), Some("server-ns"))
    );
    // A namespace whose name went away is named by its inode again.
    let out = run(|e, o| {
        named(e, o);
        addresses(e, o);
        for r in refused(0) {
            e.push(r, o);
        }
    });
    assert!(
        out[0].explanation.contains("on port 8080 in netns 200 ("),
        "{}",
        out[0].explanation
    );
}

#[test]
fn a_failed_read_of_the_rules_does_not_hide_the_rule_found_before() {
    let mut e = Engine::default();
    let mut out = Vec::new();
    addresses(&mut e, &mut out);
    dropped_by_input_rule(&mut e, &mut out);
    let mut failed = fw_rules(2_000, &[]);
    failed.reason = Some("nftables rules in netns 200: opening /proc/1/ns/net".into());
    e.push(failed, &mut out);
    e.push(error(3_000, libc::ETIMEDOUT), &mut out);
    e.advance(3_100 * MS, &mut out);
    assert_eq!(causes(&out), vec!["firewall_drop"]);
    assert!(
        out[0]
            .explanation
            .contains("the rule `tcp dport 8080 drop`"),
        "{}",
        out[0].explanation
    );
}

#[test]
fn of_several_matching_rules_the_first_in_hook_order_acts_or_it_cannot_be_told() {
    let explain = |rules: &[FwRule]| {
        let mut e = Engine::default();
        let mut out = Vec::new();
        addresses(&mut e, &mut out);
        e.push(drop_syn(0, "NETFILTER_DROP"), &mut out);
        e.push(fw_rules(20, rules), &mut out);
        e.push(error(3_000, libc::ETIMEDOUT), &mut out);
        e.advance(3_100 * MS, &mut out);
        assert_eq!(causes(&out), vec!["firewall_drop"]);
        out.remove(0)
    };
    let x = explain(&[
        (
            "pre",
            Some("prerouting"),
            Some(-150),
            7,
            "tcp dport 8080 drop",
            "drop",
        ),
        (
            "input",
            Some("input"),
            Some(0),
            4,
            "tcp dport { 22, 8080 } drop",
            "drop",
        ),
        (
            "input",
            Some("input"),
            Some(0),
            5,
            "tcp dport 8080 reject",
            "reject",
        ),
    ]);
    assert!(
        x.explanation.contains(
            "2 rules in netns 200 match port 8080: `tcp dport 8080 drop` (table inet filter, chain pre, handle 7) [hook prerouting, priority -150], `tcp dport { 22, 8080 } drop` (table inet filter, chain input, handle 4) [hook input, priority 0]; the first in hook/priority order, `tcp dport 8080 drop`, runs first and drops SYNs"
        ),
        "{}",
        x.explanation
    );
    assert!(
        x.fix.starts_with("run in netns 200: nft delete rule inet filter pre handle 7 (the one that acts), then the others that would block the port too: nft delete rule inet filter input handle 4"),
        "{}",
        x.fix
    );
    // Two chains at one hook and priority: netfilter's order is not shown.
    let x = explain(&[
        (
            "a",
            Some("input"),
            Some(0),
            4,
            "tcp dport 8080 drop",
            "drop",
        ),
        (
            "b",
            Some("input"),
            Some(0),
            9,
            "tcp dport 8080 counter drop",
            "drop",
        ),
    ]);
    assert!(
        x.explanation.contains("which of them acts cannot be told"),
        "{}",
        x.explanation
    );
    assert!(
        x.fix
            .contains("handle 4; nft delete rule inet filter b handle 9"),
        "{}",
        x.fix
    );
}

#[test]
fn firewall_drop_with_a_remote_client_is_explained_from_the_server_side() {
    let out = run(|e, o| e.push(drop_syn(0, "NETFILTER_DROP"), o));
    assert_eq!(causes(&out), vec!["firewall_drop"]);
    assert_eq!(out[0].process, None);
}

#[test]
fn reject_with_reset_is_not_a_tcp_refusal() {
    let out = run(|e, o| {
        e.push(drop_syn(0, "NETFILTER_DROP"), o);
        e.push(client_owned(rec(Kind::RstReceived, 0, C, S, CNS)), o);
        e.push(error(0, libc::ECONNREFUSED), o);
    });
    assert_eq!(causes(&out), vec!["firewall_reject"]);
}

#[test]
fn unanswered_syns_blame_the_path_when_nothing_here_dropped_them() {
    let out = run(|e, o| {
        for t in [1_000, 3_000] {
            let mut r = syn_retransmit(t);
            r.dst = Some("192.0.2.9:443".parse().unwrap());
            e.push(r, o);
        }
        let mut err = error(7_000, libc::ETIMEDOUT);
        err.dst = Some("192.0.2.9:443".parse().unwrap());
        e.push(err, o);
    });
    assert_eq!(causes(&out), vec!["syn_unanswered"]);
    assert!(
        out[0].explanation.contains("3 SYNs"),
        "{}",
        out[0].explanation
    );
}

#[test]
fn an_established_flow_whose_next_hop_stopped_answering() {
    let out = run(|e, o| {
        let mut d = rec(Kind::Drop, 2_000, C, S, CNS);
        d.reason = Some("NEIGH_FAILED".into());
        d.tcp_flags = Some(TcpFlags::PSH | TcpFlags::ACK);
        e.push(d, o);
        let mut death = client_owned(rec(Kind::State, 3_000, C, S, CNS));
        death.old_state = Some(TcpState::Established);
        death.new_state = Some(TcpState::Close);
        e.push(death, o);
        e.push(error(3_000, libc::EHOSTUNREACH), o);
    });
    assert_eq!(causes(&out), vec!["neighbour_unreachable"], "{out:#?}");
    assert_eq!(out[0].errno_name, Some("EHOSTUNREACH"));
    assert_eq!(out[0].process.as_ref().map(|p| p.pid), Some(4121));
    assert!(
        out[0]
            .explanation
            .contains("10.0.0.2 (or the gateway towards it) stopped answering"),
        "{}",
        out[0].explanation
    );
}

#[test]
fn an_icmp_error_from_off_host_is_an_icmp_reject() {
    // A router or firewall elsewhere answered the SYN with ICMP: nothing on this host
    // dropped it, the client only saw soft errors, then the fatal one.
    for (errno, name) in [
        (libc::EHOSTUNREACH, "EHOSTUNREACH"),
        (libc::ECONNREFUSED, "ECONNREFUSED"),
    ] {
        let out = run(|e, o| {
            let mut r = syn_retransmit(1_000);
            r.dst = Some("192.0.2.9:8080".parse().unwrap());
            let mut soft = error(1, 0);
            soft.dst = r.dst;
            let mut fatal = error(1_001, errno);
            fatal.dst = r.dst;
            e.push(soft, o);
            e.push(r, o);
            e.push(fatal, o);
        });
        assert_eq!(causes(&out), vec!["icmp_reject"], "{out:#?}");
        assert_eq!(out[0].errno_name, Some(name));
        assert!(
            out[0]
                .explanation
                .contains(&format!("an ICMP error answered the SYN ({name})")),
            "{}",
            out[0].explanation
        );
    }
}

#[test]
fn an_icmp_reject_reports_the_final_errno_not_the_soft_error() {
    let out = run(|e, o| {
        let mut d = drop_syn(0, "NETFILTER_DROP");
        d.location = Some("nft_do_chain+0x3e8".into());
        e.push(d, o);
        e.push(error(1, 0), o);
        e.push(syn_retransmit(1_000), o);
        e.push(drop_syn(1_000, "NETFILTER_DROP"), o);
        e.push(error(1_001, 0), o);
        e.push(error(1_001, libc::ECONNREFUSED), o);
    });
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!(out[0].errno_name, Some("ECONNREFUSED"), "{out:#?}");
    assert_eq!(out[0].outcome, "refused");
}

#[test]
fn the_side_that_reset_is_the_culprit_never_the_process_that_failed() {
    // A client killed with unread data resets its connection; the server's socket
    // gets the RST and the errno. Its owner unknown (a socket from before the agent)
    // must not make the client the one that failed.
    let cli = |mut r: Record| {
        r.owner = Some(Proc {
            pid: 77,
            comm: "redis-cli".into(),
            cgroup: None,
            workload: None,
        });
        r
    };
    for server_owner_known in [false, true] {
        let srv = |mut r: Record| {
            if server_owner_known {
                r.owner = Some(Proc {
                    pid: 88,
                    comm: "redis-server".into(),
                    cgroup: None,
                    workload: None,
                });
            }
            r
        };
        let out = run(|e, o| {
            let mut rst = cli(rec(Kind::RstSent, 10, C, S, CNS));
            rst.reason = Some("TCP_ABORT_ON_CLOSE".into());
            rst.state = Some(TcpState::Close);
            e.push(rst, o);
            let mut gone = cli(rec(Kind::State, 10, C, S, CNS));
            gone.old_state = Some(TcpState::Established);
            gone.new_state = Some(TcpState::Close);
            e.push(gone, o);
            e.push(srv(rec(Kind::RstReceived, 10, S, C, SNS)), o);
            let mut died = srv(rec(Kind::State, 10, S, C, SNS));
            died.old_state = Some(TcpState::Established);
            died.new_state = Some(TcpState::Close);
            e.push(died, o);
            let mut err = srv(rec(Kind::Error, 10, S, C, SNS));
            err.errno = Some(libc::ECONNRESET);
            e.push(err, o);
        });
        assert_eq!(causes(&out), vec!["reset_unread_data"], "{out:#?}");
        let x = &out[0];
        assert_eq!(x.culprit.as_ref().map(|p| p.pid), Some(77), "{x:#?}");
        assert_eq!(
            x.process.as_ref().map(|p| p.pid),
            server_owner_known.then_some(88),
            "{x:#?}"
        );
        assert_eq!(x.src, Some(S.parse().unwrap()), "the failing end first");
        assert!(!x.explanation.starts_with("redis-cli"), "{}", x.explanation);
    }
}

#[test]
fn application_resets_by_reason() {
    for (reason, want) in [
        ("TCP_ABORT_ON_CLOSE", "reset_unread_data"),
        ("TCP_STATE", "reset_linger_zero"),
        ("TCP_ABORT_ON_DATA", "reset_after_shutdown"),
        ("TCP_TIMEWAIT_SOCKET", "reset_time_wait"),
        ("TCP_KEEPALIVE_TIMEOUT", "keepalive_timeout"),
    ] {
        let out = run(|e, o| {
            let mut rst = rec(Kind::RstSent, 10, S, C, SNS);
            rst.reason = Some(reason.into());
            rst.state = Some(TcpState::Established);
            rst.owner = Some(Proc {
                pid: 880,
                comm: "python3".into(),
                cgroup: None,
                workload: None,
            });
            e.push(rst, o);
            e.push(client_owned(rec(Kind::RstReceived, 10, C, S, CNS)), o);
            e.push(error(10, libc::ECONNRESET), o);
        });
        assert_eq!(causes(&out), vec![want], "{reason}");
        if want != "keepalive_timeout" {
            assert_eq!(
                out[0].culprit.as_ref().map(|p| p.pid),
                Some(880),
                "{reason}"
            );
        }
        assert_eq!(out[0].process.as_ref().map(|p| p.pid), Some(4121));
    }
}

#[test]
fn an_accept_overflow_without_its_listener_names_the_candidates_not_port_0() {
    let out = run(|e, o| {
        listen(e, 1, "10.0.0.2:8080", SNS, 880, o);
        listen(e, 2, "0.0.0.0:9090", SNS, 881, o);
        let mut ov = Record::new(Kind::Overflow, 500 * MS, String::new());
        ov.netns = Some(SNS);
        ov.queue_kind = Some(QueueKind::Accept);
        ov.drops = Some(7);
        e.push(ov, o);
    });
    assert_eq!(causes(&out), vec!["accept_queue_overflow"]);
    let x = &out[0];
    for want in [
        "7 connection attempts were dropped in netns 200",
        "10.0.0.2:8080 (python3[880])",
        "0.0.0.0:9090 (python3[881])",
    ] {
        assert!(x.explanation.contains(want), "{want}: {}", x.explanation);
    }
    assert!(
        !x.explanation.contains("unknown process"),
        "{}",
        x.explanation
    );
    assert!(!x.fix.contains(":0'"), "{}", x.fix);
}

#[test]
fn accept_overflow_explains_the_record_and_the_timeouts_it_causes() {
    let out = run(|e, o| {
        listen(e, 1, "10.0.0.2:8080", SNS, 880, o);
        let mut ov = Record::new(Kind::Overflow, 500 * MS, String::new());
        ov.netns = Some(SNS);
        ov.src = Some(S.parse().unwrap());
        ov.queue_kind = Some(QueueKind::Accept);
        ov.queue = Some(Queue {
            depth: 2,
            backlog: 1,
        });
        ov.drops = Some(3);
        ov.somaxconn = Some(4096);
        ov.owner = Some(Proc {
            pid: 880,
            comm: "python3".into(),
            cgroup: None,
            workload: None,
        });
        e.push(ov, o);
        e.push(syn_retransmit(1_000), o);
        e.push(error(3_000, libc::ETIMEDOUT), o);
    });
    assert_eq!(
        causes(&out),
        vec!["accept_queue_overflow", "accept_queue_overflow"]
    );
    assert_eq!(out[0].culprit.as_ref().map(|p| p.pid), Some(880));
    assert!(out[0].fix.contains("somaxconn = 4096"));
    assert_eq!(out[1].process.as_ref().map(|p| p.pid), Some(4121));
    assert!(
        out[1].explanation.contains("accept queue of python3[880]"),
        "{}",
        out[1].explanation
    );
}

#[test]
fn bursts_collapse_into_one_line_with_a_count() {
    let mut e = Engine::default();
    let mut out = Vec::new();
    addresses(&mut e, &mut out);
    for i in 0..50u64 {
        let port = 40000 + i as u16;
        let c = format!("10.0.0.1:{port}");
        let mut rst = rec(Kind::RstSent, 10 + i, S, &c, SNS);
        rst.reason = Some("NO_SOCKET".into());
        e.push(rst, &mut out);
        e.push(
            client_owned(rec(Kind::RstReceived, 10 + i, &c, S, CNS)),
            &mut out,
        );
        let mut err = client_owned(rec(Kind::Error, 10 + i, &c, S, CNS));
        err.errno = Some(libc::ECONNREFUSED);
        e.push(err, &mut out);
    }
    e.advance(100 * MS, &mut out);
    assert_eq!(out.len(), 1, "first failure at once");
    e.advance(5_000 * MS, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(out[1].count, 49);
    assert_eq!(out[1].window_ms, Some(2_000));
    assert!(out.iter().all(|x| x.cause == "nothing_listening"));
}

/// A refusal on one 4-tuple, as the kernel shows it when both ends are here: the
/// server's RST and SYN drop, the client's RST, death and errno.
fn refusal_on(e: &mut Engine, at_ms: u64, c: &str, out: &mut Vec<Explanation>) {
    let mut rst = rec(Kind::RstSent, at_ms, S, c, SNS);
    rst.reason = Some("NO_SOCKET".into());
    e.push(rst, out);
    let mut drop = rec(Kind::Drop, at_ms, c, S, SNS);
    drop.reason = Some("NO_SOCKET".into());
    drop.tcp_flags = Some(TcpFlags::SYN);
    e.push(drop, out);
    e.push(client_owned(rec(Kind::RstReceived, at_ms, c, S, CNS)), out);
    let mut death = client_owned(rec(Kind::State, at_ms, c, S, CNS));
    death.old_state = Some(TcpState::SynSent);
    death.new_state = Some(TcpState::Close);
    e.push(death, out);
    let mut err = client_owned(rec(Kind::Error, at_ms, c, S, CNS));
    err.errno = Some(libc::ECONNREFUSED);
    e.push(err, out);
}

fn total(out: &[Explanation]) -> u64 {
    out.iter().map(|x| x.count).sum()
}

#[test]
fn connections_reusing_a_four_tuple_are_each_counted() {
    // A storm cycles through the ephemeral ports: the same 4-tuple fails again while
    // its previous story is still open (1 ms apart) or just explained (400 ms apart).
    for gap_ms in [1u64, 400] {
        let mut e = Engine::default();
        let mut out = Vec::new();
        addresses(&mut e, &mut out);
        for i in 0..30u64 {
            let at = 10 + i * gap_ms;
            refusal_on(&mut e, at, C, &mut out);
            e.advance(at * MS, &mut out);
        }
        e.finish(&mut out);
        assert_eq!(total(&out), 30, "gap {gap_ms} ms: {out:#?}");
        assert!(
            out.iter().all(|x| x.cause == "nothing_listening"),
            "{out:#?}"
        );
        // Each story holds one connection's evidence.
        assert!(out.iter().all(|x| x.evidence.len() <= 5), "{out:#?}");
    }
}

#[test]
fn connect_errors_to_one_destination_are_each_counted() {
    let mut e = Engine::default();
    let mut out = Vec::new();
    addresses(&mut e, &mut out);
    for i in 0..20u64 {
        let mut r = client_owned(rec(Kind::ConnectError, 10 + i, "0.0.0.0:0", S, CNS));
        r.errno = Some(libc::ENETUNREACH);
        e.push(r, &mut out);
    }
    e.finish(&mut out);
    assert_eq!(total(&out), 20, "{out:#?}");
}

#[test]
fn late_evidence_of_an_explained_flow_is_absorbed_not_counted() {
    let mut e = Engine::default();
    let mut out = Vec::new();
    addresses(&mut e, &mut out);
    // The client's side first; the server's RST arrives after the explanation.
    e.push(
        client_owned(rec(Kind::RstReceived, 10, C, S, CNS)),
        &mut out,
    );
    e.push(error(10, libc::ECONNREFUSED), &mut out);
    e.advance(500 * MS, &mut out);
    assert_eq!(total(&out), 1);
    let mut rst = rec(Kind::RstSent, 10, S, C, SNS);
    rst.reason = Some("NO_SOCKET".into());
    e.push(rst, &mut out);
    e.finish(&mut out);
    assert_eq!(total(&out), 1, "{out:#?}");
}

#[test]
fn a_burst_ended_by_a_later_failure_still_reports_its_count() {
    // All three explained in one pass (a replay's end): the third, past the window,
    // opens a new burst, and the first burst's count must not be lost.
    let mut e = Engine::default();
    let mut out = Vec::new();
    addresses(&mut e, &mut out);
    for (i, at_ms) in [10u64, 20, 2_500].into_iter().enumerate() {
        let c = format!("10.0.0.1:{}", 40000 + i);
        let mut rst = rec(Kind::RstSent, at_ms, S, &c, SNS);
        rst.reason = Some("NO_SOCKET".into());
        e.push(rst, &mut out);
        let mut err = client_owned(rec(Kind::Error, at_ms, &c, S, CNS));
        err.errno = Some(libc::ECONNREFUSED);
        e.push(err, &mut out);
    }
    e.finish(&mut out);
    let counts: Vec<(u64, Option<u64>)> = out.iter().map(|x| (x.count, x.window_ms)).collect();
    assert_eq!(
        counts,
        vec![(1, None), (1, Some(2_000)), (1, None)],
        "{out:#?}"
    );
}

#[test]
fn unrelated_drops_explain_nothing_and_unknown_failures_are_honest() {
    let out = run(|e, o| {
        let mut d = drop_syn(0, "TCP_ZEROWINDOW");
        d.tcp_flags = Some(TcpFlags::ACK);
        e.push(d, o);
    });
    assert!(out.is_empty(), "{out:#?}");
    let out = run(|e, o| e.push(error(5, libc::EPROTO), o));
    assert_eq!(causes(&out), vec!["unexplained"]);
    assert!(
        out[0].explanation.contains("ERROR EPROTO"),
        "{}",
        out[0].explanation
    );
}

fn died(at_ms: u64, old: TcpState, task_pid: u32) -> Record {
    let mut st = client_owned(rec(Kind::State, at_ms, C, S, CNS));
    st.old_state = Some(old);
    st.new_state = Some(TcpState::Close);
    st.task = Some(Proc {
        pid: task_pid,
        comm: "x".into(),
        cgroup: None,
        workload: None,
    });
    st
}

#[test]
fn kernels_without_errno_events_are_explained_from_how_the_socket_died() {
    // 5.10: no inet_sk_error_report, no RST event for a closed port.
    let out = run(|e, o| {
        e.push(client_owned(rec(Kind::RstReceived, 10, C, S, CNS)), o);
        e.push(died(10, TcpState::SynSent, 4121), o);
    });
    assert_eq!(causes(&out), vec!["nothing_listening"]);
    assert_eq!(out[0].outcome, "refused");
    assert_eq!(out[0].errno_name, Some("ECONNREFUSED"));
    assert!(
        out[0].errno_inferred,
        "no errno event: the errno is inferred"
    );
    // Given up by the kernel's timer after retransmits: a timeout.
    let out = run(|e, o| {
        let mut d = died(3_000, TcpState::SynSent, 0);
        d.dst = Some("192.0.2.9:8080".parse().unwrap());
        let mut r = syn_retransmit(1_000);
        r.dst = d.dst;
        e.push(r, o);
        e.push(d, o);
    });
    assert_eq!(causes(&out), vec!["syn_unanswered"], "{out:#?}");
    assert_eq!(out[0].outcome, "timed out");
    assert_eq!(out[0].errno_name, Some("ETIMEDOUT"));
    // SYNs dropped on their way out are never retransmitted as far as the events
    // say: the kernel's timer still gave the connect up.
    let out = run(|e, o| {
        let mut d = died(7_000, TcpState::SynSent, 0);
        d.dst = Some("192.0.2.9:8080".parse().unwrap());
        e.push(d, o);
    });
    assert_eq!(causes(&out), vec!["syn_unanswered"], "{out:#?}");
    assert_eq!(out[0].errno_name, Some("ETIMEDOUT"));
    assert!(out[0].errno_inferred);
}

#[test]
fn a_connect_its_application_gave_up_is_explained_not_kept() {
    let mut e = Engine::default();
    let mut out = Vec::new();
    addresses(&mut e, &mut out);
    e.push(drop_syn(0, "NETFILTER_DROP"), &mut out);
    e.push(died(5, TcpState::SynSent, 4121), &mut out);
    e.advance(100 * MS, &mut out);
    assert!(
        out.is_empty(),
        "did not wait for the firewall's rules: {out:#?}"
    );
    // Once past the wait for the rules (never read here).
    e.advance(1_100 * MS, &mut out);
    assert_eq!(causes(&out), vec!["firewall_drop"]);
    assert_eq!(out[0].outcome, "blocked");
    assert_eq!(out[0].process.as_ref().map(|p| p.pid), Some(4121));
    assert!(!out[0].errno_inferred);
}

#[test]
fn connections_reusing_a_four_tuple_whose_syns_are_dropped_are_each_explained() {
    // A storm of non-blocking connects closed at once, their SYNs dropped by a rule:
    // the same 4-tuple comes back while the previous story waits for the rules (300 ms)
    // or just after it was explained (1.5 s). A dropped SYN fills no once-per-connection
    // slot, yet after its end's socket died it is the next connection's.
    // `late`: the SYN's drop recorded after its own socket's death (a deferred softirq).
    // 6 ms: the next SYN is dropped 1 ms after the previous socket died.
    for (gap_ms, late) in [
        (6u64, false),
        (300, false),
        (1_500, false),
        (6, true),
        (300, true),
        (1_500, true),
    ] {
        let mut e = Engine::default();
        let mut out = Vec::new();
        addresses(&mut e, &mut out);
        for i in 0..5u64 {
            let at = 10 + i * gap_ms;
            let (drop_at, death_at) = if late { (at + 2, at) } else { (at, at + 5) };
            let mut records = [
                drop_syn(drop_at, "NETFILTER_DROP"),
                died(death_at, TcpState::SynSent, 4121),
            ];
            records.sort_by_key(|r| r.mono_ns);
            for r in records {
                e.push(r, &mut out);
            }
            e.advance(at * MS, &mut out);
        }
        e.finish(&mut out);
        assert_eq!(total(&out), 5, "gap {gap_ms} ms, late {late}: {out:#?}");
        assert!(
            out.iter().all(|x| x.cause == "firewall_drop"),
            "gap {gap_ms} ms, late {late}: {:?}",
            causes(&out)
        );
    }
}

#[test]
fn keepalive_resets_are_told_from_application_resets_without_reasons() {
    for (task, want) in [(0, "keepalive_timeout"), (880, "reset_by_application")] {
        let out = run(|e, o| {
            let mut rst = rec(Kind::RstSent, 10, S, C, SNS);
            rst.state = Some(TcpState::Established);
            rst.owner = Some(Proc {
                pid: 880,
                comm: "python3".into(),
                cgroup: None,
                workload: None,
            });
            rst.task = Some(Proc {
                pid: task,
                comm: "x".into(),
                cgroup: None,
                workload: None,
            });
            e.push(rst, o);
            e.push(client_owned(rec(Kind::RstReceived, 10, C, S, CNS)), o);
        });
        assert_eq!(causes(&out), vec![want], "task {task}");
    }
}

#[test]
fn refused_despite_a_listener_is_a_firewall_reject() {
    let out = run(|e, o| {
        listen(e, 1, "0.0.0.0:8080", SNS, 880, o);
        e.push(client_owned(rec(Kind::RstReceived, 10, C, S, CNS)), o);
        e.push(error(10, libc::ECONNREFUSED), o);
    });
    assert_eq!(causes(&out), vec!["firewall_reject"]);
    assert!(out[0].confidence < 0.9);
}

#[test]
fn a_storm_of_unfinished_stories_stays_bounded() {
    let mut e = Engine::default();
    let mut out = Vec::new();
    for i in 0..(MAX_STORIES as u64 + 10_000) {
        let c = format!(
            "10.{}.{}.{}:{}",
            (i >> 24) & 255,
            (i >> 16) & 255,
            (i >> 8) & 255,
            1000 + (i & 255)
        );
        e.push(
            client_owned(rec(Kind::SynRetransmit, i / 1000, &c, S, CNS)),
            &mut out,
        );
    }
    e.advance(100 * 1000 * MS, &mut out);
    e.advance(100 * 1000 * MS + 1, &mut out);
    assert!(
        e.stories.open_stories() <= MAX_STORIES,
        "{}",
        e.stories.open_stories()
    );
}

#[test]
fn an_established_socket_killed_by_a_timer_without_resets_timed_out() {
    // 5.10: no errno, no retransmit count; only the death, in a timer.
    let out = run(|e, o| e.push(died(9_000, TcpState::Established, 0), o));
    assert_eq!(causes(&out), vec!["flow_timeout"]);
    assert_eq!(
        out[0].process.as_ref().map(|p| p.pid),
        Some(4121),
        "named from the dead socket"
    );
    assert_eq!(out[0].outcome, "timed out");
}

/// A queued child of the listener on S reset as the kernel shows it: the child dies
/// (in the task that closes the listener), sends an RST with TCP_STATE, and the client
/// gets ECONNRESET. `task` is the task the child's death runs in.
fn child_reset(e: &mut Engine, at_us: u64, client: &str, task: u32, out: &mut Vec<Explanation>) {
    let at = |r: &mut Record| r.mono_ns = at_us * 1_000;
    let mut death = rec(Kind::State, 0, S, client, SNS);
    at(&mut death);
    death.old_state = Some(TcpState::Established);
    death.new_state = Some(TcpState::Close);
    death.owner = python3(880);
    death.task = python3(task);
    e.push(death, out);
    let mut rst = rec(Kind::RstSent, 0, S, client, SNS);
    at(&mut rst);
    rst.state = Some(TcpState::Close);
    rst.reason = Some("TCP_STATE".into());
    rst.owner = python3(880);
    rst.task = python3(task);
    e.push(rst, out);
    if client.starts_with("192.0.2.") {
        // A remote client: nothing of its side here.
        return;
    }
    let mut got = client_owned(rec(Kind::RstReceived, 0, client, S, CNS));
    at(&mut got);
    e.push(got, out);
    let mut err = client_owned(rec(Kind::Error, 0, client, S, CNS));
    at(&mut err);
    err.errno = Some(libc::ECONNRESET);
    e.push(err, out);
}

fn listener_gone(exits: bool, closes_ms: Option<u64>, task: u32) -> Vec<Explanation> {
    run(|e, o| {
        listen(e, 1, S, SNS, 880, o);
        if let Some(t) = closes_ms {
            let mut close = rec(Kind::State, t, S, "0.0.0.0:0", SNS);
            close.old_state = Some(TcpState::Listen);
            close.new_state = Some(TcpState::Close);
            close.owner = python3(880);
            close.task = python3(880);
            e.push(close, o);
        }
        child_reset(e, 100_010, C, task, o);
        child_reset(e, 100_020, "10.0.0.1:40001", task, o);
        // The pipeline reports the exit 200 ms after the close: the story waits for it.
        e.advance(250 * MS, o);
        if exits {
            let mut exit = Record::new(Kind::ProcessExit, 300 * MS, String::new());
            exit.owner = python3(880);
            exit.reason = Some("SIGKILL".into());
            e.push(exit, o);
        }
        e.advance(1_000 * MS, o);
    })
}

#[test]
fn a_listener_gone_with_its_queue_is_not_a_linger_zero_close() {
    let out = listener_gone(true, Some(100), 880);
    assert_eq!(
        causes(&out),
        vec!["listener_closed_with_queue"; 2],
        "{out:#?}"
    );
    assert_eq!(out[0].culprit.as_ref().map(|p| p.pid), Some(880));
    assert_eq!(out[0].process.as_ref().map(|p| p.pid), Some(4121));
    assert_eq!(
        out[0].explanation,
        "curl[4121] -> 10.0.0.2:8080 reset: python3[880] was killed by SIGKILL while 2 connections waited in the accept queue of 10.0.0.2:8080 (never accepted): closing the listener reset each of them (RST reason TCP_STATE, in the same instant; not an application's abort)"
    );
    // Still running: it closed the socket.
    let out = listener_gone(false, Some(100), 880);
    assert!(
        out[0]
            .explanation
            .contains("python3[880] closed its listening socket while 2 connections"),
        "{}",
        out[0].explanation
    );
    // A remote client: the server's side alone tells which end connected.
    let out = run(|e, o| {
        listen(e, 1, S, SNS, 880, o);
        unlisten(e, 100, S, SNS, 880, o);
        child_reset(e, 100_010, "192.0.2.7:50000", 880, o);
    });
    assert_eq!(causes(&out), vec!["listener_closed_with_queue"], "{out:#?}");
    assert_eq!(out[0].process, None);
    assert_eq!(out[0].src, Some("192.0.2.7:50000".parse().unwrap()));
    assert_eq!(out[0].dst, Some(S.parse().unwrap()));
    assert!(
        out[0]
            .explanation
            .starts_with("192.0.2.7:50000 -> 10.0.0.2:8080 reset: python3[880] closed its listening socket while 1 connection waited"),
        "{}",
        out[0].explanation
    );
    // No listener close, a close long before, or the resets in another task: an
    // application's SO_LINGER 0 close.
    for (closes, task) in [(None, 880), (Some(40), 880), (Some(100), 990)] {
        let out = listener_gone(true, closes, task);
        assert_eq!(
            causes(&out),
            vec!["reset_linger_zero"; 2],
            "{closes:?} {task}"
        );
    }
}

#[test]
fn an_ipv4_client_of_an_ipv6_only_listener_is_a_family_mismatch() {
    // [::] with V6ONLY: the server's kernel found no socket (NO_SOCKET) for the SYN.
    let out = run(|e, o| {
        listen(e, 1, "[::]:8080", SNS, 880, o);
        refusal(e, 10, o);
    });
    assert_eq!(causes(&out), vec!["family_mismatch"], "{out:#?}");
    assert_eq!(out[0].culprit.as_ref().map(|p| p.pid), Some(880));
    assert_eq!(
        out[0].explanation,
        "curl[4121] -> 10.0.0.2:8080 refused: python3[880] listens on [::]:8080 only for IPv6 (IPV6_V6ONLY, or net.ipv6.bindv6only=1), and the client connected over IPv4 to 10.0.0.2 (the server's kernel found no socket for the SYN: NO_SOCKET): address-family mismatch"
    );
    assert!(
        out[0].fix.contains("[::]:8080 without IPV6_V6ONLY"),
        "{}",
        out[0].fix
    );
    // The same from a kernel that drops the SYN with NO_SOCKET and sends no RST event (6.1).
    let out = run(|e, o| {
        listen(e, 1, "[::]:8080", SNS, 880, o);
        e.push(drop_syn(10, "NO_SOCKET"), o);
        e.push(client_owned(rec(Kind::RstReceived, 10, C, S, CNS)), o);
        e.push(error(10, libc::ECONNREFUSED), o);
    });
    assert_eq!(causes(&out), vec!["family_mismatch"], "{out:#?}");
    // Without the kernel's word (5.10), [::] may be dual-stack: a firewall stays likelier.
    let out = run(|e, o| {
        listen(e, 1, "[::]:8080", SNS, 880, o);
        e.push(client_owned(rec(Kind::RstReceived, 10, C, S, CNS)), o);
        e.push(error(10, libc::ECONNREFUSED), o);
    });
    assert_eq!(causes(&out), vec!["firewall_reject"]);
    // Bound to an IPv6 address: no V6ONLY needed.
    let out = run(|e, o| {
        listen(e, 1, "[::1]:8080", SNS, 880, o);
        refusal(e, 10, o);
    });
    assert_eq!(causes(&out), vec!["family_mismatch"]);
    assert!(
        out[0]
            .explanation
            .contains("listens on [::1]:8080 on an IPv6 address only"),
        "{}",
        out[0].explanation
    );
    assert!(
        out[0].fix.contains("connect over IPv6 (to [::1]:8080)"),
        "{}",
        out[0].fix
    );
    // An IPv4 listener on another address beside it: the address is what is wrong.
    let out = run(|e, o| {
        listen(e, 1, "[::1]:8080", SNS, 880, o);
        listen(e, 1, "127.0.0.1:8080", SNS, 881, o);
        refusal(e, 10, o);
    });
    assert_eq!(causes(&out), vec!["listener_other_address"]);
}

#[test]
fn localhost_resolving_to_ipv6_first_stays_a_listener_on_another_address() {
    // The classic dual-stack case: the client tries ::1, the service is on 127.0.0.1.
    let (c6, s6) = ("[::1]:40000", "[::1]:8080");
    let out = run(|e, o| {
        listen(e, 1, "127.0.0.1:8080", CNS, 880, o);
        let mut rst = rec(Kind::RstSent, 10, s6, c6, CNS);
        rst.reason = Some("NO_SOCKET".into());
        e.push(rst, o);
        e.push(client_owned(rec(Kind::RstReceived, 10, c6, s6, CNS)), o);
        let mut err = client_owned(rec(Kind::Error, 10, c6, s6, CNS));
        err.errno = Some(libc::ECONNREFUSED);
        e.push(err, o);
    });
    assert_eq!(causes(&out), vec!["listener_other_address"], "{out:#?}");
}

fn no_local_port(
    state: Option<TcpState>,
    ports: Option<crate::base::record::PortUse>,
) -> Vec<Explanation> {
    run(|e, o| {
        let mut r = client_owned(rec(Kind::ConnectError, 10, "0.0.0.0:0", S, CNS));
        r.errno = Some(libc::EADDRNOTAVAIL);
        r.state = state;
        r.ports = ports;
        e.push(r, o);
    })
}

#[test]
fn a_connect_without_a_free_local_port_is_port_exhaustion() {
    let ports = |established, time_wait| crate::base::record::PortUse {
        range: [40000, 40003],
        established,
        time_wait,
        other: 0,
    };
    let out = no_local_port(Some(TcpState::SynSent), Some(ports(3, 1)));
    assert_eq!(causes(&out), vec!["local_ports_exhausted"], "{out:#?}");
    assert_eq!(out[0].process.as_ref().map(|p| p.pid), Some(4121));
    assert_eq!(out[0].errno_name, Some("EADDRNOTAVAIL"));
    assert!(!out[0].errno_inferred);
    assert_eq!(
        out[0].explanation,
        "curl[4121] -> 10.0.0.2:8080 failed: no free local port for a connection to 10.0.0.2:8080 in netns 100 (connect() failed with EADDRNOTAVAIL before sending anything): the ephemeral port range 40000-40003 (4 ports; net.ipv4.ip_local_port_range) is used up: 4 sockets hold ports towards 10.0.0.2:8080, 3 ESTABLISHED, 1 in TIME_WAIT, 0 in other states"
    );
    assert!(
        out[0]
            .fix
            .starts_with("reuse connections (a connection pool, HTTP keep-alive)"),
        "{}",
        out[0].fix
    );
    assert!(out[0].fix.contains("ip_local_port_range='1024 65535'"));
    assert!(out[0].fix.contains("tcp_tw_reuse=1"));
    // Mostly TIME_WAIT: reusing those ports comes first.
    let out = no_local_port(Some(TcpState::SynSent), Some(ports(0, 4)));
    assert!(
        out[0]
            .fix
            .starts_with("let new connections reuse TIME_WAIT ports"),
        "{}",
        out[0].fix
    );
    // Past SYN_SENT but the port use not read (it failed, or an older capture).
    let out = no_local_port(Some(TcpState::SynSent), None);
    assert_eq!(causes(&out), vec!["local_ports_exhausted"]);
    assert!(out[0].explanation.contains("(not measured here)"));
    // EADDRNOTAVAIL before SYN_SENT: no usable local address, not the ports.
    let out = no_local_port(None, None);
    assert_eq!(causes(&out), vec!["no_route"]);
}

#[test]
fn a_connect_from_a_bound_port_already_connected_there_is_a_4_tuple_in_use() {
    // The kernel shows the bound socket's death (its port, not 0), then the errno.
    let out = run(|e, o| {
        let mut death = client_owned(rec(Kind::State, 10, C, S, CNS));
        death.old_state = Some(TcpState::SynSent);
        death.new_state = Some(TcpState::Close);
        death.task = death.owner.clone();
        e.push(death, o);
        let mut r = client_owned(rec(Kind::ConnectError, 10, "0.0.0.0:0", S, CNS));
        r.task = r.owner.clone();
        r.errno = Some(libc::EADDRNOTAVAIL);
        r.state = Some(TcpState::SynSent);
        e.push(r, o);
    });
    assert_eq!(causes(&out), vec!["local_address_in_use"], "{out:#?}");
    assert_eq!(out[0].process.as_ref().map(|p| p.pid), Some(4121));
    assert!(
        out[0].explanation.contains(
            "the socket was bound to 10.0.0.1:40000 before connect(), and 10.0.0.1:40000 already has a connection to 10.0.0.2:8080"
        ),
        "{}",
        out[0].explanation
    );
    assert!(
        out[0].fix.contains("IP_BIND_ADDRESS_NO_PORT"),
        "{}",
        out[0].fix
    );
}

#[test]
fn one_listener_of_a_reuseport_group_gone_with_its_queue() {
    let out = run(|e, o| {
        for (pid, sock) in [(880, 0xa), (881, 0xb)] {
            let mut l = rec(Kind::State, 1, S, "0.0.0.0:0", SNS);
            l.old_state = Some(TcpState::Close);
            l.new_state = Some(TcpState::Listen);
            l.owner = python3(pid);
            l.sock = Some(crate::base::record::Sock(sock));
            e.push(l, o);
        }
        let mut close = rec(Kind::State, 100, S, "0.0.0.0:0", SNS);
        close.old_state = Some(TcpState::Listen);
        close.new_state = Some(TcpState::Close);
        close.owner = python3(880);
        close.task = python3(880);
        close.sock = Some(crate::base::record::Sock(0xa));
        e.push(close, o);
        child_reset(e, 100_010, C, 880, o);
        // The port is still served: a later refusal is not blamed on a restart.
        assert!(e
            .host
            .recently_closed(SNS, 8080, 200 * MS, 30_000 * MS)
            .is_none());
    });
    assert_eq!(causes(&out), vec!["listener_closed_with_queue"], "{out:#?}");
    assert_eq!(out[0].culprit.as_ref().map(|p| p.pid), Some(880));
    assert!(
        out[0].explanation.ends_with(
            "other sockets still listen there (SO_REUSEPORT): only this one's queue was lost"
        ),
        "{}",
        out[0].explanation
    );
}

#[test]
fn a_listener_known_to_be_v6only_needs_no_evidence_from_the_server_kernel() {
    for (v6only, want) in [(true, "family_mismatch"), (false, "firewall_reject")] {
        let out = run(|e, o| {
            // From the namespace's sock_diag snapshot (a listener from before the agent).
            let mut l = Record::new(Kind::Listener, 0, String::new());
            l.netns = Some(SNS);
            l.src = Some("[::]:8080".parse().unwrap());
            l.owner = python3(880);
            l.v6only = Some(v6only);
            e.push(l, o);
            // 5.10: only the client's side.
            e.push(client_owned(rec(Kind::RstReceived, 10, C, S, CNS)), o);
            e.push(error(10, libc::ECONNREFUSED), o);
        });
        assert_eq!(causes(&out), vec![want], "v6only {v6only}");
        if v6only {
            assert!(
                out[0]
                    .explanation
                    .contains("python3[880] listens on [::]:8080 only for IPv6 (IPV6_V6ONLY set)"),
                "{}",
                out[0].explanation
            );
            assert_eq!(out[0].culprit.as_ref().map(|p| p.pid), Some(880));
        }
    }
}

#[test]
fn a_long_queue_is_reset_as_a_chain_and_a_later_abort_is_not_part_of_it() {
    let out = run(|e, o| {
        listen(e, 1, S, SNS, 880, o);
        let mut close = rec(Kind::State, 100, S, "0.0.0.0:0", SNS);
        close.old_state = Some(TcpState::Listen);
        close.new_state = Some(TcpState::Close);
        close.owner = python3(880);
        close.task = python3(880);
        e.push(close, o);
        // A slow machine: each reset 30 ms after the previous one, 90 ms in all.
        for (i, at_ms) in [130u64, 160, 190].into_iter().enumerate() {
            child_reset(e, at_ms * 1_000, &format!("10.0.0.1:4000{i}"), 880, o);
        }
        // 110 ms after the last: the application's own abort of an accepted one.
        child_reset(e, 300_000, "10.0.0.1:40009", 880, o);
        e.advance(1_000 * MS, o);
    });
    // One client process: the first is printed, the others counted into its burst.
    let count = |cause: &str| -> u64 {
        out.iter()
            .filter(|x| x.cause == cause)
            .map(|x| x.count)
            .sum()
    };
    assert_eq!(
        (
            count("listener_closed_with_queue"),
            count("reset_linger_zero")
        ),
        (3, 1),
        "{out:#?}"
    );
    assert!(
        out.iter()
            .find(|x| x.cause == "listener_closed_with_queue")
            .unwrap()
            .explanation
            .contains("while 3 connections waited"),
        "{out:#?}"
    );
}
