//! Builders of synthetic evidence for the rules' and the engine's tests: a client in
//! one namespace, a server in another, both on this host.
use super::{schedule::MS, Engine, Explanation};
use crate::base::record::{Kind, Proc, Record};

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
    d.tcp_flags = Some("S");
    d.location = Some("nf_hook_slow+0x4c".into());
    d
}

pub fn syn_retransmit(at_ms: u64) -> Record {
    let mut r = client_owned(rec(Kind::SynRetransmit, at_ms, C, S, CNS));
    r.state = Some("SYN_SENT");
    r
}

pub fn python3(pid: u32) -> Option<Proc> {
    Some(Proc {
        pid,
        comm: "python3".into(),
    })
}
