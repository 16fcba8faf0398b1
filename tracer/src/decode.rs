//! Stage 3, decode (uses `base` and `kernel`).
//!
//! Ring-buffer bytes to [`Record`]s, using the field layout of the running kernel.
use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use thiserror::Error;
use tracer_common::{flags, ConnectInfo, DropInfo, Event, EventHeader, Hook, SockInfo, RAW_MAX};

use crate::{
    base::record::{
        errno_name, Kind, OwnerSource, Proc, Queue, Record, Sock, TcpFlags, TcpState, Text,
    },
    kernel::{
        hooks::{spec, HookSpec},
        info::KernelInfo,
        kallsyms::Kallsyms,
        tracefs::{Field, Format},
    },
};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event of {got} bytes, expected {want}")]
    Size { got: usize, want: usize },
    #[error("unknown hook id {0}")]
    Hook(u8),
    #[error("event from hook {0:?}, whose layout is unknown")]
    NoLayout(Hook),
}

/// The fields of one tracepoint the decoder reads.
#[derive(Clone, Debug, Default)]
struct HookFields {
    skaddr: Option<Field>,
    state: Option<Field>,
    oldstate: Option<Field>,
    newstate: Option<Field>,
    reason: Option<Field>,
    error: Option<Field>,
    sport: Option<Field>,
    dport: Option<Field>,
    family: Option<Field>,
    saddr: Option<Field>,
    daddr: Option<Field>,
    saddr_v6: Option<Field>,
    daddr_v6: Option<Field>,
}

impl HookFields {
    fn new(f: &Format) -> HookFields {
        let g = |n: &str| {
            f.field(n)
                .filter(|fl| fl.offset + fl.size <= RAW_MAX)
                .cloned()
        };
        HookFields {
            skaddr: g("skaddr"),
            state: g("state"),
            oldstate: g("oldstate"),
            newstate: g("newstate"),
            reason: g("reason"),
            error: g("error"),
            sport: g("sport"),
            dport: g("dport"),
            family: g("family"),
            saddr: g("saddr"),
            daddr: g("daddr"),
            saddr_v6: g("saddr_v6"),
            daddr_v6: g("daddr_v6"),
        }
    }
}

fn int(raw: &[u8], f: &Field) -> i64 {
    let b = &raw[f.offset..f.offset + f.size];
    match (f.size, f.signed) {
        (1, _) => b[0] as i64,
        (2, _) => u16::from_ne_bytes([b[0], b[1]]) as i64,
        (4, true) => i32::from_ne_bytes(b.try_into().expect("4 bytes sliced")) as i64,
        (4, false) => u32::from_ne_bytes(b.try_into().expect("4 bytes sliced")) as i64,
        (8, _) => u64::from_ne_bytes(b.try_into().expect("8 bytes sliced")) as i64,
        _ => 0,
    }
}

fn get(raw: &[u8], f: &Option<Field>) -> Option<i64> {
    f.as_ref().map(|f| int(raw, f))
}

/// A `struct sockaddr_in6`-sized field (6.10+ tcp_send_reset).
fn sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([b[0], b[1]]) as i32;
    let port = u16::from_be_bytes([b[2], b[3]]);
    match family {
        libc::AF_INET => Some(SocketAddr::new(
            Ipv4Addr::new(b[4], b[5], b[6], b[7]).into(),
            port,
        )),
        libc::AF_INET6 => {
            let a: [u8; 16] = b[8..24].try_into().ok()?;
            Some(SocketAddr::new(ip6(a), port))
        }
        _ => None,
    }
}

/// IPv4-mapped IPv6 addresses are shown as IPv4, as `ss` does.
/// An address the programs wrote in 16 bytes: IPv4 in the first four for AF_INET.
fn ip_of(family: u16, a: [u8; 16]) -> IpAddr {
    match family as i32 {
        libc::AF_INET => IpAddr::from(Ipv4Addr::new(a[0], a[1], a[2], a[3])),
        _ => ip6(a),
    }
}

fn ip6(a: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(a);
    match v6.to_ipv4_mapped() {
        Some(v4) => v4.into(),
        None => v6.into(),
    }
}

