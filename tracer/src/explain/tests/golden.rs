//! One explanation of every cause, for the golden output test (sink/golden.rs): the
//! scenarios of the rule tests above, run with a fixed clock so that the explanations
//! and their evidence carry wall-clock times.
use super::*;
use crate::base::{
    clock::Clock,
    record::{PortUse, Proc, Queue, QueueKind, TcpState},
};

fn run_timed(setup: impl FnOnce(&mut Engine, &mut Vec<Explanation>)) -> Vec<Explanation> {
    let mut e = Engine::new(Clock {
        mono_ns: 0,
        wall: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_714_525_521),
    });
    let mut out = Vec::new();
    addresses(&mut e, &mut out);
    setup(&mut e, &mut out);
    e.advance(1_000_000 * MS, &mut out);
    e.advance(2_000_000 * MS, &mut out);
    out
}

fn owned(mut r: Record, pid: u32, comm: &str) -> Record {
    r.owner = Some(Proc {
        pid,
        comm: comm.into(),
        cgroup: None,
        workload: None,
    });
    r
}

fn app_reset(reason: Option<&'static str>, task: u32) -> Setup {
    Box::new(move |e, o| {
        let mut rst = owned(rec(Kind::RstSent, 10, S, C, SNS), 880, "python3");
        rst.reason = reason.map(Into::into);
        rst.state = Some(TcpState::Established);
        rst.task = Some(Proc {
            pid: task,
            comm: "x".into(),
            cgroup: None,
            workload: None,
        });
        e.push(rst, o);
        e.push(client_owned(rec(Kind::RstReceived, 10, C, S, CNS)), o);
        if reason.is_some() {
            e.push(error(10, libc::ECONNRESET), o);
        }
    })
}

