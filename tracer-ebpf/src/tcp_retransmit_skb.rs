//! tcp:tcp_retransmit_skb: a segment is retransmitted.
//!
//! SYN retransmits (state SYN_SENT) are failure evidence and are reported. Retransmits
//! on other states are normal on lossy paths and would flood the ring on a busy
//! server, so they are only counted on the socket's ownership entry; the count rides on
//! the socket's later failure events (a flow that dies after retransmitting).
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{tcp_state, Hook};

use crate::common::{
    attribute, config, kread, load_record, raw_i32, raw_u64, report_sock, submit, SockExtra, SOCKS,
};

#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    try_tcp_retransmit_skb(&ctx);
    0
}

#[inline(always)]
fn try_tcp_retransmit_skb(ctx: &TracePointContext) -> Option<()> {
    let p = load_record(ctx, Hook::RetransmitSkb)?;
    // 6.18+ also fires for attempts that failed locally (err != 0): nothing left.
    if raw_i32(&p.ev.raw, p.layout.error).is_some_and(|e| e != 0) {
        return None;
    }
    let sk = raw_u64(&p.ev.raw, p.layout.skaddr).unwrap_or(0);
    count(sk);
    if raw_i32(&p.ev.raw, p.layout.state) != Some(tcp_state::SYN_SENT) {
        return None;
    }
    attribute(p.cfg, &mut p.ev.hdr, sk);
    submit(p.cfg, p.ev, Hook::RetransmitSkb);
    Some(())
}

#[inline(always)]
fn count(sk: u64) {
    if let Some(o) = SOCKS.get_ptr_mut(sk) {
        // SAFETY: the value stays allocated for this run; a retransmit of the same
        // socket counted on another CPU at the same instant may be lost, nothing more.
        unsafe { (*o).retrans += 1 };
    }
}

/// The raw tracepoint (see inet_sock_set_state.rs): the socket is the first argument.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_raw(ctx: RawTracePointContext) -> u32 {
    try_retransmit_raw(&ctx);
    0
}

/// 6.18+: a third argument, the attempt's result; failed attempts (the segment never
/// left the host) are not retransmits. A raw tracepoint may not read past its
/// argument count, hence a second entry point.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_raw_err(ctx: RawTracePointContext) -> u32 {
    if ctx.arg::<u64>(2) as i32 == 0 {
        try_retransmit_raw(&ctx);
    }
    0
}

#[inline(always)]
fn try_retransmit_raw(ctx: &RawTracePointContext) -> Option<()> {
    let cfg = config()?;
    let sk: u64 = ctx.arg(0);
    count(sk);
    let state = kread::<u8>(sk, cfg.offsets.skc_state)? as i32;
    if state != tcp_state::SYN_SENT {
        return None;
    }
    let extra = SockExtra {
        state,
        ..SockExtra::default()
    };
    report_sock(cfg, Hook::RetransmitSkb, sk, sk, extra);
    Some(())
}
