//! The `baton` CLI as users run it, against real `baton serve` processes on both backends:
//! the forms of `--addr`, `--output`, errors as JSON, the exit codes, completions, and
//! `tail` resuming across a killed or draining server.

use crate::helpers::*;
use baton::process::{ServeProcess, Signal};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The binary under test: the server and the CLI.
const BIN: &str = env!("CARGO_BIN_EXE_baton");
/// Longest wait for any one thing a CLI process does (a line, an exit).
const PATIENCE: Duration = Duration::from_secs(30);

/// `baton serve` on `listen` (port 0: any), off the runtime's threads while it starts.
async fn serve(url: &str, listen: SocketAddr) -> ServeProcess {
    serve_with(url, listen, vec![]).await
}

/// [`serve`] with more flags.
async fn serve_with(url: &str, listen: SocketAddr, extra: Vec<String>) -> ServeProcess {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        ServeProcess::spawn_at(Path::new(BIN), listen, &url, &extra)
    })
    .await
    .unwrap()
    .expect("baton serves")
}

/// What one CLI run did.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// stdout as one JSON document per line.
    #[track_caller]
    fn json_lines(&self) -> Vec<Value> {
        json_lines(&self.stdout)
    }

    /// stderr as exactly one JSON object `{"error": {…}}`; returns the inner object.
    #[track_caller]
    fn json_error(&self) -> Value {
        let lines = json_lines(&self.stderr);
        assert_eq!(lines.len(), 1, "one JSON error on stderr: {self:?}");
        lines[0]["error"].clone()
    }

    /// stderr as exactly one line `error: …`.
    #[track_caller]
    fn error_line(&self) -> &str {
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:?}");
        assert!(lines[0].starts_with("error: "), "{self:?}");
        lines[0]
    }
}

