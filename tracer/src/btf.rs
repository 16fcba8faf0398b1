//! Kernel struct offsets and enum names from the running kernel's BTF.
//!
//! Offsets let the programs find a socket's or packet's network namespace and a
//! listener's accept queue; enum names decode drop and reset reasons, whose numbers
//! change in every kernel version. Without BTF the programs still run, without
//! namespaces, queues or packet addresses on drops, and reasons fall back to the
//! format files' symbol tables.
use std::collections::HashMap;

use anyhow::{anyhow, bail, Context as _, Result};
use btf_rs::{Btf, Type};
use tracer_common::{KernelOffsets, NO_OFFSET};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<KernelBtf> {
        let btf = Btf::from_file(VMLINUX)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| {
                format!("reading {VMLINUX} (kernel built without CONFIG_DEBUG_INFO_BTF?)")
            })?;
        Ok(KernelBtf { btf })
    }

    fn struct_type(&self, name: &str) -> Result<btf_rs::Struct> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|e| anyhow!("{e}"))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| anyhow!("struct {name} not found in BTF"))
    }

    /// Follows typedefs and qualifiers to a struct or union.
    fn resolve_composite(&self, mut t: Type) -> Option<btf_rs::Struct> {
        for _ in 0..16 {
            match t {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::TypeTag(_) => {
                    t = self.btf.resolve_chained_type(t.as_btf_type()?).ok()?;
                }
                _ => return None,
            }
        }
        None
    }

    /// Byte offset of `member` in `s`, looking into anonymous structs and unions.
    fn member_in(&self, s: &btf_rs::Struct, member: &str, depth: u32) -> Option<u32> {
        if depth > 8 {
            return None;
        }
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == member {
                return Some(m.bit_offset() / 8);
            }
            if name.is_empty() {
                let t = self.btf.resolve_chained_type(m).ok()?;
                if let Some(inner) = self.resolve_composite(t) {
                    if let Some(off) = self.member_in(&inner, member, depth + 1) {
                        return Some(m.bit_offset() / 8 + off);
                    }
                }
            }
        }
        None
    }

    /// Offset of a dotted path such as `__sk_common.skc_net.net` in struct `root`.
    pub fn offset_of(&self, root: &str, path: &str) -> Result<u32> {
        let mut s = self.struct_type(root)?;
        let mut total = 0;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let off = self
                .member_in(&s, part, 0)
                .ok_or_else(|| anyhow!("{root}.{path}: no member {part}"))?;
            total += off;
            if i + 1 < parts.len() {
                let m = self
                    .find_member(&s, part)
                    .ok_or_else(|| anyhow!("{root}.{path}: cannot descend into {part}"))?;
                let t = self
                    .btf
                    .resolve_chained_type(&m)
                    .map_err(|e| anyhow!("{e}"))?;
                s = self
                    .resolve_composite(t)
                    .ok_or_else(|| anyhow!("{root}.{path}: {part} is not a struct"))?;
            }
        }
        Ok(total)
    }

    fn find_member(&self, s: &btf_rs::Struct, member: &str) -> Option<btf_rs::Member> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == member {
                return Some(m.clone());
            }
            if name.is_empty() {
                let t = self.btf.resolve_chained_type(m).ok()?;
                if let Some(inner) = self.resolve_composite(t) {
                    if let Some(found) = self.find_member(&inner, member) {
                        return Some(found);
                    }
                }
            }
        }
        None
    }

    /// Values of an enum by name, with `prefix` removed from the member names.
    pub fn enum_values(&self, name: &str, prefix: &str) -> Result<HashMap<u64, String>> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|e| anyhow!("{e}"))?;
        for t in types {
            if let Type::Enum(e) = t {
                let mut out = HashMap::new();
                for m in &e.members {
                    let n = self.btf.resolve_name(m).unwrap_or_default();
                    let n = n.strip_prefix(prefix).unwrap_or(&n).to_string();
                    out.entry(m.val() as u64).or_insert(n);
                }
                return Ok(out);
            }
        }
        bail!("enum {name} not found in BTF")
    }

    /// The offsets the programs need; each one missing is reported in `missing`.
    pub fn kernel_offsets(&self, missing: &mut Vec<String>) -> KernelOffsets {
        let mut get = |root: &str, path: &str| match self.offset_of(root, path) {
            Ok(v) => v,
            Err(e) => {
                missing.push(format!("{e:#}"));
                NO_OFFSET
            }
        };
        KernelOffsets {
            sk_net: get("sock", "__sk_common.skc_net.net"),
            net_inum: get("net", "ns.inum"),
            sk_ack_backlog: get("sock", "sk_ack_backlog"),
            sk_max_ack_backlog: get("sock", "sk_max_ack_backlog"),
            skb_dev: get("sk_buff", "dev"),
            skb_head: get("sk_buff", "head"),
            skb_network_header: get("sk_buff", "network_header"),
            skb_protocol: get("sk_buff", "protocol"),
            dev_net: get("net_device", "nd_net.net"),
            task_nsproxy: get("task_struct", "nsproxy"),
            nsproxy_net: get("nsproxy", "net_ns"),
            _pad: 0,
        }
    }
}
