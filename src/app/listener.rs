//! The gRPC listener's accept loop, within bounds: at most `max_connections` connections at
//! once (the next waits in the kernel's backlog), each handed to the server only once it
//! has completed its TLS handshake (when TLS is on) and sent the HTTP/2 preface within
//! `handshake_timeout` (an idle, plaintext-to-TLS or non-HTTP/2 socket is closed instead of
//! holding a slot and a file descriptor), and an accept error that is not one connection's
//! own — out of file descriptors (EMFILE), of memory — is logged once and waited out with a
//! growing pause, never retried in a busy loop. Existing connections are served all along,
//! so health keeps answering. Each connection carries its [`Connection`]: when its streams
//! must end because it has aged, and the names of its verified client certificate.

use crate::grpc::Connection;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// What every HTTP/2 connection begins with (RFC 9113, 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The first and the longest pause after an accept error.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// HTTP/2 receive windows: how much a client may send on one stream, and on one
/// connection, before the server has read it (a request is at most 4 MiB; it just flows in
/// several windows).
pub const STREAM_WINDOW: u32 = 1 << 20;
/// See [`STREAM_WINDOW`].
pub const CONNECTION_WINDOW: u32 = 2 << 20;
/// Largest block of request headers (gRPC metadata) accepted.
pub const MAX_HEADER_LIST: u32 = 16 << 10;

/// Bounds of the accept loop, and what it does with each connection.
#[derive(Clone)]
pub struct Limits {
    /// Connections open at once (handshakes included).
    pub max_connections: usize,
    /// Longest wait for a new connection's TLS handshake and HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// How long after its accept a connection's streams end (`None`: never).
    pub lifetime: Option<Duration>,
    /// TLS, when the port serves it.
    pub tls: Option<TlsAcceptor>,
}

/// Connections open at once unless `--max-connections` says otherwise.
const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// The accept loop's bounds for these settings. Without `--max-connections`, the cap is
/// [`DEFAULT_MAX_CONNECTIONS`], lowered where the process's open-files limit would otherwise
/// let client connections take the descriptors its database connections need (health would
/// then fail with the database unreachable); a cap given is kept, with a warning when it
/// leaves the database too few.
pub fn limits(settings: &super::Settings, tls: Option<TlsAcceptor>) -> Limits {
    // Each database connection (and each SQLite file, its WAL and index) takes a descriptor;
    // the rest is the listeners, the notification connections, the runtime and the logs.
    let reserve = 4 * (settings.pool_size + settings.write_lanes) as usize + 64;
    let files = open_files_limit();
    let fits = |n: usize| files.is_none_or(|files| n + reserve <= files);
    let max_connections = match settings.max_connections.map(|n| n as usize) {
        Some(asked) => {
            if !fits(asked) {
                tracing::warn!(
                    max_connections = asked,
                    open_files_limit = files,
                    reserved = reserve,
                    "max connections leave the database too few file descriptors (raise the open-files limit, ulimit -n)"
                );
            }
            asked
        }
        None if fits(DEFAULT_MAX_CONNECTIONS) => DEFAULT_MAX_CONNECTIONS,
        None => {
            let lowered = files.unwrap_or_default().saturating_sub(reserve).max(1);
            tracing::warn!(
                max_connections = lowered,
                open_files_limit = files,
                reserved = reserve,
                "max connections lowered to leave file descriptors to the database (raise the open-files limit, ulimit -n)"
            );
            lowered
        }
    };
    Limits {
        max_connections,
        handshake_timeout: settings.handshake_timeout,
        lifetime: settings.stream_lifetime(),
        tls,
    }
}

/// The soft limit on open files (`RLIMIT_NOFILE`), where the system says (Linux:
/// `/proc/self/limits`).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Connections the kernel completes and queues for an accept that has not come yet (the
/// backlog), as Go does; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 4096;

