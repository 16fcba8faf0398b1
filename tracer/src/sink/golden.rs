//! Golden outputs: the JSON Lines and text of one record of every kind (every field
//! it uses set, every enumerated value present) and of one explanation of every
//! cause, compared byte for byte with files under tracer/tests/golden. The JSON is
//! the documented schema and must not change by accident; a capture written by an
//! earlier version (previous.rst) must still read as the same records.
//!
//! `RSTRACE_BLESS=1 cargo test -p tracer golden` rewrites the expected files after a
//! change meant to alter the output (never previous.rst, which stays as written).
use std::{fmt::Write as _, net::SocketAddr, path::PathBuf, time::Duration};

use crate::{
    base::{
        reasons,
        record::{
            errno_name, FirewallRule, Kind, OwnerSource, PortUse, Proc, Queue, QueueKind, Record,
            Sock, TcpFlags, TcpState,
        },
    },
    capture::file::{CaptureWriter, Header, Reader, RotatePolicy},
    explain::Explanation,
};

const RECORDS_JSON: &str = include_str!("../../tests/golden/records.jsonl");
const RECORDS_TEXT: &str = include_str!("../../tests/golden/records.txt");
const EXPLANATIONS_JSON: &str = include_str!("../../tests/golden/explanations.jsonl");
const EXPLANATIONS_TEXT: &str = include_str!("../../tests/golden/explanations.txt");
const PREVIOUS_CAPTURE: &[u8] = include_bytes!("../../tests/golden/previous.rst");

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Compares `got` with the golden `want`, naming the first line that differs; with
/// RSTRACE_BLESS=1, writes `got` as the new golden file instead.
fn check(name: &str, want: &str, got: &str) {
    if std::env::var_os("RSTRACE_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(golden_path(name), got).unwrap();
        return;
    }
    if want == got {
        return;
    }
    let (w, g): (Vec<_>, Vec<_>) = (want.lines().collect(), got.lines().collect());
    let at = w
        .iter()
        .zip(&g)
        .position(|(a, b)| a != b)
        .unwrap_or(w.len().min(g.len()));
    panic!(
        "{name} differs from tracer/tests/golden/{name} at line {}:\nwant: {}\ngot:  {}\n({} lines wanted, {} got)",
        at + 1,
        w.get(at).unwrap_or(&"<end>"),
        g.get(at).unwrap_or(&"<end>"),
        w.len(),
        g.len()
    );
}

const TIME: &str = "2024-05-01T01:05:21.402113Z";
const MS: u64 = 1_000_000;

fn addr(s: &str) -> Option<SocketAddr> {
    Some(s.parse().unwrap())
}

fn who(pid: u32, comm: &str) -> Option<Proc> {
    Some(Proc {
        pid,
        comm: comm.into(),
        cgroup: None,
        workload: None,
    })
}

