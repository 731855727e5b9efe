//! TLS to Postgres, as libpq's URL parameters say: `sslmode`, `sslrootcert`, `sslcert` and
//! `sslkey` are taken out of the URL here, once, and then govern every connection — the
//! data path's (tokio-postgres, through the rustls connector below) and the migrations'
//! (sqlx, configured from the same settings by [`Tls::sqlx`]).
//!
//! | sslmode | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers it | chain, only when `sslrootcert` is given (as libpq) |
//! | `require` | always | chain, only when `sslrootcert` is given (as libpq) |
//! | `verify-ca` | always | chain |
//! | `verify-full` | always | chain and host name |
//!
//! The chain is checked against `sslrootcert` (PEM) when given, else against the system's CA
//! certificates (`sslrootcert=system` says so explicitly); as in libpq, only with
//! `verify-full`: any publicly trusted certificate chains to those. Unlike libpq, no file is read by default (`~/.postgresql/root.crt`,
//! `postgresql.crt`): what is not in the URL is not used. Files are read again for each new
//! connection, so renewed certificates are picked up without a restart.

use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::config::Host;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use tokio_rustls::rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// libpq's `sslmode` (`allow` is not supported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => return Err("sslmode=allow is not supported: use prefer (or disable)".into()),
            other => {
                return Err(format!(
                    "unknown sslmode {other:?}: use disable, prefer, require, verify-ca or verify-full"
                ));
            }
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// What a server's certificate chain is checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Roots {
    /// The system's CA certificates.
    System,
    /// `sslrootcert=PATH`: the CA certificates (PEM) in this file, and no others.
    File(PathBuf),
}

/// The TLS settings of one Postgres URL, and the connector that applies them.
#[derive(Debug, Clone)]
pub struct Tls {
    mode: SslMode,
    /// `sslrootcert`; `None` when the URL names none.
    root: Option<Roots>,
    /// `sslcert` and `sslkey`: a client certificate chain and its key (PEM).
    identity: Option<(PathBuf, PathBuf)>,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            mode: SslMode::Prefer,
            root: None,
            identity: None,
        }
    }
}

/// Takes the TLS parameters out of a `postgres://` URL: the URL without them (for
/// tokio-postgres and sqlx, which would read them differently), and the settings they make.
/// A TLS parameter baton does not support is refused rather than ignored.
pub fn split(url: &str) -> Result<(String, Tls), String> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), Tls::default()));
    };
    let mut kept = vec![];
    let (mut mode, mut root, mut cert, mut key) = (None, None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (decode(k)?, decode(v)?);
        match k.as_str() {
            "sslmode" => mode = Some(SslMode::parse(&v)?),
            "sslrootcert" if v == "system" => root = Some(Roots::System),
            "sslrootcert" => root = Some(Roots::File(PathBuf::from(v))),
            "sslcert" => cert = Some(PathBuf::from(v)),
            "sslkey" => key = Some(PathBuf::from(v)),
            // Direct TLS (PostgreSQL 17) is tokio-postgres's to negotiate.
            "sslnegotiation" => kept.push(pair),
            // Server name indication for host names: libpq's default, and what rustls does.
            "sslsni" if v == "1" => {}
            other if other.starts_with("ssl") || other == "requiressl" => {
                return Err(format!(
                    "{other} is not supported (baton reads sslmode, sslrootcert, sslcert, sslkey and sslnegotiation)"
                ));
            }
            _ => kept.push(pair),
        }
    }
    // As libpq (16 and later): the system's roots are for checking the host name too.
    let mode = match (mode, &root) {
        (None, Some(Roots::System)) => SslMode::VerifyFull,
        (Some(m), Some(Roots::System)) if m != SslMode::VerifyFull => {
            return Err(format!(
                "weak sslmode \"{}\" may not be used with sslrootcert=system (use \"verify-full\")",
                m.as_str()
            ));
        }
        (Some(SslMode::VerifyCa), None) => {
            return Err(
                "sslmode=verify-ca needs sslrootcert=PATH: against the system's CA store any \
                        publicly trusted certificate would pass (use verify-full there)"
                    .into(),
            );
        }
        (m, _) => m.unwrap_or(SslMode::Prefer),
    };
    let identity = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => return Err("sslcert and sslkey go together (no default file is read)".into()),
    };
    let rest = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, Tls { mode, root, identity }))
}

