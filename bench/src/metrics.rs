//! The server's own counts of its write path, read from its admin endpoint (`GET /metrics`,
//! Prometheus text format) before and after each baton cell: database round trips, write
//! batches (transactions of the commit pipeline) and the commands they carried, and the time
//! spent in each phase of the write path (where one call's microseconds go).
//!
//! A plain HTTP/1.1 GET over a `TcpStream` is all a scrape needs, so no HTTP client crate.

use serde::Serialize;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Write transactions of the commit pipeline.
pub const BATCHES: &str = "baton_write_batches_total";
/// Commands those transactions carried.
pub const COMMANDS: &str = "baton_write_commands_total";
/// Database round trips of the write path.
pub const ROUND_TRIPS: &str = "baton_db_round_trips_total";
/// Seconds per phase of the write path (a summary: `_sum` and `_count` per `phase`).
pub const PHASE_SECONDS: &str = "baton_write_phase_seconds";
/// The phases, in the order a command goes through them.
pub const PHASES: [&str; 4] = ["queue", "read", "decide", "commit"];

/// Longest a scrape may take (connect, send, read to the end).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response accepted: a metrics page is a few KiB.
const MAX_RESPONSE: u64 = 4 << 20;

/// Where the metrics are: `http://HOST:PORT/PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `HOST:PORT`, for the connection and the Host header.
    authority: String,
    /// `/metrics` or whatever the URL names.
    path: String,
}

impl Endpoint {
    /// Parses `http://HOST:PORT[/PATH]` (default path `/metrics`); https is not spoken.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("metrics URL {url:?}: only http:// is supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        let has_port = authority
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !has_port {
            return Err(format!("metrics URL {url:?}: needs a host and a port"));
        }
        Ok(Self {
            authority: authority.to_string(),
            path: path.to_string(),
        })
    }

    /// `http://HOST:PORT/PATH`.
    pub fn url(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }

    /// Reads the counters now.
    pub async fn scrape(&self) -> Result<Counters, String> {
        let body = tokio::time::timeout(SCRAPE_TIMEOUT, self.get())
            .await
            .map_err(|_| format!("GET {}: no answer within {SCRAPE_TIMEOUT:?}", self.url()))??;
        Ok(Counters::parse(&body))
    }

    async fn get(&self) -> Result<String, String> {
        let fail = |e: std::io::Error| format!("GET {}: {e}", self.url());
        let mut conn = TcpStream::connect(&self.authority).await.map_err(fail)?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
            self.path, self.authority
        );
        conn.write_all(request.as_bytes()).await.map_err(fail)?;
        let mut raw = vec![];
        (&mut conn)
            .take(MAX_RESPONSE)
            .read_to_end(&mut raw)
            .await
            .map_err(fail)?;
        http_body(&raw).map_err(|e| format!("GET {}: {e}", self.url()))
    }
}

/// The body of a complete HTTP/1.1 response read to the end of the connection: 200 only,
/// chunked or not.
fn http_body(raw: &[u8]) -> Result<String, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers in the response")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("status {status:?}"));
    }
    let header = |name: &str| {
        head.split("\r\n").skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_ascii_lowercase())
        })
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(body)?
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| format!("bad content-length {len:?}"))?;
        body.get(..len)
            .ok_or("response shorter than its content-length")?
            .to_vec()
    } else {
        body.to_vec()
    };
    String::from_utf8(body).map_err(|_| "the body is not UTF-8".into())
}

/// Joins the chunks of a chunked body (extensions and trailers ignored).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = vec![];
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("truncated chunk size")?;
        let line = std::str::from_utf8(&rest[..eol]).map_err(|_| "bad chunk size")?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {hex:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or("truncated chunk")?;
    }
}

/// The sum over every series of `name` in a Prometheus text page; `None` when the page has
/// no sample of that name. Comments, other metrics and lines that do not parse are skipped.
pub fn sum(text: &str, name: &str) -> Option<f64> {
    sum_where(text, name, None)
}

/// [`sum`] over the series of `name` whose label `label.0` is exactly `label.1` (all of them
/// when `label` is `None`).
pub fn sum_where(text: &str, name: &str, label: Option<(&str, &str)>) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if let Some((sample, labels, value)) = sample(line)
            && sample == name
            && label.is_none_or(|(k, v)| has_label(labels, k, v))
        {
            *total.get_or_insert(0.0) += value;
        }
    }
    total
}

