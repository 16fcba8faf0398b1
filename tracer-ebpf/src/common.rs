//! Maps and helpers shared by every hook.
//!
//! Events are written in place: a program reserves its record in the ring buffer,
//! fills it and submits it (no copy from a scratch buffer or the stack). A tracepoint
//! program that must filter first copies the first `RAW_MAX` bytes of its record into
//! a per-CPU scratch event with one helper call and filters on fields read from that
//! copy (at offsets the agent read from the running kernel's format files): the
//! verifier refuses run-time offsets on the tracepoint context itself.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
    },
    macros::map,
    maps::{ring_buf::RingBufEntry, Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
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

const FOLD_SLOTS: u32 = 4096;
/// The low bits of a folded entry (socket addresses are 64-byte aligned): the death
/// and the errno still to come.
const FOLD_DEATH: u64 = 1;
const FOLD_ERRNO: u64 = 2;

/// RSTs received in SYN_SENT whose record stands for what `tcp_reset` does next (see
/// `tracer_common::fold`): one word per slot, the socket's address with the events
/// still to come in its low bits, 0 when empty. Indexed by the socket's address, not
/// by CPU: the backlog path runs `tcp_reset` preemptible, and another reset may land
/// on the CPU between its events. The socket is locked meanwhile, so no other CPU
/// touches the same entry; two sockets sharing a slot within that window only cost
/// the first its fold (its events are written as usual and the agent keeps one).
#[map]
pub static FOLDS: Array<u64> = Array::with_max_entries(FOLD_SLOTS, 0);

#[inline(always)]
fn fold_slot(sk: u64) -> Option<*mut u64> {
    FOLDS.get_ptr_mut(((sk >> 6) ^ (sk >> 18)) as u32 % FOLD_SLOTS)
}

/// Remembers that the RST record of `sk` stands for its death and, with `errno`, for
/// the error report after it.
#[inline(always)]
pub fn fold_begin(sk: u64, errno: bool) {
    if let Some(slot) = fold_slot(sk) {
        let bits = if errno {
            FOLD_DEATH | FOLD_ERRNO
        } else {
            FOLD_DEATH
        };
        // SAFETY: an element of FOLDS, alive as long as the program; one aligned word
        // written whole.
        unsafe { core::ptr::write_volatile(slot, sk | bits) };
    }
}

/// Whether the event `bit` (FOLD_DEATH or FOLD_ERRNO) of `sk` was folded into its RST
/// record, consuming it: the caller then writes nothing.
#[inline(always)]
fn fold_take(sk: u64, bit: u64) -> bool {
    let Some(slot) = fold_slot(sk) else {
        return false;
    };
    // SAFETY: as in fold_begin, read whole.
    let v = unsafe { core::ptr::read_volatile(slot) };
    if v & !(FOLD_DEATH | FOLD_ERRNO) != sk || v & bit == 0 {
        return false;
    }
    let left = v & !bit;
    // SAFETY: as in fold_begin.
    unsafe {
        core::ptr::write_volatile(
            slot,
            if left & (FOLD_DEATH | FOLD_ERRNO) == 0 {
                0
            } else {
                left
            },
        )
    };
    true
}

/// The SYN_SENT -> CLOSE change of `sk` was folded into its RST record.
#[inline(always)]
pub fn fold_take_death(cfg: &Config, sk: u64) -> bool {
    cfg.fold & tracer_common::fold::DEATH != 0 && fold_take(sk, FOLD_DEATH)
}

/// The ECONNREFUSED report of `sk` was folded into its RST record.
#[inline(always)]
pub fn fold_take_errno(cfg: &Config, sk: u64) -> bool {
    cfg.fold & tracer_common::fold::ERRNO != 0 && fold_take(sk, FOLD_ERRNO)
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
    // SAFETY: the header is 8-aligned words of integers.
    unsafe {
        zero_words::<{ core::mem::size_of::<EventHeader>() / 8 }>(
            &mut ev.hdr as *mut EventHeader as *mut u64,
        )
    };
    ev.hdr.hook = hook as u8;
    ev.hdr.raw_len = if (layout.len as usize) < RAW_MAX {
        layout.len
    } else {
        RAW_MAX as u16
    };
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

/// Copies a listener's accept queue depth and limit into the header.
#[inline(always)]
pub fn fill_queue(cfg: &Config, hdr: &mut EventHeader, sk: u64) {
    if let (Some(depth), Some(max)) = (
        kread::<u32>(sk, cfg.offsets.sk_ack_backlog),
        kread::<u32>(sk, cfg.offsets.sk_max_ack_backlog),
    ) {
        hdr.ack_backlog = depth;
        hdr.max_ack_backlog = max;
        hdr.flags |= flags::QUEUE_KNOWN;
    }
}

/// Writes the current task's name to `dst` (zeroes when the helper fails). Straight
/// into its destination: aya's wrapper zeroes a byte array first, which this target
/// does byte by byte.
///
/// # Safety
/// `dst` is valid for 16 bytes.
#[inline(always)]
unsafe fn comm_into(dst: *mut [u8; 16]) {
    // SAFETY: the helper writes at most 16 bytes, as the caller vouches for.
    unsafe {
        aya_ebpf::helpers::generated::bpf_get_current_comm(dst as *mut core::ffi::c_void, 16)
    };
}

/// The current task's name.
#[inline(always)]
fn current_comm() -> [u8; 16] {
    let mut comm = core::mem::MaybeUninit::<[u8; 16]>::uninit();
    // SAFETY: 16 bytes of our own.
    unsafe { comm_into(comm.as_mut_ptr()) };
    // SAFETY: written above; any bytes are a name.
    unsafe { comm.assume_init() }
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
        comm: current_comm(),
        // SAFETY: a helper without arguments (tracepoints and raw tracepoints since
        // 4.18); on a hybrid host, the unified hierarchy's cgroup.
        cgroup: unsafe { bpf_get_current_cgroup_id() },
    }
}

/// Fills the socket, owner and namespace of the event from the ownership map, and
/// the namespace from the socket itself when the map does not know it.
#[inline(always)]
pub fn attribute(cfg: &Config, hdr: &mut EventHeader, sk: u64) {
    hdr.skaddr = sk;
    if sk == 0 {
        return;
    }
    // SAFETY: the value stays allocated for this run (map values are freed after an
    // RCU grace period); another CPU may rewrite it meanwhile, which at worst mixes
    // two owners' integers, and the fields are copied out at once.
    if let Some(o) = unsafe { SOCKS.get(sk) } {
        set_owner(hdr, o);
    }
    if hdr.netns == 0 {
        hdr.netns = sock_netns(cfg, sk);
    }
}

/// Names `o` as the event's owner (with its namespace and retransmit count).
#[inline(always)]
pub fn set_owner(hdr: &mut EventHeader, o: &SockOwner) {
    hdr.owner_tgid = o.tgid;
    // SAFETY: both are 16 bytes at 8-aligned offsets of 8-aligned structs.
    unsafe { copy16(&mut hdr.owner_comm, &o.comm) };
    hdr.owner_since_ns = o.since_ns;
    hdr.owner_cgroup = o.cgroup;
    hdr.retrans = o.retrans;
    hdr.netns = o.netns;
    hdr.flags |= flags::OWNER_KNOWN;
}

/// Stamps the header with the time and the current task.
#[inline(always)]
fn stamp(hdr: &mut EventHeader) {
    // SAFETY: a helper without arguments.
    hdr.ts_ns = unsafe { bpf_ktime_get_ns() };
    hdr.cur_pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the field's 16 bytes.
    unsafe { comm_into(&mut hdr.cur_comm) };
}

/// Zeroes `N` words at `p`, one store each. Volatile: the compiler would merge plain
/// stores into a memset, which the BPF target calls as a byte-by-byte loop (several
/// hundred instructions per event).
///
/// # Safety
/// `p` is valid and 8-aligned for `N` words.
#[inline(always)]
pub unsafe fn zero_words<const N: usize>(p: *mut u64) {
    for i in 0..N {
        // SAFETY: within the N words the caller vouches for.
        let w = unsafe { p.add(i) };
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(w, 0) };
    }
}

