//! The target and its addresses: what the system resolver (getaddrinfo, so
//! /etc/hosts and nsswitch) returns, and where each answer came from when that can be
//! told. A hosts-file entry that DNS contradicts is the classic stale record, so the
//! name is also asked of the first nameserver in /etc/resolv.conf directly.
use std::{
    fs,
    net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde::Serialize;

/// `host:port`, `[v6]:port` or `name:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(s: &str) -> Result<Target, String> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| format!("{s:?}: expected [IPv6]:PORT"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(format!("{s:?}: {h:?} is not an IPv6 address"));
            }
            (h, p)
        } else {
            let (h, p) = s
                .rsplit_once(':')
                .ok_or_else(|| format!("{s:?}: expected HOST:PORT"))?;
            if h.contains(':') {
                return Err(format!(
                    "{s:?}: write IPv6 addresses in brackets: [{h}]:{p}"
                ));
            }
            (h, p)
        };
        if host.is_empty() {
            return Err(format!("{s:?}: the host is empty"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| format!("{s:?}: {port:?} is not a port (1-65535)"))?;
        Ok(Target {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    pub addr: IpAddr,
    /// `literal`, `hosts` (the hosts file) or `resolver` (DNS or another nsswitch
    /// source).
    pub source: &'static str,
    /// The hosts file's line, for `hosts`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts_line: Option<usize>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Resolution {
    pub answers: Vec<Answer>,
    /// What DNS itself answered, when asked (the name is in the hosts file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<IpAddr>>,
    pub warnings: Vec<String>,
}

pub const HOSTS: &str = "/etc/hosts";

fn getaddrinfo(t: &Target) -> Result<Vec<IpAddr>> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in (t.host.as_str(), t.port).to_socket_addrs()? {
        if !out.contains(&a.ip()) {
            out.push(a.ip());
        }
    }
    if out.is_empty() {
        bail!("no address");
    }
    Ok(out)
}

/// The hosts file's entries for `name`: (address, 1-based line).
pub fn hosts_entries(text: &str, name: &str) -> Vec<(IpAddr, usize)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(addr) = fields.next().and_then(|a| a.parse::<IpAddr>().ok()) else {
            continue;
        };
        if fields.any(|n| n.eq_ignore_ascii_case(name)) {
            out.push((addr, i + 1));
        }
    }
    out
}

/// getaddrinfo in a thread, so that it can be given up (the resolver's own timeouts
/// can be many seconds; a probe must end within its own).
fn lookup(t: &Target) -> std::sync::mpsc::Receiver<Result<Vec<IpAddr>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = t.clone();
    std::thread::spawn(move || {
        let _ = tx.send(getaddrinfo(&t));
    });
    rx
}

fn wait(
    rx: &std::sync::mpsc::Receiver<Result<Vec<IpAddr>>>,
    deadline: Instant,
) -> Option<Result<Vec<IpAddr>>> {
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .ok()
}

/// Resolves `t` twice at once (answers that differ between lookups are worth a
/// warning: round-robin records, or a record being changed) within `timeout`, and
/// attributes each answer.
pub fn resolve(t: &Target, timeout: Duration) -> Result<Resolution> {
    if let Ok(ip) = t.host.parse::<IpAddr>() {
        return Ok(Resolution {
            answers: vec![Answer {
                addr: ip,
                source: "literal",
                hosts_line: None,
            }],
            ..Default::default()
        });
    }
    let deadline = Instant::now() + timeout;
    let (one, two) = (lookup(t), lookup(t));
    let first = match wait(&one, deadline) {
        Some(r) => r.map_err(|e| anyhow::anyhow!("{}: {e}", t.host))?,
        None => bail!(
            "{}: the resolver gave no answer within {} s",
            t.host,
            timeout.as_secs_f64()
        ),
    };
    let hosts = hosts_entries(&fs::read_to_string(HOSTS).unwrap_or_default(), &t.host);
    // Asked in parallel with the second lookup: a DNS server that does not answer
    // costs its timeout once.
    let dns = (!hosts.is_empty()).then(|| {
        let name = t.host.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(dns_lookup(&name));
        });
        rx
    });
    let second = wait(&two, deadline)
        .and_then(|r| r.ok())
        .unwrap_or_else(|| first.clone());
    let answers: Vec<Answer> = first
        .iter()
        .map(|&addr| match hosts.iter().find(|(h, _)| *h == addr) {
            Some(&(_, line)) => Answer {
                addr,
                source: "hosts",
                hosts_line: Some(line),
            },
            None => Answer {
                addr,
                source: "resolver",
                hosts_line: None,
            },
        })
        .collect();
    // A silent DNS server costs the probe at most this much of its timeout.
    let dns = dns
        .and_then(|rx| rx.recv_timeout(Duration::from_millis(700)).ok())
        .flatten();
    let warnings = warnings(&t.host, &first, &second, &hosts, dns.as_deref());
    Ok(Resolution {
        answers,
        dns,
        warnings,
    })
}

