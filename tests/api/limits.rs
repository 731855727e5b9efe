//! Bounded resources (issue 13): connections, streams per connection, handshakes, and what
//! happens when the process runs out of file descriptors.

use crate::helpers::*;
use baton::domain::time::Clock;
use baton::process::ServeProcess;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

/// A health check on `channel`, answered SERVING within `deadline`.
async fn serving(channel: Channel, deadline: Duration) -> bool {
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest { service: String::new() });
    matches!(
        tokio::time::timeout(deadline, check).await,
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
    )
}

/// The server announces its cap on concurrent streams per connection (the probe opened
/// 5,000 on one connection): read off a bare HTTP/2 connection's settings.
async fn streams_per_connection_are_capped(backend: Backend) {
    let db = TestDb::new(backend).await;
    let settings = baton::app::Settings {
        max_streams_per_connection: 7,
        ..test_settings(&db.url)
    };
    let app = TestApp::start_with(settings, Clock::system()).await;
    let tcp = TcpStream::connect(app.addr).await.unwrap();
    let (mut send, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let request = http::Request::post(format!("http://{}/grpc.health.v1.Health/Check", app.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = send.send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    // The server's SETTINGS frame is the first it sends: by its answer, it has arrived.
    let response = tokio::select! {
        r = response => r.unwrap(),
        end = &mut conn => panic!("connection ended: {end:?}"),
    };
    assert_eq!(response.status(), 200);
    assert_eq!(conn.max_concurrent_send_streams(), 7);
}

/// A connection that sends nothing is closed after the handshake timeout, and one that sends
/// something other than HTTP/2 at once; neither holds a slot. With every slot taken by
/// silent sockets, a real client waits until one is closed.
async fn silent_connections_are_closed_and_counted(backend: Backend) {
    let db = TestDb::new(backend).await;
    let settings = baton::app::Settings {
        max_connections: 2,
        handshake_timeout: Duration::from_millis(1500),
        ..test_settings(&db.url)
    };
    let app = TestApp::start_with(settings, Clock::system()).await;
    let mut junk = TcpStream::connect(app.addr).await.unwrap();
    junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let closed = junk.read(&mut [0; 64]).await;
    assert!(matches!(closed, Ok(0) | Err(_)), "not HTTP/2: closed, got {closed:?}");
    let started = Instant::now();
    let mut silent = [
        TcpStream::connect(app.addr).await.unwrap(),
        TcpStream::connect(app.addr).await.unwrap(),
    ];
    let channel = Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect_lazy();
    // Both slots are held: the client is not served while they are (a bounded look, well
    // inside the handshake timeout).
    assert!(
        !serving(channel.clone(), Duration::from_millis(300)).await,
        "a third connection was served"
    );
    for s in &mut silent {
        assert_eq!(s.read(&mut [0; 64]).await.unwrap_or(0), 0, "a silent socket is closed");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        serving(channel, Duration::from_secs(10)).await,
        "served once a slot is free"
    );
}

crate::both_backends!(
    streams_per_connection_are_capped,
    silent_connections_are_closed_and_counted
);

/// User and system CPU time of a process, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the name and state.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// `baton serve` with at most `nofile` file descriptors (a shell that lowers its limit and
/// execs the binary, so the pid is the server's).
pub fn spawn_with_fd_limit(dir: &Path, nofile: u32, database_url: &str, extra: &[&str]) -> ServeProcess {
    let script = dir.join("baton-limited");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nulimit -n {nofile} || exit 1\nexec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_baton")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    ServeProcess::spawn(&script, database_url, extra).expect("baton serves")
}

/// Asserts health answers on `channel` (SERVING when `serving_too`), every 100 ms (paced,
/// so the checks themselves cost little), until `until` resolves, and that the server used
/// less than a quarter of a core meanwhile (a busy loop would use all of one); returns how
/// long that was.
async fn health_answers_until(
    baton: &ServeProcess,
    channel: &Channel,
    serving_too: bool,
    until: impl Future<Output = ()>,
) -> Duration {
    let (cpu_before, started) = (cpu_ticks(baton.pid()), Instant::now());
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => break,
            _ = pace.tick() => {
                let mut health = HealthClient::new(channel.clone());
                let check = health.check(HealthCheckRequest { service: String::new() });
                let answer = tokio::time::timeout(Duration::from_secs(2), check).await;
                let answer = answer.expect("health answers").expect("health answers OK");
                if serving_too {
                    assert_eq!(answer.get_ref().status, ServingStatus::Serving as i32);
                }
            }
        }
    }
    let (waited, cpu) = (started.elapsed(), (cpu_ticks(baton.pid()) - cpu_before) * 10);
    // Ticks are 10 ms.
    assert!(Duration::from_millis(cpu) < waited / 4, "{cpu} ms of CPU in {waited:?}");
    waited
}

/// The next line `baton` logs that contains `what` (within 10 s).
fn log_line(baton: &ServeProcess, what: &str) -> String {
    tokio::task::block_in_place(|| baton.wait_for_log(Duration::from_secs(10), |l| l.contains(what)))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Asserts a new connection to `baton` is served (SERVING) within 20 s.
async fn new_connections_are_served(baton: &ServeProcess) {
    let fresh = Channel::from_shared(baton.url()).unwrap().connect_lazy();
    assert!(
        serving(fresh, Duration::from_secs(20)).await,
        "a new connection is served"
    );
}

/// Idle TCP connections to `addr`, each given 10 s to connect.
async fn idle_connections(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let connects = (0..n).map(|_| async move {
        tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .ok()
            .and_then(Result::ok)
    });
    futures::future::join_all(connects)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Resolves once one of `sockets` is closed by the other side.
async fn first_closed(sockets: &mut [TcpStream]) {
    let reads = sockets
        .iter_mut()
        .map(|s| Box::pin(async move { s.read(&mut [0; 8]).await }));
    let _ = futures::future::select_all(reads).await;
}

/// 2,000 idle connections against a server limited to 256 file descriptors: the server
/// lowers its connection cap so that clients leave descriptors to its database, keeps
/// answering health SERVING on a connection it has without spinning a core, closes idle
/// sockets after the handshake timeout, and serves a new connection once they are gone.
async fn idle_connections_against_a_low_fd_limit_leave_health_answering(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let baton = spawn_with_fd_limit(dir.path(), 256, &db.url, &["--handshake-timeout", "2s"]);
    log_line(&baton, "max connections lowered");
    let health = Channel::from_shared(baton.url()).unwrap().connect().await.unwrap();
    let mut idle = idle_connections(baton.addr(), 2000).await;
    assert_eq!(idle.len(), 2000, "connections made (is net.core.somaxconn below 2048?)");
    let waited = health_answers_until(&baton, &health, true, first_closed(&mut idle)).await;
    assert!(waited >= Duration::from_millis(1500), "closed after {waited:?}");
    drop(idle);
    new_connections_are_served(&baton).await;
    let log = baton.drain_log();
    assert!(!log.iter().any(|l| l.contains("cannot accept")), "{log:?}");
}

/// Out of file descriptors all the same (here taken by idle connections to the admin
/// listener, which the cap does not count): the accept loop logs it once and backs off
/// instead of spinning a core, health keeps answering on a connection the server has, and
/// once descriptors are free again new connections are served.
async fn out_of_fds_the_accept_loop_backs_off(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let baton = spawn_with_fd_limit(dir.path(), 256, &db.url, &["--admin-listen", "127.0.0.1:0"]);
    let admin = baton::process::logged_addr(&log_line(&baton, "admin serving"), "admin serving").unwrap();
    let health = Channel::from_shared(baton.url()).unwrap().connect().await.unwrap();
    let hogs = idle_connections(admin, 300).await;
    let waiting = idle_connections(baton.addr(), 20).await;
    assert_eq!(waiting.len(), 20);
    log_line(&baton, "cannot accept connections");
    // Still out of descriptors: a second of watching (not of waiting for anything) shows a
    // spinning accept loop as about a second of CPU.
    health_answers_until(&baton, &health, false, tokio::time::sleep(Duration::from_secs(1))).await;
    drop(hogs);
    drop(waiting);
    new_connections_are_served(&baton).await;
    let log = baton.drain_log();
    let count = |what: &str| log.iter().filter(|l| l.contains(what)).count();
    assert_eq!(
        count("cannot accept connections"),
        0,
        "logged once per episode: {log:?}"
    );
    assert_eq!(count("accepting connections again"), 1, "{log:?}");
}

crate::both_backends!(
    idle_connections_against_a_low_fd_limit_leave_health_answering,
    out_of_fds_the_accept_loop_backs_off
);
