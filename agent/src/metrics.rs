//! The agent's Prometheus metrics (served on `/metrics` by
//! `flotilla_shared::ops` with `run --http-listen`). Names and labels are
//! stable (docs/telemetry.md). Other agent subsystems register their own
//! metrics on the same [`Registry`] in `run` before it is served (see
//! [`Metrics::register`]).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// The link's and the worker's metrics. Cheap to clone handles inside; a
/// `Metrics` that was never registered still counts (nobody reads it).
#[derive(Default)]
pub struct Metrics {
    connected: Gauge,
    sessions: Counter,
    commands: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
}

impl Metrics {
    /// Creates the agent's metrics and registers them on `registry` under
    /// their full names (`flotilla_agent_…`); register more on the same
    /// registry afterwards.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "flotilla_agent_coordinator_connected",
            "1 while a session with the coordinator is up, else 0",
            m.connected.clone(),
        );
        registry.register(
            "flotilla_agent_coordinator_sessions",
            "Sessions established with the coordinator (first connection and every reconnect)",
            m.sessions.clone(),
        );
        registry.register(
            "flotilla_agent_commands",
            "Commands run, by outcome (succeeded, failed, interrupted)",
            m.commands.clone(),
        );
        registry.register(
            "flotilla_agent_commands_refused",
            "Commands refused before running, by reason (replayed, expired, bad_signature, …)",
            m.refused.clone(),
        );
        // Zero for every label set, so rate() works before the first event.
        for outcome in ["succeeded", "failed", "interrupted"] {
            let _ = m
                .commands
                .get_or_create(&vec![("outcome", outcome.to_owned())]);
        }
        for reason in flotilla_shared::signing::RefusalReason::ALL {
            let _ = m
                .refused
                .get_or_create(&vec![("reason", reason.code().to_owned())]);
        }
        m
    }

    pub fn session_started(&self) {
        self.sessions.inc();
        self.connected.set(1);
    }

    pub fn session_ended(&self) {
        self.connected.set(0);
    }

    /// A command ran to `outcome` (the proto name, e.g. `OUTCOME_FAILED`, or a plain word).
    pub fn command_finished(&self, outcome: &str) {
        let outcome = outcome
            .strip_prefix("OUTCOME_")
            .unwrap_or(outcome)
            .to_ascii_lowercase();
        self.commands
            .get_or_create(&vec![("outcome", outcome)])
            .inc();
    }

    pub fn command_refused(&self, reason: &str) {
        self.refused
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }
}

/// Registers the telemetry pipelines' figures (read from their counters at
/// every scrape): `flotilla_agent_telemetry_queue_entries{pipeline}`,
/// `…_queue_bytes{pipeline}`, `…_sent_total{pipeline}` (entries delivered),
/// `…_retries_total{pipeline}`, `…_dropped_total{pipeline,reason}` (reason
/// `overflow`: the on-disk buffer was full, the oldest went; `rejected`: the
/// receiver answered 4xx; `retry_exhausted`: 5xx/429 past the retry bound),
/// and `flotilla_agent_log_warnings_dropped_total` (warnings not queued for
/// Loki because the hand-over channel was full).
pub fn register_pipelines(
    registry: &mut Registry,
    pipelines: Vec<(
        &'static str,
        std::sync::Arc<crate::telemetry::ship::ShipStats>,
    )>,
) {
    registry.register_collector(Box::new(PipelineCollector { pipelines }));
}

struct PipelineCollector {
    pipelines: Vec<(
        &'static str,
        std::sync::Arc<crate::telemetry::ship::ShipStats>,
    )>,
}

impl std::fmt::Debug for PipelineCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.pipelines.iter().map(|(n, _)| *n).collect();
        f.debug_struct("PipelineCollector")
            .field("pipelines", &names)
            .finish()
    }
}

