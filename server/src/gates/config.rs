//! `[gates]` in the coordinator's config file: the file shape (`GatesConfig`)
//! and its validated runtime form (`ResolvedGates`), with every Flagsmith
//! environment key read once. Nothing here talks to Flagsmith.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use flotilla_shared::EnvName;
use reqwest::Url;
use reqwest::header::HeaderValue;
use serde::{Deserialize, Deserializer};

/// Flagsmith's SaaS edge API.
pub const DEFAULT_API_URL: &str = "https://edge.api.flagsmith.com/api/v1/";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
const DEFAULT_CACHE_MAX_AGE: Duration = Duration::from_secs(3600);
/// A gate check sits in front of every deployment; longer waits than this
/// are a misconfiguration.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

pub use flotilla_shared::secret::Secret;

/// `[gates]`: checks a deployment must pass before it starts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatesConfig {
    /// `[gates.flagsmith]`: a Flagsmith flag that must be enabled for deploys
    /// to proceed. Absent: no flag gate anywhere.
    #[serde(default)]
    pub flagsmith: Option<FlagsmithConfig>,
}

/// `[gates.flagsmith]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagsmithConfig {
    /// Flagsmith API base, ending in `/api/v1/` (default: the SaaS edge API,
    /// `https://edge.api.flagsmith.com/api/v1/`; self-hosted:
    /// `https://HOST/api/v1/`).
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// Longest wait for one Flagsmith answer, connecting included (default
    /// `3s`, at most `60s`). A slower answer counts as "unreachable".
    #[serde(default = "default_timeout", deserialize_with = "deserialize_duration")]
    pub timeout: Duration,
    /// When Flagsmith is unreachable, a cached answer younger than this is
    /// used instead (default `1h`; `0s` never uses the cache).
    #[serde(
        default = "default_cache_max_age",
        deserialize_with = "deserialize_duration"
    )]
    pub cache_max_age: Duration,
    /// `[gates.flagsmith.environments.ENV]`: one gate per Flotilla
    /// environment; environments not listed have no flag gate.
    #[serde(default)]
    pub environments: BTreeMap<String, FlagsmithEnvironmentConfig>,
}

/// `[gates.flagsmith.environments.ENV]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagsmithEnvironmentConfig {
    /// Name of the environment variable holding the Flagsmith environment key
    /// (e.g. `FLOTILLA_FLAGSMITH_PRODUCTION_KEY`). Set exactly one of
    /// `environment_key_env`, `environment_key_file` and `environment_key`.
    #[serde(default)]
    pub environment_key_env: Option<String>,
    /// File holding the Flagsmith environment key (surrounding whitespace is
    /// ignored).
    #[serde(default)]
    pub environment_key_file: Option<PathBuf>,
    /// The environment key itself. Discouraged: config files get copied and
    /// committed; prefer `environment_key_file` or `environment_key_env`.
    #[serde(default)]
    pub environment_key: Option<Secret>,
    /// The flag (Flagsmith feature name) that must be enabled for deploys to
    /// this environment to proceed. A flag missing from Flagsmith's answer
    /// counts as disabled.
    pub flag: String,
    /// Evaluate the flag per app: for the identity named after the app, with
    /// traits `env` and `team`, so Flagsmith segments and identity overrides
    /// can stop one app or team. Default: one answer for the whole
    /// environment.
    #[serde(default)]
    pub per_app: bool,
    /// What to decide when Flagsmith is unreachable and no cached answer is
    /// younger than `cache_max_age`: `fail-closed` (default; deploys are
    /// blocked) or `fail-open` (deploys proceed).
    #[serde(default)]
    pub when_unreachable: WhenUnreachable,
}

/// The decision when neither Flagsmith nor a fresh cached answer is available.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenUnreachable {
    /// Deploys proceed.
    FailOpen,
    /// Deploys are blocked.
    #[default]
    FailClosed,
}

impl WhenUnreachable {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FailOpen => "fail-open",
            Self::FailClosed => "fail-closed",
        }
    }

    pub fn allows(self) -> bool {
        self == Self::FailOpen
    }
}

fn default_api_url() -> String {
    DEFAULT_API_URL.to_owned()
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_cache_max_age() -> Duration {
    DEFAULT_CACHE_MAX_AGE
}

/// `"3s"`, `"1h 30m"` (humantime).
fn deserialize_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text)
        .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
}

