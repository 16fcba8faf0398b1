//! `--metrics ADDR`: a small HTTP endpoint on its own thread, serving `/metrics`
//! (OpenMetrics text when the scraper accepts it, else Prometheus text 0.0.4),
//! `/healthz` (200 while the live loop runs) and `/readyz` (200 once the programs are
//! attached and the sockets already there read). It reads the registry the metrics
//! sink counts into; the loop tells it its state through atomics.
//!
//! Bounded: request heads of at most 8 KiB read within 5 s, at most 4 requests at
//! once (more are closed unanswered), GET and HEAD only, no keep-alive. The thread
//! gives up every capability first: it parses what anyone on the network sends.
use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, Result};

use crate::{
    kernel::{info::KernelInfo, probes::Probes},
    sink::{metrics::Metrics, MetricsSink},
};

/// Where `--metrics` alone listens: loopback only, the scraper on the same node.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9977";
const MAX_HEAD: usize = 8 * 1024;
const MAX_ACTIVE: usize = 4;
const REQUEST_TIME: Duration = Duration::from_secs(5);
/// The loop wakes at least every second; silent this long, it is stuck.
const STALLED: Duration = Duration::from_secs(30);
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug)]
pub struct MetricsConfig {
    pub addr: SocketAddr,
    /// Ports with series of their own; the rest are `other`.
    pub top_ports: usize,
    /// A failure series not counted for this long is removed.
    pub expiry: Duration,
}

/// What the loop tells the endpoint.
struct State {
    since: Instant,
    ready: AtomicBool,
    stopped: AtomicBool,
    /// Milliseconds after `since` of the loop's last step (0: not started).
    beat_ms: AtomicU64,
}

