//! Capture format: round trips, truncation at every byte, damaged chunks.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use proptest::prelude::*;

use super::{
    codec::{decode_chunk, ChunkEncoder},
    file::{CaptureWriter, Header, Reader, RotatePolicy},
};
use crate::record::{errno_name, tcp_flags_str, tcp_state_name, Kind, Proc, Queue, Record, Sock};

const KINDS: [Kind; 14] = [
    Kind::RstSent,
    Kind::RstReceived,
    Kind::SynRetransmit,
    Kind::SynackRetransmit,
    Kind::Drop,
    Kind::State,
    Kind::Error,
    Kind::Overflow,
    Kind::Loss,
    Kind::Listener,
    Kind::Addresses,
    Kind::ProcessExit,
    Kind::ConnectError,
    Kind::Socket,
];

fn arb_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

fn arb_addr() -> impl Strategy<Value = SocketAddr> {
    (arb_ip(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::new(ip, p))
}

fn arb_proc() -> impl Strategy<Value = Proc> {
    (any::<u32>(), "[a-z0-9/_-]{0,15}").prop_map(|(pid, comm)| Proc {
        pid,
        comm: comm.into(),
    })
}

fn arb_state() -> impl Strategy<Value = &'static str> {
    (1i32..=12).prop_map(tcp_state_name)
}

prop_compose! {
    fn arb_record()(
        kind in 0..KINDS.len(),
        mono in 0u64..(1 << 62),
        netns in proptest::option::of(any::<u32>()),
        src in proptest::option::of(arb_addr()),
        dst in proptest::option::of(arb_addr()),
        states in (proptest::option::of(arb_state()), proptest::option::of(arb_state()), proptest::option::of(arb_state())),
        reason in proptest::option::of("[A-Z_]{1,24}"),
        errno in proptest::option::of(-200i32..200),
        owner in proptest::option::of(arb_proc()),
        owner_source in proptest::option::of(prop::sample::select(vec!["kernel", "socket", "listener", "proc"])),
        task in proptest::option::of(arb_proc()),
        sock in proptest::option::of(any::<u64>()),
        numbers in (proptest::option::of(any::<u32>()), proptest::option::of((any::<u32>(), any::<u32>())), proptest::option::of(any::<u64>()), proptest::option::of(any::<u64>()), proptest::option::of(any::<u32>())),
        queue_kind in proptest::option::of(prop::sample::select(vec!["accept", "syn"])),
        strings in (proptest::option::of(".{0,40}"), proptest::option::of(0u8..64)),
        hook in proptest::option::of(0..tracer_common::Hook::COUNT),
        addrs in proptest::option::of(proptest::collection::vec(arb_ip(), 0..5)),
        ports in proptest::option::of((any::<[u16; 2]>(), any::<u32>(), any::<u32>(), any::<u32>())),
        v6only in proptest::option::of(any::<bool>()),
    ) -> Record {
        let mut r = Record::new(KINDS[kind], mono, String::new());
        r.netns = netns;
        r.src = src;
        r.dst = dst;
        (r.state, r.old_state, r.new_state) = states;
        r.reason = reason.map(Into::into);
        r.errno = errno;
        r.errno_name = errno.and_then(errno_name);
        r.owner = owner;
        r.owner_source = owner_source;
        r.task = task;
        r.sock = sock.map(Sock);
        r.retransmits = numbers.0;
        r.queue = numbers.1.map(|(depth, backlog)| Queue { depth, backlog });
        r.drops = numbers.2;
        r.lost = numbers.3;
        r.somaxconn = numbers.4;
        r.queue_kind = queue_kind;
        r.location = strings.0.map(Into::into);
        r.tcp_flags = strings.1.map(tcp_flags_str);
        r.hook = hook.map(|h| tracer_common::Hook::ALL[h].program());
        r.addrs = addrs;
        r.v6only = v6only;
        r.ports = ports.map(|(range, established, time_wait, other)| crate::record::PortUse {
            range,
            established,
            time_wait,
            other,
        });
        r
    }
}

proptest! {
    #[test]
    fn records_round_trip(records in proptest::collection::vec(arb_record(), 1..40)) {
        let mut enc = ChunkEncoder::default();
        for r in &records {
            enc.push(r);
        }
        let payload = enc.finish();
        let back = decode_chunk(&payload).unwrap();
        prop_assert_eq!(back, records);
    }

    #[test]
    fn garbage_chunks_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_chunk(&bytes);
    }

    #[test]
    fn garbage_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), clock in any::<(u64, u64)>()) {
        // A valid header with any clock, then anything.
        let h = Header { format: 1, clock_mono_ns: clock.0, clock_wall_ns: clock.1, ..Default::default() };
        let mut data = h.encode().to_vec();
        data.extend_from_slice(&bytes);
        let _ = read_all(data);
    }
}

fn sample(i: u64) -> Record {
    let mut r = Record::new(Kind::Error, 1_000 + i * 1_000, String::new());
    r.src = Some(SocketAddr::from(([10, 0, 0, 1], 40_000 + i as u16)));
    r.dst = Some(SocketAddr::from(([10, 0, 0, 2], 8080)));
    r.errno = Some(111);
    r.errno_name = errno_name(111);
    r.owner = Some(Proc {
        pid: 4121,
        comm: "curl".into(),
    });
    r.netns = Some(4026531840);
    r
}

