//! The probe's own packets: one connect per address, bounded by a deadline and a
//! capped SYN count, and TTL-limited SYNs to the same port (tcptraceroute-style) whose
//! ICMP answers are read from the socket's error queue (IP_RECVERR), which names the
//! router that sent each one.
use std::{
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use serde::Serialize;

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn to_storage(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain integers; all zeros is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in, sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write(&mut ss as *mut _ as *mut libc::sockaddr_in6, sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Reads an IPv4/IPv6 socket address at `p`, aligned or not (None for other
/// families).
///
/// # Safety
/// `p` points to at least a sockaddr_in6's worth of readable bytes.
unsafe fn from_sockaddr(p: *const u8) -> Option<SocketAddr> {
    // SAFETY: the caller gives more readable bytes than a sockaddr's.
    let family = unsafe { std::ptr::read_unaligned(p as *const libc::sockaddr) }.sa_family;
    match family as i32 {
        libc::AF_INET => {
            // SAFETY: the caller gives more readable bytes than a sockaddr_in's.
            let sin = unsafe { std::ptr::read_unaligned(p as *const libc::sockaddr_in) };
            Some(SocketAddr::new(
                IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the caller gives a sockaddr_in6's worth of readable bytes.
            let sin6 = unsafe { std::ptr::read_unaligned(p as *const libc::sockaddr_in6) };
            Some(SocketAddr::new(
                IpAddr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => None,
    }
}

fn setsockopt(fd: &OwnedFd, level: i32, opt: i32, v: i32) -> io::Result<()> {
    // SAFETY: `fd` is open; the option value is an i32 alive for the call, its size
    // passed with it.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            &v as *const i32 as *const _,
            size_of::<i32>() as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A non-blocking TCP socket for `dst`'s family, bound to an ephemeral port (bound
/// explicitly so that its port is known even after a failed connect releases it),
/// with `ttl` and IP_RECVERR set. Returns the socket and its local port.
fn tcp_socket(
    dst: SocketAddr,
    ttl: Option<u32>,
    syncnt: i32,
    user_timeout_ms: i32,
) -> io::Result<(OwnedFd, u16)> {
    let family = if dst.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: no pointers; the descriptor returned is taken over below.
    let raw = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    setsockopt(&fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, syncnt)?;
    setsockopt(
        &fd,
        libc::IPPROTO_TCP,
        libc::TCP_USER_TIMEOUT,
        user_timeout_ms,
    )?;
    if dst.is_ipv4() {
        setsockopt(&fd, libc::IPPROTO_IP, libc::IP_RECVERR, 1)?;
        if let Some(t) = ttl {
            setsockopt(&fd, libc::IPPROTO_IP, libc::IP_TTL, t as i32)?;
        }
    } else {
        setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1)?;
        if let Some(t) = ttl {
            setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, t as i32)?;
        }
    }
    let any: SocketAddr = if dst.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let (ss, len) = to_storage(any);
    // SAFETY: `ss` holds a socket address of `len` bytes, alive for the call.
    if unsafe { libc::bind(fd.as_raw_fd(), &ss as *const _ as *const _, len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_storage is plain integers; all zeros is a valid value.
    let mut got: libc::sockaddr_storage = unsafe { zeroed() };
    let mut glen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `got` is writable for the `glen` bytes the kernel is told of.
    if unsafe { libc::getsockname(fd.as_raw_fd(), &mut got as *mut _ as *mut _, &mut glen) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a sockaddr_storage is larger than a sockaddr_in6.
    let port = unsafe { from_sockaddr(&got as *const _ as *const u8) }.map_or(0, |a| a.port());
    Ok((fd, port))
}

/// An ICMP error the kernel queued on a socket, and who sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Icmp {
    /// The router or host that sent the ICMP error.
    pub from: Option<IpAddr>,
    #[serde(rename = "type")]
    pub icmp_type: u8,
    pub code: u8,
    /// What it means, e.g. "time exceeded", "host unreachable".
    pub name: &'static str,
}

pub fn icmp_name(v6: bool, ty: u8, code: u8) -> &'static str {
    if !v6 {
        match (ty, code) {
            (11, _) => "time exceeded",
            (3, 0) => "network unreachable",
            (3, 1) => "host unreachable",
            (3, 2) => "protocol unreachable",
            (3, 3) => "port unreachable",
            (3, 4) => "fragmentation needed",
            (3, 9 | 10 | 13) => "administratively prohibited",
            (3, _) => "destination unreachable",
            _ => "ICMP error",
        }
    } else {
        match (ty, code) {
            (3, _) => "time exceeded",
            (1, 0) => "no route to destination",
            (1, 1) => "administratively prohibited",
            (1, 3) => "address unreachable",
            (1, 4) => "port unreachable",
            (1, 5 | 6) => "administratively prohibited",
            (1, _) => "destination unreachable",
            (2, _) => "packet too big",
            _ => "ICMPv6 error",
        }
    }
}

/// struct sock_extended_err (linux/errqueue.h).
#[repr(C)]
#[derive(Clone, Copy)]
struct SockExtendedErr {
    ee_errno: u32,
    ee_origin: u8,
    ee_type: u8,
    ee_code: u8,
    ee_pad: u8,
    ee_info: u32,
    ee_data: u32,
}
const SO_EE_ORIGIN_ICMP: u8 = 2;
const SO_EE_ORIGIN_ICMP6: u8 = 3;

/// The ICMP errors queued on `fd` (MSG_ERRQUEUE), oldest first.
fn read_errqueue(fd: &OwnedFd) -> Vec<Icmp> {
    let mut out = Vec::new();
    for _ in 0..16 {
        let mut data = [0u8; 256];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr() as *mut _,
            iov_len: data.len(),
        };
        let mut control = [0u64; 64];
        // SAFETY: msghdr is integers and raw pointers; all zeros (null) is valid.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut _;
        msg.msg_controllen = size_of::<[u64; 64]>();
        // SAFETY: `msg` points at `iov` and `control`, both alive and writable for the
        // lengths given.
        let n = unsafe {
            libc::recvmsg(
                fd.as_raw_fd(),
                &mut msg,
                libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            break;
        }
        // Every read below stays inside `control` (zero-initialized, so each byte is
        // a valid integer): the cmsg macros return only headers within the
        // msg_controllen bytes recvmsg filled, and the bound checks the rest.
        let end = control.as_ptr() as usize + size_of::<[u64; 64]>();
        // SAFETY: `msg` describes `control` as recvmsg left it.
        let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !c.is_null() {
            // SAFETY: a header within `control` (above).
            let hdr = unsafe { std::ptr::read_unaligned(c) };
            if (hdr.cmsg_level == libc::SOL_IP && hdr.cmsg_type == libc::IP_RECVERR)
                || (hdr.cmsg_level == libc::SOL_IPV6 && hdr.cmsg_type == libc::IPV6_RECVERR)
            {
                // SAFETY: `c` is a header within `control`.
                let p = unsafe { libc::CMSG_DATA(c) };
                // The error, then SO_EE_OFFENDER: the sender's address.
                let off = size_of::<SockExtendedErr>();
                if p as usize + off + size_of::<libc::sockaddr_in6>() > end {
                    break;
                }
                // SAFETY: within `control` (bound checked above).
                let ee = unsafe { std::ptr::read_unaligned(p as *const SockExtendedErr) };
                if ee.ee_origin == SO_EE_ORIGIN_ICMP || ee.ee_origin == SO_EE_ORIGIN_ICMP6 {
                    // SAFETY: within `control` (bound checked above).
                    let offender = unsafe { p.add(off) };
                    // SAFETY: a sockaddr_in6's worth of bytes within `control` (bound
                    // checked above).
                    let from = unsafe { from_sockaddr(offender) }.map(|a| a.ip());
                    let v6 = ee.ee_origin == SO_EE_ORIGIN_ICMP6;
                    out.push(Icmp {
                        from,
                        icmp_type: ee.ee_type,
                        code: ee.ee_code,
                        name: icmp_name(v6, ee.ee_type, ee.ee_code),
                    });
                }
            }
            // SAFETY: `c` is a header of `msg`'s control buffer.
            c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
        }
    }
    out
}

fn so_error(fd: &OwnedFd) -> i32 {
    let mut v: i32 = 0;
    let mut len = size_of::<i32>() as libc::socklen_t;
    // SAFETY: `v` is writable for the `len` bytes the kernel is told of.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut v as *mut i32 as *mut _,
            &mut len,
        )
    };
    v
}

/// Starts a non-blocking connect: Ok(None) in progress, Ok(Some(0)) connected at once,
/// Ok(Some(errno)) failed at once.
fn start_connect(fd: &OwnedFd, dst: SocketAddr) -> Option<i32> {
    let (ss, len) = to_storage(dst);
    // SAFETY: `ss` holds a socket address of `len` bytes, alive for the call.
    if unsafe { libc::connect(fd.as_raw_fd(), &ss as *const _ as *const _, len) } == 0 {
        return Some(0);
    }
    match errno() {
        libc::EINPROGRESS => None,
        e => Some(e),
    }
}

/// SYN retransmits to ask for so that the kernel gives up within `timeout` (the
/// first retransmit after 1 s, then doubling): at least 1.
pub fn syn_count(timeout: Duration) -> i32 {
    let secs = timeout.as_secs_f64();
    let mut n = 1;
    while n < 6 && f64::from((1u32 << (n + 2)) - 1) <= secs {
        n += 1;
    }
    n
}

#[derive(Debug)]
pub struct Attempt {
    pub dst: SocketAddr,
    /// Local port the connect used.
    pub src_port: u16,
    /// 0: connected; else the errno (ETIMEDOUT also when the deadline passed).
    pub errno: i32,
    pub elapsed: Duration,
    /// ICMP errors the connect got from the path.
    pub icmp: Vec<Icmp>,
    /// True when connect() failed at once (routing or policy: no packet left).
    pub immediate: bool,
}

/// A connect to `dst`, given up by the kernel (capped SYN retransmits, user
/// timeout) or at `timeout`. `on_wait` runs every ~20 ms while it waits (the caller
/// drains the ring buffer, starts the path trace).
pub fn connect(
    dst: SocketAddr,
    timeout: Duration,
    mut on_wait: impl FnMut(Duration),
) -> io::Result<Attempt> {
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let (fd, src_port) = tcp_socket(dst, None, syn_count(timeout), ms)?;
    let start = Instant::now();
    let done = |errno: i32, immediate: bool, fd: &OwnedFd| Attempt {
        dst,
        src_port,
        errno,
        elapsed: start.elapsed(),
        icmp: read_errqueue(fd),
        immediate,
    };
    if let Some(e) = start_connect(&fd, dst) {
        return Ok(done(e, e != 0, &fd));
    }
    // The kernel gives up by itself within the timeout; the deadline is the backstop.
    let deadline = start + timeout + Duration::from_millis(300);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(done(libc::ETIMEDOUT, false, &fd));
        }
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let wait = left.min(Duration::from_millis(20)).as_millis() as i32;
        // SAFETY: `p` is one writable pollfd, as the count says.
        let r = unsafe { libc::poll(&mut p, 1, wait.max(1)) };
        if r < 0 && errno() != libc::EINTR {
            return Err(io::Error::last_os_error());
        }
        if r > 0 && p.revents & libc::POLLOUT != 0 {
            return Ok(done(so_error(&fd), false, &fd));
        }
        if r > 0 && p.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            // An ICMP error queued without ending the connect (a soft error) also
            // raises POLLERR: only a set SO_ERROR or a hang-up ends it.
            let e = so_error(&fd);
            if e != 0 {
                return Ok(done(e, false, &fd));
            }
        }
        on_wait(start.elapsed());
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Hop {
    pub ttl: u32,
    /// Who answered at this TTL, when someone did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<IpAddr>,
    /// `time exceeded`, an ICMP unreachable's name, `SYN-ACK` or `RST` (the target),
    /// or `no answer`.
    pub answer: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Path {
    pub hops: Vec<Hop>,
    /// The target itself answered (at the last hop listed).
    pub reached: bool,
    /// The last hop that answered, when the target was not reached: the trail
    /// stops after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_answer: Option<Hop>,
}

/// TTL-limited SYNs to `dst`, all hops at once (the whole trace costs `budget`, not
/// a multiple of it). A hop whose router answers nothing shows as `no answer`.
pub fn trace(dst: SocketAddr, max_hops: u32, budget: Duration) -> io::Result<Path> {
    let mut socks = Vec::new();
    for ttl in 1..=max_hops {
        let (fd, _) = tcp_socket(dst, Some(ttl), 1, budget.as_millis() as i32 + 1000)?;
        let immediate = start_connect(&fd, dst);
        socks.push((ttl, fd, immediate, None::<Hop>));
    }
    let start = Instant::now();
    loop {
        for (ttl, fd, immediate, hop) in socks.iter_mut() {
            if hop.is_some() {
                continue;
            }
            if let Some(icmp) = read_errqueue(fd).into_iter().next() {
                *hop = Some(Hop {
                    ttl: *ttl,
                    addr: icmp.from,
                    answer: icmp.name.to_string(),
                });
                continue;
            }
            let e = match immediate {
                Some(e) => Some(*e),
                None => {
                    let mut p = libc::pollfd {
                        fd: fd.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: `p` is one writable pollfd, as the count says.
                    let r = unsafe { libc::poll(&mut p, 1, 0) };
                    (r > 0 && p.revents & (libc::POLLOUT | libc::POLLHUP) != 0)
                        .then(|| so_error(fd))
                }
            };
            match e {
                Some(0) => {
                    *hop = Some(Hop {
                        ttl: *ttl,
                        addr: Some(dst.ip()),
                        answer: "SYN-ACK".into(),
                    })
                }
                Some(libc::ECONNREFUSED) => {
                    *hop = Some(Hop {
                        ttl: *ttl,
                        addr: Some(dst.ip()),
                        answer: "RST".into(),
                    })
                }
                _ => {}
            }
        }
        let reached_at = socks
            .iter()
            .filter_map(|(_, _, _, h)| h.as_ref())
            .filter(|h| h.answer == "SYN-ACK" || h.answer == "RST")
            .map(|h| h.ttl)
            .min();
        // Done once every hop up to the target answered, or the budget is spent.
        let complete = reached_at.is_some_and(|r| {
            socks
                .iter()
                .take(r as usize)
                .all(|(_, _, _, h)| h.is_some())
        });
        if complete || start.elapsed() >= budget {
            let mut hops = Vec::new();
            for (ttl, _, _, h) in socks {
                if reached_at.is_some_and(|r| ttl > r) {
                    break;
                }
                hops.push(h.unwrap_or(Hop {
                    ttl,
                    addr: None,
                    answer: "no answer".into(),
                }));
            }
            // Trailing silent hops say only where the trail stops: keep the first.
            let last = hops.iter().rposition(|h| h.addr.is_some());
            let keep = last.map_or(1, |l| l + 2).min(hops.len());
            hops.truncate(keep);
            let reached = reached_at.is_some();
            let last_answer = if reached {
                None
            } else {
                last.map(|l| hops[l].clone())
            };
            return Ok(Path {
                hops,
                reached,
                last_answer,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_count_fits_the_timeout() {
        // 1 retransmit: given up after 1 + 2 = 3 s; 2: after 7 s.
        assert_eq!(syn_count(Duration::from_secs(1)), 1);
        assert_eq!(syn_count(Duration::from_secs(3)), 1);
        assert_eq!(syn_count(Duration::from_secs(7)), 2);
        assert_eq!(syn_count(Duration::from_secs(20)), 3);
    }

    #[test]
    fn icmp_errors_are_named() {
        assert_eq!(icmp_name(false, 11, 0), "time exceeded");
        assert_eq!(icmp_name(false, 3, 1), "host unreachable");
        assert_eq!(icmp_name(false, 3, 13), "administratively prohibited");
        assert_eq!(icmp_name(true, 1, 4), "port unreachable");
    }

    #[test]
    fn a_refused_loopback_connect_is_reported_with_its_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dst = l.local_addr().unwrap();
        drop(l);
        let a = connect(dst, Duration::from_secs(2), |_| {}).unwrap();
        assert_eq!(a.errno, libc::ECONNREFUSED);
        assert_ne!(a.src_port, 0);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = connect(l.local_addr().unwrap(), Duration::from_secs(2), |_| {}).unwrap();
        assert_eq!(a.errno, 0);
    }
}
