//! Authentication, authorization and TLS over real gRPC, on both backends: I12 (a caller
//! authorized for one namespace can neither read nor write another, and cannot tell what
//! exists there), roles, tokens expired or revoked by editing the file (no restart), TLS
//! and mTLS, and a certificate renewed in place.

use crate::both_backends;
use crate::helpers::*;
use baton::app::Settings;
use baton::domain::time::Clock;
use baton::proto::{self, coordinator_client::CoordinatorClient};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};

/// A test CA, a server certificate for localhost / 127.0.0.1 and a client certificate
/// for `worker-1`, as PEM files.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    pub(crate) ca: String,
    pub(crate) client: (String, String),
}

pub(crate) fn issue(params: &mut CertificateParams, issuer: &Issuer<'_, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub(crate) fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(vec![]).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (pem, Issuer::new(params, key))
}

fn server_cert(issuer: &Issuer<'_, KeyPair>) -> (String, String) {
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    issue(&mut params, issuer)
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca_pem, issuer) = ca("baton test CA");
        let (cert, key) = server_cert(&issuer);
        let mut client = CertificateParams::new(vec![]).unwrap();
        client.distinguished_name.push(DnType::CommonName, "worker-1");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = issue(&mut client, &issuer);
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert).unwrap();
        std::fs::write(dir.path().join("server.key"), key).unwrap();
        Self {
            dir,
            ca: ca_pem,
            client,
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Adds `authorization: Bearer …` when there is a token.
#[derive(Clone)]
struct Bearer(Option<String>);

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(t) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        Ok(request)
    }
}

type AuthClient = CoordinatorClient<InterceptedService<Channel, Bearer>>;

/// A TLS channel to `addr` trusting `ca`, presenting `identity` when given.
async fn tls_channel(
    addr: std::net::SocketAddr,
    ca: &str,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
}

fn client(channel: Channel, token: Option<&str>) -> AuthClient {
    CoordinatorClient::with_interceptor(channel, Bearer(token.map(str::to_string)))
}

/// Tokens: `a` writes in team-a, `r` reads team-a, `root` is admin everywhere, `old`
/// expired; `worker-1`'s certificate writes in team-a.
struct Tokens {
    a: String,
    r: String,
    root: String,
    old: String,
}

pub(crate) fn entry(subject: &str, secret: &str, role: &str, ns: &[&str], expires: Option<&str>) -> String {
    let role = role.parse().unwrap();
    let ns: Vec<String> = ns.iter().map(|s| s.to_string()).collect();
    baton::auth::grants::token_entry(subject, secret, role, &ns, expires.map(str::to_string)).unwrap()
}