impl State {
    fn healthy(&self) -> bool {
        if self.stopped.load(Ordering::Relaxed) {
            return false;
        }
        let beat = self.beat_ms.load(Ordering::Relaxed);
        // Before the loop's first step (attaching, the first read of the sockets)
        // alive; stuck once it stops stepping.
        beat == 0 || self.ms() <= beat + STALLED.as_millis() as u64
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

pub struct Endpoint {
    metrics: Metrics,
    state: Arc<State>,
    cfg: MetricsConfig,
    /// The bound address (its port when 0 was asked for).
    pub addr: SocketAddr,
}

impl Endpoint {
    /// Binds `cfg.addr` (an error names the address and why) and serves it from a
    /// thread of its own.
    pub fn start(cfg: &MetricsConfig) -> Result<Endpoint> {
        let listener = TcpListener::bind(cfg.addr).map_err(|e| {
            let why = match e.kind() {
                io::ErrorKind::AddrInUse => "address in use".to_string(),
                io::ErrorKind::AddrNotAvailable => "no such address on this host".to_string(),
                io::ErrorKind::PermissionDenied => {
                    "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".to_string()
                }
                _ => e.to_string(),
            };
            anyhow!("--metrics {}: {why}", cfg.addr)
        })?;
        let addr = listener.local_addr()?;
        let metrics = Metrics::new();
        let state = Arc::new(State {
            since: Instant::now(),
            ready: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            beat_ms: AtomicU64::new(0),
        });
        let (m, s) = (metrics.clone(), state.clone());
        std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(listener, m, s))
            .map_err(|e| anyhow!("starting the metrics endpoint's thread: {e}"))?;
        log::info!("metrics on http://{addr}/metrics");
        Ok(Endpoint {
            metrics,
            state,
            cfg: cfg.clone(),
            addr,
        })
    }

    /// The sink that counts into this endpoint's registry.
    pub fn sink(&self) -> MetricsSink {
        MetricsSink::new(&self.metrics, self.cfg.top_ports, self.cfg.expiry)
    }

    /// The hooks' states and the ring's size, once attached.
    pub fn attached(&self, probes: &Probes, info: &KernelInfo, ring_bytes: u32) {
        self.metrics.set_hooks(probes.hook_states(info));
        self.metrics.set_ring(0, u64::from(ring_bytes));
    }

    /// Start-up done: `/readyz` answers 200 from now on.
    pub fn ready(&self) {
        self.state.ready.store(true, Ordering::Relaxed);
    }

    /// One step of the loop, with the ring's fill when known.
    pub fn beat(&self, ring_used: Option<u64>, ring_bytes: u32) {
        self.state
            .beat_ms
            .store(self.state.ms().max(1), Ordering::Relaxed);
        if let Some(used) = ring_used {
            self.metrics.set_ring(used, u64::from(ring_bytes));
        }
    }

    /// The loop ended: neither alive nor ready.
    pub fn stopping(&self) {
        self.state.ready.store(false, Ordering::Relaxed);
        self.state.stopped.store(true, Ordering::Relaxed);
    }
}

fn serve(listener: TcpListener, metrics: Metrics, state: Arc<State>) {
    if let Err(e) = crate::kernel::privileges::drop_all_in_this_thread() {
        log::warn!("metrics endpoint: dropping its capabilities: {e:#}; not serving");
        return;
    }
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait rather than spin.
                log::debug!("metrics endpoint: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::AcqRel) >= MAX_ACTIVE {
            active.fetch_sub(1, Ordering::AcqRel);
            continue; // closed unanswered
        }
        let (m, s, a) = (metrics.clone(), state.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("metrics-request".into())
            .spawn(move || {
                handle(stream, &m, &s);
                a.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::AcqRel);
            log::debug!("metrics endpoint: starting a request's thread: {e}");
        }
    }
}

fn handle(mut stream: TcpStream, metrics: &Metrics, state: &State) {
    let started = Instant::now();
    let _ = stream.set_read_timeout(Some(REQUEST_TIME));
    let _ = stream.set_write_timeout(Some(REQUEST_TIME));
    let reply = match read_head(&mut stream, started) {
        Ok(head) => respond(&head, metrics, state),
        Err(status) => Reply::text(status, status_text(status)),
    };
    if reply.write(&mut stream).is_ok() {
        // What the client sent past the head is read (briefly, bounded) before the
        // close: closing with unread data would reset the connection.
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
        let _ = io::copy(&mut (&mut stream).take(64 * 1024), &mut io::sink());
    }
}

/// The request's head (up to the blank line), or the status that refuses it.
fn read_head(stream: &mut impl Read, started: Instant) -> Result<Vec<u8>, u16> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        // Too long: the head, or what came so far without its end.
        let end = head.windows(4).position(|w| w == b"\r\n\r\n");
        if end.unwrap_or(head.len()) > MAX_HEAD {
            return Err(431);
        }
        if let Some(end) = end {
            head.truncate(end);
            return Ok(head);
        }
        if started.elapsed() > REQUEST_TIME {
            return Err(408);
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err(400),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(408)
            }
            Err(_) => return Err(400),
        }
    }
}

struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
    head_only: bool,
}

impl Reply {
    fn text(status: u16, body: &str) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            head_only: false,
        }
    }

    fn write(&self, out: &mut impl Write) -> io::Result<()> {
        let mut msg = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            status_text(self.status),
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            msg.push_str("Allow: GET, HEAD\r\n");
        }
        msg.push_str("\r\n");
        out.write_all(msg.as_bytes())?;
        if !self.head_only {
            out.write_all(self.body.as_bytes())?;
        }
        out.flush()
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

