//! Harness for the real-kernel tests: network namespaces joined by veth that clean up
//! on drop (and so on panic), peer processes ended by pid, and an `rstrace watch
//! --json` whose records the tests wait for.
#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]
use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// Raw socket helpers shared by the `peer` and `bench` programs.
pub mod net {
    use std::{
        net::{SocketAddrV4, SocketAddrV6},
        os::fd::{AsRawFd, FromRawFd, OwnedFd},
    };

    /// Moves the calling thread into the named namespace (`ip netns add`).
    pub fn join_netns(name: &str) -> std::io::Result<()> {
        let f = std::fs::File::open(format!("/run/netns/{name}"))?;
        // SAFETY: `f` is an open namespace file for the call.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        }
    }

    pub fn sockaddr6(a: SocketAddrV6) -> libc::sockaddr_in6 {
        libc::sockaddr_in6 {
            sin6_family: libc::AF_INET6 as u16,
            sin6_port: a.port().to_be(),
            sin6_flowinfo: 0,
            sin6_addr: libc::in6_addr {
                s6_addr: a.ip().octets(),
            },
            sin6_scope_id: a.scope_id(),
        }
    }

    /// An IPv6 socket of type `ty`.
    pub fn socket6(ty: i32) -> std::io::Result<OwnedFd> {
        // SAFETY: socket takes no pointers; the descriptor is taken over below.
        let fd = unsafe { libc::socket(libc::AF_INET6, ty, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: socket returned this descriptor; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// An IPv4 socket of type `ty` (SOCK_STREAM | flags, SOCK_DGRAM).
    pub fn socket(ty: i32) -> std::io::Result<OwnedFd> {
        // SAFETY: socket takes no pointers; the descriptor is taken over below.
        let fd = unsafe { libc::socket(libc::AF_INET, ty, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: socket returned this descriptor; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Says that (part of) the running test was skipped, and why: on stderr and, when
/// `RSTRACE_TEST_SKIPS` names a file, in that file, which `cargo xtask test` prints at
/// the end (a passing test's stderr is not shown).
pub fn skip(why: &str) {
    let test = thread::current().name().unwrap_or("?").to_string();
    let line = format!("skipped in {test}: {why}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("RSTRACE_TEST_SKIPS") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// True when the real-kernel tests can run. Without root they fail, unless
/// `RSTRACE_TEST_ALLOW_SKIPS=1` says skipping them is intended (then each says so).
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("RSTRACE_TEST_ALLOW_SKIPS").is_ok_and(|v| v == "1"),
            "real-kernel tests need root (run `cargo xtask test`); \
             RSTRACE_TEST_ALLOW_SKIPS=1 skips them instead"
        );
        skip("not root");
        return false;
    }
    true
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
    /// Inode of the namespace, as rstrace reports it.
    pub inode: u64,
}

impl Netns {
    pub fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        sh(&["ip", "netns", "add", name]);
        let ns = Netns {
            name: name.to_string(),
            inode: std::fs::metadata(format!("/run/netns/{name}"))
                .expect("netns file")
                .ino(),
        };
        sh(&["ip", "-n", name, "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace as explanations name it: its `ip netns` name, then its inode.
    pub fn label(&self) -> String {
        format!("{} ({})", self.name, self.inode)
    }

    /// Adds a rule to an input filter chain of the namespace's own nftables table
    /// (created on first use; it goes away with the namespace).
    pub fn nft_input(&self, rule: &str) {
        self.exec(&["nft", "add table inet rstrace_test"]);
        self.exec(&["nft", "add chain inet rstrace_test input { type filter hook input priority 0; policy accept; }"]);
        self.exec(&["nft", &format!("add rule inet rstrace_test input {rule}")]);
    }

    /// Adds a rule to an output filter chain of the namespace's own nftables table.
    pub fn nft_output(&self, rule: &str) {
        self.exec(&["nft", "add table inet rstrace_test"]);
        self.exec(&["nft", "add chain inet rstrace_test output { type filter hook output priority 0; policy accept; }"]);
        self.exec(&["nft", &format!("add rule inet rstrace_test output {rule}")]);
    }

    /// Adds a rule to a forward filter chain of the namespace's own nftables table
    /// (a router's firewall).
    pub fn nft_forward(&self, rule: &str) {
        self.exec(&["nft", "add table inet rstrace_test"]);
        self.exec(&["nft", "add chain inet rstrace_test forward { type filter hook forward priority 0; policy accept; }"]);
        self.exec(&["nft", &format!("add rule inet rstrace_test forward {rule}")]);
    }

    /// The handle of the first rule of the namespace's own nftables table whose
    /// listing (`nft -a`) starts with `rule`.
    pub fn nft_handle(&self, rule: &str) -> u64 {
        let listing = sh(&[
            "ip",
            "netns",
            "exec",
            &self.name,
            "nft",
            "-a",
            "list",
            "table",
            "inet",
            "rstrace_test",
        ]);
        listing
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(rule))
            .and_then(|l| l.rsplit_once("# handle "))
            .and_then(|(_, h)| h.trim().parse().ok())
            .unwrap_or_else(|| panic!("no rule {rule:?} in {listing}"))
    }

    /// Runs a command inside the namespace, asserting it succeeds.
    pub fn exec(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A client and a server namespace joined by a veth pair, on a /24 of their own.
pub struct Topology {
    pub client: Netns,
    pub server: Netns,
    pub client_ip: String,
    pub server_ip: String,
    subnet: u32,
}

impl Topology {
    /// `n` connects from one client process to `port` of the server, none listening
    /// there, each refused, waited for up to `timeout`; the client's pid.
    pub fn refusals(&self, port: u16, n: usize, timeout: Duration) -> u32 {
        let c = Peer::spawn(
            &self.client,
            &[
                "connect",
                &format!("{}:{port}", self.server_ip),
                "--count",
                &n.to_string(),
            ],
        );
        let pid = c.pid;
        let out = c.wait(timeout);
        assert_eq!(out.len(), n, "the connects to {port}");
        assert!(
            out.iter().all(|l| l == "errno=111"),
            "every connect to {port} refused: {:?}",
            &out[..out.len().min(3)]
        );
        pid
    }

    pub fn new() -> Topology {
        let id = (std::process::id() % 100) * 2 + NEXT.fetch_add(1, Ordering::Relaxed) % 2 + 20;
        let tag = format!("rst{}-{}", std::process::id(), id);
        let client = Netns::new(&format!("{tag}-c"));
        let server = Netns::new(&format!("{tag}-s"));
        sh(&[
            "ip",
            "-n",
            &client.name,
            "link",
            "add",
            "veth0",
            "type",
            "veth",
            "peer",
            "name",
            "veth1",
            "netns",
            &server.name,
        ]);
        let (client_ip, server_ip) = (format!("10.231.{id}.1"), format!("10.231.{id}.2"));
        sh(&[
            "ip",
            "-n",
            &client.name,
            "addr",
            "add",
            &format!("{client_ip}/24"),
            "dev",
            "veth0",
        ]);
        sh(&[
            "ip",
            "-n",
            &server.name,
            "addr",
            "add",
            &format!("{server_ip}/24"),
            "dev",
            "veth1",
        ]);
        sh(&["ip", "-n", &client.name, "link", "set", "veth0", "up"]);
        sh(&["ip", "-n", &server.name, "link", "set", "veth1", "up"]);
        Topology {
            client,
            server,
            client_ip,
            server_ip,
            subnet: id,
        }
    }

    /// Makes the client's neighbour entry for the server permanent. Once the server's
    /// link goes down, the client's entry is otherwise flushed and re-resolved, and
    /// when that fails before TCP gives up (slow machines), the connection ends with
    /// EHOSTUNREACH instead of timing out.
    pub fn pin_server_neighbour(&self) {
        let link = sh(&["ip", "-n", &self.server.name, "-j", "link", "show", "veth1"]);
        let v: Value = serde_json::from_str(&link).expect("ip -j link");
        let mac = v[0]["address"].as_str().expect("veth1 has an address");
        sh(&[
            "ip",
            "-n",
            &self.client.name,
            "neigh",
            "replace",
            &self.server_ip,
            "lladdr",
            mac,
            "nud",
            "permanent",
            "dev",
            "veth0",
        ]);
    }

    /// Adds IPv6 addresses to both ends (a /64 of the topology's own, no duplicate
    /// address detection so that they are usable at once): (client, server).
    pub fn ipv6(&self) -> (String, String) {
        let (c, s) = (
            format!("fd00:231:{}::1", self.subnet),
            format!("fd00:231:{}::2", self.subnet),
        );
        for (ns, dev, a) in [(&self.client, "veth0", &c), (&self.server, "veth1", &s)] {
            sh(&[
                "ip",
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{a}/64"),
                "dev",
                dev,
                "nodad",
            ]);
        }
        (c, s)
    }

    /// Another address of the topology's /24 (nobody has it unless a test adds it).
    pub fn host_ip(&self, n: u8) -> String {
        format!("10.231.{}.{n}", self.subnet)
    }
}

impl Default for Topology {
    fn default() -> Self {
        Topology::new()
    }
}

/// A client and a server namespace with a router namespace between them: client
/// `10.232.N.1/24` - router `10.232.N.254` | router `10.233.N.254` - server
/// `10.233.N.2/24`, with default routes through the router, which forwards.
pub struct RoutedTopology {
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
    pub client_ip: String,
    pub server_ip: String,
    /// The router's address on the client's side (the first hop).
    pub router_ip: String,
    subnet: u32,
}

impl RoutedTopology {
    pub fn new() -> RoutedTopology {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id() % 100) * 2 + n % 2 + 20;
        // The names are unique even when tests run in parallel (the subnets need not
        // be: each namespace has its own).
        let tag = format!("rsr{}-{n}", std::process::id());
        let client = Netns::new(&format!("{tag}-c"));
        let router = Netns::new(&format!("{tag}-r"));
        let server = Netns::new(&format!("{tag}-s"));
        let link = |a: &Netns, a_if: &str, b: &Netns, b_if: &str| {
            sh(&[
                "ip", "-n", &a.name, "link", "add", a_if, "type", "veth", "peer", "name", b_if,
                "netns", &b.name,
            ]);
        };
        link(&client, "veth0", &router, "rc");
        link(&server, "veth0", &router, "rs");
        let addr = |ns: &Netns, a: &str, dev: &str| {
            sh(&["ip", "-n", &ns.name, "addr", "add", a, "dev", dev]);
            sh(&["ip", "-n", &ns.name, "link", "set", dev, "up"]);
        };
        let (client_ip, server_ip) = (format!("10.232.{id}.1"), format!("10.233.{id}.2"));
        let router_ip = format!("10.232.{id}.254");
        addr(&client, &format!("{client_ip}/24"), "veth0");
        addr(&router, &format!("{router_ip}/24"), "rc");
        addr(&router, &format!("10.233.{id}.254/24"), "rs");
        addr(&server, &format!("{server_ip}/24"), "veth0");
        sh(&[
            "ip",
            "-n",
            &client.name,
            "route",
            "add",
            "default",
            "via",
            &router_ip,
        ]);
        sh(&[
            "ip",
            "-n",
            &server.name,
            "route",
            "add",
            "default",
            "via",
            &format!("10.233.{id}.254"),
        ]);
        // Through /proc rather than sysctl(8): the QEMU guests' busybox lacks options.
        router.exec(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        RoutedTopology {
            client,
            router,
            server,
            client_ip,
            server_ip,
            router_ip,
            subnet: id,
        }
    }

    /// An address on the server's subnet that nobody has. The router's neighbour
    /// entry for it is pinned, so SYNs to it leave the router and vanish (no ARP
    /// failure, no ICMP): a host that is gone.
    pub fn ghost_ip(&self) -> String {
        let ghost = format!("10.233.{}.99", self.subnet);
        sh(&[
            "ip",
            "-n",
            &self.router.name,
            "neigh",
            "replace",
            &ghost,
            "lladdr",
            "02:00:00:00:00:63",
            "nud",
            "permanent",
            "dev",
            "rs",
        ]);
        ghost
    }

    /// An address no route of the router leads to (the client sends it to the
    /// router, its default route).
    pub fn unrouted_ip(&self) -> String {
        format!("10.234.{}.9", self.subnet)
    }
}

impl Default for RoutedTopology {
    fn default() -> Self {
        RoutedTopology::new()
    }
}

/// A hosts file for a named namespace (/etc/netns/NAME/hosts, which `ip netns exec`
/// and `rstrace probe --netns` bind-mount over /etc/hosts), removed on drop.
pub struct NetnsHosts {
    dir: PathBuf,
}

impl NetnsHosts {
    pub fn new(ns: &Netns, text: &str) -> NetnsHosts {
        let dir = PathBuf::from("/etc/netns").join(&ns.name);
        std::fs::create_dir_all(&dir).expect("creating /etc/netns/NAME");
        std::fs::write(dir.join("hosts"), text).expect("writing the namespace's hosts file");
        NetnsHosts { dir }
    }
}

impl Drop for NetnsHosts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads a child's stdout lines on a thread.
fn line_reader(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A peer process (the `peer` binary) in a namespace, killed by pid on drop.
pub struct Peer {
    child: Child,
    pub pid: u32,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Peer {
    pub fn spawn(ns: &Netns, args: &[&str]) -> Peer {
        Peer::spawn_with(ns, args, Command::new(peer_bin()))
    }

    /// A peer that runs in the cgroup v2 directory `cgroup` from its start (so that
    /// the kernel records its sockets' owner there).
    pub fn spawn_in_cgroup(ns: &Netns, cgroup: &std::path::Path, args: &[&str]) -> Peer {
        use std::os::unix::{ffi::OsStrExt, process::CommandExt};
        let procs = std::ffi::CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())
            .expect("cgroup path");
        let mut cmd = Command::new(peer_bin());
        // SAFETY: between fork and exec, join_cgroup makes only async-signal-safe
        // calls (open, write, close) on memory made before the fork.
        unsafe { cmd.pre_exec(move || join_cgroup(&procs)) };
        Peer::spawn_with(ns, args, cmd)
    }

    fn spawn_with(ns: &Netns, args: &[&str], mut cmd: Command) -> Peer {
        let mut child = cmd
            .arg("--netns")
            .arg(&ns.name)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning peer");
        let lines = line_reader(child.stdout.take().unwrap());
        Peer {
            pid: child.id(),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line satisfying `pred`.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "peer {} printed no expected line in {timeout:?}; saw {:?}",
                    self.pid, self.seen
                ),
            }
        }
    }

    /// Waits for the peer to exit by itself.
    pub fn wait(mut self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait().expect("wait").is_some() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(l);
                }
                return std::mem::take(&mut self.seen);
            }
            thread::sleep(Duration::from_millis(20));
        }
        panic!("peer {} did not exit within {timeout:?}", self.pid);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SAFETY: kill takes no pointers; the pid is a child this test started.
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Moves the calling process into the cgroup whose `cgroup.procs` this is ("0" moves
/// the writer itself). Async-signal-safe: it runs between fork and exec.
fn join_cgroup(procs: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: a NUL-terminated path that outlives the call.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: one byte read from a static buffer, written to the fd opened above.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let err = std::io::Error::last_os_error();
    // SAFETY: the fd opened above, closed once.
    unsafe { libc::close(fd) };
    if n != 1 {
        return Err(err);
    }
    Ok(())
}

/// The `peer` binary, built beside the test executables (target/<profile>/peer).
fn peer_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("peer")
}

pub fn rstrace_bin() -> PathBuf {
    std::env::var_os("RSTRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/rstrace")
        })
}

/// How much slower than real hardware the tests run (5 under QEMU's emulation, set
/// by `cargo xtask vm-test`): latency bounds that are product requirements on real
/// hardware are scaled by it there.
pub fn time_scale() -> u32 {
    std::env::var("RSTRACE_TEST_TIME_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// The program `rstrace doctor` attaches to each tracepoint (such as
/// "tcp:tcp_destroy_sock") with the environment `env`; hooks that do not attach are
/// left out.
pub fn attached_programs(env: &[(&str, &str)]) -> HashMap<String, String> {
    let out = Command::new(rstrace_bin())
        .args(["doctor", "--json"])
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("running {} doctor: {e}", rstrace_bin().display()));
    let v: Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    v["hooks"]
        .as_array()
        .expect("doctor --json has hooks")
        .iter()
        .filter_map(|h| {
            Some((
                h["tracepoint"].as_str()?.to_string(),
                h["program"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// The running kernel's (major, minor) version.
pub fn kernel_version() -> (u32, u32) {
    // SAFETY: utsname is byte arrays; all zeros is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is writable.
    assert_eq!(unsafe { libc::uname(&mut u) }, 0, "uname");
    // SAFETY: uname filled `release` with a NUL-terminated string, within the array.
    let release = unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// Whether the running kernel gives this evidence (by the names `rstrace doctor
/// --json` lists under `capabilities`), from its version and what was measured on
/// these machines (shared/KERNELS.md): never from rstrace itself, so that a doctor
/// wrongly saying "missing" cannot make a test expect less. The test
/// `doctor_agrees_with_what_this_kernel_gives` holds doctor to the same table.
pub fn capability(name: &str) -> bool {
    let available = expected_capability(name);
    if !available {
        let v = kernel_version();
        skip(&format!(
            "Linux {}.{} lacks {name}: the assertions that need it",
            v.0, v.1
        ));
    }
    available
}

/// `capability` without saying that what depends on it is skipped.
pub fn expected_capability(name: &str) -> bool {
    let v = kernel_version();
    match name {
        // sk_rst_reason, and tcp_send_reset for SYNs to closed ports, since 6.10.
        "rst_sent_reason" | "rst_for_closed_port" => v >= (6, 10),
        // kfree_skb's reason (5.17) and its rx_sk (6.11).
        "drop_reasons" | "drop_addresses" => v >= (5, 17),
        "drop_listener" => v >= (6, 11),
        // sock:inet_sk_error_report (5.13).
        "errno" => v >= (5, 13),
        "rst_received" | "syn_retransmits" | "synack_retransmits" | "connect_errors"
        | "ownership" | "accept_owner" | "netns" | "accept_queue" | "backlog_counters" => true,
        other => panic!("no known fact for capability {other:?}: add it to tests::capability"),
    }
}

/// What `rstrace doctor --json` says of each capability.
pub fn doctor_capabilities() -> Vec<(String, bool)> {
    let out = Command::new(rstrace_bin())
        .args(["doctor", "--json"])
        .output()
        .unwrap_or_else(|e| panic!("running {} doctor: {e}", rstrace_bin().display()));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rstrace doctor --json printed invalid JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["capabilities"]
        .as_array()
        .expect("doctor --json has capabilities")
        .iter()
        .filter_map(|c| Some((c["name"].as_str()?.to_string(), c["available"].as_bool()?)))
        .collect()
}

/// A running `rstrace watch --json --events` (explanations and evidence records),
/// stopped with SIGINT on drop.
pub struct Agent {
    child: Child,
    pub pid: u32,
    records: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

impl Agent {
    pub fn start(extra: &[&str]) -> Agent {
        Agent::start_env(extra, &[])
    }

    /// `start` with extra environment variables.
    pub fn start_env(extra: &[&str], env: &[(&str, &str)]) -> Agent {
        Agent::start_as(&["watch", "--json", "--events"], extra, env)
    }

    /// `rstrace agent` (explanations as JSON Lines on stdout, unless --json-file).
    pub fn start_node_agent(extra: &[&str]) -> Agent {
        Agent::start_as(&["agent"], extra, &[])
    }

    fn start_as(command: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let mut child = Command::new(rstrace_bin())
            .args(command)
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", rstrace_bin().display()));
        let records = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = line_reader(child.stdout.take().unwrap());
        let mut readers = Vec::new();
        {
            let records = records.clone();
            readers.push(thread::spawn(move || {
                for line in out {
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("rstrace printed invalid JSON ({e}): {line}"));
                    records.lock().unwrap().push(v);
                }
            }));
        }
        let err = line_reader(child.stderr.take().unwrap());
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let stderr = stderr.clone();
            readers.push(thread::spawn(move || {
                for line in err {
                    if line.contains("watching") {
                        let _ = ready_tx.send(());
                    }
                    stderr.lock().unwrap().push(line);
                }
            }));
        }
        let pid = child.id();
        let agent = Agent {
            child,
            pid,
            records,
            stderr,
            readers,
        };
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!(
                "rstrace did not start; stderr: {:?}",
                agent.stderr.lock().unwrap()
            );
        }
        agent
    }

    pub fn records(&self) -> Vec<Value> {
        self.records.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for a record satisfying `pred`; panics with everything seen on timeout.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.records.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = self.records().iter().map(|v| v.to_string()).collect();
                panic!(
                    "expected {what} within {timeout:?}; rstrace printed:\n{}\nstderr: {:?}",
                    seen.join("\n"),
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill takes no pointers; the pid is a child this test started.
        unsafe { libc::kill(self.pid as i32, sig) };
    }

    /// SIGINT, then the exit status (SIGKILL after 10 s). Once it returns, `records`
    /// and `stderr` hold everything the agent printed.
    pub fn stop(&mut self) -> ExitStatus {
        self.stop_with(libc::SIGINT)
    }

    /// `stop` with signal `sig` (and no other before SIGKILL).
    pub fn stop_with(&mut self, sig: i32) -> ExitStatus {
        // Once reaped, its pid may be another process's: signal only a live child.
        if self.child.try_wait().expect("wait").is_none() {
            self.signal(sig);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let st = loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                break st;
            }
            if Instant::now() > deadline {
                self.signal(libc::SIGKILL);
                break self.child.wait().expect("wait");
            }
            thread::sleep(Duration::from_millis(20));
        };
        // The pipes close with the process, so the readers end after the last line.
        for r in self.readers.drain(..) {
            if let Err(panic) = r.join() {
                // Invalid output: fail the test (unless it is failing already).
                if !thread::panicking() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
        st
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

/// Accessors for record fields.
pub fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

pub fn owner_pid(v: &Value) -> Option<u64> {
    pid_of(v, "owner")
}

/// `pid` of a process field (`owner`, `process`, `culprit`).
pub fn pid_of(v: &Value, field: &str) -> Option<u64> {
    v.get(field)?.get("pid")?.as_u64()
}

pub fn port(addr: &str) -> u16 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

pub fn ip(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(a, _)| a)
}

/// Whether the real daemons' tests can run: the Debian packages `cargo xtask test`
/// installs (nginx-light, redis-server, redis-tools, socat, curl) are there. Where they
/// cannot be (the QEMU guests), `RSTRACE_TEST_NO_DAEMONS=1` skips those tests, saying
/// so; anywhere else a missing daemon fails the test.
pub fn require_daemons(bins: &[&str]) -> bool {
    if std::env::var("RSTRACE_TEST_NO_DAEMONS").is_ok_and(|v| v == "1") {
        skip(&format!("RSTRACE_TEST_NO_DAEMONS=1, and it needs {bins:?}"));
        return false;
    }
    for b in bins {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file()))
            || std::path::Path::new("/usr/sbin").join(b).is_file();
        assert!(
            found,
            "{b} is not installed: run `cargo xtask test` (it installs the test daemons), \
             or set RSTRACE_TEST_NO_DAEMONS=1 to skip these tests"
        );
    }
    true
}

/// A real daemon (or client) run in a namespace with `ip netns exec`, which execs it:
/// its pid is ours. On drop it gets `stop_signal`, then SIGKILL after 5 s, and so do
/// the children it forked (pre-fork workers) that are still there.
pub struct Daemon {
    child: Child,
    pub pid: u32,
    pub stop_signal: i32,
}

impl Daemon {
    pub fn spawn(ns: &Netns, args: &[&str]) -> Daemon {
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
        Daemon {
            pid: child.id(),
            child,
            stop_signal: libc::SIGTERM,
        }
    }

    /// The processes it forked, from /proc.
    pub fn children(&self) -> Vec<u32> {
        children_of(self.pid)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill takes no pointers; the pid is a child this test started.
        unsafe { libc::kill(self.pid as i32, sig) };
    }

    /// Waits for it to exit by itself; its exit status.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit within {timeout:?}",
                self.pid
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The children of `pid`, from /proc/PID/task/*/children.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let kids = self.children();
        if self.child.try_wait().ok().flatten().is_none() {
            self.signal(self.stop_signal);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
                thread::sleep(Duration::from_millis(20));
            }
            if self.child.try_wait().ok().flatten().is_none() {
                self.signal(libc::SIGKILL);
                let _ = self.child.wait();
            }
        }
        // Workers outliving their master (it was killed): ours too, by pid.
        for k in kids {
            // SAFETY: kill takes no pointers; the pids are the daemon's workers.
            unsafe { libc::kill(k as i32, libc::SIGKILL) };
        }
    }
}

/// Sends SIGKILL to a process the test started when dropped (on panic too), unless
/// it has exited and been reaped by then.
pub struct KillOnDrop(pub u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // A reaped pid may be another process's: only a child still alive (or a
        // zombie) of ours is signalled.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0)).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(std::process::id()) {
            // SAFETY: kill takes no pointers; the pid is a child of this process
            // (checked above).
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
}

/// Polls `f` until it is true, for at most `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// The explained failures of connections to port `p`.
pub fn failures(records: &[Value], p: u16) -> Vec<Value> {
    records
        .iter()
        .filter(|v| s(v, "kind") == "failure" && port(s(v, "dst")) == p)
        .cloned()
        .collect()
}

/// The JSON values of `text`, one a line; a line that is not JSON fails the test,
/// naming it.
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON ({e}): {l}")))
        .collect()
}

/// Every line of `rstrace explain --json ARGS CAPTURE` (a capture file or directory):
/// explanations and whatever else it prints, for the caller to pick from. A failed
/// run fails the test with its stderr.
pub fn explain_json(args: &[&str], capture: &std::path::Path) -> Vec<Value> {
    let out = Command::new(rstrace_bin())
        .args(["explain", "--json"])
        .args(args)
        .arg(capture)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", rstrace_bin().display()));
    assert!(
        out.status.success(),
        "rstrace explain --json {args:?} {}: {}: {}",
        capture.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    json_lines(&String::from_utf8_lossy(&out.stdout))
}

/// A fresh path `name` in this test process's scratch directory for `area` (capture
/// files, trigger files).
pub fn scratch_file(area: &str, name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rstrace-{area}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch directory");
    let p = d.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

/// Nested cgroup v2 directories `rel` (`a/b/c`) under a parent of this test process's
/// own, so that a real node's cgroups are never touched; removed deepest first on
/// drop, after the processes in them are gone.
pub struct TestCgroup {
    dirs: Vec<PathBuf>,
}

impl TestCgroup {
    /// None (the test skips, saying why) without a cgroup v2 hierarchy.
    pub fn make(rel: &str) -> Option<TestCgroup> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let Some(mount) = mountinfo.lines().find_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            if tail.split(' ').next()? != "cgroup2" {
                return None;
            }
            head.split(' ').nth(4).map(PathBuf::from)
        }) else {
            skip("no cgroup v2 hierarchy mounted");
            return None;
        };
        let mut p = mount.join(format!("rstrace-test-{}.slice", std::process::id()));
        let mut dirs = vec![p.clone()];
        for part in rel.split('/') {
            p = p.join(part);
            dirs.push(p.clone());
        }
        std::fs::create_dir_all(&p).unwrap();
        Some(TestCgroup { dirs })
    }

    /// The innermost directory, the one processes are put in.
    pub fn leaf(&self) -> &std::path::Path {
        self.dirs.last().unwrap()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}