/// One record of every kind with the fields it uses, then records that between them
/// hold every TCP state, owner source, queue kind, hook and a range of TCP flags.
pub fn records() -> Vec<Record> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut new = |kind: Kind| {
        at += MS;
        let mut r = Record::new(kind, 1_000_000_000 + at, TIME.to_string());
        r.netns = Some(4026531840);
        r
    };
    let conn = |r: &mut Record| {
        r.src = addr("10.0.0.1:40000");
        r.dst = addr("10.0.0.2:8080");
        r.sock = Some(Sock(0xffff_8880_1234_5600));
    };

    let mut r = new(Kind::RstSent);
    conn(&mut r);
    r.state = Some(TcpState::Established);
    r.reason = Some(reasons::TCP_ABORT_ON_CLOSE.into());
    r.owner = who(880, "python3");
    r.owner_source = Some(OwnerSource::Kernel);
    r.task = who(880, "python3");
    r.retransmits = Some(2);
    out.push(r);

    let mut r = new(Kind::RstReceived);
    conn(&mut r);
    r.state = Some(TcpState::SynSent);
    r.owner = who(4121, "curl");
    r.owner_source = Some(OwnerSource::Socket);
    r.task = who(0, "swapper/1");
    out.push(r);

    let mut r = new(Kind::SynRetransmit);
    conn(&mut r);
    r.state = Some(TcpState::SynSent);
    r.owner = who(4121, "curl");
    r.owner_source = Some(OwnerSource::Kernel);
    r.task = who(0, "swapper/0");
    r.retransmits = Some(3);
    out.push(r);

    let mut r = new(Kind::SynackRetransmit);
    r.src = addr("10.0.0.2:8080");
    r.dst = addr("10.0.0.1:40000");
    r.sock = Some(Sock(0xffff_8880_1234_5700));
    r.state = Some(TcpState::Listen);
    r.owner = who(880, "python3");
    r.owner_source = Some(OwnerSource::Listener);
    r.task = who(0, "swapper/1");
    r.queue = Some(Queue {
        depth: 5,
        backlog: 4,
    });
    out.push(r);

    let mut r = new(Kind::Drop);
    conn(&mut r);
    r.reason = Some(reasons::NETFILTER_DROP.into());
    r.location = Some("nft_do_chain+0x3e8".into());
    r.tcp_flags = Some(TcpFlags::from_bits(0x02));
    r.owner = who(4121, "curl");
    r.owner_source = Some(OwnerSource::Kernel);
    r.task = who(4121, "curl");
    out.push(r);

    let mut r = new(Kind::State);
    r.src = addr("[::]:8080");
    r.dst = addr("[::]:0");
    r.sock = Some(Sock(0xffff_8880_1234_5800));
    r.old_state = Some(TcpState::Close);
    r.new_state = Some(TcpState::Listen);
    r.owner = who(880, "python3");
    r.owner_source = Some(OwnerSource::Kernel);
    r.task = who(880, "python3");
    r.queue = Some(Queue {
        depth: 0,
        backlog: 128,
    });
    r.v6only = Some(true);
    out.push(r);

    let mut r = new(Kind::Error);
    conn(&mut r);
    r.state = Some(TcpState::Close);
    r.errno = Some(libc::ECONNREFUSED);
    r.errno_name = errno_name(libc::ECONNREFUSED);
    r.owner = who(4121, "curl");
    r.owner_source = Some(OwnerSource::Kernel);
    r.task = who(4121, "curl");
    out.push(r);

    let mut r = new(Kind::ConnectError);
    r.src = addr("0.0.0.0:0");
    r.dst = addr("10.0.0.2:8080");
    r.state = Some(TcpState::SynSent);
    r.errno = Some(libc::EADDRNOTAVAIL);
    r.errno_name = errno_name(libc::EADDRNOTAVAIL);
    r.owner = who(4121, "curl");
    r.owner_source = Some(OwnerSource::Kernel);
    r.task = who(4121, "curl");
    r.ports = Some(PortUse {
        range: [32768, 60999],
        established: 28000,
        time_wait: 231,
        other: 1,
    });
    out.push(r);

    let mut r = new(Kind::Overflow);
    r.src = addr("10.0.0.2:8080");
    r.queue = Some(Queue {
        depth: 129,
        backlog: 128,
    });
    r.queue_kind = Some(QueueKind::Accept);
    r.drops = Some(7);
    r.somaxconn = Some(4096);
    r.owner = who(880, "python3");
    r.owner_source = Some(OwnerSource::Proc);
    out.push(r);

    let mut r = new(Kind::Loss);
    r.netns = None;
    r.hook = Some(tracer_common::Hook::KfreeSkb);
    r.lost = Some(12);
    r.reason = Some(reasons::LOST_RING_FULL.into());
    out.push(r);

    let mut r = new(Kind::Listener);
    r.src = addr("127.0.0.1:6379");
    r.queue = Some(Queue {
        depth: 0,
        backlog: 511,
    });
    r.owner = who(881, "redis-server");
    r.owner_source = Some(OwnerSource::Proc);
    r.v6only = Some(false);
    out.push(r);

    let mut r = new(Kind::Addresses);
    r.addrs = Some(vec![
        "10.0.0.2".parse().unwrap(),
        "127.0.0.1".parse().unwrap(),
        "fd00::2".parse().unwrap(),
    ]);
    out.push(r);

    let mut r = new(Kind::ProcessExit);
    r.netns = None;
    r.owner = who(880, "python3");
    r.reason = Some("SIGKILL".into());
    out.push(r);

    let mut r = new(Kind::Socket);
    conn(&mut r);
    r.state = Some(TcpState::Established);
    r.owner = who(4121, "curl");
    r.owner_source = Some(OwnerSource::Proc);
    out.push(r);

    let mut r = new(Kind::FirewallRule);
    r.dst = addr("10.0.0.2:8080");
    r.rules = Some(vec![
        FirewallRule {
            source: "nft".into(),
            family: "inet".into(),
            table: "filter".into(),
            chain: "input".into(),
            hook: Some("input".into()),
            priority: Some(0),
            handle: Some(4),
            rule: "tcp dport 8080 drop".into(),
            verdict: "drop".into(),
        },
        FirewallRule {
            source: "iptables".into(),
            family: "ip".into(),
            table: "filter".into(),
            chain: "CHECKS".into(),
            hook: None,
            priority: None,
            handle: None,
            rule: "-A CHECKS -p tcp -m tcp --dport 8080 -j REJECT --reject-with tcp-reset".into(),
            verdict: "reject".into(),
        },
    ]);
    r.conntrack = Some(crate::base::record::ConntrackStats {
        entries: 3,
        max: Some(262144),
        invalid: 5,
        drop: 1,
        early_drop: 2,
        insert_failed: 4,
    });
    out.push(r);

    // Every TCP state (and the name of a code the kernel may add), as old and new.
    for code in 0..=13 {
        let mut r = new(Kind::State);
        conn(&mut r);
        r.old_state = Some(TcpState::from_kernel(code));
        r.new_state = Some(TcpState::from_kernel((code + 1) % 14));
        out.push(r);
    }
    // The other owner sources and queue kind.
    for source in [
        OwnerSource::Kernel,
        OwnerSource::Socket,
        OwnerSource::Listener,
        OwnerSource::Proc,
    ] {
        let mut r = new(Kind::RstReceived);
        conn(&mut r);
        r.owner = who(4121, "curl");
        r.owner_source = Some(source);
        out.push(r);
    }
    let mut r = new(Kind::Overflow);
    r.queue_kind = Some(QueueKind::Syn);
    r.drops = Some(1024);
    out.push(r);
    // Every hook in a loss record.
    for h in tracer_common::Hook::ALL {
        let mut r = new(Kind::Loss);
        r.netns = None;
        r.hook = Some(h);
        r.lost = Some(1);
        r.reason = Some(reasons::LOST_RECURSION.into());
        out.push(r);
    }
    // TCP flags: none, each, and the usual pairs (ECE and CWR are not named).
    for f in [
        0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x12, 0x18, 0x11, 0x14, 0xc2, 0x3f,
    ] {
        let mut r = new(Kind::Drop);
        conn(&mut r);
        r.reason = Some("TCP_INVALID_SEQUENCE".into());
        r.location = Some("tcp_validate_incoming+0x9c".into());
        r.tcp_flags = Some(TcpFlags::from_bits(f));
        out.push(r);
    }
    out
}

