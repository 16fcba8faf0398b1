//! Facts the live source reads from a socket's namespace for a ring-buffer record
//! (`LiveReads`).
use crate::{
    base::record::{Kind, PortUse, Record, TcpState},
    source::netns,
};

/// How long a namespace's port use, read for a connect() that found no free port, is
/// reused for the next ones to the same destination (a retry loop fails thousands of
/// times a second; each read is a sock_diag dump of the namespace).
const PORT_USE_FOR_NS: u64 = 1_000_000_000;

/// Reads what the kernel's record cannot hold from the socket's namespace, before the
/// record is recorded (so that a replay explains with the same facts): the port range
/// and the sockets holding ports towards the destination for connect errors for want
/// of a local port; IPV6_V6ONLY for listeners opened on an IPv6 address.
#[derive(Default)]
pub struct LiveReads {
    /// None: the read failed (not retried within the window either).
    recent: std::collections::HashMap<(u32, std::net::SocketAddr), (u64, Option<PortUse>)>,
}

/// Reads `f` in the namespace `ns` of a record owned by `pid`: through the process's
/// link while it lives (and the pid was not reused, which the inode tells), else, or
/// when that fails (the process exited meanwhile: a client that gives up at once),
/// through any process's or a bind mount's, found by a walk.
fn in_ns_of<T>(ns: u32, pid: u32, f: impl Fn(&std::path::Path) -> anyhow::Result<T>) -> Option<T> {
    let path = std::path::PathBuf::from(format!("/proc/{pid}/ns/net"));
    if std::fs::metadata(&path).is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == ns as u64)
    {
        match f(&path) {
            Ok(v) => return Some(v),
            Err(e) => log::debug!("netns {ns} through {}: {e:#}", path.display()),
        }
    }
    let n = netns::scan_namespaces().remove(&ns)?;
    f(&n.path)
        .map_err(|e| log::debug!("netns {ns} through {}: {e:#}", n.path.display()))
        .ok()
}

impl LiveReads {
    pub fn enrich(&mut self, r: &mut Record) {
        self.v6only(r);
        self.ports(r);
    }

    fn v6only(&mut self, r: &mut Record) {
        let opened = r.kind == Kind::State
            && r.old_state == Some(TcpState::Close)
            && r.new_state == Some(TcpState::Listen);
        let (Some(ns), Some(addr), Some(owner)) = (r.netns, r.src, &r.owner) else {
            return;
        };
        if !opened || !addr.is_ipv6() {
            return;
        }
        r.v6only = in_ns_of(ns, owner.pid, |path| netns::listener_v6only(path, addr)).flatten();
    }

    fn ports(&mut self, r: &mut Record) {
        if r.kind != Kind::ConnectError
            || r.state != Some(TcpState::SynSent)
            || r.errno != Some(libc::EADDRNOTAVAIL)
        {
            return;
        }
        let (Some(ns), Some(dst), Some(owner)) = (r.netns, r.dst, &r.owner) else {
            return;
        };
        let now = r.mono_ns;
        self.recent
            .retain(|_, (at, _)| now.saturating_sub(*at) < PORT_USE_FOR_NS);
        if let Some((_, p)) = self.recent.get(&(ns, dst)) {
            r.ports = p.clone();
            return;
        }
        let p = in_ns_of(ns, owner.pid, |path| netns::port_use(path, dst));
        self.recent.insert((ns, dst), (now, p.clone()));
        r.ports = p;
    }
}
