//! Builders of synthetic evidence for the rules' and the engine's tests: a client in
//! one namespace, a server in another, both on this host.
use super::{schedule::MS, Engine, Explanation};
use crate::base::record::{Kind, Proc, Record};
use crate::base::record::{TcpFlags, TcpState};

pub const C: &str = "10.0.0.1:40000";
pub const S: &str = "10.0.0.2:8080";
pub const CNS: u32 = 100;
pub const SNS: u32 = 200;

pub fn rec(kind: Kind, at_ms: u64, src: &str, dst: &str, netns: u32) -> Record {
    let mut r = Record::new(kind, at_ms * MS, String::new());
    r.src = Some(src.parse().unwrap());
    r.dst = Some(dst.parse().unwrap());
    r.netns = Some(netns);
    r
}

pub fn client_owned(mut r: Record) -> Record {
    r.owner = Some(Proc {
        pid: 4121,
        comm: "curl".into(),
        cgroup: None,
        workload: None,
    });
    r
}

pub fn error(at_ms: u64, errno: i32) -> Record {
    let mut r = client_owned(rec(Kind::Error, at_ms, C, S, CNS));
    r.errno = Some(errno);
    r
}

pub fn addresses(e: &mut Engine, out: &mut Vec<Explanation>) {
    for (ns, a) in [(CNS, "10.0.0.1"), (SNS, "10.0.0.2")] {
        let mut r = Record::new(Kind::Addresses, 0, String::new());
        r.netns = Some(ns);
        r.addrs = Some(vec![a.parse().unwrap()]);
        e.push(r, out);
    }
}

pub fn run(setup: impl FnOnce(&mut Engine, &mut Vec<Explanation>)) -> Vec<Explanation> {
    let mut e = Engine::default();
    let mut out = Vec::new();
    addresses(&mut e, &mut out);
    setup(&mut e, &mut out);
    // Twice: a story may wait once for namespace addresses.
    e.advance(1_000_000 * MS, &mut out);
    e.advance(2_000_000 * MS, &mut out);
    out
}

pub fn causes(out: &[Explanation]) -> Vec<&'static str> {
    out.iter().map(|e| e.cause).collect()
}

pub type Setup = Box<dyn Fn(&mut Engine, &mut Vec<Explanation>)>;

pub fn drop_syn(at_ms: u64, reason: &str) -> Record {
    let mut d = rec(Kind::Drop, at_ms, C, S, SNS);
    d.reason = Some(reason.into());
    d.tcp_flags = Some(TcpFlags::SYN);
    d.location = Some("nf_hook_slow+0x4c".into());
    d
}

pub fn syn_retransmit(at_ms: u64) -> Record {
    let mut r = client_owned(rec(Kind::SynRetransmit, at_ms, C, S, CNS));
    r.state = Some(TcpState::SynSent);
    r
}

pub fn python3(pid: u32) -> Option<Proc> {
    Some(Proc {
        pid,
        comm: "python3".into(),
        cgroup: None,
        workload: None,
    })
}

/// Evidence of the server's side: a listener opening, owned by python3[`pid`].
pub fn listening(at_ms: u64, addr: &str, ns: u32, pid: u32) -> Record {
    let mut r = rec(Kind::State, at_ms, addr, "0.0.0.0:0", ns);
    r.old_state = Some(TcpState::Close);
    r.new_state = Some(TcpState::Listen);
    r.owner = python3(pid);
    r
}

/// The listener closing, in its owner's own task.
pub fn unlistening(at_ms: u64, addr: &str, ns: u32, pid: u32) -> Record {
    let mut r = rec(Kind::State, at_ms, addr, "0.0.0.0:0", ns);
    r.old_state = Some(TcpState::Listen);
    r.new_state = Some(TcpState::Close);
    r.owner = python3(pid);
    r.task = python3(pid);
    r
}

/// A refusal of C by S as the kernel shows it when both ends are here (6.10+).
pub fn refused(at_ms: u64) -> Vec<Record> {
    let mut rst = rec(Kind::RstSent, at_ms, S, C, SNS);
    rst.reason = Some("NO_SOCKET".into());
    vec![
        rst,
        client_owned(rec(Kind::RstReceived, at_ms, C, S, CNS)),
        error(at_ms, libc::ECONNREFUSED),
    ]
}

/// `r` changed by `f`: rows stay one expression each.
pub fn with(mut r: Record, f: impl FnOnce(&mut Record)) -> Record {
    f(&mut r);
    r
}

/// A row of a rule's table: evidence in the order it is pushed, the cause every
/// explanation it gives must have, and phrases their sentences or fixes must contain.
pub struct Row {
    pub name: &'static str,
    pub records: Vec<Record>,
    pub cause: &'static str,
    pub phrases: &'static [&'static str],
}

/// Explains each row's evidence (after the namespaces' addresses) and checks it.
pub fn check(rows: Vec<Row>) {
    for row in rows {
        let out = run(|e, o| {
            for r in row.records {
                e.push(r, o);
            }
        });
        assert!(
            !out.is_empty() && out.iter().all(|x| x.cause == row.cause),
            "{}: want {}, got {:?}\n{out:#?}",
            row.name,
            row.cause,
            causes(&out)
        );
        let text: String = out
            .iter()
            .map(|x| format!("{}\n{}\n", x.explanation, x.fix))
            .collect();
        for p in row.phrases {
            assert!(text.contains(p), "{}: {p:?} not in:\n{text}", row.name);
        }
    }
}
