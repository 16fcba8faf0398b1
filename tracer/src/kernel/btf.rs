//! Kernel struct offsets and enum names from the running kernel's BTF.
//!
//! Offsets let the programs find a socket's or packet's network namespace and a
//! listener's accept queue; enum names decode drop and reset reasons, whose numbers
//! change in every kernel version. Without BTF the programs still run, without
//! namespaces, queues or packet addresses on drops, and reasons fall back to the
//! format files' symbol tables.
//!
//! The reader keeps the raw section and one offset per type, nothing else: building
//! indexes of the ~100 000 types of a kernel costs tens of MiB, while the handful of
//! lookups made once at start are cheap linear scans.
use std::collections::HashMap;

use anyhow::{anyhow, bail, Context as _, Result};
use tracer_common::{KernelOffsets, NO_OFFSET};

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

pub struct KernelBtf {
    data: Vec<u8>,
    /// Byte offset of each type by id (index 0 is void and unused).
    types: Vec<u32>,
    strings: (usize, usize),
}

#[derive(Clone, Copy)]
struct TypeRef {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// size_or_type.
    next: u32,
    /// Where the kind-specific data starts.
    extra: usize,
}

impl KernelBtf {
    pub fn load() -> Result<KernelBtf> {
        let data = std::fs::read(VMLINUX).with_context(|| {
            format!("reading {VMLINUX} (kernel built without CONFIG_DEBUG_INFO_BTF?)")
        })?;
        KernelBtf::parse(data).with_context(|| format!("parsing {VMLINUX}"))
    }

    pub fn parse(data: Vec<u8>) -> Result<KernelBtf> {
        let u16_at = |o: usize| -> Result<u16> {
            Ok(u16::from_le_bytes(
                data.get(o..o + 2)
                    .ok_or_else(|| anyhow!("truncated"))?
                    .try_into()?,
            ))
        };
        let u32_at = |o: usize| -> Result<u32> {
            Ok(u32::from_le_bytes(
                data.get(o..o + 4)
                    .ok_or_else(|| anyhow!("truncated"))?
                    .try_into()?,
            ))
        };
        if u16_at(0)? != 0xeb9f {
            bail!("not BTF (bad magic, or not little-endian)");
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = (hdr_len + str_off, str_len);
        if types_end > data.len() || strings.0 + strings.1 > data.len() {
            bail!("sections past the end of the data");
        }
        let mut types = vec![0u32];
        let mut o = types_start;
        while o < types_end {
            types.push(o as u32);
            let info = u32_at(o + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                k => bail!("unknown BTF kind {k} at byte {o}"),
            };
            o += 12 + extra;
        }
        Ok(KernelBtf {
            data,
            types,
            strings,
        })
    }

    fn u32_at(&self, o: usize) -> u32 {
        u32::from_le_bytes(
            self.data[o..o + 4]
                .try_into()
                .expect("bounds checked at parse"),
        )
    }

    fn ty(&self, id: u32) -> Option<TypeRef> {
        let o = *self.types.get(id as usize)? as usize;
        if id == 0 {
            return None;
        }
        let info = self.u32_at(o + 4);
        Some(TypeRef {
            name_off: self.u32_at(o),
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            next: self.u32_at(o + 8),
            extra: o + 12,
        })
    }

    fn name(&self, off: u32) -> &str {
        let (start, len) = self.strings;
        let s = &self.data[start..start + len];
        let from = (off as usize).min(s.len());
        let end = s[from..]
            .iter()
            .position(|&b| b == 0)
            .map_or(s.len(), |e| from + e);
        std::str::from_utf8(&s[from..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<TypeRef> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.next
                }
                _ => return Some(t),
            }
        }
        None
    }

    fn struct_named(&self, name: &str) -> Result<TypeRef> {
        (1..self.types.len() as u32)
            .filter_map(|id| self.ty(id))
            .find(|t| t.kind == KIND_STRUCT && t.vlen > 0 && self.name(t.name_off) == name)
            .ok_or_else(|| anyhow!("struct {name} not found in BTF"))
    }

    /// (byte offset, member type id) of `member`, looking into anonymous members.
    fn member(&self, s: TypeRef, member: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 || !matches!(s.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for i in 0..s.vlen {
            let m = s.extra + 12 * i;
            let (name_off, type_id, off) = (self.u32_at(m), self.u32_at(m + 4), self.u32_at(m + 8));
            let bits = if s.kind_flag { off & 0xff_ffff } else { off };
            let name = self.name(name_off);
            if name == member {
                return Some((bits / 8, type_id));
            }
            if name.is_empty() {
                if let Some((o, t)) = self
                    .resolve(type_id)
                    .and_then(|inner| self.member(inner, member, depth + 1))
                {
                    return Some((bits / 8 + o, t));
                }
            }
        }
        None
    }

    /// Offset of a dotted path such as `__sk_common.skc_net.net` in struct `root`.
    pub fn offset_of(&self, root: &str, path: &str) -> Result<u32> {
        let mut s = self.struct_named(root)?;
        let mut total = 0;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let (off, type_id) = self
                .member(s, part, 0)
                .ok_or_else(|| anyhow!("{root}.{path}: no member {part}"))?;
            total += off;
            if i + 1 < parts.len() {
                s = self
                    .resolve(type_id)
                    .ok_or_else(|| anyhow!("{root}.{path}: {part} is not a struct"))?;
            }
        }
        Ok(total)
    }

