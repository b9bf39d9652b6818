//! Durable coordinator state in sled. Only this module touches sled; everything
//! above works on the typed records below.
//!
//! Trees: `hosts`, `api_tokens` / `join_tokens` (keyed by SHA-256 of the
//! secret), `deployments`, `active` (one active deployment per app+env),
//! `releases`, `outbox` (signed commands not yet accepted by their agent),
//! `commands` (command id → deployment and host), `logs`, `audit`.

use std::path::Path;

use flotilla_shared::{AppName, EnvName, HostId, ImageRef, Labels};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

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
    pub used_by: Option<HostId>,
    pub used_at_ms: i64,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentKind {
    Deploy,
    Rollback,
}

impl DeploymentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deploy => "deploy",
            Self::Rollback => "rollback",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostDeployment {
    pub host_id: HostId,
    pub state: State,
    /// The image this host runs after the command, as Dokku reports it; `None`
    /// until the agent reports (and for hosts that never did).
    pub image: Option<ImageRef>,
    pub exit_code: Option<i32>,
    pub error: String,
    pub command_id: Option<String>,
    /// When the signed command stops being valid.
    pub expires_at_ms: i64,
    /// The agent durably accepted the command.
    pub accepted: bool,
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
    audit: sled::Tree,
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

fn log_key(deployment_id: &str, host_index: u32, seq: u64) -> Vec<u8> {
    let mut key = pair_key(deployment_id, "");
    key.extend_from_slice(&host_index.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
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
            audit: db.open_tree("audit")?,
            db,
        })
    }

    /// Makes every write so far durable. Cancel-safe (the flush completes in the background).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
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
            if token.used_at_ms != 0 {
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

    /// Inserts a new deployment and marks it active for its app and environment,
    /// unless another one is. Returns the id of the active one on conflict.
    pub fn insert_deployment(
        &self,
        deployment: &Deployment,
    ) -> Result<Result<(), String>, StoreError> {
        let bytes = encode(deployment)?;
        let key = pair_key(deployment.app.as_str(), deployment.env.as_str());
        let outcome = (&self.deployments, &self.active).transaction(|(deployments, active)| {
            if let Some(other) = active.get(&key)? {
                return Ok(Err(String::from_utf8_lossy(&other).into_owned()));
            }
            active.insert(key.as_slice(), deployment.id.as_bytes())?;
            deployments.insert(deployment.id.as_bytes(), bytes.clone())?;
            Ok(Ok(()))
        })?;
        Ok(outcome)
    }

    /// Saves a deployment. When it is final, it stops being the active one, and
    /// `release` (if any) is appended to the release history in the same transaction.
    pub fn save_deployment(
        &self,
        deployment: &Deployment,
        release: Option<&Release>,
    ) -> Result<(), StoreError> {
        let bytes = encode(deployment)?;
        let release_bytes = release.map(encode).transpose()?;
        let key = pair_key(deployment.app.as_str(), deployment.env.as_str());
        (&self.deployments, &self.active, &self.releases).transaction(
            |(deployments, active, releases)| {
                deployments.insert(deployment.id.as_bytes(), bytes.clone())?;
                if deployment.state.is_final()
                    && active.get(&key)?.as_deref() == Some(deployment.id.as_bytes())
                {
                    active.remove(key.as_slice())?;
                }
                if let (Some(release), Some(bytes)) = (release, &release_bytes) {
                    releases.insert(
                        release_key(&release.app, &release.env, release.number),
                        bytes.clone(),
                    )?;
                }
                Ok(())
            },
        )?;
        Ok(())
    }

    /// Saves `deployment` and queues `signed` in the host's outbox atomically, so
    /// after a crash a host is either not yet dispatched or has its command queued.
    pub fn dispatch(
        &self,
        deployment: &Deployment,
        host_index: u32,
        command_id: &str,
        signed: &[u8],
    ) -> Result<(), StoreError> {
        let host = &deployment.hosts[host_index as usize];
        let bytes = encode(deployment)?;
        let cmd = encode(&CommandRef {
            deployment_id: deployment.id.clone(),
            host_index,
            host_id: host.host_id.clone(),
        })?;
        let outbox_key = pair_key(host.host_id.as_str(), command_id);
        (&self.deployments, &self.outbox, &self.commands).transaction(
            |(deployments, outbox, commands)| {
                deployments.insert(deployment.id.as_bytes(), bytes.clone())?;
                outbox.insert(outbox_key.as_slice(), signed)?;
                commands.insert(command_id.as_bytes(), cmd.clone())?;
                Ok(())
            },
        )?;
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

    /// Stores a log line; storing the same (command, seq) twice keeps one copy.
    pub fn put_log(
        &self,
        deployment_id: &str,
        host_index: u32,
        line: &LogLine,
    ) -> Result<(), StoreError> {
        self.logs
            .insert(log_key(deployment_id, host_index, line.seq), encode(line)?)?;
        Ok(())
    }

    /// Log lines of a deployment after `cursor` (exclusive), in host then line
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
