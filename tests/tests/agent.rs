//! `rstrace agent`, the long-running mode: capture files in a directory within a disk
//! budget (oldest deleted first, a restart keeping the previous run's files, nothing
//! but rstrace's own files touched), `explain DIR`, and the JSON Lines file reopened
//! on SIGHUP for logrotate.
#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]
use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    explain_json, json_lines, port, require_root, s, time_scale, wait_until, Agent, Topology,
};

const SEC: Duration = Duration::from_secs(1);
const MIB: u64 = 1 << 20;

fn scratch_dir(name: &str) -> PathBuf {
    let d = tests::scratch_file("agent", name);
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

/// rstrace's capture files in `dir` (its name pattern, regular files of root), by
/// name, with their sizes.
fn own_files(dir: &Path) -> BTreeMap<String, u64> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let m = fs::symlink_metadata(e.path()).ok()?;
            (name.starts_with("rstrace-2")
                && name.ends_with(".rst")
                && m.file_type().is_file()
                && m.uid() == 0)
                .then_some((name, m.len()))
        })
        .collect()
}

/// Refusals to `port` in rounds until `done` holds, at most 24 rounds; returns how
/// many were sent. Rounds, because the bytes a refusal writes differ by kernel (5.10
/// has fewer hooks): a round stays well under a rotation's size, so a rotation is
/// not overshot by a whole file even when the agent lags a few rounds behind.
fn storm_until(t: &Topology, port: u16, what: &str, mut done: impl FnMut() -> bool) -> u64 {
    const ROUND: u32 = 3_000;
    let mut sent = 0;
    for round in 1..=24 {
        t.refusals(port, ROUND as usize, 120 * SEC * time_scale());
        sent += u64::from(ROUND);
        // A second between rounds; the last round gets the agent's full allowance.
        let wait = if round == 24 {
            10 * SEC * time_scale()
        } else {
            SEC
        };
        let deadline = Instant::now() + wait;
        loop {
            if done() {
                return sent;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    panic!("{what} after {sent} refusals");
}

/// Explained failures of `explain --json CAPTURE` by port: the sum of their counts.
fn explained_counts(capture: &Path) -> BTreeMap<u16, u64> {
    let mut counts = BTreeMap::new();
    for v in explain_json(&[], capture) {
        if s(&v, "kind") == "failure" {
            *counts.entry(port(s(&v, "dst"))).or_default() += v["count"].as_u64().unwrap();
        }
    }
    counts
}

/// Two runs into one directory with 1 MiB files and a 3 MiB budget, each with a storm
/// of refusals long enough to rotate (about 92 bytes each): the restart keeps the
/// first run's files; the second run's rotation deletes the oldest of them, and only
/// it, keeping the directory within budget; a symlink, a file of another name and a
/// file of another user, all named to be deleted first, are left alone; `explain DIR`
/// reads what is kept.
#[test]
fn a_capture_directory_stays_within_budget_deleting_the_oldest_and_only_its_own() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let dir = scratch_dir("budget");
    let notes = dir.join("notes.txt");
    fs::write(&notes, vec![0u8; (3 * MIB / 2) as usize]).unwrap();
    let link = dir.join("rstrace-20000101T000000Z.rst");
    std::os::unix::fs::symlink(&notes, &link).unwrap();
    let args = [
        "--addr",
        &t.server_ip,
        "--capture-dir",
        dir.to_str().unwrap(),
        "--rotate-mib",
        "1",
        "--disk-budget",
        "3",
    ];

    let mut run1 = Agent::start_node_agent(&args);
    let sent1 = storm_until(&t, 8401, "the first run's rotation", || {
        own_files(&dir).len() >= 2
    });
    assert!(
        run1.stop_with(libc::SIGTERM).success(),
        "{:?}",
        run1.stderr()
    );
    let first = own_files(&dir);
    assert_eq!(first.len(), 2, "{first:?}");
    let (a1, a1_size) = first.iter().next().map(|(n, s)| (n.clone(), *s)).unwrap();
    let a2 = first.keys().nth(1).unwrap().clone();
    assert!(a1_size >= MIB, "{first:?}");

    // Another user's file, older than all by its name: a copy of the first run's
    // first file, so that `explain DIR` still gets run 1 whole.
    let foreign = dir.join("rstrace-20000101T000001Z.rst");
    fs::copy(dir.join(&a1), &foreign).unwrap();
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    // And one newer than all: counted in the budget, it would have the second run
    // delete more than the oldest.
    let foreign_new = dir.join("rstrace-20991231T000000Z.rst");
    fs::copy(dir.join(&a1), &foreign_new).unwrap();
    std::os::unix::fs::chown(&foreign_new, Some(65534), Some(65534)).unwrap();

    let mut run2 = Agent::start_node_agent(&args);
    let at_start = own_files(&dir);
    assert!(
        at_start.contains_key(&a1) && at_start.contains_key(&a2) && at_start.len() == 3,
        "the restart must keep the previous run's files and start its own: {at_start:?}"
    );
    // While the storm rotates files, the directory never holds more than the budget.
    let sampler = {
        let dir = dir.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s2 = stop.clone();
        let h = std::thread::spawn(move || {
            let mut most = 0;
            let deadline = Instant::now() + 300 * SEC;
            while !s2.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                most = most.max(own_files(&dir).values().sum::<u64>());
                std::thread::sleep(Duration::from_millis(20));
            }
            most
        });
        (stop, h)
    };
    let sent2 = storm_until(&t, 8402, "the second run's rotation", || {
        own_files(&dir).len() >= 3 && !own_files(&dir).contains_key(&a1)
    });
    assert!(
        run2.stop_with(libc::SIGTERM).success(),
        "{:?}",
        run2.stderr()
    );
    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.1.join().unwrap();
    let last = own_files(&dir);
    assert!(most <= 3 * MIB, "the directory held {most} bytes: {last:?}");
    assert!(!last.contains_key(&a1), "the oldest file stays: {last:?}");
    assert!(
        last.contains_key(&a2),
        "more than the oldest was deleted: {last:?}"
    );
    assert_eq!(last.len(), 3, "{last:?}");
    assert!(last.values().sum::<u64>() <= 3 * MIB, "{last:?}");
    assert_eq!(fs::metadata(&notes).unwrap().len(), 3 * MIB / 2);
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_link(&link).unwrap(), notes);
    assert_eq!(fs::metadata(&foreign).unwrap().len(), a1_size);
    assert_eq!(fs::metadata(&foreign_new).unwrap().len(), a1_size);
    for f in last.keys() {
        assert_eq!(
            fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777,
            0o600,
            "{f}"
        );
    }

    // The directory explained: run 1 (another user's copy of its first file, then its
    // second) and run 2 (both its files), every refusal counted once.
    fs::remove_file(&foreign_new).unwrap();
    let counts = explained_counts(&dir);
    assert_eq!(counts.get(&8401), Some(&sent1), "{counts:?}");
    assert_eq!(counts.get(&8402), Some(&sent2), "{counts:?}");
    let _ = fs::remove_dir_all(&dir);
}

