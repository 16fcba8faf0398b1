//! rstrace as a node service: the capabilities it keeps once attached (and that its
//! explanations still work with only those), what it says when it lacks some,
//! readiness over $NOTIFY_SOCKET, the systemd unit, the DaemonSet manifest against
//! what `doctor --json` says the agent needs, shell completions and man pages.
use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use tests::{
    capability, owner_pid, pid_of, port, require_root, rstrace_bin, s, skip, time_scale, Agent,
    Peer, Topology,
};

const SEC: Duration = Duration::from_secs(1);

/// What the live loop keeps, by the kernel's capability numbers: CAP_DAC_READ_SEARCH
/// (2), CAP_NET_ADMIN (12), CAP_SYS_PTRACE (19), CAP_SYS_ADMIN (21), CAP_BPF (39).
const LIVE_CAPS: u64 = 1 << 2 | 1 << 12 | 1 << 19 | 1 << 21 | 1 << 39;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file of the repository; None (with a skip line) where the tests run without the
/// source tree (the QEMU guests).
fn repo_file(rel: &str) -> Option<String> {
    match fs::read_to_string(root().join(rel)) {
        Ok(t) => Some(t),
        Err(e) => {
            skip(&format!("{rel} not readable here ({e})"));
            None
        }
    }
}

fn has_program(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The capability sets of a process's status file, by line name (CapEff, ...).
fn cap_sets(pid: u32) -> Vec<(String, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let bits = u64::from_str_radix(v.trim(), 16).ok()?;
            k.starts_with("Cap").then(|| (k.to_string(), bits))
        })
        .collect()
}

fn doctor_json() -> Value {
    let out = Command::new(rstrace_bin())
        .args(["doctor", "--json"])
        .output()
        .expect("rstrace doctor");
    serde_json::from_slice(&out.stdout).expect("doctor --json")
}

/// The capabilities doctor lists (`CAP_BPF`, ...), all or only those kept live.
fn doctor_caps(live_only: bool) -> BTreeSet<String> {
    doctor_json()["linux_capabilities"]
        .as_array()
        .expect("linux_capabilities")
        .iter()
        .filter(|c| !live_only || c["phase"] == "live")
        .map(|c| c["name"].as_str().expect("name").to_string())
        .collect()
}