/// What is worth a warning: answers that changed between the two lookups, and a
/// hosts-file entry that DNS contradicts (the stale record).
pub fn warnings(
    name: &str,
    first: &[IpAddr],
    second: &[IpAddr],
    hosts: &[(IpAddr, usize)],
    dns: Option<&[IpAddr]>,
) -> Vec<String> {
    let mut out = Vec::new();
    let (mut a, mut b) = (first.to_vec(), second.to_vec());
    a.sort();
    b.sort();
    if a != b {
        out.push(format!(
            "the answers changed between two lookups: {} then {}",
            list(first),
            list(second)
        ));
    }
    if let Some(d) = dns {
        let from_hosts: Vec<IpAddr> = hosts.iter().map(|(a, _)| *a).collect();
        if !d.is_empty() && !from_hosts.iter().all(|a| d.contains(a)) {
            out.push(format!(
                "{HOSTS} maps {name} to {} but DNS answers {}: the hosts entry may be stale",
                list(&from_hosts),
                list(d)
            ));
        }
    }
    out
}

fn list(a: &[IpAddr]) -> String {
    a.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A/AAAA answers of the first nameserver in /etc/resolv.conf (one query each, 1 s
/// at most); None when no server answered.
fn dns_lookup(name: &str) -> Option<Vec<IpAddr>> {
    let conf = fs::read_to_string("/etc/resolv.conf").ok()?;
    let server: IpAddr = conf.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some("nameserver"))
            .then(|| f.next()?.parse().ok())
            .flatten()
    })?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    sock.connect((server, 53)).ok()?;
    let mut out = Vec::new();
    let mut answered = false;
    for (id, qtype) in [(0x5251u16, 1u16), (0x5252, 28)] {
        let q = dns_query(id, name, qtype)?;
        sock.send(&q).ok()?;
        let mut buf = [0u8; 1500];
        let Ok(n) = sock.recv(&mut buf) else { continue };
        if let Some(a) = dns_answers(&buf[..n], id) {
            answered = true;
            out.extend(a);
        }
    }
    answered.then_some(out)
}

fn dns_query(id: u16, name: &str, qtype: u16) -> Option<Vec<u8>> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    Some(q)
}

/// Skips a (possibly compressed) name at `i`; the offset after it.
fn skip_name(m: &[u8], mut i: usize) -> Option<usize> {
    loop {
        let len = *m.get(i)? as usize;
        if len == 0 {
            return Some(i + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(i + 2);
        }
        i += 1 + len;
    }
}

/// The A/AAAA records of a response to query `id` (None: not a valid answer to it).
pub fn dns_answers(m: &[u8], id: u16) -> Option<Vec<IpAddr>> {
    let u16_at = |i: usize| Some(u16::from_be_bytes([*m.get(i)?, *m.get(i + 1)?]));
    if u16_at(0)? != id || m.get(2)? & 0x80 == 0 {
        return None;
    }
    let (qd, an) = (u16_at(4)?, u16_at(6)?);
    let mut i = 12;
    for _ in 0..qd {
        i = skip_name(m, i)? + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        i = skip_name(m, i)?;
        let (ty, len) = (u16_at(i)?, u16_at(i + 8)? as usize);
        let data = m.get(i + 10..i + 10 + len)?;
        match (ty, len) {
            (1, 4) => out.push(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
            (28, 16) => out.push(IpAddr::from(<[u8; 16]>::try_from(data).ok()?)),
            _ => {}
        }
        i += 10 + len;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_or_say_why_not() {
        let t: Target = "db.example:5432".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("db.example", 5432));
        let t: Target = "[::1]:80".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 80));
        assert_eq!(t.to_string(), "[::1]:80");
        for bad in [
            "nohost", ":80", "h:0", "h:99999", "::1:80", "[zz]:80", "[::1]80",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad} parsed");
        }
        assert!("::1:80".parse::<Target>().unwrap_err().contains("brackets"));
    }

    #[test]
    fn hosts_entries_match_any_alias_and_skip_comments() {
        let text =
            "127.0.0.1 localhost\n# 10.0.0.9 db\n10.0.0.7 db.lan DB # old\n::1 ip6-localhost\n";
        assert_eq!(
            hosts_entries(text, "db"),
            vec![("10.0.0.7".parse().unwrap(), 3)]
        );
        assert!(hosts_entries(text, "web").is_empty());
    }

    #[test]
    fn changed_answers_and_contradicting_dns_are_warned_about() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (old, new) = (ip("10.0.0.7"), ip("10.0.0.8"));
        // Same answers in another order, DNS agreeing: nothing to say.
        let w = warnings(
            "db",
            &[old, new],
            &[new, old],
            &[(old, 3)],
            Some(&[old, new]),
        );
        assert!(w.is_empty(), "{w:?}");
        let w = warnings("db", &[old], &[new], &[], None);
        assert_eq!(
            w,
            vec!["the answers changed between two lookups: 10.0.0.7 then 10.0.0.8"]
        );
        let w = warnings("db", &[old], &[old], &[(old, 3)], Some(&[new]));
        assert_eq!(
            w,
            vec!["/etc/hosts maps db to 10.0.0.7 but DNS answers 10.0.0.8: the hosts entry may be stale"]
        );
        // DNS without an answer for the name contradicts nothing.
        assert!(warnings("db", &[old], &[old], &[(old, 3)], Some(&[])).is_empty());
    }

    #[test]
    fn dns_answers_are_read_from_a_response() {
        let mut m = dns_query(7, "db.lan", 1).unwrap();
        m[2] |= 0x80;
        m[7] = 1; // one answer
        m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 0, 0, 8]);
        assert_eq!(dns_answers(&m, 7), Some(vec!["10.0.0.8".parse().unwrap()]));
        assert_eq!(dns_answers(&m, 8), None);
    }
}
