//! TLS to Postgres: `sslmode` and `sslrootcert` (and `sslcert`/`sslkey`) mean what libpq
//! says, on every connection baton opens. Each test starts a Postgres of its own (never the
//! machine's shared one) that takes TCP connections from 127.0.0.1 over TLS only, with a
//! certificate for `localhost` from a CA made here.

use crate::auth::{ca, issue};
use crate::helpers::*;
use baton::domain::time::Clock;
use baton::process::TempPostgres;
use baton::storage::StoreOptions;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose};
use sqlx::ConnectOptions;
use std::path::PathBuf;
use std::time::Duration;

const PASSWORD: &str = "pg-tls-secret-7";
/// A role that logs in with a client certificate (its common name) and no password.
const CERT_USER: &str = "baton_cert";

/// TCP from 127.0.0.1 only over TLS (a plaintext connection finds no `pg_hba.conf` line);
/// the Unix socket, for the test's own look at the server, trusted.
const HBA: &str = "local all all trust
hostssl all postgres 127.0.0.1/32 scram-sha-256
hostssl all baton_cert 127.0.0.1/32 cert
";

/// The server, and the client's files: `ca.pem` (the server's CA), `other-ca.pem` (a CA
/// that signed nothing here), `client.pem`/`client.key` (a certificate for `baton_cert`).
struct TlsPostgres {
    pg: TempPostgres,
    files: tempfile::TempDir,
}

impl TlsPostgres {
    async fn start() -> Self {
        let (ca_pem, issuer) = ca("baton test Postgres CA");
        let (other_ca, _) = ca("some other CA");
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let (server_cert, server_key) = issue(&mut server, &issuer);
        let mut client = CertificateParams::new(vec![]).unwrap();
        client.distinguished_name.push(DnType::CommonName, CERT_USER);
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let (client_cert, client_key) = issue(&mut client, &issuer);

        let files = tempfile::tempdir().unwrap();
        for (name, pem) in [
            ("ca.pem", &ca_pem),
            ("other-ca.pem", &other_ca),
            ("client.pem", &client_cert),
            ("client.key", &client_key),
        ] {
            std::fs::write(files.path().join(name), pem).unwrap();
        }
        let pg = tokio::task::spawn_blocking(move || {
            let pg = TempPostgres::init()?;
            pg.write_file("server.crt", &server_cert)?;
            pg.write_file("server.key", &server_key)?;
            pg.write_file("ca.crt", &ca_pem)?;
            pg.write_file("pg_hba.conf", HBA)?;
            pg.configure(
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'",
            )?;
            pg.start()?;
            Ok::<_, String>(pg)
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("a Postgres of the test's own: {e}"));
        let mut admin = pg.socket_options("postgres").connect().await.unwrap();
        // The test's own constants, never request data.
        for sql in [
            format!("ALTER ROLE postgres PASSWORD '{PASSWORD}'"),
            format!("CREATE ROLE {CERT_USER} LOGIN SUPERUSER"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut admin).await.unwrap();
        }
        Self { pg, files }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.files.path().join(name)
    }

    /// A URL for the `postgres` role (password login) at `host`, with these parameters.
    fn url(&self, host: &str, params: &str) -> String {
        format!(
            "postgres://postgres:{PASSWORD}@{host}:{}/postgres?{params}",
            self.pg.addr().port()
        )
    }

    /// `sslmode=verify-full&sslrootcert=` this CA (or another).
    fn verify_full(&self, ca: &str) -> String {
        format!("sslmode=verify-full&sslrootcert={}", self.file(ca).display())
    }

    async fn baton_sessions(&self) -> Vec<bool> {
        baton_sessions(&self.pg).await
    }
}

/// Whether each session named `baton` uses TLS, as the server sees it.
async fn baton_sessions(pg: &TempPostgres) -> Vec<bool> {
    let mut admin = pg.socket_options("postgres").connect().await.unwrap();
    sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'baton'",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap()
}

/// A server on `sslmode=verify-full&sslrootcert=ca.pem` serves writes, reads and a live
/// stream, and every session it holds is encrypted; the password login is bound to the TLS
/// session (`channel_binding=require` refuses it otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_full_serves_over_tls() {
    let server = TlsPostgres::start().await;
    let url = server.url(
        "localhost",
        &format!("{}&channel_binding=require", server.verify_full("ca.pem")),
    );
    let app = TestApp::start_with(test_settings(&url), Clock::system()).await;
    define_examples(&app, NS).await;
    let mut c = app.client().await;
    create(&mut c, "task", "job").await;
    transition(&mut c, "job", "start").await;
    // A live subscriber from the start: it must see every event, then `final`.
    let mut sub = app.client().await;
    let live = tokio::spawn(async move { collect_stream(&mut sub, "job", 0).await });
    for i in 0..3 {
        append(&mut c, "job", vec![ev("progress", &format!("step {i}"))])
            .await
            .expect("append");
    }
    transition(&mut c, "job", "cancel").await;
    let (seen, end) = tokio::time::timeout(Duration::from_secs(30), live)
        .await
        .expect("the stream ends")
        .unwrap();
    end.expect("stream ends OK");
    let stored = read_tape(&mut c, "job").await;
    assert_complete(&stored, 0);
    assert_eq!(seen, stored, "the live stream saw the stored tape");
    assert_eq!(get_entity(&mut c, "job").await.state, "cancelled");