/// Binds the gRPC listener, with a [`BACKLOG`] fit for a server (the standard library's 128
/// turns clients away while the accept loop waits for a free slot).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// The connections `listener` accepts within `limits`, as the server's incoming stream. The
/// accept loop stops (and the listening socket closes) once the stream is dropped.
pub fn incoming(listener: TcpListener, limits: Limits) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        tokio::select! {
            _ = tx.closed() => {}
            _ = accept_loop(&listener, limits, &tx) => {}
        }
    });
    ReceiverStream::new(rx)
}

async fn accept_loop(listener: &TcpListener, limits: Limits, tx: &mpsc::Sender<io::Result<Conn>>) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let (mut pause, mut failures) = (BACKOFF.0, 0u64);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((tcp, peer)) => {
                if failures > 0 {
                    tracing::info!(failures, "accepting connections again");
                    (pause, failures) = (BACKOFF.0, 0);
                }
                let (tx, limits) = (tx.clone(), limits.clone());
                tokio::spawn(async move {
                    if let Some(conn) = handshake(tcp, peer, &limits, slot).await {
                        let _ = tx.send(Ok(conn)).await;
                    }
                });
            }
            // One connection's own trouble (reset before we took it): the next is fine.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                if failures == 0 {
                    tracing::warn!(error = %e, "cannot accept connections (out of file descriptors or memory?); backing off");
                }
                failures += 1;
                drop(slot);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(BACKOFF.1);
            }
        }
    }
}

/// The TLS handshake (when TLS is on), then the HTTP/2 preface, both within the handshake
/// timeout; `None` (the socket is closed) when either fails or does not come in time.
async fn handshake(tcp: TcpStream, peer: SocketAddr, limits: &Limits, slot: OwnedSemaphorePermit) -> Option<Conn> {
    let accepted = Instant::now();
    let deadline = accepted + limits.handshake_timeout;
    let _ = tcp.set_nodelay(true);
    let (mut io, peer_names) = match &limits.tls {
        None => (Io::Plain(tcp), vec![]),
        Some(acceptor) => match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                let names = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .map(super::tls::certificate_names)
                    .unwrap_or_default();
                (Io::Tls(Box::new(tls)), names)
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed; closed");
                return None;
            }
            Err(_) => {
                tracing::debug!(%peer, "no TLS handshake in time; closed");
                return None;
            }
        },
    };
    let mut preface = [0u8; PREFACE.len()];
    match tokio::time::timeout_at(deadline, io.read_exact(&mut preface)).await {
        Ok(Ok(_)) if &preface == PREFACE => {}
        Ok(Ok(_)) => {
            tracing::debug!(%peer, "not an HTTP/2 connection; closed");
            return None;
        }
        Ok(Err(_)) => return None,
        Err(_) => {
            tracing::debug!(%peer, timeout = ?limits.handshake_timeout, "no HTTP/2 preface in time; closed");
            return None;
        }
    }
    Some(Conn {
        io,
        replay: PREFACE.len(),
        connection: Connection {
            streams_end: limits.lifetime.map(|l| accepted + l),
            peer_names: peer_names.into(),
        },
        _slot: slot,
    })
}

/// The bytes of a connection: plain TCP, or TLS over it.
enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

macro_rules! io {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Io::Plain($s) => $e,
            Io::Tls($s) => $e,
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        io!(self.get_mut(), s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        io!(self.get_mut(), s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io!(self.get_mut(), s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        io!(self.get_mut(), s => Pin::new(s).poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        io!(self.get_mut(), s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        io!(self, s => s.is_write_vectored())
    }
}

/// An accepted connection: the preface read during the handshake is replayed to the
/// server first; the connection's slot is freed when it closes.
pub struct Conn {
    io: Io,
    /// Bytes of the preface still to replay (counted from its end).
    replay: usize,
    /// What handlers learn of it (tonic puts it in each request's extensions).
    connection: Connection,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = Connection;

    fn connect_info(&self) -> Connection {
        self.connection.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.replay > 0 {
            let from = PREFACE.len() - self.replay;
            let n = self.replay.min(buf.remaining());
            buf.put_slice(&PREFACE[from..from + n]);
            self.replay -= n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
