//! Record encoding inside a chunk: varints, a per-chunk dictionary of strings, values
//! and addresses (so that every chunk decodes on its own and a damaged one costs only
//! itself), and a length prefix per record (so that readers skip kinds and fields they
//! do not know). See docs/capture-format.md.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut, BytesMut};
use thiserror::Error;

use tracer_common::Hook;

use crate::base::record::{
    errno_name, ConntrackStats, FirewallRule, Kind, OwnerSource, PortUse, Proc, Queue, QueueKind,
    Record, Sock, TcpFlags, TcpState, Text,
};
use crate::base::workload::{Container, Pod, Qos, Runtime, Workload};
use crate::base::FastMap;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("bad {0}")]
    Bad(&'static str),
}

type R<T> = Result<T, CodecError>;

pub fn put_varint(b: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        b.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    b.put_u8(v as u8);
}

pub fn get_varint(b: &mut &[u8]) -> R<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        if !b.has_remaining() {
            return Err(CodecError::Truncated("varint"));
        }
        let byte = b.get_u8();
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(CodecError::Bad("varint"))
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Stable kind codes of the capture format (never renumbered).
const KINDS: [(Kind, u8); 16] = [
    (Kind::RstSent, 1),
    (Kind::RstReceived, 2),
    (Kind::SynRetransmit, 3),
    (Kind::SynackRetransmit, 4),
    (Kind::Drop, 5),
    (Kind::State, 6),
    (Kind::Error, 7),
    (Kind::Overflow, 8),
    (Kind::Loss, 9),
    (Kind::Listener, 10),
    (Kind::Addresses, 11),
    (Kind::ProcessExit, 12),
    (Kind::ConnectError, 13),
    (Kind::Socket, 14),
    (Kind::FirewallRule, 15),
    (Kind::Workload, 16),
];

fn kind_code(k: Kind) -> u8 {
    KINDS
        .iter()
        .find(|(kk, _)| *kk == k)
        .map(|(_, c)| *c)
        .expect("every kind has a code")
}

fn kind_of(c: u8) -> Option<Kind> {
    KINDS.iter().find(|(_, cc)| *cc == c).map(|(k, _)| *k)
}

// Stable codes of the enumerated fields (never renumbered). A TCP state is the
// kernel's value (0 for one this build does not know), a hook its tracer_common value.

fn owner_source_code(s: OwnerSource) -> u64 {
    match s {
        OwnerSource::Kernel => 1,
        OwnerSource::Socket => 2,
        OwnerSource::Listener => 3,
        OwnerSource::Proc => 4,
    }
}

fn owner_source_of(c: u64) -> R<OwnerSource> {
    Ok(match c {
        1 => OwnerSource::Kernel,
        2 => OwnerSource::Socket,
        3 => OwnerSource::Listener,
        4 => OwnerSource::Proc,
        _ => return Err(CodecError::Bad("enumerated value")),
    })
}

fn queue_kind_code(k: QueueKind) -> u64 {
    match k {
        QueueKind::Accept => 1,
        QueueKind::Syn => 2,
    }
}

fn queue_kind_of(c: u64) -> R<QueueKind> {
    Ok(match c {
        1 => QueueKind::Accept,
        2 => QueueKind::Syn,
        _ => return Err(CodecError::Bad("enumerated value")),
    })
}

// Presence bits, in encoding order.
const NETNS: u32 = 1 << 0;
const SRC: u32 = 1 << 1;
const DST: u32 = 1 << 2;
const STATE: u32 = 1 << 3;
const OLD_STATE: u32 = 1 << 4;
const NEW_STATE: u32 = 1 << 5;
const REASON: u32 = 1 << 6;
const ERRNO: u32 = 1 << 7;
const OWNER: u32 = 1 << 8;
const OWNER_SOURCE: u32 = 1 << 9;
const TASK: u32 = 1 << 10;
const SOCK: u32 = 1 << 11;
const RETRANS: u32 = 1 << 12;
const QUEUE: u32 = 1 << 13;
const QUEUE_KIND: u32 = 1 << 14;
const DROPS: u32 = 1 << 15;
const LOCATION: u32 = 1 << 16;
const TCP_FLAGS: u32 = 1 << 17;
const HOOK: u32 = 1 << 18;
const LOST: u32 = 1 << 19;
const ADDRS: u32 = 1 << 20;
const SOMAXCONN: u32 = 1 << 21;
const PORTS: u32 = 1 << 22;
const V6ONLY: u32 = 1 << 23;
const RULES: u32 = 1 << 24;
const CONNTRACK: u32 = 1 << 25;
const OWNER_CGROUP: u32 = 1 << 26;
const CGROUP: u32 = 1 << 27;
const WORKLOAD: u32 = 1 << 28;
const NETNS_NAME: u32 = 1 << 29;

