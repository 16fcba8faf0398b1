//! A test peer: a TCP client or server run inside a test's network namespace, so that
//! each end of a scenario is its own process with its own pid.
//!
//!   peer [--cpu N] spin SECONDS
//!   peer [--netns NAME] listen ADDR:PORT [--backlog N] [--linger0 | --close-unread | --close]
//!                                        [--fork-accept] [--failed-listen] [--v6only]
//!                                        [--reuseport]
//!   peer [--netns NAME] connect ADDR:PORT [--syncnt N] [--count N] [--hold MS]
//!                                         [--after FILE] [--send N]
//!                                         [--then read|keepalive|write]
//!                                         [--bind ADDR:PORT]
//!
//! `listen` prints `ready` once listening and then serves until killed; with
//! `--linger0` it accepts connections and closes each with SO_LINGER 0, with
//! `--close-unread` it closes each once data has arrived, without reading it (both
//! send an RST), with `--close` it closes each at once, gracefully; it prints `closed`
//! each time. `--fork-accept` makes it pre-fork: the process that listens forks a
//! child (printing `child=PID`) that accepts and serves; the parent only waits.
//! `--failed-listen` has a child try to listen on the same address too, bound
//! beforehand with SO_REUSEADDR, which fails with EADDRINUSE (printing
//! `failed-listen errno=N`) while the parent listens on. ADDR may be IPv6 (`[::]:80`);
//! `--v6only` sets IPV6_V6ONLY on such a listener; `connect` takes IPv6 too.
//! `--reuseport` sets SO_REUSEPORT, so that several peers listen on one address.
//! `spin` burns CPU (a bystander for softirqs to interrupt) for SECONDS; `--cpu` pins
//! any mode to one CPU.
//! `connect` prints `errno=N` per attempt (0 when connected); with `--hold` the
//! connects are non-blocking and the sockets kept open for MS milliseconds; `--bind`
//! binds each socket to ADDR:PORT first (with SO_REUSEADDR). After a connection,
//! `--after` waits (up to 60 s) until FILE exists, `--send` writes N bytes and `--then`
//! waits for the connection to fail:
//! `read` blocks in recv, `keepalive` does the same with fast keepalives, `write`
//! writes a byte every 100 ms; each prints `failed errno=N` (bounded to 60 s).
use std::{
    io::Write,
    mem::size_of,
    net::{SocketAddr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use tests::net::{self, sockaddr};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn join_netns(name: &str) -> Result<()> {
    net::join_netns(name).with_context(|| format!("joining netns {name}"))
}

fn tcp_socket(flags: i32) -> Result<OwnedFd> {
    net::socket(libc::SOCK_STREAM | flags).context("socket")
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, opt: i32, v: T) -> Result<()> {
    // SAFETY: `v` is alive for the call and its size passed with it; the kernel only
    // reads it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &v as *const T as *const _,
            size_of::<T>() as u32,
        )
    };
    if r != 0 {
        bail!(
            "setsockopt {level}/{opt}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[derive(Clone, Copy, PartialEq)]
enum Serve {
    Idle,
    Linger0,
    CloseUnread,
    Close,
}

fn bound(addr: SocketAddr, v6only: bool, reuseport: bool) -> Result<OwnedFd> {
    let r = match addr {
        SocketAddr::V4(a) => {
            let fd = tcp_socket(0)?;
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1i32)?;
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, reuseport as i32)?;
            let sa = sockaddr(a);
            // SAFETY: `sa` is a sockaddr_in alive for the call, its size passed with
            // it.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sa as *const _ as *const _,
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            (fd, r)
        }
        SocketAddr::V6(a) => {
            let fd = net::socket6(libc::SOCK_STREAM).context("socket")?;
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1i32)?;
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, reuseport as i32)?;
            setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v6only as i32)?;
            let sa = net::sockaddr6(a);
            // SAFETY: `sa` is a sockaddr_in6 alive for the call, its size passed with
            // it.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sa as *const _ as *const _,
                    size_of::<libc::sockaddr_in6>() as u32,
                )
            };
            (fd, r)
        }
    };
    let (fd, r) = r;
    if r != 0 {
        bail!("bind {addr}: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Forks; the child dies with its parent (so that ending the peer by pid ends both).
fn fork_child() -> Result<bool> {
    // SAFETY: the peer is single-threaded, so the child may go on running Rust code.
    match unsafe { libc::fork() } {
        -1 => bail!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            Ok(true)
        }
        _ => Ok(false),
    }
}

struct Listen {
    backlog: i32,
    serve: Serve,
    fork_accept: bool,
    failed_listen: bool,
    v6only: bool,
    reuseport: bool,
}

fn listen(addr: SocketAddr, l: Listen) -> Result<()> {
    let fd = bound(addr, l.v6only, l.reuseport)?;
    let second = l
        .failed_listen
        .then(|| bound(addr, l.v6only, l.reuseport))
        .transpose()?;
    // SAFETY: no pointers; `fd` is open.
    if unsafe { libc::listen(fd.as_raw_fd(), l.backlog) } != 0 {
        bail!("listen: {}", std::io::Error::last_os_error());
    }
    if let Some(second) = second {
        if fork_child()? {
            // SAFETY: no pointers; `second` is open.
            let r = unsafe { libc::listen(second.as_raw_fd(), l.backlog) };
            say(&format!(
                "failed-listen errno={}",
                if r == 0 { 0 } else { errno() }
            ));
            std::process::exit(0);
        }
        drop(second);
        let mut status = 0;
        // SAFETY: `status` is writable.
        unsafe { libc::wait(&mut status) };
    }
    if l.fork_accept {
        if !fork_child()? {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        say(&format!("child={}", std::process::id()));
    }
    say("ready");
    let serve = l.serve;
    loop {
        if serve == Serve::Idle {
            std::thread::sleep(Duration::from_secs(3600));
            continue;
        }
        // SAFETY: null address pointers ask for no peer address.
        let c = unsafe { libc::accept(fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
        if c < 0 {
            bail!("accept: {}", std::io::Error::last_os_error());
        }
        // SAFETY: `c` is the descriptor accept just returned; nothing else owns it.
        let c = unsafe { OwnedFd::from_raw_fd(c) };
        match serve {
            Serve::Linger0 => setsockopt(
                &c,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                },
            )?,
            Serve::CloseUnread => {
                let mut p = libc::pollfd {
                    fd: c.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: `p` is one writable pollfd, as the count says.
                unsafe { libc::poll(&mut p, 1, 60_000) };
            }
            Serve::Close => {}
            Serve::Idle => unreachable!(),
        }
        drop(c);
        say("closed");
    }
}

/// Waits for an established connection to fail, the way `then` says.
fn until_failure(fd: &OwnedFd, then: &str) -> Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    if then == "keepalive" {
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1i32)?;
        setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 1i32)?;
        setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1i32)?;
        setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 2i32)?;
    }
    setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_RCVTIMEO,
        libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        },
    )?;
    while Instant::now() < deadline {
        let mut b = [0u8; 4096];
        let n = if then == "write" {
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: `b` is readable for the 1 byte sent.
            unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    b.as_ptr() as *const _,
                    1,
                    libc::MSG_NOSIGNAL,
                )
            }
        } else {
            // SAFETY: `b` is writable for its whole length, as passed.
            unsafe { libc::recv(fd.as_raw_fd(), b.as_mut_ptr() as *mut _, b.len(), 0) }
        };
        if n < 0 {
            let e = errno();
            if e != libc::EAGAIN {
                return Ok(e);
            }
        } else if n == 0 && then != "write" {
            return Ok(0);
        }
    }
    bail!("the connection did not fail within 60 s")
}

