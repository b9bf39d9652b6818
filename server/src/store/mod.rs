//! Durable coordinator state in sled. Only this module touches sled; everything
//! above works on the typed records below.
//!
//! Trees: `hosts`, `api_tokens` / `join_tokens` (keyed by SHA-256 of the
//! secret), `deployments`, `active` (one active deployment per app+env),
//! `releases`, `outbox` (signed commands not yet accepted by their agent),
//! `commands` (command id → deployment and host), `logs` (in arrival order per
//! deployment) with `log_index` (command and line number → arrival key, so a
//! re-sent line is stored once), `audit`, `events`
//! (each deployment's state changes), `queue` (deployments waiting for their
//! app+env), `host_apps` (the image each host last reported per app),
//! `app_settings` (per app+env settings such as the health-check URL);
//! `app_config` and `app_required_keys` (app config and secrets, see `config.rs`).

use std::path::Path;

use flotilla_shared::{AppName, EnvName, HostId, ImageRef, Labels};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

mod apps;
pub mod config;
pub use apps::AppSpecRecord;
mod gates;
pub mod notify;
#[cfg(test)]
mod tests;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Sled(#[from] sled::Error),
    #[error("store: corrupt record in {tree}: {source}")]
    Corrupt {
        tree: &'static str,
        source: serde_json::Error,
    },
    #[error("store: cannot encode record: {0}")]
    Encode(serde_json::Error),
    #[error("store: flush did not complete: {0}")]
    Flush(String),
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(err: TransactionError<StoreError>) -> Self {
        match err {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        }
    }
}

/// API token role, ordered by power.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Deployer,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "deployer" => Some(Self::Deployer),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Deployer => "deployer",
            Self::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiToken {
    pub name: String,
    pub role: Role,
    pub created_at_ms: i64,
    pub created_by: String,
    /// Apps this token may deploy and roll back; empty means all.
    #[serde(default)]
    pub apps: Vec<AppName>,
    /// Environments this token may deploy to; empty means all.
    #[serde(default)]
    pub envs: Vec<EnvName>,
    /// The team it acts for (a Flagsmith trait of its deploys).
    #[serde(default)]
    pub team: Option<String>,
}

impl ApiToken {
    /// Whether the token's scope covers `app` in `env`.
    pub fn covers(&self, app: &AppName, env: &EnvName) -> bool {
        (self.apps.is_empty() || self.apps.contains(app))
            && (self.envs.is_empty() || self.envs.contains(env))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenRecord {
    pub expires_at_ms: i64,
    pub created_by: String,
    /// The host that used it last.
    pub used_by: Option<HostId>,
    pub used_at_ms: i64,
    /// How many hosts may join with it.
    #[serde(default = "one")]
    pub max_uses: u32,
    #[serde(default)]
    pub uses: u32,
}

fn one() -> u32 {
    1
}

impl JoinTokenRecord {
    fn used_up(&self) -> bool {
        // Records from before multi-use tokens only have `used_at_ms`.
        let uses = if self.uses == 0 && self.used_at_ms != 0 {
            1
        } else {
            self.uses
        };
        uses >= self.max_uses.max(1)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Host {
    pub host_id: HostId,
    pub env: EnvName,
    pub labels: Labels,
    pub agent_version: String,
    pub joined_at_ms: i64,
    pub last_seen_ms: i64,
    pub revoked: bool,
    pub cert_not_after_ms: i64,
}

/// Where a deployment is in its life. The last four are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting behind the active deployment of its app and environment.
    Queued,
    #[serde(alias = "pending")]
    Running,
    /// Between batches, until `resume_at_ms`.
    Paused,
    /// The canary batch is done; waiting for `promote`.
    AwaitingPromotion,
    /// Returning changed hosts to the release each had before.
    RollingBack,
    Succeeded,
    Failed,
    RolledBack,
    Cancelled,
    /// A deploy gate (a freeze window, a Flagsmith flag) refused it.
    Blocked,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::AwaitingPromotion => "awaiting_promotion",
            Self::RollingBack => "rolling_back",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RolledBack => "rolled_back",
            Self::Cancelled => "cancelled",
            Self::Blocked => "blocked",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::RolledBack | Self::Cancelled | Self::Blocked
        )
    }
}

/// Where one host is in a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    Pending,
    Running,
    Succeeded,
    Failed,
    /// The agent stopped while the command ran (it is never re-run).
    Interrupted,
    /// Not attempted: the rollout stopped first.
    Skipped,
    RollingBack,
    RolledBack,
    RollbackFailed,
}