fn runtime_code(r: Runtime) -> u64 {
    match r {
        Runtime::Docker => 1,
        Runtime::Containerd => 2,
        Runtime::CriO => 3,
        Runtime::Podman => 4,
        Runtime::Lxc => 5,
        Runtime::Cri => 6,
        Runtime::Crun => 7,
    }
}

fn runtime_of(c: u64) -> R<Runtime> {
    Ok(match c {
        1 => Runtime::Docker,
        2 => Runtime::Containerd,
        3 => Runtime::CriO,
        4 => Runtime::Podman,
        5 => Runtime::Lxc,
        6 => Runtime::Cri,
        7 => Runtime::Crun,
        _ => return Err(CodecError::Bad("enumerated value")),
    })
}

fn qos_code(q: Qos) -> u64 {
    match q {
        Qos::Guaranteed => 1,
        Qos::Burstable => 2,
        Qos::BestEffort => 3,
    }
}

fn qos_of(c: u64) -> R<Qos> {
    Ok(match c {
        1 => Qos::Guaranteed,
        2 => Qos::Burstable,
        3 => Qos::BestEffort,
        _ => return Err(CodecError::Bad("enumerated value")),
    })
}

/// Builds one chunk: records are encoded against a dictionary that is written first.
#[derive(Default)]
pub struct ChunkEncoder {
    strings: FastMap<String, u64>,
    string_list: Vec<String>,
    values: FastMap<u64, u64>,
    value_list: Vec<u64>,
    ips: FastMap<IpAddr, u64>,
    ip_list: Vec<IpAddr>,
    body: BytesMut,
    scratch: BytesMut,
    pub records: u32,
    pub first_ns: Option<u64>,
    last_ns: u64,
}

impl ChunkEncoder {
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes the chunk will take, roughly (records plus dictionary).
    pub fn size(&self) -> usize {
        self.body.len()
            + self.string_list.iter().map(|s| s.len() + 1).sum::<usize>()
            + self.value_list.len() * 5
            + self.ip_list.len() * 17
    }

