//! Sentry deploy markers (`[sentry]` in server.toml): after a deployment or
//! rollback succeeds, the app's release is created in Sentry (if new) and a
//! deploy of it to the environment is recorded, so the app's own Sentry
//! events (which must carry the same release string) line up with deploys.
//! Delivered through the notification outbox as the channel named `sentry`.
//!
//! API (`Authorization: Bearer <auth token>`, scope `project:releases`):
//! `POST {url}/api/0/organizations/{org}/releases/` `{"version", "projects"}`,
//! then `POST …/releases/{version}/deploys/` `{"environment", "name",
//! "dateStarted", "dateFinished", "projects"}`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::json;

use super::config::{Channel, ConfigError, Secret, SecretFields, Target, check_url, load_secret};
use super::event::{Event, EventKind};
use super::outcome::{self, Outcome};

/// The channel name the deploy markers use in the outbox and in logs.
pub const CHANNEL: &str = "sentry";

/// `[sentry]` as written in server.toml.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SentryReleasesConfig {
    /// Sentry's web URL: `https://sentry.io` (default), `https://de.sentry.io`
    /// or a self-hosted one.
    pub url: Option<String>,
    /// Environment variable holding the auth token (scope `project:releases`).
    pub auth_token_env: Option<String>,
    /// File holding the auth token.
    pub auth_token_file: Option<PathBuf>,
    /// The organisation slug.
    pub org: String,
    /// App name → Sentry project slug. Apps not listed are not marked.
    pub projects: BTreeMap<String, String>,
    /// The release version, from `{app}`, `{tag}` (the image tag or digest),
    /// `{env}` and `{release}` (Flotilla's release number). Default `{app}@{tag}`.
    pub release_format: Option<String>,
    /// Environments whose deploys are marked; empty or absent means all.
    #[serde(default)]
    pub environments: Vec<String>,
}

/// A resolved `[sentry]` section.
#[derive(Debug, Clone)]
pub struct SentryReleasesTarget {
    /// Without a trailing slash.
    pub url: String,
    pub token: Secret,
    pub org: String,
    pub projects: BTreeMap<String, String>,
    pub release_format: String,
}

impl SentryReleasesConfig {
    /// The outbox channel for this section; the token read through `env` or its file.
    pub fn resolve_with(
        self,
        env: &impl Fn(&str) -> Option<String>,
    ) -> Result<Channel, ConfigError> {
        let err = |field: &'static str, reason: String| ConfigError::Channel {
            channel: CHANNEL.into(),
            field,
            reason,
        };
        let url = self.url.unwrap_or_else(|| "https://sentry.io".into());
        check_url(&url, true).map_err(|reason| err("url", reason))?;
        if self.org.trim().is_empty() || self.org.contains('/') {
            return Err(err("org", "must be the organisation slug".into()));
        }
        let token = load_secret(
            CHANNEL,
            SecretFields {
                env: "auth_token_env",
                file: "auth_token_file",
                inline: None,
            },
            self.auth_token_env,
            self.auth_token_file,
            None,
            env,
        )?
        .ok_or_else(|| {
            err(
                "auth_token_env",
                "an auth token is required (auth_token_env or auth_token_file)".into(),
            )
        })?;
        Ok(Channel {
            name: CHANNEL.into(),
            environments: self.environments,
            events: Some(vec![EventKind::DeploymentSucceeded]),
            target: Target::SentryReleases(SentryReleasesTarget {
                url: url.trim_end_matches('/').to_owned(),
                token,
                org: self.org,
                projects: self.projects,
                release_format: self.release_format.unwrap_or_else(|| "{app}@{tag}".into()),
            }),
        })
    }
}

/// The tag (or digest) of an image reference: `shop:1.4` → `1.4`,
/// `shop@sha256:ab…` → `sha256:ab…`, `shop` → `latest`.
fn image_tag(image: &str) -> &str {
    if let Some((_, digest)) = image.split_once('@') {
        return digest;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    last.split_once(':').map_or("latest", |(_, tag)| tag)
}

/// The release version for `event`, per `format`; slashes (not allowed in
/// Sentry versions) become `-`.
pub fn version(format: &str, event: &Event) -> String {
    let image = event.image.as_deref().unwrap_or_default();
    format
        .replace("{app}", event.app.as_deref().unwrap_or_default())
        .replace("{tag}", image_tag(image))
        .replace("{env}", &event.env)
        .replace(
            "{release}",
            &event.release.map(|r| r.to_string()).unwrap_or_default(),
        )
        .replace(['/', '\\', '\n', '\t'], "-")
}

/// Percent-encodes a path segment.
fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Creates the release (an existing one is fine) and records the deploy.
/// Cancel-safe; a retry repeats both calls (the first is idempotent).
pub(super) async fn send(
    http: &reqwest::Client,
    target: &SentryReleasesTarget,
    event: &Event,
) -> Outcome {
    let Some(project) = event.app.as_ref().and_then(|a| target.projects.get(a)) else {
        return Outcome::Delivered("no Sentry project configured for this app".into());
    };
    let version = version(&target.release_format, event);
    let releases = format!(
        "{}/api/0/organizations/{}/releases/",
        target.url,
        segment(&target.org)
    );
    let created = http
        .post(&releases)
        .bearer_auth(target.token.expose())
        .json(&json!({ "version": version, "projects": [project] }))
        .send()
        .await;
    match created {
        Err(e) => return outcome::from_error(e),
        // 201 created, 208 already there.
        Ok(r) if !r.status().is_success() => return outcome::from_response(r).await,
        Ok(_) => {}
    }
    let started = event.at_ms - event.duration_ms.unwrap_or(0).max(0);
    let name = event
        .deployment_id
        .as_deref()
        .map(|id| format!("flotilla {id}"));
    let deploy = http
        .post(format!("{releases}{}/deploys/", segment(&version)))
        .bearer_auth(target.token.expose())
        .json(&json!({
            "environment": event.env,
            "name": name,
            "dateStarted": rfc3339(started),
            "dateFinished": rfc3339(event.at_ms),
            "projects": [project],
        }))
        .send()
        .await;
    match deploy {
        Err(e) => outcome::from_error(e),
        Ok(r) => match outcome::from_response(r).await {
            Outcome::Delivered(detail) => {
                Outcome::Delivered(format!("release {version} deployed: {detail}"))
            }
            other => other,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_from_images() {
        let mut event = Event::new(EventKind::DeploymentSucceeded, "production");
        event.app = Some("shop".into());
        event.release = Some(7);
        for (image, expected) in [
            ("registry.example.com:5000/shop:1.4.2", "shop@1.4.2"),
            ("shop", "shop@latest"),
            ("ghcr.io/acme/shop@sha256:abcd", "shop@sha256:abcd"),
        ] {
            event.image = Some(image.into());
            assert_eq!(version("{app}@{tag}", &event), expected);
        }
        assert_eq!(
            version("{app}/{env}-{release}", &event),
            "shop-production-7"
        );
        assert_eq!(segment("shop@1.4+b"), "shop%401.4%2Bb");
    }
}