fn decode(s: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("{s:?} is not UTF-8 once percent-decoded"))
}

impl Tls {
    /// The settings for these hosts: as in libpq, TLS is never used over a Unix socket.
    pub fn for_hosts(self, hosts: &[Host], hostaddrs: usize) -> Self {
        let unix_only = hostaddrs == 0 && !hosts.is_empty() && hosts.iter().all(|h| !matches!(h, Host::Tcp(_)));
        if unix_only {
            Self {
                mode: SslMode::Disable,
                ..self
            }
        } else {
            self
        }
    }

    /// The mode tokio-postgres negotiates with: whether TLS is asked for and whether it is
    /// required. What is checked is this connector's business.
    pub fn wire_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }

    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Whether the certificate chain is checked: in the verify modes, and (as libpq does)
    /// whenever `sslrootcert` names a file.
    fn checks_chain(&self) -> bool {
        matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull) || matches!(self.root, Some(Roots::File(_)))
    }

    /// The same settings for sqlx (the migration connection). sqlx checks nothing in
    /// `prefer` and `require`, so `require` with a `sslrootcert` file is `verify-ca` there;
    /// `prefer` with one is not checked by sqlx, but the connection that precedes migrations
    /// is ours and is. sqlx adds the system's roots to a `sslrootcert` file.
    pub fn sqlx(&self, options: PgConnectOptions) -> PgConnectOptions {
        let options = options.ssl_mode(match self.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require if self.checks_chain() => PgSslMode::VerifyCa,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
        });
        let options = match &self.root {
            Some(Roots::File(path)) => options.ssl_root_cert(path),
            _ => options,
        };
        match &self.identity {
            Some((cert, key)) => options.ssl_client_cert(cert).ssl_client_key(key),
            None => options,
        }
    }

    /// Reads the files the URL names, so a missing or unreadable one fails the start (and
    /// not the first connection that needs it).
    pub async fn check(&self) -> Result<(), Failure> {
        if self.mode == SslMode::Disable {
            return Ok(());
        }
        self.client_config().await.map(|_| ())
    }

    /// A rustls configuration, with the files read now.
    async fn client_config(&self) -> Result<Arc<ClientConfig>, Failure> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = if self.checks_chain() {
            let roots = match &self.root {
                Some(Roots::File(path)) => Arc::new(read_roots(path).await?),
                _ => system_roots()?,
            };
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| Failure(format!("cannot check server certificates: {e}")))?;
            Some(verifier)
        } else {
            None
        };
        let verifier = Arc::new(Verifier {
            chain,
            check_name: self.mode == SslMode::VerifyFull,
            provider: provider.clone(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Failure(format!("cannot configure TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.identity {
            Some((cert, key)) => {
                let chain = read_certs("sslcert", cert).await?;
                let key = read_key(key).await?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Failure(format!("sslcert and sslkey do not make a client certificate: {e}")))?
            }
            None => builder.with_no_client_auth(),
        };
        // What PostgreSQL 17 expects of a client, and what older servers ignore.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(Arc::new(config))
    }

    /// A handshake failure in words that say what was checked and what to change.
    fn explain(&self, e: &std::io::Error, host: &str) -> Failure {
        let cause = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
        let Some(rustls::Error::InvalidCertificate(problem)) = cause else {
            return Failure(format!("TLS handshake with {host:?} failed: {e}"));
        };
        let mode = match (self.mode, &self.root) {
            (SslMode::Prefer | SslMode::Require, Some(Roots::File(_))) => format!(
                "sslmode={} checks the chain when sslrootcert is given, as libpq does",
                self.mode.as_str()
            ),
            (mode, _) => format!("sslmode={}", mode.as_str()),
        };
        let against = match &self.root {
            Some(Roots::File(path)) => format!("sslrootcert={}", path.display()),
            _ => "the system's CA certificates".to_string(),
        };
        let why = match problem {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                let fix = match &self.root {
                    Some(Roots::File(_)) => "is that the CA that signed the server's certificate?",
                    _ => "name the server's CA with sslrootcert=PATH",
                };
                format!("not issued by a CA in {against} ({mode}); {fix}")
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
                "{problem} ({mode} checks the host name: connect by a name the certificate lists, or use sslmode=verify-ca)"
            ),
            other => format!("{other} ({mode}, against {against})"),
        };
        Failure(format!("server certificate of {host:?} rejected: {why}"))
    }
}