impl HostState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
            Self::Skipped => "skipped",
            Self::RollingBack => "rolling_back",
            Self::RolledBack => "rolled_back",
            Self::RollbackFailed => "rollback_failed",
        }
    }

    /// A command is in flight on the host.
    pub fn in_flight(self) -> bool {
        matches!(self, Self::Running | Self::RollingBack)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentKind {
    Deploy,
    Rollback,
    /// `flotilla app apply`: one signed converge command per host.
    Converge,
    /// `flotilla app diff`: a converge dry run (changes nothing).
    Diff,
}

impl DeploymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::Rollback => "rollback",
            Self::Converge => "converge",
            Self::Diff => "diff",
        }
    }

    /// A converge or its dry run: no image, no release, no rollback.
    pub fn is_converge(self) -> bool {
        matches!(self, Self::Converge | Self::Diff)
    }
}

/// Hosts per batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchSize {
    Hosts(u32),
    /// Percent of the selected hosts (rounded up, at least one host).
    Percent(u32),
}

impl BatchSize {
    /// `N` or `N%`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.is_empty() {
            return Some(Self::Hosts(1));
        }
        match s.strip_suffix('%') {
            Some(p) => p
                .trim()
                .parse()
                .ok()
                .filter(|p| (1..=100).contains(p))
                .map(Self::Percent),
            None => s.parse().ok().filter(|n| *n >= 1).map(Self::Hosts),
        }
    }

    /// Hosts per batch out of `total`.
    pub fn of(self, total: usize) -> usize {
        match self {
            Self::Hosts(n) => n as usize,
            Self::Percent(p) => (total * p as usize).div_ceil(100),
        }
        .max(1)
    }
}

impl std::fmt::Display for BatchSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Hosts(n) => write!(f, "{n}"),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// How a deployment rolls out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Strategy {
    pub batch: BatchSize,
    /// Hosts in a first batch of their own.
    pub canary: u32,
    /// Stop after the canary batch until promoted.
    pub canary_manual: bool,
    pub pause_ms: u64,
    /// Host failures tolerated; one more stops the rollout.
    pub max_failures: u32,
    /// Only hosts with all these labels.
    pub hosts: std::collections::BTreeMap<String, String>,
    /// Return changed hosts to their previous release when the rollout stops on failures.
    pub auto_rollback: bool,
    pub health: Option<flotilla_shared::health::HealthCheck>,
}