fn respond(head: &[u8], metrics: &Metrics, state: &State) -> Reply {
    let Ok(head) = std::str::from_utf8(head) else {
        return Reply::text(400, "Bad Request");
    };
    let mut lines = head.split("\r\n");
    let mut parts = lines.next().unwrap_or_default().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Reply::text(400, "Bad Request");
    };
    if !version.starts_with("HTTP/") || !target.starts_with('/') {
        return Reply::text(400, "Bad Request");
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Reply::text(505, "HTTP Version Not Supported");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Reply::text(405, "Method Not Allowed"),
    };
    let openmetrics = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    });
    let path = target.split('?').next().unwrap_or_default();
    let mut reply = match path {
        "/metrics" => Reply {
            status: 200,
            content_type: if openmetrics {
                OPENMETRICS
            } else {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            },
            body: metrics.encode(openmetrics),
            head_only: false,
        },
        "/healthz" if state.healthy() => Reply::text(200, "ok"),
        "/healthz" => Reply::text(503, "the agent's loop is not running"),
        "/readyz" if state.ready.load(Ordering::Relaxed) => Reply::text(200, "ready"),
        "/readyz" => Reply::text(
            503,
            "starting: programs not attached or sockets not read yet",
        ),
        _ => Reply::text(404, "Not Found (try /metrics, /healthz, /readyz)"),
    };
    reply.head_only = head_only;
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(ready: bool) -> State {
        State {
            since: Instant::now(),
            ready: AtomicBool::new(ready),
            stopped: AtomicBool::new(false),
            beat_ms: AtomicU64::new(0),
        }
    }

    fn status(req: &str, ready: bool) -> (u16, Reply) {
        let m = Metrics::new();
        let r = match read_head(&mut req.as_bytes(), Instant::now()) {
            Ok(h) => respond(&h, &m, &state(ready)),
            Err(s) => Reply::text(s, ""),
        };
        (r.status, r)
    }

    #[test]
    fn routes_and_negotiation() {
        let (s, r) = status("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", false);
        assert_eq!(
            (s, r.content_type),
            (200, "text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(r.body.contains("rstrace_build_info"));
        let (s, r) = status(
            "GET /metrics HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,*/*;q=0.1\r\n\r\n",
            false,
        );
        assert_eq!((s, r.content_type), (200, OPENMETRICS));
        assert!(r.body.ends_with("# EOF\n"));
        assert_eq!(status("GET /readyz HTTP/1.1\r\n\r\n", false).0, 503);
        assert_eq!(status("GET /readyz HTTP/1.1\r\n\r\n", true).0, 200);
        assert_eq!(status("GET /healthz HTTP/1.0\r\n\r\n", false).0, 200);
        assert_eq!(status("GET /nope HTTP/1.1\r\n\r\n", true).0, 404);
        let (s, r) = status("HEAD /metrics HTTP/1.1\r\n\r\n", true);
        assert!(s == 200 && r.head_only);
    }

    #[test]
    fn garbage_is_refused_not_fatal() {
        for (req, want) in [
            ("\r\n\r\n", 400),
            ("GET\r\n\r\n", 400),
            ("GET /metrics\r\n\r\n", 400),
            ("GET /metrics HTTP/1.1 extra\r\n\r\n", 400),
            ("GET metrics HTTP/1.1\r\n\r\n", 400),
            ("GET /metrics FTP/1.0\r\n\r\n", 400),
            ("GET /metrics HTTP/2.0\r\n\r\n", 505),
            ("POST /metrics HTTP/1.1\r\n\r\n", 405),
            ("GET /metrics HTTP/1.1\r\n", 400), // ends before the blank line
            ("\u{0}\u{1}\u{2}\r\n\r\n", 400),
        ] {
            assert_eq!(status(req, true).0, want, "{req:?}");
        }
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_HEAD + 10));
        assert_eq!(status(&long, true).0, 431);
        let endless = format!("GET /{}", "a".repeat(MAX_HEAD + 10));
        assert_eq!(
            status(&endless, true).0,
            431,
            "no blank line within the bound"
        );
        let bad_utf8 = b"GET /\xff HTTP/1.1\r\n\r\n";
        let m = Metrics::new();
        let h = read_head(&mut &bad_utf8[..], Instant::now()).unwrap();
        assert_eq!(respond(&h, &m, &state(true)).status, 400);
    }

    #[test]
    fn health_fails_once_the_loop_stalls_or_stops() {
        let s = state(true);
        assert!(s.healthy(), "before the first step");
        s.beat_ms.store(1, Ordering::Relaxed);
        assert!(s.healthy());
        let stalled = State {
            since: Instant::now() - STALLED - Duration::from_secs(2),
            ..state(true)
        };
        stalled.beat_ms.store(1, Ordering::Relaxed);
        assert!(!stalled.healthy());
        s.stopped.store(true, Ordering::Relaxed);
        assert!(!s.healthy());
    }
}
