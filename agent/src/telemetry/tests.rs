//! Encoding round trips, and the shipper against a scripted HTTP stub on
//! 127.0.0.1 (retry classes, Retry-After, headers, auth, logs without secrets).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::loki::{self, LogEntry};
use super::remote_write::{self, Label, Series};
use super::ship::{
    Auth, Endpoint, LOGS_QUEUE, LogShipper, METRICS_QUEUE, MetricsShipper, Pipeline, ShipConfig,
    ShipError, Shipper, StatsSnapshot,
};
use crate::spool::SpoolDb;

const WAIT: Duration = Duration::from_secs(20);

fn series(name: &str, labels: &[(&str, &str)], value: f64, ts: i64) -> Series {
    Series {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        value,
        timestamp_ms: ts,
    }
}

fn label(name: &str, value: &str) -> Label {
    Label {
        name: name.into(),
        value: value.into(),
    }
}

fn entry(labels: &[(&str, &str)], ts: i64, line: &str, meta: &[(&str, &str)]) -> LogEntry {
    LogEntry {
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        timestamp_ns: ts,
        line: line.into(),
        metadata: meta
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    }
}

#[test]
fn remote_write_labels_are_sorted_deduped_and_decode_back() {
    let batch = [
        series(
            "node_cpu",
            &[
                ("host", "h1"),
                ("env", ""),
                ("__name__", "other"),
                ("env", "prod"),
                ("Zone", "z"),
                ("host", "h2"),
                ("", "x"),
            ],
            0.5,
            1_000,
        ),
        series("node_mem", &[("host", "h1")], 2.0, 1_000),
        // Same label set as the first (in another order): same TimeSeries.
        series(
            "node_cpu",
            &[("env", "prod"), ("Zone", "z"), ("host", "h1")],
            0.75,
            2_000,
        ),
    ];
    let bytes = remote_write::encode(&batch).encode_to_vec();
    let decoded = remote_write::WriteRequest::decode(bytes.as_slice()).unwrap();
    assert_eq!(decoded.timeseries.len(), 2);
    let cpu = &decoded.timeseries[0];
    // Byte order: upper case before `_`, before lower case.
    assert_eq!(
        cpu.labels,
        [
            label("Zone", "z"),
            label("__name__", "node_cpu"),
            label("env", "prod"),
            label("host", "h1"),
        ]
    );
    let samples: Vec<(f64, i64)> = cpu.samples.iter().map(|s| (s.value, s.timestamp)).collect();
    assert_eq!(samples, [(0.5, 1_000), (0.75, 2_000)]);
    assert_eq!(
        decoded.timeseries[1].labels,
        [label("__name__", "node_mem"), label("host", "h1")]
    );
    // The snappy block format round-trips too.
    let compressed = snap::raw::Encoder::new().compress_vec(&bytes).unwrap();
    assert_eq!(
        snap::raw::Decoder::new()
            .decompress_vec(&compressed)
            .unwrap(),
        bytes
    );
}

