//! Process shutdown: one future that completes on SIGINT or SIGTERM.

/// Completes when the process receives SIGINT or SIGTERM. Cancel-safe.
///
/// If a handler cannot be installed the error is logged and the future waits on
/// the other signal only, so a daemon never exits just because of that.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::error!("cannot install SIGTERM handler: {err}");
            None
        }
    };
    let term = async {
        match term.as_mut() {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        () = term => tracing::info!("SIGTERM received, shutting down"),
    }
}
