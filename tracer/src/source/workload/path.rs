//! The grammar of cgroup v2 paths: which systemd unit, container and Kubernetes pod
//! a cgroup belongs to, from its path alone (names come from the runtimes' state,
//! `names.rs`).
//!
//! What names each part:
//! - systemd: the deepest `*.service` / `*.scope` above any container; below
//!   `user@UID.service` the units are that user's manager's.
//! - containers: `docker-<id>.scope` and `/docker/<id>` (docker's systemd and
//!   cgroupfs drivers), `cri-containerd-<id>.scope`, `nerdctl-<id>.scope`,
//!   `crio-<id>.scope`, `libpod-<id>.scope` and podman's cgroupfs `libpod-<id>`, their
//!   monitors `crio-conmon-<id>.scope` / `libpod-conmon-<id>.scope`, LXC's
//!   `lxc.payload.<name>`, crun's own systemd driver's `crun-<id>.scope` (crun run
//!   by hand; its id is the name it was given). Runtimes may add cgroups below their container's (crun's
//!   `container`, a systemd inside): those belong to the container.
//! - Kubernetes: the kubelet's pod cgroup, `kubepods[-<qos>]-pod<uid_with_underscores>.slice`
//!   (systemd driver) or `kubepods/[<qos>/]pod<uid>` (cgroupfs driver), Guaranteed
//!   pods having no QoS level; under a cgroupfs pod a container is its bare id, which
//!   does not say its runtime. A kubelet started with a cgroup root (kind's
//!   `kubelet.slice`, `/kubelet`) only prefixes these.
//!
//! Components are matched anywhere in the path, not from the root, so a node that
//! is itself a container (kind, nested runtimes) names the innermost container and
//! its pod.
use crate::base::{
    record::Text,
    workload::{Container, Pod, Qos, Runtime, Workload},
};

/// The workload a cgroup path (relative to the v2 mount, as in /proc/PID/cgroup's
/// `0::` line) belongs to. Unknown shapes give an empty workload.
pub fn parse(path: &str) -> Workload {
    let mut w = Workload::default();
    let mut parent = "";
    // Set by a cgroupfs `kubepods` component: QoS and pod may follow.
    let mut kube_cgroupfs = false;
    let mut in_container = false;
    // The uid of a `user@UID.service` above: units below are its manager's.
    let mut user = None;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if let Some(c) = container(part, parent, w.pod.is_some() && kube_cgroupfs) {
            w.container = Some(c);
            in_container = true;
        } else if let Some(pod) = systemd_pod(part) {
            w.pod = Some(pod);
            w.container = None;
        } else if part == "kubepods" {
            kube_cgroupfs = true;
        } else if let Some(pod) = cgroupfs_pod(part, parent).filter(|_| kube_cgroupfs) {
            w.pod = Some(pod);
            w.container = None;
        } else if in_container {
            // The container's own cgroups: not the host's units.
        } else if part.ends_with(".service") || part.ends_with(".scope") {
            w.unit = Some(Text::from(part));
            w.unit_user = user;
            if let Some(uid) = part
                .strip_prefix("user@")
                .and_then(|s| s.strip_suffix(".service"))
                .and_then(|s| s.parse::<u32>().ok())
            {
                user = Some(uid);
            }
        }
        parent = part;
    }
    w
}

fn container(part: &str, parent: &str, under_cgroupfs_pod: bool) -> Option<Container> {
    let found = |runtime, id: &str, monitor| {
        is_container_id(id).then(|| Container {
            runtime,
            id: Text::from(id),
            name: None,
            monitor,
        })
    };
    if let Some(scope) = part.strip_suffix(".scope") {
        for (prefix, runtime, monitor) in [
            ("docker-", Runtime::Docker, false),
            ("cri-containerd-", Runtime::Containerd, false),
            ("nerdctl-", Runtime::Containerd, false),
            ("crio-conmon-", Runtime::CriO, true),
            ("crio-", Runtime::CriO, false),
            ("libpod-conmon-", Runtime::Podman, true),
            ("libpod-", Runtime::Podman, false),
        ] {
            if let Some(id) = scope.strip_prefix(prefix) {
                return found(runtime, id, monitor);
            }
        }
        return scope
            .strip_prefix("crun-")
            .filter(|id| !id.is_empty())
            .map(|id| Container {
                runtime: Runtime::Crun,
                id: Text::from(id),
                name: Some(Text::from(id)),
                monitor: false,
            });
    }
    if let Some(id) = part.strip_prefix("libpod-") {
        return found(Runtime::Podman, id, false);
    }
    if let Some(name) = part.strip_prefix("lxc.payload.").filter(|n| !n.is_empty()) {
        return Some(Container {
            runtime: Runtime::Lxc,
            id: Text::from(name),
            name: Some(Text::from(name)),
            monitor: false,
        });
    }
    if parent == "docker" {
        return found(Runtime::Docker, part, false);
    }
    if under_cgroupfs_pod && parent.starts_with("pod") {
        return found(Runtime::Cri, part, false);
    }
    None
}

