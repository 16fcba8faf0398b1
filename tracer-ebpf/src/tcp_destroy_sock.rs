//! tcp:tcp_destroy_sock: a socket is freed, so its address may be reused at once.
//! Ends the ownership entry; reports nothing (it fires for every connection).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::Hook;

use crate::common::{load_record, raw_u64, SOCKS};

#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    if let Some(p) = load_record(&ctx, Hook::DestroySock) {
        if let Some(sk) = raw_u64(&p.ev.raw, p.layout.skaddr) {
            let _ = SOCKS.remove(sk);
        }
    }
    0
}
