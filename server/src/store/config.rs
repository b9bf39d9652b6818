//! App config per (app, environment, key) in `app_config`, and the keys the app spec requires
//! per (app, environment) in `app_required_keys`. Secret values arrive here already sealed
//! (`Sealed::encode()` text, see `crate::appconfig`): no plaintext secret ever reaches sled.
//! The trees are opened on use (sled caches them), so this module stays self-contained.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_shared::{AppName, ConfigKey, EnvName};
use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;

use super::{Store, StoreError, decode, encode, pair_key};

const CONFIG_TREE: &str = "app_config";
const REQUIRED_TREE: &str = "app_required_keys";

/// A stored config value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredValue {
    /// A plain value, stored as is.
    Plain(String),
    /// A secret: only its `Sealed::encode()` text (`fs1.…`), bound to (app, env, key).
    Sealed(String),
}

impl StoredValue {
    pub fn is_secret(&self) -> bool {
        matches!(self, Self::Sealed(_))
    }
}

/// One config value of an app in an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigEntry {
    pub value: StoredValue,
    pub updated_at_ms: i64,
    /// The API token name that set it.
    pub updated_by: String,
}

/// `app \0 env \0`: the prefix of every key of one app and environment.
fn config_prefix(app: &AppName, env: &EnvName) -> Vec<u8> {
    let mut key = pair_key(app.as_str(), env.as_str());
    key.push(0);
    key
}

fn config_key(app: &AppName, env: &EnvName, key: &ConfigKey) -> Vec<u8> {
    let mut out = config_prefix(app, env);
    out.extend_from_slice(key.as_str().as_bytes());
    out
}

/// Splits a stored key back into (app, env, key); `None` for a malformed one.
fn split_config_key(raw: &[u8]) -> Option<(AppName, EnvName, ConfigKey)> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut parts = text.splitn(3, '\0');
    let app = AppName::parse(parts.next()?).ok()?;
    let env = EnvName::parse(parts.next()?).ok()?;
    let key = ConfigKey::parse(parts.next()?).ok()?;
    Some((app, env, key))
}

impl Store {
    fn config_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(CONFIG_TREE)?)
    }

    fn required_tree(&self) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(REQUIRED_TREE)?)
    }

    /// Every config value of `app` in `env`, by key.
    pub fn config(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<BTreeMap<ConfigKey, ConfigEntry>, StoreError> {
        let prefix = config_prefix(app, env);
        let mut out = BTreeMap::new();
        for item in self.config_tree()?.scan_prefix(&prefix) {
            let (k, v) = item?;
            let Some((_, _, key)) = split_config_key(&k) else {
                continue;
            };
            out.insert(key, decode(CONFIG_TREE, &v)?);
        }
        Ok(out)
    }

    /// One config value.
    pub fn config_entry(
        &self,
        app: &AppName,
        env: &EnvName,
        key: &ConfigKey,
    ) -> Result<Option<ConfigEntry>, StoreError> {
        self.config_tree()?
            .get(config_key(app, env, key))?
            .map(|v| decode(CONFIG_TREE, &v))
            .transpose()
    }

    /// Sets (creates or replaces) `entries` of `app` in `env`, all or none. Not flushed.
    pub fn set_config(
        &self,
        app: &AppName,
        env: &EnvName,
        entries: &[(ConfigKey, ConfigEntry)],
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (key, entry) in entries {
            batch.insert(config_key(app, env, key), encode(entry)?);
        }
        self.config_tree()?.apply_batch(batch)?;
        Ok(())
    }

    /// Removes `keys` of `app` in `env`, all in one transaction; returns those that had a
    /// value. Not flushed.
    pub fn unset_config(
        &self,
        app: &AppName,
        env: &EnvName,
        keys: &[ConfigKey],
    ) -> Result<Vec<ConfigKey>, StoreError> {
        let removed = self.config_tree()?.transaction(|t| {
            let mut removed = Vec::new();
            for key in keys {
                if t.remove(config_key(app, env, key))?.is_some() {
                    removed.push(key.clone());
                }
            }
            Ok::<_, ConflictableTransactionError<StoreError>>(removed)
        })?;
        Ok(removed)
    }

    /// Every config value of every app and environment (for resealing).
    pub fn config_all(
        &self,
    ) -> Result<Vec<(AppName, EnvName, ConfigKey, ConfigEntry)>, StoreError> {
        let mut out = Vec::new();
        for item in self.config_tree()?.iter() {
            let (k, v) = item?;
            let Some((app, env, key)) = split_config_key(&k) else {
                continue;
            };
            out.push((app, env, key, decode(CONFIG_TREE, &v)?));
        }
        Ok(out)
    }

    /// Replaces a value only if it is still `old` (a concurrent `set` wins); returns whether
    /// it was replaced. Not flushed.
    pub fn replace_config_entry(
        &self,
        app: &AppName,
        env: &EnvName,
        key: &ConfigKey,
        old: &ConfigEntry,
        new: &ConfigEntry,
    ) -> Result<bool, StoreError> {
        let swapped = self.config_tree()?.compare_and_swap(
            config_key(app, env, key),
            Some(encode(old)?),
            Some(encode(new)?),
        )?;
        Ok(swapped.is_ok())
    }

    /// Records the keys that must have a value in the store before `app` may deploy to `env`
    /// (the app spec's required keys that neither the spec's own config nor a service link
    /// provides). An empty set removes the record. Not flushed.
    pub fn set_required_keys(
        &self,
        app: &AppName,
        env: &EnvName,
        keys: &BTreeSet<ConfigKey>,
    ) -> Result<(), StoreError> {
        let tree = self.required_tree()?;
        let k = pair_key(app.as_str(), env.as_str());
        if keys.is_empty() {
            tree.remove(k)?;
        } else {
            tree.insert(k, encode(keys)?)?;
        }
        Ok(())
    }

    /// The keys `set_required_keys` recorded for `app` in `env` (empty if none).
    pub fn required_keys(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<BTreeSet<ConfigKey>, StoreError> {
        Ok(self
            .required_tree()?
            .get(pair_key(app.as_str(), env.as_str()))?
            .map(|v| decode(REQUIRED_TREE, &v))
            .transpose()?
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests;