    fn string(&mut self, s: &str) -> u64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.string_list.len() as u64;
        self.strings.insert(s.to_string(), i);
        self.string_list.push(s.to_string());
        i
    }

    fn value(&mut self, v: u64) -> u64 {
        if let Some(&i) = self.values.get(&v) {
            return i;
        }
        let i = self.value_list.len() as u64;
        self.values.insert(v, i);
        self.value_list.push(v);
        i
    }

    fn ip(&mut self, a: IpAddr) -> u64 {
        if let Some(&i) = self.ips.get(&a) {
            return i;
        }
        let i = self.ip_list.len() as u64;
        self.ips.insert(a, i);
        self.ip_list.push(a);
        i
    }

    fn addr(&mut self, a: SocketAddr) {
        let i = self.ip(a.ip());
        let b = &mut self.scratch;
        put_varint(b, i);
        put_varint(b, a.port() as u64);
    }

    fn proc_(&mut self, p: &Proc) {
        let c = self.string(&p.comm);
        put_varint(&mut self.scratch, p.pid as u64);
        put_varint(&mut self.scratch, c);
    }

    /// Optional strings as index + 1 (0: none), optional parts after a 0/1.
    fn workload(&mut self, w: &Workload) {
        let unit = w.unit.as_ref().map_or(0, |u| self.string(u) + 1);
        put_varint(&mut self.scratch, unit);
        put_varint(&mut self.scratch, w.unit_user.map_or(0, |u| u as u64 + 1));
        match &w.container {
            Some(c) => {
                let id = self.string(&c.id);
                let name = c.name.as_ref().map_or(0, |n| self.string(n) + 1);
                for v in [1, runtime_code(c.runtime), id, name, c.monitor as u64] {
                    put_varint(&mut self.scratch, v);
                }
            }
            None => put_varint(&mut self.scratch, 0),
        }
        match &w.pod {
            Some(p) => {
                let uid = self.string(&p.uid);
                let ns = p.namespace.as_ref().map_or(0, |n| self.string(n) + 1);
                let name = p.name.as_ref().map_or(0, |n| self.string(n) + 1);
                let qos = p.qos.map_or(0, qos_code);
                for v in [1, uid, qos, ns, name] {
                    put_varint(&mut self.scratch, v);
                }
            }
            None => put_varint(&mut self.scratch, 0),
        }
    }

    pub fn push(&mut self, r: &Record) {
        if self.first_ns.is_none() {
            self.first_ns = Some(r.mono_ns);
            self.last_ns = r.mono_ns;
        }
        let delta = r.mono_ns as i64 - self.last_ns as i64;
        self.last_ns = r.mono_ns;
        let sock = r.sock.map(|s| s.0);
        let mut bits = 0u32;
        let mut set = |cond: bool, bit: u32| {
            if cond {
                bits |= bit
            }
        };
        set(r.netns.is_some(), NETNS);
        set(r.src.is_some(), SRC);
        set(r.dst.is_some(), DST);
        set(r.state.is_some(), STATE);
        set(r.old_state.is_some(), OLD_STATE);
        set(r.new_state.is_some(), NEW_STATE);
        set(r.reason.is_some(), REASON);
        set(r.errno.is_some(), ERRNO);
        set(r.owner.is_some(), OWNER);
        set(r.owner_source.is_some(), OWNER_SOURCE);
        set(r.task.is_some(), TASK);
        set(sock.is_some(), SOCK);
        set(r.retransmits.is_some(), RETRANS);
        set(r.queue.is_some(), QUEUE);
        set(r.queue_kind.is_some(), QUEUE_KIND);
        set(r.drops.is_some(), DROPS);
        set(r.location.is_some(), LOCATION);
        set(r.tcp_flags.is_some(), TCP_FLAGS);
        set(r.hook.is_some(), HOOK);
        set(r.lost.is_some(), LOST);
        set(r.addrs.is_some(), ADDRS);
        set(r.somaxconn.is_some(), SOMAXCONN);
        set(r.ports.is_some(), PORTS);
        set(r.v6only.is_some(), V6ONLY);
        set(r.rules.is_some(), RULES);
        set(r.conntrack.is_some(), CONNTRACK);
        let owner_cgroup = r.owner.as_ref().and_then(|p| p.cgroup);
        set(owner_cgroup.is_some(), OWNER_CGROUP);
        set(r.cgroup.is_some(), CGROUP);
        set(r.workload.is_some(), WORKLOAD);
        set(r.netns_name.is_some(), NETNS_NAME);

        self.scratch.clear();
        self.scratch.put_u8(kind_code(r.kind));
        put_varint(&mut self.scratch, bits as u64);
        put_varint(&mut self.scratch, zigzag(delta));
        if let Some(ns) = r.netns {
            let i = self.value(ns as u64);
            put_varint(&mut self.scratch, i);
        }
        if let Some(a) = r.src {
            self.addr(a);
        }
        if let Some(a) = r.dst {
            self.addr(a);
        }
        for s in [r.state, r.old_state, r.new_state].into_iter().flatten() {
            put_varint(&mut self.scratch, s as u64);
        }
        if let Some(s) = &r.reason {
            let i = self.string(s);
            put_varint(&mut self.scratch, i);
        }
        if let Some(e) = r.errno {
            put_varint(&mut self.scratch, zigzag(e as i64));
        }
        if let Some(p) = &r.owner {
            self.proc_(p);
        }
        if let Some(s) = r.owner_source {
            put_varint(&mut self.scratch, owner_source_code(s));
        }
        if let Some(p) = &r.task {
            self.proc_(p);
        }
        if let Some(v) = sock {
            let i = self.value(v);
            put_varint(&mut self.scratch, i);
        }
        if let Some(n) = r.retransmits {
            put_varint(&mut self.scratch, n as u64);
        }
        if let Some(q) = &r.queue {
            put_varint(&mut self.scratch, q.depth as u64);
            put_varint(&mut self.scratch, q.backlog as u64);
        }
        if let Some(k) = r.queue_kind {
            put_varint(&mut self.scratch, queue_kind_code(k));
        }
        if let Some(d) = r.drops {
            put_varint(&mut self.scratch, d);
        }
        if let Some(s) = &r.location {
            let i = self.string(s);
            put_varint(&mut self.scratch, i);
        }
        if let Some(f) = r.tcp_flags {
            let i = self.string(f.letters());
            put_varint(&mut self.scratch, i);
        }
        if let Some(h) = r.hook {
            put_varint(&mut self.scratch, h as u64);
        }
        if let Some(n) = r.lost {
            put_varint(&mut self.scratch, n);
        }
        if let Some(list) = &r.addrs {
            put_varint(&mut self.scratch, list.len() as u64);
            for a in list {
                let i = self.ip(*a);
                put_varint(&mut self.scratch, i);
            }
        }
        if let Some(n) = r.somaxconn {
            put_varint(&mut self.scratch, n as u64);
        }
        if let Some(p) = &r.ports {
            for v in [
                p.range[0] as u64,
                p.range[1] as u64,
                p.established as u64,
                p.time_wait as u64,
                p.other as u64,
            ] {
                put_varint(&mut self.scratch, v);
            }
        }
        if let Some(v) = r.v6only {
            put_varint(&mut self.scratch, v as u64);
        }
        if let Some(rules) = &r.rules {
            put_varint(&mut self.scratch, rules.len() as u64);
            for x in rules {
                for t in [
                    &x.source, &x.family, &x.table, &x.chain, &x.rule, &x.verdict,
                ] {
                    let i = self.string(t);
                    put_varint(&mut self.scratch, i);
                }
                // Optional parts: 0 for none, else the string index + 1 / value + 1.
                let hook = x.hook.as_ref().map_or(0, |h| self.string(h) + 1);
                put_varint(&mut self.scratch, hook);
                put_varint(
                    &mut self.scratch,
                    x.priority.map_or(0, |p| zigzag(p as i64) + 1),
                );
                put_varint(
                    &mut self.scratch,
                    x.handle.map_or(0, |h| h.saturating_add(1)),
                );
            }
        }
        if let Some(c) = &r.conntrack {
            for v in [
                c.entries,
                c.max.map_or(0, |m| m.saturating_add(1)),
                c.invalid,
                c.drop,
                c.early_drop,
                c.insert_failed,
            ] {
                put_varint(&mut self.scratch, v);
            }
        }
        if let Some(id) = owner_cgroup {
            let i = self.value(id);
            put_varint(&mut self.scratch, i);
        }
        if let Some(id) = r.cgroup {
            let i = self.value(id);
            put_varint(&mut self.scratch, i);
        }
        if let Some(w) = &r.workload {
            self.workload(w);
        }
        if let Some(n) = &r.netns_name {
            let i = self.string(n);
            put_varint(&mut self.scratch, i);
        }
        put_varint(&mut self.body, self.scratch.len() as u64);
        self.body.extend_from_slice(&self.scratch);
        self.records += 1;
    }

    /// The chunk payload (dictionary, then records); resets the encoder.
    pub fn finish(&mut self) -> BytesMut {
        let mut out = BytesMut::with_capacity(self.size() + 16);
        put_varint(&mut out, self.first_ns.unwrap_or(0));
        put_varint(&mut out, self.string_list.len() as u64);
        for s in &self.string_list {
            put_varint(&mut out, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        put_varint(&mut out, self.value_list.len() as u64);
        for v in &self.value_list {
            put_varint(&mut out, *v);
        }
        put_varint(&mut out, self.ip_list.len() as u64);
        for ip in &self.ip_list {
            match ip {
                IpAddr::V4(a) => {
                    out.put_u8(4);
                    out.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    out.put_u8(6);
                    out.extend_from_slice(&a.octets());
                }
            }
        }
        put_varint(&mut out, self.records as u64);
        out.extend_from_slice(&self.body);
        *self = ChunkEncoder::default();
        out
    }
}

/// Decodes a chunk payload into records (their wall-clock text is left to whoever
/// prints them). Records of unknown kinds (from newer writers) are skipped.
pub fn decode_chunk(mut b: &[u8]) -> R<Vec<Record>> {
    let b = &mut b;
    let mut last = get_varint(b)? as i64;
    let n = get_varint(b)? as usize;
    let mut strings = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let len = get_varint(b)? as usize;
        if b.remaining() < len {
            return Err(CodecError::Truncated("string"));
        }
        strings.push(Text::from(String::from_utf8_lossy(&b[..len])));
        b.advance(len);
    }
    let n = get_varint(b)? as usize;
    let mut values = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        values.push(get_varint(b)?);
    }
    let n = get_varint(b)? as usize;
    let mut ips = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        if !b.has_remaining() {
            return Err(CodecError::Truncated("address"));
        }
        let ip = match b.get_u8() {
            4 if b.remaining() >= 4 => {
                let a = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
                b.advance(4);
                IpAddr::V4(a)
            }
            6 if b.remaining() >= 16 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(&b[..16]);
                b.advance(16);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            _ => return Err(CodecError::Bad("address")),
        };
        ips.push(ip);
    }
    let count = get_varint(b)? as usize;
    let mut out = Vec::with_capacity(count.min(65536));
    for _ in 0..count {
        let len = get_varint(b)? as usize;
        if b.remaining() < len {
            return Err(CodecError::Truncated("record"));
        }
        let mut rec = &b[..len];
        b.advance(len);
        let code = *rec.first().ok_or(CodecError::Truncated("record"))?;
        rec.advance(1);
        let bits = get_varint(&mut rec)? as u32;
        last += unzigzag(get_varint(&mut rec)?);
        let Some(kind) = kind_of(code) else { continue };
        let mono = u64::try_from(last).map_err(|_| CodecError::Bad("timestamp"))?;
        let mut r = Record::new(kind, mono, String::new());
        decode_fields(&mut rec, bits, &mut r, &strings, &values, &ips)?;
        out.push(r);
    }
    Ok(out)
}

