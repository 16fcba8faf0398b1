//! tcp:tcp_receive_reset: an RST was processed on a socket of this host (4.17+;
//! same layout on 6.1 to 6.18, no `family` on 5.10).
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{flags, fold, tcp_state, Hook};

use crate::common::{
    attribute, config, fold_begin, kread, raw_u64, report_sock, reserve_record, SockExtra,
};

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    try_tcp_receive_reset(&ctx);
    0
}

#[inline(always)]
fn try_tcp_receive_reset(ctx: &TracePointContext) -> Option<()> {
    let (mut slot, cfg, layout) = reserve_record(ctx, Hook::ReceiveReset)?;
    let sk = raw_u64(slot.record(), layout.skaddr).unwrap_or(0);
    attribute(cfg, slot.hdr(), sk);
    slot.submit(cfg);
    Some(())
}

/// The raw tracepoint (see inet_sock_set_state.rs): the socket is the argument.
///
/// An RST received in SYN_SENT refuses a connect: `tcp_reset` then closes the socket
/// and, unless the application already closed it, reports ECONNREFUSED. With
/// `Config::fold`, this record stands for those events too (flags FOLDED_*), and the
/// state and error hooks, finding the socket in FOLDS, write nothing.
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset_raw(ctx: RawTracePointContext) -> u32 {
    try_receive_reset_raw(&ctx);
    0
}

#[inline(always)]
fn try_receive_reset_raw(ctx: &RawTracePointContext) -> Option<()> {
    const SOCK_DEAD: u64 = 1;
    let cfg = config()?;
    let sk: u64 = ctx.arg(0);
    let mut extra = SockExtra::default();
    if cfg.fold & fold::DEATH != 0
        && kread::<u8>(sk, cfg.offsets.skc_state) == Some(tcp_state::SYN_SENT as u8)
    {
        extra.flags = flags::FOLDED_DEATH;
        // The error report follows only for a socket its application still holds.
        if cfg.fold & fold::ERRNO != 0
            && kread::<u64>(sk, cfg.offsets.sk_flags).is_some_and(|f| f & SOCK_DEAD == 0)
        {
            extra.flags |= flags::FOLDED_ERRNO;
        }
    }
    report_sock(cfg, Hook::ReceiveReset, sk, sk, extra)?;
    // Only once written: an RST record lost to a full ring leaves the others written.
    if extra.flags != 0 {
        fold_begin(sk, extra.flags & flags::FOLDED_ERRNO != 0);
    }
    Some(())
}
