//! Maps and helpers shared by every hook.
//!
//! Each tracepoint program copies the first `RAW_MAX` bytes of its record into a
//! per-CPU scratch event with one helper call, filters on fields read from that copy
//! (at offsets the agent read from the running kernel's format files), and only then
//! writes the event to the ring buffer. The scratch copy lets the programs read fields
//! at run-time offsets, which the verifier refuses on the tracepoint context itself.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
    EbpfContext,
};
use tracer_common::{
    flags, Config, Event, EventHeader, Hook, ListenKey, ListenOwner, RecordLayout, SockInfo,
    SockOwner, DEFAULT_RING_BYTES, NO_FIELD, NO_OFFSET, RAW_MAX,
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);

/// Failed ring-buffer writes, per hook.
#[map]
pub static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(Hook::COUNT as u32, 0);

#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Socket ownership, keyed by the kernel socket address. LRU so that sockets whose
/// destruction we missed (created before rstrace started) cannot fill it.
#[map]
pub static SOCKS: LruHashMap<u64, SockOwner> = LruHashMap::with_max_entries(65536, 0);

/// Owner of each listening port, so that accepted sockets (created in softirq)
/// inherit the listener's process rather than whatever task ran. The first listener
/// of a port keeps the entry: a listen() that fails with EADDRINUSE (LISTEN, then
/// CLOSE) or a second SO_REUSEPORT socket must not replace or remove it. The agent
/// adds the listeners that were there before it started.
#[map]
pub static LISTENERS: HashMap<ListenKey, ListenOwner> = HashMap::with_max_entries(8192, 0);

const CONNECT_SLOTS: u32 = 32768;
/// User addresses are below 2^56 (5-level paging included); the bits above hold the
/// part of the thread id the slot's index does not.
const CONNECT_TID_SHIFT: u32 = 56;
const CONNECT_ADDR_MASK: u64 = (1 << CONNECT_TID_SHIFT) - 1;
const CONNECT_SENT: u64 = 1 << 63;

/// A connect() in progress per thread, at tid % CONNECT_SLOTS: an array element is
/// found without a hash or lock (an LRU hash by thread cost ~440 ns per connect hook).
/// Each slot is one word, read and written whole: the sockaddr pointer, tagged with
/// tid / CONNECT_SLOTS (tids stay below 2^22, so the tag leaves bit 63 free), 0 when
/// empty. Bit 63 marks a connect whose socket reached SYN_SENT: its exit is reported
/// only for the one error that comes after that (no free local port). Two threads
/// sharing a slot (tids equal modulo its size, both in connect() at once) are told
/// apart by the tag: the displaced one's report is missed, never misattributed. (A
/// per-CPU slot was cheaper still but wrong under preemption, and the 5.10 guest had
/// soft lockups with it.)
#[map]
pub static CONNECTS: Array<u64> = Array::with_max_entries(CONNECT_SLOTS, 0);

/// The slot of thread `tid`, and the tag its entries carry.
#[inline(always)]
fn connect_slot(tid: u32) -> Option<(*mut u64, u64)> {
    let slot = CONNECTS.get_ptr_mut(tid % CONNECT_SLOTS)?;
    Some((slot, ((tid / CONNECT_SLOTS) as u64) << CONNECT_TID_SHIFT))
}

/// Remembers the sockaddr pointer of this thread's connect().
#[inline(always)]
pub fn connect_begin(tid: u32, uaddr: u64) {
    if let Some((slot, tag)) = connect_slot(tid) {
        // SAFETY: `slot` is an element of CONNECTS, alive as long as the program; one
        // aligned word written whole (a thread on another CPU sees one value or the
        // other).
        unsafe { core::ptr::write_volatile(slot, tag | (uaddr & CONNECT_ADDR_MASK)) };
    }
}

/// Marks this thread's connect() as past SYN_SENT (the TCP hooks tell the rest, but
/// for an error inet_hash_connect returns after the transition: no local port).
#[inline(always)]
pub fn connect_mark_sent(tid: u32) {
    if let Some((slot, tag)) = connect_slot(tid) {
        // SAFETY: as in connect_begin, read whole.
        let v = unsafe { core::ptr::read_volatile(slot) };
        if v & !(CONNECT_ADDR_MASK | CONNECT_SENT) == tag && v & CONNECT_ADDR_MASK != 0 {
            // SAFETY: as in connect_begin.
            unsafe { core::ptr::write_volatile(slot, v | CONNECT_SENT) };
        }
    }
}

