//! Names from the node's own state, never from a network API (a daemon's socket may
//! hang, and rstrace must not depend on the runtime it is explaining):
//! - docker: `<docker root>/containers/<id>/config.v2.json`, its `"Name"`;
//! - podman and CRI-O: containers/storage's `overlay-containers/containers.json`,
//!   each container's `"names"`;
//! - Kubernetes: the kubelet's log layout, `/var/log/containers/<pod>_<ns>_<container>-<id>.log`
//!   (container id to names) and `/var/log/pods/<ns>_<pod>_<uid>/` (pod UID to names);
//!   CRI names in docker's and containers/storage's state
//!   (`k8s_<container>_<pod>_<ns>_<uid>_<attempt>`) say the same;
//! - which CRI runtime made a cgroupfs-driver container: whichever runtime's state
//!   has its id;
//! - `ip netns` names: the bind mounts in /run/netns, by inode.
//!
//! Kubernetes names (namespaces, pods, containers) are DNS labels and subdomains, so
//! `_` separates them unambiguously.
use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde::Deserialize;

use crate::base::{
    record::Text,
    workload::{Container, Pod, Runtime, Workload},
};

/// containers.json larger than this is not read (a node with tens of thousands of
/// containers; their names are then not given).
const STORAGE_FILE_LIMIT: u64 = 32 << 20;

/// Where the runtimes keep their state; the defaults are the packaged ones.
#[derive(Clone, Debug)]
pub struct StateRoots {
    pub docker: PathBuf,
    /// containers/storage graph and run roots (podman, CRI-O).
    pub storage: Vec<PathBuf>,
    /// containerd's task directories, one per containerd namespace below.
    pub containerd_tasks: PathBuf,
    pub pod_logs: PathBuf,
    pub container_logs: PathBuf,
}

impl Default for StateRoots {
    fn default() -> Self {
        StateRoots {
            docker: "/var/lib/docker".into(),
            storage: vec![
                "/var/lib/containers/storage".into(),
                "/run/containers/storage".into(),
            ],
            containerd_tasks: "/run/containerd/io.containerd.runtime.v2.task".into(),
            pod_logs: "/var/log/pods".into(),
            container_logs: "/var/log/containers".into(),
        }
    }
}

/// Prefixes the runtimes' and the kubelet's state directories:
/// for an agent that sees the node's files mounted elsewhere, and for tests that
/// lay out a kubelet's files in a scratch directory.
pub const STATE_ROOT_ENV: &str = "RSTRACE_STATE_ROOT";

impl StateRoots {
    /// The packaged directories, under `$RSTRACE_STATE_ROOT` when it is set.
    pub fn from_env() -> Self {
        let d = StateRoots::default();
        let Some(root) = std::env::var_os(STATE_ROOT_ENV).filter(|r| !r.is_empty()) else {
            return d;
        };
        let root = PathBuf::from(root);
        let under = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        StateRoots {
            docker: under(&d.docker),
            storage: d.storage.iter().map(|p| under(p)).collect(),
            containerd_tasks: under(&d.containerd_tasks),
            pod_logs: under(&d.pod_logs),
            container_logs: under(&d.container_logs),
        }
    }
}

/// A container name as the kubelet's runtimes write it:
/// `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`.
#[derive(Debug, PartialEq, Eq)]
pub struct KubeName<'a> {
    pub container: &'a str,
    pub pod: &'a str,
    pub namespace: &'a str,
    pub uid: &'a str,
}

pub fn kube_name(name: &str) -> Option<KubeName<'_>> {
    let mut it = name
        .trim_start_matches('/')
        .strip_prefix("k8s_")?
        .split('_');
    let k = KubeName {
        container: it.next()?,
        pod: it.next()?,
        namespace: it.next()?,
        uid: it.next()?,
    };
    it.next()?;
    Some(k)
}

/// Names found on the node, read on demand and cached: the containers.json files are
/// re-read only when they change.
#[derive(Default)]
pub struct Names {
    pub roots: StateRoots,
    storage: HashMap<PathBuf, (SystemTime, HashMap<String, String>)>,
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Deserialize)]
struct StorageContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

impl Names {
    pub fn new(roots: StateRoots) -> Self {
        Names {
            roots,
            storage: HashMap::new(),
        }
    }

