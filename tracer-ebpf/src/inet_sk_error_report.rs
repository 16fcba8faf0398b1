//! sock:inet_sk_error_report: the errno handed to the application (5.13+; absent on
//! 5.10). The record has no socket address; the agent joins it to its socket by the
//! 4-tuple of the socket's other events.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::Hook;

use crate::common::{load_record, raw_i32, raw_u16, submit};

const IPPROTO_TCP: u16 = 6;

#[tracepoint]
pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
    try_inet_sk_error_report(&ctx);
    0
}

#[inline(always)]
fn try_inet_sk_error_report(ctx: &TracePointContext) -> Option<()> {
    let p = load_record(ctx, Hook::ErrorReport)?;
    if let Some(proto) = raw_u16(&p.ev.raw, p.layout.protocol) {
        if proto != IPPROTO_TCP {
            return None;
        }
    }
    // A failed blocking connect reports twice: its errno, then 0 with no peer once
    // the socket is torn down. The second says nothing. (Other reports of 0 are ICMP
    // soft errors, and are kept.)
    if raw_i32(&p.ev.raw, p.layout.error) == Some(0)
        && raw_u16(&p.ev.raw, p.layout.dport) == Some(0)
    {
        return None;
    }
    submit(p.cfg, p.ev, Hook::ErrorReport);
    Some(())
}
