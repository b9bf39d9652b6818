//! The `[notifications]` section of the coordinator's config file and its
//! validated form. Secrets (Slack webhook URLs, webhook signing secrets, SMTP
//! passwords) are read once, here, from an environment variable or a file, and
//! live in [`Secret`] from then on; no error or log line ever contains one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_shared::EnvName;
use lettre::message::Mailbox;
use serde::Deserialize;

use super::event::{Event, EventKind};

pub use flotilla_shared::secret::Secret;

/// `[notifications]` as written in the config file. Durations are humantime
/// strings (`"90s"`, `"5m"`, `"14d"`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// An agent offline this long produces an `agent_disconnected` event.
    /// Default `"5m"`.
    pub disconnect_after: Option<String>,
    /// An agent certificate expiring within this produces a `cert_expiring`
    /// event. Default `"14d"`.
    pub cert_expiry_warning: Option<String>,
    /// The coordinator's public address, for links in messages
    /// (`{public_url}/deployments/<id>`). Without it messages name the
    /// `flotilla logs <id>` command instead.
    pub public_url: Option<String>,
    /// A notification not delivered this long after its event is dropped
    /// (logged as an error). Default `"24h"`.
    pub give_up_after: Option<String>,
    /// Delay before the first retry; it doubles with every failed attempt (with
    /// jitter), up to `retry_max`. Default `"10s"`.
    pub retry_initial: Option<String>,
    /// Longest delay between two attempts. Default `"15m"`.
    pub retry_max: Option<String>,
    /// Longest a single delivery attempt may take (connect, send, answer).
    /// Default `"10s"`.
    pub send_timeout: Option<String>,
    /// Channels delivered to at the same time (each channel sends one message
    /// at a time, in order). Default 4.
    pub max_in_flight: Option<usize>,
    /// The channels, by name. The name is what logs, errors and
    /// `flotilla notify test --channel NAME` use.
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
}

/// TLS for SMTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Implicit,
    /// No TLS at all; only allowed for a loopback host (a local relay, tests).
    None,
}

/// One channel, `[notifications.channels.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelConfig {
    /// A Slack incoming webhook. Exactly one of `webhook_url_env`,
    /// `webhook_url_file` and `webhook_url`.
    Slack {
        /// Environment variable holding the webhook URL.
        webhook_url_env: Option<String>,
        /// File holding the webhook URL (surrounding whitespace ignored).
        webhook_url_file: Option<PathBuf>,
        /// The webhook URL itself. Discouraged: the URL is a secret and config
        /// files get copied, committed and pasted.
        webhook_url: Option<Secret>,
        /// Environments whose events go here; empty or absent means all.
        #[serde(default)]
        environments: Vec<String>,
        /// Event kinds sent here; absent means all.
        events: Option<Vec<EventKind>>,
    },
    /// A generic webhook: the event as JSON, signed with HMAC-SHA256.
    Webhook {
        /// Where to POST (https; http only for a loopback host).
        url: String,
        /// Environment variable holding the signing secret.
        secret_env: Option<String>,
        /// File holding the signing secret (surrounding whitespace ignored).
        secret_file: Option<PathBuf>,
        /// Environments whose events go here; empty or absent means all.
        #[serde(default)]
        environments: Vec<String>,
        /// Event kinds sent here; absent means all.
        events: Option<Vec<EventKind>>,
    },
    /// Email over SMTP.
    Email {
        /// SMTP server host name (checked against its certificate).
        host: String,
        /// Default: 587 for `starttls`, 465 for `implicit`, 25 for `none`.
        port: Option<u16>,
        /// `starttls` (default), `implicit` or `none` (loopback hosts only).
        #[serde(default)]
        tls: SmtpTls,
        /// SMTP user; with it, a password is required.
        username: Option<String>,
        /// Environment variable holding the SMTP password.
        password_env: Option<String>,
        /// File holding the SMTP password (surrounding whitespace ignored).
        password_file: Option<PathBuf>,
        /// Sender, e.g. `"Flotilla <flotilla@example.com>"`.
        from: String,
        /// Recipients (at least one).
        to: Vec<String>,
        /// Environments whose events go here; empty or absent means all.
        #[serde(default)]
        environments: Vec<String>,
        /// Event kinds sent here; absent means all.
        events: Option<Vec<EventKind>>,
    },
}

