//! Convergence, pure: the [`DesiredState`] of one environment (what a signed `converge` command
//! will carry), the [`CurrentState`] an agent reads from a host, and [`diff`], the ordered
//! changes that take one to the other. Running nothing; printing no secret value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{LetsEncrypt, ServiceKind, ServiceLink};
use crate::names::{AppName, ConfigKey, Domain, EmailAddress, EnvName, LinkAlias, ServiceName};
use crate::secret::Secret;

/// What one environment of an app should look like on each of its hosts. Deterministic (sorted
/// domains, ordered maps) so equal specs give equal bytes. Secret values are not in it: only
/// their keys; the values travel beside it (see [`diff`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredState {
    pub app: AppName,
    pub env: EnvName,
    /// Fully expanded and sorted. Empty: domains are not managed.
    pub domains: Vec<Domain>,
    /// `None`: Let's Encrypt is not managed.
    pub letsencrypt: Option<LetsEncrypt>,
    /// In link order (the order decides nothing now that each link's variable is fixed, but it
    /// is the order the agent links in).
    pub services: Vec<ServiceLink>,
    /// Plain values.
    pub config: BTreeMap<ConfigKey, String>,
    /// Keys whose values come from the coordinator's encrypted store.
    pub secret_keys: BTreeSet<ConfigKey>,
}

/// What an agent read from a host (`apps:exists`, `domains:report --domains-app-vhosts`,
/// `letsencrypt:active`, `letsencrypt:report`, `letsencrypt:cron-job`, `<plugin>:exists`,
/// `<plugin>:linked`, `config:export --format json`). Raw strings: a host may hold anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrentState {
    pub app_exists: bool,
    pub domains: BTreeSet<String>,
    pub letsencrypt: CurrentLetsEncrypt,
    /// The services the desired state names; one missing here counts as not existing.
    pub services: Vec<CurrentService>,
    /// Every config variable of the app, values included (secrets too: compare, never print).
    pub config: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CurrentLetsEncrypt {
    /// `letsencrypt:active <app>` printed `true`.
    pub active: bool,
    /// The app's `email` property (empty or unset: `None`).
    pub email: Option<String>,
    /// The host-wide renewal cron job is in dokku's crontab.
    pub auto_renew: bool,
    /// The names the installed certificate covers (`certs:report
    /// --ssl-hostnames`), when read: a domain it misses needs a re-issue even
    /// if the domains themselves are already in place (an earlier re-issue
    /// failed).
    pub certificate_hosts: Option<BTreeSet<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentService {
    pub kind: ServiceKind,
    pub name: ServiceName,
    pub exists: bool,
    /// Linked to this app.
    pub linked: bool,
}

/// A value `SetConfig` writes. `Display`/`Debug` of a secret print `***`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigValue {
    Plain(String),
    Secret(Secret),
}

impl ConfigValue {
    /// The value to hand to `config:set`; the one place a secret is exposed.
    pub fn expose(&self) -> &str {
        match self {
            Self::Plain(s) => s,
            Self::Secret(s) => s.expose(),
        }
    }

    pub fn is_secret(&self) -> bool {
        matches!(self, Self::Secret(_))
    }
}

/// One step of convergence, in the order [`diff`] returns them (which is the order they must
/// run). Config and link steps are meant to run with `--no-restart`; see [`needs_restart`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `apps:create <app>`.
    CreateApp,
    /// `<plugin>:create <svc>`.
    CreateService {
        kind: ServiceKind,
        name: ServiceName,
    },
    /// `<plugin>:link <svc> <app> [-a ALIAS] --no-restart`; sets `variable`.
    LinkService {
        kind: ServiceKind,
        name: ServiceName,
        alias: Option<LinkAlias>,
        variable: ConfigKey,
    },
    /// `config:unset --no-restart <app> KEY`: a variable neither the spec, a link nor Dokku owns.
    UnsetConfig { key: String },
    /// `config:set --no-restart <app> KEY=VALUE`.
    SetConfig { key: ConfigKey, value: ConfigValue },
    /// `domains:add <app> <d>` (rebuilds the proxy config; no restart).
    AddDomain(Domain),
    /// `domains:remove <app> <d>`.
    RemoveDomain(String),
    /// `letsencrypt:set <app> email <addr>`.
    SetLetsEncryptEmail(EmailAddress),
    /// `letsencrypt:enable <app>`, with `--force` when it is already active but the domains
    /// changed, so the certificate covers the new list.
    EnableLetsEncrypt { force: bool },
    /// `letsencrypt:cron-job --add` (host-wide).
    AddLetsEncryptCron,
}

