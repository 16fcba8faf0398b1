//! sock:inet_sock_set_state: every TCP state change (4.16+, one layout everywhere).
//!
//! Two jobs. Ownership: connect (CLOSE->SYN_SENT) and listen (CLOSE->LISTEN) run in
//! the owning process, so they record the current task as the socket's owner; an
//! accepted socket (LISTEN->SYN_RECV, in softirq) inherits its listener's owner.
//! Evidence: only transitions that mean a failure or a listener change are reported,
//! so that a storm of healthy short connections costs no ring-buffer traffic. It runs
//! about ten times per connection, so the common transitions return at once.
//!
//! Two entry points. `inet_sock_set_state_raw`, attached as a raw tracepoint when BTF
//! gave the socket's field offsets, gets the socket and both states as arguments: the
//! kernel builds no record, and its recursion guard is per program rather than shared
//! with every tracepoint and kprobe program on the CPU (a timer's softirq landing in
//! any of them would skip this hook). `inet_sock_set_state` is the tracepoint
//! fallback, reading the record.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use tracer_common::{fixed, tcp_state as st, Config, Hook, ListenKey, ListenOwner};

use crate::common::{
    attribute, config, connect_mark_sent, ctx_field, current_owner, fold_take_death, kread,
    load_record, raw_i32, raw_u16, raw_u64, report_sock, sock_netns, submit, SockExtra, LISTENERS,
    SOCKS,
};

const IPPROTO_TCP: u16 = 6;
const BPF_ANY: u64 = 0;
const BPF_NOEXIST: u64 = 1;

#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if let Some(cfg) = config() {
        if let Some(c) = read_change(&ctx, cfg) {
            on_change(cfg, &c, |sk| report_record(&ctx, sk));
        }
    }
    0
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state_raw(ctx: RawTracePointContext) -> u32 {
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    if !interesting(old, new) {
        return 0;
    }
    let Some(cfg) = config() else { return 0 };
    let sk: u64 = ctx.arg(0);
    let protocol = kread::<u16>(sk, cfg.offsets.sk_protocol);
    // Only the listener transitions use the port (their key); the others (every
    // connect, every death) skip the read.
    let sport = if old == st::LISTEN || new == st::LISTEN {
        u16::from_be(kread::<u16>(sk, cfg.offsets.inet_sport).unwrap_or(0))
    } else {
        0
    };
    let c = Change {
        sk,
        old,
        new,
        sport,
        protocol,
    };
    on_change(cfg, &c, |sk| report_change(cfg, sk, old, new));
    0
}

struct Change {
    sk: u64,
    old: i32,
    new: i32,
    /// Read for the listener transitions only (0 for the others, raw program).
    sport: u16,
    protocol: Option<u16>,
}