fn endpoints(raw: &[u8], hf: &HookFields) -> (Option<SocketAddr>, Option<SocketAddr>) {
    if let (Some(s), Some(d)) = (&hf.saddr, &hf.daddr) {
        if s.size >= 24 && d.size >= 24 {
            return (
                sockaddr(&raw[s.offset..s.offset + s.size]),
                sockaddr(&raw[d.offset..d.offset + d.size]),
            );
        }
    }
    let (Some(sport), Some(dport)) = (get(raw, &hf.sport), get(raw, &hf.dport)) else {
        return (None, None);
    };
    let v4 = |f: &Option<Field>| {
        f.as_ref().filter(|f| f.size == 4).map(|f| {
            let b = &raw[f.offset..f.offset + 4];
            IpAddr::from(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        })
    };
    let v6 = |f: &Option<Field>| {
        f.as_ref().filter(|f| f.size == 16).map(|f| {
            let a: [u8; 16] = raw[f.offset..f.offset + 16]
                .try_into()
                .expect("16 bytes sliced");
            a
        })
    };
    let family = get(raw, &hf.family).map(|f| f as i32);
    let (s6, d6) = (v6(&hf.saddr_v6), v6(&hf.daddr_v6));
    let use_v6 = match family {
        Some(f) => f == libc::AF_INET6,
        // 5.10 has no family: IPv4 sockets store a mapped (or zero) IPv6 address.
        None => s6.is_some_and(|a| {
            let v = Ipv6Addr::from(a);
            v.to_ipv4_mapped().is_none() && !v.is_unspecified()
        }),
    };
    let (sa, da) = if use_v6 {
        (s6.map(ip6), d6.map(ip6))
    } else {
        (v4(&hf.saddr), v4(&hf.daddr))
    };
    (
        sa.map(|a| SocketAddr::new(a, sport as u16)),
        da.map(|a| SocketAddr::new(a, dport as u16)),
    )
}

fn connect_error(raw: &[u8; RAW_MAX], r: &mut Record) {
    // SAFETY: ConnectInfo is integers (any bytes are a value) and fits in RAW_MAX
    // (asserted in tracer-common).
    let c: ConnectInfo = unsafe { std::ptr::read_unaligned(raw.as_ptr() as *const ConnectInfo) };
    let ip = ip_of(c.family, c.addr);
    let unspecified: IpAddr = if ip.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    r.src = Some(SocketAddr::new(unspecified, 0));
    r.dst = Some(SocketAddr::new(ip, c.port));
    let e = (-c.ret) as i32;
    r.errno = Some(e);
    r.errno_name = errno_name(e);
    if c.state != 0 {
        r.state = Some(TcpState::from_kernel(c.state as i32));
    }
}

/// What a hook's records carry beyond the common fields, taken from the hook table
/// once instead of searching its field names on every event.
#[derive(Clone, Copy)]
struct Carries {
    transition: bool,
    reason: bool,
    error: bool,
}

impl Carries {
    fn of(s: &HookSpec) -> Carries {
        Carries {
            transition: s.reads("oldstate"),
            reason: s.reads("reason"),
            error: s.reads("error"),
        }
    }
}

/// The fields a raw-tracepoint socket hook read from the socket: the same record as
/// its tracepoint's.
fn sock_fields(raw: &[u8; RAW_MAX], carries: Carries, r: &mut Record) {
    // SAFETY: SockInfo is integers (any bytes are a value) and fits in RAW_MAX
    // (asserted in tracer-common).
    let s: SockInfo = unsafe { std::ptr::read_unaligned(raw.as_ptr() as *const SockInfo) };
    r.src = Some(SocketAddr::new(ip_of(s.family, s.saddr), s.sport));
    r.dst = Some(SocketAddr::new(ip_of(s.family, s.daddr), s.dport));
    if carries.transition {
        r.old_state = Some(TcpState::from_kernel(s.oldstate));
        r.new_state = Some(TcpState::from_kernel(s.newstate));
    }
    if carries.error {
        r.errno = Some(s.error);
        r.errno_name = errno_name(s.error);
    }
    if s.state != 0 {
        r.state = Some(TcpState::from_kernel(s.state));
    }
}

pub fn comm(b: &[u8; 16]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Distinct process names and drop locations remembered for sharing; past this the
/// cache starts over, so that a host with churning names cannot grow it.
const TEXT_CACHE_MAX: usize = 4096;

pub struct Decoder {
    fields: HashMap<Hook, HookFields>,
    carries: [Carries; Hook::COUNT],
    drop_reasons: HashMap<u64, Text>,
    rst_reasons: HashMap<u64, Text>,
    syms: Kallsyms,
    comms: crate::base::FastMap<[u8; 16], Text>,
    locations: crate::base::FastMap<u64, Text>,
    /// The FOLDED_* flags of the record decoded last, for `unfold`.
    folded: u8,
}

/// What an RST received in SYN_SENT stands for when the kernel folded them into it
/// (flags FOLDED_*): the events `tcp_reset` makes next, as their programs would have
/// written them. Made before enrichment, which then treats them as kernel records.
pub type Unfolded = [Option<Record>; 2];

impl Decoder {
    pub fn new(info: &KernelInfo) -> Decoder {
        Decoder {
            fields: info
                .formats
                .iter()
                .map(|(h, f)| (*h, HookFields::new(f)))
                .collect(),
            carries: Hook::ALL.map(|h| Carries::of(spec(h))),
            drop_reasons: texts(&info.drop_reasons),
            rst_reasons: texts(&info.rst_reasons),
            syms: Kallsyms::open(),
            comms: Default::default(),
            locations: Default::default(),
            folded: 0,
        }
    }

    /// The records the one decoded last stands for (see [`Unfolded`]): its socket's
    /// SYN_SENT -> CLOSE change, owned like the RST; then the ECONNREFUSED report,
    /// which (like the error hook's own records) names no socket and no owner.
    pub fn unfold(&mut self, rst: &Record) -> Unfolded {
        let folded = std::mem::take(&mut self.folded);
        if folded & flags::FOLDED_DEATH == 0 || rst.kind != Kind::RstReceived {
            return [None, None];
        }
        let mut death = rst.clone();
        death.kind = Kind::State;
        death.state = None;
        death.old_state = Some(TcpState::SynSent);
        death.new_state = Some(TcpState::Close);
        let errno = (folded & flags::FOLDED_ERRNO != 0).then(|| {
            const ECONNREFUSED: i32 = 111;
            let mut e = Record::new(Kind::Error, rst.mono_ns, rst.time.clone());
            (e.src, e.dst) = (rst.src, rst.dst);
            e.task = rst.task.clone();
            e.errno = Some(ECONNREFUSED);
            e.errno_name = errno_name(ECONNREFUSED);
            e
        });
        [Some(death), errno]
    }

    fn comm(&mut self, b: &[u8; 16]) -> Text {
        cached(&mut self.comms, *b, || comm(b).into())
    }

    pub fn decode(&mut self, bytes: &[u8]) -> Result<Record, DecodeError> {
        if bytes.len() < size_of::<Event>() {
            return Err(DecodeError::Size {
                got: bytes.len(),
                want: size_of::<Event>(),
            });
        }
        // SAFETY: the length is checked above; Event is integers, so any bytes are a
        // value.
        let ev: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const Event) };
        let h = &ev.hdr;
        self.folded = h.flags & (flags::FOLDED_DEATH | flags::FOLDED_ERRNO);
        let hook = Hook::from_u8(h.hook).ok_or(DecodeError::Hook(h.hook))?;
        let raw = &ev.raw[..];
        let s = spec(hook);
        // The wall-clock text is made only for records that are printed.
        let mut r = Record::new(s.kind, h.ts_ns, String::new());
        self.header(h, &mut r);
        // A drop carries a DropInfo, never a record.
        if s.kind == Kind::Drop {
            self.drop(&ev.raw, h, &mut r);
            return Ok(r);
        }
        if h.flags & flags::CONNECT_INFO != 0 {
            connect_error(&ev.raw, &mut r);
            return Ok(r);
        }
        if h.flags & flags::SOCK_INFO != 0 {
            sock_fields(&ev.raw, self.carries[hook as usize], &mut r);
            return Ok(r);
        }
        let hf = self.fields.get(&hook).ok_or(DecodeError::NoLayout(hook))?;
        (r.src, r.dst) = endpoints(raw, hf);
        // State 0 is "no socket" (an RST answering a SYN to a closed port).
        r.state = get(raw, &hf.state)
            .filter(|&s| s != 0)
            .map(|s| TcpState::from_kernel(s as i32));
        r.old_state = get(raw, &hf.oldstate).map(|s| TcpState::from_kernel(s as i32));
        r.new_state = get(raw, &hf.newstate).map(|s| TcpState::from_kernel(s as i32));
        // Besides kfree_skb's (above), tcp_send_reset's is the one record with a reason.
        let carries = self.carries[hook as usize];
        if carries.reason {
            r.reason = get(raw, &hf.reason).map(|v| name(&self.rst_reasons, v as u64));
        }
        if carries.error {
            let e = get(raw, &hf.error).unwrap_or(0) as i32;
            r.errno = Some(e);
            r.errno_name = errno_name(e);
        }
        if r.sock.is_none() {
            if let Some(sk) = get(raw, &hf.skaddr).filter(|&v| v != 0) {
                r.sock = Some(Sock(sk as u64));
            }
        }
        Ok(r)
    }

    fn header(&mut self, h: &EventHeader, r: &mut Record) {
        r.netns = (h.netns != 0).then_some(h.netns);
        if h.flags & flags::OWNER_KNOWN != 0 && h.owner_tgid != 0 {
            r.owner = Some(Proc {
                pid: h.owner_tgid,
                comm: self.comm(&h.owner_comm),
                cgroup: (h.owner_cgroup != 0).then_some(h.owner_cgroup),
                workload: None,
            });
            r.owner_source = Some(OwnerSource::Kernel);
        }
        let pid = (h.cur_pid_tgid >> 32) as u32;
        r.task = Some(Proc {
            pid,
            comm: self.comm(&h.cur_comm),
            cgroup: None,
            workload: None,
        });
        if h.skaddr != 0 {
            r.sock = Some(Sock(h.skaddr));
        }
        if h.retrans != 0 {
            r.retransmits = Some(h.retrans);
        }
        if h.flags & flags::QUEUE_KNOWN != 0 {
            r.queue = Some(Queue {
                depth: h.ack_backlog,
                backlog: h.max_ack_backlog,
            });
        }
    }

    fn drop(&mut self, raw: &[u8; RAW_MAX], h: &EventHeader, r: &mut Record) {
        if h.flags & flags::DROP_INFO == 0 {
            return;
        }
        // SAFETY: DropInfo is integers (any bytes are a value) and fits in RAW_MAX
        // (asserted in tracer-common).
        let d: DropInfo = unsafe { std::ptr::read_unaligned(raw.as_ptr() as *const DropInfo) };
        r.reason = Some(name(&self.drop_reasons, d.reason as u64));
        let syms = &mut self.syms;
        r.location = Some(cached(&mut self.locations, d.location, || {
            syms.resolve(d.location).into()
        }));
        if d.parsed != 0 {
            r.src = Some(SocketAddr::new(ip_of(d.family, d.saddr), d.sport));
            r.dst = Some(SocketAddr::new(ip_of(d.family, d.daddr), d.dport));
            r.tcp_flags = Some(TcpFlags::from_bits(d.tcp_flags));
        }
    }
}