impl Change {
    /// Whether the running app sees this change only after a restart (a new environment).
    /// Domain and certificate changes do not need one: Dokku rebuilds the proxy config itself.
    pub fn requires_restart(&self) -> bool {
        matches!(
            self,
            Self::LinkService { .. } | Self::SetConfig { .. } | Self::UnsetConfig { .. }
        )
    }
}

/// Whether to run one `ps:restart` after all `changes` (checking its exit code).
pub fn needs_restart(changes: &[Change]) -> bool {
    changes.iter().any(Change::requires_restart)
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateApp => f.write_str("create app"),
            Self::CreateService { kind, name } => write!(f, "create {kind} service {name}"),
            Self::LinkService {
                kind,
                name,
                alias,
                variable,
            } => {
                write!(f, "link {kind} service {name}")?;
                if let Some(alias) = alias {
                    write!(f, " as {alias}")?;
                }
                write!(f, " (sets {variable})")
            }
            Self::UnsetConfig { key } => write!(f, "unset {key}"),
            Self::SetConfig {
                key,
                value: ConfigValue::Plain(v),
            } => write!(f, "set {key}={v:?}"),
            Self::SetConfig {
                key,
                value: ConfigValue::Secret(_),
            } => write!(f, "set {key}=*** (secret)"),
            Self::AddDomain(d) => write!(f, "add domain {d}"),
            Self::RemoveDomain(d) => write!(f, "remove domain {d}"),
            Self::SetLetsEncryptEmail(e) => write!(f, "set Let's Encrypt email {e}"),
            Self::EnableLetsEncrypt { force: false } => f.write_str("enable Let's Encrypt"),
            Self::EnableLetsEncrypt { force: true } => {
                f.write_str("re-issue the Let's Encrypt certificate for the new domains")
            }
            Self::AddLetsEncryptCron => f.write_str("add the Let's Encrypt auto-renew cron job"),
        }
    }
}

/// Whether a host variable is owned by someone else and must never be unset: Dokku's own
/// (`DOKKU_*`, `GIT_REV`, `NO_VHOST`) or a service link's (its value is a
/// `postgres://…@dokku-postgres-…` or `redis://…@dokku-redis-…` URL), including links the spec
/// does not name.
fn unmanaged(key: &str, value: &str) -> bool {
    // Any Dokku service plugin's link (postgres, postgresql, redis, mysql,
    // mongodb, rabbitmq, …): `scheme://…@dokku-<plugin>-<service>…`.
    let is_link = value.split_once("://").is_some_and(|(scheme, rest)| {
        !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+')
            && rest.contains("@dokku-")
    });
    crate::names::reserved_config_key(key).is_some() || is_link
}