/// A configuration mistake, naming the channel and field (never a secret).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("notifications.{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("notifications.channels.{channel}.{field}: {reason}")]
    Channel {
        channel: String,
        field: &'static str,
        reason: String,
    },
}

/// When to retry a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// Dropped when the next attempt would come later than this after the
    /// record was written.
    pub give_up_after: Duration,
}

/// Validated notification settings, secrets loaded.
#[derive(Debug, Clone)]
pub struct ResolvedNotify {
    pub disconnect_after: Duration,
    pub cert_expiry_warning: Duration,
    /// Without a trailing slash.
    pub public_url: Option<String>,
    pub retry: RetryPolicy,
    pub send_timeout: Duration,
    pub max_in_flight: usize,
    /// In name order.
    pub channels: Vec<Channel>,
    /// One client for every HTTP channel: rustls with the process-wide ring
    /// provider, no redirects, no proxy.
    pub(crate) http: reqwest::Client,
}

/// A configured channel.
#[derive(Debug, Clone)]
pub struct Channel {
    pub name: String,
    /// Empty means all.
    pub environments: Vec<String>,
    /// `None` means all.
    pub events: Option<Vec<EventKind>>,
    pub target: Target,
}

impl Channel {
    /// Whether `event` goes to this channel.
    pub fn wants(&self, event: &Event) -> bool {
        (self.environments.is_empty() || self.environments.contains(&event.env))
            && self.events.as_ref().is_none_or(|k| k.contains(&event.kind))
    }

    pub fn kind(&self) -> &'static str {
        match self.target {
            Target::Slack { .. } => "slack",
            Target::Webhook { .. } => "webhook",
            Target::Email(_) => "email",
            Target::Grafana(_) => "grafana",
            Target::SentryReleases(_) => "sentry",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Target {
    Slack {
        webhook_url: Secret,
    },
    Webhook {
        url: String,
        secret: Secret,
    },
    Email(EmailTarget),
    /// Grafana annotations (`[grafana]`, the channel named `grafana`).
    Grafana(super::grafana::GrafanaTarget),
    /// Sentry deploy markers (`[sentry]`, the channel named `sentry`).
    SentryReleases(super::sentry_releases::SentryReleasesTarget),
}

impl Target {
    /// Strings that must never appear in a log line, error or payload.
    pub(crate) fn secrets(&self) -> Vec<&str> {
        match self {
            Self::Slack { webhook_url } => {
                let url = webhook_url.expose();
                let mut out = vec![url];
                // The path alone (`/services/T…/B…/token`) is the secret part.
                if let Some(path) = url.find("://").and_then(|i| {
                    let rest = &url[i + 3..];
                    rest.find('/').map(|j| &rest[j..])
                }) && path.len() > 8
                {
                    out.push(path);
                }
                out
            }
            Self::Webhook { secret, .. } => vec![secret.expose()],
            Self::Email(email) => email.password.iter().map(Secret::expose).collect(),
            Self::Grafana(grafana) => vec![grafana.token.expose()],
            Self::SentryReleases(sentry) => vec![sentry.token.expose()],
        }
    }
}

#[derive(Debug, Clone)]
pub struct EmailTarget {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
}

impl NotifyConfig {
    /// Validates the section and reads every secret from the process
    /// environment or its file.
    pub fn resolve(self) -> Result<ResolvedNotify, ConfigError> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    /// As [`NotifyConfig::resolve`], with environment variables looked up
    /// through `env` (tests pass a map).
    pub fn resolve_with(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ResolvedNotify, ConfigError> {
        let duration = |field: &'static str, value: Option<String>, default: &str| {
            let text = value.as_deref().unwrap_or(default);
            humantime::parse_duration(text).map_err(|e| ConfigError::Invalid {
                field,
                reason: format!(
                    "{text:?} is not a duration ({e}); write e.g. \"90s\", \"5m\", \"14d\""
                ),
            })
        };
        let disconnect_after = duration("disconnect_after", self.disconnect_after, "5m")?;
        let cert_expiry_warning = duration("cert_expiry_warning", self.cert_expiry_warning, "14d")?;
        let give_up_after = duration("give_up_after", self.give_up_after, "24h")?;
        let initial = duration("retry_initial", self.retry_initial, "10s")?;
        let max = duration("retry_max", self.retry_max, "15m")?;
        let send_timeout = duration("send_timeout", self.send_timeout, "10s")?;
        for (field, d) in [
            ("retry_initial", initial),
            ("retry_max", max),
            ("send_timeout", send_timeout),
            ("give_up_after", give_up_after),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid {
                    field,
                    reason: "must be more than zero".into(),
                });
            }
        }
        if max < initial {
            return Err(ConfigError::Invalid {
                field: "retry_max",
                reason: "must not be shorter than retry_initial".into(),
            });
        }
        let max_in_flight = self.max_in_flight.unwrap_or(4);
        if max_in_flight == 0 {
            return Err(ConfigError::Invalid {
                field: "max_in_flight",
                reason: "must be at least 1".into(),
            });
        }
        let public_url = match self.public_url {
            None => None,
            Some(url) => {
                check_url(&url, false).map_err(|reason| ConfigError::Invalid {
                    field: "public_url",
                    reason,
                })?;
                Some(url.trim_end_matches('/').to_owned())
            }
        };
        let channels = self
            .channels
            .into_iter()
            .map(|(name, channel)| resolve_channel(name, channel, &env))
            .collect::<Result<Vec<_>, _>>()?;

        // Idempotent; building the client without a provider would panic.
        flotilla_shared::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(send_timeout)
            .timeout(send_timeout)
            .user_agent(concat!("flotilla-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConfigError::Invalid {
                field: "channels",
                reason: format!("cannot set up the HTTP client: {}", e.without_url()),
            })?;
        Ok(ResolvedNotify {
            disconnect_after,
            cert_expiry_warning,
            public_url,
            retry: RetryPolicy {
                initial,
                max,
                give_up_after,
            },
            send_timeout,
            max_in_flight,
            channels,
            http,
        })
    }
}