impl Default for Strategy {
    fn default() -> Self {
        Self {
            batch: BatchSize::Hosts(1),
            canary: 0,
            canary_manual: false,
            pause_ms: 0,
            max_failures: 0,
            hosts: std::collections::BTreeMap::new(),
            auto_rollback: true,
            health: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostDeployment {
    pub host_id: HostId,
    #[serde(default)]
    pub batch: u32,
    pub state: HostState,
    /// The image this host runs after the command, as Dokku reports it; `None`
    /// until the agent reports (and for hosts that never did).
    pub image: Option<ImageRef>,
    /// The image it ran before; `None` if unknown or the app is new there.
    #[serde(default)]
    pub image_before: Option<ImageRef>,
    pub exit_code: Option<i32>,
    pub error: String,
    pub command_id: Option<String>,
    #[serde(default)]
    pub rollback_command_id: Option<String>,
    /// When the command in flight stops being valid.
    pub expires_at_ms: i64,
    /// The agent durably accepted the command in flight.
    pub accepted: bool,
    #[serde(default)]
    pub started_at_ms: i64,
    #[serde(default)]
    pub finished_at_ms: i64,
    /// Converge and diff: the changes the agent made (or would make), as
    /// `Change` displays them (never a secret value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
}

/// A cancellation asked for by an operator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CancelRequest {
    pub by: String,
    pub rollback: bool,
}

/// A deploy gate's decision, as recorded on a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRecord {
    /// `flagsmith` or `freeze`.
    pub gate: String,
    pub allowed: bool,
    /// flagsmith: `live`, `cache`, `default`; freeze: `window`, `override`.
    pub source: String,
    pub reason: String,
    pub at_ms: i64,
    /// The batch it was taken before (0: the start).
    pub batch: u32,
}

/// One state change of a deployment (what `WatchDeployment` streams).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    pub at_ms: i64,
    pub kind: String,
    pub host_id: Option<HostId>,
    pub batch: u32,
    pub state: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    pub app: AppName,
    pub env: EnvName,
    pub kind: DeploymentKind,
    pub image: ImageRef,
    pub state: State,
    pub created_at_ms: i64,
    pub finished_at_ms: i64,
    pub created_by: String,
    pub hosts: Vec<HostDeployment>,
    pub error: String,
    /// For rollbacks: the release number returned to.
    pub target_release: u64,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub batches: u32,
    #[serde(default)]
    pub current_batch: u32,
    /// While paused: when the next batch starts.
    #[serde(default)]
    pub resume_at_ms: i64,
    /// Hosts that failed or were interrupted (kept when they are rolled back).
    #[serde(default)]
    pub failures: u32,
    #[serde(default)]
    pub promoted: bool,
    #[serde(default)]
    pub cancel: Option<CancelRequest>,
    /// The release this deployment created (0: none).
    #[serde(default)]
    pub release: u64,
    /// Sequence number of the next event.
    #[serde(default)]
    pub next_event: u64,
    /// Every gate decision taken for it.
    #[serde(default)]
    pub gates: Vec<GateRecord>,
    /// An admin deployed it inside a freeze window on purpose.
    #[serde(default)]
    pub override_freeze: bool,
    /// The team of the token that created it (a Flagsmith trait).
    #[serde(default)]
    pub team: Option<String>,
    /// Paused only for the Flagsmith check before the next batch (the timer
    /// runs it outside the engine lock).
    #[serde(default)]
    pub gate_pending: bool,
    /// Converge and diff: the JSON of the `DesiredState` (secret keys only,
    /// never values) each host's command carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<String>,
    /// Events not yet saved; `save_deployment` writes them with the record.
    #[serde(skip)]
    pub new_events: Vec<Event>,
}

impl Deployment {
    /// Records a state change, saved atomically with the next save.
    pub fn event(&mut self, kind: &str, host: Option<usize>, message: impl Into<String>) {
        let (host_id, batch, state) = match host.and_then(|i| self.hosts.get(i)) {
            Some(h) => (Some(h.host_id.clone()), h.batch, h.state.as_str()),
            None => (None, self.current_batch, self.state.as_str()),
        };
        self.next_event += 1;
        self.new_events.push(Event {
            seq: self.next_event,
            at_ms: flotilla_shared::time::now_ms(),
            kind: kind.to_owned(),
            host_id,
            batch,
            state: state.to_owned(),
            message: message.into(),
        });
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Release {
    pub number: u64,
    pub app: AppName,
    pub env: EnvName,
    pub image: ImageRef,
    pub deployment_id: String,
    pub kind: DeploymentKind,
    pub created_at_ms: i64,
}

/// Where a command belongs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandRef {
    pub deployment_id: String,
    pub host_index: u32,
    pub host_id: HostId,
    /// The host's rollback command (not its deploy command).
    #[serde(default)]
    pub rollback: bool,
}

/// Per app and environment settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppSettings {
    /// Health-check URL template.
    pub health_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLine {
    pub host_id: HostId,
    pub seq: u64,
    pub stream: String,
    pub line: String,
    pub at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
}

/// A command to dispatch, as stored in a host's outbox (protobuf bytes of the
/// `SignedCommand`, exactly as signed).
pub struct OutboxEntry {
    pub command_id: String,
    pub signed: Vec<u8>,
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    hosts: sled::Tree,
    api_tokens: sled::Tree,
    join_tokens: sled::Tree,
    deployments: sled::Tree,
    active: sled::Tree,
    releases: sled::Tree,
    outbox: sled::Tree,
    commands: sled::Tree,
    logs: sled::Tree,
    log_index: sled::Tree,
    audit: sled::Tree,
    events: sled::Tree,
    queue: sled::Tree,
    host_apps: sled::Tree,
    app_settings: sled::Tree,
    /// Notifications not yet delivered (see `notify.rs`).
    notify_outbox: sled::Tree,
    /// Last answers of deploy gates (see `gates.rs`).
    gate_cache: sled::Tree,
    /// Deploy freeze windows (see `gates.rs`).
    freezes: sled::Tree,
    /// The last applied app spec per app (see `apps.rs`).
    app_specs: sled::Tree,
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(StoreError::Encode)
}

fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { tree, source })
}

