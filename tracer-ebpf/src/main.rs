//! rstrace's kernel side: one module per kernel hook, each thin, all sharing the maps
//! and helpers of `common`. See tracer-common for the wire format.
#![no_std]
#![no_main]

mod common;
mod floor;
mod inet_sk_error_report;
mod inet_sock_set_state;
mod kfree_skb;
mod sys_accept;
mod sys_connect;
mod tcp_destroy_sock;
mod tcp_receive_reset;
mod tcp_retransmit_skb;
mod tcp_retransmit_synack;
mod tcp_send_reset;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// bpf_probe_read_kernel and the ring buffer helpers are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