/// The system's CA certificates, read once.
fn system_roots() -> Result<Arc<RootCertStore>, Failure> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                return Err(format!(
                    "no system CA certificates found ({}); name the server's CA with sslrootcert=PATH",
                    errors.join("; ")
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(Failure)
}

async fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, Failure> {
    tokio::fs::read(path)
        .await
        .map_err(|e| Failure(format!("cannot read {what} {}: {e}", path.display())))
}

async fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Failure> {
    let pem = read_pem(what, path).await?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Failure(format!("{what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Failure(format!("{what} {} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

async fn read_roots(path: &Path) -> Result<RootCertStore, Failure> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs("sslrootcert", path).await? {
        roots
            .add(cert)
            .map_err(|e| Failure(format!("sslrootcert {}: {e}", path.display())))?;
    }
    Ok(roots)
}

async fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Failure> {
    let pem = read_pem("sslkey", path).await?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        Failure(format!(
            "sslkey {}: {e} (an unencrypted PEM private key is needed)",
            path.display()
        ))
    })
}

/// Why a TLS connection to Postgres could not be made, saying what to fix. Found in a
/// tokio-postgres error's sources, it marks the failure as TLS's.
#[derive(Debug)]
pub struct Failure(String);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Failure {}

/// Checks a server's certificate as the mode says. Handshake signatures are always checked:
/// without a chain check they prove nothing about who the server is, but they are the
/// protocol.
#[derive(Debug)]
struct Verifier {
    /// The chain check; `None` where the mode checks no certificate.
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the chain before the name: a name error means the chain is good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            checked => checked,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl MakeTlsConnect<Socket> for Tls {
    type Stream = Stream;
    type TlsConnect = Handshake;
    type Error = Failure;

    fn make_tls_connect(&mut self, host: &str) -> Result<Handshake, Failure> {
        Ok(Handshake {
            tls: self.clone(),
            host: host.to_string(),
        })
    }
}

/// One connection's TLS handshake with `host` (the URL's host name, which is what
/// `verify-full` checks and what goes in SNI).
pub struct Handshake {
    tls: Tls,
    host: String,
}

impl TlsConnect<Socket> for Handshake {
    type Stream = Stream;
    type Error = Failure;
    type Future = BoxFuture<'static, Result<Stream, Failure>>;

    fn connect(self, socket: Socket) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from(self.host.clone())
                .map_err(|e| Failure(format!("{:?} is not a host name TLS can check: {e}", self.host)))?;
            let config = self.tls.client_config().await?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, socket)
                .await
                .map_err(|e| self.tls.explain(&e, &self.host))?;
            Ok(Stream(stream))
        })
    }
}

/// A TLS connection to Postgres.
pub struct Stream(tokio_rustls::client::TlsStream<Socket>);

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tokio_postgres::tls::TlsStream for Stream {
    /// SCRAM-SHA-256-PLUS binds the login to this TLS session (RFC 5929
    /// `tls-server-end-point`), so a password login cannot be relayed by a man in the middle
    /// even where the certificate is not checked.
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| end_point(cert))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

