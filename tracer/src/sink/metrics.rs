//! Prometheus metrics: failures by cause, port, side and workload; evidence records by
//! kind; overflow drops by listener port; lost events by hook and reason. `Metrics`
//! holds the registry (shared with the HTTP endpoint, which only reads it) and the
//! agent's own gauges (hooks, ring buffer, build, start time), which the live loop
//! sets; `MetricsSink` counts what the pipeline gives it.
//!
//! Labels stay bounded: ports past the `top_ports` most failing ones read `other`,
//! addresses and client ports are never labels, and a failure series not counted for
//! `expiry` is removed (the workloads of a node come and go).
use std::{
    collections::HashMap,
    io,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Registry, Unit},
};

use crate::{
    base::{
        record::{Kind, Proc, Record},
        workload::Workload,
    },
    explain::Explanation,
    sink::{Sink, Take},
};

/// The port label of failures on ports outside the top N.
pub const OTHER_PORT: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub cause: &'static str,
    /// The service's port (the listener's, or the remote one a client connected to),
    /// or `other`; empty when the failure names no port.
    pub port: String,
    /// `client` or `server`: the end whose process failed.
    pub side: &'static str,
    pub unit: String,
    pub container: String,
    pub pod_namespace: String,
    pub pod: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverflowLabels {
    queue: &'static str,
    port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LossLabels {
    hook: &'static str,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: &'static str,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The registry and every metric in it. Metrics are shared handles (atomics behind
/// `Arc`s): the sink counts in the pipeline's thread while the endpoint encodes.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    failures: Family<FailureLabels, Counter>,
    events: Family<KindLabels, Counter>,
    overflow_drops: Family<OverflowLabels, Counter>,
    lost: Family<LossLabels, Counter>,
    hooks: Family<HookLabels, Gauge>,
    ring_used: Gauge,
    ring_size: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("rstrace");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            failures: Family::default(),
            events: Family::default(),
            overflow_drops: Family::default(),
            lost: Family::default(),
            hooks: Family::default(),
            ring_used: Gauge::default(),
            ring_size: Gauge::default(),
        };
        r.register(
            "failures",
            "Failed TCP connections explained, by cause id (README: Causes), service port \
             (top N, the rest other), the side whose process failed and its workload",
            m.failures.clone(),
        );
        r.register(
            "events",
            "Evidence records read from the kernel and the backlog counters, by kind",
            m.events.clone(),
        );
        r.register(
            "overflow_drops",
            "Connections dropped because a listener's accept or SYN queue was full, by \
             queue and listener port",
            m.overflow_drops.clone(),
        );
        r.register(
            "lost_events",
            "Events the kernel programs could not hand over, by hook and reason \
             (RINGBUF_FULL: no room in the ring buffer; RECURSION: the kernel skipped \
             the program)",
            m.lost.clone(),
        );
        r.register(
            "hook_state",
            "1 for each kernel hook's state: attached, degraded (attached, some fields \
             missing on this kernel) or missing",
            m.hooks.clone(),
        );
        r.register_with_unit(
            "ring_buffer_used",
            "Bytes written to the ring buffer and not read yet",
            Unit::Bytes,
            m.ring_used.clone(),
        );
        r.register_with_unit(
            "ring_buffer_size",
            "Size of the ring buffer",
            Unit::Bytes,
            m.ring_size.clone(),
        );
        r.register(
            "build",
            "The agent's version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        let start: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
        start.set(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        r.register_with_unit(
            "start_time",
            "When the agent started, in seconds since the Unix epoch",
            Unit::Seconds,
            start,
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    /// The exposition: OpenMetrics text (`openmetrics`), else Prometheus text 0.0.4.
    pub fn encode(&self, openmetrics: bool) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = if openmetrics {
            prometheus_client::encoding::text::encode(&mut out, &self.registry)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        };
        out
    }

    /// Each hook's state (`attached`, `degraded`, `missing`), once attached.
    pub fn set_hooks<'a>(&self, states: impl IntoIterator<Item = (&'static str, &'a str)>) {
        self.hooks.clear();
        for (hook, state) in states {
            let state = match state {
                "attached" => "attached",
                "degraded" => "degraded",
                _ => "missing",
            };
            self.hooks.get_or_create(&HookLabels { hook, state }).set(1);
        }
    }

    /// The ring buffer: bytes waiting to be read, of `size`.
    pub fn set_ring(&self, used: u64, size: u64) {
        self.ring_used.set(i64::try_from(used).unwrap_or(i64::MAX));
        self.ring_size.set(i64::try_from(size).unwrap_or(i64::MAX));
    }
}

/// Which ports get a label of their own: the `n` with the most failures among those
/// seen within the expiry time. A port takes the place of the least counted once it
/// has counted twice as many (so that two ports of equal rates do not trade places,
/// each time making new series).
#[derive(Debug)]
pub struct PortBuckets {
    n: usize,
    /// Failures by port, and when last counted.
    counts: HashMap<u16, (u64, Instant)>,
    top: Vec<u16>,
}

impl PortBuckets {
    pub fn new(n: usize) -> PortBuckets {
        PortBuckets {
            n,
            counts: HashMap::new(),
            top: Vec::new(),
        }
    }

    /// Counts `count` failures on `port`; its label.
    pub fn count(&mut self, port: u16, count: u64, now: Instant) -> String {
        let c = self.counts.entry(port).or_insert((0, now));
        c.0 += count;
        c.1 = now;
        let mine = c.0;
        if self.top.contains(&port) {
            return port.to_string();
        }
        if self.top.len() < self.n {
            self.top.push(port);
            return port.to_string();
        }
        let least = self
            .top
            .iter()
            .enumerate()
            .min_by_key(|(_, p)| self.counts.get(p).map_or(0, |c| c.0));
        match least {
            Some((i, p)) if mine > 2 * self.counts.get(p).map_or(0, |c| c.0) => {
                self.top[i] = port;
                port.to_string()
            }
            _ => OTHER_PORT.to_string(),
        }
    }

    /// Forgets ports not counted since `before`.
    pub fn expire(&mut self, before: Instant) {
        self.counts.retain(|_, c| c.1 >= before);
        let counts = &self.counts;
        self.top.retain(|p| counts.contains_key(p));
    }
}

/// The labels of a workload: unit, container (its name, else its short id), pod
/// namespace and pod (its name, else its uid); empty where unknown.
fn workload_labels(w: Option<&Workload>) -> (String, String, String, String) {
    let Some(w) = w else {
        return Default::default();
    };
    let unit = w.unit.as_deref().unwrap_or_default().to_string();
    let container = w.container.as_ref().map_or(String::new(), |c| {
        c.name
            .as_deref()
            .unwrap_or_else(|| c.short_id())
            .to_string()
    });
    let (ns, pod) = w.pod.as_ref().map_or((String::new(), String::new()), |p| {
        (
            p.namespace.as_deref().unwrap_or_default().to_string(),
            p.name.as_deref().unwrap_or(&p.uid).to_string(),
        )
    });
    (unit, container, ns, pod)
}

/// Counts the pipeline's explanations and records into `Metrics`.
pub struct MetricsSink {
    metrics: Metrics,
    ports: PortBuckets,
    listener_ports: PortBuckets,
    expiry: Duration,
    /// When each failure series was last counted.
    seen: HashMap<FailureLabels, Instant>,
    swept: Instant,
}

impl MetricsSink {
    pub fn new(metrics: &Metrics, top_ports: usize, expiry: Duration) -> MetricsSink {
        MetricsSink {
            metrics: metrics.clone(),
            ports: PortBuckets::new(top_ports),
            listener_ports: PortBuckets::new(top_ports),
            expiry,
            seen: HashMap::new(),
            swept: Instant::now(),
        }
    }

    /// The labels of explanation `e`, its port counted `e.count` times.
    fn labels(&mut self, e: &Explanation, now: Instant) -> FailureLabels {
        let port = e
            .dst
            .map_or(String::new(), |d| self.ports.count(d.port(), e.count, now));
        let p: Option<&Proc> = e.process.as_ref().or(e.culprit.as_ref());
        let (unit, container, pod_namespace, pod) =
            workload_labels(p.and_then(|p| p.workload.as_deref()));
        FailureLabels {
            cause: e.cause,
            port,
            side: e.side.name(),
            unit,
            container,
            pod_namespace,
            pod,
        }
    }

    fn count_explanation(&mut self, e: &Explanation, now: Instant) {
        let labels = self.labels(e, now);
        self.metrics.failures.get_or_create(&labels).inc_by(e.count);
        self.seen.insert(labels, now);
    }

    /// Removes the failure series not counted within the expiry time before `now`.
    pub fn expire(&mut self, now: Instant) {
        let Some(before) = now.checked_sub(self.expiry) else {
            return;
        };
        let failures = &self.metrics.failures;
        self.seen.retain(|labels, at| {
            let keep = *at >= before;
            if !keep {
                failures.remove(labels);
            }
            keep
        });
        self.ports.expire(before);
        self.listener_ports.expire(before);
        self.swept = now;
    }
}

/// The JSON name of an evidence kind (docs/events.md); None for context records.
fn evidence_kind(k: Kind) -> Option<&'static str> {
    Some(match k {
        Kind::RstSent => "rst_sent",
        Kind::RstReceived => "rst_received",
        Kind::SynRetransmit => "syn_retransmit",
        Kind::SynackRetransmit => "synack_retransmit",
        Kind::Drop => "drop",
        Kind::State => "state",
        Kind::Error => "error",
        Kind::ConnectError => "connect_error",
        Kind::Overflow => "overflow",
        Kind::Loss
        | Kind::Listener
        | Kind::Addresses
        | Kind::ProcessExit
        | Kind::Socket
        | Kind::FirewallRule
        | Kind::Workload => return None,
    })
}

impl Sink for MetricsSink {
    /// Counts need no time: a storm's records are not formatted for them.
    fn takes(&self, r: &Record) -> Take {
        if r.kind == Kind::Loss || evidence_kind(r.kind).is_some() {
            Take::Untimed
        } else {
            Take::No
        }
    }

    fn record(&mut self, r: &Record) -> io::Result<()> {
        if let Some(kind) = evidence_kind(r.kind) {
            self.metrics
                .events
                .get_or_create(&KindLabels { kind })
                .inc();
        }
        match r.kind {
            Kind::Loss => {
                if let (Some(h), Some(n)) = (r.hook, r.lost) {
                    let labels = LossLabels {
                        hook: h.name(),
                        reason: r.reason.as_deref().unwrap_or_default().to_string(),
                    };
                    self.metrics.lost.get_or_create(&labels).inc_by(n);
                }
            }
            Kind::Overflow => {
                let n = r.drops.unwrap_or(0);
                let port = r.src.map_or(String::new(), |a| {
                    self.listener_ports.count(a.port(), n, Instant::now())
                });
                let labels = OverflowLabels {
                    queue: r.queue_kind.map_or("", |q| q.name()),
                    port,
                };
                self.metrics.overflow_drops.get_or_create(&labels).inc_by(n);
            }
            _ => {}
        }
        Ok(())
    }

    fn explanation(&mut self, e: &Explanation) -> io::Result<()> {
        self.count_explanation(e, Instant::now());
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let now = Instant::now();
        // The sweep walks every series: at most every tenth of the expiry time.
        if now.duration_since(self.swept) >= (self.expiry / 10).min(Duration::from_secs(60)) {
            self.expire(now);
        }
        Ok(())
    }
}

/// Failures by cause and port in an exposition (tests): `cause port count` lines.
#[cfg(test)]
fn failures_by(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("rstrace_failures_total{"))
    {
        let get = |k: &str| {
            let at = l.find(&format!("{k}=\"")).map(|i| i + k.len() + 2)?;
            Some(l[at..].split('"').next()?.to_string())
        };
        let n = l.rsplit(' ').next().unwrap_or_default();
        out.push(format!(
            "{} {} {} {n}",
            get("cause").unwrap_or_default(),
            get("port").unwrap_or_default(),
            get("side").unwrap_or_default(),
        ));
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::{Explanation, Side};

    fn failure(cause: &'static str, port: u16, count: u64) -> Explanation {
        let mut e = Explanation::for_tests(cause);
        e.dst = Some(format!("10.0.0.2:{port}").parse().unwrap());
        e.src = Some("10.0.0.1:40000".parse().unwrap());
        e.count = count;
        e
    }

    /// 50 refusals of one process to one port within the collapse window, through the
    /// engine: one line at once, then "+49 more"; the metric counts 50.
    #[test]
    fn a_collapsed_burst_counts_every_failure_it_stands_for() {
        use crate::{base::record::TcpFlags, explain::testing::*};
        let out = run(|e, out| {
            for i in 0..50u64 {
                let c = format!("10.0.0.1:{}", 40000 + i);
                let mut rst = rec(Kind::RstSent, 10 + i, S, &c, SNS);
                rst.reason = Some("NO_SOCKET".into());
                e.push(rst, out);
                let mut drop = rec(Kind::Drop, 10 + i, &c, S, SNS);
                drop.reason = Some("NO_SOCKET".into());
                drop.tcp_flags = Some(TcpFlags::SYN);
                e.push(drop, out);
                e.push(
                    client_owned(rec(Kind::RstReceived, 10 + i, &c, S, CNS)),
                    out,
                );
                let mut err = client_owned(rec(Kind::Error, 10 + i, &c, S, CNS));
                err.errno = Some(libc::ECONNREFUSED);
                e.push(err, out);
            }
        });
        assert_eq!(out.iter().map(|e| e.count).collect::<Vec<_>>(), [1, 49]);
        let m = Metrics::new();
        let mut s = MetricsSink::new(&m, 10, Duration::from_secs(3600));
        for e in &out {
            s.explanation(e).unwrap();
        }
        assert_eq!(
            failures_by(&m.encode(true)),
            ["nothing_listening 8080 client 50"]
        );
    }

    #[test]
    fn collapsed_bursts_count_every_failure() {
        let m = Metrics::new();
        let mut s = MetricsSink::new(&m, 10, Duration::from_secs(3600));
        // The first failure printed at once, then "+49 more".
        s.explanation(&failure("nothing_listening", 9000, 1))
            .unwrap();
        s.explanation(&failure("nothing_listening", 9000, 49))
            .unwrap();
        s.explanation(&failure("firewall_drop", 8081, 3)).unwrap();
        let text = m.encode(false);
        assert_eq!(
            failures_by(&text),
            [
                "firewall_drop 8081 client 3",
                "nothing_listening 9000 client 50"
            ],
            "{text}"
        );
        assert!(
            !text.contains("10.0.0."),
            "addresses are never labels: {text}"
        );
        assert!(
            !text.contains("40000"),
            "client ports are never labels: {text}"
        );
    }

    #[test]
    fn ports_past_the_top_n_are_other_until_they_count_twice_the_least() {
        let now = Instant::now();
        let mut b = PortBuckets::new(2);
        assert_eq!(b.count(80, 5, now), "80");
        assert_eq!(b.count(443, 3, now), "443");
        assert_eq!(b.count(8080, 1, now), OTHER_PORT);
        assert_eq!(b.count(8080, 5, now), OTHER_PORT); // 6, not more than 2 * 3
        assert_eq!(b.count(8080, 1, now), "8080"); // 7 > 6: takes 443's place
        assert_eq!(b.count(443, 1, now), OTHER_PORT);
        assert_eq!(b.count(80, 1, now), "80");
        // Forgotten after the expiry: room again.
        b.expire(now + Duration::from_secs(1));
        assert_eq!(b.count(443, 1, now), "443");
    }

    #[test]
    fn the_rest_of_the_ports_is_counted_as_other() {
        let m = Metrics::new();
        let mut s = MetricsSink::new(&m, 1, Duration::from_secs(3600));
        s.explanation(&failure("nothing_listening", 9000, 4))
            .unwrap();
        s.explanation(&failure("nothing_listening", 9001, 1))
            .unwrap();
        s.explanation(&failure("nothing_listening", 9002, 2))
            .unwrap();
        assert_eq!(
            failures_by(&m.encode(false)),
            [
                "nothing_listening 9000 client 4",
                "nothing_listening other client 3"
            ]
        );
    }

    #[test]
    fn series_not_counted_for_the_expiry_time_are_removed() {
        let m = Metrics::new();
        let expiry = Duration::from_secs(3600);
        let mut s = MetricsSink::new(&m, 10, expiry);
        let t0 = Instant::now();
        let mut old = failure("nothing_listening", 9000, 1);
        let mut p = Proc {
            pid: 1,
            comm: "curl".into(),
            cgroup: Some(7),
            workload: Some(Arc::new(Workload {
                unit: Some("gone.service".into()),
                ..Default::default()
            })),
        };
        old.process = Some(p.clone());
        s.count_explanation(&old, t0);
        p.workload = Some(Arc::new(Workload {
            unit: Some("live.service".into()),
            ..Default::default()
        }));
        let mut new = failure("nothing_listening", 9000, 1);
        new.process = Some(p);
        s.count_explanation(&new, t0 + Duration::from_secs(1800));
        s.expire(t0 + Duration::from_secs(3000));
        let text = m.encode(true);
        assert!(text.contains("unit=\"gone.service\""), "{text}");
        s.expire(t0 + expiry + Duration::from_secs(1));
        let text = m.encode(true);
        assert!(!text.contains("gone.service"), "{text}");
        assert!(text.contains("unit=\"live.service\""), "{text}");
    }

    #[test]
    fn server_side_failures_and_workload_labels() {
        let m = Metrics::new();
        let mut s = MetricsSink::new(&m, 10, Duration::from_secs(3600));
        let mut e = failure("accept_queue_overflow", 8080, 2);
        e.side = Side::Server;
        e.culprit = Some(Proc {
            pid: 2,
            comm: "nginx".into(),
            cgroup: None,
            workload: Some(Arc::new(Workload {
                pod: Some(crate::base::workload::Pod {
                    uid: "0000-1111".into(),
                    qos: None,
                    namespace: Some("default".into()),
                    name: Some("web-1".into()),
                }),
                ..Default::default()
            })),
        });
        s.explanation(&e).unwrap();
        let text = m.encode(false);
        assert!(
            text.contains(
                "rstrace_failures_total{cause=\"accept_queue_overflow\",port=\"8080\",\
                 side=\"server\",unit=\"\",container=\"\",pod_namespace=\"default\",\
                 pod=\"web-1\"} 2"
            ),
            "{text}"
        );
    }

    #[test]
    fn records_by_kind_losses_and_overflows() {
        let m = Metrics::new();
        let mut s = MetricsSink::new(&m, 10, Duration::from_secs(3600));
        let mut loss = Record::new(Kind::Loss, 1, String::new());
        loss.hook = Some(tracer_common::Hook::KfreeSkb);
        loss.lost = Some(7);
        loss.reason = Some("RINGBUF_FULL".into());
        let mut ov = Record::new(Kind::Overflow, 1, String::new());
        ov.src = Some("0.0.0.0:8080".parse().unwrap());
        ov.drops = Some(5);
        ov.queue_kind = Some(crate::base::record::QueueKind::Accept);
        let rst = Record::new(Kind::RstSent, 1, String::new());
        let listener = Record::new(Kind::Listener, 1, String::new());
        for r in [&loss, &ov, &rst, &rst] {
            assert_eq!(s.takes(r), Take::Untimed, "counted without its time");
            s.record(r).unwrap();
        }
        assert_eq!(
            s.takes(&listener),
            Take::No,
            "context records are not evidence"
        );
        let text = m.encode(false);
        for want in [
            "rstrace_lost_events_total{hook=\"kfree_skb\",reason=\"RINGBUF_FULL\"} 7",
            "rstrace_overflow_drops_total{queue=\"accept\",port=\"8080\"} 5",
            "rstrace_events_total{kind=\"rst_sent\"} 2",
            "rstrace_events_total{kind=\"overflow\"} 1",
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        assert!(!text.contains("kind=\"loss\""), "{text}");
    }

    #[test]
    fn exposition_has_units_help_build_and_start_time() {
        let m = Metrics::new();
        let mut s = MetricsSink::new(&m, 10, Duration::from_secs(3600));
        s.explanation(&failure("nothing_listening", 9000, 1))
            .unwrap();
        m.set_ring(4096, 1 << 22);
        m.set_hooks([("tcp_send_reset", "attached"), ("kfree_skb", "degraded")]);
        let om = m.encode(true);
        assert!(om.ends_with("# EOF\n"), "{om}");
        for want in [
            "# TYPE rstrace_failures counter",
            "rstrace_failures_total{cause=\"nothing_listening\",port=\"9000\",side=\"client\",unit=\"\",container=\"\",pod_namespace=\"\",pod=\"\"} 1",
            "# HELP rstrace_failures Failed TCP connections",
            "# UNIT rstrace_ring_buffer_used_bytes bytes",
            "rstrace_ring_buffer_used_bytes 4096",
            "rstrace_ring_buffer_size_bytes 4194304",
            "rstrace_hook_state{hook=\"kfree_skb\",state=\"degraded\"} 1",
            "# TYPE rstrace_start_time_seconds gauge",
        ] {
            assert!(om.contains(want), "{want} not in\n{om}");
        }
        assert!(om.contains(&format!(
            "rstrace_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
        let text = m.encode(false);
        assert!(text.contains("# TYPE rstrace_build_info gauge"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }
}
