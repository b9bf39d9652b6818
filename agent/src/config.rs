//! `agent.toml`, the agent's configuration file (`--config`, default
//! `/etc/flotilla/agent.toml` when it exists): host metrics and where the
//! agent ships telemetry. Every key has a `FLOTILLA_*` environment override;
//! secrets come from an environment variable or a file, never the file itself.
//!
//! ```toml
//! [metrics]
//! interval = "10s"                       # FLOTILLA_METRICS_INTERVAL
//!
//! [remote_write]                         # Prometheus remote-write 1.0
//! url = "https://prometheus-prod-13-prod-us-east-0.grafana.net/api/prom/push"
//! username = "123456"                    # FLOTILLA_REMOTE_WRITE_USERNAME
//! password_file = "/etc/flotilla/remote-write.token"   # or FLOTILLA_REMOTE_WRITE_PASSWORD
//!
//! [loki]
//! url = "https://logs-prod-006.grafana.net/loki/api/v1/push"
//! username = "654321"
//! password_env = "GRAFANA_CLOUD_TOKEN"
//!
//! [http]
//! listen = "127.0.0.1:9431"              # --http-listen / FLOTILLA_HTTP_LISTEN
//! ```
//!
//! docs/telemetry.md lists every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_shared::secret::{self, SecretError};
use serde::{Deserialize, Deserializer};

use crate::telemetry::ship::{Auth, Endpoint, ShipConfig};

/// The default path, read only when it exists.
pub const DEFAULT_PATH: &str = "/etc/flotilla/agent.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("{key}: {source}")]
    Secret { key: String, source: SecretError },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    #[serde(default)]
    pub metrics: MetricsSection,
    pub remote_write: Option<PushSection>,
    pub loki: Option<PushSection>,
    #[serde(default)]
    pub http: HttpSection,
    #[serde(default)]
    pub certs: CertsSection,
}

/// `[certs]`: the certificate checks `flotilla doctor` reports.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertsSection {
    /// How often (`certs:report` and a TLS handshake per domain).
    #[serde(default, deserialize_with = "opt_duration")]
    pub check_interval: Option<Duration>,
    /// Where the local proxy serves HTTPS.
    pub probe_addr: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    #[serde(default, deserialize_with = "opt_duration")]
    pub interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    pub listen: Option<SocketAddr>,
}

/// `[remote_write]` and `[loki]`: an HTTP push endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSection {
    pub url: Option<String>,
    /// Basic auth user (Grafana Cloud: the numeric instance id).
    pub username: Option<String>,
    /// Name of the environment variable holding the basic-auth password.
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    /// Name of the environment variable holding a bearer token.
    pub bearer_token_env: Option<String>,
    pub bearer_token_file: Option<PathBuf>,
    /// Extra request headers, e.g. `{ "X-Scope-OrgID" = "team-a" }`.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Most samples (remote-write) or lines (Loki) per request.
    pub batch_max: Option<usize>,
    /// How long a batch answered with 5xx/429 is retried before it is dropped.
    #[serde(default, deserialize_with = "opt_duration")]
    pub max_retry_time: Option<Duration>,
    #[serde(default, deserialize_with = "opt_duration")]
    pub timeout: Option<Duration>,
    /// The on-disk buffer's bound in MiB; beyond it the oldest data goes first.
    pub buffer_max_mib: Option<u64>,
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
}

/// The checked settings.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub metrics_interval: Duration,
    pub remote_write: Option<ShipConfig>,
    pub loki: Option<ShipConfig>,
    pub http_listen: Option<SocketAddr>,
    /// Variables the file names for secrets (`*_env`): kept out of dokku's
    /// environment like the `FLOTILLA_*` ones.
    pub secret_env_names: Vec<String>,
    pub cert_check_interval: Duration,
    pub tls_probe_addr: String,
}

/// Values from flags and the environment, which win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub metrics_interval: Option<Duration>,
    pub cert_check_interval: Option<Duration>,
    pub tls_probe_addr: Option<String>,
    pub http_listen: Option<SocketAddr>,
    pub remote_write_url: Option<String>,
    pub loki_url: Option<String>,
}

pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_CERT_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

impl AgentSettings {
    /// Reads `path` (when given, it must exist; otherwise `DEFAULT_PATH` if
    /// present), applies `overrides` and the `FLOTILLA_*` variables read
    /// through `env`, and checks everything. Errors name the key, never a
    /// secret's value.
    pub fn load(
        path: Option<&Path>,
        overrides: Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let file = match path {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_PATH).exists() => read_file(Path::new(DEFAULT_PATH))?,
            None => AgentFile::default(),
        };
        Self::resolve(file, overrides, env)
    }

    pub fn resolve(
        file: AgentFile,
        overrides: Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let secret_env_names = [&file.remote_write, &file.loki]
            .into_iter()
            .flatten()
            .flat_map(|s| [s.password_env.clone(), s.bearer_token_env.clone()])
            .flatten()
            .collect();
        let metrics_interval = overrides
            .metrics_interval
            .or(file.metrics.interval)
            .unwrap_or(DEFAULT_METRICS_INTERVAL);
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&metrics_interval) {
            return Err(invalid("metrics.interval", "must be between 1s and 1h"));
        }
        let cert_check_interval = overrides
            .cert_check_interval
            .or(file.certs.check_interval)
            .unwrap_or(DEFAULT_CERT_CHECK_INTERVAL);
        if !(Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600))
            .contains(&cert_check_interval)
        {
            return Err(invalid(
                "certs.check_interval",
                "must be between 1s and 7 days",
            ));
        }
        let tls_probe_addr = overrides
            .tls_probe_addr
            .or(file.certs.probe_addr)
            .unwrap_or_else(|| "127.0.0.1:443".to_owned());
        if tls_probe_addr.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "certs.probe_addr",
                "must be an address with a port, e.g. 127.0.0.1:443",
            ));
        }
        let remote_write = push_target(
            "remote_write",
            "FLOTILLA_REMOTE_WRITE",
            file.remote_write,
            overrides.remote_write_url,
            500,
            env,
        )?;
        let loki = push_target(
            "loki",
            "FLOTILLA_LOKI",
            file.loki,
            overrides.loki_url,
            200,
            env,
        )?;
        Ok(Self {
            metrics_interval,
            remote_write,
            loki,
            http_listen: overrides.http_listen.or(file.http.listen),
            secret_env_names,
            cert_check_interval,
            tls_probe_addr,
        })
    }
}

