//! The config RPCs of `FleetService` (docs/config.md): set, unset, list, get (with the
//! admin-only, audited reveal) and reseal. Secret values are sealed before the store sees
//! them and never appear in an answer, an error, a log line or the audit log (only key names
//! do); `appconfig` owns the rules, this module the protobuf and the roles.

use std::collections::BTreeSet;

use flotilla_proto::v1 as pb;
use flotilla_shared::time::now_ms;
use flotilla_shared::{AppName, ConfigKey, EnvName};
use tonic::{Request, Response, Status};

use super::{Api, arg, internal};
use crate::appconfig::{self, ConfigError, MAX_KEYS_PER_CALL};
use crate::store::Role;
use crate::store::config::{ConfigEntry, StoredValue};

/// What every secret value looks like from outside.
const REDACTED: &str = "***";

impl From<ConfigError> for Status {
    fn from(err: ConfigError) -> Self {
        match err {
            ConfigError::NoKeyring | ConfigError::Seal { .. } => {
                Status::failed_precondition(err.to_string())
            }
            ConfigError::Store(e) => internal(e),
        }
    }
}

/// A key from a request. The message quotes the key (keys are names, not secrets) unless it
/// holds `=`, which suggests a value was sent in its place.
fn parse_key(raw: &str, check_reserved: bool) -> Result<ConfigKey, Status> {
    if raw.contains('=') {
        return Err(Status::invalid_argument(
            "a config key cannot contain '='; send the key and its value separately",
        ));
    }
    if check_reserved {
        appconfig::check_key(raw).map_err(Status::invalid_argument)
    } else {
        arg("config key", ConfigKey::parse(raw.trim()))
    }
}

/// For audit targets: the key if it is a valid name, else a placeholder.
fn key_for_audit(raw: &str) -> String {
    ConfigKey::parse(raw.trim()).map_or_else(|_| "(invalid key)".to_owned(), |k| k.to_string())
}

fn app_env(app: &str, env: &str) -> Result<(AppName, EnvName), Status> {
    Ok((
        arg("app", AppName::parse(app))?,
        arg("environment", EnvName::parse(env))?,
    ))
}

fn too_many(n: usize) -> Result<(), Status> {
    if n == 0 {
        return Err(Status::invalid_argument("name at least one config key"));
    }
    if n > MAX_KEYS_PER_CALL {
        return Err(Status::invalid_argument(format!(
            "{n} keys in one call; at most {MAX_KEYS_PER_CALL} are allowed"
        )));
    }
    Ok(())
}

/// An entry as the API shows it: secrets as `***` unless `revealed` is given.
fn entry_to_proto(
    key: &ConfigKey,
    entry: &ConfigEntry,
    revealed: Option<String>,
) -> pb::ConfigEntry {
    let (value, secret) = match &entry.value {
        StoredValue::Plain(v) => (v.clone(), false),
        StoredValue::Sealed(_) => (REDACTED.to_owned(), true),
    };
    pb::ConfigEntry {
        key: key.to_string(),
        secret,
        revealed: revealed.is_some(),
        value: revealed.unwrap_or(value),
        updated_at_ms: entry.updated_at_ms,
        updated_by: entry.updated_by.clone(),
        sealed_with: appconfig::sealed_with(&entry.value).unwrap_or_default(),
    }
}

