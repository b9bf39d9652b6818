//! Shipping: a durable queue in the spool, one sequential sender per pipeline
//! (metrics or logs) that batches, compresses (snappy block), authenticates,
//! retries by response class and deletes entries only after a 2xx. Encoding
//! of the bodies lives in `remote_write` and `loki`; sled lives in `spool`.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_shared::backoff::Backoff;
use flotilla_shared::secret::Secret;
use prost::Message as _;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{loki, remote_write};
use crate::spool::{Queue, SpoolError};

/// Tree of the metrics queue in the spool database.
pub const METRICS_QUEUE: &str = "telemetry/metrics";
/// Tree of the logs queue in the spool database.
pub const LOGS_QUEUE: &str = "telemetry/logs";

const USER_AGENT: &str = concat!("flotilla-agent/", env!("CARGO_PKG_VERSION"));
/// How much of a rejecting response body goes into the log.
const MAX_LOGGED_BODY: usize = 512;
/// At most `limit` bytes of a response body, as text (truncated with `…`).
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> String {
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > limit {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => return format!("(body unreadable: {e})"),
        }
    }
    truncate(&String::from_utf8_lossy(&bytes))
}

/// First retry delay; it doubles (with jitter) up to `BACKOFF_MAX`.
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest wait a `Retry-After` can ask for.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// A batch stops growing at this many queued bytes (the encoded body is
/// smaller), so one request stays well under receivers' size limits.
const BATCH_MAX_BYTES: u64 = 1024 * 1024;
/// At most one "buffer full" warning per this interval.
const OVERFLOW_WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("telemetry {pipeline}: {source}")]
    Queue {
        pipeline: &'static str,
        source: SpoolError,
    },
    #[error("telemetry {pipeline}: encode entry: {source}")]
    Encode {
        pipeline: &'static str,
        source: serde_json::Error,
    },
    #[error("telemetry {pipeline}: bad endpoint configuration: {reason}")]
    Config {
        pipeline: &'static str,
        reason: String,
    },
    #[error("telemetry {pipeline}: build http client: {source}")]
    Client {
        pipeline: &'static str,
        source: reqwest::Error,
    },
}

/// Credentials for the receiver.
#[derive(Debug, Clone)]
pub enum Auth {
    /// HTTP basic auth (Grafana Cloud: the numeric instance id and a token).
    Basic { username: String, password: Secret },
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
}

/// Where and how to send. `Debug` hides user info in the URL.
#[derive(Clone)]
pub struct Endpoint {
    /// The push URL (`…/api/v1/write`, `…/api/prom/push`, `…/loki/api/v1/push`).
    /// User info in it (`https://user:pass@host/…`) is used as basic auth when
    /// `auth` is unset, and never logged.
    pub url: reqwest::Url,
    pub auth: Option<Auth>,
    /// Extra headers, e.g. `X-Scope-OrgID`. May not name a header the
    /// protocol sets (`Content-Type`, `Content-Encoding`, `User-Agent`,
    /// `X-Prometheus-Remote-Write-Version`, `Authorization`).
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &redacted(&self.url).as_str())
            .field("auth", &self.auth)
            .field("headers", &self.headers)
            .finish()
    }
}

/// `url` without user info.
fn redacted(url: &reqwest::Url) -> reqwest::Url {
    let mut url = url.clone();
    // Neither fails for a URL with a host (every http(s) URL).
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url
}

/// Settings of one pipeline.
#[derive(Debug, Clone)]
pub struct ShipConfig {
    pub endpoint: Endpoint,
    /// Most entries per request; small batches keep one bad sample from
    /// sinking many good ones.
    pub batch_max_entries: usize,
    /// How often an idle sender looks at the queue anyway (pushes wake it at
    /// once, so this is only a safety net).
    pub flush_interval: Duration,
    /// How long one batch may be retried on 5xx/429 before it is dropped
    /// (some 5xx are permanent). Connection errors are retried without this
    /// bound; the buffer bound covers long outages.
    pub max_retry_time: Duration,
    /// Limit on one request, connection included.
    pub request_timeout: Duration,
    /// On-disk buffer bound (entries + keys); the oldest entries go first.
    pub buffer_max_bytes: u64,
}

