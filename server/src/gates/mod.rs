//! Deploy gates: the Flagsmith kill switch (`flagsmith`, with its last answers
//! cached in the store) and freeze windows (`freeze`). This module only
//! *decides*; the rollout engine records each `GateDecision` on the deployment
//! and acts on it (rollbacks are never gated).
//!
//! `config` is the `[gates]` section of the coordinator's config file.

mod config;
mod flagsmith;
mod freeze;

#[cfg(test)]
mod tests;

use flotilla_shared::{AppName, EnvName};
use serde::{Deserialize, Serialize};

use crate::store::Store;

pub use config::{
    ConfigError, DEFAULT_API_URL, FlagsmithConfig, FlagsmithEnvironmentConfig, GatesConfig,
    ResolvedGates, Secret, WhenUnreachable,
};
pub use freeze::{
    Freeze, FreezeError, MAX_FREEZE_MS, MAX_REASON_CHARS, WeeklyWindow, Window, active_freeze,
};

/// Which gate took a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Gate {
    Flagsmith,
    Freeze,
}

impl Gate {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flagsmith => "flagsmith",
            Self::Freeze => "freeze",
        }
    }
}

/// What a decision was based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Flagsmith answered just now.
    Live,
    /// Flagsmith was unreachable; its last answer, younger than `cache_max_age`.
    Cache,
    /// Flagsmith was unreachable and no fresh answer was cached: `when_unreachable`.
    Default,
    /// Freeze gate: the freeze windows of the environment.
    Window,
    /// Freeze gate: an active freeze overridden by an admin.
    Override,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Cache => "cache",
            Self::Default => "default",
            Self::Window => "window",
            Self::Override => "override",
        }
    }
}

/// One gate's answer to "may this deployment proceed?", as recorded on the
/// deployment. `reason` is a sentence for operators; it never contains a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateDecision {
    pub gate: Gate,
    pub allowed: bool,
    pub source: Source,
    pub reason: String,
    pub at_ms: i64,
}

impl GateDecision {
    /// The freeze gate's decision for a deploy to `env`: blocked while
    /// `active` (from `active_freeze`) is in force, unless `override_by`
    /// names the admin who overrode it (the caller audits that).
    pub fn freeze(
        env: &EnvName,
        active: Option<&Freeze>,
        override_by: Option<&str>,
        at_ms: i64,
    ) -> Self {
        let (allowed, source, reason) = match (active, override_by) {
            (None, _) => (
                true,
                Source::Window,
                format!("no freeze window is active for {env}"),
            ),
            (Some(f), None) => (
                false,
                Source::Window,
                format!(
                    "{env} is frozen until {} ({}; freeze {} by {}): {}",
                    flotilla_shared::time::format_ms(f.window.end_after(at_ms).unwrap_or(0)),
                    f.window,
                    f.id,
                    f.created_by,
                    f.reason
                ),
            ),
            (Some(f), Some(by)) => (
                true,
                Source::Override,
                format!(
                    "freeze {} on {env} overridden by {by} (it says: {})",
                    f.id, f.reason
                ),
            ),
        };
        Self {
            gate: Gate::Freeze,
            allowed,
            source,
            reason,
            at_ms,
        }
    }
}

/// The last live Flagsmith answer for an environment (and app, for per-app
/// gates), as kept in the store's `gate_cache` tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedFlag {
    /// The flag it is an answer for; a cached answer for another flag (the
    /// config changed) is ignored.
    #[serde(default)]
    pub flag: String,
    pub enabled: bool,
    pub at_ms: i64,
}

/// The gates of a coordinator: configuration, an HTTP client and the store
/// (for the Flagsmith cache). Cheap to clone.
#[derive(Clone)]
pub struct Gates {
    store: Store,
    config: ResolvedGates,
}

impl Gates {
    pub fn new(store: Store, config: ResolvedGates) -> Self {
        Self { store, config }
    }

    /// Whether deploys to `env` are gated by a Flagsmith flag.
    pub fn has_flagsmith(&self, env: &EnvName) -> bool {
        self.config.flagsmith_envs().any(|e| e == env)
    }

    /// The Flagsmith gate's decision for deploying `app` to `env`; `None`
    /// when no Flagsmith gate is configured for `env`. `team` is sent as a
    /// trait for per-app gates (omitted when `None`).
    ///
    /// Never fails: when Flagsmith cannot answer within the timeout, the
    /// decision comes from the cache or the configured default (and the
    /// failure is logged at warn). Takes at most about the configured
    /// timeout. Cancel-safe: dropping it leaves at most an unwritten cache
    /// entry.
    pub async fn flagsmith(
        &self,
        app: &AppName,
        env: &EnvName,
        team: Option<&str>,
    ) -> Option<GateDecision> {
        let flagsmith = self.config.flagsmith.as_ref()?;
        let gate = flagsmith.environments.get(env)?;
        Some(flagsmith::decide(&self.store, flagsmith, gate, app, env, team).await)
    }
}