fn abort(e: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(e)
}

fn pair_key(a: &str, b: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + b.len() + 1);
    key.extend_from_slice(a.as_bytes());
    key.push(0);
    key.extend_from_slice(b.as_bytes());
    key
}

fn log_key(deployment_id: &str, host_index: u32, rollback: bool, seq: u64) -> Vec<u8> {
    let mut key = pair_key(deployment_id, "");
    key.extend_from_slice(&host_index.to_be_bytes());
    key.push(u8::from(rollback));
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn event_key(deployment_id: &str, seq: u64) -> Vec<u8> {
    let mut key = pair_key(deployment_id, "");
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// A command to queue in a host's outbox together with a deployment save.
pub struct Dispatch {
    pub host_index: u32,
    pub command_id: String,
    /// Protobuf bytes of the `SignedCommand`.
    pub signed: Vec<u8>,
    pub rollback: bool,
}

/// Outcome of inserting a deployment.
#[derive(Debug)]
pub enum Inserted {
    Active,
    /// Queued behind `behind` (the active one).
    Queued {
        behind: String,
    },
    /// Refused: `active` is in progress.
    Busy {
        active: String,
    },
}

/// Outcome of consuming a join token.
#[derive(Debug)]
pub enum JoinOutcome {
    Joined,
    UnknownToken,
    Expired { at_ms: i64 },
    AlreadyUsed { by: Option<HostId>, at_ms: i64 },
    HostExists,
}

impl Store {
    /// Opens (or creates) the store under `path`.
    ///
    /// sled finishes some background work after a `Db` is dropped, holding its
    /// file lock a little longer; reopening in the same process (`init` then
    /// `serve` in the dev fleet) can meet that lock, so a lock error is retried
    /// for up to 2 s. Another live process holding it still fails.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(64 * 1024 * 1024);
        let mut attempts = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if attempts < 100 && e.to_string().contains("could not acquire lock") =>
                {
                    attempts += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Self {
            hosts: db.open_tree("hosts")?,
            api_tokens: db.open_tree("api_tokens")?,
            join_tokens: db.open_tree("join_tokens")?,
            deployments: db.open_tree("deployments")?,
            active: db.open_tree("active")?,
            releases: db.open_tree("releases")?,
            outbox: db.open_tree("outbox")?,
            commands: db.open_tree("commands")?,
            logs: db.open_tree("logs")?,
            log_index: db.open_tree("log_index")?,
            audit: db.open_tree("audit")?,
            events: db.open_tree("events")?,
            queue: db.open_tree("queue")?,
            host_apps: db.open_tree("host_apps")?,
            app_settings: db.open_tree("app_settings")?,
            notify_outbox: db.open_tree("notify_outbox")?,
            gate_cache: db.open_tree("gate_cache")?,
            freezes: db.open_tree("freezes")?,
            app_specs: db.open_tree("app_specs")?,

            db,
        })
    }

    /// Makes every write so far durable. Cancel-safe (the flush completes in
    /// the background).
    ///
    /// sled's own `flush_async` can deadlock when several are polled at once
    /// (sled issues 1241 and 1308; it hung a 100-host rollout here), so the
    /// blocking flush runs on the blocking pool instead.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| StoreError::Flush(e.to_string()))??;
        Ok(())
    }

    // ----- tokens -----

    pub fn put_api_token(&self, hash: &str, token: &ApiToken) -> Result<(), StoreError> {
        self.api_tokens.insert(hash, encode(token)?)?;
        Ok(())
    }

    pub fn api_token(&self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        self.api_tokens
            .get(hash)?
            .map(|v| decode("api_tokens", &v))
            .transpose()
    }

    /// Every API token with its hash, in hash order.
    pub fn api_tokens(&self) -> Result<Vec<(String, ApiToken)>, StoreError> {
        self.api_tokens
            .iter()
            .map(|item| {
                let (k, v) = item?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    decode("api_tokens", &v)?,
                ))
            })
            .collect()
    }

    pub fn remove_api_token(&self, hash: &str) -> Result<(), StoreError> {
        self.api_tokens.remove(hash)?;
        Ok(())
    }

    pub fn put_join_token(&self, hash: &str, token: &JoinTokenRecord) -> Result<(), StoreError> {
        self.join_tokens.insert(hash, encode(token)?)?;
        Ok(())
    }

    pub fn join_token(&self, hash: &str) -> Result<Option<JoinTokenRecord>, StoreError> {
        self.join_tokens
            .get(hash)?
            .map(|v| decode("join_tokens", &v))
            .transpose()
    }

    /// Atomically consumes a join token and registers `host`, so a token can be
    /// used once and a host id claimed once, even under concurrent joins.
    pub fn join_host(
        &self,
        token_hash: &str,
        host: &Host,
        now_ms: i64,
    ) -> Result<JoinOutcome, StoreError> {
        let host_bytes = encode(host)?;
        let outcome = (&self.join_tokens, &self.hosts).transaction(|(tokens, hosts)| {
            let Some(raw) = tokens.get(token_hash)? else {
                return Ok(JoinOutcome::UnknownToken);
            };
            let mut token: JoinTokenRecord = decode("join_tokens", &raw).map_err(abort)?;
            if token.used_up() {
                return Ok(JoinOutcome::AlreadyUsed {
                    by: token.used_by,
                    at_ms: token.used_at_ms,
                });
            }
            if now_ms >= token.expires_at_ms {
                return Ok(JoinOutcome::Expired {
                    at_ms: token.expires_at_ms,
                });
            }
            if hosts.get(host.host_id.as_str())?.is_some() {
                return Ok(JoinOutcome::HostExists);
            }
            token.used_by = Some(host.host_id.clone());
            token.used_at_ms = now_ms;
            token.uses = token.uses.saturating_add(1);
            tokens.insert(token_hash, encode(&token).map_err(abort)?)?;
            hosts.insert(host.host_id.as_str(), host_bytes.clone())?;
            Ok(JoinOutcome::Joined)
        })?;
        Ok(outcome)
    }

    // ----- hosts -----

    pub fn host(&self, host_id: &HostId) -> Result<Option<Host>, StoreError> {
        self.hosts
            .get(host_id.as_str())?
            .map(|v| decode("hosts", &v))
            .transpose()
    }

    pub fn hosts(&self) -> Result<Vec<Host>, StoreError> {
        self.hosts
            .iter()
            .values()
            .map(|v| decode("hosts", &v?))
            .collect()
    }

    /// Read-modify-write of one host record; `None` if the host is unknown.
    /// A compare-and-swap loop: a concurrent update is retried, a corrupt
    /// record is an error (never silently dropped).
    pub fn update_host(
        &self,
        host_id: &HostId,
        f: impl Fn(&mut Host),
    ) -> Result<Option<Host>, StoreError> {
        loop {
            let Some(old) = self.hosts.get(host_id.as_str())? else {
                return Ok(None);
            };
            let mut host: Host = decode("hosts", &old)?;
            f(&mut host);
            let new = encode(&host)?;
            if self
                .hosts
                .compare_and_swap(host_id.as_str(), Some(old), Some(new))?
                .is_ok()
            {
                return Ok(Some(host));
            }
        }
    }

    // ----- deployments -----

    pub fn deployment(&self, id: &str) -> Result<Option<Deployment>, StoreError> {
        self.deployments
            .get(id)?
            .map(|v| decode("deployments", &v))
            .transpose()
    }

    /// All deployments, newest first (ids are UUIDv7, so key order is time order).
    pub fn deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        self.recent_deployments(usize::MAX, |_| true)
    }

    /// The newest `limit` deployments that `keep` selects, newest first; reads
    /// only as far back as it needs to.
    pub fn recent_deployments(
        &self,
        limit: usize,
        keep: impl Fn(&Deployment) -> bool,
    ) -> Result<Vec<Deployment>, StoreError> {
        let mut out = Vec::new();
        for item in self.deployments.iter().rev() {
            if out.len() >= limit {
                break;
            }
            let deployment: Deployment = decode("deployments", &item?.1)?;
            if keep(&deployment) {
                out.push(deployment);
            }
        }
        Ok(out)
    }

    /// The unfinished deployments (at most one per app and environment), from
    /// the `active` index rather than a scan of the whole history.
    pub fn active_deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        let mut out = Vec::new();
        for item in self.active.iter() {
            let (_, id) = item?;
            if let Some(d) = self.deployment(&String::from_utf8_lossy(&id))? {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// The active deployment of an app in an environment, if any.
    pub fn active_deployment(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<Option<String>, StoreError> {
        Ok(self
            .active
            .get(pair_key(app.as_str(), env.as_str()))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Inserts a new deployment and marks it active for its app and
    /// environment, unless another one is: then it is queued (`queue`) or refused.
    pub fn insert_deployment(
        &self,
        deployment: &mut Deployment,
        queue: bool,
    ) -> Result<Inserted, StoreError> {
        let key = pair_key(deployment.app.as_str(), deployment.env.as_str());
        let mut queue_key = key.clone();
        queue_key.push(0);
        queue_key.extend_from_slice(deployment.id.as_bytes());
        let outcome = (&self.deployments, &self.active, &self.queue, &self.events).transaction(
            |(deployments, active, queued, events)| {
                let mut d = deployment.clone();
                let outcome = match active.get(&key)? {
                    Some(other) if !queue => {
                        let active = String::from_utf8_lossy(&other).into_owned();
                        return Ok((Inserted::Busy { active }, None));
                    }
                    Some(other) => {
                        let behind = String::from_utf8_lossy(&other).into_owned();
                        d.state = State::Queued;
                        d.error = format!("queued behind deployment {behind}");
                        d.event("queued", None, d.error.clone());
                        queued.insert(queue_key.as_slice(), &[])?;
                        Inserted::Queued { behind }
                    }
                    None => {
                        active.insert(key.as_slice(), deployment.id.as_bytes())?;
                        Inserted::Active
                    }
                };
                for event in &d.new_events {
                    events.insert(event_key(&d.id, event.seq), encode(event).map_err(abort)?)?;
                }
                deployments.insert(d.id.as_bytes(), encode(&d).map_err(abort)?)?;
                Ok((outcome, Some(d)))
            },
        )?;
        if let (_, Some(mut saved)) = outcome {
            saved.new_events.clear();
            *deployment = saved;
        }
        Ok(outcome.0)
    }

    /// Saves a deployment with its new events and `dispatches` (signed commands
    /// queued in their hosts' outboxes) in one transaction, so after a crash a
    /// host is either not yet dispatched or has its command queued. When the
    /// deployment is final it stops being the active one and `release` (if
    /// any) is appended to the release history.
    pub fn save_deployment(
        &self,
        deployment: &mut Deployment,
        release: Option<&Release>,
        dispatches: &[Dispatch],
    ) -> Result<(), StoreError> {
        let bytes = encode(deployment)?;
        let release_bytes = release.map(encode).transpose()?;
        let events_bytes = deployment
            .new_events
            .iter()
            .map(|e| Ok((event_key(&deployment.id, e.seq), encode(e)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let commands = dispatches
            .iter()
            .map(|d| {
                let host = &deployment.hosts[d.host_index as usize];
                Ok((
                    pair_key(host.host_id.as_str(), &d.command_id),
                    d,
                    encode(&CommandRef {
                        deployment_id: deployment.id.clone(),
                        host_index: d.host_index,
                        host_id: host.host_id.clone(),
                        rollback: d.rollback,
                    })?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let key = pair_key(deployment.app.as_str(), deployment.env.as_str());
        let mut queue_key = key.clone();
        queue_key.push(0);
        queue_key.extend_from_slice(deployment.id.as_bytes());
        let is_final = deployment.state.is_final();
        let id = deployment.id.as_bytes();
        (
            &self.deployments,
            &self.active,
            &self.releases,
            &self.events,
            &self.outbox,
            &self.commands,
            &self.queue,
        )
            .transaction(
                |(deployments, active, releases, events, outbox, cmds, queue)| {
                    deployments.insert(id, bytes.clone())?;
                    if is_final && active.get(&key)?.as_deref() == Some(id) {
                        active.remove(key.as_slice())?;
                    }
                    if is_final {
                        // A queued deployment cancelled before its turn.
                        queue.remove(queue_key.as_slice())?;
                    }
                    if let (Some(release), Some(bytes)) = (release, &release_bytes) {
                        releases.insert(
                            release_key(&release.app, &release.env, release.number),
                            bytes.clone(),
                        )?;
                    }
                    for (k, v) in &events_bytes {
                        events.insert(k.as_slice(), v.as_slice())?;
                    }
                    for (outbox_key, d, cmd) in &commands {
                        outbox.insert(outbox_key.as_slice(), d.signed.as_slice())?;
                        cmds.insert(d.command_id.as_bytes(), cmd.as_slice())?;
                    }
                    Ok(())
                },
            )?;
        deployment.new_events.clear();
        Ok(())
    }

    /// The oldest queued deployment of `app` in `env`, made active if no other
    /// one is. `None` when nothing is queued or another one is active.
    pub fn activate_next(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<Option<String>, StoreError> {
        let key = pair_key(app.as_str(), env.as_str());
        let mut prefix = key.clone();
        prefix.push(0);
        let Some(first) = self.queue.scan_prefix(&prefix).keys().next().transpose()? else {
            return Ok(None);
        };
        let id = first[prefix.len()..].to_vec();
        let activated = (&self.active, &self.queue).transaction(|(active, queue)| {
            if active.get(&key)?.is_some() {
                return Ok(false);
            }
            active.insert(key.as_slice(), id.as_slice())?;
            queue.remove(&*first)?;
            Ok(true)
        })?;
        Ok(activated.then(|| String::from_utf8_lossy(&id).into_owned()))
    }

    /// Every (app, env) with a queued deployment.
    pub fn queued_apps(&self) -> Result<Vec<(AppName, EnvName)>, StoreError> {
        let mut out: Vec<(AppName, EnvName)> = Vec::new();
        for key in self.queue.iter().keys() {
            let key = key?;
            let mut parts = key.split(|b| *b == 0);
            let (Some(app), Some(env)) = (parts.next(), parts.next()) else {
                continue;
            };
            let (Ok(app), Ok(env)) = (
                AppName::parse(String::from_utf8_lossy(app)),
                EnvName::parse(String::from_utf8_lossy(env)),
            ) else {
                continue;
            };
            if !out.iter().any(|(a, e)| a == &app && e == &env) {
                out.push((app, env));
            }
        }
        Ok(out)
    }

    /// Events of a deployment with seq > `after`, oldest first.
    pub fn events_after(
        &self,
        deployment_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let start = event_key(deployment_id, after.saturating_add(1));
        let mut end = pair_key(deployment_id, "");
        end.extend_from_slice(&u64::MAX.to_be_bytes());
        self.events
            .range(start..=end)
            .take(limit)
            .map(|item| decode("events", &item?.1))
            .collect()
    }

    // ----- what each host runs -----

    /// Records the image `host` reported for `app`.
    pub fn set_host_image(
        &self,
        host: &HostId,
        app: &AppName,
        image: &ImageRef,
    ) -> Result<(), StoreError> {
        self.host_apps
            .insert(pair_key(host.as_str(), app.as_str()), image.as_str())?;
        Ok(())
    }

    /// The image `host` last reported for `app`.
    pub fn host_image(&self, host: &HostId, app: &AppName) -> Result<Option<ImageRef>, StoreError> {
        Ok(self
            .host_apps
            .get(pair_key(host.as_str(), app.as_str()))?
            .and_then(|v| ImageRef::parse(String::from_utf8_lossy(&v)).ok()))
    }

    // ----- app settings -----

    pub fn app_settings(&self, app: &AppName, env: &EnvName) -> Result<AppSettings, StoreError> {
        Ok(self
            .app_settings
            .get(pair_key(app.as_str(), env.as_str()))?
            .map(|v| decode("app_settings", &v))
            .transpose()?
            .unwrap_or_default())
    }

    pub fn put_app_settings(
        &self,
        app: &AppName,
        env: &EnvName,
        settings: &AppSettings,
    ) -> Result<(), StoreError> {
        self.app_settings
            .insert(pair_key(app.as_str(), env.as_str()), encode(settings)?)?;
        Ok(())
    }

    pub fn command(&self, command_id: &str) -> Result<Option<CommandRef>, StoreError> {
        self.commands
            .get(command_id)?
            .map(|v| decode("commands", &v))
            .transpose()
    }

    // ----- outbox -----

    /// Commands waiting for `host`, oldest first.
    pub fn outbox(&self, host: &HostId) -> Result<Vec<OutboxEntry>, StoreError> {
        let prefix = pair_key(host.as_str(), "");
        self.outbox
            .scan_prefix(&prefix)
            .map(|item| {
                let (k, v) = item?;
                Ok(OutboxEntry {
                    command_id: String::from_utf8_lossy(&k[prefix.len()..]).into_owned(),
                    signed: v.to_vec(),
                })
            })
            .collect()
    }

    pub fn remove_from_outbox(&self, host: &HostId, command_id: &str) -> Result<(), StoreError> {
        self.outbox.remove(pair_key(host.as_str(), command_id))?;
        Ok(())
    }

    // ----- releases -----

    /// Release history of an app in an environment, oldest first.
    pub fn releases(&self, app: &AppName, env: &EnvName) -> Result<Vec<Release>, StoreError> {
        let mut prefix = pair_key(app.as_str(), env.as_str());
        prefix.push(0);
        self.releases
            .scan_prefix(prefix)
            .values()
            .map(|v| decode("releases", &v?))
            .collect()
    }

    // ----- logs -----

    /// Stores a log line; storing the same (command, seq) twice keeps one
    /// copy. Lines are kept in arrival order (hosts of a batch interleave), so
    /// a reader following from a cursor never misses a line that arrives later.
    pub fn put_log(&self, command: &CommandRef, line: &LogLine) -> Result<(), StoreError> {
        let index_key = log_key(
            &command.deployment_id,
            command.host_index,
            command.rollback,
            line.seq,
        );
        if self.log_index.contains_key(&index_key)? {
            return Ok(());
        }
        let mut key = pair_key(&command.deployment_id, "");
        key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
        let bytes = encode(line)?;
        (&self.logs, &self.log_index).transaction(|(logs, index)| {
            if index.get(&index_key)?.is_some() {
                return Ok(());
            }
            index.insert(index_key.as_slice(), key.as_slice())?;
            logs.insert(key.as_slice(), bytes.as_slice())?;
            Ok(())
        })?;
        Ok(())
    }

    /// Log lines of a deployment after `cursor` (exclusive), in arrival
    /// order, with the cursor to continue from.
    pub fn logs_after(
        &self,
        deployment_id: &str,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<LogLine>, Option<Vec<u8>>), StoreError> {
        let prefix = pair_key(deployment_id, "");
        let mut end = prefix.clone();
        end.push(0xff);
        let range = match cursor {
            Some(c) => self.logs.range((
                std::ops::Bound::Excluded(c.to_vec()),
                std::ops::Bound::Excluded(end),
            )),
            None => self.logs.range(prefix..end),
        };
        let mut lines = Vec::new();
        let mut last = cursor.map(<[u8]>::to_vec);
        for item in range.take(limit) {
            let (k, v) = item?;
            lines.push(decode("logs", &v)?);
            last = Some(k.to_vec());
        }
        Ok((lines, last))
    }

    // ----- audit -----

    pub fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let id = self.db.generate_id()?;
        self.audit.insert(id.to_be_bytes(), encode(entry)?)?;
        Ok(())
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.audit
            .iter()
            .rev()
            .take(limit)
            .map(|item| decode("audit", &item?.1))
            .collect()
    }
}

fn release_key(app: &AppName, env: &EnvName, number: u64) -> Vec<u8> {
    let mut key = pair_key(app.as_str(), env.as_str());
    key.push(0);
    key.extend_from_slice(&number.to_be_bytes());
    key
}

impl Store {
    /// Synchronous flush for one-shot commands (`init`) outside a runtime.
    pub fn db_flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }
}