/// Takes this thread's sockaddr pointer, if its slot holds one, and whether its socket
/// reached SYN_SENT.
#[inline(always)]
pub fn connect_take(tid: u32) -> Option<(u64, bool)> {
    let (slot, tag) = connect_slot(tid)?;
    // SAFETY: as in connect_begin, read whole.
    let v = unsafe { core::ptr::read_volatile(slot) };
    let uaddr = v & CONNECT_ADDR_MASK;
    if v & !(CONNECT_ADDR_MASK | CONNECT_SENT) != tag || uaddr == 0 {
        return None;
    }
    // SAFETY: as in connect_begin.
    unsafe { core::ptr::write_volatile(slot, 0) };
    Some((uaddr, v & CONNECT_SENT != 0))
}

#[map]
static SCRATCH: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    let c = CONFIG.get(0)?;
    if c.ready == 0 {
        return None;
    }
    Some(c)
}

/// A per-CPU event being built.
pub struct Pending {
    pub ev: &'static mut Event,
    pub cfg: &'static Config,
    pub layout: RecordLayout,
}

/// Copies the record of `hook` into the scratch event, or None when the hook is not
/// configured on this kernel.
#[inline(always)]
pub fn load_record(ctx: &TracePointContext, hook: Hook) -> Option<Pending> {
    let cfg = config()?;
    let layout = *cfg.layouts.get(hook as usize)?;
    if layout.len == 0 {
        return None;
    }
    // SAFETY: this CPU's element of a per-CPU array, alive as long as the program, and
    // only tracepoint programs use it: the kernel runs one tracepoint or kprobe program
    // at a time per CPU (a shared per-CPU guard), so this run has it alone until it
    // returns, and the Pending holding it does not outlive the run.
    let ev = unsafe { &mut *SCRATCH.get_ptr_mut(0)? };
    // The record lives in a per-CPU trace buffer far larger than RAW_MAX, so a
    // fixed-size copy is always in bounds even for shorter records.
    // SAFETY: the helper checks the source (a fault is an error, not a crash) and
    // writes only the RAW_MAX bytes of `ev.raw`.
    unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, &mut ev.raw).ok()? };
    ev.hdr.hook = hook as u8;
    ev.hdr.flags = 0;
    ev.hdr.raw_len = if (layout.len as usize) < RAW_MAX {
        layout.len
    } else {
        RAW_MAX as u16
    };
    ev.hdr.skaddr = 0;
    ev.hdr.netns = 0;
    ev.hdr.retrans = 0;
    ev.hdr.ack_backlog = 0;
    ev.hdr.max_ack_backlog = 0;
    ev.hdr.owner_tgid = 0;
    ev.hdr.owner_since_ns = 0;
    ev.hdr.owner_cgroup = 0;
    ev.hdr.owner_comm = [0; 16];
    Some(Pending { ev, cfg, layout })
}

/// Reads a `T` at `off` in the copied record, None when the field is absent.
///
/// Through a helper rather than a direct load: the 6.1 verifier loses the bound check
/// when the compiler checks one copy of the offset and reloads another from the stack
/// ("invalid access to map value ... off=65624"), and rejects the whole program.
#[inline(always)]
fn raw_read<T>(raw: &[u8; RAW_MAX], off: u16) -> Option<T> {
    let o = off as usize;
    if off == NO_FIELD || o > RAW_MAX - core::mem::size_of::<T>() {
        return None;
    }
    // SAFETY: `o + size_of::<T>()` is within `raw` (checked above).
    let field = unsafe { raw.as_ptr().add(o) };
    // SAFETY: the helper checks the read anyway; T is an integer at every call, valid
    // for any bytes.
    unsafe { bpf_probe_read_kernel(field as *const T).ok() }
}

#[inline(always)]
pub fn raw_u64(raw: &[u8; RAW_MAX], off: u16) -> Option<u64> {
    raw_read(raw, off)
}

