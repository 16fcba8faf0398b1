//! tcp:tcp_retransmit_synack: the server side of a handshake retransmits its SYN-ACK.
//! skaddr is the listener, so the event carries its owner and accept queue.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::Hook;

use crate::common::{attribute, fill_queue, load_record, raw_u64, submit};

#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    try_tcp_retransmit_synack(&ctx);
    0
}

#[inline(always)]
fn try_tcp_retransmit_synack(ctx: &TracePointContext) -> Option<()> {
    let p = load_record(ctx, Hook::RetransmitSynack)?;
    let sk = raw_u64(&p.ev.raw, p.layout.skaddr).unwrap_or(0);
    attribute(p.cfg, p.ev, sk);
    fill_queue(p.cfg, p.ev, sk);
    submit(p.cfg, p.ev, Hook::RetransmitSynack);
    Some(())
}