/// Once "watching", every thread holds only the live capabilities, in every set (the
/// bounding and ambient ones too, which the commands it runs inherit); and the
/// explanations that need them still come: a refusal after a listener from before the
/// agent exited (its owner found in /proc, entered in the kernel's map), and a
/// firewall drop naming its rule (nft run in the server's namespace).
#[test]
fn once_watching_it_keeps_only_the_live_capabilities_and_still_explains() {
    if !require_root() {
        return;
    }
    let live: BTreeSet<String> = [
        "CAP_BPF",
        "CAP_DAC_READ_SEARCH",
        "CAP_NET_ADMIN",
        "CAP_SYS_ADMIN",
        "CAP_SYS_PTRACE",
    ]
    .map(String::from)
    .into();
    assert_eq!(doctor_caps(true), live, "doctor's live capabilities");

    let t = Topology::new();
    t.server.nft_input("tcp dport 8331 drop");
    // A server of another user (nobody), from before the agent: its /proc/PID/fd is
    // that user's, and its process is not the agent's to inspect without
    // CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE.
    let peer = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("peer");
    let mut server = Command::new("ip")
        .args(["netns", "exec", &t.server.name, "setpriv"])
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(peer)
        .args(["listen", &format!("{}:8330", t.server_ip)])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ip netns exec setpriv peer");
    let spid = server.id() as u64;
    let kill_server = tests::KillOnDrop(server.id());
    let mut ready = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    let mut agent = Agent::start(&["--addr", &t.server_ip]);

    for (set, got) in cap_sets(agent.pid) {
        assert_eq!(
            got, LIVE_CAPS,
            "{set} of the agent: {got:#x}, want {LIVE_CAPS:#x}"
        );
    }
    for task in fs::read_dir(format!("/proc/{}/task", agent.pid)).expect("tasks") {
        let tid: u32 = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
        let eff = cap_sets(tid)
            .into_iter()
            .find(|(k, _)| k == "CapEff")
            .unwrap();
        assert_eq!(eff.1, LIVE_CAPS, "CapEff of thread {tid}");
    }

    // The listener from before the agent: its owner read from /proc at start-up.
    let l = agent.wait_for("the listener's owner", 10 * SEC, |v| {
        s(v, "kind") == "listener" && port(s(v, "src")) == 8330
    });
    assert_eq!(owner_pid(&l), Some(spid), "{l}");
    drop(kill_server); // SIGKILL: the listener closes as its process exits.
    server.wait().unwrap();
    std::thread::sleep(Duration::from_millis(600) * time_scale());
    let client = Peer::spawn(&t.client, &["connect", &format!("{}:8330", t.server_ip)]);
    assert_eq!(client.wait(10 * SEC), vec!["errno=111"]);
    let e = agent.wait_for("the refusal's explanation", 5 * SEC, |v| {
        s(v, "kind") == "failure" && port(s(v, "dst")) == 8330
    });
    assert_eq!(s(&e, "cause"), "service_restarting", "{e}");
    assert_eq!(pid_of(&e, "culprit"), Some(spid), "{e}");

    let client = Peer::spawn(
        &t.client,
        &["connect", &format!("{}:8331", t.server_ip), "--syncnt", "1"],
    );
    assert_eq!(client.wait(15 * SEC), vec!["errno=110"]);
    if capability("drop_reasons") {
        let e = agent.wait_for("the firewall drop's explanation", 5 * SEC, |v| {
            s(v, "kind") == "failure" && port(s(v, "dst")) == 8331
        });
        let h = t.server.nft_handle("tcp dport 8331 drop");
        assert_eq!(s(&e, "cause"), "firewall_drop", "{e}");
        assert!(
            s(&e, "explanation").contains(&format!(
                "the rule `tcp dport 8331 drop` (table inet rstrace_test, chain input, handle {h})"
            )),
            "{e}"
        );
    } else {
        skip("no drop reasons on this kernel: the firewall rule is not named");
    }
    agent.stop();
}

