//! What the running kernel offers: tracepoint layouts, enum names and struct offsets,
//! gathered once at start and turned into the programs' configuration.
use std::{collections::HashMap, path::Path};

use tracer_common::{Config, Hook, RecordLayout, DROP_REASON_BITS, NO_FIELD};

use crate::{
    base::reasons,
    kernel::{
        btf::KernelBtf,
        hooks::{fixed_layout, HOOKS},
        tracefs::Format,
    },
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
        for s in &HOOKS {
            let (cat, name) = (s.category, s.name);
            match Format::read(tracefs, cat, name) {
                Ok(f) => {
                    info.formats.insert(s.hook, f);
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

    /// The hook whose event reports the same as a drop for `reason` on this kernel
    /// (`HookSpec::reports_drops`), which is then left out while that hook is attached.
    fn drop_reported_by(&self, reason: &str) -> Option<Hook> {
        HOOKS.iter().find_map(|s| {
            let d = s.reports_drops.filter(|d| d.reason == reason)?;
            let has = |field| self.formats.get(&s.hook)?.field(field);
            d.needs_field
                .is_none_or(|f| has(f).is_some())
                .then_some(s.hook)
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/events.md: TCP_RESET drops are left out while tcp_receive_reset is
    /// attached, NO_SOCKET ones while tcp_send_reset is and reports them (6.10+).
    #[test]
    fn drops_another_hook_reports_are_left_out_while_it_is_attached() {
        let mut info = KernelInfo::default();
        for (v, n) in [(2, "NO_SOCKET"), (5, "TCP_RESET"), (6, "NETFILTER_DROP")] {
            info.drop_reasons.insert(v, n.into());
        }
        let offsets = tracer_common::KernelOffsets::UNKNOWN;
        let kept = |info: &KernelInfo, attached: &[Hook]| -> Vec<u32> {
            let cfg = info.program_config(offsets, 4096, |h| attached.contains(&h));
            [2, 5, 6]
                .into_iter()
                .filter(|&v| cfg.keeps_drop(v))
                .collect()
        };
        let both = [Hook::SendReset, Hook::ReceiveReset];
        assert_eq!(kept(&info, &[]), [2, 5, 6]);
        // tcp_send_reset before 6.10 has no reason: it does not see closed ports.
        assert_eq!(kept(&info, &both), [2, 6]);
        let with_reason = "\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;\n";
        info.formats
            .insert(Hook::SendReset, Format::parse(with_reason).unwrap());
        assert_eq!(kept(&info, &both), [6]);
        assert_eq!(kept(&info, &[Hook::ReceiveReset]), [2, 6]);
    }
}
