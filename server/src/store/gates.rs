//! Gate records in sled: the last Flagsmith answer per environment (and app,
//! for per-app gates) in `gate_cache`, and freeze windows in `freezes` (keyed
//! by id, a UUID v7, so iteration is oldest first). The records themselves
//! are defined in `crate::gates`.

use flotilla_shared::{AppName, EnvName};

use super::{Store, StoreError, decode, encode, pair_key};
use crate::gates::{CachedFlag, Freeze};

/// `env \0 app`, or `env \0` for the environment-wide answer.
fn gate_cache_key(env: &EnvName, app: Option<&AppName>) -> Vec<u8> {
    pair_key(env.as_str(), app.map_or("", AppName::as_str))
}

impl Store {
    /// The last Flagsmith answer cached for `env` (and `app`, for per-app gates).
    pub fn gate_cache(
        &self,
        env: &EnvName,
        app: Option<&AppName>,
    ) -> Result<Option<CachedFlag>, StoreError> {
        self.gate_cache
            .get(gate_cache_key(env, app))?
            .map(|v| decode("gate_cache", &v))
            .transpose()
    }

    /// Replaces the cached Flagsmith answer. Not flushed: losing the last
    /// answer in a crash only costs a fallback to the default.
    pub fn put_gate_cache(
        &self,
        env: &EnvName,
        app: Option<&AppName>,
        answer: &CachedFlag,
    ) -> Result<(), StoreError> {
        self.gate_cache
            .insert(gate_cache_key(env, app), encode(answer)?)?;
        Ok(())
    }

    /// Creates or replaces a freeze (by id).
    pub fn put_freeze(&self, freeze: &Freeze) -> Result<(), StoreError> {
        self.freezes.insert(freeze.id.as_bytes(), encode(freeze)?)?;
        Ok(())
    }

    /// Freezes of `env` (all environments for `None`), oldest first.
    pub fn freezes(&self, env: Option<&EnvName>) -> Result<Vec<Freeze>, StoreError> {
        let mut out = Vec::new();
        for item in self.freezes.iter() {
            let (_, v) = item?;
            let freeze: Freeze = decode("freezes", &v)?;
            if env.is_none_or(|e| *e == freeze.env) {
                out.push(freeze);
            }
        }
        Ok(out)
    }

    /// Deletes a freeze; `false` if there was none with that id.
    pub fn delete_freeze(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.freezes.remove(id.as_bytes())?.is_some())
    }
}
