//! Grafana annotations (`[grafana]` in server.toml): every deployment and
//! rollback becomes an annotation, delivered through the notification outbox
//! as the channel named `grafana` (so it gets the same durability, backoff and
//! permanent-4xx handling as the other channels).
//!
//! `deployment_started` POSTs a point annotation and records its id in the
//! store; the final event (`deployment_succeeded`, `_failed`, `_rolled_back`,
//! `_cancelled`, `_blocked`) PATCHes it into a region (`timeEnd`, the outcome
//! tag, the final text), or POSTs a region when the start was never
//! annotated. Grafana API: `POST /api/annotations`, `PATCH /api/annotations/:id`,
//! `Authorization: Bearer <service account token>`.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::json;

use super::config::{Channel, ConfigError, Secret, SecretFields, Target, check_url, load_secret};
use super::event::{Event, EventKind};
use super::outcome::{self, Outcome};
use crate::store::Store;

/// The channel name the Grafana annotations use in the outbox and in logs.
pub const CHANNEL: &str = "grafana";

/// `[grafana]` as written in server.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrafanaConfig {
    /// Grafana's base URL, e.g. `https://grafana.example.com` (https; plain
    /// http only to a loopback host).
    pub url: String,
    /// Environment variable holding the service account token.
    pub token_env: Option<String>,
    /// File holding the service account token.
    pub token_file: Option<PathBuf>,
    /// Put the annotations on this dashboard only; absent means organisation-wide
    /// annotations (shown by any dashboard querying the `flotilla` tag).
    pub dashboard_uid: Option<String>,
    /// Extra tags on every annotation.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Environments whose deployments are annotated; empty or absent means all.
    #[serde(default)]
    pub environments: Vec<String>,
}

/// A resolved `[grafana]` section (`Debug` shows the token as `***`).
#[derive(Debug, Clone)]
pub struct GrafanaTarget {
    /// Without a trailing slash.
    pub url: String,
    pub token: Secret,
    pub dashboard_uid: Option<String>,
    pub tags: Vec<String>,
}

impl GrafanaConfig {
    /// The outbox channel for this section, its token read from the
    /// environment (through `env`) or its file.
    pub fn resolve_with(
        self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Channel, ConfigError> {
        check_url(&self.url, true).map_err(|reason| ConfigError::Channel {
            channel: CHANNEL.into(),
            field: "url",
            reason,
        })?;
        let token = load_secret(
            CHANNEL,
            SecretFields {
                env: "token_env",
                file: "token_file",
                inline: None,
            },
            self.token_env,
            self.token_file,
            None,
            env,
        )?
        .ok_or_else(|| ConfigError::Channel {
            channel: CHANNEL.into(),
            field: "token_env",
            reason: "a service account token is required (token_env or token_file)".into(),
        })?;
        Ok(Channel {
            name: CHANNEL.into(),
            environments: self.environments,
            events: Some(vec![
                EventKind::DeploymentStarted,
                EventKind::DeploymentSucceeded,
                EventKind::DeploymentFailed,
                EventKind::DeploymentRolledBack,
                EventKind::DeploymentCancelled,
                EventKind::DeploymentBlocked,
            ]),
            target: Target::Grafana(GrafanaTarget {
                url: self.url.trim_end_matches('/').to_owned(),
                token,
                dashboard_uid: self.dashboard_uid.filter(|u| !u.is_empty()),
                tags: self.tags,
            }),
        })
    }
}

/// The outcome tag value of a final event; `None` for the start.
fn outcome_of(kind: EventKind) -> Option<&'static str> {
    match kind {
        EventKind::DeploymentSucceeded => Some("succeeded"),
        EventKind::DeploymentFailed => Some("failed"),
        EventKind::DeploymentRolledBack => Some("rolled_back"),
        EventKind::DeploymentCancelled => Some("cancelled"),
        EventKind::DeploymentBlocked => Some("blocked"),
        _ => None,
    }
}

