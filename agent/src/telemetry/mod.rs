//! Telemetry shipping from the agent: host metrics to a Prometheus
//! remote-write 1.0 endpoint and log lines to Loki's push API, batched,
//! retried and buffered on disk (a bounded queue in the spool). Sampling
//! and configuration are not here; the daemon feeds `push` and runs `run`.

pub mod loki;
pub mod remote_write;
pub mod ship;

pub use loki::LogEntry;
pub use remote_write::Series;
pub use ship::{
    Auth, DropReason, Endpoint, LOGS_QUEUE, LogShipper, METRICS_QUEUE, MetricsShipper, ShipConfig,
    ShipError, ShipStats, Shipper, StatsSnapshot,
};

#[cfg(test)]
mod tests;