/// The shared text for `key`, made once; the cache starts over when full.
fn cached<K: std::hash::Hash + Eq>(
    cache: &mut crate::base::FastMap<K, Text>,
    key: K,
    make: impl FnOnce() -> Text,
) -> Text {
    if let Some(t) = cache.get(&key) {
        return t.clone();
    }
    if cache.len() >= TEXT_CACHE_MAX {
        cache.clear();
    }
    cache.entry(key).or_insert_with(make).clone()
}

fn texts(table: &HashMap<u64, String>) -> HashMap<u64, Text> {
    table.iter().map(|(k, v)| (*k, v.as_str().into())).collect()
}

fn name(table: &HashMap<u64, Text>, v: u64) -> Text {
    table
        .get(&v)
        .cloned()
        .unwrap_or_else(|| format!("UNKNOWN_{v}").into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::tracefs::Format;

    const RECV_RESET: &str = "\
	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:__u16 sport;	offset:16;	size:2;	signed:0;
	field:__u16 dport;	offset:18;	size:2;	signed:0;
	field:__u16 family;	offset:20;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:22;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:26;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:30;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:46;	size:16;	signed:0;
	field:__u64 sock_cookie;	offset:64;	size:8;	signed:0;
";

    // 5.10: no family field.
    const RECV_RESET_510: &str = "\
	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:__u16 sport;	offset:16;	size:2;	signed:0;
	field:__u16 dport;	offset:18;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:20;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:24;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:28;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:44;	size:16;	signed:0;
";

    const SEND_RESET_618: &str = "\
	field:const void * skbaddr;	offset:8;	size:8;	signed:0;
	field:const void * skaddr;	offset:16;	size:8;	signed:0;
	field:int state;	offset:24;	size:4;	signed:1;
	field:enum sk_rst_reason reason;	offset:28;	size:4;	signed:0;
	field:__u8 saddr[28];	offset:32;	size:28;	signed:0;
	field:__u8 daddr[28];	offset:60;	size:28;	signed:0;
";

    fn decoder(hook: Hook, fmt: &str) -> Decoder {
        let mut info = KernelInfo::default();
        info.formats.insert(hook, Format::parse(fmt).unwrap());
        info.rst_reasons.insert(2, "NO_SOCKET".into());
        Decoder::new(&info)
    }

    fn event(hook: Hook, fill: impl FnOnce(&mut [u8; RAW_MAX])) -> Vec<u8> {
        // SAFETY: Event is integers; all zeros is a valid value.
        let mut ev: Event = unsafe { std::mem::zeroed() };
        ev.hdr.hook = hook as u8;
        ev.hdr.ts_ns = 1_500_000;
        ev.hdr.owner_tgid = 4121;
        ev.hdr.owner_comm[..4].copy_from_slice(b"curl");
        ev.hdr.flags = flags::OWNER_KNOWN;
        ev.hdr.netns = 4026531840;
        fill(&mut ev.raw);
        let p = &ev as *const Event as *const u8;
        // SAFETY: `ev` is alive and fully initialized (no padding: its size is
        // asserted in tracer-common).
        unsafe { std::slice::from_raw_parts(p, size_of::<Event>()) }.to_vec()
    }

    #[test]
    fn decodes_ipv4_receive_reset_with_owner() {
        let mut d = decoder(Hook::ReceiveReset, RECV_RESET);
        let bytes = event(Hook::ReceiveReset, |r| {
            r[8..16].copy_from_slice(&0xffff_8880_1234_5678u64.to_ne_bytes());
            r[16..18].copy_from_slice(&45678u16.to_ne_bytes());
            r[18..20].copy_from_slice(&8080u16.to_ne_bytes());
            r[20..22].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            r[22..26].copy_from_slice(&[10, 0, 0, 1]);
            r[26..30].copy_from_slice(&[10, 0, 0, 2]);
        });
        let r = d.decode(&bytes).unwrap();
        assert_eq!(r.kind, Kind::RstReceived);
        assert_eq!(r.src, Some("10.0.0.1:45678".parse().unwrap()));
        assert_eq!(r.dst, Some("10.0.0.2:8080".parse().unwrap()));
        assert_eq!(
            r.owner,
            Some(Proc {
                pid: 4121,
                comm: "curl".into(),
                cgroup: None,
                workload: None,
            })
        );
        assert_eq!(r.netns, Some(4026531840));
        assert_eq!(
            r.sock.map(|s| s.to_string()).as_deref(),
            Some("0xffff888012345678")
        );
        assert_eq!(r.mono_ns, 1_500_000);
        assert!(r.time.is_empty(), "formatted only when printed");
    }

    #[test]
    fn decodes_510_layout_without_family() {
        let mut d = decoder(Hook::ReceiveReset, RECV_RESET_510);
        let bytes = event(Hook::ReceiveReset, |r| {
            r[16..18].copy_from_slice(&1u16.to_ne_bytes());
            r[18..20].copy_from_slice(&2u16.to_ne_bytes());
            r[20..24].copy_from_slice(&[192, 0, 2, 1]);
            r[24..28].copy_from_slice(&[192, 0, 2, 2]);
            // IPv4-mapped ::ffff:192.0.2.1
            r[38..40].copy_from_slice(&[0xff, 0xff]);
            r[40..44].copy_from_slice(&[192, 0, 2, 1]);
        });
        let r = d.decode(&bytes).unwrap();
        assert_eq!(r.src, Some("192.0.2.1:1".parse().unwrap()));
        let bytes6 = event(Hook::ReceiveReset, |r| {
            r[28..44].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
            r[44..60].copy_from_slice(&"2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        });
        let r = d.decode(&bytes6).unwrap();
        assert_eq!(r.dst, Some("[2001:db8::2]:0".parse().unwrap()));
    }

    #[test]
    fn decodes_sockaddr_layout_and_reason() {
        let mut d = decoder(Hook::SendReset, SEND_RESET_618);
        let bytes = event(Hook::SendReset, |r| {
            r[24..28].copy_from_slice(&7i32.to_ne_bytes());
            r[28..32].copy_from_slice(&2u32.to_ne_bytes());
            r[32..34].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            r[34..36].copy_from_slice(&8080u16.to_be_bytes());
            r[36..40].copy_from_slice(&[10, 0, 0, 2]);
            r[60..62].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            r[62..64].copy_from_slice(&40000u16.to_be_bytes());
            r[68..84].copy_from_slice(&"::ffff:10.0.0.1".parse::<Ipv6Addr>().unwrap().octets());
        });
        let r = d.decode(&bytes).unwrap();
        assert_eq!(r.reason.as_deref(), Some("NO_SOCKET"));
        assert_eq!(r.state, Some(TcpState::Close));
        assert_eq!(r.src, Some("10.0.0.2:8080".parse().unwrap()));
        assert_eq!(r.dst, Some("10.0.0.1:40000".parse().unwrap()));
    }

    #[test]
    fn decodes_state_changes_read_from_the_socket() {
        // No format at all: the raw-tracepoint hook's events need none.
        let mut d = Decoder::new(&KernelInfo::default());
        let info = |family: i32, saddr: [u8; 16], daddr: [u8; 16]| SockInfo {
            oldstate: tracer_common::tcp_state::SYN_SENT,
            newstate: tracer_common::tcp_state::CLOSE,
            state: 0,
            error: 0,
            family: family as u16,
            sport: 45678,
            dport: 8080,
            _pad: 0,
            saddr,
            daddr,
        };
        let mut v4 = [[0u8; 16]; 2];
        v4[0][..4].copy_from_slice(&[10, 0, 0, 1]);
        v4[1][..4].copy_from_slice(&[10, 0, 0, 2]);
        let mapped = "::ffff:10.0.0.2".parse::<Ipv6Addr>().unwrap().octets();
        let v6 = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets();
        for (s, want_src, want_dst) in [
            (
                info(libc::AF_INET, v4[0], v4[1]),
                "10.0.0.1:45678",
                "10.0.0.2:8080",
            ),
            (
                info(libc::AF_INET6, v6, mapped),
                "[2001:db8::1]:45678",
                "10.0.0.2:8080",
            ),
        ] {
            let mut bytes = event(Hook::SetState, |r| {
                // SAFETY: a SockInfo fits in the RAW_MAX bytes of `r` (asserted).
                unsafe { std::ptr::write_unaligned(r.as_mut_ptr() as *mut SockInfo, s) }
            });
            let flags_off = std::mem::offset_of!(EventHeader, flags);
            bytes[flags_off] |= flags::SOCK_INFO;
            let r = d.decode(&bytes).unwrap();
            assert_eq!(r.kind, Kind::State);
            assert_eq!(r.src, Some(want_src.parse().unwrap()));
            assert_eq!(r.dst, Some(want_dst.parse().unwrap()));
            assert_eq!(
                (r.old_state, r.new_state),
                (Some(TcpState::SynSent), Some(TcpState::Close))
            );
            assert_eq!(r.state, None);
            assert_eq!(r.owner.as_ref().map(|o| o.pid), Some(4121));
        }
        // Other hooks: their own fields only.
        let mut s = info(libc::AF_INET, v4[0], v4[1]);
        (s.error, s.state) = (libc::ETIMEDOUT, 0);
        let mut bytes = event(Hook::ErrorReport, |r| {
            // SAFETY: a SockInfo fits in the RAW_MAX bytes of `r` (asserted).
            unsafe { std::ptr::write_unaligned(r.as_mut_ptr() as *mut SockInfo, s) }
        });
        bytes[std::mem::offset_of!(EventHeader, flags)] |= flags::SOCK_INFO;
        let r = d.decode(&bytes).unwrap();
        assert_eq!(
            (r.kind, r.errno, r.old_state),
            (Kind::Error, Some(110), None)
        );
        (s.error, s.state) = (0, tracer_common::tcp_state::SYN_SENT);
        let mut bytes = event(Hook::RetransmitSkb, |r| {
            // SAFETY: a SockInfo fits in the RAW_MAX bytes of `r` (asserted).
            unsafe { std::ptr::write_unaligned(r.as_mut_ptr() as *mut SockInfo, s) }
        });
        bytes[std::mem::offset_of!(EventHeader, flags)] |= flags::SOCK_INFO;
        let r = d.decode(&bytes).unwrap();
        assert_eq!((r.state, r.errno), (Some(TcpState::SynSent), None));
    }

    /// An RST received in SYN_SENT whose death and errno the kernel folded into it
    /// unfolds into the three records the hooks would have written; without the flags,
    /// or for the next record, nothing.
    #[test]
    fn a_folded_rst_unfolds_into_its_death_and_errno() {
        let mut d = Decoder::new(&KernelInfo::default());
        let mut a = [[0u8; 16]; 2];
        a[0][..4].copy_from_slice(&[10, 0, 0, 1]);
        a[1][..4].copy_from_slice(&[10, 0, 0, 2]);
        let s = SockInfo {
            oldstate: 0,
            newstate: 0,
            state: 0,
            error: 0,
            family: libc::AF_INET as u16,
            sport: 45678,
            dport: 8080,
            _pad: 0,
            saddr: a[0],
            daddr: a[1],
        };
        let rst = |folded: u8| {
            let mut bytes = event(Hook::ReceiveReset, |r| {
                // SAFETY: a SockInfo fits in the RAW_MAX bytes of `r` (asserted).
                unsafe { std::ptr::write_unaligned(r.as_mut_ptr() as *mut SockInfo, s) }
            });
            bytes[std::mem::offset_of!(EventHeader, flags)] |= flags::SOCK_INFO | folded;
            bytes
        };
        let r = d
            .decode(&rst(flags::FOLDED_DEATH | flags::FOLDED_ERRNO))
            .unwrap();
        assert_eq!((r.kind, r.state), (Kind::RstReceived, None));
        let [Some(death), Some(errno)] = d.unfold(&r) else {
            panic!("two records");
        };
        assert_eq!(death.kind, Kind::State);
        assert_eq!(
            (death.old_state, death.new_state),
            (Some(TcpState::SynSent), Some(TcpState::Close))
        );
        assert_eq!(
            (death.src, death.dst, death.sock, death.mono_ns),
            (r.src, r.dst, r.sock, r.mono_ns)
        );
        assert_eq!(death.owner.as_ref().map(|o| o.pid), Some(4121));
        assert_eq!(
            (errno.kind, errno.errno, errno.errno_name),
            (Kind::Error, Some(111), Some("ECONNREFUSED"))
        );
        assert_eq!((errno.src, errno.dst), (r.src, r.dst));
        assert_eq!(
            (errno.sock, errno.owner.is_none(), errno.netns),
            (None, true, None)
        );
        assert!(matches!(d.unfold(&r), [None, None]), "unfolded once");

        // A dead socket: the death alone.
        let r = d.decode(&rst(flags::FOLDED_DEATH)).unwrap();
        assert!(matches!(d.unfold(&r), [Some(_), None]));
        // Not folded.
        let r = d.decode(&rst(0)).unwrap();
        assert!(matches!(d.unfold(&r), [None, None]));
    }

    #[test]
    fn rejects_short_and_unknown_events() {
        let mut d = decoder(Hook::SendReset, SEND_RESET_618);
        assert!(matches!(
            d.decode(&[0u8; 10]),
            Err(DecodeError::Size { .. })
        ));
        let mut bytes = event(Hook::SendReset, |_| {});
        let hook_off = std::mem::offset_of!(EventHeader, hook);
        bytes[hook_off] = 200;
        assert_eq!(d.decode(&bytes), Err(DecodeError::Hook(200)));
        bytes[hook_off] = Hook::ReceiveReset as u8;
        assert_eq!(
            d.decode(&bytes),
            Err(DecodeError::NoLayout(Hook::ReceiveReset))
        );
    }
}
