//! What the running kernel offers: tracepoint layouts, enum names and struct offsets,
//! gathered once at start and turned into the programs' configuration.
use std::{collections::HashMap, path::Path};

use tracer_common::{Config, Hook, RecordLayout, DROP_REASON_BITS, NO_FIELD};

use crate::{
    base::reasons,
    kernel::{btf::KernelBtf, tracefs::Format},
};

/// Kernel metadata the decoder and the programs need.
#[derive(Clone, Debug, Default)]
pub struct KernelInfo {
    pub release: String,
    /// Format of each hook's tracepoint, None when the tracepoint is absent.
    pub formats: HashMap<Hook, Format>,
    pub drop_reasons: HashMap<u64, String>,
    pub rst_reasons: HashMap<u64, String>,
    /// What could not be found, one line each, for the degradation warnings.
    pub missing: Vec<String>,
}

impl KernelInfo {
    pub fn gather(tracefs: &Path, btf: Option<&KernelBtf>) -> KernelInfo {
        let mut info = KernelInfo {
            release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            ..Default::default()
        };
        for hook in Hook::ALL {
            let (cat, name) = hook.tracepoint();
            match Format::read(tracefs, cat, name) {
                Ok(f) => {
                    info.formats.insert(hook, f);
                }
                Err(e) => info.missing.push(format!("tracepoint {cat}:{name}: {e:#}")),
            }
        }
        let from_btf = |name: &str, prefix: &str| {
            btf.and_then(|b| b.enum_values(name, prefix).ok())
                .unwrap_or_default()
        };
        info.drop_reasons = from_btf("skb_drop_reason", "SKB_DROP_REASON_");
        if info.drop_reasons.is_empty() {
            if let Some(f) = info.formats.get(&Hook::KfreeSkb) {
                info.drop_reasons = f.symbolic("reason");
            }
        }
        info.rst_reasons = from_btf("sk_rst_reason", "SK_RST_REASON_");
        if info.rst_reasons.is_empty() {
            if let Some(f) = info.formats.get(&Hook::SendReset) {
                info.rst_reasons = f.symbolic("reason");
            }
        }
        info
    }

    pub fn drop_reason_value(&self, name: &str) -> Option<u64> {
        self.drop_reasons
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(v, _)| *v)
    }

    /// tcp_send_reset fires for resets sent without a socket, with their reason
    /// (6.10+): a segment to a closed port then shows as an RST with NO_SOCKET.
    pub fn traces_rst_for_closed_ports(&self) -> bool {
        self.formats
            .get(&Hook::SendReset)
            .is_some_and(|f| f.field("reason").is_some())
    }

    /// The hook whose event reports the same as a drop for `reason`, which is then
    /// left out while that hook is attached: a received RST is freed as TCP_RESET
    /// once tcp_receive_reset has reported it, and on 6.10+ a segment to a closed
    /// port is answered by an RST that tcp_send_reset reports with NO_SOCKET. Each
    /// would be a sixth of a refusal's events.
    fn drop_reported_by(&self, reason: &str) -> Option<Hook> {
        match reason {
            reasons::TCP_RESET => Some(Hook::ReceiveReset),
            reasons::NO_SOCKET if self.traces_rst_for_closed_ports() => Some(Hook::SendReset),
            _ => None,
        }
    }

    /// Program configuration for this kernel, a ring buffer of `ring_bytes` and the
    /// hooks that `attached` says are attached.
    pub fn program_config(
        &self,
        offsets: tracer_common::KernelOffsets,
        ring_bytes: u32,
        attached: impl Fn(Hook) -> bool,
    ) -> Config {
        let mut cfg = Config::EMPTY;
        for hook in Hook::ALL {
            if let Some(f) = self.formats.get(&hook) {
                cfg.layouts[hook as usize] = record_layout(f);
                cfg.layouts[hook as usize].fixed = fixed_layout(hook, f) as u16;
            }
        }
        cfg.offsets = offsets;
        for name in reasons::KEPT_DROP_REASONS {
            if self.drop_reported_by(name).is_some_and(&attached) {
                continue;
            }
            if let Some(v) = self.drop_reason_value(name) {
                let v = v as usize;
                if v < DROP_REASON_BITS {
                    cfg.keep_drop[v / 64] |= 1 << (v % 64);
                }
            }
        }
        cfg.listen_overflow_reason = self
            .drop_reason_value(reasons::TCP_LISTEN_OVERFLOW)
            .map_or(u32::MAX, |v| v as u32);
        cfg.wake_bytes = (ring_bytes / 8).max(512);
        cfg.ready = 1;
        cfg
    }
}

/// Whether `f` has `fields` (name, offset, size) exactly.
fn has_layout(f: &Format, fields: &[(&str, usize, usize)]) -> bool {
    fields.iter().all(|(n, o, s)| {
        f.field(n)
            .is_some_and(|fl| fl.offset == *o && fl.size == *s)
    })
}

/// Whether the hook's record has the layout its program reads without a helper.
pub fn fixed_layout(hook: Hook, f: &Format) -> bool {
    use tracer_common::fixed::*;
    match hook {
        Hook::SetState => has_layout(
            f,
            &[
                ("skaddr", SET_STATE_SKADDR, 8),
                ("oldstate", SET_STATE_OLDSTATE, 4),
                ("newstate", SET_STATE_NEWSTATE, 4),
                ("sport", SET_STATE_SPORT, 2),
                ("protocol", SET_STATE_PROTOCOL, 2),
            ],
        ),
        Hook::DestroySock => has_layout(f, &[("skaddr", DESTROY_SKADDR, 8)]),
        Hook::ConnectEnter => has_layout(f, &[("uservaddr", CONNECT_USERVADDR, 8)]),
        Hook::ConnectExit => has_layout(f, &[("ret", CONNECT_RET, 8)]),
        Hook::AcceptExit | Hook::Accept4Exit => has_layout(f, &[("ret", ACCEPT_RET, 8)]),
        _ => false,
    }
}

pub fn record_layout(f: &Format) -> RecordLayout {
    let off = |name: &str| {
        f.field(name)
            .filter(|fl| fl.offset < tracer_common::RAW_MAX)
            .map_or(NO_FIELD, |fl| fl.offset as u16)
    };
    RecordLayout {
        len: f.record_len().min(tracer_common::RAW_MAX) as u16,
        skaddr: off("skaddr"),
        skbaddr: off("skbaddr"),
        state: off("state"),
        oldstate: off("oldstate"),
        newstate: off("newstate"),
        sport: off("sport"),
        protocol: off("protocol"),
        uservaddr: off("uservaddr"),
        ret: off("ret"),
        fixed: 0,
        // inet_sk_error_report's `error`; tcp_retransmit_skb's `err` (6.18+).
        error: if f.field("error").is_some() {
            off("error")
        } else {
            off("err")
        },
        dport: off("dport"),
        _pad: 0,
    }
}
