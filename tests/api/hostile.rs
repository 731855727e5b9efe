//! Hostile input (issue 13): each finding of the probe, as a regression test.

use crate::helpers::*;
use crate::raw;
use baton::proto;
use std::process::Command;
use std::time::Duration;
use tonic::{Code, Status};

/// `baton serve --help` shows no environment value of a secret setting: a password in
/// `BATON_DATABASE_URL` is not printed.
#[test]
fn serve_help_hides_the_database_password() {
    let out = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["serve", "--help"])
        .env("BATON_DATABASE_URL", "postgres://u:s3cret@127.0.0.1:1/x")
        .output()
        .expect("run baton");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("BATON_DATABASE_URL"), "{help}");
    assert!(!help.contains("s3cret"), "{help}");
}

/// A start-up error names the URL with every password hidden: in the user information (an
/// unencoded `@` included) and in a `password` query parameter.
#[test]
fn start_up_errors_hide_every_password() {
    for url in [
        "postgres://postgres:p@ss@s3cret@127.0.0.1:1/x",
        "postgres://postgres@127.0.0.1:1/x?password=s3cret",
        "mysql://u:s3cret@localhost/x",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--listen", "127.0.0.1:0", "--database-url", url])
            .output()
            .expect("run baton");
        assert!(!out.status.success(), "{url}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("error:"), "{stderr}");
        assert!(!stderr.contains("s3cret"), "{url}: {stderr}");
    }
}

/// Asserts each call was refused INVALID_ARGUMENT naming its field; returns the statuses.
#[track_caller]
fn invalid_arguments_naming(calls: Vec<(Result<(), Status>, &str)>) -> Vec<(Status, &str)> {
    calls
        .into_iter()
        .map(|(result, field)| {
            let s = expect_err(result, Code::InvalidArgument, "INVALID_ARGUMENT");
            assert_eq!(meta(&s, "field").as_deref(), Some(field), "{s:?}");
            (s, field)
        })
        .collect()
}

/// NUL in any stored string is INVALID_ARGUMENT naming the field, on both backends (Postgres
/// used to accept it in a field value, and every filtered list of the kind was then
/// INTERNAL); lists with field filters keep working.
async fn nul_is_refused_in_every_stored_string(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    create(&mut c, "task", "t").await;
    let nul = "a\0b".to_string();
    let fields = |k: &str| std::collections::HashMap::from([(k.to_string(), nul.clone())]);
    let create_with = |f: fn(&mut proto::CreateEntityRequest, String)| {
        let mut r = proto::CreateEntityRequest {
            namespace: NS.into(),
            kind: "task".into(),
            ..Default::default()
        };
        f(&mut r, nul.clone());
        r
    };
    let refusals: Vec<(Result<(), Status>, &str)> = vec![
        (
            c.create_entity(proto::CreateEntityRequest {
                fields: fields("note"),
                ..create_with(|_, _| {})
            })
            .await
            .map(drop),
            "fields[note]",
        ),
        (c.create_entity(create_with(|r, v| r.id = v)).await.map(drop), "id"),
        (
            c.create_entity(create_with(|r, v| r.dedup_key = v)).await.map(drop),
            "dedup_key",
        ),
        (
            c.create_entity(create_with(|r, v| r.request_id = v)).await.map(drop),
            "request_id",
        ),
        (
            c.transition(proto::TransitionRequest {
                set_fields: fields("note"),
                ..tr("t", "start")
            })
            .await
            .map(drop),
            "set_fields[note]",
        ),
        (
            c.transition(proto::TransitionRequest {
                events: vec![proto::EventInput {
                    content_type: nul.clone(),
                    ..ev("progress", "1")
                }],
                ..tr("t", "start")
            })
            .await
            .map(drop),
            "events[0].content_type",
        ),
        (
            append(&mut c, "t", vec![ev(&nul, "1")]).await.map(drop),
            "events[0].type",
        ),
        (
            c.acquire_lease(proto::AcquireLeaseRequest {
                namespace: NS.into(),
                key: nul.clone(),
                holder: "h".into(),
                ttl: secs(5),
                ..Default::default()
            })
            .await
            .map(drop),
            "key",
        ),
        (
            c.acquire_lease(proto::AcquireLeaseRequest {
                namespace: NS.into(),
                key: "k".into(),
                holder: nul.clone(),
                ttl: secs(5),
                ..Default::default()
            })
            .await
            .map(drop),
            "holder",
        ),
    ];
    invalid_arguments_naming(refusals);
    // Nothing was stored; a filtered list answers on both backends.
    c.transition(proto::TransitionRequest {
        set_fields: std::collections::HashMap::from([("note".to_string(), "fine".to_string())]),
        ..tr("t", "start")
    })
    .await
    .unwrap();
    let page = c
        .list_entities(proto::ListEntitiesRequest {
            namespace: NS.into(),
            kind: "task".into(),
            has_fields: vec!["note".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.entities.len(), 1);
    assert_eq!(page.entities[0].fields["note"], "fine");
}

/// A client that accepts no more than 8 KiB of response metadata (gRPC core's default).
async fn strict_client(app: &TestApp) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .http2_max_header_list_size(8 * 1024)
        .connect()
        .await
        .unwrap();
    Client::new(channel)
}

/// A 64 KB bad value (an id, a namespace, an event type, a state name) is INVALID_ARGUMENT
/// that a client with default metadata limits can read: the message and ErrorInfo quote a
/// short prefix, not the value.
async fn a_64kb_bad_value_is_a_readable_invalid_argument(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = strict_client(&app).await;
    let huge = "x/".repeat(32 * 1024);
    let mut spec = baton::grpc::convert::spec_to_proto(&example_machines()[0]);
    spec.initial_state = huge.clone();
    let calls: Vec<(Result<(), Status>, &str)> = vec![
        (
            c.get_entity(proto::GetEntityRequest {
                namespace: NS.into(),
                id: huge.clone(),
            })
            .await
            .map(drop),
            "id",
        ),
        (
            c.get_entity(proto::GetEntityRequest {
                namespace: huge.clone(),
                id: "e".into(),
            })
            .await
            .map(drop),
            "namespace",
        ),
        (
            append(&mut c, "e", vec![ev(&huge, "1")]).await.map(drop),
            "events[0].type",
        ),
        (
            c.define_machine(proto::DefineMachineRequest {
                namespace: NS.into(),
                spec: Some(spec),
            })
            .await
            .map(drop),
            "spec.initial_state",
        ),
    ];
    for (s, field) in invalid_arguments_naming(calls) {
        assert!(s.message().len() < 256, "{field}: {} bytes", s.message().len());
        assert!(s.details().len() < 512, "{field}: {} bytes", s.details().len());
        assert!(
            s.message().contains(&format!("({} bytes)", huge.len())),
            "{}",
            s.message()
        );
    }
}

crate::both_backends!(
    nul_is_refused_in_every_stored_string,
    a_64kb_bad_value_is_a_readable_invalid_argument
);

/// A request tonic cannot decode is INVALID_ARGUMENT with an ErrorInfo, never a bare
/// INTERNAL: invalid UTF-8 in a string field (the field named), malformed protobuf, an
/// empty body.
async fn undecodable_requests_are_invalid_arguments(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // GetEntityRequest { namespace: "test", id: <0xff 0xfe> }; an AppendEventsRequest whose
    // first event's type is not UTF-8.
    let bad_id = [&[0x0a, 4][..], b"test", &[0x12, 2, 0xff, 0xfe]].concat();
    let bad_type = vec![0x1a, 4, 0x0a, 2, 0xc3, 0x28];
    let cases: [(&str, Option<Vec<u8>>, &str); 5] = [
        ("GetEntity", Some(bad_id), "id"),
        ("AppendEvents", Some(bad_type), "events.type"),
        ("Transition", Some(vec![0xff, 0xff, 0xff]), "request"),
        ("CreateEntity", Some(vec![0x0a, 0x7f]), "namespace"),
        ("ListEntities", None, "request"),
    ];
    for (method, body, field) in cases {
        let s = expect_err(
            raw::call(&channel, method, body, Duration::from_secs(10)).await,
            Code::InvalidArgument,
            "INVALID_ARGUMENT",
        );
        assert_eq!(meta(&s, "field").as_deref(), Some(field), "{method}: {s:?}");
    }
}

crate::both_backends!(undecodable_requests_are_invalid_arguments);

/// I10 over gRPC: under one request id, each second body that differs from the first in one
/// field — a payload byte, a content type, the events' order, a field value, the sealed
/// policy — is REQUEST_ID_REUSED, and the first body replays its answer.
async fn a_second_body_under_one_request_id_is_refused(backend: Backend) {
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    create(&mut c, "task", "t").await;
    transition(&mut c, "t", "start").await;
    let append_with =
        |rid: &str, events: Vec<proto::EventInput>, if_sealed: proto::IfSealed| proto::AppendEventsRequest {
            namespace: NS.into(),
            entity_id: "t".into(),
            events,
            if_sealed: if_sealed as i32,
            request_id: rid.into(),
            ..Default::default()
        };
    let first = vec![ev("a", "1"), ev("b", "2")];
    let seconds = [
        (vec![ev("a", "1"), ev("b", "3")], proto::IfSealed::Reject),
        (
            vec![
                ev("a", "1"),
                proto::EventInput {
                    content_type: "text/html".into(),
                    ..ev("b", "2")
                },
            ],
            proto::IfSealed::Reject,
        ),
        (vec![ev("b", "2"), ev("a", "1")], proto::IfSealed::Reject),
        (first.clone(), proto::IfSealed::Drop),
    ];
    for (i, (events, if_sealed)) in seconds.into_iter().enumerate() {
        let rid = format!("append-{i}");
        let answer = c
            .append_events(append_with(&rid, first.clone(), proto::IfSealed::Reject))
            .await
            .unwrap()
            .into_inner();
        let other = c.append_events(append_with(&rid, events, if_sealed)).await;
        expect_err(other, Code::InvalidArgument, "REQUEST_ID_REUSED");
        let replay = c
            .append_events(append_with(&rid, first.clone(), proto::IfSealed::Unspecified))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(replay, answer, "the same call replays its first answer");
    }
    // A map's entries in another order are the same call; another value is not.
    let create_with = |fields: &[(&str, &str)]| proto::CreateEntityRequest {
        namespace: NS.into(),
        kind: "task".into(),
        fields: fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        request_id: "create".into(),
        ..Default::default()
    };
    let entries: Vec<(String, String)> = (0..16).map(|i| (format!("f{i}"), i.to_string())).collect();
    let forward: Vec<(&str, &str)> = entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let backward: Vec<(&str, &str)> = forward.iter().rev().copied().collect();
    let created = c.create_entity(create_with(&forward)).await.unwrap().into_inner();
    let replayed = c.create_entity(create_with(&backward)).await.unwrap().into_inner();
    assert_eq!(replayed, created);
    let mut changed = forward.clone();
    changed[3].1 = "changed";
    expect_err(
        c.create_entity(create_with(&changed)).await,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
    );
}

crate::both_backends!(a_second_body_under_one_request_id_is_refused);

/// A page is bounded by bytes as well as count: 24 entities of 64 maximal fields each
/// (about 6 MiB) come back in pages a default client can receive, each under the bound,
/// every entity exactly once.
async fn a_page_never_exceeds_the_byte_bound(backend: Backend) {
    use prost::Message;
    let (_db, app) = spawn_app(backend).await;
    let mut c = app.client().await;
    let value = "v".repeat(baton::domain::entity::MAX_FIELD_VALUE);
    let fields: std::collections::HashMap<String, String> = (0..baton::domain::entity::MAX_FIELDS)
        .map(|i| (format!("f{i}"), value.clone()))
        .collect();
    for i in 0..24 {
        c.create_entity(proto::CreateEntityRequest {
            namespace: NS.into(),
            kind: "task".into(),
            id: format!("e{i:02}"),
            fields: fields.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let (mut seen, mut token, mut pages) = (vec![], String::new(), 0);
    loop {
        let page = c
            .list_entities(proto::ListEntitiesRequest {
                namespace: NS.into(),
                kind: "task".into(),
                page_size: 100,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("a default client receives every page")
            .into_inner();
        assert!(page.encoded_len() <= baton::grpc::convert::MAX_PAGE_BYTES + 4096);
        assert!(!page.entities.is_empty());
        pages += 1;
        seen.extend(page.entities.into_iter().map(|e| e.id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let expected: Vec<String> = (0..24).map(|i| format!("e{i:02}")).collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 2);
}

crate::both_backends!(a_page_never_exceeds_the_byte_bound);
