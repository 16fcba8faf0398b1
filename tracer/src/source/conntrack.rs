//! Connection tracking (nf_conntrack) statistics of a namespace: what `conntrack -S`
//! shows, read from `/proc/net/stat/nf_conntrack` (per namespace; one row per possible
//! CPU, values in hex). The kernel has no drop reason of its own for conntrack (6.18:
//! a packet an `ct state invalid drop` rule drops is `NETFILTER_DROP` at
//! nft_do_chain), so these counters are the evidence that conntrack was involved.
use std::{collections::HashMap, fs, path::Path};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::base::record::ConntrackStats;

/// Parses `/proc/net/stat/nf_conntrack`: a header line naming the columns, then one
/// row per CPU. Counters are summed over the rows; `entries` is the namespace's
/// table size, printed the same on every row, so it is taken once. Columns this
/// kernel does not print stay 0.
pub fn parse_stat(text: &str) -> Result<ConntrackStats> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or_else(|| anyhow!("empty nf_conntrack statistics"))?
        .split_whitespace()
        .collect();
    if header.first() != Some(&"entries") {
        bail!("unexpected nf_conntrack statistics header: {:?}", header);
    }
    let mut sums: HashMap<&str, u64> = HashMap::new();
    let mut entries = None;
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let values: Vec<&str> = line.split_whitespace().collect();
        if values.len() != header.len() {
            bail!(
                "nf_conntrack statistics row has {} values for {} columns",
                values.len(),
                header.len()
            );
        }
        for (&name, v) in header.iter().zip(values) {
            let v = u64::from_str_radix(v, 16)
                .with_context(|| format!("nf_conntrack statistic {name}={v}"))?;
            if name == "entries" {
                entries.get_or_insert(v);
            } else {
                *sums.entry(name).or_default() += v;
            }
        }
    }
    let g = |n: &str| sums.get(n).copied().unwrap_or(0);
    Ok(ConntrackStats {
        entries: entries.ok_or_else(|| anyhow!("nf_conntrack statistics without rows"))?,
        max: None,
        invalid: g("invalid"),
        drop: g("drop"),
        early_drop: g("early_drop"),
        insert_failed: g("insert_failed"),
    })
}

/// The statistics of the namespace whose `/proc/.../net` directory is `net` (for
/// another namespace: `/proc/PID/net` of a process in it, or `/proc/thread-self/net`
/// after setns). None when conntrack is not loaded (no statistics file).
pub fn read(net: &Path) -> Result<Option<ConntrackStats>> {
    let path = net.join("stat/nf_conntrack");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut s = parse_stat(&text).with_context(|| format!("parsing {}", path.display()))?;
    // The limit is global (read-only in other namespaces), but readable in each.
    s.max = fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_max")
        .ok()
        .and_then(|v| v.trim().parse().ok());
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As 6.18 prints it, two CPUs.
    const STAT: &str = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart
00000003  00000000 00000000 00000000 0000000a 00000000 00000000 00000000 00000000 00000001 00000002 00000000 00000000  00000000 00000000 00000000 00000000
00000003  00000001 00000000 00000000 00000005 00000000 00000000 00000000 00000000 00000000 00000001 00000004 00000000  00000000 00000000 00000000 00000000
";

    #[test]
    fn counters_are_summed_over_cpus_and_entries_taken_once() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(
            s,
            ConntrackStats {
                entries: 3,
                max: None,
                invalid: 15,
                drop: 3,
                early_drop: 4,
                insert_failed: 1,
            }
        );
    }

    #[test]
    fn older_column_sets_are_read_by_name() {
        // 5.10 prints `searched` and no `clashres`; the columns are found by name.
        let old = "entries  searched found new invalid ignore delete delete_list insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n00000001  00000000 00000000 00000000 00000007 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000  00000000 00000000 00000000 00000000\n";
        let s = parse_stat(old).unwrap();
        assert_eq!((s.entries, s.invalid, s.drop), (1, 7, 0));
    }

    #[test]
    fn damaged_files_are_errors() {
        assert!(parse_stat("").is_err());
        assert!(parse_stat("entries invalid\n").is_err());
        assert!(parse_stat("entries invalid\n00000001\n").is_err());
        assert!(parse_stat("entries invalid\n00000001 zz\n").is_err());
        assert!(parse_stat("Ip: Forwarding\n1\n").is_err());
    }
}
