//! The coordinator's Prometheus metrics (served on `/metrics` by
//! `flotilla_shared::ops`). Names and labels are stable: dashboards and
//! alerts use them (docs/telemetry.md lists them). The code paths that move
//! them call the methods here; nothing else registers metrics.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Deployment durations: 1 s to about 68 min, doubling.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 13))
}

pub struct Metrics {
    registry: Arc<Registry>,
    agents_connected: Gauge,
    agent_connected: Family<Labels, Gauge>,
    agent_sessions: Counter,
    commands_sent: Counter,
    commands_acknowledged: Counter,
    commands_refused: Family<Labels, Counter>,
    deployments: Family<Labels, Counter>,
    deployment_duration: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every coordinator metric, registered (names get the `flotilla_`
    /// prefix; counters get `_total`).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flotilla");
        let agents_connected = Gauge::default();
        registry.register(
            "agents_connected",
            "Agents with a live session now",
            agents_connected.clone(),
        );
        let agent_connected = Family::<Labels, Gauge>::default();
        registry.register(
            "agent_connected",
            "Per host (labels host, env): 1 while its agent has a session, 0 after it ended",
            agent_connected.clone(),
        );
        let agent_sessions = Counter::default();
        registry.register(
            "agent_sessions",
            "Agent sessions started (first connections and stream reconnects)",
            agent_sessions.clone(),
        );
        let commands_sent = Counter::default();
        registry.register(
            "commands_sent",
            "Signed deploy/rollback commands handed to an agent session (re-sends after a reconnect included)",
            commands_sent.clone(),
        );
        let commands_acknowledged = Counter::default();
        registry.register(
            "commands_acknowledged",
            "Commands agents reported as accepted",
            commands_acknowledged.clone(),
        );
        let commands_refused = Family::<Labels, Counter>::default();
        registry.register(
            "commands_refused",
            "Commands agents refused, by reason (replayed, expired, bad_signature, …)",
            commands_refused.clone(),
        );
        let deployments = Family::<Labels, Counter>::default();
        registry.register(
            "deployments",
            "Deployments ended, by kind (deploy, rollback) and outcome (succeeded, failed, rolled_back, cancelled, blocked)",
            deployments.clone(),
        );
        let deployment_duration =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "deployment_duration_seconds",
            "Time from creation to the final state, by kind and outcome",
            deployment_duration.clone(),
        );
        // Counters start at zero for every label set they can have, so
        // rate() and absent() work before the first event.
        for reason in flotilla_shared::signing::RefusalReason::ALL {
            let _ = commands_refused.get_or_create(&vec![("reason", reason.code().to_owned())]);
        }
        for kind in ["deploy", "rollback"] {
            for outcome in ["succeeded", "failed", "rolled_back", "cancelled", "blocked"] {
                let _ = deployments.get_or_create(&vec![
                    ("kind", kind.to_owned()),
                    ("outcome", outcome.to_owned()),
                ]);
            }
        }
        Self {
            registry: Arc::new(registry),
            agents_connected,
            agent_connected,
            agent_sessions,
            commands_sent,
            commands_acknowledged,
            commands_refused,
            deployments,
            deployment_duration,
        }
    }

    /// The registry `/metrics` encodes.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    pub fn set_agents_connected(&self, n: usize) {
        self.agents_connected
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// A session started for `host` (in `env`).
    pub fn session_started(&self, host: &str, env: &str) {
        self.agent_sessions.inc();
        self.agent_connected
            .get_or_create(&host_labels(host, env))
            .set(1);
    }

    /// `host`'s last session ended.
    pub fn session_ended(&self, host: &str, env: &str) {
        self.agent_connected
            .get_or_create(&host_labels(host, env))
            .set(0);
    }

    /// A revoked host leaves the per-host series (it will not come back).
    pub fn host_removed(&self, host: &str, env: &str) {
        self.agent_connected.remove(&host_labels(host, env));
    }

    pub fn command_sent(&self) {
        self.commands_sent.inc();
    }

    pub fn command_acknowledged(&self) {
        self.commands_acknowledged.inc();
    }

    pub fn command_refused(&self, reason: &str) {
        self.commands_refused
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    /// A deployment of `kind` reached its final state `outcome` after `seconds`.
    pub fn deployment_ended(&self, kind: &str, outcome: &str, seconds: f64) {
        let labels = vec![("kind", kind.to_owned()), ("outcome", outcome.to_owned())];
        self.deployments.get_or_create(&labels).inc();
        self.deployment_duration
            .get_or_create(&labels)
            .observe(seconds.max(0.0));
    }
}

fn host_labels(host: &str, env: &str) -> Labels {
    vec![("host", host.to_owned()), ("env", env.to_owned())]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_and_labels() {
        let m = Metrics::new();
        m.deployment_ended("deploy", "succeeded", 3.0);
        m.command_refused("expired");
        m.session_started("web-1", "prod");
        m.command_sent();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &m.registry()).unwrap();
        m.session_started("web-2", "prod");
        m.host_removed("web-2", "prod");
        let mut after = String::new();
        prometheus_client::encoding::text::encode(&mut after, &m.registry()).unwrap();
        assert!(!after.contains("host=\"web-2\""), "{after}");
        for needle in [
            "flotilla_deployments_total{kind=\"deploy\",outcome=\"succeeded\"} 1\n",
            "flotilla_deployment_duration_seconds_count{kind=\"deploy\",outcome=\"succeeded\"} 1\n",
            "flotilla_commands_refused_total{reason=\"expired\"} 1\n",
            "flotilla_agent_connected{host=\"web-1\",env=\"prod\"} 1\n",
            "flotilla_agent_sessions_total 1\n",
            "flotilla_commands_sent_total 1\n",
            "flotilla_commands_acknowledged_total 0\n",
            "flotilla_agents_connected 0\n",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