#[test]
fn loki_batches_group_streams_in_order_with_escaped_selectors() {
    let web = [("app", "web"), ("env", "prod")];
    let odd = [("app", "a\"b\\c\nd")];
    let batch = [
        entry(
            &web,
            1_700_000_000_123_456_789,
            "one",
            &[("deployment", "d-1")],
        ),
        entry(&odd, 5, "odd", &[]),
        entry(
            &web,
            1_700_000_001_000_000_000,
            "two",
            &[("command", "c-9")],
        ),
        entry(&[], -1, "before the epoch", &[]),
    ];
    let bytes = loki::encode(&batch).encode_to_vec();
    let decoded = loki::PushRequest::decode(bytes.as_slice()).unwrap();
    let streams: Vec<(&str, Vec<&str>)> = decoded
        .streams
        .iter()
        .map(|s| {
            (
                s.labels.as_str(),
                s.entries.iter().map(|e| e.line.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        streams,
        [
            (r#"{app="web", env="prod"}"#, vec!["one", "two"]),
            (r#"{app="a\"b\\c\nd"}"#, vec!["odd"]),
            ("{}", vec!["before the epoch"]),
        ]
    );
    let one = &decoded.streams[0].entries[0];
    assert_eq!(
        one.timestamp,
        Some(loki::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789
        })
    );
    assert_eq!(one.structured_metadata[0].name, "deployment");
    assert_eq!(one.structured_metadata[0].value, "d-1");
    assert_eq!(
        decoded.streams[2].entries[0].timestamp,
        Some(loki::Timestamp {
            seconds: -1,
            nanos: 999_999_999
        })
    );
}

// ---------------------------------------------------------------- the stub

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    /// Never answer (the connection stays open).
    hang: bool,
}

fn reply(status: u16) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: String::new(),
        hang: false,
    }
}

#[derive(Debug)]
struct Req {
    at: Instant,
    path: String,
    /// Lower-case names.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// An HTTP/1.1 server on 127.0.0.1:0 answering from a script (then 204),
/// one request per connection; every request is sent to `requests`.
struct Stub {
    port: u16,
    default: Arc<Mutex<Reply>>,
    requests: mpsc::UnboundedReceiver<Req>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts the connections.
        self.task.abort();
    }
}

impl Stub {
    async fn start(script: Vec<Reply>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let default = Arc::new(Mutex::new(reply(204)));
        let (tx, requests) = mpsc::unbounded_channel();
        let (s, d) = (Arc::clone(&script), Arc::clone(&default));
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, d, tx) = (Arc::clone(&s), Arc::clone(&d), tx.clone());
                conns.spawn(async move {
                    let _ = serve(stream, &s, &d, &tx).await;
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Self {
            port,
            default,
            requests,
            task,
        }
    }

    fn url(&self, path: &str) -> reqwest::Url {
        reqwest::Url::parse(&format!("http://127.0.0.1:{}{path}", self.port)).unwrap()
    }

    fn set_default(&self, r: Reply) {
        *self.default.lock().unwrap() = r;
    }

    async fn next(&mut self) -> Req {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("a request within WAIT")
            .expect("stub running")
    }

    fn no_more(&mut self) {
        assert!(self.requests.try_recv().is_err(), "unexpected request");
    }
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    script: &Mutex<VecDeque<Reply>>,
    default: &Mutex<Reply>,
    tx: &mpsc::UnboundedSender<Req>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let r = script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| default.lock().unwrap().clone());
    let _ = tx.send(Req {
        at: Instant::now(),
        path,
        headers,
        body,
    });
    if r.hang {
        std::future::pending::<()>().await;
    }
    let mut out = format!("HTTP/1.1 {} X\r\n", r.status);
    for (k, v) in &r.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "content-length: {}\r\nconnection: close\r\n\r\n{}",
        r.body.len(),
        r.body
    ));
    stream.write_all(out.as_bytes()).await?;
    stream.shutdown().await
}

// ------------------------------------------------------------ shipper setup

/// Captured log output of the current thread (tests run on a current-thread runtime).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Self::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn config(url: reqwest::Url) -> ShipConfig {
    ShipConfig {
        batch_max_entries: 100,
        flush_interval: Duration::from_secs(30),
        max_retry_time: Duration::from_secs(60),
        request_timeout: Duration::from_secs(10),
        buffer_max_bytes: 1 << 20,
        ..ShipConfig::new(Endpoint {
            url,
            auth: None,
            headers: Vec::new(),
        })
    }
}

struct Running<P: Pipeline> {
    shipper: Arc<Shipper<P>>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _db: Arc<SpoolDb>,
    _dir: tempfile::TempDir,
}

impl<P: Pipeline> Running<P> {
    fn start(config: ShipConfig, tree: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(SpoolDb::open(dir.path(), 1 << 20, None).unwrap());
        let queue = db.queue(tree, config.buffer_max_bytes).unwrap();
        let shipper = Arc::new(Shipper::<P>::new(config, queue).unwrap());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&shipper).run(cancel.clone()));
        Self {
            shipper,
            cancel,
            task,
            _db: db,
            _dir: dir,
        }
    }

    async fn wait(&self, what: &str, pred: impl FnMut(&StatsSnapshot) -> bool) -> StatsSnapshot {
        match self.shipper.stats().wait_until(WAIT, pred).await {
            Ok(s) => s,
            Err(s) => panic!("{what}: not reached within {WAIT:?}: {s:?}"),
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("run returns promptly on cancel")
            .unwrap();
    }
}