/// `(metric name, label set with its braces or "", value)` of one sample line:
/// `name[{labels}] value [timestamp]`.
fn sample(line: &str) -> Option<(&str, &str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = "";
    if rest.starts_with('{') {
        let end = labels_end(rest)?;
        (labels, rest) = rest.split_at(end);
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// Whether a label set (`{k="v",…}`) has `key="value"`, the value written without escapes.
fn has_label(labels: &str, key: &str, value: &str) -> bool {
    let want = format!("{key}=\"{value}\"");
    labels
        .match_indices(&want)
        .any(|(i, _)| matches!(labels[..i].chars().next_back(), Some('{' | ',')))
}

/// The index just past the `}` closing a label set that starts at 0, skipping quoted
/// values (which may hold `}` and escaped quotes).
fn labels_end(s: &str) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices().skip(1) {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (false, _, '"') => quoted = true,
            (false, _, '}') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// One reading of the write-path counters; a counter the page does not have is `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub round_trips: Option<f64>,
    pub batches: Option<f64>,
    pub commands: Option<f64>,
    /// Per phase of [`PHASES`]: seconds in it and times it was timed.
    pub phases: [(Option<f64>, Option<f64>); 4],
    /// CPU seconds the server process has used (from /proc, not the page), when known.
    pub cpu_seconds: Option<f64>,
}

impl Counters {
    /// The counters in a Prometheus text page.
    pub fn parse(text: &str) -> Self {
        Self {
            round_trips: sum(text, ROUND_TRIPS),
            batches: sum(text, BATCHES),
            commands: sum(text, COMMANDS),
            phases: PHASES.map(|p| {
                let label = Some(("phase", p));
                (
                    sum_where(text, &format!("{PHASE_SECONDS}_sum"), label),
                    sum_where(text, &format!("{PHASE_SECONDS}_count"), label),
                )
            }),
            cpu_seconds: None,
        }
    }

    /// What happened between `before` and this reading. A counter missing from either, or
    /// that went down (the server restarted), has no delta.
    pub fn since(&self, before: &Counters) -> ServerCounts {
        let d = |after: Option<f64>, before: Option<f64>| {
            let (a, b) = (after?, before?);
            (a >= b).then_some(a - b)
        };
        ServerCounts {
            round_trips: d(self.round_trips, before.round_trips),
            batches: d(self.batches, before.batches),
            commands: d(self.commands, before.commands),
            cpu_seconds: d(self.cpu_seconds, before.cpu_seconds),
            phase_means: std::array::from_fn(|i| {
                let ((sum, count), (sum0, count0)) = (self.phases[i], before.phases[i]);
                let n = d(count, count0)?;
                (n > 0.0).then_some(Duration::from_secs_f64((d(sum, sum0)? / n).max(0.0)))
            }),
        }
    }
}

/// The server's counts over one cell (after − before).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServerCounts {
    pub round_trips: Option<f64>,
    pub batches: Option<f64>,
    pub commands: Option<f64>,
    /// CPU seconds the server used over the cell, all threads.
    pub cpu_seconds: Option<f64>,
    /// Mean time per phase of [`PHASES`] over the cell: `queue` per command, the others per
    /// batch (a retried batch counts each try). In JSON as `phase_means_us` of the cell.
    #[serde(skip)]
    pub phase_means: [Option<Duration>; 4],
}

impl ServerCounts {
    /// Database round trips per call the bench made in the cell (warm-up and the calls in
    /// flight at the end included); `None` without a count or without calls.
    pub fn round_trips_per_call(&self, calls: u64) -> Option<f64> {
        (calls > 0).then_some(self.round_trips? / calls as f64)
    }

    /// Server CPU per call the bench made, in µs; `None` without a reading or without calls.
    pub fn cpu_per_call_us(&self, calls: u64) -> Option<f64> {
        (calls > 0).then_some(self.cpu_seconds? * 1e6 / calls as f64)
    }

    /// Commands per write batch; `None` without a count or without batches.
    pub fn mean_batch_size(&self) -> Option<f64> {
        let batches = self.batches?;
        (batches > 0.0).then_some(self.commands? / batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const PAGE: &str = r#"# HELP baton_write_batches_total Write transactions of the commit pipeline.
# TYPE baton_write_batches_total counter
baton_write_batches_total{backend="postgres"} 120
baton_write_batches_total{backend="sqlite",note="a } and a \" inside"} 5 1700000000000
baton_write_commands_total 500
baton_write_commands_total_created 1.7e9
baton_db_round_trips_total{kind="write"} 2.5e2
baton_db_round_trips_total{kind="other"} +Inf
  baton_db_round_trips_total_other 7
this line is not a sample
process_resident_memory_bytes 1.2e7
"#;

    #[test]
    fn the_metrics_text_parser_sums_series_and_skips_the_rest() {
        assert_eq!(sum(PAGE, BATCHES), Some(125.0));
        assert_eq!(sum(PAGE, COMMANDS), Some(500.0));
        assert_eq!(sum(PAGE, "baton_db_round_trips_total"), Some(f64::INFINITY));
        assert_eq!(sum(PAGE, "process_resident_memory_bytes"), Some(1.2e7));
        assert_eq!(sum(PAGE, "baton_write"), None);
        assert_eq!(sum(PAGE, "absent_total"), None);
        assert_eq!(sum("", BATCHES), None);
        assert_eq!(sample("x{a=\"unclosed} 1"), None);
        assert_eq!(sample("x{a=\"b\"} 3 17"), Some(("x", "{a=\"b\"}", 3.0)));
        assert_eq!(sample("x NaN").map(|(_, _, v)| v.is_nan()), Some(true));
        assert_eq!(sum_where(PAGE, BATCHES, Some(("backend", "sqlite"))), Some(5.0));
        assert_eq!(sum_where(PAGE, BATCHES, Some(("backend", "postgre"))), None);
        // A key that merely ends like the one asked for is another label.
        assert_eq!(sum_where(PAGE, BATCHES, Some(("kend", "postgres"))), None);
    }

    #[test]
    fn phase_means_come_from_summary_sums_and_counts() {
        let page = |read_sum: f64, read_count: f64| {
            format!(
                "baton_write_phase_seconds{{phase=\"read\",quantile=\"0.5\"}} 9\n\
                 baton_write_phase_seconds_sum{{phase=\"read\"}} {read_sum}\n\
                 baton_write_phase_seconds_count{{phase=\"read\"}} {read_count}\n\
                 baton_write_phase_seconds_sum{{phase=\"commit\"}} 1\n\
                 baton_write_phase_seconds_count{{phase=\"commit\"}} 4\n"
            )
        };
        let d = Counters::parse(&page(0.5, 100.0)).since(&Counters::parse(&page(0.2, 40.0)));
        let [queue, read, decide, commit] = d.phase_means;
        assert_eq!((queue, decide), (None, None), "phases the page lacks have no mean");
        assert_eq!(read.map(|m| m.as_micros()), Some(5000));
        assert_eq!(commit, None, "nothing was timed in the cell: no mean, never 0");
    }

    #[test]
    fn deltas_give_round_trips_per_call_and_batch_size() {
        let before = Counters::parse(
            "baton_db_round_trips_total 100\nbaton_write_batches_total 10\nbaton_write_commands_total 30\n",
        );
        let after = Counters::parse(
            "baton_db_round_trips_total 400\nbaton_write_batches_total 60\nbaton_write_commands_total 230\n",
        );
        let d = after.since(&before);
        assert_eq!(
            d,
            ServerCounts {
                round_trips: Some(300.0),
                batches: Some(50.0),
                commands: Some(200.0),
                cpu_seconds: None,
                phase_means: [None; 4],
            }
        );
        assert_eq!(d.round_trips_per_call(150), Some(2.0));
        assert_eq!(d.round_trips_per_call(0), None);
        assert_eq!(d.mean_batch_size(), Some(4.0));
        // A missing counter, a restart (counter went down), no batches: no figure, never 0.
        let partial = Counters::parse("baton_db_round_trips_total 50\n").since(&before);
        assert_eq!(partial, ServerCounts::default());
        let none = before.since(&before);
        assert_eq!(none.mean_batch_size(), None);
        assert_eq!(none.round_trips_per_call(10), Some(0.0));
    }

    #[test]
    fn endpoints_parse_from_urls() {
        let e = Endpoint::parse("http://127.0.0.1:9090").unwrap();
        assert_eq!(e.url(), "http://127.0.0.1:9090/metrics");
        assert_eq!(
            Endpoint::parse("http://localhost:1/x/metrics").unwrap().url(),
            "http://localhost:1/x/metrics"
        );
        assert!(Endpoint::parse("https://127.0.0.1:9090/metrics").is_err());
        assert!(Endpoint::parse("http://127.0.0.1/metrics").is_err());
        assert!(Endpoint::parse("127.0.0.1:9090").is_err());
    }

    #[test]
    fn bodies_are_read_plain_sized_or_chunked_and_errors_refused() {
        assert_eq!(
            http_body(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\na 1\n").unwrap(),
            "a 1\n"
        );
        assert_eq!(
            http_body(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\na 1\n").unwrap(),
            "a 1"
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\na 1\n\r\nA\r\nb 22222\nc \r\n0\r\n\r\n";
        assert_eq!(http_body(chunked).unwrap(), "a 1\nb 22222\nc ");
        assert!(http_body(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_err());
        assert!(http_body(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab").is_err());
        assert!(http_body(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[tokio::test]
    async fn a_scrape_reads_the_counters_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = vec![];
            let mut buf = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            let body = "baton_db_round_trips_total 9\nbaton_write_batches_total 3\nbaton_write_commands_total 6\n";
            let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            conn.write_all(response.as_bytes()).await.unwrap();
            String::from_utf8(request).unwrap()
        });
        let counters = Endpoint::parse(&format!("http://{addr}/metrics"))
            .unwrap()
            .scrape()
            .await
            .unwrap();
        assert_eq!(
            counters,
            Counters {
                round_trips: Some(9.0),
                batches: Some(3.0),
                commands: Some(6.0),
                phases: [(None, None); 4],
                cpu_seconds: None,
            }
        );
        let request = server.await.unwrap();
        assert!(request.starts_with("GET /metrics HTTP/1.1\r\n"), "{request}");
    }
}