#[track_caller]
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// Runs `baton ARGS…` to its end (stdin closed), within [`PATIENCE`].
async fn baton(args: &[&str]) -> Ran {
    let run = Command::new(BIN)
        .args(args)
        .env_remove("BATON_ADDR")
        .env_remove("BATON_NAMESPACE")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .unwrap_or_else(|_| panic!("baton {args:?} did not finish within {PATIENCE:?}"))
        .expect("run baton");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// Client commands against one server, in namespace [`NS`], with `--addr` as given.
struct Cli {
    addr: String,
}

impl Cli {
    /// Runs `baton ARGS… --addr ADDR --namespace test`.
    async fn run(&self, args: &[&str]) -> Ran {
        let mut all = args.to_vec();
        all.extend(["--addr", &self.addr, "--namespace", NS]);
        baton(&all).await
    }

    /// [`Cli::run`], asserting exit 0.
    async fn ok(&self, args: &[&str]) -> Ran {
        let ran = self.run(args).await;
        assert_eq!(ran.code, Some(0), "baton {args:?}: {ran:?}");
        ran
    }

    /// Starts `baton ARGS… --addr … --namespace test`, stdout read line by line.
    fn spawn(&self, args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .args(["--addr", &self.addr, "--namespace", NS])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn baton");
        let (tx, lines) = mpsc::unbounded_channel();
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running { child, lines }
    }
}

/// A CLI process still running: its stdout lines as they come.
struct Running {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Running {
    /// The next stdout line, waiting up to [`PATIENCE`].
    async fn line(&mut self) -> String {
        tokio::time::timeout(PATIENCE, self.lines.recv())
            .await
            .expect("a line in time")
            .expect("a line before the end of stdout")
    }

    /// Waits for the exit; the remaining stdout lines and all of stderr.
    async fn finish(mut self) -> (Option<i32>, Vec<String>, String) {
        let mut stderr = String::new();
        let mut pipe = self.child.stderr.take().unwrap();
        let status = tokio::time::timeout(PATIENCE, async {
            pipe.read_to_string(&mut stderr).await.unwrap();
            self.child.wait().await.unwrap()
        })
        .await
        .expect("baton exits in time");
        let mut rest = vec![];
        while let Some(l) = self.lines.recv().await {
            rest.push(l);
        }
        (status.code(), rest, stderr)
    }
}

/// The examples' machines applied through the CLI.
async fn apply_machines(cli: &Cli) {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/machines.toml");
    let ran = cli.ok(&["machine", "apply", examples]).await;
    let table: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(
        table[0].split_whitespace().collect::<Vec<_>>(),
        ["KIND", "VERSION", "CHANGED"]
    );
    assert_eq!(table.len(), 1 + example_machines().len(), "{table:?}");
}

/// One session with the CLI: an address without a scheme, tables, JSON output, errors as
/// one line or one JSON object with their exit codes, and `tail` of a finished entity.
async fn the_cli_over_a_real_server(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = serve(&db.url, SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let cli = Cli {
        addr: server.addr().to_string(), // 127.0.0.1:PORT, no scheme
    };
    apply_machines(&cli).await;

    let created = cli
        .ok(&["entity", "create", "task", "--id", "t-1", "--output", "json"])
        .await;
    let created = &created.json_lines()[0];
    assert_eq!(created["created"], true);
    assert_eq!(created["entity"]["state"], "pending");
    let http = Cli {
        addr: server.url(), // http://127.0.0.1:PORT
    };
    http.ok(&["entity", "create", "task", "--id", "t-2"]).await;
    let list = cli.ok(&["entity", "list", "task"]).await;
    let rows: Vec<Vec<&str>> = list.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows[0],
        ["ID", "KIND", "STATE", "VERSION", "LAST_SEQ", "SEALED", "FIELDS"]
    );
    assert_eq!(
        rows[1..],
        [
            ["t-1", "task", "pending", "1", "0", "no"],
            ["t-2", "task", "pending", "1", "0", "no"]
        ]
    );
    let listed = cli.ok(&["entity", "list", "task", "--json"]).await.json_lines();
    assert_eq!(listed.len(), 1, "one JSON document");
    assert_eq!(listed[0]["entities"].as_array().map(Vec::len), Some(2));

    // A refusal: exit 1, nothing on stdout, one line (or one JSON object) on stderr.
    let refused = cli.run(&["entity", "transition", "t-1", "succeed"]).await;
    assert_eq!((refused.code, refused.stdout.as_str()), (Some(1), ""), "{refused:?}");
    assert!(
        refused
            .error_line()
            .starts_with("error: FailedPrecondition INVALID_TRANSITION: "),
        "{refused:?}"
    );
    for json in ["--json", "--output=json"] {
        let refused = cli.run(&["entity", "transition", "t-1", "succeed", json]).await;
        assert_eq!((refused.code, refused.stdout.as_str()), (Some(1), ""), "{refused:?}");
        let error = refused.json_error();
        assert_eq!(error["code"], "FailedPrecondition");
        assert_eq!(error["reason"], "INVALID_TRANSITION");
        assert_eq!(error["metadata"]["current_state"], "pending");
        assert!(
            error["message"].as_str().is_some_and(|m| m.contains("succeed")),
            "{error}"
        );
    }
    let missing = cli.run(&["entity", "get", "nope", "--output", "json"]).await;
    assert_eq!(missing.code, Some(1));
    assert_eq!(missing.json_error()["reason"], "ENTITY_NOT_FOUND");
    let conflict = cli.run(&["entity", "get", "t-1", "--json", "--output", "table"]).await;
    assert_eq!(conflict.code, Some(2), "--json and --output do not mix: {conflict:?}");

    // `lease acquire` keeps exit 3 for a held lease, in JSON too.
    cli.ok(&["lease", "acquire", "k", "--holder", "a"]).await;
    let busy = cli.run(&["lease", "acquire", "k", "--holder", "b", "--json"]).await;
    assert_eq!(busy.code, Some(3), "{busy:?}");
    assert_eq!(busy.json_lines()[0]["acquired"], false);

    // The tape of a finished entity, then exit 0.
    cli.ok(&["entity", "transition", "t-1", "start"]).await;
    cli.ok(&[
        "events",
        "append",
        "t-1",
        "--event",
        "progress=1",
        "--event",
        "progress=2",
    ])
    .await;
    cli.ok(&["entity", "transition", "t-1", "succeed", "--final-payload", "done"])
        .await;
    let tape = cli.ok(&["tail", "t-1", "--output", "json"]).await.json_lines();
    assert_tape(&tape, 0, 5);
    assert_eq!(tape[4]["payload"], "done");
    let human = cli.ok(&["tail", "t-1"]).await;
    assert_eq!(human.stdout.lines().count(), 5, "{human:?}");
    assert!(human.stdout.lines().last().unwrap().contains("final"), "{human:?}");
    let rest = cli.ok(&["tail", "t-1", "--after", "3", "--json"]).await.json_lines();
    assert_tape(&rest, 3, 5);
    // A baton answer is not retried: this ends at once, without a resume.
    let gone = cli.run(&["tail", "nope"]).await;
    assert_eq!(gone.code, Some(1));
    assert!(gone.error_line().contains("ENTITY_NOT_FOUND"), "{gone:?}");
}

/// `lines` are the events `after+1..=last` in order, each once, the last one `final`.
#[track_caller]
fn assert_tape(lines: &[Value], after: u64, last: u64) {
    let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (after + 1..=last).collect::<Vec<_>>(), "{lines:?}");
    let finals: Vec<usize> = (0..lines.len()).filter(|&i| lines[i]["type"] == "final").collect();
    assert_eq!(finals, [lines.len() - 1], "one final, last: {lines:?}");
}

/// Addresses that cannot work are usage errors (exit 2, one line naming `--addr`) before
/// any connection; so are TLS files with an http:// address.
#[tokio::test]
async fn addresses_that_cannot_work_are_usage_errors_before_any_connection() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let http = format!("http://127.0.0.1:{port}");
    let ran = baton(&["entity", "get", "x", "--addr", &http, "--ca-file", "ca.pem"]).await;
    assert_eq!(ran.code, Some(2), "{ran:?}");
    assert!(ran.error_line().contains("need an https:// address"), "{ran:?}");
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the CLI connected: {accepted:?}"
    );

    let long = format!("ftp://{}:1/", "h".repeat(300));
    for (addr, why) in [
        ("ftp://127.0.0.1:1", "unsupported scheme"),
        ("127.0.0.1", "missing port"),
        ("http://:1", "empty host"),
        ("127.0.0.1:70000", "invalid port"),
        (long.as_str(), "…\": unsupported scheme"),
    ] {
        let ran = baton(&["lease", "get", "k", "--addr", addr]).await;
        assert_eq!(ran.code, Some(2), "{addr}: {ran:?}");
        let line = ran.error_line();
        assert!(
            line.starts_with("error: --addr \"") && line.contains(why),
            "{addr}: {line}"
        );
        assert!(line.len() < 200, "long values are quoted short: {line}");
    }
}