fn decode_fields(
    b: &mut &[u8],
    bits: u32,
    r: &mut Record,
    strings: &[Text],
    values: &[u64],
    ips: &[IpAddr],
) -> R<()> {
    let string = |b: &mut &[u8]| -> R<Text> {
        strings
            .get(get_varint(b)? as usize)
            .cloned()
            .ok_or(CodecError::Bad("string index"))
    };
    let value = |b: &mut &[u8]| -> R<u64> {
        values
            .get(get_varint(b)? as usize)
            .copied()
            .ok_or(CodecError::Bad("value index"))
    };
    let ip = |b: &mut &[u8]| -> R<IpAddr> {
        ips.get(get_varint(b)? as usize)
            .copied()
            .ok_or(CodecError::Bad("address index"))
    };
    let addr = |b: &mut &[u8]| -> R<SocketAddr> {
        let a = ip(b)?;
        Ok(SocketAddr::new(a, get_varint(b)? as u16))
    };
    let proc_ = |b: &mut &[u8]| -> R<Proc> {
        let pid = get_varint(b)? as u32;
        Ok(Proc {
            pid,
            comm: string(b)?,
            cgroup: None,
            workload: None,
        })
    };
    let state = |b: &mut &[u8]| -> R<TcpState> { Ok(TcpState::from_kernel(get_varint(b)? as i32)) };
    let has = |bit: u32| bits & bit != 0;
    if has(NETNS) {
        r.netns = Some(value(b)? as u32);
    }
    if has(SRC) {
        r.src = Some(addr(b)?);
    }
    if has(DST) {
        r.dst = Some(addr(b)?);
    }
    if has(STATE) {
        r.state = Some(state(b)?);
    }
    if has(OLD_STATE) {
        r.old_state = Some(state(b)?);
    }
    if has(NEW_STATE) {
        r.new_state = Some(state(b)?);
    }
    if has(REASON) {
        r.reason = Some(string(b)?);
    }
    if has(ERRNO) {
        let e = unzigzag(get_varint(b)?) as i32;
        r.errno = Some(e);
        r.errno_name = errno_name(e);
    }
    if has(OWNER) {
        r.owner = Some(proc_(b)?);
    }
    if has(OWNER_SOURCE) {
        r.owner_source = Some(owner_source_of(get_varint(b)?)?);
    }
    if has(TASK) {
        r.task = Some(proc_(b)?);
    }
    if has(SOCK) {
        r.sock = Some(Sock(value(b)?));
    }
    if has(RETRANS) {
        r.retransmits = Some(get_varint(b)? as u32);
    }
    if has(QUEUE) {
        let depth = get_varint(b)? as u32;
        r.queue = Some(Queue {
            depth,
            backlog: get_varint(b)? as u32,
        });
    }
    if has(QUEUE_KIND) {
        r.queue_kind = Some(queue_kind_of(get_varint(b)?)?);
    }
    if has(DROPS) {
        r.drops = Some(get_varint(b)?);
    }
    if has(LOCATION) {
        r.location = Some(string(b)?);
    }
    if has(TCP_FLAGS) {
        // Letters other than the ones rstrace writes drop the field, not the chunk.
        r.tcp_flags = TcpFlags::parse(&string(b)?);
    }
    if has(HOOK) {
        r.hook = Some(Hook::from_u8(get_varint(b)? as u8).ok_or(CodecError::Bad("hook"))?);
    }
    if has(LOST) {
        r.lost = Some(get_varint(b)?);
    }
    if has(ADDRS) {
        let n = get_varint(b)? as usize;
        let mut v = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            v.push(ip(b)?);
        }
        r.addrs = Some(v);
    }
    if has(SOMAXCONN) {
        r.somaxconn = Some(get_varint(b)? as u32);
    }
    if has(PORTS) {
        let lo = get_varint(b)? as u16;
        let hi = get_varint(b)? as u16;
        r.ports = Some(PortUse {
            range: [lo, hi],
            established: get_varint(b)? as u32,
            time_wait: get_varint(b)? as u32,
            other: get_varint(b)? as u32,
        });
    }
    if has(V6ONLY) {
        r.v6only = Some(get_varint(b)? != 0);
    }
    if has(RULES) {
        let n = get_varint(b)? as usize;
        let mut v = Vec::with_capacity(n.min(256));
        for _ in 0..n {
            let mut t = || string(b);
            let (source, family, table, chain, rule, verdict) =
                (t()?, t()?, t()?, t()?, t()?, t()?);
            let hook = match get_varint(b)? {
                0 => None,
                i => Some(
                    strings
                        .get(i as usize - 1)
                        .cloned()
                        .ok_or(CodecError::Bad("string index"))?,
                ),
            };
            let priority = match get_varint(b)? {
                0 => None,
                p => Some(i32::try_from(unzigzag(p - 1)).map_err(|_| CodecError::Bad("priority"))?),
            };
            let handle = get_varint(b)?.checked_sub(1);
            v.push(FirewallRule {
                source,
                family,
                table,
                chain,
                hook,
                priority,
                handle,
                rule,
                verdict,
            });
        }
        r.rules = Some(v);
    }
    if has(CONNTRACK) {
        r.conntrack = Some(ConntrackStats {
            entries: get_varint(b)?,
            max: get_varint(b)?.checked_sub(1),
            invalid: get_varint(b)?,
            drop: get_varint(b)?,
            early_drop: get_varint(b)?,
            insert_failed: get_varint(b)?,
        });
    }
    if has(OWNER_CGROUP) {
        let id = value(b)?;
        if let Some(p) = &mut r.owner {
            p.cgroup = Some(id);
        }
    }
    if has(CGROUP) {
        r.cgroup = Some(value(b)?);
    }
    if has(WORKLOAD) {
        let opt = |b: &mut &[u8]| -> R<Option<Text>> {
            match get_varint(b)? {
                0 => Ok(None),
                i => strings
                    .get(i as usize - 1)
                    .cloned()
                    .map(Some)
                    .ok_or(CodecError::Bad("string index")),
            }
        };
        let mut w = Workload {
            unit: opt(b)?,
            unit_user: get_varint(b)?.checked_sub(1).map(|u| u as u32),
            ..Default::default()
        };
        if get_varint(b)? != 0 {
            w.container = Some(Container {
                runtime: runtime_of(get_varint(b)?)?,
                id: string(b)?,
                name: opt(b)?,
                monitor: get_varint(b)? != 0,
            });
        }
        if get_varint(b)? != 0 {
            w.pod = Some(Pod {
                uid: string(b)?,
                qos: match get_varint(b)? {
                    0 => None,
                    c => Some(qos_of(c)?),
                },
                namespace: opt(b)?,
                name: opt(b)?,
            });
        }
        r.workload = Some(Box::new(w));
    }
    if has(NETNS_NAME) {
        r.netns_name = Some(string(b)?);
    }
    // Fields of a newer format after these are skipped by the record's length.
    Ok(())
}
