//! Workloads against the real kernel: a server in a cgroup named as the kubelet
//! names a pod's container (both cgroup drivers), with the kubelet's log layout in a
//! scratch state root, dies; the refusal that follows names the pod and its
//! container, live and from the capture, and the filters select it. Likewise a real
//! container that Debian's crun runs from a root filesystem built here.
#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tests::{
    explain_json, failures, pid_of, port, require_root, s, Agent, Peer, TestCgroup, Topology,
};

const SEC: Duration = Duration::from_secs(1);
const UID: &str = "7a1b6c2e-3f4d-4a5b-9c8d-0e1f2a3b4c5d";
const ID: &str = "4f797c539e6c745de61a93ca3ff892358ecbcaccd8414d5db545c38428142970";

/// The kubelet's and containerd's files for pod shop/web-0 (container nginx) in a
/// scratch root: the pod's log directory, the container's log link, containerd's task
/// directory (which names the runtime of a cgroupfs-driver container).
struct KubeletFiles(PathBuf);

impl KubeletFiles {
    fn make(tag: &str) -> KubeletFiles {
        let root = tests::scratch_file("workload", &format!("state-{tag}"));
        let _ = std::fs::remove_dir_all(&root);
        let log = root.join(format!("var/log/pods/shop_web-0_{UID}/nginx/0.log"));
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        std::fs::write(&log, "").unwrap();
        let links = root.join("var/log/containers");
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(&log, links.join(format!("web-0_shop_nginx-{ID}.log"))).unwrap();
        std::fs::create_dir_all(root.join(format!(
            "run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}"
        )))
        .unwrap();
        KubeletFiles(root)
    }
}

impl Drop for KubeletFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The ports of the failures among `records`, sorted, each once.
fn ports(records: &[Value]) -> Vec<u16> {
    let mut p: Vec<u16> = records
        .iter()
        .filter(|v| s(v, "kind") == "failure")
        .map(|v| port(s(v, "dst")))
        .collect();
    p.sort_unstable();
    p.dedup();
    p
}

#[test]
fn a_pod_whose_server_died_is_named_systemd_driver() {
    let uid_ = UID.replace('-', "_");
    pod_server_dies(
        &format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
        ),
        8213,
        true,
        false,
    );
}

#[test]
fn a_pod_whose_server_died_is_named_cgroupfs_driver() {
    pod_server_dies(
        &format!("kubepods/burstable/pod{UID}/{ID}"),
        8215,
        false,
        false,
    );
}

/// The same with the pod's server running before the agents: its owner and cgroup
/// come from /proc, not from the kernel's ownership entries.
#[test]
fn a_pod_from_before_the_agent_is_named_when_its_server_dies() {
    let uid_ = UID.replace('-', "_");
    pod_server_dies(
        &format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
        ),
        8219,
        true,
        true,
    );
}