/// The explanations of failures in the JSON file, appended to what it held; renamed
/// (as logrotate does) and SIGHUP: a new file takes the next ones at once.
#[test]
fn the_json_file_gets_the_explanations_and_is_reopened_on_sighup() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let dir = scratch_dir("json");
    let file = dir.join("rstrace.jsonl");
    let rotated = dir.join("rstrace.jsonl.1");
    fs::write(&file, "{\"kind\":\"before\"}\n").unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    let capture = dir.join("capture");
    let mut agent = Agent::start_node_agent(&[
        "--addr",
        &t.server_ip,
        "--capture-dir",
        capture.to_str().unwrap(),
        "--json-file",
        file.to_str().unwrap(),
    ]);
    let lines = |p: &Path| -> Vec<Value> { json_lines(&fs::read_to_string(p).unwrap_or_default()) };
    let failed_on = |p: &Path, port_: u16| {
        lines(p)
            .iter()
            .any(|v| s(v, "kind") == "failure" && port(s(v, "dst")) == port_)
    };
    t.refusals(8411, 1, 120 * SEC * time_scale());
    wait_until("the explanation in the JSON file", 10 * SEC, || {
        failed_on(&file, 8411)
    });
    assert_eq!(
        s(&lines(&file)[0], "kind"),
        "before",
        "appended, not replaced"
    );

    fs::rename(&file, &rotated).unwrap();
    agent.signal(libc::SIGHUP);
    wait_until("a new JSON file after SIGHUP", 5 * SEC, || file.exists());
    let m = fs::metadata(&file).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    t.refusals(8412, 1, 120 * SEC * time_scale());
    wait_until("the next explanation in the new file", 10 * SEC, || {
        failed_on(&file, 8412)
    });
    assert!(!failed_on(&file, 8411), "{:?}", lines(&file));
    assert!(failed_on(&rotated, 8411) && !failed_on(&rotated, 8412));
    assert!(
        agent.stop_with(libc::SIGTERM).success(),
        "{:?}",
        agent.stderr()
    );
    assert!(agent.records().is_empty(), "stdout: {:?}", agent.records());
    let _ = fs::remove_dir_all(&dir);
}