impl Api {
    pub(super) async fn config_set(
        &self,
        req: Request<pb::SetConfigRequest>,
    ) -> Result<Response<pb::SetConfigResponse>, Status> {
        let caller = self.authorize(&req, Role::Deployer, "config-set")?;
        let r = req.into_inner();
        let target = format!(
            "{} {} {}",
            r.app,
            r.env,
            r.values
                .iter()
                .map(|v| format!(
                    "{}{}",
                    key_for_audit(&v.key),
                    if v.secret { " (secret)" } else { "" }
                ))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let result = async {
            let (app, env) = app_env(&r.app, &r.env)?;
            caller.check_scope(&app, &env)?;
            too_many(r.values.len())?;
            // The keys the applied spec declares secret here (read once per call).
            let spec_secrets = self
                .coordinator
                .store
                .app_spec(&app)?
                .and_then(|record| {
                    flotilla_shared::appspec::AppSpec::parse("spec", &record.spec_toml).ok()
                })
                .and_then(|spec| spec.envs.get(&env).map(|e| e.secret_keys.clone()))
                .unwrap_or_default();
            let mut seen = BTreeSet::new();
            let mut checked = Vec::with_capacity(r.values.len());
            for v in &r.values {
                let key = parse_key(&v.key, true)?;
                if !seen.insert(key.clone()) {
                    return Err(Status::invalid_argument(format!(
                        "config key {key} is given twice"
                    )));
                }
                appconfig::check_value(&key, &v.value).map_err(Status::invalid_argument)?;
                // A secret never becomes plain by a forgotten --secret: its
                // value would then be stored, listed and logged in clear.
                if !v.secret {
                    let sealed = matches!(
                        self.coordinator.store.config_entry(&app, &env, &key)?,
                        Some(ConfigEntry { value: StoredValue::Sealed(_), .. })
                    );
                    let declared = spec_secrets.contains(&key);
                    if sealed || declared {
                        return Err(Status::invalid_argument(format!(
                            "{key} is a secret{}: set it with --secret (or unset it first to make it plain)",
                            if declared { " in the applied spec" } else { "" }
                        )));
                    }
                }
                checked.push((key, v));
            }
            let keyring = self.coordinator.secrets.as_deref();
            let at_ms = now_ms();
            let mut entries = Vec::with_capacity(checked.len());
            for (key, v) in checked {
                let value = appconfig::stored_value(keyring, &app, &env, &key, &v.value, v.secret)?;
                entries.push((
                    key,
                    ConfigEntry {
                        value,
                        updated_at_ms: at_ms,
                        updated_by: caller.name.clone(),
                    },
                ));
            }
            let store = &self.coordinator.store;
            store.set_config(&app, &env, &entries)?;
            store.flush().await?;
            let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
            tracing::info!(%app, %env, keys = %keys.join(","), by = %caller.name, "config set");
            Ok(pb::SetConfigResponse {
                entries: entries
                    .iter()
                    .map(|(k, e)| entry_to_proto(k, e, None))
                    .collect(),
            })
        }
        .await;
        self.audit(&caller, "config-set", &target, &result);
        result.map(Response::new)
    }

    pub(super) async fn config_unset(
        &self,
        req: Request<pb::UnsetConfigRequest>,
    ) -> Result<Response<pb::UnsetConfigResponse>, Status> {
        let caller = self.authorize(&req, Role::Deployer, "config-unset")?;
        let r = req.into_inner();
        let target = format!(
            "{} {} {}",
            r.app,
            r.env,
            r.keys
                .iter()
                .map(|k| key_for_audit(k))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let result = async {
            let (app, env) = app_env(&r.app, &r.env)?;
            caller.check_scope(&app, &env)?;
            too_many(r.keys.len())?;
            let keys = r
                .keys
                .iter()
                .map(|k| parse_key(k, false))
                .collect::<Result<BTreeSet<_>, _>>()?
                .into_iter()
                .collect::<Vec<_>>();
            let store = &self.coordinator.store;
            let removed = store.unset_config(&app, &env, &keys)?;
            store.flush().await?;
            let absent = keys
                .iter()
                .filter(|k| !removed.contains(k))
                .map(ToString::to_string)
                .collect();
            let removed: Vec<String> = removed.iter().map(ToString::to_string).collect();
            tracing::info!(%app, %env, keys = %removed.join(","), by = %caller.name, "config unset");
            Ok(pb::UnsetConfigResponse { removed, absent })
        }
        .await;
        self.audit(&caller, "config-unset", &target, &result);
        result.map(Response::new)
    }

    pub(super) async fn config_list(
        &self,
        req: Request<pb::ListConfigRequest>,
    ) -> Result<Response<pb::ListConfigResponse>, Status> {
        let caller = self.authorize(&req, Role::Viewer, "read")?;
        let r = req.into_inner();
        let (app, env) = app_env(&r.app, &r.env)?;
        caller.check_scope(&app, &env)?;
        let store = &self.coordinator.store;
        let config = store.config(&app, &env)?;
        let required = store.required_keys(&app, &env)?;
        let missing = appconfig::missing_required_keys(store, &app, &env, &required)?;
        Ok(Response::new(pb::ListConfigResponse {
            app: app.to_string(),
            env: env.to_string(),
            entries: config
                .iter()
                .map(|(k, e)| entry_to_proto(k, e, None))
                .collect(),
            required: required.iter().map(ToString::to_string).collect(),
            missing,
        }))
    }

    pub(super) async fn config_get(
        &self,
        req: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::ConfigEntry>, Status> {
        let r = req.get_ref().clone();
        if !r.reveal {
            let caller = self.authorize(&req, Role::Viewer, "read")?;
            let (app, env) = app_env(&r.app, &r.env)?;
            caller.check_scope(&app, &env)?;
            let key = parse_key(&r.key, false)?;
            let (key, entry) = self.config_entry(&app, &env, key)?;
            return Ok(Response::new(entry_to_proto(&key, &entry, None)));
        }
        // Revealing is an admin's, and audited (refusals too) with the key, never the value.
        let caller = self.authorize(&req, Role::Admin, "config-reveal")?;
        let target = format!("{} {} {}", r.app, r.env, key_for_audit(&r.key));
        let result = async {
            let (app, env) = app_env(&r.app, &r.env)?;
            let key = parse_key(&r.key, false)?;
            let (key, entry) = self.config_entry(&app, &env, key)?;
            let revealed = match &entry.value {
                StoredValue::Plain(v) => v.clone(),
                StoredValue::Sealed(text) => appconfig::open_value(
                    self.coordinator.secrets.as_deref(),
                    &app,
                    &env,
                    &key,
                    text,
                )?
                .into_inner(),
            };
            tracing::warn!(%app, %env, %key, by = %caller.name, "config value revealed");
            Ok(entry_to_proto(&key, &entry, Some(revealed)))
        }
        .await;
        self.audit(&caller, "config-reveal", &target, &result);
        result.map(Response::new)
    }

    fn config_entry(
        &self,
        app: &AppName,
        env: &EnvName,
        key: ConfigKey,
    ) -> Result<(ConfigKey, ConfigEntry), Status> {
        match self.coordinator.store.config_entry(app, env, &key)? {
            Some(entry) => Ok((key, entry)),
            None => Err(Status::not_found(format!(
                "{app} has no config key {key} in {env} (see `flotilla config list {app} --env {env}`)"
            ))),
        }
    }

    pub(super) async fn config_reseal(
        &self,
        req: Request<pb::ResealConfigRequest>,
    ) -> Result<Response<pb::ResealConfigResponse>, Status> {
        let caller = self.authorize(&req, Role::Admin, "config-reseal")?;
        let result = async {
            let keyring = self
                .coordinator
                .secrets
                .as_deref()
                .ok_or_else(|| Status::from(ConfigError::NoKeyring))?;
            let store = &self.coordinator.store;
            let report = appconfig::reseal_all(store, keyring)?;
            store.flush().await?;
            tracing::info!(
                key_id = %keyring.current_key_id(),
                resealed = report.resealed,
                current = report.current,
                failed = report.failed.len(),
                "config secrets resealed"
            );
            for failure in &report.failed {
                tracing::warn!("cannot reseal {failure}");
            }
            Ok(pb::ResealConfigResponse {
                key_id: keyring.current_key_id().to_string(),
                resealed: report.resealed,
                current: report.current,
                failed: report.failed,
            })
        }
        .await;
        let target = match &result {
            Ok(r) => format!(
                "key {}: resealed {}, failed {}",
                r.key_id,
                r.resealed,
                r.failed.len()
            ),
            Err(_) => String::new(),
        };
        self.audit(&caller, "config-reseal", &target, &result);
        result.map(Response::new)
    }
}
