//! Capture files against the real kernel: what `explain` says of a recording must be
//! what `watch` printed live, and a recording cut off by kill -9 still explains.
#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]
use std::{
    collections::BTreeSet,
    fs::Permissions,
    io::{BufRead, BufReader},
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tests::{
    capability, explain_json, json_lines, pid_of, port, require_root, rstrace_bin, s, Agent, Peer,
    TestCgroup, Topology,
};

const SEC: Duration = Duration::from_secs(1);

/// What must match between live and replay: cause, port, the processes, outcome.
fn key(v: &Value) -> (String, u16, Option<u64>, Option<u64>, String, u64) {
    (
        s(v, "cause").to_string(),
        port(s(v, "dst")),
        pid_of(v, "process"),
        pid_of(v, "culprit"),
        s(v, "outcome").to_string(),
        v["count"].as_u64().unwrap_or(0),
    )
}

fn scratch(name: &str) -> std::path::PathBuf {
    tests::scratch_file("capture", name)
}

#[test]
fn explaining_a_recording_gives_what_watch_printed_live() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let file = scratch("live.rst");
    let mut agent = Agent::start(&["--addr", &t.server_ip, "--record", file.to_str().unwrap()]);
    // A refusal, a listener on the wrong address, a firewall drop, an application reset.
    let c = Peer::spawn(&t.client, &["connect", &format!("{}:8201", t.server_ip)]);
    c.wait(10 * SEC);
    let mut lo = Peer::spawn(&t.server, &["listen", "127.0.0.1:8202"]);
    lo.wait_line(5 * SEC, |l| l == "ready");
    let c = Peer::spawn(&t.client, &["connect", &format!("{}:8202", t.server_ip)]);
    c.wait(10 * SEC);
    t.server.nft_input("tcp dport 8203 drop");
    let c = Peer::spawn(
        &t.client,
        &["connect", &format!("{}:8203", t.server_ip), "--syncnt", "1"],
    );
    c.wait(15 * SEC);
    let mut l0 = Peer::spawn(
        &t.server,
        &["listen", &format!("{}:8204", t.server_ip), "--linger0"],
    );
    l0.wait_line(5 * SEC, |l| l == "ready");
    let c = Peer::spawn(
        &t.client,
        &[
            "connect",
            &format!("{}:8204", t.server_ip),
            "--then",
            "read",
        ],
    );
    c.wait(10 * SEC);
    for p in [8201, 8202, 8203, 8204] {
        agent.wait_for(&format!("live explanation for {p}"), 10 * SEC, |v| {
            s(v, "kind") == "failure" && port(s(v, "dst")) == p
        });
    }
    std::thread::sleep(SEC);
    assert!(agent.stop().success());

    let live: BTreeSet<_> = agent
        .records()
        .iter()
        .filter(|v| s(v, "kind") == "failure")
        .map(key)
        .collect();
    let replay: BTreeSet<_> = explain_json(&["--addr", &t.server_ip], &file)
        .iter()
        .map(key)
        .collect();
    let causes: BTreeSet<&str> = live.iter().map(|k| k.0.as_str()).collect();
    // What each kernel's evidence allows (see the explain tests).
    let drop = if capability("drop_reasons") {
        "firewall_drop"
    } else {
        "syn_unanswered"
    };
    let reset = if capability("rst_sent_reason") {
        "reset_linger_zero"
    } else {
        "reset_by_application"
    };
    assert_eq!(
        causes,
        [drop, "listener_other_address", "nothing_listening", reset]
            .into_iter()
            .collect(),
        "live: {live:#?}"
    );
    assert_eq!(replay, live, "replay differs from live");
    if capability("drop_reasons") {
        // The rule read live is in the capture: the replay names it too.
        let h = t.server.nft_handle("tcp dport 8203 drop");
        let named = format!(
            "the rule `tcp dport 8203 drop` (table inet rstrace_test, chain input, handle {h})"
        );
        let delete = format!("nft delete rule inet rstrace_test input handle {h}");
        let replayed = explain_json(&["--addr", &t.server_ip], &file);
        for (what, all) in [("live", agent.records()), ("replay", replayed)] {
            let e = all
                .iter()
                .find(|v| s(v, "kind") == "failure" && port(s(v, "dst")) == 8203)
                .unwrap_or_else(|| panic!("no {what} explanation for 8203"));
            assert!(s(e, "explanation").contains(&named), "{what}: {e}");
            assert!(s(e, "fix").contains(&delete), "{what}: {e}");
        }
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_recording_killed_with_sigkill_still_explains() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let file = scratch("killed.rst");
    let agent = Agent::start(&["--addr", &t.server_ip, "--record", file.to_str().unwrap()]);
    let c = Peer::spawn(&t.client, &["connect", &format!("{}:8205", t.server_ip)]);
    let cpid = c.pid as u64;
    c.wait(10 * SEC);
    agent.wait_for("live explanation", 5 * SEC, |v| s(v, "kind") == "failure");
    // Chunks reach the disk within a second.
    std::thread::sleep(Duration::from_millis(1500) * tests::time_scale());
    agent.signal(libc::SIGKILL);
    let replay = explain_json(&["--addr", &t.server_ip], &file);
    let e = replay
        .iter()
        .find(|v| port(s(v, "dst")) == 8205)
        .expect("the refusal survives kill -9");
    assert_eq!(s(e, "cause"), "nothing_listening");
    assert_eq!(pid_of(e, "process"), Some(cpid));
}

/// An unprivileged uid and gid to plant files as: nobody's numbers, which need no
/// user database (the QEMU guests have none).
fn unprivileged_user() -> (u32, u32) {
    (65534, 65534)
}

/// A fresh directory under /tmp with `mode`.
fn shared_dir(name: &str, mode: u32) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rstrace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, Permissions::from_mode(mode)).unwrap();
    d
}

