//! A TCP proxy between a replica and Postgres, to cut or slow the network between them:
//! `Pass` forwards, `Delay(d)` holds every chunk d before forwarding it (a delay line, so
//! throughput is not cut), `Partition` forwards nothing and holds what arrives until the
//! partition heals (as dropped packets would be retransmitted then). Loopback only.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    Partition,
}

/// A running proxy; stops (and drops every connection) when dropped.
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().unwrap();
        let (mode, watch) = watch::channel(Mode::Pass);
        let accept = tokio::spawn(async move {
            let mut pipes = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let _ = client.set_nodelay(true);
                pipes.spawn(connection(client, upstream, watch.clone()));
            }
        });
        Self { addr, mode, accept }
    }

    /// Where replicas connect instead of Postgres.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what happens to traffic, for open and new connections alike.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every pipe.
        self.accept.abort();
    }
}

async fn connection(client: TcpStream, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    let mut gate = mode.clone();
    // A partitioned replica cannot even connect.
    if gate.wait_for(|m| *m != Mode::Partition).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pipe(cr, sw, mode.clone()));
    let down = tokio::spawn(pipe(sr, cw, mode));
    // Either side closing ends the connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

/// One direction: a reader that stamps each chunk with when it may leave, and a writer that
/// sends it then, in order.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let (line, mut queued) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((at, bytes)) = queued.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                // Across a partition even the close does not get through.
                let _ = mode.wait_for(|m| *m != Mode::Partition).await;
                break;
            }
            Ok(n) => n,
        };
        // Partitioned: hold the bytes until the partition heals.
        let current = match mode.wait_for(|m| *m != Mode::Partition).await {
            Ok(m) => *m,
            Err(_) => break,
        };
        let delay = match current {
            Mode::Delay(d) => d,
            _ => Duration::ZERO,
        };
        if line.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
            break;
        }
    }
    drop(line);
    let _ = writer.await;
}
