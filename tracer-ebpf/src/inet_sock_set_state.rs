//! sock:inet_sock_set_state: every TCP state change (4.16+, one layout everywhere).
//!
//! Two jobs. Ownership: connect (CLOSE->SYN_SENT) and listen (CLOSE->LISTEN) run in
//! the owning process, so they record the current task as the socket's owner; an
//! accepted socket (LISTEN->SYN_RECV, in softirq) inherits its listener's owner.
//! Evidence: only transitions that mean a failure or a listener change are reported,
//! so that a storm of healthy short connections costs no ring-buffer traffic.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use tracer_common::{tcp_state as st, Hook, ListenKey};

use crate::common::{
    attribute, current_owner, load_record, raw_i32, raw_u16, raw_u64, sock_netns, submit, CONNECTS,
    LISTENERS, SOCKS,
};

const IPPROTO_TCP: u16 = 6;

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    try_inet_sock_set_state(&ctx);
    0
}

#[inline(always)]
fn try_inet_sock_set_state(ctx: &TracePointContext) -> Option<()> {
    let p = load_record(ctx, Hook::SetState)?;
    let raw = &p.ev.raw;
    let sport = raw_u16(raw, p.layout.sport).unwrap_or(0);
    if let Some(proto) = raw_u16(raw, p.layout.protocol) {
        if proto != IPPROTO_TCP {
            return None;
        }
    }
    let sk = raw_u64(raw, p.layout.skaddr)?;
    let old = raw_i32(raw, p.layout.oldstate)?;
    let new = raw_i32(raw, p.layout.newstate)?;
    match (old, new) {
        (st::CLOSE, st::SYN_SENT) => {
            let _ = SOCKS.insert(sk, current_owner(sock_netns(p.cfg, sk)), 0);
            let tid = bpf_get_current_pid_tgid() as u32;
            if let Some(c) = CONNECTS.get_ptr_mut(tid) {
                unsafe { *c = 0 };
            }
            None
        }
        (st::CLOSE, st::LISTEN) => {
            let owner = current_owner(sock_netns(p.cfg, sk));
            let _ = SOCKS.insert(sk, owner, 0);
            let key = listen_key(owner.netns, sport);
            let _ = LISTENERS.insert(key, owner, 0);
            attribute(p.cfg, p.ev, sk);
            submit(p.ev, Hook::SetState);
            Some(())
        }
        (st::LISTEN, st::SYN_RECV) => {
            let netns = sock_netns(p.cfg, sk);
            let key = listen_key(netns, sport);
            if let Some(l) = unsafe { LISTENERS.get(key) } {
                let mut owner = *l;
                owner.retrans = 0;
                let _ = SOCKS.insert(sk, owner, 0);
            }
            None
        }
        (st::LISTEN, st::CLOSE) => {
            attribute(p.cfg, p.ev, sk);
            let key = listen_key(p.ev.hdr.netns, sport);
            let _ = LISTENERS.remove(key);
            submit(p.ev, Hook::SetState);
            Some(())
        }
        // A socket that dies without the FIN handshake: refused, timed out, reset or
        // aborted. Orderly closes pass through FIN_WAIT/LAST_ACK and are not reported.
        (st::ESTABLISHED | st::SYN_SENT | st::SYN_RECV | st::CLOSE_WAIT, st::CLOSE) => {
            attribute(p.cfg, p.ev, sk);
            submit(p.ev, Hook::SetState);
            Some(())
        }
        _ => None,
    }
}

#[inline(always)]
fn listen_key(netns: u32, port: u16) -> ListenKey {
    ListenKey {
        netns,
        port,
        _pad: 0,
    }
}