impl ShipConfig {
    /// The recommended defaults for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            batch_max_entries: 500,
            flush_interval: Duration::from_secs(5),
            max_retry_time: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            buffer_max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why entries were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The buffer was over its bound (oldest first).
    Overflow,
    /// The receiver answered 4xx other than 429 (or the entry could not be read back).
    Rejected,
    /// 5xx/429 for longer than `max_retry_time`.
    RetryExhausted,
}

/// Counters of one pipeline (atomics; read them with [`ShipStats::snapshot`]).
pub struct ShipStats {
    pub queued_entries: AtomicU64,
    pub queued_bytes: AtomicU64,
    pub sent_entries_total: AtomicU64,
    pub sent_requests_total: AtomicU64,
    pub dropped_overflow_total: AtomicU64,
    pub dropped_rejected_total: AtomicU64,
    pub dropped_retry_exhausted_total: AtomicU64,
    /// Failed attempts that were (or will be) retried.
    pub retries_total: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Bumped on every change, so waiters need not poll.
    changed: watch::Sender<u64>,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub queued_entries: u64,
    pub queued_bytes: u64,
    pub sent_entries_total: u64,
    pub sent_requests_total: u64,
    pub dropped_overflow_total: u64,
    pub dropped_rejected_total: u64,
    pub dropped_retry_exhausted_total: u64,
    pub retries_total: u64,
}

impl Default for ShipStats {
    fn default() -> Self {
        Self {
            queued_entries: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            sent_entries_total: AtomicU64::new(0),
            sent_requests_total: AtomicU64::new(0),
            dropped_overflow_total: AtomicU64::new(0),
            dropped_rejected_total: AtomicU64::new(0),
            dropped_retry_exhausted_total: AtomicU64::new(0),
            retries_total: AtomicU64::new(0),
            last_error: Mutex::new(None),
            changed: watch::Sender::new(0),
        }
    }
}

impl ShipStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            queued_entries: get(&self.queued_entries),
            queued_bytes: get(&self.queued_bytes),
            sent_entries_total: get(&self.sent_entries_total),
            sent_requests_total: get(&self.sent_requests_total),
            dropped_overflow_total: get(&self.dropped_overflow_total),
            dropped_rejected_total: get(&self.dropped_rejected_total),
            dropped_retry_exhausted_total: get(&self.dropped_retry_exhausted_total),
            retries_total: get(&self.retries_total),
        }
    }

    pub fn dropped_total(&self, reason: DropReason) -> u64 {
        self.counter(reason).load(Ordering::Relaxed)
    }

    /// The last failure (status and body, or the connection error), if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Waits until `pred` holds for a snapshot, or `limit` passes; returns
    /// the last snapshot either way (`Err` on timeout). Cancel-safe.
    pub async fn wait_until(
        &self,
        limit: Duration,
        mut pred: impl FnMut(&StatsSnapshot) -> bool,
    ) -> Result<StatsSnapshot, StatsSnapshot> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            rx.borrow_and_update();
            let snap = self.snapshot();
            if pred(&snap) {
                return Ok(snap);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(self.snapshot()),
            }
        }
    }

    fn add(&self, counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
        self.bump();
    }

    fn counter(&self, reason: DropReason) -> &AtomicU64 {
        match reason {
            DropReason::Overflow => &self.dropped_overflow_total,
            DropReason::Rejected => &self.dropped_rejected_total,
            DropReason::RetryExhausted => &self.dropped_retry_exhausted_total,
        }
    }

    fn dropped(&self, reason: DropReason, n: u64) {
        self.add(self.counter(reason), n);
    }

    /// Counts a finished batch and the queue after its deletion, as one change.
    /// A batch of `n` readable entries ended; `deleted` is how many of the
    /// batch's entries were still queued when it was deleted (the buffer
    /// bound may have dropped, and counted, some meanwhile; unreadable ones
    /// were counted when read), so nothing is counted twice.
    fn finished(&self, end: &BatchEnd, deleted: u64, queue: &Queue) {
        match *end {
            BatchEnd::Sent(n) => {
                self.sent_entries_total
                    .fetch_add(n.min(deleted), Ordering::Relaxed);
                self.sent_requests_total.fetch_add(1, Ordering::Relaxed);
            }
            BatchEnd::Dropped(reason, n) => {
                self.counter(reason)
                    .fetch_add(n.min(deleted), Ordering::Relaxed);
            }
            BatchEnd::Unreachable(_) | BatchEnd::Cancelled => {}
        }
        self.set_queue(queue);
    }

    fn set_queue(&self, queue: &Queue) {
        self.queued_entries.store(queue.len(), Ordering::Relaxed);
        self.queued_bytes.store(queue.bytes(), Ordering::Relaxed);
        self.bump();
    }

    fn set_error(&self, error: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(error);
        }
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// What differs between metrics and logs.
pub trait Pipeline: Send + Sync + 'static {
    type Item: Serialize + DeserializeOwned + Send + Sync;
    /// For logs and errors: `metrics` or `logs`.
    const NAME: &'static str;
    /// Headers the protocol requires (besides `User-Agent` and auth).
    const HEADERS: &'static [(&'static str, &'static str)];
    /// The uncompressed protobuf body of one request.
    fn encode(items: &[Self::Item]) -> Vec<u8>;
    /// Whether a 2xx deserves a warning (Loki answers 260 when ingestion is blocked).
    fn suspicious_success(_status: StatusCode) -> bool {
        false
    }
}