/// A small file: header, then `chunks` chunks of three records; the byte offset
/// where each chunk ends.
fn small_file(dir: &std::path::Path, chunks: u64) -> (Vec<u8>, Vec<usize>, Vec<Record>) {
    let path = dir.join("cap");
    let header = Header {
        format: 1,
        kernel: "6.18".into(),
        hostname: "h".into(),
        ..Default::default()
    };
    let mut w =
        CaptureWriter::create(&path, header, RotatePolicy::NEVER, Duration::from_secs(60)).unwrap();
    let mut ends = Vec::new();
    let mut all = Vec::new();
    for c in 0..chunks {
        for i in 0..3 {
            let r = sample(c * 3 + i);
            w.write(&r).unwrap();
            all.push(r);
        }
        w.flush().unwrap();
        ends.push(std::fs::metadata(&path).unwrap().len() as usize);
    }
    (std::fs::read(&path).unwrap(), ends, all)
}

fn read_all(data: Vec<u8>) -> anyhow::Result<(Vec<Record>, Vec<String>)> {
    let mut r = Reader::from_bytes(data, "test")?;
    let mut out = Vec::new();
    while let Some(c) = r.next_chunk() {
        out.extend(c);
    }
    Ok((out, r.warnings))
}

fn tmp() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "rstrace-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn files_are_private_and_round_trip_with_their_header() {
    let d = tmp();
    let (data, _, all) = small_file(&d, 2);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.join("cap")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let r = Reader::from_bytes(data.clone(), "t").unwrap();
    assert_eq!(r.header.kernel, "6.18");
    let (records, warnings) = read_all(data).unwrap();
    assert!(warnings.is_empty());
    assert_eq!(records, all);
}

#[test]
fn truncation_at_every_byte_recovers_every_complete_chunk() {
    let d = tmp();
    let (data, ends, all) = small_file(&d, 3);
    let header_len = Header::decode(&data).unwrap().1;
    for cut in 0..=data.len() {
        let got = read_all(data[..cut].to_vec());
        if cut < header_len {
            assert!(
                got.is_err(),
                "cut at {cut} inside the header must be an error, not a panic"
            );
            continue;
        }
        let (records, warnings) = got.unwrap();
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        assert_eq!(records.len(), complete * 3, "cut at {cut}");
        assert_eq!(records[..], all[..complete * 3], "cut at {cut}");
        let partial = !ends.contains(&cut) && cut != header_len;
        assert_eq!(!warnings.is_empty(), partial, "cut at {cut}: {warnings:?}");
    }
}

#[test]
fn a_damaged_chunk_is_skipped_with_a_warning() {
    let d = tmp();
    let (mut data, ends, _) = small_file(&d, 3);
    // Flip a byte in the middle chunk's payload.
    let mid = (ends[0] + ends[1]) / 2;
    data[mid] ^= 0xff;
    let (records, warnings) = read_all(data.clone()).unwrap();
    assert_eq!(records.len(), 6, "chunks 1 and 3 survive");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    // A damaged chunk header (its magic) is skipped too, by resynchronizing.
    let (mut data, ends, _) = small_file(&d, 3);
    data[ends[0]] ^= 0xff;
    let (records, warnings) = read_all(data).unwrap();
    assert_eq!(records.len(), 6);
    assert!(!warnings.is_empty());
}

#[test]
fn newer_formats_and_other_files_are_refused_clearly() {
    let d = tmp();
    let (mut data, _, _) = small_file(&d, 1);
    data[8] = 99;
    let e = read_all(data).unwrap_err();
    assert!(
        format!("{e:#}").contains("newer than this rstrace reads"),
        "{e:#}"
    );
    let e = read_all(b"GIF89a not a capture".to_vec()).unwrap_err();
    assert!(
        format!("{e:#}").contains("not an rstrace capture file"),
        "{e:#}"
    );
}

#[test]
fn rotation_keeps_a_bounded_number_of_self_contained_files() {
    let d = tmp();
    let path = d.join("rot");
    let header = Header {
        format: 1,
        ..Default::default()
    };
    let mut w = CaptureWriter::create(
        &path,
        header,
        RotatePolicy {
            max_bytes: Some(200),
            keep: 2,
        },
        Duration::from_secs(60),
    )
    .unwrap();
    let mut ctx = Record::new(Kind::Listener, 5, String::new());
    ctx.netns = Some(1);
    ctx.src = Some(SocketAddr::from(([0, 0, 0, 0], 80)));
    for i in 0..20 {
        w.write(&sample(i)).unwrap();
        w.flush().unwrap();
        if w.wants_rotation() {
            w.rotate(std::slice::from_ref(&ctx)).unwrap();
        }
    }
    assert!(path.exists());
    assert!(d.join("rot.1").exists() && d.join("rot.2").exists());
    assert!(!d.join("rot.3").exists(), "only 2 rotated files kept");
    let (records, _) = read_all(std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        records.first().map(|r| r.kind),
        Some(Kind::Listener),
        "a new file starts with the context"
    );
}