/// The transitions `on_change` acts on; all others (most of them) are ignored.
#[inline(always)]
fn interesting(old: i32, new: i32) -> bool {
    matches!(
        (old, new),
        (st::CLOSE, st::SYN_SENT | st::LISTEN)
            | (st::LISTEN, st::SYN_RECV | st::CLOSE)
            | (
                st::ESTABLISHED | st::SYN_SENT | st::SYN_RECV | st::CLOSE_WAIT,
                st::CLOSE
            )
    )
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

/// Copies the record and reports it, with the socket's owner; the namespace.
#[inline(always)]
fn report_record(ctx: &TracePointContext, sk: u64) -> Option<u32> {
    let p = load_record(ctx, Hook::SetState)?;
    attribute(p.cfg, &mut p.ev.hdr, sk);
    let netns = p.ev.hdr.netns;
    submit(p.cfg, p.ev, Hook::SetState);
    Some(netns)
}

/// Reports the change with what the socket holds, with its owner; the namespace.
#[inline(always)]
fn report_change(cfg: &Config, sk: u64, old: i32, new: i32) -> Option<u32> {
    let extra = SockExtra {
        oldstate: old,
        newstate: new,
        ..SockExtra::default()
    };
    report_sock(cfg, Hook::SetState, sk, sk, extra)
}

#[inline(always)]
fn on_change(cfg: &Config, c: &Change, report: impl Fn(u64) -> Option<u32>) {
    if c.protocol.is_some_and(|p| p != IPPROTO_TCP) {
        return;
    }
    match (c.old, c.new) {
        (st::CLOSE, st::SYN_SENT) => {
            let _ = SOCKS.insert(c.sk, current_owner(sock_netns(cfg, c.sk)), 0);
            // The connect reached SYN_SENT: the TCP hooks tell its story, except for a
            // local port allocation that fails next (no TCP event has the errno).
            connect_mark_sent(bpf_get_current_pid_tgid() as u32);
        }
        (st::CLOSE, st::LISTEN) => {
            let known = is_known(c.sk);
            // One copy of the owner on the stack: the 6.1 verifier caps the combined
            // stack of the program and its calls at 512 bytes.
            let entry = ListenOwner {
                owner: current_owner(sock_netns(cfg, c.sk)),
                sk: c.sk,
            };
            #[expect(clippy::needless_borrows_for_generic_args, reason = "no second copy")]
            let _ = SOCKS.insert(c.sk, &entry.owner, 0);
            // Only the first listener of the port: see LISTENERS. A socket listening
            // again (already known) is the same listener.
            #[expect(clippy::needless_borrows_for_generic_args, reason = "no second copy")]
            let _ = LISTENERS.insert(
                listen_key(entry.owner.netns, c.sport),
                &entry,
                if known { BPF_ANY } else { BPF_NOEXIST },
            );
            report(c.sk);
        }
        (st::LISTEN, st::SYN_RECV) => {
            let key = listen_key(sock_netns(cfg, c.sk), c.sport);
            // SAFETY: the value stays allocated for this run (freed after an RCU
            // grace period) and is only read.
            if let Some(l) = unsafe { LISTENERS.get(key) } {
                // Straight from the map value (a listener counts no retransmits).
                #[expect(
                    clippy::needless_borrows_for_generic_args,
                    reason = "no copy on the stack"
                )]
                let _ = SOCKS.insert(c.sk, &l.owner, 0);
            }
        }
        (st::LISTEN, st::CLOSE) => {
            let known = is_known(c.sk);
            if let Some(netns) = report(c.sk) {
                let key = listen_key(netns, c.sport);
                // The entry's own socket, or (entry made by the agent) a listener that
                // was there before rstrace: one opened since is in SOCKS.
                // SAFETY: as above.
                let ours = unsafe { LISTENERS.get(key) }
                    .is_some_and(|l| l.sk == c.sk || (l.sk == 0 && !known));
                if ours {
                    let _ = LISTENERS.remove(key);
                }
            }
        }
        // A socket that dies without the FIN handshake: refused, timed out, reset or
        // aborted. Orderly closes pass through FIN_WAIT/LAST_ACK and are not reported.
        (st::ESTABLISHED | st::SYN_SENT | st::SYN_RECV | st::CLOSE_WAIT, st::CLOSE) => {
            // A connect refused by an RST: that record stands for this death.
            if c.old == st::SYN_SENT && fold_take_death(cfg, c.sk) {
                return;
            }
            report(c.sk);
        }
        _ => {}
    }
}

/// Whether the ownership map has `sk`. Reads a field (set on every entry) so that the
/// compiler keeps the null check: merging the bare pointer into a later condition is
/// pointer arithmetic on a maybe-null map value, which the verifier rejects.
#[inline(always)]
fn is_known(sk: u64) -> bool {
    // SAFETY: the value stays allocated for this run and is only read.
    unsafe { SOCKS.get(sk) }.is_some_and(|o| o.since_ns != 0)
}

#[inline(always)]
fn listen_key(netns: u32, port: u16) -> ListenKey {
    ListenKey {
        netns,
        port,
        _pad: 0,
    }
}