fn decode_metrics(req: &Req) -> remote_write::WriteRequest {
    let raw = snap::raw::Decoder::new().decompress_vec(&req.body).unwrap();
    remote_write::WriteRequest::decode(raw.as_slice()).unwrap()
}

fn three() -> Vec<Series> {
    (0..3)
        .map(|i| series("up", &[("host", "h1")], f64::from(i), 1_000 + i64::from(i)))
        .collect()
}

// ------------------------------------------------------------------- tests

#[tokio::test]
async fn a_500_is_retried_then_the_batch_is_sent_once_and_deleted() {
    let mut stub = Stub::start(vec![reply(500)]).await;
    let run =
        Running::<super::ship::Metrics>::start(config(stub.url("/api/v1/write")), METRICS_QUEUE);
    run.shipper.push(&three()).unwrap();
    let first = stub.next().await;
    let second = stub.next().await;
    assert_eq!(first.body, second.body, "the same batch again");
    assert_eq!(decode_metrics(&second).timeseries[0].samples.len(), 3);
    let s = run.wait("sent", |s| s.sent_requests_total == 1).await;
    assert_eq!(
        (
            s.sent_entries_total,
            s.retries_total,
            s.queued_entries,
            s.queued_bytes
        ),
        (3, 1, 0, 0)
    );
    run.stop().await;
    stub.no_more();
}

#[tokio::test]
async fn a_429_waits_for_retry_after() {
    let mut stub = Stub::start(vec![Reply {
        headers: vec![("Retry-After".into(), "1".into())],
        ..reply(429)
    }])
    .await;
    let run =
        Running::<super::ship::Metrics>::start(config(stub.url("/api/v1/write")), METRICS_QUEUE);
    run.shipper.push(&three()).unwrap();
    let first = stub.next().await;
    let second = stub.next().await;
    // Our own backoff would have retried after at most 250 ms.
    let gap = second.at - first.at;
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");
    let s = run.wait("sent", |s| s.sent_requests_total == 1).await;
    assert_eq!((s.retries_total, s.sent_entries_total), (1, 3));
    run.stop().await;
}

#[tokio::test]
async fn retry_after_zero_still_backs_off_and_the_bound_still_allows_a_retry() {
    // `Retry-After: 0` three times: the gaps are the backoff's (≥ 125 ms,
    // growing), not a busy loop.
    let zero = || Reply {
        headers: vec![("Retry-After".into(), "0".into())],
        ..reply(429)
    };
    let mut stub = Stub::start(vec![zero(), zero(), zero()]).await;
    let mut cfg = config(stub.url("/api/v1/write"));
    // A bound shorter than a Retry-After: the batch still gets its retry.
    cfg.max_retry_time = Duration::from_millis(100);
    let run = Running::<super::ship::Metrics>::start(cfg, METRICS_QUEUE);
    run.shipper.push(&three()).unwrap();
    let first = stub.next().await;
    let second = stub.next().await;
    assert!(
        second.at - first.at >= Duration::from_millis(100),
        "retried after {:?}",
        second.at - first.at
    );
    // Past the bound after the second failure: dropped, not retried forever.
    let s = run
        .wait("retry exhausted", |s| s.dropped_retry_exhausted_total == 3)
        .await;
    assert_eq!(s.sent_entries_total, 0);
    run.stop().await;
}