    /// Values of an enum by name, with `prefix` removed from the member names.
    pub fn enum_values(&self, name: &str, prefix: &str) -> Result<HashMap<u64, String>> {
        let t = (1..self.types.len() as u32)
            .filter_map(|id| self.ty(id))
            .find(|t| matches!(t.kind, KIND_ENUM | KIND_ENUM64) && self.name(t.name_off) == name)
            .ok_or_else(|| anyhow!("enum {name} not found in BTF"))?;
        let mut out = HashMap::new();
        let size = if t.kind == KIND_ENUM { 8 } else { 12 };
        for i in 0..t.vlen {
            let m = t.extra + size * i;
            let n = self.name(self.u32_at(m));
            let v = if t.kind == KIND_ENUM {
                self.u32_at(m + 4) as u64
            } else {
                self.u32_at(m + 4) as u64 | (self.u32_at(m + 8) as u64) << 32
            };
            out.entry(v)
                .or_insert_with(|| n.strip_prefix(prefix).unwrap_or(n).to_string());
        }
        Ok(out)
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
            sk_protocol: get("sock", "sk_protocol"),
            skc_family: get("sock", "__sk_common.skc_family"),
            inet_sport: get("inet_sock", "inet_sport"),
            skc_dport: get("sock", "__sk_common.skc_dport"),
            skc_daddr: get("sock", "__sk_common.skc_daddr"),
            inet_saddr: get("inet_sock", "inet_saddr"),
            skc_v6_daddr: get("sock", "__sk_common.skc_v6_daddr"),
            skc_v6_rcv_saddr: get("sock", "__sk_common.skc_v6_rcv_saddr"),
            skc_state: get("sock", "__sk_common.skc_state"),
            sk_err: get("sock", "sk_err"),
            task_files: get("task_struct", "files"),
            files_fdt: get("files_struct", "fdt"),
            fdtable_fd: get("fdtable", "fd"),
            fdtable_max_fds: get("fdtable", "max_fds"),
            file_private_data: get("file", "private_data"),
            socket_sk: get("socket", "sk"),
            skb_sk: get("sk_buff", "sk"),
            // Moved into sock_common (skc_flags) by newer kernels.
            sk_flags: match self.offset_of("sock", "__sk_common.skc_flags") {
                Ok(v) => v,
                Err(_) => get("sock", "sk_flags"),
            },
            _pad: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: int, struct inner { u32 a; u32 b; }, struct outer { u32 x;
    /// union { struct inner in; } (anonymous) ; }, enum e { E_ONE = 1, E_TWO = 2 }.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0x\0in\0e\0E_ONE\0E_TWO\0";
        let s = |name: &str| -> u32 {
            let needle = [name.as_bytes(), b"\0"].concat();
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_slice())
                .unwrap() as u32
        };
        let mut t = Vec::new();
        let mut ty = |name: u32, kind: u32, vlen: u32, kflag: u32, next: u32, extra: &[u32]| {
            for v in [name, (kflag << 31) | (kind << 24) | vlen, next]
                .iter()
                .chain(extra)
            {
                t.extend_from_slice(&v.to_le_bytes());
            }
        };
        ty(s("int"), KIND_INT, 0, 0, 4, &[32]); // 1
        ty(
            s("inner"),
            KIND_STRUCT,
            2,
            0,
            8,
            &[s("a"), 1, 0, s("b"), 1, 32],
        ); // 2
        ty(0, KIND_UNION, 1, 0, 8, &[s("in"), 2, 0]); // 3: anonymous union
        ty(s("outer"), KIND_STRUCT, 2, 0, 12, &[s("x"), 1, 0, 0, 3, 32]); // 4
        ty(s("e"), KIND_ENUM, 2, 0, 4, &[s("E_ONE"), 1, s("E_TWO"), 2]); // 5
        let mut out = Vec::new();
        for v in [
            0xeb9fu16.to_le_bytes().as_slice(),
            &[1, 0],
            &24u32.to_le_bytes(),
            &0u32.to_le_bytes(),
            &(t.len() as u32).to_le_bytes(),
            &(t.len() as u32).to_le_bytes(),
            &(strings.len() as u32).to_le_bytes(),
        ] {
            out.extend_from_slice(v);
        }
        out.extend_from_slice(&t);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn offsets_through_anonymous_members_and_nested_structs() {
        let b = KernelBtf::parse(blob()).unwrap();
        assert_eq!(b.offset_of("outer", "x").unwrap(), 0);
        assert_eq!(b.offset_of("outer", "in.b").unwrap(), 4 + 4);
        assert_eq!(b.offset_of("inner", "b").unwrap(), 4);
        assert!(b.offset_of("outer", "nope").is_err());
        assert!(b.offset_of("missing", "x").is_err());
        let e = b.enum_values("e", "E_").unwrap();
        assert_eq!(e.get(&2).map(String::as_str), Some("TWO"));
    }

    #[test]
    fn rejects_garbage() {
        assert!(KernelBtf::parse(vec![]).is_err());
        assert!(KernelBtf::parse(vec![
            0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 255, 255, 0, 0
        ])
        .is_err());
        let mut b = blob();
        b[24 + 7] = 0x7f; // first type's kind: unknown
        assert!(KernelBtf::parse(b).is_err());
    }

    #[test]
    fn reads_the_running_kernel_when_it_has_btf() {
        let Ok(b) = KernelBtf::load() else {
            eprintln!("skipped: no {VMLINUX}");
            return;
        };
        let mut missing = Vec::new();
        let o = b.kernel_offsets(&mut missing);
        assert!(missing.is_empty(), "{missing:?}");
        assert_ne!(o.sk_net, NO_OFFSET);
        assert!(o.sock_fields_known(), "{o:?}");
        // struct sock_common starts with the peer's address on every kernel since 2.6.
        assert_eq!(o.skc_daddr, 0);
        assert!(b
            .enum_values("skb_drop_reason", "SKB_DROP_REASON_")
            .unwrap()
            .values()
            .any(|n| n == "NO_SOCKET"));
    }
}
