//! Kernel code addresses to function names (drop locations), loaded on first use.
use std::fs;

#[derive(Default)]
pub struct Kallsyms {
    /// Sorted (address, name) of text symbols; None until first use.
    syms: Option<Vec<(u64, String)>>,
}

impl Kallsyms {
    fn load() -> Vec<(u64, String)> {
        let text = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let mut syms: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let addr = u64::from_str_radix(it.next()?, 16).ok()?;
                let kind = it.next()?;
                let name = it.next()?;
                (addr != 0 && matches!(kind, "t" | "T")).then(|| (addr, name.to_string()))
            })
            .collect();
        syms.sort_unstable();
        syms
    }

    /// `function+0xoff`, or the hex address when symbols are not readable.
    pub fn resolve(&mut self, addr: u64) -> String {
        let syms = self.syms.get_or_insert_with(Self::load);
        let i = syms.partition_point(|(a, _)| *a <= addr);
        match i.checked_sub(1).and_then(|i| syms.get(i)) {
            Some((a, name)) => format!("{name}+{:#x}", addr - a),
            None => format!("{addr:#x}"),
        }
    }
}