impl PipelineCollector {
    /// One metric family with a sample per pipeline (and per extra label).
    fn family(
        &self,
        encoder: &mut prometheus_client::encoding::DescriptorEncoder,
        (name, help, kind): (&str, &str, prometheus_client::metrics::MetricType),
        values: impl Fn(&crate::telemetry::ship::ShipStats) -> Vec<(Option<&'static str>, u64)>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;

        let mut family = encoder.encode_descriptor(name, help, None, kind)?;
        for (pipeline, stats) in &self.pipelines {
            for (reason, value) in values(stats) {
                let with_reason = [("pipeline", *pipeline), ("reason", reason.unwrap_or(""))];
                let labels: &[(&str, &str)] = if reason.is_some() {
                    &with_reason
                } else {
                    &with_reason[..1]
                };
                let encoder = family.encode_family(&labels)?;
                if matches!(kind, MetricType::Counter) {
                    ConstCounter::new(value).encode(encoder)?;
                } else {
                    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(encoder)?;
                }
            }
        }
        Ok(())
    }
}

impl prometheus_client::collector::Collector for PipelineCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::MetricType::{Counter, Gauge};
        use prometheus_client::metrics::counter::ConstCounter;
        use std::sync::atomic::Ordering::Relaxed;

        let one = |v: &std::sync::atomic::AtomicU64| vec![(None, v.load(Relaxed))];
        self.family(
            &mut encoder,
            (
                "flotilla_agent_telemetry_queue_entries",
                "Entries waiting in the pipeline's on-disk buffer",
                Gauge,
            ),
            |s| one(&s.queued_entries),
        )?;
        self.family(
            &mut encoder,
            (
                "flotilla_agent_telemetry_queue_bytes",
                "Bytes the pipeline's on-disk buffer holds",
                Gauge,
            ),
            |s| one(&s.queued_bytes),
        )?;
        self.family(
            &mut encoder,
            (
                "flotilla_agent_telemetry_sent",
                "Entries the receiver accepted (2xx)",
                Counter,
            ),
            |s| one(&s.sent_entries_total),
        )?;
        self.family(
            &mut encoder,
            (
                "flotilla_agent_telemetry_retries",
                "Requests retried (5xx, 429, network errors)",
                Counter,
            ),
            |s| one(&s.retries_total),
        )?;
        self.family(
            &mut encoder,
            (
                "flotilla_agent_telemetry_dropped",
                "Entries dropped, by reason (overflow, rejected, retry_exhausted)",
                Counter,
            ),
            |s| {
                vec![
                    (Some("overflow"), s.dropped_overflow_total.load(Relaxed)),
                    (Some("rejected"), s.dropped_rejected_total.load(Relaxed)),
                    (
                        Some("retry_exhausted"),
                        s.dropped_retry_exhausted_total.load(Relaxed),
                    ),
                ]
            },
        )?;
        let metric = encoder.encode_descriptor(
            "flotilla_agent_log_warnings_dropped",
            "Agent warnings not queued for Loki (hand-over channel full)",
            None,
            Counter,
        )?;
        ConstCounter::new(crate::logs::warnings_dropped()).encode(metric)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn pipeline_figures_are_read_at_every_scrape() {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = std::sync::Arc::new(crate::telemetry::ship::ShipStats::default());
        let mut registry = Registry::default();
        register_pipelines(
            &mut registry,
            vec![("remote_write", std::sync::Arc::clone(&stats))],
        );
        stats.queued_entries.store(7, Relaxed);
        stats.sent_entries_total.store(40, Relaxed);
        stats.dropped_overflow_total.store(3, Relaxed);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "flotilla_agent_telemetry_queue_entries{pipeline=\"remote_write\"} 7",
            "flotilla_agent_telemetry_queue_bytes{pipeline=\"remote_write\"} 0",
            "flotilla_agent_telemetry_sent_total{pipeline=\"remote_write\"} 40",
            "flotilla_agent_telemetry_retries_total{pipeline=\"remote_write\"} 0",
            "flotilla_agent_telemetry_dropped_total{pipeline=\"remote_write\",reason=\"overflow\"} 3",
            "flotilla_agent_telemetry_dropped_total{pipeline=\"remote_write\",reason=\"rejected\"} 0",
            "flotilla_agent_log_warnings_dropped_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        stats.queued_entries.store(0, Relaxed);
        let mut again = String::new();
        prometheus_client::encoding::text::encode(&mut again, &registry).unwrap();
        assert!(
            again.contains("flotilla_agent_telemetry_queue_entries{pipeline=\"remote_write\"} 0")
        );
    }

    #[test]
    fn names_and_labels() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry);
        m.session_started();
        m.command_finished("OUTCOME_FAILED");
        m.command_refused("expired");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for needle in [
            "flotilla_agent_coordinator_connected 1\n",
            "flotilla_agent_coordinator_sessions_total 1\n",
            "flotilla_agent_commands_total{outcome=\"failed\"} 1\n",
            "flotilla_agent_commands_refused_total{reason=\"expired\"} 1\n",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
