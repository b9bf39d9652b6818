//! The HTTP health gate after a deploy: probe one URL every `interval` until
//! it answered with an expected status for `min_healthy` in a row, or the
//! `deadline` passes. Progress goes to the command's log as agent lines.
//! Knows nothing about Dokku: `exec` expands the URL and decides the outcome.

use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_shared::health::HealthCheck;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::LineSink;

#[cfg(test)]
pub(super) mod tests;

/// How a health gate ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every probe for `healthy_for` (≥ `min_healthy`) returned an expected status.
    Healthy {
        status: u16,
        healthy_for: Duration,
        took: Duration,
        probes: u32,
    },
    /// The deadline passed first (or the check could not run); the message
    /// says why and is the command's error.
    Failed(String),
    /// `cancel` fired (agent shutdown).
    Cancelled,
}

/// What one probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    Status(u16),
    /// No HTTP status: a short description (`connection refused`, `timed out after 5s`).
    Error(String),
}

impl Probe {
    fn describe(&self) -> String {
        match self {
            Self::Status(code) => format!("status {code}"),
            Self::Error(e) => e.clone(),
        }
    }
}

/// Probes `url` as `check` says, logging the URL once, each change of what
/// the probes see, and the verdict. Ends on `cancel` with `Cancelled`; not
/// cancel-safe by dropping only in that the log lines would stop.
pub async fn gate(
    check: &HealthCheck,
    url: &str,
    sink: &mut (dyn LineSink + Send),
    cancel: &CancellationToken,
) -> Verdict {
    let shown = redact(url);
    sink.line(
        pb::Stream::Agent,
        format!(
            "health: GET {shown} every {}, expecting {} for {} in a row, deadline {}",
            fmt_duration(check.interval),
            check.expect,
            fmt_duration(check.min_healthy),
            fmt_duration(check.deadline),
        ),
    );
    let client = match client(check) {
        Ok(client) => client,
        Err(e) => {
            let verdict = format!("health check failed: cannot set up the HTTP client: {e}");
            sink.line(pb::Stream::Agent, verdict.clone());
            return Verdict::Failed(verdict);
        }
    };
    let start = Instant::now();
    let deadline = start + check.deadline;
    let mut ticks = tokio::time::interval_at(start, check.interval);
    // A slow probe delays the next one rather than causing a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<Probe> = None;
    let mut healthy_since: Option<Instant> = None;
    let mut probes = 0u32;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Verdict::Cancelled,
            _ = ticks.tick() => {}
            () = tokio::time::sleep_until(deadline) => break,
        }
        let probe = tokio::select! {
            () = cancel.cancelled() => return Verdict::Cancelled,
            probe = probe(&client, url, check.timeout) => probe,
            () = tokio::time::sleep_until(deadline) => break,
        };
        probes += 1;
        let now = Instant::now();
        if last.as_ref() != Some(&probe) {
            sink.line(
                pb::Stream::Agent,
                format!("health: {} at {}", probe.describe(), secs(now - start)),
            );
        }
        match probe {
            Probe::Status(status) if check.expect.contains(status) => {
                let since = *healthy_since.get_or_insert(now);
                let healthy_for = now - since;
                if healthy_for >= check.min_healthy {
                    let took = now - start;
                    sink.line(
                        pb::Stream::Agent,
                        format!(
                            "health: GET {shown} → {status} (healthy {}, took {})",
                            secs(healthy_for),
                            secs(took)
                        ),
                    );
                    return Verdict::Healthy {
                        status,
                        healthy_for,
                        took,
                        probes,
                    };
                }
            }
            _ => healthy_since = None,
        }
        last = Some(probe);
    }
    let seen = match &last {
        Some(Probe::Status(code)) => format!("last status {code}"),
        Some(Probe::Error(e)) => format!("last error: {e}"),
        None => "no probe finished".to_owned(),
    };
    let verdict = format!(
        "health check failed after {}: {seen} (expected {})",
        fmt_duration(check.deadline),
        check.expect
    );
    sink.line(pb::Stream::Agent, verdict.clone());
    Verdict::Failed(verdict)
}

/// One client per gate: no redirects followed (a 301 is an answer, and
/// `expect` decides about it), no proxies, a fresh connection per probe (the
/// app behind it was just replaced). TLS: rustls with the process-wide ring
/// provider and the platform's root certificates.
fn client(check: &HealthCheck) -> reqwest::Result<reqwest::Client> {
    // Idempotent; without a provider, building the client would panic.
    flotilla_shared::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(0)
        .connect_timeout(check.timeout)
        .timeout(check.timeout)
        .user_agent(concat!("flotilla-agent/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// One GET, bounded by `timeout`. Cancel-safe.
async fn probe(client: &reqwest::Client, url: &str, timeout: Duration) -> Probe {
    let request = client.get(url).send();
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(response)) => Probe::Status(response.status().as_u16()),
        Ok(Err(e)) if e.is_timeout() => {
            Probe::Error(format!("timed out after {}", fmt_duration(timeout)))
        }
        Ok(Err(e)) => Probe::Error(describe_error(&e)),
        Err(_) => Probe::Error(format!("timed out after {}", fmt_duration(timeout))),
    }
}

/// The innermost cause, which is the informative part (`connection refused`,
/// `invalid peer certificate: …`), without reqwest's "error sending request
/// for url (…)" wrapper.
fn describe_error(e: &reqwest::Error) -> String {
    let mut source: &(dyn std::error::Error + 'static) = e;
    while let Some(inner) = source.source() {
        source = inner;
    }
    if let Some(io) = source.downcast_ref::<std::io::Error>()
        && io.kind() == std::io::ErrorKind::ConnectionRefused
    {
        return "connection refused".to_owned();
    }
    let text = source.to_string();
    if text.to_ascii_lowercase().contains("connection refused") {
        "connection refused".to_owned()
    } else {
        text
    }
}

/// The URL for logs: user information and the query string become `***`.
pub fn redact(url: &str) -> String {
    flotilla_shared::health::redact_url(url)
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn fmt_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
