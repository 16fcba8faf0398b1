//! syscalls:sys_enter_connect / sys_exit_connect: a connect() refused by routing or
//! policy (no route, unreachable/prohibit/blackhole routes, cgroup or LSM policy)
//! fails before the socket reaches SYN_SENT, so no TCP tracepoint fires. The entry
//! remembers the destination pointer per thread; the exit reports only those errors,
//! and EADDRNOTAVAIL after SYN_SENT: no free local port (inet_hash_connect fails after
//! the CLOSE->SYN_SENT transition, and the SYN_SENT->CLOSE that follows carries no
//! errno). Both run in the calling process, so the current task is the owner.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{fixed, flags, ConnectInfo, Hook};

use crate::common::{
    config, connect_begin, connect_take, ctx_field, current_owner, kread, load_record, raw_u64,
    set_owner, Slot,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

const EADDRNOTAVAIL: i64 = 99;
/// `ConnectInfo::state` of a connect that reached SYN_SENT.
const TCP_SYN_SENT: u32 = 2;

/// Errors that mean the kernel would not even try: routing and policy.
fn routing_error(ret: i64) -> bool {
    matches!(-ret, 1 | 13 | 22 | EADDRNOTAVAIL | 100 | 101 | 113)
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let uaddr = if cfg.layouts[Hook::ConnectEnter as usize].fixed != 0 {
        Some(ctx_field::<u64>(&ctx, fixed::CONNECT_USERVADDR))
    } else {
        load_record(&ctx, Hook::ConnectEnter).and_then(|p| raw_u64(&p.ev.raw, p.layout.uservaddr))
    };
    if let Some(uaddr) = uaddr {
        connect_begin(bpf_get_current_pid_tgid() as u32, uaddr);
    }
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    try_sys_exit_connect(&ctx);
    0
}

#[inline(always)]
fn try_sys_exit_connect(ctx: &TracePointContext) -> Option<()> {
    let (uaddr, sent) = connect_take(bpf_get_current_pid_tgid() as u32)?;
    let cfg = config()?;
    let ret = if cfg.layouts[Hook::ConnectExit as usize].fixed != 0 {
        ctx_field::<i64>(ctx, fixed::CONNECT_RET)
    } else {
        let p = load_record(ctx, Hook::ConnectExit)?;
        raw_u64(&p.ev.raw, p.layout.ret)? as i64
    };
    // Past SYN_SENT the TCP hooks tell the rest, but for the one error they miss.
    let reported = if sent {
        -ret == EADDRNOTAVAIL
    } else {
        routing_error(ret)
    };
    if !reported {
        return None;
    }
    // Words, not bytes: zeroing a byte array is a byte-by-byte memset on this target.
    let mut sa = core::mem::MaybeUninit::<[u64; 3]>::uninit();
    // SAFETY: the helper checks the user address (a fault is an error) and writes the
    // 24 bytes of `sa` (zeroes on failure).
    if unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user(
            sa.as_mut_ptr() as *mut core::ffi::c_void,
            24,
            uaddr as *const core::ffi::c_void,
        )
    } != 0
    {
        return None;
    }
    // SAFETY: written by the helper.
    let sa = unsafe { sa.assume_init() };
    // sockaddr_in: family, port (big endian), address; sockaddr_in6: family, port,
    // flow info, address at byte 8.
    let family = sa[0] as u16;
    let port = u16::from_be((sa[0] >> 16) as u16);
    let addr: [u64; 2] = match family {
        AF_INET => [sa[0] >> 32, 0],
        AF_INET6 => [sa[1], sa[2]],
        _ => return None,
    };
    let info = ConnectInfo {
        ret,
        family,
        port,
        state: if sent { TCP_SYN_SENT } else { 0 },
        // SAFETY: 16 bytes either way, in memory order.
        addr: unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(addr) },
    };
    let o = &cfg.offsets;
    // SAFETY: a helper without arguments; the pointer is only read through kread.
    let task = unsafe { bpf_get_current_task() };
    let nsproxy: u64 = kread(task, o.task_nsproxy).unwrap_or(0);
    let net: u64 = kread(nsproxy, o.nsproxy_net).unwrap_or(0);
    let owner = current_owner(kread(net, o.net_inum).unwrap_or(0));
    let mut slot = Slot::reserve(
        Hook::ConnectExit,
        flags::CONNECT_INFO,
        core::mem::size_of::<ConnectInfo>(),
    )?;
    slot.put(info);
    set_owner(slot.hdr(), &owner);
    slot.submit(cfg);
    Some(())
}
