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
        max_connections: Some(2),
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

/// Asserts a new connection to `baton` is served, and hears health turn (or stay) SERVING
/// within 20 s: through `Watch`, so a database that was out of reach while descriptors ran
/// out (Postgres) is waited for, not polled.
async fn new_connections_are_served(baton: &ServeProcess) {
    let fresh = Channel::from_shared(baton.url()).unwrap().connect_lazy();
    let serving = async {
        let mut health = HealthClient::new(fresh);
        let request = HealthCheckRequest { service: String::new() };
        let mut changes = health
            .watch(request)
            .await
            .expect("a new connection is served")
            .into_inner();
        while let Some(status) = changes.message().await.expect("health watch") {
            if status.status == ServingStatus::Serving as i32 {
                return;
            }
        }
        panic!("health watch ended");
    };
    tokio::time::timeout(Duration::from_secs(20), serving)
        .await
        .expect("SERVING within 20 s");
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

/// Out of file descriptors all the same (here with `--max-connections` set above what the
/// open-files limit allows, and 300 idle connections): the accept loop logs it once and
/// backs off instead of spinning a core, health keeps answering on a connection the server
/// has, and once descriptors are free again new connections are served.
async fn out_of_fds_the_accept_loop_backs_off(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let baton = spawn_with_fd_limit(dir.path(), 256, &db.url, &["--max-connections", "4096"]);
    log_line(&baton, "max connections leave the database too few file descriptors");
    let health = Channel::from_shared(baton.url()).unwrap().connect().await.unwrap();
    let idle = idle_connections(baton.addr(), 300).await;
    assert_eq!(idle.len(), 300);
    log_line(&baton, "cannot accept connections");
    // Still out of descriptors (the idle sockets have 10 s to send a preface): a second of
    // watching (not of waiting for anything) shows a spinning accept loop as about a second
    // of CPU.
    health_answers_until(&baton, &health, false, tokio::time::sleep(Duration::from_secs(1))).await;
    drop(idle);
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

/// A client on its own connection that lets the server send at most 64 KiB ahead of what it
/// reads (HTTP/2's smallest window), so a stream it does not read backs up in the server.
async fn small_window_client(url: String) -> Client {
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    Client::new(channel)
}

/// An AppendEvents of `n` events of 60 KiB on `id`.
fn large_events(id: &str, n: usize) -> baton::proto::AppendEventsRequest {
    baton::proto::AppendEventsRequest {
        namespace: NS.into(),
        entity_id: id.into(),
        events: (0..n)
            .map(|i| baton::proto::EventInput {
                r#type: "chunk".into(),
                payload: vec![i as u8; 60 * 1024],
                content_type: String::new(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Opens `n` streams of `id` from the start on clients of their own that never read them.
async fn stalled_streams(url: &str, id: &str, n: usize) -> Vec<tonic::Streaming<baton::proto::StreamEventsResponse>> {
    let mut stalled = vec![];
    for _ in 0..n {
        let mut client = small_window_client(url.to_string()).await;
        let request = baton::proto::StreamEventsRequest {
            namespace: NS.into(),
            entity_id: id.into(),
            after_seq: 0,
        };
        stalled.push(client.stream_events(request).await.unwrap().into_inner());
    }
    stalled
}

/// Streams whose clients do not read, with more queued than the replica may hold: the
/// furthest behind are cut off with RESOURCE_EXHAUSTED and the `last_seq` they were handed
/// (resuming from it gives the rest of the tape), while a client that reads gets every
/// event to `final`.
async fn stalled_streams_are_cut_off_with_last_seq(backend: Backend) {
    let db = TestDb::new(backend).await;
    let settings = baton::app::Settings {
        stream_buffer: 256 << 10,
        stream_memory: 2 << 20,
        ..test_settings(&db.url)
    };
    let app = TestApp::start_with(settings, Clock::system()).await;
    let mut c = app.client().await;
    define_examples_with(&mut c, NS).await;
    create(&mut c, "task", "big").await;
    transition(&mut c, "big", "start").await;
    let stalled = stalled_streams(&format!("http://{}", app.addr), "big", 8).await;
    // A client that reads; on a loaded machine it may itself fall furthest behind and be cut
    // off, and then it does what a client should: resume from `last_seq`.
    let reader = tokio::spawn({
        let mut c = c.clone();
        async move {
            let mut all: Vec<baton::proto::Event> = vec![];
            loop {
                let after = all.last().map_or(0, |e| e.seq);
                let (got, end) = collect_stream(&mut c, "big", after).await;
                all.extend(got);
                match end {
                    Err(s) if reason(&s) == "STREAM_BEHIND" => continue,
                    end => return (all, end),
                }
            }
        }
    });
    for _ in 0..8 {
        c.append_events(large_events("big", 5)).await.unwrap();
    }
    transition(&mut c, "big", "succeed").await;
    let (all, end) = reader.await.unwrap();
    end.expect("the reading client's stream ends OK");
    assert_complete(&all, 0);
    assert_eq!(all.len(), 2 + 40 + 1);
    let mut cut = 0;
    for mut stream in stalled {
        let mut got = vec![];
        let end = loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    if let Some(baton::proto::stream_events_response::Item::Event(e)) = m.item {
                        got.push(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(s) => break Err(s),
            }
        };
        if let Err(s) = end {
            cut += 1;
            assert_eq!(
                (s.code(), reason(&s).as_str()),
                (tonic::Code::ResourceExhausted, "STREAM_BEHIND"),
                "{s:?}"
            );
            let last = meta(&s, "last_seq").unwrap().parse::<u64>().unwrap();
            assert_eq!(
                last,
                got.last().map_or(0, |e| e.seq),
                "last_seq is the last event handed over"
            );
            let (rest, end) = collect_stream(&mut c, "big", last).await;
            end.unwrap();
            got.extend(rest);
        }
        assert_complete(&got, 0);
    }
    // Each stalled stream queues 4 events (246 KiB, under its 256 KiB); 8 such queues
    // (1.97 MB) do not fit in the 1.5 MiB streams get, and each cut frees at most one queue.
    assert!(cut >= 2, "{cut} streams were cut off");
}

crate::both_backends!(stalled_streams_are_cut_off_with_last_seq);

/// A line of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`: the peak).
fn memory(pid: u32, what: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(what)).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Memory: 16 streams whose clients never read, on a tape that grows by about 100 MiB of
/// large events. The server's peak resident memory grows by less than `--stream-memory`
/// (32 MiB here) plus half a MiB per stream (HTTP/2 send buffers) and the write path's own
/// 8 MiB batch — where the probe saw about 260 MiB for one entity.
async fn stalled_readers_stay_under_the_memory_bound(backend: Backend) {
    let db = TestDb::new(backend).await;
    let baton = ServeProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_baton")),
        &db.url,
        &["--stream-memory", "32MiB", "--stream-buffer", "1MiB"],
    )
    .expect("baton serves");
    let mut c = Client::new(Channel::from_shared(baton.url()).unwrap().connect().await.unwrap());
    define_examples_with(&mut c, NS).await;
    create(&mut c, "task", "big").await;
    transition(&mut c, "big", "start").await;
    c.append_events(large_events("big", 16)).await.unwrap();
    let stalled = stalled_streams(&baton.url(), "big", 16).await;
    let reader = tokio::spawn({
        let mut c = c.clone();
        async move { collect_stream(&mut c, "big", 0).await }
    });
    let before = memory(baton.pid(), "VmHWM");
    for _ in 0..100 {
        c.append_events(large_events("big", 16)).await.unwrap();
    }
    transition(&mut c, "big", "succeed").await;
    let (all, end) = reader.await.unwrap();
    end.unwrap();
    assert_eq!(all.len(), 2 + 101 * 16 + 1);
    let grown = memory(baton.pid(), "VmHWM") - before;
    let bound = (32 << 20) + 16 * (512 << 10) + (8 << 20);
    eprintln!("peak RSS grew by {} MiB (bound {} MiB)", grown >> 20, bound >> 20);
    assert!(grown < bound, "peak RSS grew by {grown} bytes, over {bound}");
    drop(stalled);
}

crate::both_backends!(stalled_readers_stay_under_the_memory_bound);
