//! The ops HTTP listener both daemons serve next to their gRPC port:
//! `/healthz` (the process serves), `/readyz` (a readiness callback decides)
//! and `/metrics` (the Prometheus text format of a `prometheus-client`
//! registry). Plain HTTP/1.1 on its own listener; never on the gRPC port.
//!
//! Not here: which metrics exist (each daemon's `metrics` module) or what
//! "ready" means (the daemon's callback).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// The content type of the Prometheus text exposition format that
/// `prometheus-client` writes (OpenMetrics 1.0.0).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Answers `/readyz`: `Ok(())` → 200 `ready`, `Err(reason)` → 503 with the
/// one-line reason.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct Ops {
    registry: Arc<Registry>,
    ready: Readiness,
}

/// Binds the ops listener; the error names the address (fail fast at start,
/// before anything else is served).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind the ops HTTP listener (--http-listen) on {addr}"))
}

/// Serves `/healthz`, `/readyz` and `/metrics` on `listener` until `shutdown`
/// completes, then stops accepting and finishes requests in flight.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Ops { registry, ready });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(ops): State<Ops>) -> Response {
    match (ops.ready)() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => {
            let line = reason.lines().next().unwrap_or_default().to_owned();
            (StatusCode::SERVICE_UNAVAILABLE, format!("{line}\n")).into_response()
        }
    }
}

async fn metrics(State(ops): State<Ops>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &ops.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(e) => {
            tracing::error!("encoding metrics failed: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("flotilla_test_things", "Things", counter.clone());
        counter.inc();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ready);
        let readiness: Readiness = Arc::new(move || {
            if flag.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("not connected to the coordinator".into())
            }
        });
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Arc::new(registry), readiness, async {
            let _ = stopped.await;
        }));

        let health = get(addr, "/healthz").await;
        assert!(
            health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
            "{health}"
        );
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(
            not_ready.ends_with("not connected to the coordinator\n"),
            "{not_ready}"
        );
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        let metrics = get(addr, "/metrics").await;
        assert!(
            metrics.contains("application/openmetrics-text"),
            "{metrics}"
        );
        assert!(
            metrics.contains("flotilla_test_things_total 1\n"),
            "{metrics}"
        );
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn binding_a_used_port_names_the_flag() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let err = bind(taken.local_addr().unwrap()).await.unwrap_err();
        assert!(format!("{err:#}").contains("--http-listen"), "{err:#}");
    }
}
