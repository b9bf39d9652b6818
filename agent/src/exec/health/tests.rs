//! The health gate against a scripted HTTP server on 127.0.0.1 (raw tokio,
//! one fixed response per connection). Durations are short but the
//! assertions do not depend on timing: a slow machine only stretches them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

/// Answers the n-th request with `script[n]` (the last entry repeats); `0`
/// means "accept, read the request, never answer".
pub(crate) struct Server {
    pub url: String,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub(crate) async fn serve(script: &[u16]) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let script = script.to_vec();
    let counter = Arc::clone(&hits);
    let task = tokio::spawn(async move {
        // Connections waiting for an answer that never comes are kept here,
        // so they stay open until the server is dropped.
        let mut silent = Vec::new();
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let status = script[n.min(script.len() - 1)];
            if status == 0 {
                silent.push(conn);
                continue;
            }
            let response = format!(
                "HTTP/1.1 {status} Scripted\r\nlocation: /elsewhere\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
            let _ = conn.write_all(response.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
    });
    Server { url, hits, task }
}

fn check(expect: &str, deadline_ms: u64, min_healthy_ms: u64) -> HealthCheck {
    HealthCheck::new(
        "http://{host}",
        "/health",
        expect,
        Duration::from_millis(deadline_ms),
        Duration::from_millis(10),
        Duration::from_millis(min_healthy_ms),
        Duration::from_millis(300),
    )
    .unwrap()
}

#[derive(Default)]
struct Lines(Vec<String>);

impl LineSink for Lines {
    fn line(&mut self, stream: pb::Stream, line: String) {
        assert_eq!(stream, pb::Stream::Agent);
        self.0.push(line);
    }
}

/// Runs the gate against `url` + `/health`, returning its verdict and lines.
async fn run(check: &HealthCheck, url: &str) -> (Verdict, Vec<String>) {
    flotilla_shared::tls::install_crypto_provider();
    let mut lines = Lines::default();
    let url = format!("{url}{}", check.path);
    let verdict = tokio::time::timeout(
        Duration::from_secs(30),
        gate(check, &url, &mut lines, &CancellationToken::new()),
    )
    .await
    .expect("the gate ends by its deadline");
    (verdict, lines.0)
}

/// The "what the probes saw" lines, without their times.
fn changes(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("health: "))
        .filter(|l| !l.starts_with("GET "))
        .map(|l| {
            l.rsplit_once(" at ")
                .map(|(seen, _)| seen)
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn healthy_at_once() {
    let server = serve(&[200]).await;
    let check = check("", 5_000, 0);
    let (verdict, lines) = run(&check, &server.url).await;
    let Verdict::Healthy { status, probes, .. } = verdict else {
        panic!("{verdict:?} {lines:?}");
    };
    assert_eq!((status, probes), (200, 1));
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        lines[0],
        format!(
            "health: GET {}/health every 10ms, expecting 2xx for 0s in a row, deadline 5s",
            server.url
        )
    );
    assert_eq!(changes(&lines), ["status 200"]);
    let verdict_line = lines.last().unwrap();
    assert!(
        verdict_line.starts_with(&format!(
            "health: GET {}/health → 200 (healthy 0.0s, took ",
            server.url
        )),
        "{verdict_line}"
    );
}

#[tokio::test]
async fn becomes_healthy_after_failures() {
    let server = serve(&[503, 503, 502, 200]).await;
    let (verdict, lines) = run(&check("2xx", 10_000, 0), &server.url).await;
    let Verdict::Healthy { probes, .. } = verdict else {
        panic!("{verdict:?} {lines:?}");
    };
    assert_eq!(probes, 4);
    // Only changes are logged: one line for the two 503s.
    assert_eq!(changes(&lines), ["status 503", "status 502", "status 200"]);
}

#[tokio::test]
async fn a_failed_probe_restarts_the_healthy_clock() {
    // Three good probes (~20 ms) cannot make 300 ms; the 503 restarts the
    // clock, and only 300 ms of good probes after it make the host healthy.
    let server = serve(&[200, 200, 200, 503, 200]).await;
    let (verdict, lines) = run(&check("2xx", 20_000, 300), &server.url).await;
    let Verdict::Healthy {
        healthy_for,
        took,
        probes,
        ..
    } = verdict
    else {
        panic!("{verdict:?} {lines:?}");
    };
    assert!(healthy_for >= Duration::from_millis(300), "{healthy_for:?}");
    assert!(took >= healthy_for, "{took:?} {healthy_for:?}");
    assert!(probes >= 6, "{probes}");
    assert_eq!(changes(&lines), ["status 200", "status 503", "status 200"]);
}

#[tokio::test]
async fn never_healthy_fails_at_the_deadline_with_the_last_status() {
    let server = serve(&[503]).await;
    let started = std::time::Instant::now();
    let (verdict, lines) = run(&check("2xx", 300, 0), &server.url).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    let expected = "health check failed after 300ms: last status 503 (expected 2xx)";
    assert_eq!(verdict, Verdict::Failed(expected.into()));
    assert_eq!(lines.last().unwrap(), expected);
    assert!(server.hits.load(Ordering::SeqCst) >= 2);
    assert_eq!(changes(&lines), ["status 503"]);
}

#[tokio::test]
async fn connection_refused_is_a_failed_probe() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let (verdict, lines) = run(&check("2xx", 200, 0), &url).await;
    assert_eq!(
        verdict,
        Verdict::Failed(
            "health check failed after 200ms: last error: connection refused (expected 2xx)".into()
        )
    );
    assert_eq!(changes(&lines), ["connection refused"]);
}

#[tokio::test]
async fn a_probe_without_an_answer_times_out_then_recovers() {
    let server = serve(&[0, 200]).await;
    let (verdict, lines) = run(&check("2xx", 10_000, 0), &server.url).await;
    assert!(
        matches!(verdict, Verdict::Healthy { probes: 2, .. }),
        "{verdict:?}"
    );
    assert_eq!(changes(&lines), ["timed out after 300ms", "status 200"]);
}

#[tokio::test]
async fn expected_statuses_decide_and_redirects_are_not_followed() {
    let server = serve(&[301]).await;
    let (verdict, _) = run(&check("200,301", 5_000, 0), &server.url).await;
    assert!(
        matches!(verdict, Verdict::Healthy { status: 301, .. }),
        "{verdict:?}"
    );

    let server = serve(&[301]).await;
    let (verdict, _) = run(&check("200", 200, 0), &server.url).await;
    assert_eq!(
        verdict,
        Verdict::Failed("health check failed after 200ms: last status 301 (expected 200)".into())
    );
}

#[tokio::test]
async fn cancelling_ends_the_gate() {
    let server = serve(&[503]).await;
    let cancel = CancellationToken::new();
    struct CancelOnFirstChange(CancellationToken);
    impl LineSink for CancelOnFirstChange {
        fn line(&mut self, _: pb::Stream, line: String) {
            if line.starts_with("health: status") {
                self.0.cancel();
            }
        }
    }
    let mut sink = CancelOnFirstChange(cancel.clone());
    let url = format!("{}/health", server.url);
    flotilla_shared::tls::install_crypto_provider();
    let verdict = tokio::time::timeout(
        Duration::from_secs(30),
        gate(&check("2xx", 60_000, 0), &url, &mut sink, &cancel),
    )
    .await
    .expect("cancel ends the gate");
    assert_eq!(verdict, Verdict::Cancelled);
}

#[test]
fn passwords_are_not_logged() {
    assert_eq!(
        redact("https://ops:s3cret@shop.example.com/health"),
        "https://***@shop.example.com/health"
    );
    assert_eq!(redact("http://127.0.0.1:5000/x"), "http://127.0.0.1:5000/x");
}
