//! syscalls:sys_exit_accept / sys_exit_accept4: the process that accepted a
//! connection owns it from then on.
//!
//! An accepted socket is made in softirq and first inherits its listener's owner (see
//! inet_sock_set_state). In a pre-fork server (nginx, gunicorn, a SO_REUSEPORT group
//! of workers) the listener belongs to the process that called listen() while a worker
//! accepts and serves the connection: that worker is who resets it or leaves it
//! unread. Both run in the accepting process, so the current task is the owner; the
//! socket is found from the returned descriptor (task -> files -> fdtable -> file ->
//! socket -> sk, offsets from BTF; without them the hook does nothing).
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{fixed, Config, Hook};

use crate::common::{
    config, ctx_field, current_owner, kread, load_record, raw_u64, sock_netns, SOCKS,
};

const IPPROTO_TCP: u16 = 6;

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    on_accept(&ctx, Hook::AcceptExit);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    on_accept(&ctx, Hook::Accept4Exit);
    0
}

#[inline(always)]
fn on_accept(ctx: &TracePointContext, hook: Hook) -> Option<()> {
    let cfg = config()?;
    let ret = if cfg.layouts[hook as usize].fixed != 0 {
        ctx_field::<i64>(ctx, fixed::ACCEPT_RET)
    } else {
        let p = load_record(ctx, hook)?;
        raw_u64(&p.ev.raw, p.layout.ret)? as i64
    };
    if ret < 0 {
        return None;
    }
    let sk = socket_of(cfg, ret as u64)?;
    // Inherited from its listener (TCP, namespace known): re-owned only when another
    // process accepted it, so that a single-process server pays no map update.
    // SAFETY: as in common::attribute: the value stays allocated for this run and is
    // copied out at once.
    let inherited = unsafe { SOCKS.get(sk) }.map(|o| (o.tgid, o.netns));
    let netns = match inherited {
        Some((tgid, _)) if tgid == (bpf_get_current_pid_tgid() >> 32) as u32 => return None,
        Some((_, netns)) => netns,
        None if kread::<u16>(sk, cfg.offsets.sk_protocol)? != IPPROTO_TCP => return None,
        None => sock_netns(cfg, sk),
    };
    let _ = SOCKS.insert(sk, current_owner(netns), 0);
    Some(())
}

/// The `struct sock` behind descriptor `fd` of the current process.
#[inline(always)]
fn socket_of(cfg: &Config, fd: u64) -> Option<u64> {
    let o = &cfg.offsets;
    // SAFETY: a helper without arguments; the pointer is only read through kread.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = kread(task, o.task_files)?;
    let fdt: u64 = kread(files, o.files_fdt)?;
    let max: u32 = kread(fdt, o.fdtable_max_fds)?;
    if fd >= max as u64 {
        return None;
    }
    let fds: u64 = kread(fdt, o.fdtable_fd)?;
    let file: u64 = kread(fds + fd * 8, 0)?;
    let sock: u64 = kread(file, o.file_private_data)?;
    let sk: u64 = kread(sock, o.socket_sk)?;
    (sk != 0).then_some(sk)
}