/// `kubepods-burstable-pod<uid>.slice`, `kubepods-pod<uid>.slice` (Guaranteed), with
/// any cgroup-root prefix (`kubelet-kubepods-...`).
fn systemd_pod(part: &str) -> Option<Pod> {
    let (head, uid) = part.strip_suffix(".slice")?.rsplit_once("-pod")?;
    let qos = if head.ends_with("kubepods-burstable") {
        Some(Qos::Burstable)
    } else if head.ends_with("kubepods-besteffort") {
        Some(Qos::BestEffort)
    } else if head.ends_with("kubepods") {
        Some(Qos::Guaranteed)
    } else {
        return None;
    };
    pod(&uid.replace('_', "-"), qos)
}

/// `pod<uid>` under `kubepods` (Guaranteed) or under `kubepods/<qos>`.
fn cgroupfs_pod(part: &str, parent: &str) -> Option<Pod> {
    let uid = part.strip_prefix("pod")?;
    let qos = match parent {
        "kubepods" => Qos::Guaranteed,
        "burstable" => Qos::Burstable,
        "besteffort" => Qos::BestEffort,
        _ => return None,
    };
    pod(uid, Some(qos))
}

/// A UUID, or the 32 hex digits of a static pod's UID (a hash of its manifest).
fn pod(uid: &str, qos: Option<Qos>) -> Option<Pod> {
    let ok = (32..=36).contains(&uid.len())
        && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        && uid.bytes().filter(|&b| b != b'-').count() == 32;
    ok.then(|| Pod {
        uid: Text::from(uid),
        qos,
        namespace: None,
        name: None,
    })
}

