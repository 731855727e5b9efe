//! A bounded fuzz run over every request type: arbitrary bytes (random, protobuf-shaped,
//! and valid requests with bytes changed) sent as each method's request to a real `baton
//! serve` over gRPC. Never a panic, never `INTERNAL`: every refusal is a code a client can
//! act on, with an ErrorInfo. `BATON_FUZZ_SECONDS` (default 4) bounds each backend's run.

use crate::helpers::*;
use crate::raw;
use baton::process::{ServeProcess, TempDatabase};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;

/// A protobuf varint.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A value as a length-delimited field may carry: names the examples use, hostile strings,
/// invalid UTF-8, raw bytes.
fn field_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "test", "task", "t1", "start", "succeed", "k", "h", "progress", "a\0b", "é", "",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(any::<u8>(), 0..48),
        (1usize..70_000).prop_map(|n| vec![b'x'; n]),
        Just(vec![0xff, 0xfe, 0xc3, 0x28]),
    ]
}

/// A protobuf-shaped message: fields 1..12 of every wire type, some nested.
fn wire_message() -> impl Strategy<Value = Vec<u8>> {
    let leaf =
        prop::collection::vec((1u64..13, 0u8..6, any::<u64>(), field_bytes()), 0..8).prop_map(|fields| encode(&fields));
    leaf.prop_recursive(2, 64, 8, |inner| {
        prop::collection::vec((1u64..13, inner), 1..4).prop_map(|nested| {
            let mut out = vec![];
            for (tag, body) in nested {
                varint(tag << 3 | 2, &mut out);
                varint(body.len() as u64, &mut out);
                out.extend(body);
            }
            out
        })
    })
}

fn encode(fields: &[(u64, u8, u64, Vec<u8>)]) -> Vec<u8> {
    let mut out = vec![];
    for (tag, wire, number, bytes) in fields {
        varint(tag << 3 | u64::from(*wire), &mut out);
        match wire {
            0 => varint(*number, &mut out),
            1 => out.extend(number.to_le_bytes()),
            2 => {
                varint(bytes.len() as u64, &mut out);
                out.extend(bytes);
            }
            5 => out.extend((*number as u32).to_le_bytes()),
            // Groups (3, 4): a start or end marker alone.
            _ => {}
        }
    }
    out
}

/// Bytes of one request: random, protobuf-shaped, or protobuf-shaped with bytes flipped
/// and cut.
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..96),
        wire_message(),
        (
            wire_message(),
            any::<prop::sample::Index>(),
            any::<u8>(),
            any::<prop::sample::Index>()
        )
            .prop_map(|(mut m, at, xor, cut)| {
                if !m.is_empty() {
                    let i = at.index(m.len());
                    m[i] ^= xor | 1;
                    m.truncate(cut.index(m.len()) + 1);
                }
                m
            }),
    ]
}

fn fuzz(backend: Backend) {
    let seconds: u64 = std::env::var("BATON_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(TempDatabase::new(backend)).unwrap();
    let baton = ServeProcess::spawn(Path::new(env!("CARGO_BIN_EXE_baton")), db.url(), &[]).expect("baton serves");
    let channel = rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(baton.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = Client::new(channel.clone());
        define_examples_with(&mut c, NS).await;
        create(&mut c, "task", "t1").await;
        channel
    });
    let started = Instant::now();
    let calls = std::sync::atomic::AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    // Now and then no message at all.
    let strategy = (
        prop::sample::select(raw::METHODS.to_vec()),
        prop::option::weighted(0.97, request_bytes()),
    );
    // Case after case until the time is up; a failing case is shrunk to a minimal one.
    while started.elapsed() < Duration::from_secs(seconds) {
        let case = strategy.new_tree(&mut runner).unwrap();
        let result = runner.run_one(case, |(method, body)| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let answer = rt.block_on(raw::call(&channel, method, body, Duration::from_secs(2)));
            let Err(s) = answer else { return Ok(()) };
            let acceptable = !matches!(
                s.code(),
                Code::Internal | Code::Unknown | Code::Unavailable | Code::DataLoss
            );
            prop_assert!(acceptable, "{method}: {s:?}");
            if s.code() != Code::DeadlineExceeded {
                prop_assert!(!reason(&s).is_empty(), "{method}: no ErrorInfo in {s:?}");
            }
            Ok::<(), TestCaseError>(())
        });
        if let Err(e) = result {
            panic!("{backend}: {e}");
        }
    }
    let calls = calls.into_inner();
    assert!(calls > 100, "only {calls} calls in {seconds} s");
    let log = baton.drain_log();
    assert!(!log.iter().any(|l| l.contains("panicked")), "{log:?}");
    let mut c = Client::new(channel);
    let alive = rt.block_on(c.get_entity(baton::proto::GetEntityRequest {
        namespace: NS.into(),
        id: "t1".into(),
    }));
    assert!(alive.is_ok(), "{alive:?}");
    eprintln!("fuzz {backend}: {calls} calls in {:?}", started.elapsed());
}

#[test]
fn fuzz_every_request_type_sqlite() {
    fuzz(Backend::Sqlite)
}

#[test]
fn fuzz_every_request_type_postgres() {
    fuzz(Backend::Postgres)
}