fn read_file(path: &Path) -> Result<AgentFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// A push pipeline's settings; `None` when no URL is set anywhere (the
/// pipeline is off). `prefix` is the variables' prefix, e.g. `FLOTILLA_LOKI`
/// for `FLOTILLA_LOKI_URL`, `_USERNAME`, `_PASSWORD`, `_BEARER_TOKEN`.
fn push_target(
    section: &str,
    prefix: &str,
    file: Option<PushSection>,
    url_override: Option<String>,
    default_batch: usize,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<ShipConfig>, ConfigError> {
    let file = file.unwrap_or_default();
    let var = |suffix: &str| env(&format!("{prefix}_{suffix}")).filter(|v| !v.is_empty());
    let Some(url) = url_override
        .filter(|u| !u.is_empty())
        .or_else(|| var("URL"))
        .or(file.url)
    else {
        return Ok(None);
    };
    let key = |k: &str| format!("{section}.{k}");
    let url = reqwest::Url::parse(&url)
        .map_err(|e| invalid(key("url"), format!("not a valid URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(key("url"), "must be an http(s) URL"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            key("url"),
            "must not carry credentials; use username and password_env/password_file",
        ));
    }
    let secret_err = |k: &str| {
        let k = key(k);
        move |source| ConfigError::Secret { key: k, source }
    };
    let password = secret::read_one(
        &format!(
            "{0}.password_env, {0}.password_file, {prefix}_PASSWORD",
            section
        ),
        file.password_env.as_deref(),
        file.password_file.as_deref(),
        var("PASSWORD"),
        env,
    )
    .map_err(secret_err("password"))?;
    let bearer = secret::read_one(
        &format!(
            "{0}.bearer_token_env, {0}.bearer_token_file, {prefix}_BEARER_TOKEN",
            section
        ),
        file.bearer_token_env.as_deref(),
        file.bearer_token_file.as_deref(),
        var("BEARER_TOKEN"),
        env,
    )
    .map_err(secret_err("bearer_token"))?;
    let username = var("USERNAME").or(file.username);
    let auth = match (username, password, bearer) {
        (None, None, None) => None,
        (Some(username), Some(password), None) => Some(Auth::Basic { username, password }),
        (None, None, Some(token)) => Some(Auth::Bearer(token)),
        (Some(_), None, None) => {
            return Err(invalid(
                key("username"),
                format!(
                    "a password is needed too (password_env, password_file or {prefix}_PASSWORD)"
                ),
            ));
        }
        (None, Some(_), None) => {
            return Err(invalid(key("password"), "a username is needed too"));
        }
        (_, _, Some(_)) => {
            return Err(invalid(
                key("bearer_token"),
                "use either basic auth (username + password) or a bearer token, not both",
            ));
        }
    };
    if auth.is_some() && url.scheme() == "http" && !is_loopback(&url) {
        return Err(invalid(
            key("url"),
            "credentials would travel in clear text: use https (plain http only to a loopback host)",
        ));
    }
    let mut headers = Vec::new();
    for (name, value) in file.headers {
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "content-type"
                | "content-encoding"
                | "user-agent"
                | "authorization"
                | "x-prometheus-remote-write-version"
        ) {
            return Err(invalid(
                key("headers"),
                format!("{name} is set by the agent and cannot be overridden"),
            ));
        }
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(&value).is_err()
        {
            return Err(invalid(key("headers"), format!("invalid header {name}")));
        }
        headers.push((name, value));
    }
    let batch_max = file.batch_max.unwrap_or(default_batch);
    if !(1..=100_000).contains(&batch_max) {
        return Err(invalid(key("batch_max"), "must be between 1 and 100000"));
    }
    let max_retry_time = file.max_retry_time.unwrap_or(Duration::from_secs(300));
    let timeout = file.timeout.unwrap_or(Duration::from_secs(30));
    if timeout.is_zero() || timeout > Duration::from_secs(300) {
        return Err(invalid(
            key("timeout"),
            "must be more than 0s and at most 5m",
        ));
    }
    let buffer_max_mib = file.buffer_max_mib.unwrap_or(64);
    if !(1..=16 * 1024).contains(&buffer_max_mib) {
        return Err(invalid(
            key("buffer_max_mib"),
            "must be between 1 and 16384",
        ));
    }
    let mut ship = ShipConfig::new(Endpoint { url, auth, headers });
    ship.batch_max_entries = batch_max;
    ship.max_retry_time = max_retry_time;
    ship.request_timeout = timeout;
    ship.buffer_max_bytes = buffer_max_mib * 1024 * 1024;
    Ok(Some(ship))
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> AgentFile {
        toml::from_str(text).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn the_example_file_parses_with_every_setting_uncommented() {
        let text = include_str!("../../deploy/examples/agent.toml");
        // Uncomment `#key = …` and `#[section]` lines (not prose comments).
        let uncommented: String = text
            .lines()
            .map(|l| {
                let rest = l.strip_prefix('#').unwrap_or(l);
                let looks_like_setting = rest.starts_with('[')
                    || rest
                        .split_once(" = ")
                        .is_some_and(|(k, _)| !k.is_empty() && !k.contains(' '));
                if l.starts_with('#') && looks_like_setting {
                    rest
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let file: AgentFile = toml::from_str(&uncommented).unwrap();
        let rw = file.remote_write.unwrap();
        assert!(rw.url.is_some() && rw.password_file.is_some() && rw.bearer_token_file.is_some());
        assert_eq!(rw.buffer_max_mib, Some(64));
        assert!(file.loki.unwrap().url.is_some());
        assert!(file.http.listen.is_some());
        assert_eq!(file.metrics.interval, Some(Duration::from_secs(10)));
        // As shipped (all commented out) it means the defaults.
        let file: AgentFile = toml::from_str(text).unwrap();
        assert!(file.remote_write.is_none() && file.loki.is_none());
    }

    #[test]
    fn nothing_configured_means_defaults_and_no_pipelines() {
        let s =
            AgentSettings::resolve(AgentFile::default(), Overrides::default(), &no_env).unwrap();
        assert_eq!(s.metrics_interval, DEFAULT_METRICS_INTERVAL);
        assert!(s.remote_write.is_none() && s.loki.is_none() && s.http_listen.is_none());
    }

    #[test]
    fn environment_overrides_the_file_and_flags_override_both() {
        let file = parse(
            r#"
            [metrics]
            interval = "30s"
            [remote_write]
            url = "https://file.example/api/prom/push"
            username = "123"
            password_env = "RW_PW"
            headers = { "X-Scope-OrgID" = "t1" }
            [loki]
            url = "http://127.0.0.1:3100/loki/api/v1/push"
            "#,
        );
        let env = |k: &str| match k {
            "RW_PW" => Some("pw".to_owned()),
            "FLOTILLA_REMOTE_WRITE_URL" => Some("https://env.example/push".to_owned()),
            "FLOTILLA_LOKI_BEARER_TOKEN" => Some("tok".to_owned()),
            _ => None,
        };
        let overrides = Overrides {
            metrics_interval: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let s = AgentSettings::resolve(file, overrides, &env).unwrap();
        assert_eq!(s.metrics_interval, Duration::from_secs(2));
        let rw = s.remote_write.unwrap();
        assert_eq!(rw.endpoint.url.as_str(), "https://env.example/push");
        assert!(
            matches!(&rw.endpoint.auth, Some(Auth::Basic { username, password }) if username == "123" && password.expose() == "pw")
        );
        assert_eq!(
            rw.endpoint.headers,
            vec![("X-Scope-OrgID".to_owned(), "t1".to_owned())]
        );
        let loki = s.loki.unwrap();
        assert_eq!(loki.batch_max_entries, 200);
        assert!(matches!(&loki.endpoint.auth, Some(Auth::Bearer(t)) if t.expose() == "tok"));
    }

    #[test]
    fn mistakes_name_the_key_and_never_the_secret() {
        let cases: &[(&str, &str)] = &[
            (
                "[metrics]\ninterval = \"500ms\"",
                "metrics.interval: must be between 1s and 1h",
            ),
            (
                "[loki]\nurl = \"ftp://x/\"",
                "loki.url: must be an http(s) URL",
            ),
            (
                "[loki]\nurl = \"https://u:hunter2@x/\"",
                "loki.url: must not carry credentials",
            ),
            (
                "[remote_write]\nurl = \"https://x/\"\nusername = \"1\"",
                "remote_write.username: a password is needed too",
            ),
            (
                "[remote_write]\nurl = \"http://10.0.0.1/\"\nbearer_token_env = \"T\"",
                "remote_write.url: credentials would travel in clear text",
            ),
            (
                "[remote_write]\nurl = \"https://x/\"\nbearer_token_env = \"MISSING\"",
                "remote_write.bearer_token: environment variable MISSING is not set",
            ),
            (
                "[remote_write]\nurl = \"https://x/\"\nheaders = { \"User-Agent\" = \"me\" }",
                "remote_write.headers: User-Agent is set by the agent",
            ),
        ];
        let env = |k: &str| (k == "T").then(|| "hunter2".to_owned());
        for (text, want) in cases {
            let err = AgentSettings::resolve(parse(text), Overrides::default(), &env)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(want), "{text:?}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let err = toml::from_str::<AgentFile>("[metrics]\nintervall = \"1s\"").unwrap_err();
        assert!(err.to_string().contains("intervall"), "{err}");
    }
}
