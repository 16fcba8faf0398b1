//! A directory of capture files (`--capture-dir`): each file is named by the time it
//! was started (`rstrace-20261201T010203Z.rst`), so that no run or rotation ever
//! writes over another's file and a restart keeps the evidence of what came before.
//! The files together stay within a disk budget: the oldest are deleted first.
//!
//! Only files of this module's name pattern that are regular files owned by whoever
//! rstrace's files there belong to are counted and deleted; anything else in the
//! directory (a symlink, another user's file, a file of another name) is left alone.
use std::{
    ffi::{OsStr, OsString},
    fs::File,
    io,
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::base::private_file::Dir;

const PREFIX: &str = "rstrace-";
const SUFFIX: &str = ".rst";

/// Where a file stands in the directory's order: its start time as written in its
/// name (`20261201T010203Z`, which sorts as the time does), then the number that
/// tells apart files started within the same second.
pub type Order = (String, u32);

/// The name of a file started at `at`; `seq` > 0 when that second's name is taken.
pub fn file_name(at: SystemTime, seq: u32) -> String {
    let stamp: String = humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    if seq == 0 {
        format!("{PREFIX}{stamp}{SUFFIX}")
    } else {
        // `_` sorts after the `.` of the first name: `ls` lists them in order.
        format!("{PREFIX}{stamp}_{seq}{SUFFIX}")
    }
}

/// The order of a name of the pattern `file_name` writes; None for any other name.
pub fn parse_name(name: &str) -> Option<Order> {
    let rest = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    let (stamp, seq) = match rest.split_once('_') {
        Some((s, n)) => {
            let digits = !n.is_empty() && n.len() <= 9 && n.bytes().all(|b| b.is_ascii_digit());
            (s, if digits { n.parse().ok()? } else { return None })
        }
        None => (rest, 0),
    };
    let b = stamp.as_bytes();
    let ok = b.len() == 16
        && b[8] == b'T'
        && b[15] == b'Z'
        && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    ok.then(|| (stamp.to_string(), seq))
}

/// The files to delete so that the directory stays within `budget` bytes: the closed
/// files (`(order, size)`, any order), oldest first, until they and `reserve` bytes
/// for the open file fit. Never the open file, which is not among `closed`.
pub fn over_budget(closed: &[(Order, u64)], reserve: u64, budget: u64) -> Vec<Order> {
    let mut files: Vec<&(Order, u64)> = closed.iter().collect();
    files.sort();
    let mut total: u64 = reserve.saturating_add(files.iter().map(|f| f.1).sum());
    let mut out = Vec::new();
    for (order, size) in files {
        if total <= budget {
            break;
        }
        total -= size;
        out.push(order.clone());
    }
    out
}

/// The capture files in `dir` of rstrace's name pattern (regular files only), oldest
/// first: what `explain DIR` reads.
pub fn files_in(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let Some(order) = e.file_name().to_str().and_then(parse_name) else {
            continue;
        };
        if e.file_type()?.is_file() {
            files.push((order, e.path()));
        }
    }
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// The directory a recording writes its files in, opened once.
pub struct CaptureDir {
    dir: Dir,
    budget: u64,
    /// Room kept for the open file: its rotation size and one chunk past it.
    reserve: u64,
    /// Names already reported as not rstrace's own (warned about once).
    foreign: Vec<OsString>,
}

impl CaptureDir {
    /// Opens `path`, creating it (mode 0700) when it is missing.
    pub fn open(path: &Path, budget: u64, reserve: u64) -> io::Result<CaptureDir> {
        match std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
            .create(path)
        {
            Ok(()) => log::info!("created {}", path.display()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("creating {}: {e}", path.display()),
                ))
            }
        }
        let dir = Dir::open(path)?;
        Ok(CaptureDir {
            dir,
            budget,
            reserve,
            foreign: Vec::new(),
        })
    }

    pub fn display(&self, name: &OsStr) -> String {
        self.dir.display(name)
    }

    /// Creates the next file, named by the present time, starting with `head`; a name
    /// already taken (a restart or a rotation within the same second) gets a number.
    pub fn create_next(&self, head: &[u8]) -> io::Result<(File, OsString)> {
        let now = SystemTime::now();
        for seq in 0..1000 {
            let name = OsString::from(file_name(now, seq));
            match self.dir.create(&name, false, head) {
                Ok(f) => return Ok((f, name)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "{}: 1000 capture files started within one second",
            self.dir.display(OsStr::new(""))
        )))
    }

    /// Deletes the oldest of rstrace's files but `open` until the directory fits the
    /// budget; returns the names deleted.
    pub fn prune(&mut self, open: &OsStr) -> io::Result<Vec<OsString>> {
        let list = std::fs::read_dir(self.dir.proc_path())?;
        let mut closed = Vec::new();
        let mut names = std::collections::HashMap::new();
        for e in list {
            let name = e?.file_name();
            if name == open {
                continue;
            }
            let Some(order) = name.to_str().and_then(parse_name) else {
                continue;
            };
            let st = match self.dir.own_stat(&name) {
                Ok(Some(st)) => st,
                Ok(None) => continue, // gone meanwhile
                Err(e) => {
                    if !self.foreign.contains(&name) {
                        log::warn!("{e}: left alone, and not counted in the disk budget");
                        self.foreign.push(name);
                    }
                    continue;
                }
            };
            closed.push((order.clone(), st.st_size as u64));
            names.insert(order, name);
        }
        let mut deleted = Vec::new();
        for order in over_budget(&closed, self.reserve, self.budget) {
            let Some(name) = names.remove(&order) else {
                continue;
            };
            // Checked again just before: only ever one of rstrace's own files.
            if self.dir.own_file(&name).unwrap_or(false) {
                self.dir.unlink(&name)?;
                log::info!("deleted {} (disk budget)", self.dir.display(&name));
                deleted.push(name);
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn names_carry_the_start_time_and_parse_back() {
        // 2026-12-01T01:02:03Z
        let t = at(1_796_086_923);
        assert_eq!(file_name(t, 0), "rstrace-20261201T010203Z.rst");
        assert_eq!(file_name(t, 2), "rstrace-20261201T010203Z_2.rst");
        assert_eq!(
            parse_name("rstrace-20261201T010203Z.rst"),
            Some(("20261201T010203Z".into(), 0))
        );
        assert_eq!(
            parse_name("rstrace-20261201T010203Z_2.rst"),
            Some(("20261201T010203Z".into(), 2))
        );
        assert!(parse_name(&file_name(at(0), 7)).is_some());
    }

    #[test]
    fn other_names_are_not_rstraces() {
        for n in [
            "capture.rst",
            "rstrace-20261201T010203Z.rst.1",
            "rstrace-20261201T010203Z.rs",
            "rstrace-20261201T010203.rst",
            "rstrace-2026120XT010203Z.rst",
            "rstrace-20261201T010203Z_.rst",
            "rstrace-20261201T010203Z__1.rst",
            "rstrace-20261201T010203Z_x.rst",
            "rstrace-20261201T010203Z-1.rst",
            ".rstrace-20261201T010203Z.rst.rstrace-new-1-0",
            "rstrace-20261201T0102034Z.rst",
            "xrstrace-20261201T010203Z.rst",
        ] {
            assert_eq!(parse_name(n), None, "{n}");
        }
    }

    #[test]
    fn names_order_as_their_times() {
        let names = [
            file_name(at(100), 0),
            file_name(at(100), 1),
            file_name(at(100), 10),
            file_name(at(101), 0),
            file_name(at(1_000_000_000), 0),
        ];
        let orders: Vec<Order> = names.iter().map(|n| parse_name(n).unwrap()).collect();
        let mut sorted = orders.clone();
        sorted.sort();
        assert_eq!(orders, sorted);
        // And as names, up to nine files a second.
        let mut by_name = names[..2].to_vec();
        by_name.sort();
        assert_eq!(by_name, names[..2]);
    }

    fn o(s: &str, seq: u32) -> Order {
        (s.to_string(), seq)
    }

    #[test]
    fn the_oldest_go_first_until_the_rest_fits() {
        let closed = [
            (o("20261201T010300Z", 0), 40),
            (o("20261201T010100Z", 0), 40),
            (o("20261201T010200Z", 1), 40),
            (o("20261201T010200Z", 0), 40),
        ];
        // 160 closed + 30 reserved in 100: 90 must go, three files of the oldest.
        assert_eq!(
            over_budget(&closed, 30, 100),
            vec![
                o("20261201T010100Z", 0),
                o("20261201T010200Z", 0),
                o("20261201T010200Z", 1)
            ]
        );
        // Exactly at the budget: nothing.
        assert!(over_budget(&closed, 40, 200).is_empty());
        assert_eq!(
            over_budget(&closed, 41, 200),
            vec![o("20261201T010100Z", 0)]
        );
        // A reserve larger than the budget deletes every closed file, and no more.
        assert_eq!(over_budget(&closed, 500, 100).len(), 4);
        assert!(over_budget(&[], 500, 100).is_empty());
    }
}