/// `baton completions SHELL` prints a script for each shell clap_complete knows.
#[tokio::test]
async fn completions_print_a_script_per_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let ran = baton(&["completions", shell]).await;
        assert_eq!(ran.code, Some(0), "{shell}: {ran:?}");
        assert!(ran.stdout.contains("baton") && ran.stdout.contains("tail"), "{shell}");
        assert!(ran.stdout.contains("give-up-after"), "{shell}: every flag completes");
    }
    assert_eq!(baton(&["completions", "tcsh"]).await.code, Some(2));
}

/// `tail` resumes across a server that dies (SIGKILL) or drains (SIGTERM) and comes back
/// on the same address: every event once, in order, no gap, exit 0 right after `final`.
/// Beside it, `tail --no-resume` ends with exit 1 at the break.
async fn tail_resumes_across_a_restart(backend: Backend, signal: Signal) {
    let db = TestDb::new(backend).await;
    let mut first = serve(&db.url, SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let cli = Cli {
        addr: first.addr().to_string(),
    };
    apply_machines(&cli).await;
    cli.ok(&["entity", "create", "task", "--id", "t"]).await;
    cli.ok(&["entity", "transition", "t", "start"]).await;
    for i in 0..5 {
        cli.ok(&["events", "append", "t", "--event", &format!("progress={i}")])
            .await;
    }
    let mut tail = cli.spawn(&["tail", "t", "--output", "json"]);
    let mut once = cli.spawn(&["tail", "t", "--no-resume"]);
    let mut before = vec![];
    for _ in 0..6 {
        before.push(tail.line().await);
        once.line().await;
    }

    first.signal(signal).unwrap();
    first.wait_exit(PATIENCE).unwrap();
    let (code, _, stderr) = once.finish().await;
    assert_eq!(code, Some(1), "--no-resume ends at the break: {stderr}");
    assert!(stderr.starts_with("error: ") && stderr.lines().count() == 1, "{stderr}");
    if signal == Signal::Term {
        assert!(stderr.contains("SHUTTING_DOWN"), "{stderr}");
    }

    let second = serve(&db.url, first.addr()).await;
    for i in 5..8 {
        cli.ok(&["events", "append", "t", "--event", &format!("progress={i}")])
            .await;
    }
    cli.ok(&["entity", "transition", "t", "succeed"]).await;
    let (code, after, stderr) = tail.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines = json_lines(&[before, after].concat().join("\n"));
    assert_tape(&lines, 0, 1 + 8 + 2);
    let notes = json_lines(&stderr);
    assert!(
        !notes.is_empty() && notes.iter().all(|n| n["resuming"]["after_seq"] == 6),
        "each resume said, as JSON, after the last seq printed: {stderr}"
    );
    drop(second);
}

async fn tail_resumes_after_sigkill(backend: Backend) {
    tail_resumes_across_a_restart(backend, Signal::Kill).await
}

async fn tail_resumes_after_a_drain(backend: Backend) {
    tail_resumes_across_a_restart(backend, Signal::Term).await
}

/// `baton admin …`: live leases by prefix in pages, a force-release that fences the holder
/// out, the machines table, and delete (refused on an active entity without --force).
async fn the_admin_commands(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = serve(&db.url, SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let cli = Cli {
        addr: server.addr().to_string(),
    };
    apply_machines(&cli).await;
    for key in ["run/1", "run/2", "other"] {
        cli.ok(&["lease", "acquire", key, "--holder", "w-1"]).await;
    }
    let page = cli
        .ok(&["admin", "leases", "--prefix", "run/", "--page-size", "1", "--json"])
        .await
        .json_lines();
    assert_eq!(page[0]["leases"][0]["key"], "run/1");
    let token = page[0]["next_page_token"].as_str().unwrap().to_string();
    let table = cli
        .ok(&["admin", "leases", "--prefix", "run/", "--page-token", &token])
        .await;
    let rows: Vec<Vec<&str>> = table.stdout.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["KEY", "HOLDER", "TOKEN", "EXPIRES_AT"]);
    assert_eq!(rows[1][..3], ["run/2", "w-1", "1"]);
    assert_eq!(rows.len(), 2, "{rows:?}");

    let ended = cli
        .ok(&["admin", "force-release", "run/1", "--by", "ops:alice", "--json"])
        .await
        .json_lines();
    assert_eq!(
        (&ended[0]["released"], &ended[0]["lease"]["token"]),
        (&true.into(), &1.into())
    );
    cli.ok(&["entity", "create", "task", "--id", "t-1"]).await;
    let fenced = cli
        .run(&["entity", "transition", "t-1", "start", "--fence", "run/1:1"])
        .await;
    assert_eq!(fenced.code, Some(1));
    assert!(fenced.error_line().contains("LEASE_LOST"), "{fenced:?}");

    let machines = cli.ok(&["admin", "machines"]).await;
    let kinds: Vec<&str> = machines
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(kinds, ["agent_session", "review_run", "task", "workflow_run"]);

    let active = cli.run(&["admin", "delete", "t-1", "--json"]).await;
    assert_eq!(active.code, Some(1));
    assert_eq!(active.json_error()["reason"], "ENTITY_ACTIVE");
    cli.ok(&["admin", "delete", "t-1", "--force"]).await;
    let gone = cli.run(&["entity", "get", "t-1", "--json"]).await;
    assert_eq!(gone.json_error()["reason"], "ENTITY_NOT_FOUND");
}

/// The CLI against a server with TLS and tokens: `https://` with `--ca-file` and
/// `--auth-token` (or `BATON_TOKEN`) works; no token is UNAUTHENTICATED; a client certificate
/// (`--cert-file`, `--key-file`) stands for its caller; plaintext to the TLS port fails
/// cleanly, never hangs.
async fn the_cli_over_tls_with_tokens(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pki = crate::auth::Pki::new();
    let secret = baton::auth::grants::new_secret().unwrap();
    let tokens = crate::auth::entry("ops", &secret, "admin", &[NS], None)
        + "[[identity]]\nsubject = \"worker-1\"\nrole = \"write\"\nnamespaces = [\"test\"]\n";
    std::fs::write(pki.path("tokens.toml"), tokens).unwrap();
    std::fs::write(pki.path("client.pem"), &pki.client.0).unwrap();
    std::fs::write(pki.path("client.key"), &pki.client.1).unwrap();
    let path = |n: &str| pki.path(n).display().to_string();
    let extra = [
        "--tls-cert".to_string(),
        path("server.pem"),
        "--tls-key".into(),
        path("server.key"),
        "--tls-client-ca".into(),
        path("ca.pem"),
        "--auth-tokens".into(),
        path("tokens.toml"),
    ];
    let server = serve_with(&db.url, SocketAddr::from(([127, 0, 0, 1], 0)), extra.to_vec()).await;
    let https = format!("https://localhost:{}", server.addr().port());
    let cli = Cli { addr: https.clone() };
    let ca = path("ca.pem");
    // mTLS: the client certificate is required; with it and a token, the token's caller.
    let with_cert = [
        "--ca-file",
        &ca,
        "--cert-file",
        &path("client.pem"),
        "--key-file",
        &path("client.key"),
    ];
    let apply = [
        &[
            "machine",
            "apply",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/machines.toml"),
            "--auth-token",
            &secret,
        ][..],
        &with_cert,
    ]
    .concat();
    cli.ok(&apply).await;
    // The certificate alone: worker-1 writes.
    let create = [&["entity", "create", "task", "--id", "t-1", "--json"][..], &with_cert].concat();
    assert_eq!(cli.ok(&create).await.json_lines()[0]["created"], true);
    // worker-1 is no admin.
    let denied = cli
        .run(&[&["admin", "machines", "--json"][..], &with_cert].concat())
        .await;
    assert_eq!(denied.code, Some(1), "{denied:?}");
    assert_eq!(denied.json_error()["reason"], "PERMISSION_DENIED");
    // Without a client certificate the TLS handshake fails: an error, not a hang.
    let no_cert = cli
        .run(&["entity", "get", "t-1", "--ca-file", &ca, "--auth-token", &secret])
        .await;
    assert_eq!(no_cert.code, Some(1), "{no_cert:?}");
    // Plaintext to the TLS port fails cleanly.
    let plain = Cli {
        addr: format!("http://127.0.0.1:{}", server.addr().port()),
    };
    let ran = plain.run(&["entity", "get", "t-1"]).await;
    assert_eq!(ran.code, Some(1), "{ran:?}");
    drop(server);

    // Tokens without mTLS, on a second server.
    let extra = [
        "--tls-cert".to_string(),
        path("server.pem"),
        "--tls-key".into(),
        path("server.key"),
        "--auth-tokens".into(),
        path("tokens.toml"),
    ];
    let server = serve_with(&db.url, SocketAddr::from(([127, 0, 0, 1], 0)), extra.to_vec()).await;
    let cli = Cli {
        addr: format!("https://localhost:{}", server.addr().port()),
    };
    let got = cli
        .ok(&[
            "entity",
            "get",
            "t-1",
            "--ca-file",
            &ca,
            "--auth-token",
            &secret,
            "--json",
        ])
        .await;
    assert_eq!(got.json_lines()[0]["entity"]["state"], "pending");
    let anonymous = cli.run(&["entity", "get", "t-1", "--ca-file", &ca, "--json"]).await;
    assert_eq!(anonymous.code, Some(1));
    assert_eq!(anonymous.json_error()["reason"], "UNAUTHENTICATED");
    // Without --ca-file the system's CAs do not know the test CA.
    let untrusted = cli.run(&["entity", "get", "t-1", "--auth-token", &secret]).await;
    assert_eq!(untrusted.code, Some(1), "{untrusted:?}");
}

crate::both_backends!(
    the_cli_over_tls_with_tokens,
    the_admin_commands,
    the_cli_over_a_real_server,
    tail_resumes_after_sigkill,
    tail_resumes_after_a_drain
);