#[tokio::test]
async fn gateway_errors_are_an_outage_retried_past_max_retry_time() {
    let mut stub = Stub::start(vec![reply(503), reply(502), reply(504), reply(503)]).await;
    let mut cfg = config(stub.url("/api/v1/write"));
    cfg.max_retry_time = Duration::from_millis(1);
    let run = Running::<super::ship::Metrics>::start(cfg, METRICS_QUEUE);
    run.shipper.push(&three()).unwrap();
    for _ in 0..5 {
        let _ = stub.next().await;
    }
    // Four gateway errors, then the default 204: nothing dropped.
    let s = run.wait("sent", |s| s.sent_entries_total == 3).await;
    assert_eq!(s.dropped_retry_exhausted_total, 0);
    assert!(s.retries_total >= 4, "{s:?}");
    run.stop().await;
}

#[tokio::test]
async fn a_400_drops_the_batch_without_retry_and_logs_the_body() {
    let (logs, _guard) = Logs::capture();
    let mut stub = Stub::start(vec![Reply {
        body: "out of order sample".into(),
        ..reply(400)
    }])
    .await;
    let run =
        Running::<super::ship::Metrics>::start(config(stub.url("/api/v1/write")), METRICS_QUEUE);
    run.shipper.push(&three()).unwrap();
    let _rejected = stub.next().await;
    run.wait("dropped", |s| s.dropped_rejected_total == 3).await;
    // The next batch goes through; the rejected one is not sent again.
    run.shipper
        .push(&[series("up", &[("host", "h1")], 9.0, 5_000)])
        .unwrap();
    let next = stub.next().await;
    assert_eq!(decode_metrics(&next).timeseries[0].samples[0].value, 9.0);
    let s = run.wait("sent", |s| s.sent_requests_total == 1).await;
    assert_eq!(
        (s.retries_total, s.sent_entries_total, s.queued_entries),
        (0, 1, 0)
    );
    assert_eq!(
        run.shipper.stats().last_error().as_deref(),
        Some("400 Bad Request: out of order sample")
    );
    run.stop().await;
    stub.no_more();
    let text = logs.text();
    assert!(text.contains("out of order sample"), "{text}");
}

#[tokio::test]
async fn a_batch_failing_past_max_retry_time_is_dropped_and_later_ones_still_go() {
    let mut stub = Stub::start(Vec::new()).await;
    stub.set_default(Reply {
        body: "too old sample".into(),
        ..reply(500)
    });
    let mut cfg = config(stub.url("/api/v1/write"));
    cfg.max_retry_time = Duration::from_millis(600);
    let run = Running::<super::ship::Metrics>::start(cfg, METRICS_QUEUE);
    run.shipper.push(&three()).unwrap();
    let s = run
        .wait("retry exhausted", |s| s.dropped_retry_exhausted_total == 3)
        .await;
    assert!(s.retries_total >= 1, "{s:?}");
    assert_eq!(s.queued_entries, 0);
    // Drain what was sent so far, then the receiver recovers.
    while stub.requests.try_recv().is_ok() {}
    stub.set_default(reply(204));
    run.shipper
        .push(&[series("up", &[("host", "h1")], 1.0, 9_000)])
        .unwrap();
    let req = stub.next().await;
    assert_eq!(decode_metrics(&req).timeseries[0].samples.len(), 1);
    run.wait("sent", |s| s.sent_entries_total == 1).await;
    run.stop().await;
}

