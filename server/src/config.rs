//! `server.toml`, the coordinator's configuration file (DESIGN.md §6):
//! deploy gates and notification channels. Secrets are never written in it
//! directly in production: each secret field has `_env` and `_file` forms.
//! The flags of `flotilla-server serve` (and their `FLOTILLA_*` variables)
//! cover the rest.
//!
//! ```toml
//! [gates.flagsmith]
//! api_url = "https://edge.api.flagsmith.com/api/v1/"
//! [gates.flagsmith.environments.production]
//! environment_key_env = "FLOTILLA_FLAGSMITH_PRODUCTION_KEY"
//! flag = "deploys_enabled"
//!
//! [notifications.channels.ops]
//! kind = "slack"
//! webhook_url_env = "FLOTILLA_SLACK_URL"
//! ```
//!
//! See docs/gates.md and docs/notifications.md for every key.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::gates::{GatesConfig, ResolvedGates};
use crate::notify::grafana::GrafanaConfig;
use crate::notify::sentry_releases::SentryReleasesConfig;
use crate::notify::{NotifyConfig, ResolvedNotify};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: [gates]: {message}")]
    Gates { path: PathBuf, message: String },
    #[error("{path}: [notifications]: {message}")]
    Notify { path: PathBuf, message: String },
    #[error("{path}: [{section}]: {message}")]
    Extra {
        path: PathBuf,
        section: &'static str,
        message: String,
    },
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    #[serde(default)]
    pub gates: Option<GatesConfig>,
    #[serde(default)]
    pub notifications: Option<NotifyConfig>,
    /// Grafana annotations for deployments and rollbacks (docs/telemetry.md).
    #[serde(default)]
    pub grafana: Option<GrafanaConfig>,
    /// Sentry deploy markers for apps' Sentry projects (docs/telemetry.md).
    #[serde(default)]
    pub sentry: Option<SentryReleasesConfig>,
}

/// The configuration with its secrets read and everything checked.
#[derive(Default)]
pub struct ServerSettings {
    pub gates: Option<ResolvedGates>,
    pub notifications: Option<ResolvedNotify>,
}

impl ServerSettings {
    /// Reads and checks `path`: a mistake (unknown key, bad duration, a
    /// secret whose variable or file is missing) names the file, the line and
    /// the key, never a secret's value.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: ServerFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        let gates = file
            .gates
            .map(GatesConfig::resolve)
            .transpose()
            .map_err(|e| ConfigError::Gates {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        let notifications = file
            .notifications
            .map(NotifyConfig::resolve)
            .transpose()
            .map_err(|e| ConfigError::Notify {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        // [grafana] and [sentry] deliver through the notification outbox as
        // channels of their own, which exists even without [notifications].
        let env = |name: &str| std::env::var(name).ok();
        let mut extra = Vec::new();
        if let Some(grafana) = file.grafana {
            let channel = grafana.resolve_with(&env).map_err(|e| ConfigError::Extra {
                path: path.to_owned(),
                section: "grafana",
                message: e.to_string(),
            })?;
            extra.push(("grafana", channel));
        }
        if let Some(sentry) = file.sentry {
            let channel = sentry.resolve_with(&env).map_err(|e| ConfigError::Extra {
                path: path.to_owned(),
                section: "sentry",
                message: e.to_string(),
            })?;
            extra.push(("sentry", channel));
        }
        let notifications = if extra.is_empty() {
            notifications
        } else {
            let mut notify = match notifications {
                Some(n) => n,
                None => NotifyConfig::default()
                    .resolve()
                    .map_err(|e| ConfigError::Notify {
                        path: path.to_owned(),
                        message: e.to_string(),
                    })?,
            };
            for (section, channel) in extra {
                if notify.channel(&channel.name).is_some() {
                    return Err(ConfigError::Extra {
                        path: path.to_owned(),
                        section,
                        message: format!(
                            "the notification channel name {:?} is reserved for [{section}]; rename that channel",
                            channel.name
                        ),
                    });
                }
                notify.channels.push(channel);
            }
            Some(notify)
        };
        Ok(Self {
            gates,
            notifications,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses() {
        let file: ServerFile = toml::from_str(include_str!("../../deploy/examples/server.toml"))
            .unwrap_or_else(|e| panic!("deploy/examples/server.toml: {e}"));
        assert!(
            file.gates.is_some()
                && file.notifications.is_some()
                && file.grafana.is_some()
                && file.sentry.is_some()
        );
    }

    #[test]
    fn unknown_keys_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, "[gates]\nflagsmith_typo = 1\n").unwrap();
        let err = ServerSettings::load(&path).err().unwrap().to_string();
        assert!(
            err.contains("server.toml") && err.contains("flagsmith_typo"),
            "{err}"
        );
        assert!(err.contains("line 2"), "{err}");
    }
}