/// `flotilla`, `app:web`, `env:production`, `kind:deploy`, the configured
/// extras, and `outcome:…` once the deployment ended.
pub fn tags(target: &GrafanaTarget, event: &Event) -> Vec<String> {
    let mut tags = vec!["flotilla".to_owned()];
    if let Some(app) = &event.app {
        tags.push(format!("app:{app}"));
    }
    tags.push(format!("env:{}", event.env));
    tags.push(format!(
        "kind:{}",
        event.deployment_kind.as_deref().unwrap_or("deploy")
    ));
    if let Some(outcome) = outcome_of(event.kind) {
        tags.push(format!("outcome:{outcome}"));
    }
    tags.extend(target.tags.iter().cloned());
    tags
}

/// `web in production: deployed — registry/web:1.4 (release #7) by ci; deployment …`.
fn text(event: &Event) -> String {
    let mut text = event.summary();
    if let Some(image) = &event.image {
        text.push_str(&format!(" — {image}"));
    }
    if let Some(release) = event.release {
        text.push_str(&format!(" (release #{release})"));
    }
    if let Some(by) = &event.by {
        text.push_str(&format!(" by {by}"));
    }
    if let (Some(reason), Some(_)) = (&event.reason, outcome_of(event.kind)) {
        text.push_str(&format!(": {reason}"));
    }
    if let Some(id) = &event.deployment_id {
        text.push_str(&format!("; deployment {id}"));
    }
    text
}

/// Stored for a deployment whose final annotation was delivered, so a start
/// delivered late (after retries) does not add a stray point.
const ENDED: i64 = -1;

/// Delivers one event. Cancel-safe: the store is written only after Grafana
/// answered (a crash in between re-sends; at worst a duplicate point).
pub(super) async fn send(
    http: &reqwest::Client,
    store: &Store,
    target: &GrafanaTarget,
    event: &Event,
) -> Outcome {
    let Some(deployment) = event.deployment_id.as_deref() else {
        return Outcome::Delivered("not about a deployment; nothing to annotate".into());
    };
    let known = match store.grafana_annotation(deployment) {
        Ok(known) => known,
        Err(e) => {
            return Outcome::Retry {
                detail: format!("cannot read the annotation id: {e}"),
                after: None,
                status: None,
            };
        }
    };
    let mut body = json!({ "tags": tags(target, event), "text": text(event) });
    if let Some(uid) = &target.dashboard_uid {
        body["dashboardUID"] = json!(uid);
    }
    let request = if outcome_of(event.kind).is_none() {
        // The start: a point annotation.
        if known == Some(ENDED) {
            return Outcome::Delivered("the deployment was already annotated".into());
        }
        body["time"] = json!(event.at_ms);
        http.post(format!("{}/api/annotations", target.url))
    } else {
        let start = event.at_ms - event.duration_ms.unwrap_or(0).max(0);
        body["time"] = json!(start);
        body["timeEnd"] = json!(event.at_ms);
        match known {
            Some(id) if id >= 0 => http.patch(format!("{}/api/annotations/{id}", target.url)),
            _ => http.post(format!("{}/api/annotations", target.url)),
        }
    };
    let response = match request
        .bearer_auth(target.token.expose())
        .json(&body)
        .send()
        .await
    {
        Ok(response) => response,
        Err(e) => return outcome::from_error(e),
    };
    if !response.status().is_success() {
        return outcome::from_response(response).await;
    }
    let status = response.status().as_u16();
    let record = if outcome_of(event.kind).is_some() {
        ENDED
    } else {
        // Grafana answers `{"id": N, "message": "Annotation added"}`.
        match response.json::<serde_json::Value>().await {
            Ok(v) => match v.get("id").and_then(serde_json::Value::as_i64) {
                Some(id) => id,
                None => {
                    return Outcome::Delivered(format!(
                        "HTTP {status}, but no annotation id in the answer; the end will add a region"
                    ));
                }
            },
            Err(_) => {
                return Outcome::Delivered(format!(
                    "HTTP {status}, but the answer was not JSON; the end will add a region"
                ));
            }
        }
    };
    if let Err(e) = store.set_grafana_annotation(deployment, record) {
        tracing::error!(deployment, "cannot record the Grafana annotation id: {e}");
    }
    Outcome::Delivered(format!("HTTP {status}"))
}