/// Copies a 16-byte name as two words (a plain assignment becomes a memmove call,
/// byte by byte).
///
/// # Safety
/// Both are 8-aligned.
#[inline(always)]
#[expect(
    clippy::cast_ptr_alignment,
    clippy::multiple_unsafe_ops_per_block,
    reason = "two aligned words, as the caller vouches"
)]
pub unsafe fn copy16(dst: *mut [u8; 16], src: *const [u8; 16]) {
    let (d, s) = (dst as *mut u64, src as *const u64);
    // SAFETY: two aligned words each, as the caller vouches.
    unsafe {
        core::ptr::write_volatile(d, core::ptr::read_volatile(s));
        core::ptr::write_volatile(d.add(1), core::ptr::read_volatile(s.add(1)));
    }
}

/// Ring-buffer flags for a write: the reader polls the ring while events come, so it
/// is woken only when a backlog builds up; asleep, it sets `wake_bytes` to 0 and
/// every event wakes it.
#[inline(always)]
fn wake_flags(cfg: &Config) -> u64 {
    (if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= cfg.wake_bytes as u64 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }) as u64
}

#[inline(always)]
fn count_loss(hook: Hook) {
    if let Some(n) = LOSSES.get_ptr_mut(hook as u32) {
        // SAFETY: this CPU's counter of a per-CPU array, alive as long as the program;
        // a raw tracepoint nested on this CPU may lose one count, nothing more.
        unsafe { *n += 1 };
    }
}