#[tokio::test]
async fn remote_write_headers_and_basic_auth_from_the_url_and_no_secret_in_logs() {
    let (logs, _guard) = Logs::capture();
    let mut stub = Stub::start(vec![
        reply(503),
        Reply {
            body: "bad".into(),
            ..reply(400)
        },
    ])
    .await;
    let mut url = stub.url("/api/prom/push");
    url.set_username("123456").unwrap();
    url.set_password(Some("glc_s3cr3t%2Ftoken")).unwrap();
    let mut cfg = config(url);
    cfg.endpoint.headers = vec![("X-Scope-OrgID".into(), "tenant-1".into())];
    let run = Running::<super::ship::Metrics>::start(cfg, METRICS_QUEUE);
    run.shipper.push(&three()).unwrap();
    let req = stub.next().await;
    assert_eq!(req.path, "/api/prom/push");
    let h = |k: &str| req.headers.get(k).map(String::as_str);
    assert_eq!(h("content-encoding"), Some("snappy"));
    assert_eq!(h("content-type"), Some("application/x-protobuf"));
    assert_eq!(h("x-prometheus-remote-write-version"), Some("0.1.0"));
    assert_eq!(
        h("user-agent"),
        Some(concat!("flotilla-agent/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(h("x-scope-orgid"), Some("tenant-1"));
    // base64("123456:glc_s3cr3t/token")
    let basic = "Basic MTIzNDU2OmdsY19zM2NyM3QvdG9rZW4=";
    assert_eq!(h("authorization"), Some(basic));
    let _rejected = stub.next().await;
    run.wait("dropped", |s| s.dropped_rejected_total == 3).await;
    run.stop().await;
    let text = logs.text();
    assert!(text.contains("127.0.0.1"), "the URL is logged: {text}");
    for secret in ["s3cr3t", "MTIzNDU2OmdsY19zM2NyM3QvdG9rZW4", "123456@"] {
        assert!(!text.contains(secret), "{secret} in logs: {text}");
    }
}

#[tokio::test]
async fn loki_push_with_bearer_token_decodes_back() {
    let mut stub = Stub::start(Vec::new()).await;
    let mut cfg = config(stub.url("/loki/api/v1/push"));
    cfg.endpoint.auth = Some(Auth::Bearer(flotilla_shared::secret::Secret::new("tok")));
    let run = Running::<super::ship::Logs>::start(cfg, LOGS_QUEUE);
    let web = [("app", "web"), ("host", "h1")];
    run.shipper
        .push(&[
            entry(&web, 1_000_000_001, "a", &[("deployment", "d-1")]),
            entry(&web, 1_000_000_002, "b", &[]),
        ])
        .unwrap();
    let req = stub.next().await;
    assert_eq!(
        req.headers.get("authorization").map(String::as_str),
        Some("Bearer tok")
    );
    assert_eq!(
        req.headers.get("content-type").map(String::as_str),
        Some("application/x-protobuf")
    );
    let raw = snap::raw::Decoder::new().decompress_vec(&req.body).unwrap();
    let push = loki::PushRequest::decode(raw.as_slice()).unwrap();
    assert_eq!(push.streams.len(), 1);
    assert_eq!(push.streams[0].labels, r#"{app="web", host="h1"}"#);
    assert_eq!(push.streams[0].entries.len(), 2);
    run.wait("sent", |s| s.sent_entries_total == 2).await;
    run.stop().await;
}

#[tokio::test]
async fn batches_hold_at_most_batch_max_entries_oldest_first() {
    let mut stub = Stub::start(Vec::new()).await;
    let mut cfg = config(stub.url("/api/v1/write"));
    cfg.batch_max_entries = 2;
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(SpoolDb::open(dir.path(), 1 << 20, None).unwrap());
    let queue = db.queue(METRICS_QUEUE, cfg.buffer_max_bytes).unwrap();
    let shipper = Arc::new(MetricsShipper::new(cfg, queue).unwrap());
    // Queued before the sender starts: it must not wait for a timer.
    let five: Vec<Series> = (0..5)
        .map(|i| series("up", &[], f64::from(i), i64::from(i)))
        .collect();
    shipper.push(&five).unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&shipper).run(cancel.clone()));
    let mut values = Vec::new();
    for expected in [2, 2, 1] {
        let req = stub.next().await;
        let samples = &decode_metrics(&req).timeseries[0].samples;
        assert_eq!(samples.len(), expected);
        values.extend(samples.iter().map(|s| s.value));
    }
    assert_eq!(values, [0.0, 1.0, 2.0, 3.0, 4.0]);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn entries_survive_a_restart_and_overflow_drops_the_oldest() {
    let mut stub = Stub::start(Vec::new()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(stub.url("/api/v1/write"));
    let one = serde_json::to_vec(&series("up", &[], 1.0, 0))
        .unwrap()
        .len() as u64
        + 8;
    cfg.buffer_max_bytes = 3 * one;
    {
        // The first agent run: never sends (not running), then stops.
        let db = Arc::new(SpoolDb::open(dir.path(), 1 << 20, None).unwrap());
        let queue = db.queue(METRICS_QUEUE, cfg.buffer_max_bytes).unwrap();
        let shipper = MetricsShipper::new(cfg.clone(), queue).unwrap();
        let five: Vec<Series> = (1..=5)
            .map(|i| series("up", &[], f64::from(i), 0))
            .collect();
        shipper.push(&five).unwrap();
        let s = shipper.stats().snapshot();
        assert_eq!((s.dropped_overflow_total, s.queued_entries), (2, 3));
        assert!(s.queued_bytes <= cfg.buffer_max_bytes);
        shipper.flush().await.unwrap();
    }
    let db = Arc::new(SpoolDb::open(dir.path(), 1 << 20, None).unwrap());
    let queue = db.queue(METRICS_QUEUE, cfg.buffer_max_bytes).unwrap();
    let shipper = Arc::new(MetricsShipper::new(cfg, queue).unwrap());
    assert_eq!(shipper.stats().snapshot().queued_entries, 3);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(Arc::clone(&shipper).run(cancel.clone()));
    let req = stub.next().await;
    let values: Vec<f64> = decode_metrics(&req).timeseries[0]
        .samples
        .iter()
        .map(|s| s.value)
        .collect();
    assert_eq!(values, [3.0, 4.0, 5.0]);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn run_returns_promptly_on_cancel_with_a_request_in_flight() {
    let mut stub = Stub::start(vec![Reply {
        hang: true,
        ..reply(204)
    }])
    .await;
    let mut cfg = config(stub.url("/api/v1/write"));
    cfg.request_timeout = Duration::from_secs(600);
    let run = Running::<super::ship::Metrics>::start(cfg, METRICS_QUEUE);
    run.shipper.push(&three()).unwrap();
    let _hanging = stub.next().await;
    let shipper = Arc::clone(&run.shipper);
    run.stop().await;
    // Not acknowledged, so still queued for the next start.
    assert_eq!(shipper.stats().snapshot().queued_entries, 3);
}

#[tokio::test]
async fn configured_headers_cannot_override_the_protocol_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(SpoolDb::open(dir.path(), 1 << 20, None).unwrap());
    let mut cfg = config(reqwest::Url::parse("http://127.0.0.1:9/").unwrap());
    cfg.endpoint.headers = vec![("Content-Type".into(), "application/json".into())];
    let queue = db.queue(LOGS_QUEUE, 1 << 20).unwrap();
    let err = LogShipper::new(cfg, queue).err().unwrap();
    assert!(matches!(err, ShipError::Config { .. }), "{err}");
}

#[tokio::test]
async fn a_stale_marker_reaches_the_receiver_bit_exact() {
    let mut stub = Stub::start(Vec::new()).await;
    let run =
        Running::<super::ship::Metrics>::start(config(stub.url("/api/v1/write")), METRICS_QUEUE);
    let stale = f64::from_bits(remote_write::STALE_NAN_BITS);
    run.shipper
        .push(&[series("up", &[("app", "gone")], stale, 1_000)])
        .unwrap();
    let req = stub.next().await;
    let sample = &decode_metrics(&req).timeseries[0].samples[0];
    assert_eq!(sample.value.to_bits(), remote_write::STALE_NAN_BITS);
    run.wait("sent", |s| s.sent_entries_total == 1).await;
    run.stop().await;
}

#[test]
fn endpoint_debug_hides_url_user_info_and_secrets() {
    let mut url = reqwest::Url::parse("https://prom.example/api/prom/push").unwrap();
    url.set_username("123").unwrap();
    url.set_password(Some("hunter2")).unwrap();
    let endpoint = Endpoint {
        url,
        auth: Some(Auth::Bearer(flotilla_shared::secret::Secret::new("tok-9"))),
        headers: Vec::new(),
    };
    let text = format!("{:?}", config(endpoint.url.clone()).endpoint) + &format!("{endpoint:?}");
    assert!(
        !text.contains("hunter2") && !text.contains("tok-9"),
        "{text}"
    );
    assert!(
        text.contains("https://prom.example/api/prom/push"),
        "{text}"
    );
}
