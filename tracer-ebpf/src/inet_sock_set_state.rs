//! sock:inet_sock_set_state: every TCP state change (4.16+, one layout everywhere).
//!
//! Two jobs. Ownership: connect (CLOSE->SYN_SENT) and listen (CLOSE->LISTEN) run in
//! the owning process, so they record the current task as the socket's owner; an
//! accepted socket (LISTEN->SYN_RECV, in softirq) inherits its listener's owner.
//! Evidence: only transitions that mean a failure or a listener change are reported,
//! so that a storm of healthy short connections costs no ring-buffer traffic. It runs
//! about ten times per connection: the common transitions return after reading three
//! fields straight from the record.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use tracer_common::{fixed, tcp_state as st, Config, Hook, ListenKey};

use crate::common::{
    attribute, config, ctx_field, current_owner, load_record, raw_i32, raw_u16, raw_u64,
    sock_netns, submit, CONNECTS, LISTENERS, SOCKS,
};

const IPPROTO_TCP: u16 = 6;

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    try_inet_sock_set_state(&ctx);
    0
}

struct Change {
    sk: u64,
    old: i32,
    new: i32,
    sport: u16,
    protocol: Option<u16>,
}

#[inline(always)]
fn read_change(ctx: &TracePointContext, cfg: &Config) -> Option<Change> {
    let l = cfg.layouts[Hook::SetState as usize];
    if l.fixed != 0 {
        return Some(Change {
            sk: ctx_field(ctx, fixed::SET_STATE_SKADDR),
            old: ctx_field(ctx, fixed::SET_STATE_OLDSTATE),
            new: ctx_field(ctx, fixed::SET_STATE_NEWSTATE),
            sport: ctx_field(ctx, fixed::SET_STATE_SPORT),
            protocol: Some(ctx_field(ctx, fixed::SET_STATE_PROTOCOL)),
        });
    }
    let p = load_record(ctx, Hook::SetState)?;
    let raw = &p.ev.raw;
    Some(Change {
        sk: raw_u64(raw, p.layout.skaddr)?,
        old: raw_i32(raw, p.layout.oldstate)?,
        new: raw_i32(raw, p.layout.newstate)?,
        sport: raw_u16(raw, p.layout.sport).unwrap_or(0),
        protocol: raw_u16(raw, p.layout.protocol),
    })
}

/// Copies the record and reports it, with the socket's owner.
#[inline(always)]
fn report(ctx: &TracePointContext, sk: u64) -> Option<u32> {
    let p = load_record(ctx, Hook::SetState)?;
    attribute(p.cfg, p.ev, sk);
    let netns = p.ev.hdr.netns;
    submit(p.cfg, p.ev, Hook::SetState);
    Some(netns)
}

#[inline(always)]
fn try_inet_sock_set_state(ctx: &TracePointContext) -> Option<()> {
    let cfg = config()?;
    let c = read_change(ctx, cfg)?;
    if c.protocol.is_some_and(|p| p != IPPROTO_TCP) {
        return None;
    }
    match (c.old, c.new) {
        (st::CLOSE, st::SYN_SENT) => {
            let _ = SOCKS.insert(c.sk, current_owner(sock_netns(cfg, c.sk)), 0);
            // The connect reached SYN_SENT: the TCP hooks tell its story.
            let tid = bpf_get_current_pid_tgid() as u32;
            if let Some(p) = CONNECTS.get_ptr_mut(tid) {
                unsafe { *p = 0 };
            }
        }
        (st::CLOSE, st::LISTEN) => {
            let owner = current_owner(sock_netns(cfg, c.sk));
            let _ = SOCKS.insert(c.sk, owner, 0);
            let _ = LISTENERS.insert(listen_key(owner.netns, c.sport), owner, 0);
            report(ctx, c.sk);
        }
        (st::LISTEN, st::SYN_RECV) => {
            let key = listen_key(sock_netns(cfg, c.sk), c.sport);
            if let Some(l) = unsafe { LISTENERS.get(key) } {
                let mut owner = *l;
                owner.retrans = 0;
                let _ = SOCKS.insert(c.sk, owner, 0);
            }
        }
        (st::LISTEN, st::CLOSE) => {
            let netns = report(ctx, c.sk)?;
            let _ = LISTENERS.remove(listen_key(netns, c.sport));
        }
        // A socket that dies without the FIN handshake: refused, timed out, reset or
        // aborted. Orderly closes pass through FIN_WAIT/LAST_ACK and are not reported.
        (st::ESTABLISHED | st::SYN_SENT | st::SYN_RECV | st::CLOSE_WAIT, st::CLOSE) => {
            report(ctx, c.sk);
        }
        _ => {}
    }
    Some(())
}

#[inline(always)]
fn listen_key(netns: u32, port: u16) -> ListenKey {
    ListenKey {
        netns,
        port,
        _pad: 0,
    }
}
