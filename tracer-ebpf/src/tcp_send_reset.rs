//! tcp:tcp_send_reset: an RST leaves this host.
//!
//! Since 6.10 the record carries `reason` (enum sk_rst_reason) and fires for SYNs to a
//! closed port (skaddr NULL); before, it has another layout, no reason, and fires only
//! for resets sent from a full socket. The agent decodes both layouts.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{tcp_state, Hook};

use crate::common::{attribute, fill_queue, load_record, raw_i32, raw_u64, skb_netns, submit};

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    try_tcp_send_reset(&ctx);
    0
}

#[inline(always)]
fn try_tcp_send_reset(ctx: &TracePointContext) -> Option<()> {
    let p = load_record(ctx, Hook::SendReset)?;
    let sk = raw_u64(&p.ev.raw, p.layout.skaddr).unwrap_or(0);
    attribute(p.cfg, p.ev, sk);
    if sk == 0 {
        // No socket (SYN to a closed port): the namespace comes from the packet's device.
        if let Some(skb) = raw_u64(&p.ev.raw, p.layout.skbaddr) {
            p.ev.hdr.netns = skb_netns(p.cfg, skb);
        }
    } else if raw_i32(&p.ev.raw, p.layout.state) == Some(tcp_state::LISTEN) {
        fill_queue(p.cfg, p.ev, sk);
    }
    submit(p.cfg, p.ev, Hook::SendReset);
    Some(())
}
