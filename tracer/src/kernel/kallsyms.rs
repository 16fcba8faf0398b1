//! Kernel code addresses to function names (drop locations), loaded on first use.
//!
//! The file is opened at start-up: the kernel decides whether it shows addresses
//! (CAP_SYSLOG) when it is opened, and the agent drops that capability once attached.
use std::{
    fs,
    io::{self, BufRead},
};

#[derive(Default)]
pub struct Kallsyms {
    /// /proc/kallsyms, opened but not yet read.
    file: Option<fs::File>,
    /// The text symbols; None until first use.
    syms: Option<Symbols>,
}

/// Text symbols sorted by address, their names in one string: about 120k symbols take
/// 4 MiB so, where a `String` each took twice that in 120k allocations.
#[derive(Default)]
struct Symbols {
    /// (address, start of the name in `names`, its length).
    addrs: Vec<(u64, u32, u32)>,
    names: String,
}

impl Symbols {
    /// Reads the text symbols of a kallsyms listing line by line (the whole file is
    /// some MiB of text).
    fn parse(text: impl BufRead) -> Symbols {
        let mut s = Symbols::default();
        for l in text.lines().map_while(Result::ok) {
            let mut it = l.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 || !matches!(kind, "t" | "T") {
                continue;
            }
            let (Ok(at), Ok(len)) = (u32::try_from(s.names.len()), u32::try_from(name.len()))
            else {
                break;
            };
            s.names.push_str(name);
            s.addrs.push((addr, at, len));
        }
        s.addrs.sort_unstable();
        s.addrs.shrink_to_fit();
        s.names.shrink_to_fit();
        s
    }

    fn resolve(&self, addr: u64) -> String {
        let i = self.addrs.partition_point(|&(a, _, _)| a <= addr);
        let found = i.checked_sub(1).and_then(|i| self.addrs.get(i));
        match found.and_then(|&(a, at, len)| {
            let name = self.names.get(at as usize..(at + len) as usize)?;
            Some(format!("{name}+{:#x}", addr - a))
        }) {
            Some(s) => s,
            None => format!("{addr:#x}"),
        }
    }
}

impl Kallsyms {
    /// Opens /proc/kallsyms now, to read it on first use.
    pub fn open() -> Kallsyms {
        Kallsyms {
            file: fs::File::open("/proc/kallsyms").ok(),
            syms: None,
        }
    }

    /// `function+0xoff`, or the hex address when symbols are not readable.
    pub fn resolve(&mut self, addr: u64) -> String {
        let file = &mut self.file;
        let syms = self.syms.get_or_insert_with(|| {
            // The file opened at start-up, not a path read now, decides the addresses.
            file.take()
                .map(|f| Symbols::parse(io::BufReader::new(f)))
                .unwrap_or_default()
        });
        syms.resolve(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::Symbols;

    #[test]
    fn resolves_text_symbols_only() {
        let text = "ffffffff81000000 T _stext\n\
                    ffffffff81000100 t helper\n\
                    ffffffff81000080 D some_data\n\
                    0000000000000000 T hidden\n\
                    ffffffffc0001000 t nft_do_chain\t[nf_tables]\n\
                    garbage line\n";
        let s = Symbols::parse(text.as_bytes());
        assert_eq!(s.resolve(0xffffffff81000010), "_stext+0x10");
        assert_eq!(s.resolve(0xffffffff81000090), "_stext+0x90");
        assert_eq!(s.resolve(0xffffffff81000180), "helper+0x80");
        assert_eq!(s.resolve(0xffffffffc00013e8), "nft_do_chain+0x3e8");
        assert_eq!(s.resolve(0x1000), "0x1000");
    }
}
