//! A test peer: a TCP client or server run inside a test's network namespace, so that
//! each end of a scenario is its own process with its own pid.
//!
//!   peer [--netns NAME] listen ADDR:PORT [--backlog N] [--linger0]
//!   peer [--netns NAME] connect ADDR:PORT [--syncnt N] [--count N] [--hold MS]
//!
//! `listen` prints `ready` once listening and then serves until killed; with
//! `--linger0` it accepts connections and closes each with SO_LINGER 0 (an RST).
//! `connect` prints `errno=N` per attempt (0 when connected); with `--hold` the
//! connects are non-blocking and the sockets are kept open for MS milliseconds.
use std::{
    io::Write,
    mem::size_of,
    net::SocketAddrV4,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn join_netns(name: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{name}"))
        .with_context(|| format!("opening /run/netns/{name}"))?;
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(a.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

fn tcp_socket(flags: i32) -> Result<OwnedFd> {
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | flags, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn setsockopt<T>(fd: &OwnedFd, level: i32, opt: i32, v: T) -> Result<()> {
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

fn listen(addr: SocketAddrV4, backlog: i32, linger0: bool) -> Result<()> {
    let fd = tcp_socket(0)?;
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1i32)?;
    let sa = sockaddr(addr);
    if unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const _,
            size_of::<libc::sockaddr_in>() as u32,
        )
    } != 0
    {
        bail!("bind {addr}: {}", std::io::Error::last_os_error());
    }
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } != 0 {
        bail!("listen: {}", std::io::Error::last_os_error());
    }
    say("ready");
    loop {
        if !linger0 {
            std::thread::sleep(Duration::from_secs(3600));
            continue;
        }
        let c = unsafe { libc::accept(fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
        if c < 0 {
            bail!("accept: {}", std::io::Error::last_os_error());
        }
        let c = unsafe { OwnedFd::from_raw_fd(c) };
        setsockopt(
            &c,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            libc::linger {
                l_onoff: 1,
                l_linger: 0,
            },
        )?;
        drop(c);
        say("closed");
    }
}

fn connect(addr: SocketAddrV4, syncnt: Option<i32>, count: u32, hold: Option<u64>) -> Result<()> {
    let sa = sockaddr(addr);
    let mut kept = Vec::new();
    for _ in 0..count {
        let fd = tcp_socket(if hold.is_some() {
            libc::SOCK_NONBLOCK
        } else {
            0
        })?;
        if let Some(n) = syncnt {
            setsockopt(&fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, n)?;
        }
        let r = unsafe {
            libc::connect(
                fd.as_raw_fd(),
                &sa as *const _ as *const _,
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        let e = if r == 0 { 0 } else { errno() };
        say(&format!("errno={e}"));
        if hold.is_some() {
            kept.push(fd);
        }
    }
    if let Some(ms) = hold {
        std::thread::sleep(Duration::from_millis(ms));
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
    let backlog = opt("--backlog")
        .map(|v| v.parse())
        .transpose()?
        .unwrap_or(128);
    let syncnt = opt("--syncnt").map(|v| v.parse()).transpose()?;
    let count = opt("--count").map(|v| v.parse()).transpose()?.unwrap_or(1);
    let hold = opt("--hold").map(|v| v.parse()).transpose()?;
    let linger0 = if let Some(i) = args.iter().position(|a| a == "--linger0") {
        args.remove(i);
        true
    } else {
        false
    };
    if let Some(ns) = &netns {
        join_netns(ns)?;
    }
    let [mode, addr] = args.as_slice() else {
        bail!("usage: peer [--netns NAME] listen|connect ADDR:PORT [options]");
    };
    let addr: SocketAddrV4 = addr.parse().map_err(|e| anyhow!("{addr}: {e}"))?;
    match mode.as_str() {
        "listen" => listen(addr, backlog, linger0),
        "connect" => connect(addr, syncnt, count, hold),
        m => bail!("unknown mode {m}"),
    }
}
