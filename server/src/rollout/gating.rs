//! Deploy gates (freeze windows, Flagsmith) and notifications, as the engine
//! uses them. Gates are asked before a deployment starts and before each
//! further batch; every decision is recorded on the deployment. Rollbacks are
//! never gated.

use flotilla_shared::time::now_ms;
use flotilla_shared::{AppName, EnvName};

use super::{Engine, RolloutError};
use crate::notify::{Event, EventKind};
use crate::store::{Deployment, GateRecord, HostState, State, StoreError};

impl Engine {
    /// The freeze window and Flagsmith decisions for a deploy of `app` to
    /// `env` before `batch`. A freeze refusal short-circuits Flagsmith.
    pub(super) async fn check_gates(
        &self,
        app: &AppName,
        env: &EnvName,
        team: Option<&str>,
        override_freeze: bool,
        batch: u32,
    ) -> Result<Vec<GateRecord>, RolloutError> {
        let mut out = Vec::new();
        if let Some(freeze) = self.freeze_record(env, override_freeze, batch)? {
            let refused = !freeze.allowed;
            out.push(freeze);
            if refused {
                return Ok(out);
            }
        }
        if let Some(gates) = &self.gates
            && let Some(decision) = gates.flagsmith(app, env, team).await
        {
            out.push(GateRecord {
                gate: "flagsmith".into(),
                allowed: decision.allowed,
                source: decision.source.as_str().into(),
                reason: decision.reason,
                at_ms: decision.at_ms,
                batch,
            });
        }
        Ok(out)
    }

    /// The freeze decision for `d` before `batch`, if a window is active.
    pub(super) fn freeze_gate(
        &self,
        d: &Deployment,
        batch: u32,
    ) -> Result<Option<GateRecord>, StoreError> {
        self.freeze_record(&d.env, d.override_freeze, batch)
    }

    fn freeze_record(
        &self,
        env: &EnvName,
        override_freeze: bool,
        batch: u32,
    ) -> Result<Option<GateRecord>, StoreError> {
        let now = now_ms();
        let Some(freeze) = crate::gates::active_freeze(&self.store, env, now)? else {
            return Ok(None);
        };
        let what = format!(
            "{} ({}, by {})",
            freeze.reason, freeze.window, freeze.created_by
        );
        Ok(Some(if override_freeze {
            GateRecord {
                gate: "freeze".into(),
                allowed: true,
                source: "override".into(),
                reason: format!("{env} is frozen: {what}; deployed anyway with --override-freeze"),
                at_ms: now,
                batch,
            }
        } else {
            GateRecord {
                gate: "freeze".into(),
                allowed: false,
                source: "window".into(),
                reason: format!(
                    "{env} is frozen: {what}; rollbacks still work, and an admin may deploy with --override-freeze"
                ),
                at_ms: now,
                batch,
            }
        }))
    }

    /// Stops a deployment a gate refused between batches: pending hosts are
    /// skipped, hosts that took the release keep it (a gate stops a rollout,
    /// it does not revert it; `flotilla rollback` does). The caller holds the lock.
    pub(super) async fn block(
        &self,
        d: &mut Deployment,
        reason: String,
    ) -> Result<(), RolloutError> {
        for i in 0..d.hosts.len() {
            if d.hosts[i].state == HostState::Pending {
                d.hosts[i].state = HostState::Skipped;
                d.hosts[i].error = "not attempted: blocked by a deploy gate".into();
                d.event("host_finished", Some(i), "skipped");
            }
        }
        tracing::warn!(deployment = %d.id, %reason, "deployment blocked by a gate");
        self.finish(d, State::Blocked, reason, None).await
    }

    /// Saves a deployment a gate refused before it started: final at once,
    /// never active, so it neither waits for nor holds the app's lock.
    pub(super) async fn record_blocked(
        &self,
        mut d: Deployment,
        reason: String,
    ) -> Result<Deployment, RolloutError> {
        for h in &mut d.hosts {
            h.state = HostState::Skipped;
            h.error = "not attempted: blocked by a deploy gate".into();
        }
        d.state = State::Blocked;
        d.error = reason;
        d.finished_at_ms = now_ms();
        let message = format!("blocked: {}", d.error);
        d.event("finished", None, message);
        self.store.save_deployment(&mut d, None, &[])?;
        // Queued before the flush: durable together with the deployment.
        self.notify(&d, EventKind::DeploymentBlocked, None);
        self.store.flush().await?;
        self.changed();
        self.sessions.metrics().deployment_ended(
            d.kind.as_str(),
            d.state.as_str(),
            (d.finished_at_ms - d.created_at_ms) as f64 / 1000.0,
        );
        tracing::warn!(deployment = %d.id, app = %d.app, env = %d.env, reason = %d.error,
            "deployment blocked by a gate");
        Ok(d)
    }

    /// Queues a notification about `d` (and host `host`); never fails the
    /// deployment: an outbox problem is logged.
    pub(super) fn notify(&self, d: &Deployment, kind: EventKind, host: Option<usize>) {
        let Some(notifier) = &self.notifier else {
            return;
        };
        let host = host.and_then(|i| d.hosts.get(i));
        let end = if d.finished_at_ms > 0 {
            d.finished_at_ms
        } else {
            now_ms()
        };
        let event = Event {
            kind,
            app: Some(d.app.to_string()),
            env: d.env.to_string(),
            deployment_id: Some(d.id.clone()),
            image: Some(d.image.to_string()),
            release: (d.release > 0).then_some(d.release),
            by: Some(d.created_by.clone()),
            host: host.map(|h| h.host_id.to_string()),
            duration_ms: Some(end.saturating_sub(d.created_at_ms)),
            reason: match host {
                Some(h) if !h.error.is_empty() => Some(h.error.clone()),
                _ => (!d.error.is_empty()).then(|| d.error.clone()),
            },
            at_ms: now_ms(),
            deployment_kind: Some(d.kind.as_str().to_owned()),
        };
        if let Err(e) = notifier.enqueue(&event) {
            tracing::error!(deployment = %d.id, "cannot queue a notification: {e}");
        }
    }
}
