//! The resolver on this host's real cgroup v2 hierarchy: cgroups named the way
//! systemd and the kubelet (both drivers) name them, a process moved into each, its
//! cgroup id read the way the kernel hooks will see it. Needs root (it skips, saying
//! why, without it).
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command},
};

use super::*;
use crate::base::workload::{Qos, Runtime};

const ID: &str = "4f797c539e6c745de61a93ca3ff892358ecbcaccd8414d5db545c38428142970";
const ID2: &str = "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d";
const UID: &str = "7a1b6c2e-3f4d-4a5b-9c8d-0e1f2a3b4c5d";
const UID2: &str = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9";

/// Cgroups made for the test, removed deepest first on drop (also on panic), after
/// the process in them is killed.
struct Cgroups {
    mount: PathBuf,
    top: PathBuf,
    made: Vec<PathBuf>,
    child: Option<Child>,
}

impl Cgroups {
    fn make(&mut self, rel: &str) -> PathBuf {
        let mut p = self.top.clone();
        for part in rel.split('/') {
            p.push(part);
            if !p.exists() {
                fs::create_dir(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
                self.made.push(p.clone());
            }
        }
        p
    }

    fn enter(&mut self, dir: &Path) -> u64 {
        let pid = self.child.as_ref().unwrap().id();
        fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        // As /proc/PID/cgroup says, relative to the v2 mount.
        let rel = cgroupfs::path_of_pid(pid).unwrap();
        assert_eq!(
            self.mount.join(rel.trim_start_matches('/')),
            dir,
            "/proc/{pid}/cgroup"
        );
        let ino = cgroupfs::id_of_dir(dir).unwrap();
        // The inode is the kernfs id, the value bpf_get_current_cgroup_id() returns.
        if let Some(h) = CgroupFs::handle_id(dir) {
            assert_eq!(h, ino, "file handle id vs inode of {}", dir.display());
        }
        ino
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.made.push(self.top.clone());
        self.made
            .sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in &self.made {
            let _ = fs::remove_dir(p);
        }
    }
}

fn setup(tag: &str) -> Option<Cgroups> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: making cgroups needs root");
        return None;
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(mount) = cgroupfs::v2_mount(&mountinfo) else {
        eprintln!("skipped: no cgroup v2 hierarchy mounted");
        return None;
    };
    let top = mount.join(format!("rstrace-test-{tag}-{}", std::process::id()));
    let _ = fs::remove_dir(&top);
    fs::create_dir(&top).unwrap();
    let child = Command::new("sleep").arg("60").spawn().unwrap();
    Some(Cgroups {
        mount,
        top,
        made: Vec::new(),
        child: Some(child),
    })
}

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn names_a_process_in_real_systemd_and_kubelet_cgroups() {
    let Some(mut cg) = setup("names") else {
        return;
    };
    let state = Tmp(std::env::temp_dir().join(format!("rstrace-state-{}", std::process::id())));
    let roots = StateRoots {
        docker: state.0.join("docker"),
        storage: vec![state.0.join("storage")],
        containerd_tasks: state.0.join("tasks"),
        pod_logs: state.0.join("pods"),
        container_logs: state.0.join("containers"),
    };
    fs::create_dir_all(state.0.join(format!("pods/shop_web-0_{UID}/nginx"))).unwrap();
    fs::create_dir_all(
        state
            .0
            .join(format!("pods/kube-system_coredns-5d78_{UID2}/coredns")),
    )
    .unwrap();
    fs::create_dir_all(state.0.join(format!("tasks/k8s.io/{ID2}"))).unwrap();
    let mut r = Resolver::with(Some(cg.mount.clone()), roots);
    assert!(r.available());

    let dir = cg.make("system.slice/nginx.service");
    let id = cg.enter(&dir);
    assert_eq!(
        CgroupFs::new(cg.mount.clone()).path_by_handle(id),
        Some(format!(
            "/{}/system.slice/nginx.service",
            cg.top.file_name().unwrap().to_string_lossy()
        )),
        "open_by_handle_at of the cgroup id, as root"
    );
    let w = r.resolve(id).expect("the service's cgroup id resolves");
    assert_eq!(w.to_string(), "nginx.service");
    assert_eq!(r.id_of_pid(cg.child.as_ref().unwrap().id()), Some(id));

    let uid_ = UID.replace('-', "_");
    let dir = cg.make(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
    ));
    let id = cg.enter(&dir);
    let w = r.resolve(id).unwrap();
    let pod = w.pod.as_ref().unwrap();
    assert_eq!(
        (
            &*pod.uid,
            pod.qos,
            pod.namespace.as_deref(),
            pod.name.as_deref()
        ),
        (UID, Some(Qos::Burstable), Some("shop"), Some("web-0"))
    );
    assert_eq!(w.container.as_ref().unwrap().runtime, Runtime::Containerd);
    assert_eq!(w.unit, None);

    // cgroupfs driver, a Guaranteed pod: no QoS level, the container a bare id whose
    // runtime is found from containerd's state.
    let dir = cg.make(&format!("kubepods/pod{UID2}/{ID2}"));
    let id = cg.enter(&dir);
    let w = r.resolve(id).unwrap();
    assert_eq!(
        w.to_string(),
        "pod kube-system/coredns-5d78 container containerd 9ec39b91f3d7"
    );
    assert_eq!(w.pod.as_ref().unwrap().qos, Some(Qos::Guaranteed));
    let besteffort = cg.make(&format!("kubepods/besteffort/pod{UID}/{ID}"));
    let id_be = cg.enter(&besteffort);
    assert_eq!(
        r.resolve(id_be).unwrap().pod.as_ref().unwrap().qos,
        Some(Qos::BestEffort)
    );

    // A pod whose names the kubelet writes only after its cgroup is first seen: they
    // are looked for again later, a bounded number of times.
    r.name_retry = std::time::Duration::ZERO;
    let late = "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b";
    let dir = cg.make(&format!("kubepods/burstable/pod{late}/{ID}"));
    let id_late = cg.enter(&dir);
    assert_eq!(
        r.resolve(id_late).unwrap().to_string(),
        format!("pod {late} container cri 4f797c539e6c")
    );
    fs::create_dir_all(state.0.join(format!("pods/shop_late-0_{late}/app"))).unwrap();
    assert_eq!(
        r.resolve(id_late).unwrap().to_string(),
        "pod shop/late-0 container cri 4f797c539e6c"
    );

    // The walk finds the same paths as the file handles.
    let walked = CgroupFs::new(cg.mount.clone()).walk(cgroupfs::WALK_LIMIT);
    let top = format!("/{}", cg.top.file_name().unwrap().to_string_lossy());
    assert_eq!(
        walked.get(&id).map(String::as_str),
        Some(format!("{top}/kubepods/pod{UID2}/{ID2}").as_str())
    );

    // The process exits and its cgroup goes: what its id named stays named, and a
    // new resolver, which never saw it, says it does not know.
    if let Some(mut c) = cg.child.take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    fs::remove_dir(&besteffort).unwrap();
    cg.made.retain(|p| *p != besteffort);
    assert_eq!(
        r.resolve(id_be).unwrap().pod.as_ref().unwrap().uid.as_ref(),
        UID
    );
    let mut fresh = Resolver::with(Some(cg.mount.clone()), StateRoots::default());
    assert_eq!(fresh.resolve(id_be), None);
    // A miss is not looked up again at once: no second walk.
    let walks = fresh.walks;
    assert_eq!(fresh.resolve(id_be), None);
    assert_eq!(fresh.walks, walks);
}

#[test]
fn without_a_v2_hierarchy_nothing_is_named() {
    let mut r = Resolver::with(None, StateRoots::default());
    assert!(!r.available());
    assert_eq!(r.resolve(1), None);
    assert_eq!(r.id_of_pid(std::process::id()), None);
}

#[test]
fn ip_netns_names_by_inode() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: ip netns add needs root");
        return;
    }
    let name = format!("rstrace-wl-{}", std::process::id());
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let ok = Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipped: ip netns add failed");
        return;
    }
    let _ns = Netns(name.clone());
    use std::os::unix::fs::MetadataExt;
    let ino = fs::metadata(format!("/run/netns/{name}")).unwrap().ino() as u32;
    let names = names::netns_names(&[PathBuf::from("/run/netns")]);
    assert_eq!(names.get(&ino).map(|n| &**n), Some(name.as_str()));
    // A plain file in the directory (a mount that failed) names nothing.
    let dir = Tmp(std::env::temp_dir().join(format!("rstrace-netns-{}", std::process::id())));
    fs::create_dir_all(&dir.0).unwrap();
    fs::write(dir.0.join("stale"), "").unwrap();
    assert!(names::netns_names(std::slice::from_ref(&dir.0)).is_empty());
}