struct Connect {
    syncnt: Option<i32>,
    count: u32,
    hold: Option<u64>,
    after: Option<String>,
    send: usize,
    then: Option<String>,
    bind: Option<SocketAddrV4>,
}

/// The destination as the sockaddr connect() takes, and its family.
enum Dest {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

fn connect(addr: SocketAddr, c: Connect) -> Result<()> {
    let dest = match addr {
        SocketAddr::V4(a) => Dest::V4(sockaddr(a)),
        SocketAddr::V6(a) => Dest::V6(net::sockaddr6(a)),
    };
    let (sa, sa_len): (*const libc::sockaddr, u32) = match &dest {
        Dest::V4(s) => (
            s as *const _ as *const _,
            size_of::<libc::sockaddr_in>() as u32,
        ),
        Dest::V6(s) => (
            s as *const _ as *const _,
            size_of::<libc::sockaddr_in6>() as u32,
        ),
    };
    let mut kept = Vec::new();
    for _ in 0..c.count {
        let flags = if c.hold.is_some() {
            libc::SOCK_NONBLOCK
        } else {
            0
        };
        let fd = match addr {
            SocketAddr::V4(_) => tcp_socket(flags)?,
            SocketAddr::V6(_) => net::socket6(libc::SOCK_STREAM | flags).context("socket")?,
        };
        if let Some(n) = c.syncnt {
            setsockopt(&fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, n)?;
        }
        if let Some(local) = c.bind {
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1i32)?;
            let la = sockaddr(local);
            // SAFETY: `la` is a sockaddr_in alive for the call, its size passed with
            // it.
            if unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &la as *const _ as *const _,
                    size_of::<libc::sockaddr_in>() as u32,
                )
            } != 0
            {
                bail!("bind {local}: {}", std::io::Error::last_os_error());
            }
        }
        // SAFETY: `sa` points into `dest`, alive for the call, with its size in
        // `sa_len`.
        let r = unsafe { libc::connect(fd.as_raw_fd(), sa, sa_len) };
        let e = if r == 0 { 0 } else { errno() };
        say(&format!("errno={e}"));
        if let (0, Some(f)) = (e, &c.after) {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !std::path::Path::new(f).exists() {
                if Instant::now() > deadline {
                    bail!("{f} did not appear within 60 s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if e == 0 && c.send > 0 {
            let data = vec![b'x'; c.send];
            // SAFETY: `data` is readable for its whole length, as passed.
            unsafe {
                libc::send(
                    fd.as_raw_fd(),
                    data.as_ptr() as *const _,
                    data.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
        }
        if let (0, Some(then)) = (e, &c.then) {
            let e = until_failure(&fd, then)?;
            say(&format!("failed errno={e}"));
        }
        if c.hold.is_some() {
            kept.push(fd);
        }
    }
    if let Some(ms) = c.hold {
        std::thread::sleep(Duration::from_millis(ms));
    }
    Ok(())
}

/// Runs on `cpu` only.
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is a bit array; all zeros is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t; CPU_SET checks `cpu` against its size.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is alive for the call, its size passed with it.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        bail!(
            "sched_setaffinity {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Burns CPU for `secs` seconds (a bystander that softirqs interrupt), then exits.
fn spin(secs: u64) -> Result<()> {
    say("spinning");
    let until = Instant::now() + Duration::from_secs(secs);
    let mut x = 0u64;
    while Instant::now() < until {
        for _ in 0..10_000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut opt = |name: &str| -> Option<String> {
        let i = args.iter().position(|a| a == name)?;
        args.remove(i);
        (i < args.len()).then(|| args.remove(i))
    };
    let netns = opt("--netns");
    let cpu: Option<usize> = opt("--cpu").map(|v| v.parse()).transpose()?;
    let backlog = opt("--backlog")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(128);
    let c = Connect {
        syncnt: opt("--syncnt").map(|v| v.parse()).transpose()?,
        count: opt("--count").map(|v| v.parse()).transpose()?.unwrap_or(1),
        hold: opt("--hold").map(|v| v.parse()).transpose()?,
        after: opt("--after"),
        send: opt("--send").map(|v| v.parse()).transpose()?.unwrap_or(0),
        then: opt("--then"),
        bind: opt("--bind")
            .map(|v| v.parse().map_err(|e| anyhow!("--bind {v}: {e}")))
            .transpose()?,
    };
    let mut flag = |name: &str| match args.iter().position(|a| a == name) {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    let fork_accept = flag("--fork-accept");
    let failed_listen = flag("--failed-listen");
    let v6only = flag("--v6only");
    let reuseport = flag("--reuseport");
    let serve = if flag("--linger0") {
        Serve::Linger0
    } else if flag("--close-unread") {
        Serve::CloseUnread
    } else if flag("--close") {
        Serve::Close
    } else {
        Serve::Idle
    };
    if let Some(ns) = &netns {
        join_netns(ns)?;
    }
    if let Some(cpu) = cpu {
        pin_to(cpu)?;
    }
    if let [mode, secs] = args.as_slice() {
        if mode == "spin" {
            return spin(secs.parse()?);
        }
    }
    let [mode, addr] = args.as_slice() else {
        bail!("usage: peer [--netns NAME] listen|connect ADDR:PORT [options]");
    };
    let addr: SocketAddr = addr.parse().map_err(|e| anyhow!("{addr}: {e}"))?;
    match mode.as_str() {
        "listen" => listen(
            addr,
            Listen {
                backlog,
                serve,
                fork_accept,
                failed_listen,
                v6only,
                reuseport,
            },
        ),
        "connect" => connect(addr, c),
        m => bail!("unknown mode {m}"),
    }
}
