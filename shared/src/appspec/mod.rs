//! The declared shape of an app on Dokku (`web.toml`): domains and tenant subdomains, Let's
//! Encrypt, postgres/redis links, config and which keys are secret, per environment. Parsing
//! checks everything and points at the line; [`converge`] turns one environment into the state an
//! agent converges to and diffs it against what a host reports. No I/O, no secret values.

mod converge;
mod domain;
mod parse;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::names::{AppName, ConfigKey, EmailAddress, EnvName, LinkAlias, ServiceName, TenantName};

pub use converge::{
    Change, ConfigValue, CurrentLetsEncrypt, CurrentService, CurrentState, DesiredState, diff,
    needs_restart,
};
pub use domain::{DomainSpec, TenantPattern};
pub use parse::{SpecError, SpecErrors};

/// One app's spec: its Dokku name and its environments (`staging`, `production`, …), each
/// fully separate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    pub app: AppName,
    pub envs: BTreeMap<EnvName, EnvSpec>,
}

impl AppSpec {
    /// Parses and checks a spec. `file_name` only labels errors (`web.toml:12:9: …`); every
    /// problem found is reported, not just the first.
    pub fn parse(file_name: &str, text: &str) -> Result<Self, SpecErrors> {
        parse::parse(file_name, text)
    }

    /// The state one environment converges to, or `None` if the spec has no such environment.
    pub fn desired(&self, env: &EnvName) -> Option<DesiredState> {
        self.envs.get(env).map(|spec| spec.desired(&self.app, env))
    }
}

/// One environment of an app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvSpec {
    /// As written (exact, wildcard or `{tenant}` pattern), in file order. Empty means the
    /// environment does not manage domains (the host keeps what it has).
    pub domains: Vec<DomainSpec>,
    /// The tenants `{tenant}` patterns expand to, in file order; non-empty only with a pattern.
    pub tenants: Vec<TenantName>,
    /// `None`: Let's Encrypt is not managed here (absent or `enabled = false`).
    pub letsencrypt: Option<LetsEncrypt>,
    pub services: Vec<ServiceLink>,
    /// Plain (non-secret) values from the file.
    pub config: BTreeMap<ConfigKey, String>,
    /// Keys whose values live in the coordinator's encrypted store, never in the file.
    pub secret_keys: BTreeSet<ConfigKey>,
    /// Keys that must have a value before a release may deploy here.
    pub required_keys: BTreeSet<ConfigKey>,
}

impl EnvSpec {
    /// Every domain, `{tenant}` patterns expanded, sorted and without duplicates (the parser
    /// already refused duplicates).
    pub fn expanded_domains(&self) -> Vec<crate::names::Domain> {
        let mut out: Vec<crate::names::Domain> = self
            .domains
            .iter()
            .flat_map(|d| d.expand(&self.tenants))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The config variables the service links set (`DATABASE_URL`, `<ALIAS>_URL`, …).
    pub fn link_variables(&self) -> BTreeSet<&ConfigKey> {
        self.services.iter().map(|s| &s.variable).collect()
    }

    /// The state this environment converges to.
    pub fn desired(&self, app: &AppName, env: &EnvName) -> DesiredState {
        DesiredState {
            app: app.clone(),
            env: env.clone(),
            domains: self.expanded_domains(),
            letsencrypt: self.letsencrypt.clone(),
            services: self.services.clone(),
            config: self.config.clone(),
            secret_keys: self.secret_keys.clone(),
        }
    }
}

/// The required keys of `env` that have no value: not in the file's config, not set by a
/// service link, and not among `present_keys` (the keys the coordinator's store holds for this
/// app and environment, secret or not). Sorted. A release may not deploy while this is non-empty.
pub fn missing_required<'a>(
    env: &EnvSpec,
    present_keys: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let present: BTreeSet<&str> = present_keys.into_iter().collect();
    let links = env.link_variables();
    env.required_keys
        .iter()
        .filter(|k| {
            !env.config.contains_key(*k) && !links.contains(k) && !present.contains(k.as_str())
        })
        .map(|k| k.as_str().to_owned())
        .collect()
}

/// Let's Encrypt for one environment (only present when enabled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LetsEncrypt {
    /// `letsencrypt:set <app> email <addr>`; the plugin refuses to request without one.
    pub email: EmailAddress,
    /// Make sure the plugin's renewal cron job exists (`letsencrypt:cron-job --add`). The job
    /// is host-wide: it renews every app's certificate on that host.
    pub auto_renew: bool,
}

/// The two service plugins Flotilla drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    Postgres,
    Redis,
}

impl ServiceKind {
    /// The plugin name, as in `postgres:link`.
    pub fn plugin(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Redis => "redis",
        }
    }

    /// The alias a link uses without `-a`: the variable is `<alias>_URL`.
    pub fn default_alias(self) -> &'static str {
        match self {
            Self::Postgres => "DATABASE",
            Self::Redis => "REDIS",
        }
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.plugin())
    }
}

/// A service the app is linked to, and the config variable the link sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceLink {
    pub kind: ServiceKind,
    pub name: ServiceName,
    /// `-a ALIAS` when linking; `None` links with the plugin's default alias.
    pub alias: Option<LinkAlias>,
    /// `<ALIAS>_URL`, or `DATABASE_URL` / `REDIS_URL` without an alias. The parser refuses a
    /// spec where two links of one environment would want the same variable, because the plugin
    /// would then silently pick `DOKKU_<PLUGIN>_<COLOR>_URL` instead.
    pub variable: ConfigKey,
}
