//! tcp:tcp_destroy_sock: a socket is freed, so its address may be reused at once.
//! Ends the ownership entry; reports nothing (it fires for every connection). Attached
//! as a raw tracepoint (the socket is its only argument) when the socket hooks can
//! be, for the reasons given in inet_sock_set_state.rs; else as a tracepoint.
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{fixed, Hook};

use crate::common::{config, ctx_field, load_record, raw_u64, SOCKS};

#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    let Some(cfg) = config() else { return 0 };
    let sk = if cfg.layouts[Hook::DestroySock as usize].fixed != 0 {
        Some(ctx_field::<u64>(&ctx, fixed::DESTROY_SKADDR))
    } else {
        load_record(&ctx, Hook::DestroySock).and_then(|p| raw_u64(&p.ev.raw, p.layout.skaddr))
    };
    if let Some(sk) = sk {
        forget(sk);
    }
    0
}

#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock_raw(ctx: RawTracePointContext) -> u32 {
    forget(ctx.arg(0));
    0
}

/// Deleted, not marked dead: a dead entry looks recently used to the LRU and would
/// push out idle live sockets (long-lived connections, listeners), whose owners
/// matter most.
#[inline(always)]
fn forget(sk: u64) {
    let _ = SOCKS.remove(sk);
}