/// Docker, containerd (CRI and nerdctl), CRI-O and podman all use 64 hex digits.
pub fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f797c539e6c745de61a93ca3ff892358ecbcaccd8414d5db545c38428142970";
    const ID2: &str = "9ec39b91f3d70e1beff50a308f77067065ea6be0d91a3378375056cd4422cf3d";

    fn unit(path: &str) -> Option<String> {
        parse(path).unit.map(|u| u.to_string())
    }

    fn ctr(path: &str) -> Option<(Runtime, String, bool)> {
        parse(path)
            .container
            .map(|c| (c.runtime, c.id.to_string(), c.monitor))
    }

    fn pod_of(path: &str) -> Option<(String, Option<Qos>)> {
        parse(path).pod.map(|p| (p.uid.to_string(), p.qos))
    }

    #[test]
    fn systemd_units() {
        for (path, want, user) in [
            ("/system.slice/nginx.service", Some("nginx.service"), None),
            (
                "/system.slice/system-getty.slice/getty@tty1.service",
                Some("getty@tty1.service"),
                None,
            ),
            (
                "/user.slice/user-1000.slice/session-3.scope",
                Some("session-3.scope"),
                None,
            ),
            ("/init.scope", Some("init.scope"), None),
            ("/system.slice/docker.service", Some("docker.service"), None),
            (
                "/system.slice/containerd.service",
                Some("containerd.service"),
                None,
            ),
            // A service's own sub-cgroups (Delegate=yes) are still that service.
            (
                "/system.slice/containerd.service/worker",
                Some("containerd.service"),
                None,
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/app.slice/syncthing.service",
                Some("syncthing.service"),
                Some(1000),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service/init.scope",
                Some("init.scope"),
                Some(1000),
            ),
            (
                "/user.slice/user-1000.slice/user@1000.service",
                Some("user@1000.service"),
                None,
            ),
            ("/", None, None),
            ("", None, None),
            ("/system.slice", None, None),
            ("/user.slice/user-1000.slice", None, None),
        ] {
            let w = parse(path);
            assert_eq!(unit(path).as_deref(), want, "{path}");
            assert_eq!(w.unit_user, user, "{path}");
            assert_eq!(w.container, None, "{path}");
            assert_eq!(w.pod, None, "{path}");
        }
    }

    #[test]
    fn containers_of_each_runtime() {
        for (path, runtime, monitor) in [
            // docker, systemd driver (also dockerd on cgroup v2 by default).
            (format!("/system.slice/docker-{ID}.scope"), Runtime::Docker, false),
            // docker, cgroupfs driver.
            (format!("/docker/{ID}"), Runtime::Docker, false),
            (
                format!("/system.slice/nerdctl-{ID}.scope"),
                Runtime::Containerd,
                false,
            ),
            (format!("/machine.slice/libpod-{ID}.scope"), Runtime::Podman, false),
            // crun puts the container's processes one level below its scope.
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Runtime::Podman,
                false,
            ),
            (
                format!("/machine.slice/libpod-conmon-{ID}.scope"),
                Runtime::Podman,
                true,
            ),
            // podman, cgroupfs manager.
            (format!("/libpod_parent/libpod-{ID}"), Runtime::Podman, false),
            // rootless podman, under the user's manager.
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
                ),
                Runtime::Podman,
                false,
            ),
            // podman pod.
            (
                format!("/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-{ID}.scope/container"),
                Runtime::Podman,
                false,
            ),
            // A container running its own systemd: its units are not the host's.
            (
                format!("/system.slice/docker-{ID}.scope/system.slice/nginx.service"),
                Runtime::Docker,
                false,
            ),
        ] {
            assert_eq!(ctr(&path), Some((runtime, ID.to_string(), monitor)), "{path}");
            assert_eq!(pod_of(&path), None, "{path}");
            let u = unit(&path);
            assert!(
                u.is_none() || u.as_deref() == Some("user@1000.service"),
                "{path}: {u:?}"
            );
        }
        let lxc = parse("/lxc.payload.web/system.slice/nginx.service");
        let c = lxc.container.unwrap();
        assert_eq!(
            (c.runtime, &*c.id, c.name.as_deref()),
            (Runtime::Lxc, "web", Some("web"))
        );
        assert_eq!(lxc.unit, None);
        // crun run by hand with its systemd driver (`crun --systemd-cgroup run web`).
        for path in [
            "/system.slice/crun-web.scope",
            "/system.slice/crun-web.scope/container",
        ] {
            let w = parse(path);
            let c = w.container.unwrap();
            assert_eq!(
                (c.runtime, &*c.id, c.name.as_deref()),
                (Runtime::Crun, "web", Some("web")),
                "{path}"
            );
            assert_eq!(w.unit, None, "{path}");
        }
        let w = parse("/system.slice/crun-.scope");
        assert_eq!(
            (w.container, w.unit.as_deref()),
            (None, Some("crun-.scope"))
        );
    }

    #[test]
    fn things_that_look_like_containers_but_are_not() {
        for path in [
            "/system.slice/docker-abc.scope",
            "/docker/buildkit",
            &format!("/docker/{}", &ID[..12]),
            &format!("/system.slice/docker-{}.scope", ID.to_uppercase()),
            &format!("/system.slice/other-{ID}.scope"),
            &format!("/system.slice/docker-{ID}.service"),
            // A bare id is a container only under a pod (cgroupfs driver) or /docker.
            &format!("/system.slice/{ID}"),
            &format!("/kubepods/burstable/{ID}"),
        ] {
            assert_eq!(ctr(path), None, "{path}");
            assert_eq!(pod_of(path), None, "{path}");
        }
        // A container-looking scope that is not one is still a unit.
        assert_eq!(
            unit("/system.slice/docker-abc.scope").as_deref(),
            Some("docker-abc.scope")
        );
    }

    const UID: &str = "7a1b6c2e-3f4d-4a5b-9c8d-0e1f2a3b4c5d";
    const UID_: &str = "7a1b6c2e_3f4d_4a5b_9c8d_0e1f2a3b4c5d";

    #[test]
    fn kubernetes_systemd_driver() {
        for (path, qos, runtime, monitor) in [
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                Qos::Burstable,
                Runtime::Containerd,
                false,
            ),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"),
                Qos::BestEffort,
                Runtime::CriO,
                false,
            ),
            (
                format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{ID}.scope"),
                Qos::BestEffort,
                Runtime::CriO,
                true,
            ),
            // Guaranteed: no QoS level.
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                Qos::Guaranteed,
                Runtime::Containerd,
                false,
            ),
            // cri-dockerd.
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/docker-{ID}.scope"),
                Qos::Burstable,
                Runtime::Docker,
                false,
            ),
            // CRI-O with crun: a sub-cgroup below the container's scope.
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope/container"),
                Qos::Burstable,
                Runtime::CriO,
                false,
            ),
            // kind: the node is a docker container, its kubelet's cgroup root kubelet.slice.
            (
                format!("/system.slice/docker-{ID2}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                Qos::BestEffort,
                Runtime::Containerd,
                false,
            ),
        ] {
            assert_eq!(pod_of(&path), Some((UID.to_string(), Some(qos))), "{path}");
            assert_eq!(ctr(&path), Some((runtime, ID.to_string(), monitor)), "{path}");
            assert_eq!(unit(&path), None, "{path}");
        }
        // The pod's own cgroup, between containers.
        let p =
            format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice");
        assert_eq!(pod_of(&p), Some((UID.to_string(), Some(Qos::Burstable))));
        assert_eq!(ctr(&p), None);
        // The QoS slice alone is no pod.
        assert_eq!(pod_of("/kubepods.slice/kubepods-burstable.slice"), None);
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        let static_uid = "6a4bd4f0c4b6cfd4e44d1a2b0e3d4f1e";
        for (path, uid, qos) in [
            (
                format!("/kubepods/burstable/pod{UID}/{ID}"),
                UID,
                Qos::Burstable,
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/{ID}"),
                UID,
                Qos::BestEffort,
            ),
            (format!("/kubepods/pod{UID}/{ID}"), UID, Qos::Guaranteed),
            // A static pod (the UID is a hash of its manifest).
            (
                format!("/kubepods/burstable/pod{static_uid}/{ID}"),
                static_uid,
                Qos::Burstable,
            ),
            // kind / nested: a cgroup root before kubepods.
            (
                format!("/kubelet/kubepods/burstable/pod{UID}/{ID}"),
                UID,
                Qos::Burstable,
            ),
        ] {
            assert_eq!(pod_of(&path), Some((uid.to_string(), Some(qos))), "{path}");
            assert_eq!(
                ctr(&path),
                Some((Runtime::Cri, ID.to_string(), false)),
                "{path}"
            );
        }
        assert_eq!(
            pod_of(&format!("/kubepods/besteffort/pod{UID}")),
            Some((UID.to_string(), Some(Qos::BestEffort)))
        );
        // `pod<uid>` means a pod only under kubepods.
        assert_eq!(pod_of(&format!("/system.slice/pod{UID}/{ID}")), None);
        assert_eq!(
            pod_of(&format!("/kubepods/burstable/podnotauid/{ID}")),
            None
        );
    }

    #[test]
    fn names_read_as_people_say_them() {
        let mut w = parse(&format!(
            "/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(
            w.to_string(),
            format!("pod {UID} container containerd 4f797c539e6c")
        );
        let pod = w.pod.as_mut().unwrap();
        pod.namespace = Some("shop".into());
        pod.name = Some("web-0".into());
        w.container.as_mut().unwrap().name = Some("nginx".into());
        assert_eq!(w.to_string(), "pod shop/web-0 container nginx");
        let mut d = parse(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!(d.to_string(), "container docker 4f797c539e6c");
        d.container.as_mut().unwrap().name = Some("web".into());
        assert_eq!(d.to_string(), "container web (docker 4f797c539e6c)");
        assert_eq!(
            parse("/system.slice/nginx.service").to_string(),
            "nginx.service"
        );
        assert_eq!(
            parse("/user.slice/user-1000.slice/user@1000.service/app.slice/syncthing.service")
                .to_string(),
            "syncthing.service (user 1000)"
        );
        assert_eq!(parse("/").to_string(), "");
    }

    #[test]
    fn json_shape() {
        let w = parse(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        assert_eq!(
            serde_json::to_string(&w).unwrap(),
            format!(
                r#"{{"container":{{"runtime":"cri","id":"{ID}"}},"pod":{{"uid":"{UID}","qos":"burstable"}}}}"#
            )
        );
        let c = parse(&format!("/machine.slice/libpod-conmon-{ID}.scope"));
        assert!(serde_json::to_string(&c)
            .unwrap()
            .contains(r#""runtime":"podman","id":"#));
        assert!(serde_json::to_string(&c)
            .unwrap()
            .contains(r#""monitor":true"#));
    }
}
