//! Workloads against the real kernel: a server in a cgroup named as the kubelet
//! names a pod's container (both cgroup drivers), with the kubelet's log layout in a
//! scratch state root, dies; the refusal that follows names the pod and its
//! container, live and from the capture, and the filters select it.
#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tests::{failures, pid_of, port, require_root, rstrace_bin, s, Agent, Peer, Topology};

const SEC: Duration = Duration::from_secs(1);
const UID: &str = "7a1b6c2e-3f4d-4a5b-9c8d-0e1f2a3b4c5d";
const ID: &str = "4f797c539e6c745de61a93ca3ff892358ecbcaccd8414d5db545c38428142970";

/// The cgroup v2 mount, or None (the test skips, saying why).
fn v2_mount() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let found = mountinfo.lines().find_map(|l| {
        let (head, tail) = l.split_once(" - ")?;
        if tail.split(' ').next()? != "cgroup2" {
            return None;
        }
        head.split(' ').nth(4).map(PathBuf::from)
    });
    if found.is_none() {
        tests::skip("no cgroup v2 hierarchy mounted");
    }
    found
}

/// Nested cgroup directories, removed deepest first on drop (after the processes in
/// them are gone). Under a parent of this test's own, so that a real node's
/// `kubepods` is never touched.
struct CgroupPath {
    dirs: Vec<PathBuf>,
}

impl CgroupPath {
    fn make(mount: &Path, rel: &str) -> CgroupPath {
        let mut dirs = Vec::new();
        let mut p = mount.join(format!("rstrace-test-{}.slice", std::process::id()));
        dirs.push(p.clone());
        for part in rel.split('/') {
            p = p.join(part);
            dirs.push(p.clone());
        }
        std::fs::create_dir_all(&p).unwrap();
        CgroupPath { dirs }
    }

    fn leaf(&self) -> &Path {
        self.dirs.last().unwrap()
    }
}

impl Drop for CgroupPath {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

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

/// `rstrace explain --json ARGS FILE`'s failures.
fn explain(file: &Path, args: &[&str]) -> Vec<Value> {
    let out = Command::new(rstrace_bin())
        .args(["explain", "--json"])
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "explain {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| s(v, "kind") == "failure")
        .collect()
}

fn ports(all: &[Value]) -> Vec<u16> {
    let mut p: Vec<u16> = all.iter().map(|v| port(s(v, "dst"))).collect();
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
    );
}

#[test]
fn a_pod_whose_server_died_is_named_cgroupfs_driver() {
    pod_server_dies(&format!("kubepods/burstable/pod{UID}/{ID}"), 8215, false);
}

/// A server in the pod's container cgroup listens on `p`, dies, and a client is
/// refused there; another refusal on `p + 1` (nothing ever listened) has no pod.
/// With `live_filter`, a second agent watching with `--pod` prints only the first.
fn pod_server_dies(cgroup: &str, p: u16, live_filter: bool) {
    if !require_root() {
        return;
    }
    let Some(mount) = v2_mount() else { return };
    let cg = CgroupPath::make(&mount, cgroup);
    let files = KubeletFiles::make(&p.to_string());
    let root = files.0.to_str().unwrap().to_string();
    let env = [("RSTRACE_STATE_ROOT", root.as_str())];
    let t = Topology::new();
    let file = tests::scratch_file("workload", &format!("pod-{p}.rst"));
    let addr = format!("{}:{p}", t.server_ip);
    let other = format!("{}:{}", t.server_ip, p + 1);
    let mut agent = Agent::start_env(
        &["--addr", &t.server_ip, "--record", file.to_str().unwrap()],
        &env,
    );
    let mut filtered = live_filter.then(|| {
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
    let mut server = Peer::spawn_in_cgroup(&t.server, cg.leaf(), &["listen", &addr]);
    server.wait_line(5 * SEC, |l| l == "ready");
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
    let replayed = explain(&file, &["--addr", &t.server_ip]);
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
    let sel = |args: &[&str]| ports(&explain(&file, args));
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
