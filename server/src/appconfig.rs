//! App config and secrets on the coordinator (docs/config.md): validation of what an operator
//! sets, sealing secrets before they reach the store, opening them again for the commands that
//! carry them (`resolve_config`), the required-keys deploy check and resealing after a key
//! rotation. Works on domain types; protobuf is `api`'s, sled is `store`'s.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_shared::sealed::{Keyring, KeyringError, SealError, Sealed, secret_aad};
use flotilla_shared::secret::Secret;
use flotilla_shared::{AppName, ConfigKey, EnvName};

use crate::Coordinator;
use crate::store::config::{ConfigEntry, StoredValue};
use crate::store::{Store, StoreError};

/// Longest config value accepted (bytes).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most keys one set or unset call may name.
pub const MAX_KEYS_PER_CALL: usize = 100;

/// Why config could not be read or written. Never carries a value or key material.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "the coordinator has no secrets key, so it cannot seal or open secrets; create one with `flotilla-server secrets generate-key --data-dir DIR` (or set FLOTILLA_SECRETS_KEY) and restart it"
    )]
    NoKeyring,
    #[error("{app}/{env}/{key}: {source}")]
    Seal {
        app: AppName,
        env: EnvName,
        key: ConfigKey,
        #[source]
        source: SealError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the secrets key comes from: `FLOTILLA_SECRETS_KEY` (looked up with `env`) or the key
/// file. A missing key is not an error (`Ok(None)`: plain config still works, secrets are
/// refused with [`ConfigError::NoKeyring`]); an unreadable, public or malformed one is.
pub fn load_keyring(
    key_file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Arc<Keyring>>, KeyringError> {
    match Keyring::load(key_file, env) {
        Ok(keyring) => Ok(Some(Arc::new(keyring))),
        Err(KeyringError::Missing(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The default key file of a data directory.
pub fn default_key_file(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets.key")
}

/// Checks a key an operator wants to set or unset: a valid name that Flotilla may manage.
pub fn check_key(raw: &str) -> Result<ConfigKey, String> {
    let key = ConfigKey::parse(raw.trim()).map_err(|e| e.to_string())?;
    if let Some(reason) = key.reserved_reason() {
        return Err(format!(
            "config key {key} is reserved ({reason}); Flotilla does not manage it"
        ));
    }
    Ok(key)
}

/// Checks a value; the message names the key, never the value.
pub fn check_value(key: &ConfigKey, value: &str) -> Result<(), String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!(
            "the value of {key} is {} bytes; at most {MAX_VALUE_BYTES} are allowed",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err(format!(
            "the value of {key} contains a NUL character, which an environment variable cannot hold"
        ));
    }
    Ok(())
}

/// The stored form of a value: plain as is, a secret sealed for its place.
pub fn stored_value(
    keyring: Option<&Keyring>,
    app: &AppName,
    env: &EnvName,
    key: &ConfigKey,
    value: &str,
    secret: bool,
) -> Result<StoredValue, ConfigError> {
    if !secret {
        return Ok(StoredValue::Plain(value.to_owned()));
    }
    let keyring = keyring.ok_or(ConfigError::NoKeyring)?;
    let sealed = keyring
        .seal(value.as_bytes(), secret_aad(app, env, key).as_bytes())
        .map_err(|source| ConfigError::Seal {
            app: app.clone(),
            env: env.clone(),
            key: key.clone(),
            source,
        })?;
    Ok(StoredValue::Sealed(sealed.encode()))
}

/// Opens one stored secret (`encoded` is `Sealed::encode()` text).
pub fn open_value(
    keyring: Option<&Keyring>,
    app: &AppName,
    env: &EnvName,
    key: &ConfigKey,
    encoded: &str,
) -> Result<Secret, ConfigError> {
    let keyring = keyring.ok_or(ConfigError::NoKeyring)?;
    let seal_err = |source| ConfigError::Seal {
        app: app.clone(),
        env: env.clone(),
        key: key.clone(),
        source,
    };
    let sealed = Sealed::decode(encoded).map_err(seal_err)?;
    keyring
        .open_secret(&sealed, secret_aad(app, env, key).as_bytes())
        .map_err(seal_err)
}

/// The id of the key a stored secret is sealed with (`None` for plain or malformed values).
pub fn sealed_with(value: &StoredValue) -> Option<String> {
    match value {
        StoredValue::Sealed(text) => Sealed::decode(text)
            .ok()
            .map(|s| s.key_id().as_str().to_owned()),
        StoredValue::Plain(_) => None,
    }
}

/// Plain values and opened secrets of one app and environment.
pub type ResolvedConfig = (BTreeMap<ConfigKey, String>, BTreeMap<ConfigKey, Secret>);

/// Every config value of `app` in `env`: plain values as they are, secrets opened as
/// [`Secret`]s (registered for Sentry scrubbing, printed `***`). For the commands that carry
/// config to the hosts; keep the secrets inside `Secret` until they are encoded into the
/// signed envelope. Fails if any secret cannot be opened (no keyring, unknown key id).
pub fn resolve_config(
    store: &Store,
    keyring: Option<&Keyring>,
    app: &AppName,
    env: &EnvName,
) -> Result<ResolvedConfig, ConfigError> {
    let mut plain = BTreeMap::new();
    let mut secrets = BTreeMap::new();
    for (key, entry) in store.config(app, env)? {
        match entry.value {
            StoredValue::Plain(value) => {
                plain.insert(key, value);
            }
            StoredValue::Sealed(text) => {
                let secret = open_value(keyring, app, env, &key, &text)?;
                secrets.insert(key, secret);
            }
        }
    }
    Ok((plain, secrets))
}

impl Coordinator {
    /// [`resolve_config`] with this coordinator's store and keyring.
    pub fn resolve_config(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<ResolvedConfig, ConfigError> {
        resolve_config(&self.store, self.secrets.as_deref(), app, env)
    }
}

/// The keys of `required` that `app` has no value for in `env` (secret or plain), sorted.
pub fn missing_required_keys(
    store: &Store,
    app: &AppName,
    env: &EnvName,
    required: &BTreeSet<ConfigKey>,
) -> Result<Vec<String>, StoreError> {
    if required.is_empty() {
        return Ok(Vec::new());
    }
    let present = store.config(app, env)?;
    Ok(required
        .iter()
        .filter(|k| !present.contains_key(*k))
        .map(|k| k.as_str().to_owned())
        .collect())
}

/// The refusal of a deploy whose environment lacks required keys; `None` when none is missing
/// (the keys recorded with `Store::set_required_keys`).
pub fn deploy_refusal(
    store: &Store,
    app: &AppName,
    env: &EnvName,
) -> Result<Option<String>, StoreError> {
    let required = store.required_keys(app, env)?;
    let missing = missing_required_keys(store, app, env, &required)?;
    if missing.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "cannot deploy {app} to {env}: required config keys missing: {} (set them with `flotilla config set {app} --env {env} KEY=VALUE`, add --secret for secrets)",
        missing.join(", ")
    )))
}

/// What [`reseal_all`] did.
#[derive(Debug, Default)]
pub struct ResealReport {
    pub resealed: u32,
    pub current: u32,
    /// `app/env/KEY: reason` of secrets that could not be opened; left as they are.
    pub failed: Vec<String>,
}

/// Seals every secret sealed with a key other than the keyring's current one again with the
/// current key. A value set concurrently is left alone (it is sealed with the current key).
/// Not flushed.
pub fn reseal_all(store: &Store, keyring: &Keyring) -> Result<ResealReport, StoreError> {
    let mut report = ResealReport::default();
    for (app, env, key, entry) in store.config_all()? {
        let StoredValue::Sealed(text) = &entry.value else {
            continue;
        };
        let place = format!("{app}/{env}/{key}");
        let sealed = match Sealed::decode(text) {
            Ok(s) => s,
            Err(e) => {
                report.failed.push(format!("{place}: {e}"));
                continue;
            }
        };
        if !keyring.needs_reseal(&sealed) {
            report.current += 1;
            continue;
        }
        let aad = secret_aad(&app, &env, &key);
        match keyring.reseal(&sealed, aad.as_bytes()) {
            Ok(new) => {
                let updated = ConfigEntry {
                    value: StoredValue::Sealed(new.encode()),
                    ..entry.clone()
                };
                if store.replace_config_entry(&app, &env, &key, &entry, &updated)? {
                    report.resealed += 1;
                } else {
                    report.current += 1;
                }
            }
            Err(e) => report.failed.push(format!("{place}: {e}")),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests;