/// The certificate's hash by its signature's hash function (SHA-256 for MD5 and SHA-1), as
/// RFC 5929 says; `None` for a signature without one of its own (Ed25519, RSA-PSS).
fn end_point(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    match cert.signature_algorithm.algorithm.to_id_string().as_str() {
        // md5WithRSA, sha1WithRSA, sha256WithRSA, ecdsa-with-SHA1, ecdsa-with-SHA256
        "1.2.840.113549.1.1.4"
        | "1.2.840.113549.1.1.5"
        | "1.2.840.113549.1.1.11"
        | "1.2.840.10045.4.1"
        | "1.2.840.10045.4.3.2" => Some(sha2::Sha256::digest(der).to_vec()),
        // sha384WithRSA, ecdsa-with-SHA384
        "1.2.840.113549.1.1.12" | "1.2.840.10045.4.3.3" => Some(sha2::Sha384::digest(der).to_vec()),
        // sha512WithRSA, ecdsa-with-SHA512
        "1.2.840.113549.1.1.13" | "1.2.840.10045.4.3.4" => Some(sha2::Sha512::digest(der).to_vec()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(url: &str) -> (String, Tls) {
        split(url).unwrap()
    }

    #[test]
    fn tls_parameters_leave_the_url_and_the_rest_stays() {
        let (rest, t) =
            tls("postgres://u:p@h/db?application_name=x&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca%20x.pem");
        assert_eq!(rest, "postgres://u:p@h/db?application_name=x");
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(t.root, Some(Roots::File("/tmp/ca x.pem".into())));
        let (rest, t) = tls("postgres://u@h/db?sslmode=disable");
        assert_eq!((rest.as_str(), t.mode), ("postgres://u@h/db", SslMode::Disable));
        let (rest, t) = tls("postgres://u@h/db");
        assert_eq!((rest.as_str(), t.mode), ("postgres://u@h/db", SslMode::Prefer));
    }

    #[test]
    fn modes_check_what_libpq_checks() {
        let checks = |url: &str| {
            let t = tls(url).1;
            (t.checks_chain(), t.mode == SslMode::VerifyFull)
        };
        assert_eq!(checks("postgres://h/d"), (false, false));
        assert_eq!(checks("postgres://h/d?sslmode=require"), (false, false));
        assert_eq!(
            checks("postgres://h/d?sslmode=require&sslrootcert=ca.pem"),
            (true, false)
        );
        assert_eq!(checks("postgres://h/d?sslrootcert=ca.pem"), (true, false));
        assert_eq!(
            checks("postgres://h/d?sslmode=verify-ca&sslrootcert=ca.pem"),
            (true, false)
        );
        assert_eq!(checks("postgres://h/d?sslmode=verify-full"), (true, true));
        assert_eq!(checks("postgres://h/d?sslrootcert=system"), (true, true));
    }

    #[test]
    fn unsupported_or_inconsistent_parameters_are_refused() {
        let err = |url: &str| split(url).unwrap_err();
        assert!(err("postgres://h/d?sslmode=allow").contains("not supported"));
        assert!(err("postgres://h/d?sslmode=verify").contains("unknown sslmode"));
        assert!(err("postgres://h/d?sslpassword=x").contains("sslpassword is not supported"));
        assert!(err("postgres://h/d?sslcrl=x").contains("sslcrl is not supported"));
        assert!(err("postgres://h/d?sslcert=c.pem").contains("go together"));
        assert!(err("postgres://h/d?sslmode=require&sslrootcert=system").contains("weak sslmode"));
        assert!(err("postgres://h/d?sslmode=verify-ca").contains("needs sslrootcert=PATH"));
        assert!(
            tls("postgres://h/d?sslsni=1&sslnegotiation=direct")
                .0
                .ends_with("?sslnegotiation=direct")
        );
    }

    #[test]
    fn unix_sockets_never_use_tls() {
        let unix = [Host::Unix("/run/postgresql".into())];
        let tcp = [Host::Tcp("db".into())];
        let t = tls("postgres://h/d?sslmode=verify-full").1;
        assert_eq!(t.clone().for_hosts(&unix, 0).mode, SslMode::Disable);
        assert_eq!(t.clone().for_hosts(&tcp, 0).mode, SslMode::VerifyFull);
        assert_eq!(t.for_hosts(&unix, 1).mode, SslMode::VerifyFull);
    }
}