/// A server in the pod's container cgroup listens on `p`, dies, and a client is
/// refused there; another refusal on `p + 1` (nothing ever listened) has no pod.
/// With `live_filter`, a second agent watching with `--pod` prints only the first.
/// With `server_first`, the server listens before the agents start.
fn pod_server_dies(cgroup: &str, p: u16, live_filter: bool, server_first: bool) {
    if !require_root() {
        return;
    }
    let Some(cg) = TestCgroup::make(cgroup) else {
        return;
    };
    let files = KubeletFiles::make(&p.to_string());
    let root = files.0.to_str().unwrap().to_string();
    let env = [("RSTRACE_STATE_ROOT", root.as_str())];
    let t = Topology::new();
    let file = tests::scratch_file("workload", &format!("pod-{p}.rst"));
    let addr = format!("{}:{p}", t.server_ip);
    let other = format!("{}:{}", t.server_ip, p + 1);
    let start = || {
        let agent = Agent::start_env(
            &["--addr", &t.server_ip, "--record", file.to_str().unwrap()],
            &env,
        );
        let filtered = live_filter.then(|| {
            Agent::start_env(
                &[
                    "--pod",
                    "shop/web-0",
                    "--port",
                    &p.to_string(),
                    "--port",
                    &(p + 1).to_string(),
                ],
                &env,
            )
        });
        (agent, filtered)
    };
    let agents = (!server_first).then(start);
    let mut server = Peer::spawn_in_cgroup(&t.server, cg.leaf(), &["listen", &addr]);
    server.wait_line(5 * SEC, |l| l == "ready");
    let (mut agent, mut filtered) = agents.unwrap_or_else(start);
    let spid = server.pid as u64;
    drop(server); // SIGKILL: the listener closes as the process exits.
    std::thread::sleep(Duration::from_millis(600));
    for a in [&addr, &other] {
        let c = Peer::spawn(&t.client, &["connect", a]);
        assert_eq!(c.wait(10 * SEC), vec!["errno=111"]);
    }
    for q in [p, p + 1] {
        agent.wait_for(&format!("live explanation for {q}"), 10 * SEC, |v| {
            s(v, "kind") == "failure" && port(s(v, "dst")) == q
        });
    }
    std::thread::sleep(SEC);
    agent.stop();
    let replayed = explain_json(&["--addr", &t.server_ip], &file);
    for (what, all) in [
        ("live", failures(&agent.records(), p)),
        ("replay", failures(&replayed, p)),
    ] {
        let e = all
            .first()
            .unwrap_or_else(|| panic!("{what}: no explanation for {p}"));
        assert_eq!(pid_of(e, "culprit"), Some(spid), "{what}: {e}");
        let c = &e["culprit"];
        assert_eq!(
            (&c["pod"]["namespace"], &c["pod"]["name"], &c["pod"]["uid"]),
            (
                &Value::from("shop"),
                &Value::from("web-0"),
                &Value::from(UID)
            ),
            "{what}: {e}"
        );
        assert_eq!(
            (
                &c["container"]["runtime"],
                &c["container"]["id"],
                &c["container"]["name"]
            ),
            (
                &Value::from("containerd"),
                &Value::from(ID),
                &Value::from("nginx")
            ),
            "{what}: {e}"
        );
        assert!(
            s(e, "explanation").contains(&format!("pod shop/web-0 container nginx (peer[{spid}])")),
            "{what}: {e}"
        );
        assert!(
            s(e, "fix").contains("kubectl -n shop describe pod web-0"),
            "{what}: {e}"
        );
    }
    // The filters, offline: the pod, its container (name, id prefix), the namespace.
    let both = vec![p, p + 1];
    let sel = |args: &[&str]| ports(&explain_json(args, &file));
    assert_eq!(sel(&[]), both);
    assert_eq!(sel(&["--pod", "shop/web-0"]), vec![p]);
    assert_eq!(sel(&["--pod", "shop/web-1"]), Vec::<u16>::new());
    assert_eq!(sel(&["--container", "nginx"]), vec![p]);
    assert_eq!(sel(&["--container", &ID[..10]]), vec![p]);
    assert_eq!(sel(&["--unit", "nginx"]), Vec::<u16>::new());
    assert_eq!(sel(&["--netns", &t.server.name]), both);
    assert_eq!(sel(&["--netns", &t.client.inode.to_string()]), both);
    assert_eq!(sel(&["--netns", "no-such-ns"]), Vec::<u16>::new());
    if let Some(f) = filtered.as_mut() {
        f.wait_for(&format!("filtered explanation for {p}"), 10 * SEC, |v| {
            s(v, "kind") == "failure" && port(s(v, "dst")) == p
        });
        std::thread::sleep(SEC);
        f.stop();
        let live: Vec<Value> = f
            .records()
            .into_iter()
            .filter(|v| s(v, "kind") == "failure")
            .collect();
        assert_eq!(ports(&live), vec![p], "live --pod: {live:#?}");
    }
    let _ = std::fs::remove_file(&file);
    drop(cg);
}