/// Root's uid with only some capabilities (as a unit or a container may be given):
/// what is missing to start is named, each with what it is for; what only degrades
/// the output is named as a warning and the agent starts.
#[test]
fn without_enough_capabilities_it_names_each_missing_one() {
    if !require_root() {
        return;
    }
    let run = |bounding: &str| {
        Command::new("setpriv")
            .arg(format!("--bounding-set=-all{bounding}"))
            .arg(rstrace_bin())
            .args(["watch", "--port", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv (util-linux)")
    };
    let out = run(",+net_admin").wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for cap in ["CAP_BPF", "CAP_PERFMON"] {
        assert!(
            err.contains(&format!("  {cap}: ")),
            "{cap} not named: {err}"
        );
    }
    assert!(
        err.contains("rstrace doctor") && !err.contains("panicked"),
        "{err}"
    );

    // Enough to attach, not to read other processes and namespaces well. Before 5.11
    // maps are charged to RLIMIT_MEMLOCK, which only CAP_SYS_RESOURCE lifts.
    let attach = if tests::kernel_version() < (5, 11) {
        ",+bpf,+perfmon,+sys_admin,+sys_resource"
    } else {
        ",+bpf,+perfmon,+sys_admin"
    };
    let mut child = run(attach);
    let _kill = tests::KillOnDrop(child.id());
    let mut seen = Vec::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("watching") {
            break;
        }
        seen.push(line);
    }
    let seen = seen.join("\n");
    for cap in ["CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_NET_ADMIN"] {
        assert!(seen.contains(&format!("without {cap}: ")), "{cap}: {seen}");
    }
    // SAFETY: kill takes no pointers; the pid is a child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    // Its last lines are read, so that it can print them.
    let last: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {seen}\n{}", last.join("\n"));
}

/// A locked-memory limit of 64 KiB that only CAP_SYS_RESOURCE may raise, without it:
/// before 5.11 (maps charged to RLIMIT_MEMLOCK) the agent says so, with both ways out,
/// instead of a bare EPERM from creating maps; from 5.11 on (maps charged to the
/// memory cgroup) it starts.
#[test]
fn a_locked_memory_limit_it_cannot_raise_is_named_before_5_11() {
    if !require_root() {
        return;
    }
    let mut cmd = Command::new("setpriv");
    cmd.arg("--bounding-set=-all,+bpf,+perfmon,+sys_admin")
        .arg(rstrace_bin())
        .args(["watch", "--port", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let lower = || {
        let r = libc::rlimit {
            rlim_cur: 64 << 10,
            rlim_max: 64 << 10,
        };
        // SAFETY: `r` is a valid rlimit alive for the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &r) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, lower) };
    let mut child = cmd.spawn().expect("setpriv (util-linux)");
    let _kill = tests::KillOnDrop(child.id());
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut watching = false;
    for line in lines.by_ref() {
        let line = line.unwrap();
        watching = line.contains("watching");
        seen.push(line);
        if watching {
            break;
        }
    }
    let seen = seen.join("\n");
    if tests::kernel_version() < (5, 11) {
        assert!(!watching, "started with 64 KiB of locked memory: {seen}");
        for want in [
            "CAP_SYS_RESOURCE",
            "RLIMIT_MEMLOCK",
            "64 KiB",
            "LimitMEMLOCK=infinity",
        ] {
            assert!(seen.contains(want), "{want} not said: {seen}");
        }
        assert!(!seen.contains("panicked"), "{seen}");
        // The error itself, not only the warning before it, says why the maps failed.
        let error = seen
            .lines()
            .find(|l| l.starts_with("rstrace: "))
            .unwrap_or_default();
        assert!(
            error.contains("locked-memory limit") && error.contains("CAP_SYS_RESOURCE"),
            "{seen}"
        );
        assert!(!child.wait().unwrap().success());
    } else {
        assert!(
            watching,
            "maps are not charged to RLIMIT_MEMLOCK here: {seen}"
        );
        // SAFETY: kill takes no pointers; the pid is a child this test started.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _: Vec<String> = lines.map_while(Result::ok).collect();
        assert!(child.wait().unwrap().success(), "{seen}");
    }
}

/// As another user than root (as a container may run it), with only CAP_BPF and
/// CAP_PERFMON: tracefs, root's alone, needs CAP_DAC_READ_SEARCH, and the error says
/// so rather than that tracefs is not mounted.
#[test]
fn as_another_user_it_names_what_reading_tracefs_needs() {
    if !require_root() {
        return;
    }
    let tracefs = Path::new("/sys/kernel/tracing");
    let mode = fs::metadata(tracefs.join("events")).map(|_| {
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(tracefs).unwrap().permissions())
    });
    if mode.map_or(true, |m| m & 0o005 == 0o005) {
        skip("tracefs is not mounted at /sys/kernel/tracing, or every user may read it");
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=+bpf,+perfmon", "--ambient-caps=+bpf,+perfmon"])
        .arg(rstrace_bin())
        .args(["watch", "--port", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("  CAP_DAC_READ_SEARCH: read tracefs"), "{err}");
    assert!(
        !err.contains("  CAP_BPF") && !err.contains("not mounted"),
        "{err}"
    );
}

/// `Type=notify`: READY=1 arrives on $NOTIFY_SOCKET once the programs are attached
/// (the agent holds program descriptors and has already dropped its start-up
/// capabilities), STOPPING=1 when it stops.
#[test]
fn readiness_is_told_on_notify_socket_once_attached() {
    if !require_root() {
        return;
    }
    let dir = tempdir("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind");
    sock.set_read_timeout(Some(60 * SEC)).unwrap();
    let mut child = Command::new(rstrace_bin())
        .args(["watch", "--port", "1"])
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rstrace");
    let _kill = tests::KillOnDrop(child.id());
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("no READY=1 within 60 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    let progs = fs::read_dir(format!("/proc/{}/fd", child.id()))
        .expect("fds")
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy() == "anon_inode:bpf-prog")
        .count();
    assert!(progs > 0, "ready before any program was loaded");
    let eff = cap_sets(child.id())
        .into_iter()
        .find(|(k, _)| k == "CapEff")
        .unwrap();
    assert_eq!(
        eff.1, LIVE_CAPS,
        "ready before the capabilities were dropped"
    );
    // SAFETY: kill takes no pointers; the pid is a child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = sock.recv(&mut buf).expect("no STOPPING=1");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), "STOPPING=1");
    assert!(child.wait().unwrap().success());
    let _ = fs::remove_dir_all(&dir);
}

fn tempdir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rstrace-{what}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("a scratch directory");
    d
}

/// The man pages, generated from the command line's definitions into DIR/man1.
fn man_pages(dir: &Path) -> PathBuf {
    let man1 = dir.join("man1");
    let st = Command::new(rstrace_bin())
        .args(["man-pages", "--dir"])
        .arg(&man1)
        .status()
        .expect("rstrace man-pages");
    assert!(st.success());
    man1
}

/// The unit's capabilities are doctor's, and it passes `systemd-analyze verify` (its
/// directives, the binary, and the man pages its Documentation= names).
#[test]
fn the_systemd_unit_verifies_and_grants_what_doctor_lists() {
    let Some(unit) = repo_file("dist/systemd/rstrace.service") else {
        return;
    };
    let bounding: BTreeSet<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet=")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(bounding, doctor_caps(false), "unit vs doctor");
    for want in [
        "Type=notify",
        "Restart=on-failure",
        "StateDirectory=rstrace",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
    ] {
        assert!(unit.lines().any(|l| l == want), "the unit lacks {want}");
    }
    if !has_program("systemd-analyze") {
        skip("systemd-analyze is not installed: the unit file was not verified");
        return;
    }
    let dir = tempdir("unit");
    man_pages(&dir);
    let bin = rstrace_bin().canonicalize().expect("rstrace binary");
    let file = dir.join("rstrace.service");
    fs::write(
        &file,
        unit.replace("/usr/local/bin/rstrace", &bin.to_string_lossy()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&file)
        .env("MANPATH", &dir)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
    let _ = fs::remove_dir_all(&dir);
}

/// The DaemonSet adds exactly the capabilities doctor lists (and drops the rest), sees
/// the host's processes, and mounts every host path doctor lists; NODE_NAME, the
/// scrape annotations and the probes agree on the metrics port.
#[test]
fn the_daemonset_grants_and_mounts_what_doctor_lists() {
    let Some(text) = repo_file("dist/kubernetes/rstrace-daemonset.yaml") else {
        return;
    };
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("valid YAML"))
        .collect();
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let pod = &ds["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(spec["hostPID"], true, "the host's /proc");
    assert_eq!(spec["hostNetwork"], true);
    let containers = spec["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    let names = |v: &serde_yaml::Value| -> BTreeSet<String> {
        v.as_sequence()
            .expect("a list")
            .iter()
            .map(|x| x.as_str().expect("a name").to_string())
            .collect()
    };
    assert_eq!(
        names(&sc["capabilities"]["drop"]),
        ["ALL".to_string()].into()
    );
    let want: BTreeSet<String> = doctor_caps(false)
        .iter()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    assert_eq!(
        names(&sc["capabilities"]["add"]),
        want,
        "manifest vs doctor"
    );

    // Container path -> host path.
    let volumes = spec["volumes"].as_sequence().expect("volumes");
    let host_of = |name: &serde_yaml::Value| {
        volumes
            .iter()
            .find(|v| &v["name"] == name)
            .and_then(|v| v["hostPath"]["path"].as_str())
    };
    let mounts: Vec<(String, String)> = c["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .filter_map(|m| {
            Some((
                m["mountPath"].as_str()?.to_string(),
                host_of(&m["name"])?.to_string(),
            ))
        })
        .collect();
    for p in doctor_json()["host_paths"].as_array().expect("host_paths") {
        let path = p["path"].as_str().unwrap();
        if path == "/proc" {
            continue; // hostPID, asserted above
        }
        assert!(
            mounts
                .iter()
                .any(|(inside, host)| inside == host && Path::new(path).starts_with(inside)),
            "{path} ({}) is not mounted from the host at the same path",
            p["why"]
        );
    }

    let env = c["env"].as_sequence().expect("env");
    let node = env
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .expect("NODE_NAME");
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    for r in ["cpu", "memory"] {
        assert!(c["resources"]["requests"][r].is_string(), "no {r} request");
    }

    // The metrics endpoint: the port of --metrics is the named container port the
    // probes use and the one the scrape annotations give.
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string"))
        .collect();
    let listen = args
        .iter()
        .position(|a| *a == "--metrics")
        .and_then(|i| args.get(i + 1))
        .expect("--metrics ADDR in the args");
    let metrics_port: u64 = listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("--metrics {listen}: no port"));
    let ports = c["ports"].as_sequence().expect("ports");
    let named = |name: &serde_yaml::Value| -> u64 {
        match name.as_u64() {
            Some(n) => n,
            None => ports
                .iter()
                .find(|p| &p["name"] == name)
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("no container port named {name:?}")),
        }
    };
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert_eq!(
            named(&get["port"]),
            metrics_port,
            "{probe} vs --metrics {listen}"
        );
    }
    let notes = &pod["metadata"]["annotations"];
    assert_eq!(notes["prometheus.io/scrape"], "true");
    assert_eq!(notes["prometheus.io/path"], "/metrics");
    assert_eq!(
        notes["prometheus.io/port"]
            .as_str()
            .and_then(|p| p.parse().ok()),
        Some(metrics_port),
        "scrape annotation vs --metrics {listen}"
    );
    // $(POD_IP) in the args is the downward API's.
    if listen.contains("$(POD_IP)") {
        let ip = env
            .iter()
            .find(|e| e["name"] == "POD_IP")
            .expect("POD_IP for --metrics");
        assert_eq!(ip["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    }
}

const COMMANDS: [&str; 9] = [
    "watch",
    "agent",
    "record",
    "explain",
    "summary",
    "export",
    "probe",
    "doctor",
    "completions",
];

#[test]
fn completions_parse_and_name_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(rstrace_bin())
            .args(["completions", shell])
            .output()
            .expect("rstrace completions");
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        for c in COMMANDS {
            assert!(text.contains(c), "{shell} completions lack {c}");
        }
        if shell != "bash" {
            continue;
        }
        if !has_program("bash") {
            skip("bash is not installed: its completions were not parsed");
            continue;
        }
        let dir = tempdir("completions");
        let file = dir.join("rstrace.bash");
        fs::write(&file, &out.stdout).unwrap();
        let st = Command::new("bash").arg("-n").arg(&file).output().unwrap();
        assert!(
            st.status.success(),
            "bash -n: {}",
            String::from_utf8_lossy(&st.stderr)
        );
        let _ = fs::remove_dir_all(&dir);
    }
}

#[test]
fn man_pages_render() {
    let dir = tempdir("man");
    let man1 = man_pages(&dir);
    for c in COMMANDS {
        assert!(
            man1.join(format!("rstrace-{c}.1")).exists(),
            "no page for {c}"
        );
    }
    let page = man1.join("rstrace.1");
    let roff = fs::read_to_string(&page).unwrap();
    assert!(
        roff.starts_with(".ie") || roff.contains(".TH rstrace 1"),
        "{roff}"
    );
    let rendered = if has_program("man") {
        Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANWIDTH", "80")
            .output()
    } else if has_program("groff") {
        Command::new("groff")
            .args(["-man", "-Tutf8"])
            .arg(&page)
            .output()
    } else {
        skip("neither man nor groff is installed: the page's roff text was checked only");
        return;
    };
    let out = rendered.expect("rendering the man page");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "NAME",
        "SYNOPSIS",
        "rstrace-watch(1)",
        "Explains why TCP connections",
    ] {
        assert!(text.contains(want), "rendered page lacks {want:?}:\n{text}");
    }
    let _ = fs::remove_dir_all(&dir);
}