/// Stamps and writes a scratch event (a tracepoint fallback that filtered its copied
/// record); a full ring buffer is counted as a loss of `hook`.
#[inline(always)]
pub fn submit(cfg: &Config, ev: &mut Event, hook: Hook) {
    stamp(&mut ev.hdr);
    if EVENTS.output::<Event>(&*ev, wake_flags(cfg)).is_err() {
        count_loss(hook);
    }
}

/// An event reserved in the ring buffer, its header written, its payload not yet.
pub struct Slot {
    entry: RingBufEntry<Event>,
}

impl Slot {
    /// Reserves an event of `hook` with a zeroed header; a full ring buffer is counted
    /// as a loss of `hook`.
    #[inline(always)]
    #[expect(
        clippy::multiple_unsafe_ops_per_block,
        reason = "the header's fields, written under one argument"
    )]
    pub fn reserve(hook: Hook, flags: u8, raw_len: usize) -> Option<Slot> {
        let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
            count_loss(hook);
            return None;
        };
        let ev = entry.as_mut_ptr();
        const WORDS: usize = core::mem::size_of::<EventHeader>() / 8;
        // SAFETY: the entry is this program's until submitted or discarded, 8-aligned
        // (ring records are); the header is written whole before any reference to it
        // is made.
        unsafe {
            zero_words::<WORDS>(ev as *mut u64);
            core::ptr::addr_of_mut!((*ev).hdr.hook).write(hook as u8);
            core::ptr::addr_of_mut!((*ev).hdr.flags).write(flags);
            core::ptr::addr_of_mut!((*ev).hdr.raw_len).write(raw_len as u16);
        }
        Some(Slot { entry })
    }

    #[inline(always)]
    pub fn hdr(&mut self) -> &mut EventHeader {
        // SAFETY: written whole in `reserve`.
        unsafe { &mut (*self.entry.as_mut_ptr()).hdr }
    }

    /// The payload bytes, uninitialized until written.
    #[inline(always)]
    pub fn raw_ptr(&mut self) -> *mut u8 {
        // SAFETY: a field of the reserved entry; no reference is made.
        unsafe { core::ptr::addr_of_mut!((*self.entry.as_mut_ptr()).raw) as *mut u8 }
    }

    /// Writes `v` at the start of the payload.
    #[inline(always)]
    pub fn put<T>(&mut self, v: T) {
        // SAFETY: the payload's first bytes, as `payload` checks.
        unsafe { self.payload::<T>().write(v) };
    }

    /// The payload as a `T` to fill field by field: it fits and is aligned (the
    /// payload is 8-aligned, asserted in tracer-common).
    #[inline(always)]
    pub fn payload<T>(&mut self) -> *mut T {
        const {
            assert!(core::mem::size_of::<T>() <= RAW_MAX);
            assert!(core::mem::align_of::<T>() <= 8);
        };
        self.raw_ptr() as *mut T
    }

    /// Stamps the header and hands the event to the reader.
    #[inline(always)]
    pub fn submit(mut self, cfg: &Config) {
        stamp(self.hdr());
        self.entry.submit(wake_flags(cfg));
    }

    #[inline(always)]
    pub fn discard(self) {
        self.entry.discard(BPF_RB_NO_WAKEUP as u64);
    }
}

