//! sock:inet_sk_error_report: the errno handed to the application (5.13+; absent on
//! 5.10). The record has no socket address; the agent joins it to its socket by the
//! 4-tuple of the socket's other events.
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::Hook;

use crate::common::{
    config, fold_take_errno, kread, load_record, raw_i32, raw_u16, report_sock, submit, SockExtra,
};

const IPPROTO_TCP: u16 = 6;
const ECONNREFUSED: i32 = 111;

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
    if says_nothing(
        raw_i32(&p.ev.raw, p.layout.error),
        raw_u16(&p.ev.raw, p.layout.dport),
    ) {
        return None;
    }
    submit(p.cfg, p.ev, Hook::ErrorReport);
    Some(())
}

/// A failed blocking connect reports twice: its errno, then 0 with no peer once the
/// socket is torn down. The second says nothing. (Other reports of 0 are ICMP soft
/// errors, and are kept.)
#[inline(always)]
fn says_nothing(error: Option<i32>, dport: Option<u16>) -> bool {
    error == Some(0) && dport == Some(0)
}

/// The raw tracepoint (see inet_sock_set_state.rs): the socket is the argument.
#[raw_tracepoint(tracepoint = "inet_sk_error_report")]
pub fn inet_sk_error_report_raw(ctx: RawTracePointContext) -> u32 {
    try_error_report_raw(&ctx);
    0
}

#[inline(always)]
fn try_error_report_raw(ctx: &RawTracePointContext) -> Option<()> {
    let cfg = config()?;
    let sk: u64 = ctx.arg(0);
    if kread::<u16>(sk, cfg.offsets.sk_protocol)? != IPPROTO_TCP {
        return None;
    }
    let error = kread::<i32>(sk, cfg.offsets.sk_err)?;
    // A connect refused by an RST: that record stands for this errno.
    if error == ECONNREFUSED && fold_take_errno(cfg, sk) {
        return None;
    }
    // The peer's port only when it decides (most reports carry an errno).
    if error == 0 {
        let dport = kread::<u16>(sk, cfg.offsets.skc_dport);
        if says_nothing(Some(error), dport) {
            return None;
        }
    }
    // Like the tracepoint's record, which has no socket address: the agent joins the
    // errno to its socket by the 4-tuple.
    let extra = SockExtra {
        error,
        ..SockExtra::default()
    };
    report_sock(cfg, Hook::ErrorReport, sk, 0, extra);
    Some(())
}
