//! skb:kfree_skb, attached as a raw tracepoint: a packet is dropped.
//!
//! It fires for every drop on the host, so the first thing done is the cheapest test
//! possible: the reason (a raw tracepoint argument, read without a helper call) against
//! a bitmap of TCP/IP-relevant reasons the agent built from the kernel's enum. Only
//! kept drops pay for reading the packet's headers and namespace. Two entry points
//! because a raw tracepoint may not read past its argument count: `kfree_skb` for
//! 5.17-6.10 (skb, location, reason) and `kfree_skb_rx` for 6.11+ (.., rx_sk).
//! Before 5.17 there is no reason and the hook is not attached.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use tracer_common::{flags, DropInfo, Hook};

use crate::common::{attribute, config, fill_queue, kread, skb_netns, zero_words, Slot};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb(ctx: RawTracePointContext) -> u32 {
    let reason: u64 = ctx.arg(2);
    try_kfree_skb(&ctx, reason as u32, 0);
    0
}

#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn kfree_skb_rx(ctx: RawTracePointContext) -> u32 {
    let reason: u64 = ctx.arg(2);
    let rx_sk: u64 = ctx.arg(3);
    try_kfree_skb(&ctx, reason as u32, rx_sk);
    0
}

#[inline(always)]
fn try_kfree_skb(ctx: &RawTracePointContext, reason: u32, rx_sk: u64) -> Option<()> {
    let cfg = config()?;
    if !cfg.keeps_drop(reason) {
        return None;
    }
    let skb: u64 = ctx.arg(0);
    let location: u64 = ctx.arg(1);
    // Zeroed a word at a time (a struct literal with address arrays compiles to a
    // byte-by-byte memset on this target).
    let mut zero = core::mem::MaybeUninit::<DropInfo>::uninit();
    const WORDS: usize = core::mem::size_of::<DropInfo>() / 8;
    // SAFETY: DropInfo is WORDS 8-aligned words.
    unsafe { zero_words::<WORDS>(zero.as_mut_ptr() as *mut u64) };
    // SAFETY: DropInfo is integers: all zero is a value.
    let mut info = unsafe { zero.assume_init() };
    info.location = location;
    info.rx_sk = rx_sk;
    info.reason = reason;
    if parse_headers(cfg, skb, &mut info) == Some(false) {
        // Parsed, and not TCP.
        return None;
    }
    // The receiving socket (6.11+), else the packet's own: a packet dropped on its way
    // out (the sender's OUTPUT chain) carries its sending socket, whose owner and
    // namespace are the client's.
    let sk = if rx_sk != 0 {
        rx_sk
    } else {
        kread::<u64>(skb, cfg.offsets.skb_sk).unwrap_or(0)
    };
    let mut slot = Slot::reserve(
        Hook::KfreeSkb,
        flags::DROP_INFO,
        core::mem::size_of::<DropInfo>(),
    )?;
    slot.put(info);
    let hdr = slot.hdr();
    attribute(cfg, hdr, sk);
    if hdr.netns == 0 {
        hdr.netns = skb_netns(cfg, skb);
    }
    if rx_sk != 0 && reason == cfg.listen_overflow_reason {
        fill_queue(cfg, hdr, rx_sk);
    }
    slot.submit(cfg);
    Some(())
}

/// Reads the IP and TCP headers of the dropped packet. Some(true): TCP, filled in;
/// Some(false): another protocol; None: headers unreadable (kept, unparsed).
#[inline(always)]
fn parse_headers(cfg: &tracer_common::Config, skb: u64, info: &mut DropInfo) -> Option<bool> {
    let o = &cfg.offsets;
    let proto = u16::from_be(kread::<u16>(skb, o.skb_protocol)?);
    let head: u64 = kread(skb, o.skb_head)?;
    let nh: u16 = kread(skb, o.skb_network_header)?;
    if nh == 0xffff {
        return None;
    }
    let ip = head + nh as u64;
    let th = match proto {
        ETH_P_IP => {
            let hdr: [u8; 20] = kread(ip, 0)?;
            if hdr[0] >> 4 != 4 {
                return None;
            }
            if hdr[9] != IPPROTO_TCP {
                return Some(false);
            }
            info.family = 2;
            info.saddr[..4].copy_from_slice(&hdr[12..16]);
            info.daddr[..4].copy_from_slice(&hdr[16..20]);
            ip + ((hdr[0] & 0x0f) as u64) * 4
        }
        ETH_P_IPV6 => {
            let hdr: [u8; 40] = kread(ip, 0)?;
            if hdr[6] != IPPROTO_TCP {
                return Some(false);
            }
            info.family = 10;
            info.saddr.copy_from_slice(&hdr[8..24]);
            info.daddr.copy_from_slice(&hdr[24..40]);
            ip + 40
        }
        _ => return Some(false),
    };
    let tcp: [u8; 14] = kread(th, 0)?;
    info.sport = u16::from_be_bytes([tcp[0], tcp[1]]);
    info.dport = u16::from_be_bytes([tcp[2], tcp[3]]);
    info.tcp_flags = tcp[13];
    info.parsed = 1;
    Some(true)
}
