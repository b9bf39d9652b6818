//! What a notification is about ([`Event`]) and the words every channel uses
//! for it (subject line, labelled details). Rendering for one channel lives
//! with that channel.

use std::fmt;

use flotilla_shared::time::{format_ms, now_ms};
use serde::{Deserialize, Serialize};

/// The kinds of event, `snake_case` in config and payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    DeploymentStarted,
    DeploymentSucceeded,
    DeploymentFailed,
    DeploymentRolledBack,
    DeploymentBlocked,
    DeploymentCancelled,
    HostFailed,
    AgentDisconnected,
    CertExpiring,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        Self::DeploymentStarted,
        Self::DeploymentSucceeded,
        Self::DeploymentFailed,
        Self::DeploymentRolledBack,
        Self::DeploymentBlocked,
        Self::DeploymentCancelled,
        Self::HostFailed,
        Self::AgentDisconnected,
        Self::CertExpiring,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeploymentStarted => "deployment_started",
            Self::DeploymentSucceeded => "deployment_succeeded",
            Self::DeploymentFailed => "deployment_failed",
            Self::DeploymentRolledBack => "deployment_rolled_back",
            Self::DeploymentBlocked => "deployment_blocked",
            Self::DeploymentCancelled => "deployment_cancelled",
            Self::HostFailed => "host_failed",
            Self::AgentDisconnected => "agent_disconnected",
            Self::CertExpiring => "cert_expiring",
        }
    }

    /// What happened, as the end of a subject line.
    pub fn phrase(self) -> &'static str {
        match self {
            Self::DeploymentStarted => "deploying",
            Self::DeploymentSucceeded => "deployed",
            Self::DeploymentFailed => "failed",
            Self::DeploymentRolledBack => "rolled back",
            Self::DeploymentBlocked => "blocked",
            Self::DeploymentCancelled => "cancelled",
            Self::HostFailed => "host failed",
            Self::AgentDisconnected => "agent disconnected",
            Self::CertExpiring => "agent certificate expiring",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something worth telling people about. Fields that do not apply are `None`
/// (and `null` in webhook payloads, so the shape never changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    #[serde(default)]
    pub app: Option<String>,
    pub env: String,
    #[serde(default)]
    pub deployment_id: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub release: Option<u64>,
    /// Who started (or cancelled) the deployment.
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub duration_ms: Option<i64>,
    #[serde(default)]
    pub reason: Option<String>,
    pub at_ms: i64,
    /// `deploy` or `rollback`, for deployment events (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_kind: Option<String>,
}

impl Event {
    /// An event of `kind` in `env`, now, with every optional field empty.
    pub fn new(kind: EventKind, env: impl Into<String>) -> Self {
        Self {
            kind,
            app: None,
            env: env.into(),
            deployment_id: None,
            image: None,
            release: None,
            by: None,
            host: None,
            duration_ms: None,
            reason: None,
            at_ms: now_ms(),
            deployment_kind: None,
        }
    }

    /// `shop in production: rolled back`, `web-1 in production: agent disconnected`.
    pub fn summary(&self) -> String {
        let phrase = match (self.kind, &self.host) {
            (EventKind::HostFailed, Some(host)) if self.app.is_some() => {
                format!("host {host} failed")
            }
            _ => self.kind.phrase().to_owned(),
        };
        match (&self.app, &self.host) {
            (Some(app), _) => format!("{app} in {}: {phrase}", self.env),
            (None, Some(host)) => format!("{host} in {}: {phrase}", self.env),
            (None, None) => format!("{}: {phrase}", self.env),
        }
    }

    /// The email subject: `[flotilla] shop in production: rolled back`.
    pub fn subject(&self) -> String {
        format!("[flotilla] {}", self.summary())
    }

    /// Labelled facts, in display order; only those that are set.
    pub fn details(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(app) = &self.app {
            out.push(("App", app.clone()));
        }
        out.push(("Environment", self.env.clone()));
        if let Some(release) = self.release {
            out.push(("Release", format!("#{release}")));
        }
        if let Some(image) = &self.image {
            out.push(("Image", image.clone()));
        }
        if let Some(host) = &self.host {
            out.push(("Host", host.clone()));
        }
        if let Some(by) = &self.by {
            out.push(("By", by.clone()));
        }
        if let Some(ms) = self.duration_ms {
            out.push(("Duration", human_duration(ms)));
        }
        if let Some(id) = &self.deployment_id {
            out.push(("Deployment", id.clone()));
        }
        out.push(("At", format_ms(self.at_ms)));
        out
    }

    /// Where to read the deployment's logs: a link when the coordinator has a
    /// public URL, else the CLI command. `None` without a deployment.
    pub fn logs(&self, public_url: Option<&str>) -> Option<Logs> {
        let id = self.deployment_id.as_deref()?;
        Some(match public_url {
            Some(url) => Logs::Link(format!("{url}/deployments/{id}")),
            None => Logs::Command(format!("flotilla logs {id}")),
        })
    }
}

/// See [`Event::logs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logs {
    Link(String),
    Command(String),
}

/// `850ms`, `42s`, `3m 05s`, `1h 02m`.
pub fn human_duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = ms / 1000;
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        _ => format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60),
    }
}
