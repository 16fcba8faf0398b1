//! tcp:tcp_send_reset: an RST leaves this host.
//!
//! Since 6.10 the record carries `reason` (enum sk_rst_reason) and fires for SYNs to a
//! closed port (skaddr NULL); before, it has another layout, no reason, and fires only
//! for resets sent from a full socket. The agent decodes both layouts.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{tcp_state, Hook};

use crate::common::{attribute, fill_queue, raw_i32, raw_u64, reserve_record, skb_netns};

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    try_tcp_send_reset(&ctx);
    0
}

#[inline(always)]
fn try_tcp_send_reset(ctx: &TracePointContext) -> Option<()> {
    let (mut slot, cfg, layout) = reserve_record(ctx, Hook::SendReset)?;
    let raw = slot.record();
    let sk = raw_u64(raw, layout.skaddr).unwrap_or(0);
    let skb = raw_u64(raw, layout.skbaddr);
    let listen = raw_i32(raw, layout.state) == Some(tcp_state::LISTEN);
    let hdr = slot.hdr();
    attribute(cfg, hdr, sk);
    if sk == 0 {
        // No socket (SYN to a closed port): the namespace comes from the packet's device.
        if let Some(skb) = skb {
            hdr.netns = skb_netns(cfg, skb);
        }
    } else if listen {
        fill_queue(cfg, hdr, sk);
    }
    slot.submit(cfg);
    Some(())
}