fn write_tokens(path: &Path, t: &Tokens, with_a: bool) {
    let mut file = String::new();
    if with_a {
        file += &entry("a", &t.a, "write", &["team-a"], None);
    }
    file += &entry("r", &t.r, "read", &["team-a"], None);
    file += &entry("root", &t.root, "admin", &["*"], None);
    file += &entry("old", &t.old, "admin", &["*"], Some("2020-01-01T00:00:00Z"));
    file += "[[identity]]\nsubject = \"worker-1\"\nrole = \"write\"\nnamespaces = [\"team-a\"]\n";
    // Write then rename, as a deploy would: the server never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, file).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

struct Secured {
    _db: TestDb,
    pki: Pki,
    app: TestApp,
    tokens: Tokens,
}

async fn secured(backend: Backend, mtls: bool) -> Secured {
    let db = TestDb::new(backend).await;
    let pki = Pki::new();
    let secret = || baton::auth::grants::new_secret().unwrap();
    let tokens = Tokens {
        a: secret(),
        r: secret(),
        root: secret(),
        old: secret(),
    };
    write_tokens(&pki.path("tokens.toml"), &tokens, true);
    let settings = Settings {
        auth_tokens: Some(pki.path("tokens.toml")),
        tls_cert: Some(pki.path("server.pem")),
        tls_key: Some(pki.path("server.key")),
        tls_client_ca: mtls.then(|| pki.path("ca.pem")),
        ..test_settings(&db.url)
    };
    let app = TestApp::start_with(settings, Clock::system()).await;
    Secured {
        _db: db,
        pki,
        app,
        tokens,
    }
}

impl Secured {
    async fn as_token(&self, token: Option<&str>) -> AuthClient {
        client(tls_channel(self.app.addr, &self.pki.ca, None).await.unwrap(), token)
    }
}

/// One call of every RPC in `ns`, naming entity `id`, lease key `k` and kind `task`; each
/// answer as (code, message, ErrorInfo reason and metadata), or "ok".
async fn every_rpc(c: &mut AuthClient, ns: &str, id: &str) -> Vec<(&'static str, String)> {
    fn said<T>(r: Result<T, Status>) -> String {
        match r {
            Ok(_) => "ok".into(),
            Err(s) => format!(
                "{:?} {:?} {:?}",
                s.code(),
                s.message(),
                tonic_types::StatusExt::get_details_error_info(&s).map(|i| (i.reason, {
                    let mut m: Vec<_> = i.metadata.into_iter().collect();
                    m.sort();
                    m
                }))
            ),
        }
    }
    let ns = ns.to_string();
    let spec = baton::grpc::convert::spec_to_proto(&example_machines().into_iter().find(|m| m.kind == "task").unwrap());
    vec![
        (
            "AcquireLease",
            said(
                c.acquire_lease(proto::AcquireLeaseRequest {
                    namespace: ns.clone(),
                    key: "k".into(),
                    holder: "h".into(),
                    ttl: secs(10),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "RenewLease",
            said(
                c.renew_lease(proto::RenewLeaseRequest {
                    namespace: ns.clone(),
                    key: "k".into(),
                    token: 1,
                    ttl: secs(10),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "ReleaseLease",
            said(
                c.release_lease(proto::ReleaseLeaseRequest {
                    namespace: ns.clone(),
                    key: "k".into(),
                    token: 1,
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "GetLease",
            said(
                c.get_lease(proto::GetLeaseRequest {
                    namespace: ns.clone(),
                    key: "k".into(),
                })
                .await,
            ),
        ),
        (
            "DefineMachine",
            said(
                c.define_machine(proto::DefineMachineRequest {
                    namespace: ns.clone(),
                    spec: Some(spec),
                })
                .await,
            ),
        ),
        (
            "GetMachine",
            said(
                c.get_machine(proto::GetMachineRequest {
                    namespace: ns.clone(),
                    kind: "task".into(),
                })
                .await,
            ),
        ),
        (
            "CreateEntity",
            said(
                c.create_entity(proto::CreateEntityRequest {
                    namespace: ns.clone(),
                    kind: "task".into(),
                    id: format!("{id}-new"),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "GetEntity",
            said(
                c.get_entity(proto::GetEntityRequest {
                    namespace: ns.clone(),
                    id: id.into(),
                })
                .await,
            ),
        ),
        (
            "ListEntities",
            said(
                c.list_entities(proto::ListEntitiesRequest {
                    namespace: ns.clone(),
                    kind: "task".into(),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "Transition",
            said(
                c.transition(proto::TransitionRequest {
                    namespace: ns.clone(),
                    entity_id: id.into(),
                    transition: "start".into(),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "AppendEvents",
            said(
                c.append_events(proto::AppendEventsRequest {
                    namespace: ns.clone(),
                    entity_id: id.into(),
                    events: vec![ev("p", "1")],
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "StreamEvents",
            said(
                c.stream_events(proto::StreamEventsRequest {
                    namespace: ns.clone(),
                    entity_id: id.into(),
                    after_seq: 0,
                })
                .await,
            ),
        ),
        (
            "ListLeases",
            said(
                c.list_leases(proto::ListLeasesRequest {
                    namespace: ns.clone(),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "ForceReleaseLease",
            said(
                c.force_release_lease(proto::ForceReleaseLeaseRequest {
                    namespace: ns.clone(),
                    key: "k".into(),
                    by: "x".into(),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "ListMachines",
            said(
                c.list_machines(proto::ListMachinesRequest {
                    namespace: ns.clone(),
                    ..Default::default()
                })
                .await,
            ),
        ),
        (
            "DeleteEntity",
            said(
                c.delete_entity(proto::DeleteEntityRequest {
                    namespace: ns.clone(),
                    entity_id: id.into(),
                    ..Default::default()
                })
                .await,
            ),
        ),
    ]
}

/// I12: a token of team-a gets PERMISSION_DENIED, naming team-b, on every RPC against
/// team-b, and the answers for an entity that exists there and one that does not are the
/// same, byte for byte. In its own namespace the same calls go through.
async fn i12_a_namespace_token_cannot_see_or_touch_another(backend: Backend) {
    let s = secured(backend, false).await;
    let mut root = s.as_token(Some(&s.tokens.root)).await;
    for ns in ["team-a", "team-b"] {
        let spec =
            baton::grpc::convert::spec_to_proto(&example_machines().into_iter().find(|m| m.kind == "task").unwrap());
        root.define_machine(proto::DefineMachineRequest {
            namespace: ns.into(),
            spec: Some(spec),
        })
        .await
        .unwrap();
        root.create_entity(proto::CreateEntityRequest {
            namespace: ns.into(),
            kind: "task".into(),
            id: "exists".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut a = s.as_token(Some(&s.tokens.a)).await;
    let existing = every_rpc(&mut a, "team-b", "exists").await;
    let missing = every_rpc(&mut a, "team-b", "missing").await;
    assert_eq!(
        existing, missing,
        "team-b's entities must not be told apart from missing ones"
    );
    for (rpc, answer) in &existing {
        assert!(
            answer.starts_with("PermissionDenied")
                && answer.contains("PERMISSION_DENIED")
                && answer.contains("\"team-b\""),
            "{rpc}: {answer}"
        );
    }
    // Its own namespace: writes go through; admin calls need the admin role.
    let own = every_rpc(&mut a, "team-a", "exists").await;
    for (rpc, answer) in &own {
        let admin = matches!(
            *rpc,
            "DefineMachine" | "ListLeases" | "ForceReleaseLease" | "ListMachines" | "DeleteEntity"
        );
        assert_eq!(answer.starts_with("PermissionDenied"), admin, "{rpc}: {answer}");
        if admin {
            assert!(
                answer.contains("needs_role") && answer.contains("admin"),
                "{rpc}: {answer}"
            );
        }
    }
}

/// A `read` token reads and cannot mutate; no token, a bad token and an expired one are
/// UNAUTHENTICATED; health and reflection need none; a token removed from the file is
/// refused without a restart.
async fn roles_expiry_and_revocation(backend: Backend) {
    let s = secured(backend, false).await;
    let mut r = s.as_token(Some(&s.tokens.r)).await;
    let answers = every_rpc(&mut r, "team-a", "nothing").await;
    for (rpc, answer) in &answers {
        let read = matches!(
            *rpc,
            "GetLease" | "GetMachine" | "GetEntity" | "ListEntities" | "StreamEvents"
        );
        assert_eq!(!answer.starts_with("PermissionDenied"), read, "{rpc}: {answer}");
    }
    for token in [None, Some("bt_not-a-token"), Some(s.tokens.old.as_str())] {
        let mut c = s.as_token(token).await;
        let err = c
            .get_lease(proto::GetLeaseRequest {
                namespace: "team-a".into(),
                key: "k".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}: {err:?}");
        assert_eq!(reason(&err), "UNAUTHENTICATED");
    }
    let channel = tls_channel(s.app.addr, &s.pki.ca, None).await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let mut a = s.as_token(Some(&s.tokens.a)).await;
    let get = proto::GetLeaseRequest {
        namespace: "team-a".into(),
        key: "k".into(),
    };
    a.get_lease(get.clone()).await.unwrap();
    write_tokens(&s.pki.path("tokens.toml"), &s.tokens, false);
    // The server checks the file every second: poll for the refusal, within a bound.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match a.get_lease(get.clone()).await {
            Err(e) if e.code() == Code::Unauthenticated => break,
            other => assert!(Instant::now() < deadline, "revoked token still accepted: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// mTLS: the client certificate of `worker-1` is its caller (no token needed), held to its
/// grant; a client without a certificate cannot even connect; a plaintext client against
/// the TLS port fails at once.
async fn mtls_identity_and_plaintext_refusal(backend: Backend) {
    let s = secured(backend, true).await;
    let channel = tls_channel(s.app.addr, &s.pki.ca, Some(&s.pki.client)).await.unwrap();
    let mut worker = client(channel, None);
    let answers = every_rpc(&mut worker, "team-a", "x").await;
    let lease = &answers.iter().find(|(r, _)| *r == "AcquireLease").unwrap().1;
    assert_eq!(lease, "ok");
    let elsewhere = every_rpc(&mut worker, "team-b", "x").await;
    assert!(
        elsewhere.iter().all(|(_, a)| a.starts_with("PermissionDenied")),
        "{elsewhere:?}"
    );

    // Without a certificate the handshake fails; the first call says so.
    let no_cert = match tls_channel(s.app.addr, &s.pki.ca, None).await {
        Err(_) => true,
        Ok(channel) => client(channel, Some(&s.tokens.a))
            .get_lease(proto::GetLeaseRequest {
                namespace: "team-a".into(),
                key: "k".into(),
            })
            .await
            .is_err(),
    };
    assert!(no_cert, "a client without a certificate got through");

    let plaintext = Channel::from_shared(format!("http://{}", s.app.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        match plaintext.connect().await {
            Err(_) => true,
            Ok(ch) => CoordinatorClient::new(ch)
                .get_lease(proto::GetLeaseRequest {
                    namespace: "team-a".into(),
                    key: "k".into(),
                })
                .await
                .is_err(),
        }
    })
    .await
    .expect("a plaintext client fails quickly, never hangs");
    assert!(refused);
}

/// A renewed certificate (here: from another CA) is served to new connections without a
/// restart; connections made before keep working.
async fn a_renewed_certificate_is_served_without_a_restart(backend: Backend) {
    let s = secured(backend, false).await;
    let mut before = s.as_token(Some(&s.tokens.a)).await;
    let (new_ca, issuer) = ca("baton renewed CA");
    let (cert, key) = server_cert(&issuer);
    std::fs::write(s.pki.path("server.key"), key).unwrap();
    std::fs::write(s.pki.path("server.pem"), cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut after = loop {
        if let Ok(channel) = tls_channel(s.app.addr, &new_ca, None).await {
            let mut c = client(channel, Some(&s.tokens.a));
            if c.get_lease(proto::GetLeaseRequest {
                namespace: "team-a".into(),
                key: "k".into(),
            })
            .await
            .is_ok()
            {
                break c;
            }
        }
        assert!(Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let get = proto::GetLeaseRequest {
        namespace: "team-a".into(),
        key: "k".into(),
    };
    after.get_lease(get.clone()).await.unwrap();
    before.get_lease(get).await.unwrap();
}

both_backends!(
    i12_a_namespace_token_cannot_see_or_touch_another,
    roles_expiry_and_revocation,
    mtls_identity_and_plaintext_refusal,
    a_renewed_certificate_is_served_without_a_restart,
);

/// A public address without TLS and authentication does not start: refused before
/// anything is bound (`--insecure` is covered by the settings' unit test, so no test here
/// listens beyond loopback).
#[tokio::test]
async fn a_public_listener_without_tls_and_auth_is_refused() {
    let db = TestDb::new(Backend::Sqlite).await;
    let settings = Settings {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..test_settings(&db.url)
    };
    let err = baton::app::Application::build(settings).await.err().expect("refused");
    assert!(err.to_string().contains("--insecure"), "{err}");
}