    let sessions = server.baton_sessions().await;
    // The housekeeper's session, the listener, a reader, a write lane at least.
    assert!(sessions.len() >= 3, "baton's sessions: {sessions:?}");
    assert!(
        sessions.iter().all(|ssl| *ssl),
        "every baton session uses TLS: {sessions:?}"
    );
    app.stop().await.expect("clean stop");
}

/// What cannot be made safe fails the start with one line that says why, and never shows
/// the password: plaintext to a server that takes only TLS, a certificate from a CA other
/// than `sslrootcert`, a certificate for another host name (`verify-full`), and — as in
/// libpq — `require` with a `sslrootcert` the certificate does not chain to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plaintext_and_untrusted_certificates_fail_at_start() {
    let server = TlsPostgres::start().await;
    let start = |url: String| {
        let line = tokio::task::block_in_place(|| {
            crate::server::failing_start(&["--database-url", &url, "--listen", "127.0.0.1:0"])
        });
        assert!(!line.contains(PASSWORD), "the password is redacted: {line}");
        eprintln!("{line}");
        line
    };

    let plaintext = start(server.url("127.0.0.1", "sslmode=disable"));
    assert!(plaintext.contains("no pg_hba.conf entry"), "{plaintext}");
    assert!(plaintext.contains("sslmode=disable"), "{plaintext}");

    let other_ca = start(server.url("localhost", &server.verify_full("other-ca.pem")));
    assert!(
        other_ca.contains("server certificate of \"localhost\" rejected: not issued by a CA in sslrootcert="),
        "{other_ca}"
    );
    assert!(other_ca.contains("other-ca.pem (sslmode=verify-full)"), "{other_ca}");

    let wrong_name = start(server.url("127.0.0.1", &server.verify_full("ca.pem")));
    assert!(wrong_name.contains("not valid for name \"127.0.0.1\""), "{wrong_name}");
    assert!(
        wrong_name.contains("sslmode=verify-ca"),
        "the way out is named: {wrong_name}"
    );

    let require = start(server.url(
        "localhost",
        &format!("sslmode=require&sslrootcert={}", server.file("other-ca.pem").display()),
    ));
    assert!(
        require.contains("sslmode=require checks the chain when sslrootcert is given"),
        "{require}"
    );

    let no_ca_file = start(server.url("localhost", &server.verify_full("missing.pem")));
    assert!(no_ca_file.contains("cannot read sslrootcert"), "{no_ca_file}");
}

/// Connects a store, returns whether each baton session is encrypted, and closes it.
async fn sessions_of(server: &TlsPostgres, url: &str) -> Vec<bool> {
    let store = baton::storage::connect(url, StoreOptions::new(Clock::system(), 2))
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let sessions = server.baton_sessions().await;
    store.close().await;
    sessions
}

/// The weaker modes connect as libpq's do: `prefer` (the default) and `require` encrypt
/// without checking the certificate (here it is for `localhost`, from an unknown CA, and
/// reached as 127.0.0.1), `verify-ca` checks the chain but not the name; and a client
/// certificate (`sslcert`/`sslkey`) logs in where `pg_hba.conf` says `cert`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weaker_modes_and_client_certificates_connect() {
    let server = TlsPostgres::start().await;
    let ca = server.file("ca.pem");
    for params in [
        String::new(),
        "sslmode=prefer".to_string(),
        "sslmode=require".to_string(),
        format!("sslmode=verify-ca&sslrootcert={}", ca.display()),
    ] {
        let sessions = sessions_of(&server, &server.url("127.0.0.1", &params)).await;
        assert!(
            !sessions.is_empty() && sessions.iter().all(|ssl| *ssl),
            "{params}: {sessions:?}"
        );
    }
    let cert = format!(
        "postgres://{CERT_USER}@localhost:{}/postgres?{}&sslcert={}&sslkey={}",
        server.pg.addr().port(),
        server.verify_full("ca.pem"),
        server.file("client.pem").display(),
        server.file("client.key").display(),
    );
    let sessions = sessions_of(&server, &cert).await;
    assert!(!sessions.is_empty() && sessions.iter().all(|ssl| *ssl), "{sessions:?}");
    // Without the certificate the same role is refused.
    let bare = format!(
        "postgres://{CERT_USER}@localhost:{}/postgres?{}",
        server.pg.addr().port(),
        server.verify_full("ca.pem")
    );
    let refused = baton::storage::connect(&bare, StoreOptions::new(Clock::system(), 2)).await;
    let refused = refused.err().expect("no client certificate, no login").to_string();
    assert!(refused.contains("certificate"), "{refused}");
}

/// Against a server without TLS, `prefer` (the default) falls back to plaintext, and
/// `require` refuses to: it fails the start with one line that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefer_falls_back_to_plaintext_and_require_does_not() {
    let pg = tokio::task::spawn_blocking(TempPostgres::start_default)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("a Postgres of the test's own: {e}"));
    let url = |params: &str| format!("{}?{params}", TempPostgres::url_at(pg.addr(), "postgres"));
    let store = baton::storage::connect(&url("sslmode=prefer"), StoreOptions::new(Clock::system(), 2))
        .await
        .expect("prefer connects without TLS");
    let sessions = baton_sessions(&pg).await;
    assert!(!sessions.is_empty() && sessions.iter().all(|ssl| !ssl), "{sessions:?}");
    store.close().await;
    let line = tokio::task::block_in_place(|| {
        crate::server::failing_start(&["--database-url", &url("sslmode=require"), "--listen", "127.0.0.1:0"])
    });
    eprintln!("{line}");
    assert!(line.contains("server does not support TLS"), "{line}");
    assert!(line.contains("need a server with ssl = on"), "{line}");
}