/// Reserves an event of `hook` and copies the first `RAW_MAX` bytes of its tracepoint
/// record into it with one helper call (for hooks that report every record).
#[inline(always)]
pub fn reserve_record(
    ctx: &TracePointContext,
    hook: Hook,
) -> Option<(Slot, &'static Config, RecordLayout)> {
    let cfg = config()?;
    let layout = *cfg.layouts.get(hook as usize)?;
    if layout.len == 0 {
        return None;
    }
    let raw_len = if (layout.len as usize) < RAW_MAX {
        layout.len as usize
    } else {
        RAW_MAX
    };
    let mut slot = Slot::reserve(hook, 0, raw_len)?;
    // The record lives in a per-CPU trace buffer far larger than RAW_MAX, so a
    // fixed-size copy is always in bounds even for shorter records.
    // SAFETY: the helper checks the source (a fault is an error, not a crash) and
    // writes RAW_MAX bytes, the payload's size.
    if !unsafe { read_into(slot.raw_ptr(), RAW_MAX as u32, ctx.as_ptr() as u64, 0) } {
        slot.discard();
        return None;
    }
    Some((slot, cfg, layout))
}

impl Slot {
    /// The payload, once `reserve_record` has copied the record into it.
    #[inline(always)]
    pub fn record(&mut self) -> &[u8; RAW_MAX] {
        // SAFETY: all RAW_MAX bytes written by `reserve_record`.
        unsafe { &*(self.raw_ptr() as *const [u8; RAW_MAX]) }
    }
}

/// What a socket hook's record holds besides the socket's addresses (the first four
/// fields of `SockInfo`).
#[derive(Clone, Copy, Default)]
pub struct SockExtra {
    pub oldstate: i32,
    pub newstate: i32,
    pub state: i32,
    pub error: i32,
    /// Header flags besides SOCK_INFO.
    pub flags: u8,
}

/// The start of `struct sock_common`, the same on every kernel rstrace supports
/// (checked against BTF's offsets before use): one read instead of one per field.
#[repr(C)]
#[derive(Clone, Copy)]
struct SkcHead {
    daddr: [u8; 4],
    rcv_saddr: [u8; 4],
    hash: u32,
    /// Network byte order.
    dport: u16,
    num: u16,
    family: u16,
    state: u8,
    reuse: u8,
}

/// The 2 bytes at byte `at` (0..=14) of 16 bytes read as two words.
#[inline(always)]
fn u16_at(w: [u64; 2], at: u32) -> u16 {
    let (word, byte) = if at < 8 { (w[0], at) } else { (w[1], at - 8) };
    let shift = if cfg!(target_endian = "little") {
        8 * byte
    } else {
        8 * (6 - byte)
    };
    (word >> shift) as u16
}

/// Family, ports (host order) and IPv4 addresses (network order) of a socket, with
/// as few reads as the kernel's layout allows: the head of sock_common in one, the
/// inet_sock source address and port in another when they are within 16 bytes.
#[inline(always)]
fn sock_head(o: &tracer_common::KernelOffsets, sk: u64) -> (u16, u16, u16, u32, u32) {
    let (family, dport, daddr) = if o.skc_daddr == 0 && o.skc_dport == 12 && o.skc_family == 16 {
        match kread::<SkcHead>(sk, 0) {
            Some(h) => (h.family, h.dport, u32::from_ne_bytes(h.daddr)),
            None => (0, 0, 0),
        }
    } else {
        (
            kread::<u16>(sk, o.skc_family).unwrap_or(0),
            kread::<u16>(sk, o.skc_dport).unwrap_or(0),
            kread::<u32>(sk, o.skc_daddr).unwrap_or(0),
        )
    };
    let delta = o.inet_sport.wrapping_sub(o.inet_saddr);
    let (sport, saddr) = if o.inet_saddr != NO_OFFSET && delta < 16 && delta.is_multiple_of(2) {
        match kread::<[u64; 2]>(sk, o.inet_saddr) {
            Some(w) => (
                u16_at(w, delta),
                u32::from_ne_bytes((w[0] as u32).to_ne_bytes()),
            ),
            None => (0, 0),
        }
    } else {
        (
            kread::<u16>(sk, o.inet_sport).unwrap_or(0),
            kread::<u32>(sk, o.inet_saddr).unwrap_or(0),
        )
    };
    (
        family,
        u16::from_be(sport),
        u16::from_be(dport),
        saddr,
        daddr,
    )
}