fn scenarios() -> Vec<(&'static str, Setup)> {
    vec![
        ("nothing_listening", Box::new(|e, o| refusal(e, 10, o))),
        (
            "listener_other_address",
            Box::new(|e, o| {
                listen(e, 1, "127.0.0.1:8080", SNS, 880, o);
                refusal(e, 10, o)
            }),
        ),
        (
            "family_mismatch",
            Box::new(|e, o| {
                listen(e, 1, "[::]:8080", SNS, 880, o);
                e.push(drop_syn(10, "NO_SOCKET"), o);
                e.push(client_owned(rec(Kind::RstReceived, 10, C, S, CNS)), o);
                e.push(error(10, libc::ECONNREFUSED), o);
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
            }),
        ),
        (
            "refused_by_remote",
            Box::new(|e, o| {
                e.push(
                    client_owned(rec(Kind::RstReceived, 10, C, "192.0.2.9:80", CNS)),
                    o,
                );
                let mut err = error(10, libc::ECONNREFUSED);
                err.dst = Some("192.0.2.9:80".parse().unwrap());
                e.push(err, o);
            }),
        ),
        (
            "firewall_drop",
            Box::new(|e, o| {
                dropped_by_input_rule(e, o);
                e.push(syn_retransmit(1_000), o);
                e.push(error(3_000, libc::ETIMEDOUT), o);
            }),
        ),
        (
            "conntrack_invalid",
            Box::new(|e, o| {
                e.push(drop_syn(0, "NETFILTER_DROP"), o);
                let mut rules = fw_rules(
                    20,
                    &[(
                        "input",
                        Some("input"),
                        Some(0),
                        2,
                        "ct state invalid drop",
                        "drop",
                    )],
                );
                rules.conntrack = Some(crate::base::record::ConntrackStats {
                    entries: 1,
                    max: Some(262144),
                    invalid: 3,
                    ..Default::default()
                });
                e.push(rules, o);
                e.push(error(3_000, libc::ETIMEDOUT), o);
            }),
        ),
        (
            "firewall_reject",
            Box::new(|e, o| {
                e.push(drop_syn(0, "NETFILTER_DROP"), o);
                e.push(client_owned(rec(Kind::RstReceived, 0, C, S, CNS)), o);
                e.push(error(0, libc::ECONNREFUSED), o);
            }),
        ),
        (
            "icmp_reject",
            Box::new(|e, o| {
                let mut r = syn_retransmit(1_000);
                r.dst = Some("192.0.2.9:8080".parse().unwrap());
                let mut soft = error(1, 0);
                soft.dst = r.dst;
                let mut fatal = error(1_001, libc::EHOSTUNREACH);
                fatal.dst = r.dst;
                e.push(soft, o);
                e.push(r, o);
                e.push(fatal, o);
            }),
        ),
        (
            "syn_unanswered",
            Box::new(|e, o| {
                for t in [1_000, 3_000] {
                    let mut r = syn_retransmit(t);
                    r.dst = Some("192.0.2.9:443".parse().unwrap());
                    e.push(r, o);
                }
                let mut err = error(7_000, libc::ETIMEDOUT);
                err.dst = Some("192.0.2.9:443".parse().unwrap());
                e.push(err, o);
            }),
        ),
        (
            "local_ports_exhausted",
            Box::new(|e, o| {
                let mut r = client_owned(rec(Kind::ConnectError, 10, "0.0.0.0:0", S, CNS));
                r.errno = Some(libc::EADDRNOTAVAIL);
                r.state = Some(TcpState::SynSent);
                r.ports = Some(PortUse {
                    range: [40000, 40003],
                    established: 3,
                    time_wait: 1,
                    other: 0,
                });
                e.push(r, o);
            }),
        ),
        (
            "local_address_in_use",
            Box::new(|e, o| {
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
            }),
        ),
        (
            "no_route",
            Box::new(|e, o| {
                e.push(syn_retransmit(1_000), o);
                e.push(error(1_500, libc::ENETUNREACH), o);
            }),
        ),
        (
            "connect_prohibited",
            Box::new(|e, o| {
                let mut r = client_owned(rec(Kind::ConnectError, 10, "0.0.0.0:0", S, CNS));
                r.errno = Some(libc::EACCES);
                e.push(r, o);
            }),
        ),
        (
            "neighbour_unreachable",
            Box::new(|e, o| {
                e.push(syn_retransmit(1_000), o);
                let mut d = drop_syn(2_000, "NEIGH_FAILED");
                d.netns = Some(CNS);
                e.push(d, o);
                e.push(error(3_000, libc::EHOSTUNREACH), o);
            }),
        ),
        (
            "accept_queue_overflow",
            Box::new(|e, o| {
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
            }),
        ),
        (
            "syn_queue_overflow",
            Box::new(|e, o| {
                listen(e, 1, "10.0.0.2:8080", SNS, 880, o);
                let mut ov = Record::new(Kind::Overflow, 500 * MS, String::new());
                ov.netns = Some(SNS);
                ov.src = Some(S.parse().unwrap());
                ov.queue_kind = Some(QueueKind::Syn);
                ov.drops = Some(300);
                e.push(ov, o);
            }),
        ),
        (
            "listener_closed_with_queue",
            Box::new(|e, o| {
                listen(e, 1, S, SNS, 880, o);
                let mut close = rec(Kind::State, 100, S, "0.0.0.0:0", SNS);
                close.old_state = Some(TcpState::Listen);
                close.new_state = Some(TcpState::Close);
                close.owner = python3(880);
                close.task = python3(880);
                e.push(close, o);
                child_reset(e, 100_010, C, 880, o);
                e.advance(250 * MS, o);
                let mut exit = Record::new(Kind::ProcessExit, 300 * MS, String::new());
                exit.owner = python3(880);
                exit.reason = Some("SIGKILL".into());
                e.push(exit, o);
                e.advance(1_000 * MS, o);
            }),
        ),
        (
            "reset_unread_data",
            app_reset(Some("TCP_ABORT_ON_CLOSE"), 880),
        ),
        ("reset_linger_zero", app_reset(Some("TCP_STATE"), 880)),
        (
            "reset_after_shutdown",
            app_reset(Some("TCP_ABORT_ON_DATA"), 880),
        ),
        (
            "reset_time_wait",
            app_reset(Some("TCP_TIMEWAIT_SOCKET"), 880),
        ),
        ("reset_by_application", app_reset(None, 880)),
        (
            "keepalive_timeout",
            app_reset(Some("TCP_KEEPALIVE_TIMEOUT"), 0),
        ),
        (
            "flow_timeout",
            Box::new(|e, o| {
                let mut st = client_owned(rec(Kind::State, 10_000, C, S, CNS));
                st.old_state = Some(TcpState::Established);
                st.new_state = Some(TcpState::Close);
                st.retransmits = Some(15);
                e.push(st, o);
                e.push(error(10_000, libc::ETIMEDOUT), o);
            }),
        ),
        (
            "reset_by_peer",
            Box::new(|e, o| {
                let remote = "192.0.2.9:443";
                let mut got = client_owned(rec(Kind::RstReceived, 10, C, remote, CNS));
                got.state = Some(TcpState::Established);
                e.push(got, o);
                let mut err = error(10, libc::ECONNRESET);
                err.dst = Some(remote.parse().unwrap());
                e.push(err, o);
            }),
        ),
        (
            "unexplained",
            Box::new(|e, o| e.push(error(5, libc::EPROTO), o)),
        ),
    ]
}

/// Every scenario's explanations, in order; each scenario must give its cause.
pub fn explanations() -> Vec<Explanation> {
    let mut all = Vec::new();
    for (want, setup) in scenarios() {
        let out = run_timed(setup);
        assert!(
            out.iter().any(|x| x.cause == want),
            "{want}: {:?}",
            causes(&out)
        );
        all.extend(out);
    }
    all
}
