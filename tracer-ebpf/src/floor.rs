//! Empty programs, one per hook: the floor `cargo xtask bench` compares each
//! program's cost with (loaded only by `tracer-drivers bench-floor`).
use aya_ebpf::{
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};

macro_rules! floor {
    ($($name:ident),* $(,)?) => {
        $(
            #[tracepoint]
            pub fn $name(_ctx: TracePointContext) -> u32 {
                0
            }
        )*
    };
}

floor!(
    floor_send_reset,
    floor_receive_reset,
    floor_retransmit_skb,
    floor_retransmit_synack,
    floor_set_state,
    floor_error_report,
    floor_destroy_sock,
    floor_enter_connect,
    floor_exit_connect,
    floor_exit_accept,
    floor_exit_accept4,
);

macro_rules! raw_floor {
    ($($name:ident: $tp:literal),* $(,)?) => {
        $(
            #[raw_tracepoint(tracepoint = $tp)]
            pub fn $name(_ctx: RawTracePointContext) -> u32 {
                0
            }
        )*
    };
}

raw_floor!(
    floor_kfree_skb: "kfree_skb",
    floor_raw_set_state: "inet_sock_set_state",
    floor_raw_destroy_sock: "tcp_destroy_sock",
    floor_raw_receive_reset: "tcp_receive_reset",
    floor_raw_retransmit_skb: "tcp_retransmit_skb",
    floor_raw_error_report: "inet_sk_error_report",
);