/// Writes the fields a socket hook's tracepoint record would hold into `info`, read
/// from the socket the way the tracepoint reads them (inet_sock source address and
/// port, sock_common peer), straight into the event.
///
/// # Safety
/// `info` is a reserved event's payload.
#[inline(always)]
#[expect(
    clippy::multiple_unsafe_ops_per_block,
    clippy::cast_ptr_alignment,
    reason = "the payload's fields, written under one argument; the address fields are 8-aligned"
)]
unsafe fn fill_sock(cfg: &Config, sk: u64, info: *mut SockInfo, extra: SockExtra) {
    const AF_INET6: u16 = 10;
    let o = &cfg.offsets;
    let (family, sport, dport, saddr4, daddr4) = sock_head(o, sk);
    // SAFETY: fields of the payload the caller vouches for, each written (the
    // addresses as zero words first: 8-aligned in an 8-aligned payload).
    unsafe {
        use core::ptr::{addr_of_mut, write_volatile};
        write_volatile(addr_of_mut!((*info).oldstate), extra.oldstate);
        write_volatile(addr_of_mut!((*info).newstate), extra.newstate);
        write_volatile(addr_of_mut!((*info).state), extra.state);
        write_volatile(addr_of_mut!((*info).error), extra.error);
        write_volatile(addr_of_mut!((*info).family), family);
        write_volatile(addr_of_mut!((*info).sport), sport);
        write_volatile(addr_of_mut!((*info).dport), dport);
        write_volatile(addr_of_mut!((*info)._pad), 0);
        let saddr = addr_of_mut!((*info).saddr) as *mut u64;
        let daddr = addr_of_mut!((*info).daddr) as *mut u64;
        zero_words::<4>(saddr);
        if family != AF_INET6 {
            write_volatile(saddr as *mut u32, saddr4);
            write_volatile(daddr as *mut u32, daddr4);
        } else if o.skc_v6_rcv_saddr == o.skc_v6_daddr.wrapping_add(16) {
            // Peer, then local address, adjacent: one read.
            if let Some(w) = kread::<[u64; 4]>(sk, o.skc_v6_daddr) {
                write_volatile(daddr, w[0]);
                write_volatile(daddr.add(1), w[1]);
                write_volatile(saddr, w[2]);
                write_volatile(saddr.add(1), w[3]);
            }
        } else {
            read_into(saddr as *mut u8, 16, sk, o.skc_v6_rcv_saddr);
            read_into(daddr as *mut u8, 16, sk, o.skc_v6_daddr);
        }
    }
}

/// Copies `len` bytes at `base + off` in kernel memory to `dst`; whether it could
/// (zeroes when the address faults, nothing written when there is no offset).
///
/// # Safety
/// `dst` is valid for `len` bytes.
#[inline(always)]
unsafe fn read_into(dst: *mut u8, len: u32, base: u64, off: u32) -> bool {
    if base == 0 || off == NO_OFFSET {
        return false;
    }
    // SAFETY: the helper checks the kernel address (a fault is an error); `dst` as the
    // caller vouches.
    let r = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            dst as *mut core::ffi::c_void,
            len,
            (base + off as u64) as *const core::ffi::c_void,
        )
    };
    r == 0
}

/// Reports what socket `sk` holds as an event of `hook`, attributed to `owner_sk`'s
/// owner (0: none, the record names no socket); returns the namespace.
#[inline(always)]
pub fn report_sock(
    cfg: &Config,
    hook: Hook,
    sk: u64,
    owner_sk: u64,
    extra: SockExtra,
) -> Option<u32> {
    let mut slot = Slot::reserve(
        hook,
        flags::SOCK_INFO | extra.flags,
        core::mem::size_of::<SockInfo>(),
    )?;
    // SAFETY: the reserved event's payload.
    unsafe { fill_sock(cfg, sk, slot.payload(), extra) };
    attribute(cfg, slot.hdr(), owner_sk);
    let netns = slot.hdr().netns;
    slot.submit(cfg);
    Some(netns)
}
