//! tcp:tcp_retransmit_synack: the server side of a handshake retransmits its SYN-ACK.
//! skaddr is the listener, so the event carries its owner and accept queue.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::Hook;

use crate::common::{attribute, fill_queue, raw_u64, reserve_record};

#[tracepoint]
pub fn tcp_retransmit_synack(ctx: TracePointContext) -> u32 {
    try_tcp_retransmit_synack(&ctx);
    0
}

#[inline(always)]
fn try_tcp_retransmit_synack(ctx: &TracePointContext) -> Option<()> {
    let (mut slot, cfg, layout) = reserve_record(ctx, Hook::RetransmitSynack)?;
    let sk = raw_u64(slot.record(), layout.skaddr).unwrap_or(0);
    attribute(cfg, slot.hdr(), sk);
    fill_queue(cfg, slot.hdr(), sk);
    slot.submit(cfg);
    Some(())
}