#[inline(always)]
pub fn raw_i32(raw: &[u8; RAW_MAX], off: u16) -> Option<i32> {
    raw_read(raw, off)
}

#[inline(always)]
pub fn raw_u16(raw: &[u8; RAW_MAX], off: u16) -> Option<u16> {
    raw_read(raw, off)
}

/// Reads a field at a constant offset straight from the tracepoint record (see
/// `tracer_common::fixed`); the verifier checks the offset against the record size
/// when the program is attached.
#[inline(always)]
pub fn ctx_field<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    // SAFETY: the verifier proves `off + size_of::<T>()` within the record when the
    // program loads (else it refuses the program).
    let field = unsafe { (ctx.as_ptr() as *const u8).add(off) };
    // SAFETY: as above; T is an integer at every call, valid for any bytes.
    unsafe { core::ptr::read_unaligned(field as *const T) }
}

/// Reads a `T` at `base + off` in kernel memory.
#[inline(always)]
pub fn kread<T>(base: u64, off: u32) -> Option<T> {
    if base == 0 || off == NO_OFFSET {
        return None;
    }
    // SAFETY: the helper checks the kernel address (a fault is an error); T is an
    // integer or a byte array at every call, valid for any bytes.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// Network namespace inode of a socket.
#[inline(always)]
pub fn sock_netns(cfg: &Config, sk: u64) -> u32 {
    let net: u64 = kread(sk, cfg.offsets.sk_net).unwrap_or(0);
    kread(net, cfg.offsets.net_inum).unwrap_or(0)
}

/// Network namespace inode of a packet, through its device.
#[inline(always)]
pub fn skb_netns(cfg: &Config, skb: u64) -> u32 {
    let dev: u64 = kread(skb, cfg.offsets.skb_dev).unwrap_or(0);
    let net: u64 = kread(dev, cfg.offsets.dev_net).unwrap_or(0);
    kread(net, cfg.offsets.net_inum).unwrap_or(0)
}

/// Copies a listener's accept queue depth and limit into the event.
#[inline(always)]
pub fn fill_queue(cfg: &Config, ev: &mut Event, sk: u64) {
    if let (Some(depth), Some(max)) = (
        kread::<u32>(sk, cfg.offsets.sk_ack_backlog),
        kread::<u32>(sk, cfg.offsets.sk_max_ack_backlog),
    ) {
        ev.hdr.ack_backlog = depth;
        ev.hdr.max_ack_backlog = max;
        ev.hdr.flags |= flags::QUEUE_KNOWN;
    }
}

/// The current task as a socket owner. Only meaningful in process context.
#[inline(always)]
pub fn current_owner(netns: u32) -> SockOwner {
    SockOwner {
        // SAFETY: a helper without arguments.
        since_ns: unsafe { bpf_ktime_get_ns() },
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        netns,
        retrans: 0,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        // SAFETY: a helper without arguments (tracepoints and raw tracepoints since
        // 4.18); on a hybrid host, the unified hierarchy's cgroup.
        cgroup: unsafe { bpf_get_current_cgroup_id() },
    }
}

/// Fills the socket, owner and namespace of the event from the ownership map, and
/// the namespace from the socket itself when the map does not know it.
#[inline(always)]
pub fn attribute(cfg: &Config, ev: &mut Event, sk: u64) {
    ev.hdr.skaddr = sk;
    if sk == 0 {
        return;
    }
    // SAFETY: the value stays allocated for this run (map values are freed after an
    // RCU grace period); another CPU may rewrite it meanwhile, which at worst mixes
    // two owners' integers, and the fields are copied out at once.
    if let Some(o) = unsafe { SOCKS.get(sk) } {
        ev.hdr.owner_tgid = o.tgid;
        ev.hdr.owner_comm = o.comm;
        ev.hdr.owner_since_ns = o.since_ns;
        ev.hdr.owner_cgroup = o.cgroup;
        ev.hdr.retrans = o.retrans;
        ev.hdr.netns = o.netns;
        ev.hdr.flags |= flags::OWNER_KNOWN;
    }
    if ev.hdr.netns == 0 {
        ev.hdr.netns = sock_netns(cfg, sk);
    }
}

/// Stamps and writes the event; a full ring buffer is counted as a loss of `hook`.
/// The reader polls the ring while events come, so it is woken only when a backlog
/// builds up; asleep, it sets `wake_bytes` to 0 and every event wakes it.
#[inline(always)]
pub fn submit(cfg: &Config, ev: &mut Event, hook: Hook) {
    // SAFETY: a helper without arguments.
    ev.hdr.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.hdr.cur_pid_tgid = bpf_get_current_pid_tgid();
    ev.hdr.cur_comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= cfg.wake_bytes as u64 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<Event>(&*ev, flags as u64).is_err() {
        if let Some(n) = LOSSES.get_ptr_mut(hook as u32) {
            // SAFETY: this CPU's counter of a per-CPU array, alive as long as the
            // program; a raw tracepoint nested on this CPU may lose one count, nothing
            // more.
            unsafe { *n += 1 };
        }
    }
}

/// The fields a socket hook's tracepoint record would hold, read from the socket the
/// way the tracepoint reads them (inet_sock ports and source, sock_common peer).
#[inline(always)]
pub fn sock_info(cfg: &Config, sk: u64) -> SockInfo {
    const AF_INET6: u16 = 10;
    let o = &cfg.offsets;
    let family = kread::<u16>(sk, o.skc_family).unwrap_or(0);
    let mut info = SockInfo {
        oldstate: 0,
        newstate: 0,
        state: 0,
        error: 0,
        family,
        sport: u16::from_be(kread::<u16>(sk, o.inet_sport).unwrap_or(0)),
        dport: u16::from_be(kread::<u16>(sk, o.skc_dport).unwrap_or(0)),
        _pad: 0,
        saddr: [0; 16],
        daddr: [0; 16],
    };
    if family == AF_INET6 {
        info.saddr = kread(sk, o.skc_v6_rcv_saddr).unwrap_or([0; 16]);
        info.daddr = kread(sk, o.skc_v6_daddr).unwrap_or([0; 16]);
    } else {
        let s: [u8; 4] = kread(sk, o.inet_saddr).unwrap_or([0; 4]);
        let d: [u8; 4] = kread(sk, o.skc_daddr).unwrap_or([0; 4]);
        info.saddr[..4].copy_from_slice(&s);
        info.daddr[..4].copy_from_slice(&d);
    }
    info
}

/// Reports `info` as an event of `hook` on `sk`, with the socket's owner; returns the
/// namespace. Built on the stack: raw tracepoint programs are not serialized with the
/// others (see SCRATCH_DROP), so they cannot share SCRATCH.
#[inline(always)]
pub fn report_sock(cfg: &Config, hook: Hook, sk: u64, info: SockInfo) -> u32 {
    let mut ev = stack_event(hook, flags::SOCK_INFO, core::mem::size_of::<SockInfo>());
    // SAFETY: a SockInfo fits in RAW_MAX bytes (asserted in tracer-common).
    unsafe {
        core::ptr::write_unaligned(ev.raw.as_mut_ptr() as *mut SockInfo, info);
    }
    attribute(cfg, &mut ev, sk);
    let netns = ev.hdr.netns;
    submit(cfg, &mut ev, hook);
    netns
}

#[inline(always)]
fn stack_event(hook: Hook, flags: u8, raw_len: usize) -> Event {
    Event {
        hdr: EventHeader {
            ts_ns: 0,
            cur_pid_tgid: 0,
            skaddr: 0,
            owner_since_ns: 0,
            owner_cgroup: 0,
            owner_tgid: 0,
            netns: 0,
            retrans: 0,
            ack_backlog: 0,
            max_ack_backlog: 0,
            hook: hook as u8,
            flags,
            raw_len: raw_len as u16,
            cur_comm: [0; 16],
            owner_comm: [0; 16],
        },
        raw: [0; RAW_MAX],
    }
}

/// Scratch for kfree_skb, apart from SCRATCH: a drop can fire inside another hook's
/// softirq on the same CPU while that hook is building its event.
#[map]
pub static SCRATCH_DROP: PerCpuArray<Event> = PerCpuArray::with_max_entries(1, 0);