/// `rstrace record -o FILE ARGS` with umask 000 and `env`, which must fail on its own
/// (it is killed if still recording after a minute); returns its stderr.
fn record_fails(file: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = Command::new("sh")
        .args(["-c", "umask 000; exec \"$0\" \"$@\""])
        .arg(rstrace_bin())
        .args(["record", "-o"])
        .arg(file)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + 60 * SEC;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "rstrace record did not fail: {status:?}, {stderr}"
    );
    stderr
}

/// `rstrace record -o FILE ARGS` with umask 000 and `env`, stopped with SIGINT once
/// it is recording; returns its stderr.
fn record_briefly(file: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = Command::new("sh")
        .args(["-c", "umask 000; exec \"$0\" \"$@\""])
        .arg(rstrace_bin())
        .args(["record", "-o"])
        .arg(file)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stderr = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        stderr += &line;
        stderr += "\n";
        if line.contains("watching") {
            // SAFETY: kill takes no pointers; the pid is a child this test started.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            break;
        }
    }
    for line in lines {
        stderr += &line.unwrap();
        stderr += "\n";
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "rstrace record failed: {stderr}");
    stderr
}

#[test]
fn a_symlink_another_user_planted_is_refused_and_its_target_untouched() {
    if !require_root() {
        return;
    }
    let (uid, gid) = unprivileged_user();
    // World-writable with the sticky bit, like /tmp and /var/tmp.
    let dir = shared_dir("sticky", 0o1777);
    let target = scratch("roots-file");
    std::fs::write(&target, "root's data\n").unwrap();
    std::fs::set_permissions(&target, Permissions::from_mode(0o644)).unwrap();
    let link = dir.join("attack.rst");
    let planted = Command::new("ln")
        .arg("-s")
        .args([&target, &link])
        .uid(uid)
        .gid(gid)
        .status()
        .unwrap();
    assert!(planted.success());
    assert_eq!(std::fs::symlink_metadata(&link).unwrap().uid(), uid);
    for args in [&[][..], &["--force"]] {
        let stderr = record_fails(&link, args, &[]);
        assert!(
            stderr.contains("is a symbolic link, which rstrace never follows"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "root's data\n");
    let meta = std::fs::metadata(&target).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o644, 0));
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_existing_file_is_refused_and_force_replaces_it_with_a_new_0600_file() {
    if !require_root() {
        return;
    }
    let (uid, gid) = unprivileged_user();
    // World-writable without the sticky bit: a warning.
    let dir = shared_dir("open", 0o777);
    let file = dir.join("incident.rst");
    let other = dir.join("other");
    std::fs::write(&file, "an earlier file\n").unwrap();
    std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
    std::fs::hard_link(&file, &other).unwrap();

    let stderr = record_fails(&file, &[], &[]);
    assert!(
        stderr.contains("already exists") && stderr.contains("--force"),
        "{stderr}"
    );
    assert!(stderr.contains("writable by every user"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "an earlier file\n");

    // Through sudo the file goes to the user who ran it; umask 000 changes nothing.
    let (u, g) = (uid.to_string(), gid.to_string());
    record_briefly(&file, &["--force"], &[("SUDO_UID", &u), ("SUDO_GID", &g)]);
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    assert!(std::fs::read(&file).unwrap().starts_with(b"RSTRACE\0"));
    // The old file was replaced, never written: its other name still holds it.
    assert_eq!(
        std::fs::read_to_string(&other).unwrap(),
        "an earlier file\n"
    );
    assert_eq!(std::fs::metadata(&other).unwrap().mode() & 0o7777, 0o644);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs rstrace as nobody (65534), without privileges; its stdout.
fn as_nobody(args: &[&str], file: &Path) -> String {
    let out = Command::new(rstrace_bin())
        .args(args)
        .arg(file)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rstrace {args:?} as nobody failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The offline commands, run without privileges on a capture recorded through sudo (so
/// given to that user): explain, summary and export agree on a storm of refusals, and
/// --since/--until select by time.
#[test]
fn summary_export_and_time_filters_work_offline_without_privileges() {
    if !require_root() {
        return;
    }
    let t = Topology::new();
    let file = scratch("offline.rst");
    let started = std::time::SystemTime::now();
    let mut agent = Agent::start_env(
        &["--addr", &t.server_ip, "--record", file.to_str().unwrap()],
        &[("SUDO_UID", "65534"), ("SUDO_GID", "65534")],
    );
    let c = Peer::spawn(
        &t.client,
        &["connect", &format!("{}:8205", t.server_ip), "--count", "7"],
    );
    assert_eq!(c.wait(20 * SEC).len(), 7);
    agent.wait_for("the refusals explained", 5 * SEC, |v| {
        s(v, "kind") == "failure" && port(s(v, "dst")) == 8205
    });
    assert!(agent.stop().success());
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), 65534);

    let explained = json_lines(&as_nobody(&["explain", "--json", "--port", "8205"], &file));
    let total: u64 = explained
        .iter()
        .filter(|v| s(v, "kind") == "failure")
        .map(|v| v["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, 7, "explain: {explained:#?}");

    let summary: Value =
        serde_json::from_str(&as_nobody(&["summary", "--json", "--port", "8205"], &file))
            .expect("summary --json");
    assert_eq!(summary["failures"], 7, "{summary}");
    assert_eq!(summary["by_cause"]["nothing_listening"], 7, "{summary}");
    assert_eq!(
        summary["by_port"]["8205"]["nothing_listening"], 7,
        "{summary}"
    );
    let text = as_nobody(&["summary", "--port", "8205"], &file);
    assert!(text.contains("nothing_listening"), "{text}");

    let exported = json_lines(&as_nobody(&["export", "--port", "8205"], &file));
    let kinds: BTreeSet<&str> = exported.iter().map(|v| s(v, "kind")).collect();
    assert!(kinds.contains("rst_received"), "{kinds:?}");
    assert!(
        !kinds.contains("failure"),
        "export prints records, not explanations"
    );
    assert_eq!(
        exported
            .iter()
            .filter(|v| s(v, "kind") == "rst_received")
            .count(),
        7
    );

    // The recording lies between `started` and now (RFC 3339, UTC).
    let rfc3339 = |t: std::time::SystemTime| {
        // Civil date from days since the epoch (Howard Hinnant's algorithm).
        let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        )
    };
    let before = rfc3339(started - Duration::from_secs(60));
    let after = rfc3339(std::time::SystemTime::now() + Duration::from_secs(60));
    let count = |args: &[&str]| -> usize {
        json_lines(&as_nobody(args, &file))
            .iter()
            .filter(|v| s(v, "kind") == "failure")
            .count()
    };
    assert!(count(&["explain", "--json", "--port", "8205", "--since", &before]) > 0);
    assert!(count(&["explain", "--json", "--port", "8205", "--until", &after]) > 0);
    assert_eq!(
        count(&["explain", "--json", "--port", "8205", "--since", &after]),
        0
    );
    assert_eq!(
        count(&["explain", "--json", "--port", "8205", "--until", &before]),
        0
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn a_refusal_names_the_systemd_service_whose_listener_exited_live_and_replayed() {
    service_listener_exits(false, 8211);
}

/// The same with the service running before the agent: its owner and cgroup come
/// from /proc, not from the kernel's ownership entries.
#[test]
fn a_service_from_before_the_agent_is_named_when_its_listener_exits() {
    service_listener_exits(true, 8212);
}

fn service_listener_exits(server_first: bool, p: u16) {
    if !require_root() {
        return;
    }
    let Some(cg) = TestCgroup::make("web.service") else {
        return;
    };
    let t = Topology::new();
    let file = scratch(&format!("workload-{p}.rst"));
    let addr = format!("{}:{p}", t.server_ip);
    let start = || Agent::start(&["--addr", &t.server_ip, "--record", file.to_str().unwrap()]);
    let mut agent = (!server_first).then(start);
    let mut server = Peer::spawn_in_cgroup(&t.server, cg.leaf(), &["listen", &addr]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let mut agent = agent.take().unwrap_or_else(start);
    let spid = server.pid as u64;
    drop(server); // SIGKILL: the listener closes as the process exits.
    std::thread::sleep(Duration::from_millis(600));
    let c = Peer::spawn(&t.client, &["connect", &addr]);
    assert_eq!(c.wait(10 * SEC), vec!["errno=111"]);
    agent.wait_for(&format!("live explanation for {p}"), 10 * SEC, |v| {
        s(v, "kind") == "failure" && port(s(v, "dst")) == p
    });
    std::thread::sleep(SEC);
    agent.stop();
    let live = agent.records();
    // The context record that names the listener's cgroup, before its records.
    assert!(
        live.iter().any(|v| s(v, "kind") == "workload"
            && v["cgroup"].as_u64().is_some()
            && v["unit"] == "web.service"),
        "no workload record for web.service"
    );
    let replayed = explain_json(&["--addr", &t.server_ip], &file);
    for (what, all) in [("live", live), ("replay", replayed)] {
        let e = all
            .iter()
            .find(|v| s(v, "kind") == "failure" && port(s(v, "dst")) == p)
            .unwrap_or_else(|| panic!("{what}: no explanation for {p}"));
        assert_eq!(pid_of(e, "culprit"), Some(spid), "{what}: {e}");
        assert_eq!(e["culprit"]["unit"], "web.service", "{what}: {e}");
        assert!(
            s(e, "explanation").contains(&format!("web.service (peer[{spid}])")),
            "{what}: {e}"
        );
        assert!(
            s(e, "fix").contains("systemctl status web.service"),
            "{what}: {e}"
        );
        // The unit's journal from a minute before its process exited, in local time.
        let since = s(e, "fix")
            .split_once("journalctl -u web.service --since '")
            .and_then(|(_, t)| t.split_once('\''))
            .map(|(t, _)| t.to_string())
            .unwrap_or_else(|| panic!("{what}: no journalctl --since: {e}"));
        let exited = local_epoch(&since)
            .unwrap_or_else(|| panic!("{what}: `{since}` is not YYYY-MM-DD HH:MM:SS"))
            + 60;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            now.abs_diff(exited) < 30,
            "{what}: --since '{since}' is not a minute before the exit: {e}"
        );
    }
    drop(cg);
}

/// Seconds since the epoch of a local `YYYY-MM-DD HH:MM:SS` (what journalctl reads), by
/// the C library rather than GNU date, which the guests' busybox lacks.
fn local_epoch(t: &str) -> Option<u64> {
    let (date, time) = t.split_once(' ')?;
    let d: Vec<i32> = date
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let h: Vec<i32> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let ([y, mo, da], [hh, mi, ss]) = (d.as_slice(), h.as_slice()) else {
        return None;
    };
    // SAFETY: all-zero is a valid `tm` (plain integers and, where present, a null
    // zone name).
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = *da;
    tm.tm_hour = *hh;
    tm.tm_min = *mi;
    tm.tm_sec = *ss;
    tm.tm_isdst = -1;
    // SAFETY: `tm` is a valid, exclusively borrowed `tm`.
    let secs = unsafe { libc::mktime(&mut tm) };
    u64::try_from(secs).ok()
}