fn json_lines<T>(items: &[T], one: impl Fn(&T, &mut Vec<u8>)) -> String {
    let mut out = Vec::new();
    for x in items {
        one(x, &mut out);
        out.push(b'\n');
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn records_json_and_text_are_unchanged() {
    let records = records();
    let kinds: std::collections::HashSet<Kind> = records.iter().map(|r| r.kind).collect();
    assert_eq!(kinds.len(), 15, "a record of every kind");
    check(
        "records.jsonl",
        RECORDS_JSON,
        &json_lines(&records, super::json::record),
    );
    check(
        "records.txt",
        RECORDS_TEXT,
        &json_lines(&records, super::text::record),
    );
}

#[test]
fn explanations_json_and_text_are_unchanged() {
    let explanations: Vec<Explanation> = crate::explain::tests::golden::explanations();
    check(
        "explanations.jsonl",
        EXPLANATIONS_JSON,
        &json_lines(&explanations, super::json::explanation),
    );
    let mut text = String::new();
    for x in &explanations {
        let mut line = Vec::new();
        super::text::explanation(x, true, &mut line);
        let _ = writeln!(text, "{}", String::from_utf8(line).unwrap());
    }
    check("explanations.txt", EXPLANATIONS_TEXT, &text);
}

/// Decoded records carry no wall-clock text (replay adds it from the file's clock).
fn read_capture(data: Vec<u8>) -> Vec<Record> {
    let mut reader = Reader::from_bytes(data, "previous.rst").unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = reader.next_chunk().unwrap() {
        out.extend(chunk);
    }
    assert!(reader.warnings.is_empty(), "{:?}", reader.warnings);
    for r in &mut out {
        r.time = TIME.to_string();
    }
    out
}

/// The records as the capture written by the previous version holds them: without
/// the fields added since (a firewall_rule record's conntrack statistics), which an
/// older capture cannot have and reads back absent.
fn as_previous(mut records: Vec<Record>) -> Vec<Record> {
    for r in &mut records {
        r.conntrack = None;
    }
    records
}

#[test]
fn a_capture_written_by_the_previous_version_still_reads() {
    let records = read_capture(PREVIOUS_CAPTURE.to_vec());
    let want = as_previous(self::records());
    assert_eq!(records, want);
    assert_eq!(
        json_lines(&records, super::json::record),
        json_lines(&want, super::json::record)
    );
}

/// Writes previous.rst with this version's codec. Run once by hand when the capture
/// format changes (`cargo test -p tracer write_previous_capture -- --ignored`),
/// over an empty file; it never replaces one the earlier version wrote.
#[test]
#[ignore]
fn write_previous_capture() {
    let path = golden_path("previous.rst");
    assert!(
        std::fs::metadata(&path).map_or(true, |m| m.len() == 0),
        "{} was written by an earlier version: keep it",
        path.display()
    );
    let header = Header {
        format: 1,
        kernel: "6.12.0-golden".into(),
        hostname: "golden".into(),
        ..Default::default()
    };
    let mut w = CaptureWriter::create(
        &path,
        true,
        header,
        RotatePolicy::NEVER,
        Duration::from_secs(60),
    )
    .unwrap();
    for r in records() {
        w.write(&r).unwrap();
    }
    w.flush().unwrap();
}