    /// Fills in what the node's state says: the runtime of a bare id, container and
    /// pod names.
    pub fn complete(&mut self, w: &mut Workload) {
        if let Some(c) = &mut w.container {
            if c.runtime == Runtime::Cri {
                if let Some(r) = self.runtime_of(&c.id) {
                    c.runtime = r;
                }
            }
            let name = match c.runtime {
                Runtime::Docker => self.docker_name(&c.id),
                Runtime::Podman | Runtime::CriO => self.storage_name(&c.id),
                _ => None,
            };
            if let Some(name) = name {
                match kube_name(&name) {
                    Some(k) => {
                        c.name = Some(Text::from(k.container));
                        if let Some(p) = &mut w.pod {
                            if *p.uid == *k.uid {
                                p.namespace = Some(Text::from(k.namespace));
                                p.name = Some(Text::from(k.pod));
                            }
                        }
                    }
                    None => c.name = Some(Text::from(name.trim_start_matches('/'))),
                }
            }
            if c.name.is_none() && w.pod.is_some() {
                self.container_logs(c, w.pod.as_mut());
            }
        }
        if let Some(p) = &mut w.pod {
            if p.name.is_none() {
                if let Some((ns, name)) = self.pod_by_uid(&p.uid) {
                    p.namespace = Some(Text::from(ns));
                    p.name = Some(Text::from(name));
                }
            }
        }
    }

    fn runtime_of(&self, id: &str) -> Option<Runtime> {
        if self.roots.docker.join("containers").join(id).is_dir() {
            return Some(Runtime::Docker);
        }
        if let Ok(spaces) = fs::read_dir(&self.roots.containerd_tasks) {
            if spaces.flatten().any(|ns| ns.path().join(id).is_dir()) {
                return Some(Runtime::Containerd);
            }
        }
        // Under a pod, containers/storage is CRI-O's (podman makes no kubelet pods).
        self.roots
            .storage
            .iter()
            .any(|s| s.join("overlay-containers").join(id).is_dir())
            .then_some(Runtime::CriO)
    }

    fn docker_name(&self, id: &str) -> Option<String> {
        let p = self
            .roots
            .docker
            .join("containers")
            .join(id)
            .join("config.v2.json");
        let text = fs::read(p).ok()?;
        let c: DockerConfig = serde_json::from_slice(&text).ok()?;
        Some(c.name)
    }

    fn storage_name(&mut self, id: &str) -> Option<String> {
        for root in self.roots.storage.clone() {
            let file = root.join("overlay-containers").join("containers.json");
            let Ok(meta) = fs::metadata(&file) else {
                continue;
            };
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            let fresh = self.storage.get(&file).is_some_and(|(t, _)| *t == mtime);
            if !fresh {
                let names = if meta.len() <= STORAGE_FILE_LIMIT {
                    read_storage(&file)
                } else {
                    HashMap::new()
                };
                self.storage.insert(file.clone(), (mtime, names));
            }
            if let Some(n) = self.storage.get(&file).and_then(|(_, m)| m.get(id)) {
                return Some(n.clone());
            }
        }
        None
    }

    /// `/var/log/containers/<pod>_<ns>_<container>-<id>.log`.
    fn container_logs(&self, c: &mut Container, pod: Option<&mut Pod>) {
        let Ok(dir) = fs::read_dir(&self.roots.container_logs) else {
            return;
        };
        let suffix = format!("-{}.log", c.id);
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(head) = name.to_str().and_then(|n| n.strip_suffix(&suffix)) else {
                continue;
            };
            let mut it = head.splitn(3, '_');
            let (Some(pod_name), Some(ns), Some(container)) = (it.next(), it.next(), it.next())
            else {
                continue;
            };
            c.name = Some(Text::from(container));
            if let Some(p) = pod {
                p.namespace = Some(Text::from(ns));
                p.name = Some(Text::from(pod_name));
            }
            return;
        }
    }

    /// `/var/log/pods/<ns>_<pod>_<uid>/`.
    fn pod_by_uid(&self, uid: &str) -> Option<(String, String)> {
        let suffix = format!("_{uid}");
        fs::read_dir(&self.roots.pod_logs)
            .ok()?
            .flatten()
            .find_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let (ns, pod) = name.strip_suffix(&suffix)?.split_once('_')?;
                Some((ns.to_string(), pod.to_string()))
            })
    }
}

fn read_storage(file: &Path) -> HashMap<String, String> {
    let Ok(text) = fs::read(file) else {
        return HashMap::new();
    };
    let list: Vec<StorageContainer> = serde_json::from_slice(&text).unwrap_or_default();
    list.into_iter()
        .filter_map(|c| Some((c.id, c.names.into_iter().next()?)))
        .collect()
}

/// Names of the namespaces bound under these directories, by inode.
pub fn netns_names(dirs: &[PathBuf]) -> HashMap<u32, Text> {
    let mut out = HashMap::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            // The bind mount's inode is the namespace's; an unmounted leftover file
            // has an inode on the directory's filesystem, not on nsfs.
            if let Ok(m) = fs::metadata(e.path()) {
                if is_nsfs(&e.path()) {
                    out.insert(
                        m.ino() as u32,
                        Text::from(&*e.file_name().to_string_lossy()),
                    );
                }
            }
        }
    }
    out
}