/// The changes that take `current` to `desired`, in the order they must run:
/// app → services (create, link) → config (unset, set) → domains (add, remove) → Let's Encrypt
/// (email, enable, cron). Links come before config so that the restart at the end sees both;
/// domains come before Let's Encrypt because the certificate covers them; domains are added
/// before stale ones are removed so the app always answers on some host.
///
/// `secrets` holds the values of `desired.secret_keys` (decrypted by the coordinator, carried in
/// the signed command). A secret key with no value there is left as the host has it: neither
/// set nor unset (a release cannot deploy while a *required* key lacks a value anyway, see
/// [`super::missing_required`]). Empty `desired.domains` leaves the domains alone; no config
/// and no secret keys leave the variables alone (otherwise variables nobody declared are
/// unset, except Dokku's own and service links).
pub fn diff(
    desired: &DesiredState,
    secrets: &BTreeMap<ConfigKey, Secret>,
    current: &CurrentState,
) -> Vec<Change> {
    let mut changes = Vec::new();
    if !current.app_exists {
        changes.push(Change::CreateApp);
    }

    let find = |s: &ServiceLink| {
        current
            .services
            .iter()
            .find(|c| c.kind == s.kind && c.name == s.name)
    };
    for s in &desired.services {
        if !find(s).is_some_and(|c| c.exists) {
            changes.push(Change::CreateService {
                kind: s.kind,
                name: s.name.clone(),
            });
        }
    }
    for s in &desired.services {
        if !find(s).is_some_and(|c| c.linked) {
            changes.push(Change::LinkService {
                kind: s.kind,
                name: s.name.clone(),
                alias: s.alias.clone(),
                variable: s.variable.clone(),
            });
        }
    }

    let link_vars: BTreeSet<&str> = desired
        .services
        .iter()
        .map(|s| s.variable.as_str())
        .collect();
    // Like domains: a spec that declares no config for the environment (and
    // no value is stored for it) leaves the app's variables alone, so
    // adopting an existing app with a domains-only spec removes nothing.
    let config_managed = !desired.config.is_empty() || !desired.secret_keys.is_empty();
    for (key, value) in current.config.iter().filter(|_| config_managed) {
        let wanted = desired.config.keys().any(|k| k.as_str() == key)
            || desired.secret_keys.iter().any(|k| k.as_str() == key);
        if !wanted && !link_vars.contains(key.as_str()) && !unmanaged(key, value) {
            changes.push(Change::UnsetConfig { key: key.clone() });
        }
    }
    // One ordered pass over plain and secret keys together (they are disjoint).
    let mut sets: BTreeMap<&ConfigKey, ConfigValue> = BTreeMap::new();
    for (key, value) in &desired.config {
        if current.config.get(key.as_str()) != Some(value) {
            sets.insert(key, ConfigValue::Plain(value.clone()));
        }
    }
    for key in &desired.secret_keys {
        if let Some(secret) = secrets.get(key)
            && current.config.get(key.as_str()).map(String::as_str) != Some(secret.expose())
        {
            sets.insert(key, ConfigValue::Secret(secret.clone()));
        }
    }
    changes.extend(sets.into_iter().map(|(key, value)| Change::SetConfig {
        key: key.clone(),
        value,
    }));

    let mut domains_changed = false;
    if !desired.domains.is_empty() {
        for d in &desired.domains {
            if !current.domains.contains(d.as_str()) {
                changes.push(Change::AddDomain(d.clone()));
                domains_changed = true;
            }
        }
        for d in &current.domains {
            if !desired.domains.iter().any(|w| w.as_str() == d) {
                changes.push(Change::RemoveDomain(d.clone()));
                domains_changed = true;
            }
        }
    }

    if let Some(le) = &desired.letsencrypt {
        if current.letsencrypt.email.as_deref() != Some(le.email.as_str()) {
            changes.push(Change::SetLetsEncryptEmail(le.email.clone()));
        }
        let uncovered = current
            .letsencrypt
            .certificate_hosts
            .as_ref()
            .is_some_and(|hosts| {
                desired
                    .domains
                    .iter()
                    .any(|d| !d.as_str().starts_with('*') && !hosts.contains(d.as_str()))
            });
        if !current.letsencrypt.active {
            changes.push(Change::EnableLetsEncrypt { force: false });
        } else if domains_changed || uncovered {
            changes.push(Change::EnableLetsEncrypt { force: true });
        }
        if le.auto_renew && !current.letsencrypt.auto_renew {
            changes.push(Change::AddLetsEncryptCron);
        }
    }
    changes
}
