//! Kernel code addresses to function names (drop locations), loaded on first use.
//!
//! The file is opened at start-up: the kernel decides whether it shows addresses
//! (CAP_SYSLOG) when it is opened, and the agent drops that capability once attached.
use std::{fs, io::Read as _};

#[derive(Default)]
pub struct Kallsyms {
    /// /proc/kallsyms, opened but not yet read.
    file: Option<fs::File>,
    /// Sorted (address, name) of text symbols; None until first use.
    syms: Option<Vec<(u64, String)>>,
}

impl Kallsyms {
    /// Opens /proc/kallsyms now, to read it on first use.
    pub fn open() -> Kallsyms {
        Kallsyms {
            file: fs::File::open("/proc/kallsyms").ok(),
            syms: None,
        }
    }

    #[expect(
        clippy::verbose_file_reads,
        reason = "the file opened at start-up, not a path read now, decides the addresses"
    )]
    fn load(file: Option<fs::File>) -> Vec<(u64, String)> {
        let mut text = String::new();
        if let Some(mut f) = file {
            let _ = f.read_to_string(&mut text);
        }
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
        let file = &mut self.file;
        let syms = self.syms.get_or_insert_with(|| Self::load(file.take()));
        let i = syms.partition_point(|(a, _)| *a <= addr);
        match i.checked_sub(1).and_then(|i| syms.get(i)) {
            Some((a, name)) => format!("{name}+{:#x}", addr - a),
            None => format!("{addr:#x}"),
        }
    }
}