fn is_nsfs(p: &Path) -> bool {
    // In statfs's own type: i64 or i32 by target, so no cast either way.
    const NSFS_MAGIC: libc::__fsword_t = 0x6e73_6673;
    let Ok(c) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
    else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct it is given.
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string, `s` a valid statfs.
    (unsafe { libc::statfs(c.as_ptr(), &mut s) } == 0) && s.f_type == NSFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{base::workload::Qos, source::workload::path};

    const ID: &str = "4f797c539e6c745de61a93ca3ff892358ecbcaccd8414d5db545c38428142970";
    const UID: &str = "7a1b6c2e-3f4d-4a5b-9c8d-0e1f2a3b4c5d";

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    fn tmp(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("rstrace-names-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
    fn roots(t: &Tmp) -> StateRoots {
        StateRoots {
            docker: t.0.join("docker"),
            storage: vec![t.0.join("storage")],
            containerd_tasks: t.0.join("tasks"),
            pod_logs: t.0.join("pods"),
            container_logs: t.0.join("containers"),
        }
    }
    fn write(p: PathBuf, text: &str) {
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn kubelet_names_in_runtime_state() {
        assert_eq!(
            kube_name(&format!("/k8s_nginx_web-7d9f_shop_{UID}_3")),
            Some(KubeName {
                container: "nginx",
                pod: "web-7d9f",
                namespace: "shop",
                uid: UID
            })
        );
        assert_eq!(kube_name("/web"), None);
        assert_eq!(kube_name("k8s_a_b_c"), None);
    }

    #[test]
    fn docker_name_from_its_config() {
        let t = tmp("docker");
        write(
            t.0.join(format!("docker/containers/{ID}/config.v2.json")),
            r#"{"ID":"x","Name":"/web","State":{"Running":true}}"#,
        );
        let mut n = Names::new(roots(&t));
        let mut w = path::parse(&format!("/system.slice/docker-{ID}.scope"));
        n.complete(&mut w);
        assert_eq!(w.to_string(), "container web (docker 4f797c539e6c)");
    }

    #[test]
    fn podman_and_crio_names_from_storage() {
        let t = tmp("storage");
        let file = t.0.join("storage/overlay-containers/containers.json");
        write(
            file.clone(),
            &format!(r#"[{{"id":"{ID}","names":["db"],"image":"i","layer":"l"}}]"#),
        );
        let mut n = Names::new(roots(&t));
        let mut w = path::parse(&format!("/machine.slice/libpod-{ID}.scope/container"));
        n.complete(&mut w);
        assert_eq!(w.container.as_ref().unwrap().name.as_deref(), Some("db"));
        // A CRI-O container under a pod: the CRI name gives the pod too. The file
        // changed, so it is read again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(
            file,
            &format!(r#"[{{"id":"{ID}","names":["k8s_api_api-0_shop_{UID}_0"]}}]"#),
        );
        let uid_ = UID.replace('-', "_");
        let mut w = path::parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/crio-{ID}.scope"
        ));
        n.complete(&mut w);
        assert_eq!(w.to_string(), "pod shop/api-0 container api");
    }

    #[test]
    fn kubelet_log_layout_names_cri_containers_and_pods() {
        let t = tmp("kubelet");
        fs::create_dir_all(t.0.join(format!("tasks/k8s.io/{ID}"))).unwrap();
        write(t.0.join(format!("pods/shop_web-0_{UID}/nginx/0.log")), "");
        fs::create_dir_all(t.0.join("containers")).unwrap();
        std::os::unix::fs::symlink(
            t.0.join(format!("pods/shop_web-0_{UID}/nginx/0.log")),
            t.0.join(format!("containers/web-0_shop_nginx-{ID}.log")),
        )
        .unwrap();
        let mut n = Names::new(roots(&t));
        // cgroupfs driver: the runtime is found from containerd's task directory.
        let mut w = path::parse(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        n.complete(&mut w);
        let c = w.container.as_ref().unwrap();
        assert_eq!(
            (c.runtime, c.name.as_deref()),
            (Runtime::Containerd, Some("nginx"))
        );
        let p = w.pod.as_ref().unwrap();
        assert_eq!(
            (p.namespace.as_deref(), p.name.as_deref(), p.qos),
            (Some("shop"), Some("web-0"), Some(Qos::Burstable))
        );
        // The pod's own cgroup: its names from the pod log directory.
        let mut w = path::parse(&format!("/kubepods/burstable/pod{UID}"));
        n.complete(&mut w);
        assert_eq!(w.to_string(), "pod shop/web-0");
        // Nothing on the node: the ids stay.
        let mut n = Names::new(roots(&tmp("empty")));
        let mut w = path::parse(&format!("/kubepods/pod{UID}/{ID}"));
        n.complete(&mut w);
        assert_eq!(
            w.to_string(),
            format!("pod {UID} container cri 4f797c539e6c")
        );
    }
}
