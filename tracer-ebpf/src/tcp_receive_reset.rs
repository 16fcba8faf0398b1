//! tcp:tcp_receive_reset: an RST was processed on a socket of this host (4.17+;
//! same layout on 6.1 to 6.18, no `family` on 5.10).
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::Hook;

use crate::common::{attribute, config, raw_u64, report_sock, reserve_record, SockExtra};

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
#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_receive_reset_raw(ctx: RawTracePointContext) -> u32 {
    if let Some(cfg) = config() {
        let sk: u64 = ctx.arg(0);
        report_sock(cfg, Hook::ReceiveReset, sk, sk, SockExtra::default());
    }
    0
}
