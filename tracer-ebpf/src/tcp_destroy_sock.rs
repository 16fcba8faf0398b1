//! tcp:tcp_destroy_sock: a socket is freed, so its address may be reused at once.
//! Ends the ownership entry; reports nothing (it fires for every connection).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
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
        // Deleted, not marked dead: a dead entry looks recently used to the LRU and
        // would push out idle live sockets (long-lived connections, listeners),
        // whose owners matter most.
        let _ = SOCKS.remove(sk);
    }
    0
}
