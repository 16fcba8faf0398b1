//! Tracepoint format files: field layouts and `__print_symbolic` tables of the running
//! kernel, read at run time because both move between kernel versions.
use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};

/// Where tracefs is mounted, mounting it when it is missing.
pub fn ensure_tracefs() -> Result<PathBuf> {
    const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
    for c in CANDIDATES {
        match Path::new(c).join("events").metadata() {
            Ok(m) if m.is_dir() => return Ok(PathBuf::from(c)),
            // Mounted, but readable by root only (mode 0700): mounting again cannot help.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => bail!(
                "tracefs at {c} is readable by root only: run rstrace as root, or grant it \
                 CAP_DAC_READ_SEARCH"
            ),
            _ => {}
        }
    }
    let target = CANDIDATES[0];
    // SAFETY: every pointer is a NUL-terminated string literal; data may be null.
    let res = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if res != 0 {
        let err = std::io::Error::last_os_error();
        bail!(
            "tracefs is not mounted and mounting it at {target} failed ({err}); \
             mount it with `mount -t tracefs tracefs {target}`"
        );
    }
    if !Path::new(target).join("events").is_dir() {
        bail!("tracefs mounted at {target} has no events directory");
    }
    log::info!("mounted tracefs at {target}");
    Ok(PathBuf::from(target))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// Declared C type, e.g. `const void *` or `__u8` (array suffix removed).
    pub ctype: String,
    pub offset: usize,
    pub size: usize,
    pub signed: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub fields: Vec<Field>,
    pub print_fmt: String,
}

impl Format {
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<Format> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Format::parse(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Format> {
        let mut fmt = Format::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("print fmt:") {
                fmt.print_fmt = rest.trim().to_string();
                continue;
            }
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut decl = "";
            let (mut offset, mut size, mut signed) = (None, None, false);
            for (i, part) in rest.split(';').enumerate() {
                let part = part.trim();
                if i == 0 {
                    decl = part;
                } else if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("signed:") {
                    signed = v == "1";
                }
            }
            let (Some(offset), Some(size)) = (offset, size) else {
                bail!("malformed field line: {line}");
            };
            // "const void * skaddr", "__u8 saddr[28]", "__data_loc char[] name".
            let decl = decl.split('[').next().unwrap_or(decl).trim();
            let (ctype, name) = match decl.rfind([' ', '*']) {
                Some(i) => (
                    decl[..=i].trim().to_string(),
                    decl[i + 1..].trim().to_string(),
                ),
                None => (String::new(), decl.to_string()),
            };
            fmt.fields.push(Field {
                name,
                ctype,
                offset,
                size,
                signed,
            });
        }
        if fmt.fields.is_empty() {
            bail!("no fields");
        }
        Ok(fmt)
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// Bytes from the start of the record to the end of its last field.
    pub fn record_len(&self) -> usize {
        self.fields
            .iter()
            .map(|f| f.offset + f.size)
            .max()
            .unwrap_or(0)
    }

    /// The `{ value, "NAME" }` pairs of the `__print_symbolic` applied to `field`.
    pub fn symbolic(&self, field: &str) -> HashMap<u64, String> {
        let mut out = HashMap::new();
        let needle = format!("__print_symbolic(REC->{field},");
        let Some(start) = self.print_fmt.find(&needle) else {
            return out;
        };
        let mut rest = &self.print_fmt[start + needle.len()..];
        // Pairs follow as `{ 2, "NO_SOCKET" }, ...` until the closing parenthesis.
        while let Some(open) = rest.find('{') {
            if rest[..open].contains(')') {
                break;
            }
            let Some(close) = rest[open..].find('}') else {
                break;
            };
            let pair = &rest[open + 1..open + close];
            if let Some((v, n)) = pair.split_once(',') {
                let v = v.trim();
                let n = n.trim().trim_matches('"');
                let parsed = match v.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16).ok(),
                    None => v.parse().ok(),
                };
                if let Some(v) = parsed {
                    out.insert(v, n.to_string());
                }
            }
            rest = &rest[open + close + 1..];
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET_618: &str = r#"name: tcp_send_reset
ID: 1650
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skbaddr;	offset:8;	size:8;	signed:0;
	field:const void * skaddr;	offset:16;	size:8;	signed:0;
	field:int state;	offset:24;	size:4;	signed:1;
	field:enum sk_rst_reason reason;	offset:28;	size:4;	signed:0;
	field:__u8 saddr[28];	offset:32;	size:28;	signed:0;
	field:__u8 daddr[28];	offset:60;	size:28;	signed:0;

print fmt: "skbaddr=%p skaddr=%p src=%pISpc dest=%pISpc state=%s reason=%s", REC->skbaddr, REC->skaddr, REC->saddr, REC->daddr, REC->state ? __print_symbolic(REC->state, { TCP_ESTABLISHED, "TCP_ESTABLISHED" }) : "UNKNOWN", __print_symbolic(REC->reason, { SK_RST_REASON_NOT_SPECIFIED, "NOT_SPECIFIED" }, { 2, "NO_SOCKET" }, { 0x10, "TCP_STATE" })
"#;

    #[test]
    fn parses_fields_and_sizes() {
        let f = Format::parse(SEND_RESET_618).unwrap();
        let sk = f.field("skaddr").unwrap();
        assert_eq!(
            (sk.offset, sk.size, sk.ctype.as_str()),
            (16, 8, "const void *")
        );
        let sa = f.field("saddr").unwrap();
        assert_eq!((sa.offset, sa.size, sa.ctype.as_str()), (32, 28, "__u8"));
        assert_eq!(f.field("reason").unwrap().ctype, "enum sk_rst_reason");
        assert!(f.field("state").unwrap().signed);
        assert_eq!(f.record_len(), 88);
    }

    #[test]
    fn reads_symbolic_tables_skipping_symbols_it_cannot_resolve() {
        let f = Format::parse(SEND_RESET_618).unwrap();
        let t = f.symbolic("reason");
        assert_eq!(t.get(&2).map(String::as_str), Some("NO_SOCKET"));
        assert_eq!(t.get(&16).map(String::as_str), Some("TCP_STATE"));
        assert_eq!(t.len(), 2);
        assert!(f.symbolic("nonexistent").is_empty());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Format::parse("hello").is_err());
        assert!(Format::parse("field:int x;\toffset:zz;\tsize:4;").is_err());
    }
}