/// Prometheus remote write 1.0.
pub struct Metrics;

impl Pipeline for Metrics {
    type Item = remote_write::Series;
    const NAME: &'static str = "metrics";
    const HEADERS: &'static [(&'static str, &'static str)] = &[
        ("content-encoding", "snappy"),
        ("content-type", "application/x-protobuf"),
        ("x-prometheus-remote-write-version", "0.1.0"),
    ];
    fn encode(items: &[Self::Item]) -> Vec<u8> {
        remote_write::encode(items).encode_to_vec()
    }
}

/// Loki push API, protobuf.
pub struct Logs;

impl Pipeline for Logs {
    type Item = loki::LogEntry;
    const NAME: &'static str = "logs";
    const HEADERS: &'static [(&'static str, &'static str)] =
        &[("content-type", "application/x-protobuf")];
    fn encode(items: &[Self::Item]) -> Vec<u8> {
        loki::encode(items).encode_to_vec()
    }
    fn suspicious_success(status: StatusCode) -> bool {
        status != StatusCode::OK && status != StatusCode::NO_CONTENT
    }
}

pub type MetricsShipper = Shipper<Metrics>;
pub type LogShipper = Shipper<Logs>;

/// Header names the shipper sets itself; configured headers may not use them.
const RESERVED_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "user-agent",
    "x-prometheus-remote-write-version",
    "authorization",
    "content-length",
    "host",
];

/// One pipeline: `push` enqueues durably, `run` sends.
pub struct Shipper<P: Pipeline> {
    config: ShipConfig,
    /// The URL without user info (what is sent to, and what logs show).
    url: reqwest::Url,
    auth: Option<Auth>,
    headers: HeaderMap,
    client: reqwest::Client,
    queue: Queue,
    stats: Arc<ShipStats>,
    wake: Notify,
    /// Overflow drops not yet warned about, and when we last warned.
    overflow_warn: Mutex<(u64, Option<Instant>)>,
    _pipeline: PhantomData<P>,
}

/// How one batch ended.
enum BatchEnd {
    /// Accepted (2xx): delete it, count `n` entries sent.
    Sent(u64),
    /// Given up: delete it, count `n` entries dropped.
    Dropped(DropReason, u64),
    /// The receiver is unreachable: keep it, wait this long, look again.
    Unreachable(Duration),
    Cancelled,
}

