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
            "flotilla_agent_connected",
            "1 while a session with the coordinator is up, else 0",
            m.connected.clone(),
        );
        registry.register(
            "flotilla_agent_sessions",
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
            "flotilla_agent_connected 1\n",
            "flotilla_agent_sessions_total 1\n",
            "flotilla_agent_commands_total{outcome=\"failed\"} 1\n",
            "flotilla_agent_commands_refused_total{reason=\"expired\"} 1\n",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