/// A container run by crun from a root filesystem built here (Debian's static
/// busybox, nothing pulled) in the network namespace `netns`; deleted on drop.
struct CrunContainer {
    id: String,
    bundle: PathBuf,
}

impl CrunContainer {
    /// Created (its process stopped before exec), moved into `cgroup`, started.
    /// crun refuses hybrid hosts even without a cgroup manager, so it runs in a mount
    /// namespace of its own that has the v2 hierarchy at /sys/fs/cgroup; placing the
    /// process is left to the test, as a systemd driver would.
    fn run(id: &str, netns: &str, cgroup: &Path, args: &[&str]) -> CrunContainer {
        let bundle = tests::scratch_file("workload", &format!("bundle-{id}"));
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
        std::fs::copy("/bin/busybox", bundle.join("rootfs/bin/busybox")).unwrap();
        let spec = Command::new("crun")
            .arg("spec")
            .current_dir(&bundle)
            .status()
            .unwrap();
        assert!(spec.success(), "crun spec");
        let path = bundle.join("config.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        c["process"]["terminal"] = Value::from(false);
        c["process"]["args"] = serde_json::json!(args);
        c["root"] = serde_json::json!({"path": "rootfs", "readonly": true});
        let linux = c["linux"].as_object_mut().unwrap();
        linux.remove("resources");
        let ns = linux["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "network" && n["type"] != "cgroup");
        ns.push(serde_json::json!({"type": "network", "path": format!("/run/netns/{netns}")}));
        std::fs::write(&path, serde_json::to_vec(&c).unwrap()).unwrap();
        let ctr = CrunContainer {
            id: id.to_string(),
            bundle,
        };
        // The container's process inherits crun's stdio: a file, not a pipe that
        // would stay open as long as it runs.
        let log = ctr.bundle.join("stdio");
        let out = std::fs::File::create(&log).unwrap();
        let create = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t cgroup2 none /sys/fs/cgroup && exec crun --cgroup-manager=disabled create --bundle "$0" "$1""#)
            .arg(&ctr.bundle)
            .arg(id)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .status()
            .unwrap();
        assert!(
            create.success(),
            "crun create: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let pid = ctr.pid();
        std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()).unwrap();
        let start = Command::new("crun").args(["start", id]).output().unwrap();
        assert!(
            start.status.success(),
            "crun start: {}",
            String::from_utf8_lossy(&start.stderr)
        );
        ctr
    }

    fn state(&self) -> Value {
        let out = Command::new("crun")
            .args(["state", &self.id])
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    fn pid(&self) -> u64 {
        self.state()["pid"].as_u64().unwrap()
    }

    fn kill(&self) {
        let out = Command::new("crun")
            .args(["kill", &self.id, "KILL"])
            .output()
            .unwrap();
        assert!(out.status.success(), "crun kill");
        tests::wait_until("the container stopped", 5 * SEC, || {
            self.state()["status"] == "stopped"
        });
    }
}

impl Drop for CrunContainer {
    fn drop(&mut self) {
        let _ = Command::new("crun")
            .args(["delete", "-f", &self.id])
            .output();
        let _ = std::fs::remove_dir_all(&self.bundle);
    }
}

fn installed(package: &str) -> bool {
    let found = Command::new("dpkg-query")
        .args(["-W", "-f", "${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("ok installed"));
    if !found {
        tests::skip(&format!("{package} is not installed (cargo xtask setup)"));
    }
    found
}

/// A server in a crun container (its own network namespace, the cgroup crun's systemd
/// driver gives it) listens on `P`, is killed, and a client is refused there; another
/// refusal on `P + 1` has no container. The explanation names the container and
/// `crun state`, live and from the capture; `--container` selects it.
#[test]
fn a_crun_container_whose_server_died_is_named() {
    const P: u16 = 8217;
    if !require_root() || !installed("crun") || !installed("busybox-static") {
        return;
    }
    let id = format!("rstrace-web-{}", std::process::id());
    let Some(cg) = TestCgroup::make(&format!("system.slice/crun-{id}.scope")) else {
        return;
    };
    let t = Topology::new();
    let file = tests::scratch_file("workload", "crun.rst");
    let addr = format!("{}:{P}", t.server_ip);
    let other = format!("{}:{}", t.server_ip, P + 1);
    let mut agent = Agent::start_env(
        &["--addr", &t.server_ip, "--record", file.to_str().unwrap()],
        &[],
    );
    let ports_args = ["--port", &P.to_string(), "--port", &(P + 1).to_string()];
    let mut filtered = Agent::start_env(&[&["--container", &id][..], &ports_args].concat(), &[]);
    let mut excluded = Agent::start_env(
        &[&["--container", "no-such-container"][..], &ports_args].concat(),
        &[],
    );
    let ctr = CrunContainer::run(
        &id,
        &t.server.name,
        cg.leaf(),
        &["/bin/busybox", "nc", "-l", "-p", &P.to_string()],
    );
    let spid = ctr.pid();
    tests::wait_until("the container listening", 5 * SEC, || {
        let out = Command::new("ip")
            .args(["netns", "exec", &t.server.name, "ss", "-Hltn"])
            .arg(format!("sport = :{P}"))
            .output()
            .unwrap();
        !out.stdout.is_empty()
    });
    ctr.kill();
    std::thread::sleep(Duration::from_millis(600));
    for a in [&addr, &other] {
        let c = Peer::spawn(&t.client, &["connect", a]);
        assert_eq!(c.wait(10 * SEC), vec!["errno=111"]);
    }
    for q in [P, P + 1] {
        agent.wait_for(&format!("live explanation for {q}"), 10 * SEC, |v| {
            s(v, "kind") == "failure" && port(s(v, "dst")) == q
        });
    }
    filtered.wait_for("filtered explanation", 10 * SEC, |v| {
        s(v, "kind") == "failure" && port(s(v, "dst")) == P
    });
    std::thread::sleep(SEC);
    for a in [&mut agent, &mut filtered, &mut excluded] {
        a.stop();
    }
    let replayed = explain_json(&["--addr", &t.server_ip], &file);
    for (what, all) in [
        ("live", failures(&agent.records(), P)),
        ("replay", failures(&replayed, P)),
    ] {
        let e = all
            .first()
            .unwrap_or_else(|| panic!("{what}: no explanation for {P}"));
        assert_eq!(pid_of(e, "culprit"), Some(spid), "{what}: {e}");
        let c = &e["culprit"]["container"];
        assert_eq!(
            (&c["runtime"], &c["id"], &c["name"]),
            (
                &Value::from("crun"),
                &Value::from(id.as_str()),
                &Value::from(id.as_str())
            ),
            "{what}: {e}"
        );
        assert!(
            s(e, "explanation").contains(&format!("container {id} (crun) (busybox[{spid}])")),
            "{what}: {e}"
        );
        assert!(
            s(e, "fix").contains(&format!("crun state {id}")),
            "{what}: {e}"
        );
    }
    let live = |a: &Agent| ports(&a.records());
    assert_eq!(live(&filtered), vec![P], "live --container");
    assert_eq!(live(&excluded), Vec::<u16>::new(), "live --container other");
    let sel = |args: &[&str]| ports(&explain_json(args, &file));
    assert_eq!(sel(&[]), vec![P, P + 1]);
    assert_eq!(sel(&["--container", &id]), vec![P]);
    assert_eq!(
        sel(&["--container", "no-such-container"]),
        Vec::<u16>::new()
    );
    assert_eq!(
        sel(&["--unit", &format!("crun-{id}.scope")]),
        Vec::<u16>::new()
    );
    let _ = std::fs::remove_file(&file);
    drop(ctr);
    drop(cg);
}