/// How one request ended.
enum Attempt {
    Success,
    Rejected {
        status: StatusCode,
        body: String,
    },
    Retry {
        status: StatusCode,
        retry_after: Option<Duration>,
        body: String,
    },
    Unreachable(String),
}

impl<P: Pipeline> Shipper<P> {
    /// A shipper sending to `config.endpoint` from `queue` (open it with
    /// `Spool::queue(METRICS_QUEUE or LOGS_QUEUE, config.buffer_max_bytes)`).
    /// Entries already in the queue (from before a restart) are sent first.
    pub fn new(config: ShipConfig, queue: Queue) -> Result<Self, ShipError> {
        let config_err = |reason: String| ShipError::Config {
            pipeline: P::NAME,
            reason,
        };
        if config.batch_max_entries == 0 {
            return Err(config_err("batch_max_entries must be at least 1".into()));
        }
        let mut url = config.endpoint.url.clone();
        let mut auth = config.endpoint.auth.clone();
        if !url.username().is_empty() || url.password().is_some() {
            if auth.is_none() {
                auth = Some(Auth::Basic {
                    username: percent_decode(url.username()),
                    password: Secret::new(percent_decode(url.password().unwrap_or(""))),
                });
            }
            url = redacted(&url);
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(config_err(format!(
                "unsupported URL scheme {}",
                url.scheme()
            )));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &config.endpoint.headers {
            let name = HeaderName::try_from(name.as_str())
                .map_err(|e| config_err(format!("header name {name:?}: {e}")))?;
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(config_err(format!(
                    "header {name} is set by the shipper and cannot be configured"
                )));
            }
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|e| config_err(format!("value of header {name}: {e}")))?;
            headers.append(name, value);
        }
        for (name, value) in P::HEADERS {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        // Idempotent; without a provider, building the client would panic.
        flotilla_shared::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.request_timeout)
            .timeout(config.request_timeout)
            .build()
            .map_err(|source| ShipError::Client {
                pipeline: P::NAME,
                source,
            })?;
        let stats = Arc::new(ShipStats::default());
        stats
            .dropped_overflow_total
            .fetch_add(queue.dropped_at_open(), Ordering::Relaxed);
        stats.set_queue(&queue);
        Ok(Self {
            config,
            url,
            auth,
            headers,
            client,
            queue,
            stats,
            wake: Notify::new(),
            overflow_warn: Mutex::new((0, None)),
            _pipeline: PhantomData,
        })
    }

    pub fn stats(&self) -> Arc<ShipStats> {
        Arc::clone(&self.stats)
    }

    /// Enqueues `items` in order and wakes the sender. Writes sled (no
    /// fsync: sled's periodic flush, `flush` or the sender's exit make it
    /// durable); over the buffer bound the oldest entries are dropped and
    /// counted. Never waits for the network.
    pub fn push(&self, items: &[P::Item]) -> Result<(), ShipError> {
        if items.is_empty() {
            return Ok(());
        }
        let values = items
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| ShipError::Encode {
                pipeline: P::NAME,
                source,
            })?;
        let dropped = self.queue.push(values).map_err(|source| ShipError::Queue {
            pipeline: P::NAME,
            source,
        })?;
        if dropped > 0 {
            self.stats.dropped(DropReason::Overflow, dropped);
            self.warn_overflow(dropped);
        }
        self.stats.set_queue(&self.queue);
        self.wake.notify_one();
        Ok(())
    }

    /// Makes every push so far durable. Cancel-safe.
    pub async fn flush(&self) -> Result<(), ShipError> {
        self.queue.flush().await.map_err(|source| ShipError::Queue {
            pipeline: P::NAME,
            source,
        })
    }

    fn warn_overflow(&self, dropped: u64) {
        let Ok(mut w) = self.overflow_warn.lock() else {
            return;
        };
        w.0 += dropped;
        if w.1.is_none_or(|at| at.elapsed() >= OVERFLOW_WARN_EVERY) {
            tracing::warn!(
                pipeline = P::NAME,
                n_dropped = w.0,
                buffer_max_bytes = self.queue.max_bytes(),
                "telemetry buffer full, dropped oldest entries"
            );
            *w = (0, Some(Instant::now()));
        }
    }

    /// The sender: sends the queue oldest first, one request at a time, until
    /// `cancel`; then flushes the queue. An in-flight request is abandoned on
    /// cancel (its entries stay queued and are sent after a restart).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);
        // Bounded by `cancel`: every branch either finishes a batch, waits
        // for an event, or waits out a backoff delay.
        while !cancel.is_cancelled() {
            let batch = match self
                .queue
                .peek_bounded(self.config.batch_max_entries, BATCH_MAX_BYTES)
            {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(pipeline = P::NAME, "read telemetry queue: {e}");
                    if sleep_or_cancel(self.config.flush_interval, &cancel).await {
                        break;
                    }
                    continue;
                }
            };
            let Some(last) = batch.last().map(|e| e.seq) else {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(self.config.flush_interval) => {}
                }
                continue;
            };
            let end = self.send_batch(&batch, &mut backoff, &cancel).await;
            match end {
                BatchEnd::Sent(_) | BatchEnd::Dropped(..) => {
                    backoff.reset();
                    // Delete first, then count: whoever sees the counters
                    // move also sees the queue without the batch.
                    let deleted = self.queue.ack(last).unwrap_or_else(|e| {
                        tracing::error!(pipeline = P::NAME, "delete sent telemetry: {e}");
                        0
                    });
                    self.stats.finished(&end, deleted, &self.queue);
                }
                BatchEnd::Unreachable(delay) => {
                    if sleep_or_cancel(delay, &cancel).await {
                        break;
                    }
                }
                BatchEnd::Cancelled => break,
            }
        }
        if let Err(e) = self.queue.flush().await {
            tracing::warn!(pipeline = P::NAME, "flush telemetry queue: {e}");
        }
    }

    /// Sends one batch until it is accepted, rejected, out of retry time, or
    /// the receiver is unreachable.
    async fn send_batch(
        &self,
        batch: &[crate::spool::queue::Entry],
        backoff: &mut Backoff,
        cancel: &CancellationToken,
    ) -> BatchEnd {
        let mut items = Vec::with_capacity(batch.len());
        for entry in batch {
            match serde_json::from_slice::<P::Item>(&entry.value) {
                Ok(item) => items.push(item),
                Err(e) => {
                    tracing::warn!(
                        pipeline = P::NAME,
                        seq = entry.seq,
                        "unreadable telemetry entry dropped: {e}"
                    );
                    self.stats.dropped(DropReason::Rejected, 1);
                }
            }
        }
        if items.is_empty() {
            // Only unreadable entries (counted above).
            return BatchEnd::Dropped(DropReason::Rejected, 0);
        }
        let n = items.len() as u64;
        let body = match snap::raw::Encoder::new().compress_vec(&P::encode(&items)) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(pipeline = P::NAME, "compress telemetry batch: {e}");
                return BatchEnd::Dropped(DropReason::Rejected, n);
            }
        };
        let started = Instant::now();
        // Bounded by `max_retry_time` (5xx/429) and `cancel`; connection
        // errors leave the loop to re-read the queue.
        loop {
            let attempt = tokio::select! {
                () = cancel.cancelled() => return BatchEnd::Cancelled,
                attempt = self.attempt(body.clone()) => attempt,
            };
            match attempt {
                Attempt::Success => return BatchEnd::Sent(n),
                Attempt::Rejected { status, body } => {
                    tracing::warn!(
                        pipeline = P::NAME,
                        url = %self.url,
                        status = status.as_u16(),
                        n_entries = n,
                        body = %body,
                        "telemetry batch rejected, dropped"
                    );
                    self.stats.set_error(format!("{status}: {body}"));
                    return BatchEnd::Dropped(DropReason::Rejected, n);
                }
                Attempt::Unreachable(error) => {
                    let delay = backoff.next_delay();
                    self.stats.set_error(error.clone());
                    self.stats.add(&self.stats.retries_total, 1);
                    if backoff.should_log() {
                        tracing::warn!(
                            pipeline = P::NAME,
                            url = %self.url,
                            retry_in_ms = delay.as_millis() as u64,
                            "telemetry receiver unreachable: {error}"
                        );
                    }
                    return BatchEnd::Unreachable(delay);
                }
                Attempt::Retry {
                    status,
                    retry_after,
                    body,
                } => {
                    self.stats.set_error(format!("{status}: {body}"));
                    // At least the backoff (a `Retry-After: 0` must not make a
                    // busy loop), at most MAX_RETRY_AFTER (a huge one must not
                    // park the pipeline); dropped only once the bound has
                    // passed, so every batch gets at least one retry.
                    let backoff_delay = backoff.next_delay();
                    let delay = retry_after
                        .map_or(backoff_delay, |ra| ra.max(backoff_delay))
                        .min(MAX_RETRY_AFTER);
                    if started.elapsed() >= self.config.max_retry_time {
                        tracing::warn!(
                            pipeline = P::NAME,
                            url = %self.url,
                            status = status.as_u16(),
                            n_entries = n,
                            body = %body,
                            "telemetry batch still failing after max retry time, dropped"
                        );
                        return BatchEnd::Dropped(DropReason::RetryExhausted, n);
                    }
                    self.stats.add(&self.stats.retries_total, 1);
                    tracing::warn!(
                        pipeline = P::NAME,
                        url = %self.url,
                        status = status.as_u16(),
                        retry_in_ms = delay.as_millis() as u64,
                        body = %body,
                        "telemetry batch not accepted, will retry"
                    );
                    if sleep_or_cancel(delay, cancel).await {
                        return BatchEnd::Cancelled;
                    }
                }
            }
        }
    }

    /// One POST, bounded by `request_timeout`. Cancel-safe.
    async fn attempt(&self, body: Vec<u8>) -> Attempt {
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .body(body);
        request = match &self.auth {
            Some(Auth::Basic { username, password }) => {
                request.basic_auth(username, Some(password.expose()))
            }
            Some(Auth::Bearer(token)) => request.bearer_auth(token.expose()),
            None => request,
        };
        let response = match request.send().await {
            Ok(response) => response,
            // The URL in the error has no user info (stripped in `new`).
            Err(e) => return Attempt::Unreachable(error_chain(&e)),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(flotilla_shared::backoff::parse_retry_after);
        if status.is_success() {
            if P::suspicious_success(status) {
                tracing::warn!(
                    pipeline = P::NAME,
                    url = %self.url,
                    status = status.as_u16(),
                    "telemetry receiver answered an unusual success status"
                );
            }
            return Attempt::Success;
        }
        // The body only matters for failures: its first bytes are enough.
        let body = read_prefix(response, MAX_LOGGED_BODY).await;
        // A gateway answering for a receiver that is down or restarting is an
        // outage, like a refused connection: retried without the time bound
        // (the buffer bound covers long outages).
        if matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        ) {
            return Attempt::Unreachable(format!("{status}: {body}"));
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Attempt::Retry {
                status,
                retry_after,
                body,
            }
        } else {
            // 1xx/3xx cannot be handled either: like 4xx, retrying will not help.
            Attempt::Rejected { status, body }
        }
    }
}

/// Sleeps `delay` unless cancelled first; returns whether it was cancelled.
async fn sleep_or_cancel(delay: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        () = cancel.cancelled() => true,
        () = tokio::time::sleep(delay) => false,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    // Bounded: error chains are short, but never trust that.
    for _ in 0..8 {
        let Some(s) = source else { break };
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn truncate(body: &str) -> String {
    let body = body.trim();
    if body.len() <= MAX_LOGGED_BODY {
        return body.to_owned();
    }
    let mut end = MAX_LOGGED_BODY;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &body[..end])
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let v = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