impl ResolvedNotify {
    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }
}

fn resolve_channel(
    name: String,
    config: ChannelConfig,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Channel, ConfigError> {
    let valid_name = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid_name {
        return Err(ConfigError::Invalid {
            field: "channels",
            reason: format!("channel name {name:?} must be 1-64 letters, digits, '-', '_' or '.'"),
        });
    }
    let err = |field: &'static str, reason: String| ConfigError::Channel {
        channel: name.clone(),
        field,
        reason,
    };
    let filters = |environments: Vec<String>, events: Option<Vec<EventKind>>| {
        for e in &environments {
            EnvName::parse(e.as_str())
                .map_err(|why| err("environments", format!("{e:?}: {why}")))?;
        }
        if events.as_ref().is_some_and(Vec::is_empty) {
            return Err(err(
                "events",
                "is empty, so nothing would be sent; remove it to send every event".into(),
            ));
        }
        Ok((environments, events))
    };
    let (environments, events, target) = match config {
        ChannelConfig::Slack {
            webhook_url_env,
            webhook_url_file,
            webhook_url,
            environments,
            events,
        } => {
            let (environments, events) = filters(environments, events)?;
            let url = load_secret(
                &name,
                SecretFields {
                    env: "webhook_url_env",
                    file: "webhook_url_file",
                    inline: Some("webhook_url"),
                },
                webhook_url_env,
                webhook_url_file,
                webhook_url,
                env,
            )?
            .ok_or_else(|| {
                err(
                    "webhook_url_env",
                    "set webhook_url_env or webhook_url_file (the webhook URL is a secret)".into(),
                )
            })?;
            // The reason never quotes the URL: it is the secret.
            check_url(url.expose(), true).map_err(|reason| err("webhook_url", reason))?;
            (environments, events, Target::Slack { webhook_url: url })
        }
        ChannelConfig::Webhook {
            url,
            secret_env,
            secret_file,
            environments,
            events,
        } => {
            let (environments, events) = filters(environments, events)?;
            check_url(&url, true).map_err(|reason| err("url", reason))?;
            let secret = load_secret(
                &name,
                SecretFields {
                    env: "secret_env",
                    file: "secret_file",
                    inline: None,
                },
                secret_env,
                secret_file,
                None,
                env,
            )?
            .ok_or_else(|| {
                err(
                    "secret_env",
                    "set secret_env or secret_file: webhooks are always signed".into(),
                )
            })?;
            (environments, events, Target::Webhook { url, secret })
        }
        ChannelConfig::Email {
            host,
            port,
            tls,
            username,
            password_env,
            password_file,
            from,
            to,
            environments,
            events,
        } => {
            let (environments, events) = filters(environments, events)?;
            if host.trim().is_empty() {
                return Err(err("host", "is empty".into()));
            }
            if tls == SmtpTls::None && !is_loopback(&host) {
                return Err(err(
                    "tls",
                    format!(
                        "\"none\" sends mail and credentials in clear text and is only allowed for a loopback host, not {host:?}; use \"starttls\" or \"implicit\""
                    ),
                ));
            }
            let password = load_secret(
                &name,
                SecretFields {
                    env: "password_env",
                    file: "password_file",
                    inline: None,
                },
                password_env,
                password_file,
                None,
                env,
            )?;
            match (&username, &password) {
                (Some(_), None) => {
                    return Err(err(
                        "password_env",
                        "username is set: set password_env or password_file too".into(),
                    ));
                }
                (None, Some(_)) => {
                    return Err(err(
                        "username",
                        "a password is set without a username".into(),
                    ));
                }
                _ => {}
            }
            let from: Mailbox = from
                .parse()
                .map_err(|e| err("from", format!("{from:?} is not an address: {e}")))?;
            if to.is_empty() {
                return Err(err("to", "needs at least one recipient".into()));
            }
            let to = to
                .iter()
                .map(|a| {
                    a.parse::<Mailbox>()
                        .map_err(|e| err("to", format!("{a:?} is not an address: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let port = port.unwrap_or(match tls {
                SmtpTls::Starttls => 587,
                SmtpTls::Implicit => 465,
                SmtpTls::None => 25,
            });
            let target = EmailTarget {
                host,
                port,
                tls,
                username,
                password,
                from,
                to,
            };
            // Surfaces TLS set-up problems now rather than at the first event.
            super::email::transport(&target, Duration::from_secs(1))
                .map_err(|e| err("host", format!("cannot set up SMTP: {e}")))?;
            (environments, events, Target::Email(target))
        }
    };
    Ok(Channel {
        name,
        environments,
        events,
        target,
    })
}

/// The field names of one secret in a channel.
pub(super) struct SecretFields {
    pub(super) env: &'static str,
    pub(super) file: &'static str,
    pub(super) inline: Option<&'static str>,
}

/// At most one of the sources, read and trimmed; `None` if none is set
/// (`flotilla_shared::secret::read_one`, with errors naming the channel's field).
pub(super) fn load_secret(
    channel: &str,
    fields: SecretFields,
    env_name: Option<String>,
    file: Option<PathBuf>,
    inline: Option<Secret>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    use flotilla_shared::secret::SecretError;
    let names = [Some(fields.env), Some(fields.file), fields.inline]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
    let field = if env_name.is_some() {
        fields.env
    } else if file.is_some() {
        fields.file
    } else {
        fields.inline.unwrap_or(fields.env)
    };
    flotilla_shared::secret::read_one(
        &names,
        env_name.as_deref(),
        file.as_deref(),
        inline.map(Secret::into_inner),
        env,
    )
    .map_err(|e| ConfigError::Channel {
        channel: channel.to_owned(),
        field: if matches!(e, SecretError::Conflict(_)) {
            fields.env
        } else {
            field
        },
        reason: e.to_string(),
    })
}

/// An absolute http(s) URL; with `secure`, plain http only to a loopback
/// host. The reason never contains the URL.
pub(super) fn check_url(url: &str, secure: bool) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a valid URL ({e})"))?;
    let host = parsed.host_str().unwrap_or_default();
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if !secure || is_loopback(host.trim_start_matches('[').trim_end_matches(']')) => {
            Ok(())
        }
        "http" => Err("must use https (plain http is only allowed to a loopback host)".into()),
        other => Err(format!("must be an https URL, not {other}:")),
    }
}

pub(crate) fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}