/// Invalid `[gates]` settings. Messages name the setting (and environment);
/// they never contain an environment key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("gates.flagsmith.api_url {url:?}: {reason}")]
    ApiUrl { url: String, reason: String },
    #[error("gates.flagsmith.timeout: must be more than 0s and at most 60s, not {0}")]
    Timeout(humantime::FormattedDuration),
    #[error("gates.flagsmith.environments.{env}: invalid environment name: {source}")]
    EnvName {
        env: String,
        source: flotilla_shared::NameError,
    },
    #[error(
        "gates.flagsmith.environments.{env}: set exactly one of environment_key_env, environment_key_file and environment_key"
    )]
    KeySource { env: String },
    #[error(
        "gates.flagsmith.environments.{env}.environment_key_env: environment variable {var} is not set"
    )]
    KeyEnvUnset { env: String, var: String },
    #[error("gates.flagsmith.environments.{env}.{field}: the environment key is empty")]
    KeyEmpty { env: String, field: &'static str },
    #[error(
        "gates.flagsmith.environments.{env}.{field}: the environment key contains characters an HTTP header cannot carry"
    )]
    KeyInvalid { env: String, field: &'static str },
    #[error("gates.flagsmith.environments.{env}.environment_key_file: read {}: {source}", path.display())]
    KeyFile {
        env: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gates.flagsmith.environments.{env}.flag: must not be empty")]
    Flag { env: String },
    #[error("gates.flagsmith: build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// Validated `[gates]`; keys loaded. `Default` is "no gates".
#[derive(Debug, Clone, Default)]
pub struct ResolvedGates {
    pub(super) flagsmith: Option<ResolvedFlagsmith>,
}

impl ResolvedGates {
    /// Environments that have a Flagsmith gate (for a startup log line).
    pub fn flagsmith_envs(&self) -> impl Iterator<Item = &EnvName> {
        self.flagsmith.iter().flat_map(|f| f.environments.keys())
    }

    /// The Flagsmith API base URL, when a gate uses Flagsmith (`flotilla doctor`).
    pub fn flagsmith_url(&self) -> Option<&Url> {
        self.flagsmith.as_ref().map(|f| &f.api_url)
    }
}

#[derive(Debug, Clone)]
pub(super) struct ResolvedFlagsmith {
    /// Ends in `/`, so `join("flags/")` appends.
    pub api_url: Url,
    pub timeout: Duration,
    pub cache_max_age: Duration,
    pub client: reqwest::Client,
    pub environments: BTreeMap<EnvName, FlagsmithGate>,
}

#[derive(Debug, Clone)]
pub(super) struct FlagsmithGate {
    pub flag: String,
    pub per_app: bool,
    pub when_unreachable: WhenUnreachable,
    /// The `X-Environment-Key` value, marked sensitive (hyper's `Debug`
    /// prints `Sensitive`).
    pub key_header: HeaderValue,
    /// The same key, to scrub it from any text taken from the network.
    pub key: Secret,
}

impl GatesConfig {
    /// Validates the settings and reads every environment key once, from the
    /// process environment or the named files.
    pub fn resolve(self) -> Result<ResolvedGates, ConfigError> {
        self.resolve_with(|name| std::env::var(name).ok())
    }

    /// `resolve` reading environment variables through `env_var`, so tests
    /// never touch the process environment.
    pub fn resolve_with(
        self,
        env_var: impl Fn(&str) -> Option<String>,
    ) -> Result<ResolvedGates, ConfigError> {
        let Some(flagsmith) = self.flagsmith else {
            return Ok(ResolvedGates::default());
        };
        Ok(ResolvedGates {
            flagsmith: Some(flagsmith.resolve(&env_var)?),
        })
    }
}

impl FlagsmithConfig {
    fn resolve(
        self,
        env_var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<ResolvedFlagsmith, ConfigError> {
        let api_url = parse_api_url(&self.api_url)?;
        if self.timeout.is_zero() || self.timeout > MAX_TIMEOUT {
            return Err(ConfigError::Timeout(humantime::format_duration(
                self.timeout,
            )));
        }
        let mut environments = BTreeMap::new();
        for (name, env) in self.environments {
            let env_name =
                EnvName::parse(name.as_str()).map_err(|source| ConfigError::EnvName {
                    env: name.clone(),
                    source,
                })?;
            environments.insert(env_name, env.resolve(&name, env_var)?);
        }
        // Without a provider, building a rustls-backed client panics; this is
        // idempotent.
        flotilla_shared::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            // A redirect would carry the key to wherever it points; a 3xx is
            // treated as an error instead.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .user_agent(concat!("flotilla-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(ConfigError::HttpClient)?;
        Ok(ResolvedFlagsmith {
            api_url,
            timeout: self.timeout,
            cache_max_age: self.cache_max_age,
            client,
            environments,
        })
    }
}

fn parse_api_url(text: &str) -> Result<Url, ConfigError> {
    let bad = |reason: &str| ConfigError::ApiUrl {
        url: text.to_owned(),
        reason: reason.to_owned(),
    };
    let mut url = Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must be an http or https URL"));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err(bad("must name a host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "must not contain credentials (the environment key is sent as a header)",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

impl FlagsmithEnvironmentConfig {
    fn resolve(
        self,
        env: &str,
        env_var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<FlagsmithGate, ConfigError> {
        let env_owned = || env.to_owned();
        let (field, key) = match (
            self.environment_key_env,
            self.environment_key_file,
            self.environment_key,
        ) {
            (Some(var), None, None) => {
                let value = env_var(&var).ok_or_else(|| ConfigError::KeyEnvUnset {
                    env: env_owned(),
                    var: var.clone(),
                })?;
                ("environment_key_env", value)
            }
            (None, Some(path), None) => {
                let value =
                    std::fs::read_to_string(&path).map_err(|source| ConfigError::KeyFile {
                        env: env_owned(),
                        path: path.clone(),
                        source,
                    })?;
                ("environment_key_file", value)
            }
            (None, None, Some(secret)) => {
                tracing::warn!(
                    env,
                    "gates.flagsmith: the environment key is written in the config file; prefer environment_key_file or environment_key_env"
                );
                ("environment_key", secret.into_inner())
            }
            _ => return Err(ConfigError::KeySource { env: env_owned() }),
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(ConfigError::KeyEmpty {
                env: env_owned(),
                field,
            });
        }
        let mut key_header = HeaderValue::from_str(key).map_err(|_| ConfigError::KeyInvalid {
            env: env_owned(),
            field,
        })?;
        key_header.set_sensitive(true);
        let flag = self.flag.trim();
        if flag.is_empty() {
            return Err(ConfigError::Flag { env: env_owned() });
        }
        Ok(FlagsmithGate {
            flag: flag.to_owned(),
            per_app: self.per_app,
            when_unreachable: self.when_unreachable,
            key_header,
            key: Secret::new(key),
        })
    }
}
