//! The deployment state machine (DESIGN.md §3–§4). A deployment goes to the
//! selected hosts of its environment in batches (a canary batch first when
//! asked), every host of a batch at once. A host fails when its command fails,
//! its health gate fails, it is interrupted, refused or its command expires
//! undelivered. When failures exceed the strategy's `max_failures` (or an
//! operator cancels), dispatching stops, running hosts finish, and — with
//! auto-rollback — every host whose image changed is returned to the image it
//! had before. One deployment per app and environment is active; others are
//! refused or queued.
//!
//! Every step is persisted (with its events) before it is acted on, so
//! `resume` after a restart continues where the coordinator stopped without
//! re-sending what an agent accepted. Reports from agents drive it; a timer
//! (`tick`) ends pauses between batches.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_proto::v1 as pb;
use flotilla_shared::appspec::DesiredState;
use flotilla_shared::sealed::{Keyring, Sealed};
use flotilla_shared::secret::Secret;
use flotilla_shared::signing::{Action, CommandSigner, RefusalReason};
use flotilla_shared::time::{format_ms, now_ms};
use flotilla_shared::{AppName, ConfigKey, EnvName, HostId, ImageRef};
use prost::Message as _;
use tokio::sync::{Mutex, Notify, oneshot, watch};

use crate::fleet::Sessions;
use crate::store::{
    CancelRequest, Deployment, DeploymentKind, Dispatch, HostDeployment, HostState, Inserted,
    LogLine, Release, State, Store, StoreError, Strategy,
};

mod gating;
mod plan;
#[cfg(test)]
mod tests;

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("environment {0} has no hosts; join one with `flotilla-agent join --env {0}`")]
    NoHosts(EnvName),
    #[error("no host of {env} has the labels {selector}; see `flotilla hosts --env {env}`")]
    NoMatchingHosts { env: EnvName, selector: String },
    #[error(
        "deployment {active} of {app} in {env} is still in progress; wait for it, cancel it (`flotilla cancel {active}`) or queue behind it with --queue"
    )]
    Busy {
        app: AppName,
        env: EnvName,
        active: String,
    },
    #[error("{app} has no releases in {env} to roll back to")]
    NoReleases { app: AppName, env: EnvName },
    #[error(
        "{app} in {env} has no earlier release with a different image than the current {current}"
    )]
    NoPreviousRelease {
        app: AppName,
        env: EnvName,
        current: ImageRef,
    },
    #[error(
        "{app} in {env} has no release {to:?} (give a release number or an image from `flotilla releases`)"
    )]
    UnknownRelease {
        app: AppName,
        env: EnvName,
        to: String,
    },
    #[error("no deployment {0:?}")]
    NotFound(String),
    #[error("deployment {id} is {state}; {what}")]
    WrongState {
        id: String,
        state: &'static str,
        what: &'static str,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot sign command: {0}")]
    Random(#[from] flotilla_shared::token::TokenError),
    #[error(
        "the spec has secret values to send but the coordinator has no secrets keyring to keep them sealed in its outbox (docs/secrets.md)"
    )]
    NoKeyring,
    #[error("cannot seal a command for the outbox: {0}")]
    Seal(String),
}

/// What a converge (or diff) deployment carries besides `NewDeployment`.
pub struct Converge {
    /// The environment's desired state (secret keys only).
    pub desired: DesiredState,
    /// The values of `desired.secret_keys`. Kept in memory only while the
    /// commands are signed; in the outbox each command is sealed.
    pub secrets: BTreeMap<ConfigKey, Secret>,
}

/// Outbox values that start with this are a `Sealed` signed command (a
/// converge command carrying secret values), opened with the keyring before
/// sending. A protobuf `SignedCommand` never starts with it (0x46 would be
/// field 8 with the invalid wire type 6).
const SEALED_OUTBOX: &[u8] = b"FLTSEAL1";

/// The AAD a sealed outbox entry is bound to: its command id.
fn outbox_aad(command_id: &str) -> Vec<u8> {
    format!("flotilla/outbox/{command_id}").into_bytes()
}

/// What `start` needs.
pub struct NewDeployment {
    pub app: AppName,
    pub env: EnvName,
    pub kind: DeploymentKind,
    pub image: ImageRef,
    pub created_by: String,
    pub target_release: u64,
    pub strategy: Strategy,
    /// Wait behind an active deployment instead of being refused.
    pub queue: bool,
    /// Deploy inside a freeze window (the caller checked it is an admin).
    pub override_freeze: bool,
    /// The team of the token that asked (a Flagsmith trait).
    pub team: Option<String>,
}

/// How long after a command's expiry an unaccepted host is failed: twice the
/// agents' allowed clock skew.
const SWEEP_GRACE_MS: i64 = 120_000;

/// How long a ping command is valid.
const PING_TTL_MS: i64 = 60_000;

/// One host's answer to a ping.
pub struct PingResult {
    pub host_id: HostId,
    pub rtt: Option<Duration>,
    pub error: String,
}

type PingWaiters = std::sync::Mutex<HashMap<String, (HostId, oneshot::Sender<Instant>)>>;

pub struct Engine {
    store: Store,
    signer: CommandSigner,
    sessions: Arc<Sessions>,
    /// Serialises every change to deployments: one writer, no lost updates.
    lock: Mutex<()>,
    changes: watch::Sender<u64>,
    /// Woken when a pause starts, so the timer re-plans its next wake-up.
    timer: Notify,
    command_ttl: Duration,
    pings: PingWaiters,
    /// Deploy gates (Flagsmith); freeze windows are in the store.
    gates: Option<Arc<crate::gates::Gates>>,
    notifier: Option<Arc<crate::notify::Notifier>>,
    /// Seals converge commands that carry secret values before they go into
    /// the outbox (sled) and opens them to send.
    keyring: Option<Arc<Keyring>>,
    /// Secret values of converge deployments being started, by deployment
    /// id; only while `start_inner` runs (it dispatches every host at once).
    converge_secrets: std::sync::Mutex<HashMap<String, BTreeMap<ConfigKey, Secret>>>,
}

/// Removes a deployment's secret values from the engine when dropped.
struct ForgetSecrets<'a> {
    map: &'a std::sync::Mutex<HashMap<String, BTreeMap<ConfigKey, Secret>>>,
    id: String,
}

impl Drop for ForgetSecrets<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&self.id);
        }
    }
}

/// Why dispatching stopped.
enum Stop {
    Cancelled { by: String, rollback: bool },
    Failures,
}

impl Engine {
    pub fn new(
        store: Store,
        signer: CommandSigner,
        sessions: Arc<Sessions>,
        command_ttl: Duration,
    ) -> Self {
        Self {
            store,
            signer,
            sessions,
            lock: Mutex::new(()),
            changes: watch::Sender::new(0),
            timer: Notify::new(),
            command_ttl,
            pings: std::sync::Mutex::new(HashMap::new()),
            gates: None,
            notifier: None,
            keyring: None,
            converge_secrets: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Adds the secrets keyring (converge commands with secret values are
    /// sealed in the outbox; without it they are refused).
    pub fn with_keyring(mut self, keyring: Option<Arc<Keyring>>) -> Self {
        self.keyring = keyring;
        self
    }

    /// The signed command of an outbox entry, opening it when it is sealed.
    pub fn outbox_command(
        &self,
        entry: &crate::store::OutboxEntry,
    ) -> Result<pb::SignedCommand, String> {
        let bytes = match entry.signed.strip_prefix(SEALED_OUTBOX) {
            Some(sealed) => {
                let keyring = self
                    .keyring
                    .as_ref()
                    .ok_or("sealed outbox entry but no secrets keyring")?;
                let sealed = Sealed::from_bytes(sealed).map_err(|e| e.to_string())?;
                keyring
                    .open(&sealed, &outbox_aad(&entry.command_id))
                    .map_err(|e| e.to_string())?
            }
            None => entry.signed.clone(),
        };
        pb::SignedCommand::decode(bytes.as_slice()).map_err(|e| e.to_string())
    }

    /// Starts a converge (`DeploymentKind::Converge`) or a diff (`Diff`):
    /// one signed converge command to every host of the environment at once,
    /// every host run whatever the others do, no release, no rollback.
    pub async fn converge(
        &self,
        mut new: NewDeployment,
        converge: Converge,
    ) -> Result<Deployment, RolloutError> {
        use tracing::Instrument as _;
        if !converge.secrets.is_empty() && self.keyring.is_none() {
            return Err(RolloutError::NoKeyring);
        }
        new.strategy = Strategy {
            batch: crate::store::BatchSize::Percent(100),
            canary: 0,
            canary_manual: false,
            pause_ms: 0,
            max_failures: u32::MAX,
            hosts: new.strategy.hosts,
            auto_rollback: false,
            health: None,
        };
        // Never queued: the secrets are not kept for later.
        new.queue = false;
        let span = tracing::info_span!("deployment", tags.app = %new.app, tags.env = %new.env,
            tags.kind = new.kind.as_str(), tags.deployment = tracing::field::Empty);
        self.start_inner(new, Some(converge)).instrument(span).await
    }

    /// Adds the deploy gates and the notifier (both optional).
    pub fn with(
        mut self,
        gates: Option<Arc<crate::gates::Gates>>,
        notifier: Option<Arc<crate::notify::Notifier>>,
    ) -> Self {
        self.gates = gates;
        self.notifier = notifier;
        self
    }

    pub fn signer(&self) -> &CommandSigner {
        &self.signer
    }

    /// A receiver that changes whenever a deployment, its events or logs change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Creates a deployment to the selected hosts of the environment and
    /// dispatches its first batch, or queues it behind the active one.
    pub async fn start(&self, new: NewDeployment) -> Result<Deployment, RolloutError> {
        use tracing::Instrument as _;
        // A Sentry transaction (when sampled) with the deployment's tags.
        let span = tracing::info_span!("deployment", tags.app = %new.app, tags.env = %new.env,
            tags.tenant = new.team.as_deref().unwrap_or_default(), tags.kind = new.kind.as_str(),
            tags.deployment = tracing::field::Empty);
        self.start_inner(new, None).instrument(span).await
    }

    async fn start_inner(
        &self,
        new: NewDeployment,
        converge: Option<Converge>,
    ) -> Result<Deployment, RolloutError> {
        // Gates before the start, outside the lock (Flagsmith is a network
        // call). Rollbacks are never gated: they are how you get out of trouble.
        // Converges are not gated either (docs/apps.md).
        let decisions = match new.kind {
            DeploymentKind::Deploy => {
                self.check_gates(
                    &new.app,
                    &new.env,
                    new.team.as_deref(),
                    new.override_freeze,
                    0,
                )
                .await?
            }
            DeploymentKind::Rollback | DeploymentKind::Converge | DeploymentKind::Diff => {
                Vec::new()
            }
        };
        let desired = match &converge {
            Some(c) => Some(
                serde_json::to_string(&c.desired)
                    .map_err(|e| RolloutError::Store(StoreError::Encode(e)))?,
            ),
            None => None,
        };
        let _guard = self.lock.lock().await;
        let hosts = plan::select_hosts(self.store.hosts()?, &new.env, &new.strategy);
        if hosts.is_empty() {
            if new.strategy.hosts.is_empty() {
                return Err(RolloutError::NoHosts(new.env));
            }
            return Err(RolloutError::NoMatchingHosts {
                env: new.env,
                selector: selector_text(&new.strategy),
            });
        }
        let (batch_of, batches) = plan::batches(hosts.len(), &new.strategy);
        let mut d = Deployment {
            id: uuid::Uuid::now_v7().to_string(),
            app: new.app,
            env: new.env,
            kind: new.kind,
            image: new.image,
            state: State::Running,
            created_at_ms: now_ms(),
            finished_at_ms: 0,
            created_by: new.created_by,
            hosts: hosts
                .into_iter()
                .zip(batch_of)
                .map(|(host_id, batch)| HostDeployment {
                    host_id,
                    batch,
                    state: HostState::Pending,
                    image: None,
                    image_before: None,
                    exit_code: None,
                    error: String::new(),
                    command_id: None,
                    rollback_command_id: None,
                    expires_at_ms: 0,
                    accepted: false,
                    started_at_ms: 0,
                    finished_at_ms: 0,
                    changes: Vec::new(),
                })
                .collect(),
            error: String::new(),
            target_release: new.target_release,
            strategy: new.strategy,
            batches,
            current_batch: 0,
            resume_at_ms: 0,
            failures: 0,
            promoted: false,
            cancel: None,
            release: 0,
            next_event: 0,
            new_events: Vec::new(),
            gates: decisions,
            override_freeze: new.override_freeze,
            team: new.team,
            gate_pending: false,
            desired,
        };
        let _forget = converge.map(|c| {
            if let Ok(mut map) = self.converge_secrets.lock() {
                map.insert(d.id.clone(), c.secrets);
            }
            ForgetSecrets {
                map: &self.converge_secrets,
                id: d.id.clone(),
            }
        });
        let summary = format!(
            "{} {} to {} host(s) of {} in {} batch(es)",
            d.kind.as_str(),
            d.image,
            d.hosts.len(),
            d.env,
            d.batches
        );
        d.event("created", None, summary);
        if let Some(refused) = d.gates.iter().find(|g| !g.allowed).cloned() {
            // Recorded (history, notifications) but never active.
            return self.record_blocked(d, refused.reason).await;
        }
        match self.store.insert_deployment(&mut d, new.queue)? {
            Inserted::Busy { active } => {
                return Err(RolloutError::Busy {
                    app: d.app,
                    env: d.env,
                    active,
                });
            }
            Inserted::Queued { behind } => {
                self.store.flush().await?;
                tracing::info!(deployment = %d.id, %behind, "deployment queued");
                self.changed();
                return Ok(d);
            }
            Inserted::Active => {}
        }
        tracing::Span::current().record("tags.deployment", d.id.as_str());
        tracing::info!(deployment = %d.id, app = %d.app, env = %d.env,
            kind = d.kind.as_str(), image = %d.image, hosts = d.hosts.len(), batches = d.batches,
            "deployment created");
        self.notify(&d, crate::notify::EventKind::DeploymentStarted, None);
        d.event("batch_started", None, batch_text(&d));
        self.advance(&mut d).await?;
        Ok(d)
    }

    /// Starts a rollback to release `to` (a number or an image), or by default
    /// to the newest release whose image differs from the current one.
    /// Rollbacks go one host at a time and carry on past a failed host (every
    /// host that can get out of trouble should), never rolling back themselves.
    pub async fn rollback(
        &self,
        app: AppName,
        env: EnvName,
        to: Option<&str>,
        created_by: String,
    ) -> Result<Deployment, RolloutError> {
        let releases = self.store.releases(&app, &env)?;
        let Some(current) = releases.last() else {
            return Err(RolloutError::NoReleases { app, env });
        };
        let target = match to {
            Some(to) => releases
                .iter()
                .rev()
                .find(|r| {
                    to.trim_start_matches('v').parse::<u64>().ok() == Some(r.number)
                        || r.image.as_str() == to
                })
                .ok_or_else(|| RolloutError::UnknownRelease {
                    app: app.clone(),
                    env: env.clone(),
                    to: to.to_owned(),
                })?,
            // The last deployment ended after changing some hosts: undo that,
            // i.e. return every host to the current release.
            None if self.last_deployment_left_hosts_changed(&app, &env)? => current,
            None => releases
                .iter()
                .rev()
                .find(|r| r.image != current.image)
                .ok_or_else(|| RolloutError::NoPreviousRelease {
                    app: app.clone(),
                    env: env.clone(),
                    current: current.image.clone(),
                })?,
        };
        self.start(NewDeployment {
            app,
            env,
            kind: DeploymentKind::Rollback,
            image: target.image.clone(),
            created_by,
            target_release: target.number,
            strategy: Strategy {
                auto_rollback: false,
                max_failures: u32::MAX,
                ..Strategy::default()
            },
            queue: false,
            override_freeze: false,
            team: None,
        })
        .await
    }

    /// Whether the newest deployment of `app` in `env` ended without a
    /// release after at least one host took its image.
    fn last_deployment_left_hosts_changed(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<bool, RolloutError> {
        // A deployment a gate refused before any host changed says nothing.
        let last = self.store.recent_deployments(1, |d| {
            // A converge changes no image: it says nothing about releases.
            &d.app == app
                && &d.env == env
                && !d.kind.is_converge()
                && (d.state != State::Blocked || d.hosts.iter().any(changed))
        })?;
        Ok(last.first().is_some_and(|d| {
            matches!(d.state, State::Failed | State::Cancelled | State::Blocked)
                && d.hosts.iter().any(changed)
        }))
    }

    /// Continues every unfinished deployment and starts queued ones whose
    /// turn came (after a restart).
    pub async fn resume(&self) -> Result<usize, RolloutError> {
        let n = {
            let _guard = self.lock.lock().await;
            let mut n = 0;
            for mut deployment in self.store.active_deployments()? {
                if deployment.state.is_final() {
                    continue;
                }
                n += 1;
                let resumed = if deployment.state == State::Queued {
                    // Activated, but the coordinator stopped before starting it.
                    self.begin_queued(&mut deployment).await
                } else {
                    self.advance(&mut deployment).await
                };
                if let Err(e) = resumed {
                    // One bad deployment must not keep the coordinator down.
                    tracing::error!(deployment = %deployment.id, "cannot resume the deployment: {e}");
                }
            }
            for (app, env) in self.store.queued_apps()? {
                if let Err(e) = self.start_queued(&app, &env).await {
                    tracing::error!(%app, %env, "cannot start the queued deployment: {e}");
                }
            }
            n
        };
        self.timer.notify_one();
        Ok(n)
    }

    /// Starts the next queued deployment of `app` in `env` if none is active.
    /// The caller holds `self.lock`.
    async fn start_queued(&self, app: &AppName, env: &EnvName) -> Result<(), RolloutError> {
        let Some(id) = self.store.activate_next(app, env)? else {
            return Ok(());
        };
        let Some(mut d) = self.store.deployment(&id)? else {
            return Ok(());
        };
        self.begin_queued(&mut d).await
    }

    /// Starts a queued deployment that was just made the active one.
    async fn begin_queued(&self, d: &mut Deployment) -> Result<(), RolloutError> {
        d.state = State::Running;
        d.error.clear();
        d.event(
            "started",
            None,
            "its turn came: the deployment before it ended",
        );
        tracing::info!(deployment = %d.id, "queued deployment started");
        self.notify(d, crate::notify::EventKind::DeploymentStarted, None);
        // It waited: the gates are asked again before its first batch.
        if d.kind == DeploymentKind::Deploy {
            if let Some(freeze) = self.freeze_gate(d, 0)? {
                let refused = (!freeze.allowed).then(|| freeze.reason.clone());
                d.gates.push(freeze);
                if let Some(reason) = refused {
                    return Box::pin(self.block(d, reason)).await;
                }
            }
            if self.gates.as_ref().is_some_and(|g| g.has_flagsmith(&d.env)) {
                // Flagsmith is asked by the timer, outside the lock.
                d.state = State::Paused;
                d.gate_pending = true;
                d.resume_at_ms = now_ms();
                d.event(
                    "paused",
                    None,
                    "the deploy gates are asked before its first batch",
                );
                self.save(d, &[]).await?;
                self.timer.notify_one();
                return Ok(());
            }
        }
        d.event("batch_started", None, batch_text(d));
        Box::pin(self.advance(d)).await
    }

    /// Ends pauses that are over, checking the deploy gates first (outside
    /// the engine lock); returns when the next pause ends.
    pub async fn tick(&self) -> Result<Option<i64>, RolloutError> {
        let now = now_ms();
        let mut next = None::<i64>;
        let mut due = Vec::new();
        {
            let _guard = self.lock.lock().await;
            for d in self.store.active_deployments()? {
                if d.state != State::Paused {
                    continue;
                }
                if d.resume_at_ms > now {
                    next = Some(next.map_or(d.resume_at_ms, |n| n.min(d.resume_at_ms)));
                } else {
                    due.push(d);
                }
            }
        }
        for d in due {
            if let Err(e) = self.end_pause(d).await {
                // One deployment's trouble must not hold up the others.
                tracing::error!("cannot end a pause: {e}");
            }
        }
        Ok(next)
    }

    /// Asks the gates for a paused deployment that is due, then goes on (or
    /// blocks it). `gate_pending`: the gates are for its current batch, which
    /// has not started (a queued deployment's first); otherwise for the next.
    async fn end_pause(&self, d: Deployment) -> Result<(), RolloutError> {
        {
            let batch = if d.gate_pending {
                d.current_batch
            } else {
                d.current_batch + 1
            };
            let decisions = match d.kind {
                DeploymentKind::Deploy => {
                    self.check_gates(&d.app, &d.env, d.team.as_deref(), d.override_freeze, batch)
                        .await?
                }
                DeploymentKind::Rollback | DeploymentKind::Converge | DeploymentKind::Diff => {
                    Vec::new()
                }
            };
            let _guard = self.lock.lock().await;
            // It may have changed while the gates were asked (cancelled, …).
            let Some(mut d) = self.store.deployment(&d.id)? else {
                return Ok(());
            };
            if d.state != State::Paused || d.resume_at_ms > now_ms() {
                return Ok(());
            }
            let refused = decisions.iter().find(|g| !g.allowed).cloned();
            d.gates.extend(decisions);
            match refused {
                Some(refused) => self.block(&mut d, refused.reason).await?,
                None if d.gate_pending => {
                    d.gate_pending = false;
                    d.state = State::Running;
                    d.resume_at_ms = 0;
                    d.event("batch_started", None, batch_text(&d));
                    self.advance(&mut d).await?;
                }
                None => {
                    self.next_batch(&mut d);
                    self.advance(&mut d).await?;
                }
            }
        }
        Ok(())
    }

    /// A future that completes when a pause starts (the timer re-plans).
    pub fn timer_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.timer.notified()
    }

    fn next_batch(&self, d: &mut Deployment) {
        d.state = State::Running;
        d.resume_at_ms = 0;
        d.current_batch += 1;
        d.event("batch_started", None, batch_text(d));
    }

    /// Fails hosts whose command expired before their agent accepted it.
    pub async fn sweep_expired(&self) -> Result<(), RolloutError> {
        let _guard = self.lock.lock().await;
        // Agents' clocks may run behind ours by the allowed skew: an agent can
        // accept a command until then, and its report needs time to arrive.
        let now = now_ms().saturating_sub(SWEEP_GRACE_MS);
        for mut d in self.store.active_deployments()? {
            if d.state.is_final() {
                continue;
            }
            let mut changed = false;
            for i in 0..d.hosts.len() {
                let host = &d.hosts[i];
                if host.state.in_flight() && !host.accepted && now >= host.expires_at_ms {
                    let reason = format!(
                        "the agent did not take the command before it expired at {} (is the host connected?)",
                        format_ms(host.expires_at_ms)
                    );
                    self.host_failed(&mut d, i, reason)?;
                    changed = true;
                }
            }
            if changed {
                self.advance(&mut d).await?;
            }
        }
        Ok(())
    }

    /// Fails every command in flight on `host` (it was revoked: no result
    /// will come), so its deployments end instead of waiting forever.
    pub async fn fail_host(&self, host: &HostId, reason: &str) -> Result<usize, RolloutError> {
        let _guard = self.lock.lock().await;
        let mut n = 0;
        for mut d in self.store.active_deployments()? {
            if d.state.is_final() {
                continue;
            }
            let mut changed = false;
            for i in 0..d.hosts.len() {
                if &d.hosts[i].host_id == host && d.hosts[i].state.in_flight() {
                    self.host_failed(&mut d, i, reason.to_owned())?;
                    changed = true;
                }
            }
            if changed {
                n += 1;
                self.advance(&mut d).await?;
            }
        }
        Ok(n)
    }

    /// Marks host `i`'s command in flight as failed (deploy) or its rollback as
    /// failed, and drops the command from the outbox.
    fn host_failed(&self, d: &mut Deployment, i: usize, reason: String) -> Result<(), StoreError> {
        let host = &mut d.hosts[i];
        let command = if host.state == HostState::RollingBack {
            host.state = HostState::RollbackFailed;
            host.error = join_error(&host.error, &format!("rollback failed: {reason}"));
            host.rollback_command_id.clone()
        } else {
            host.state = HostState::Failed;
            host.error = reason;
            d.failures += 1;
            host.command_id.clone()
        };
        if d.hosts[i].state == HostState::Failed {
            self.notify(d, crate::notify::EventKind::HostFailed, Some(i));
        }
        let host = &mut d.hosts[i];
        host.finished_at_ms = now_ms();
        if let Some(command_id) = command {
            self.store.remove_from_outbox(&host.host_id, &command_id)?;
        }
        let kind = if d.hosts[i].state == HostState::RollbackFailed {
            "host_rollback_finished"
        } else {
            "host_finished"
        };
        let message = d.hosts[i].error.clone();
        d.event(kind, Some(i), message);
        Ok(())
    }

    /// Stops dispatching; with `rollback`, returns changed hosts afterwards.
    pub async fn cancel(
        &self,
        id: &str,
        by: String,
        rollback: bool,
        force: bool,
    ) -> Result<Deployment, RolloutError> {
        let _guard = self.lock.lock().await;
        let mut d = self
            .store
            .deployment(id)?
            .ok_or_else(|| RolloutError::NotFound(id.to_owned()))?;
        if d.state.is_final() {
            return Err(RolloutError::WrongState {
                id: d.id,
                state: d.state.as_str(),
                what: "there is nothing to cancel",
            });
        }
        if force && (d.cancel.is_some() || d.state == State::RollingBack) {
            // Already stopping, but waiting for hosts that may never answer.
            return self.abandon_in_flight(d, &by).await;
        }
        if d.cancel.is_some() || d.state == State::RollingBack {
            return Err(RolloutError::WrongState {
                id: d.id,
                state: d.state.as_str(),
                what: "it is already stopping",
            });
        }
        tracing::warn!(deployment = %d.id, %by, rollback, "deployment cancelled");
        d.cancel = Some(CancelRequest {
            by: by.clone(),
            rollback,
        });
        let what = if rollback {
            "cancel requested, with rollback"
        } else {
            "cancel requested"
        };
        d.event("cancel_requested", None, format!("{what} by {by}"));
        if d.state == State::Queued {
            // (The final save also takes it out of the queue.)
            for h in &mut d.hosts {
                h.state = HostState::Skipped;
            }
            self.finish(
                &mut d,
                State::Cancelled,
                format!("cancelled by {by} while queued"),
                None,
            )
            .await?;
            return Ok(d);
        }
        if matches!(d.state, State::Paused | State::AwaitingPromotion) {
            d.state = State::Running;
            d.gate_pending = false;
        }
        if force {
            return self.abandon_in_flight(d, &by).await;
        }
        self.advance(&mut d).await?;
        // Durable before it is confirmed.
        self.store.flush().await?;
        Ok(d)
    }

    /// Fails every host whose command is in flight as abandoned (the caller
    /// holds the lock), then lets the deployment end under its cancel.
    async fn abandon_in_flight(
        &self,
        mut d: Deployment,
        by: &str,
    ) -> Result<Deployment, RolloutError> {
        let failures = d.failures;
        for i in 0..d.hosts.len() {
            if d.hosts[i].state.in_flight() {
                let reason = format!(
                    "abandoned by {by} (cancel --force): no result awaited; one that still arrives is recorded"
                );
                self.host_failed(&mut d, i, reason)?;
            }
        }
        // An operator gave up on them: that is not a failure of the release,
        // so it does not spend the failure budget (nor trigger auto-rollback).
        d.failures = failures;
        self.advance(&mut d).await?;
        self.store.flush().await?;
        Ok(d)
    }

    /// Continues after the canary batch of a `canary_manual` deployment.
    pub async fn promote(&self, id: &str, by: String) -> Result<Deployment, RolloutError> {
        let _guard = self.lock.lock().await;
        let mut d = self
            .store
            .deployment(id)?
            .ok_or_else(|| RolloutError::NotFound(id.to_owned()))?;
        if d.state != State::AwaitingPromotion {
            return Err(RolloutError::WrongState {
                id: d.id,
                state: d.state.as_str(),
                what: "only a deployment awaiting promotion after its canary batch can be promoted",
            });
        }
        tracing::info!(deployment = %d.id, %by, "deployment promoted");
        d.promoted = true;
        d.state = State::Running;
        d.event("promoted", None, format!("promoted by {by}"));
        self.advance(&mut d).await?;
        self.store.flush().await?;
        Ok(d)
    }

    /// Applies one report from `host`'s agent. Duplicates are harmless: a
    /// report for a command that is already settled changes nothing.
    pub async fn on_report(&self, host: &HostId, report: pb::Report) -> Result<(), RolloutError> {
        let Some(command) = self.store.command(&report.command_id)? else {
            tracing::warn!(%host, command = %report.command_id, "report for an unknown command ignored");
            return Ok(());
        };
        if &command.host_id != host {
            tracing::warn!(%host, command = %report.command_id, owner = %command.host_id,
                "report for another host's command ignored");
            return Ok(());
        }
        let Some(body) = report.body else {
            return Ok(());
        };
        if let pb::report::Body::Log(log) = body {
            let stream = match pb::Stream::try_from(log.stream) {
                Ok(pb::Stream::Stderr) => "stderr",
                Ok(pb::Stream::Agent) => "agent",
                _ => "stdout",
            };
            self.store.put_log(
                &command,
                &LogLine {
                    host_id: host.clone(),
                    seq: log.seq,
                    stream: stream.into(),
                    line: log.line,
                    at_ms: log.at_ms,
                },
            )?;
            self.changed();
            return Ok(());
        }

        let _guard = self.lock.lock().await;
        let Some(mut d) = self.store.deployment(&command.deployment_id)? else {
            return Ok(());
        };
        let i = command.host_index as usize;
        let Some(entry) = d.hosts.get(i) else {
            return Ok(());
        };
        let expected = if command.rollback {
            entry.rollback_command_id.as_deref()
        } else {
            entry.command_id.as_deref()
        };
        if expected != Some(report.command_id.as_str()) {
            return Ok(());
        }
        // The command this report is about is the one in flight.
        let in_flight = if command.rollback {
            entry.state == HostState::RollingBack
        } else {
            entry.state == HostState::Running
        };
        match body {
            pb::report::Body::Log(_) => {}
            pb::report::Body::Accepted(_) => {
                self.sessions.metrics().command_acknowledged();
                self.store.remove_from_outbox(host, &report.command_id)?;
                if in_flight && !entry.accepted {
                    d.hosts[i].accepted = true;
                    d.event("host_accepted", Some(i), "the agent accepted the command");
                    self.store.save_deployment(&mut d, None, &[])?;
                    self.changed();
                }
            }
            pb::report::Body::Result(result) => {
                self.store.remove_from_outbox(host, &report.command_id)?;
                if let Ok(image) = ImageRef::parse(&result.deployed_image) {
                    self.store.set_host_image(host, &d.app, &image)?;
                }
                if !in_flight {
                    self.late_result(&mut d, i, command.rollback, &result)?;
                    return Ok(());
                }
                self.apply_result(&mut d, i, command.rollback, result);
                self.advance(&mut d).await?;
            }
            pb::report::Body::Refused(refused) => {
                let reason = pb::RefusalReason::try_from(refused.reason)
                    .ok()
                    .and_then(RefusalReason::from_proto);
                self.sessions
                    .metrics()
                    .command_refused(reason.map_or("unknown", RefusalReason::code));
                self.store.remove_from_outbox(host, &report.command_id)?;
                if reason == Some(RefusalReason::Replayed) {
                    // A re-sent command the agent already holds: its result comes separately.
                    tracing::info!(%host, command = %report.command_id, "agent already had this command");
                    return Ok(());
                }
                if !in_flight || entry.accepted {
                    // An accepted command's outcome comes as its result.
                    return Ok(());
                }
                let reason = reason.map_or("unknown reason", RefusalReason::as_str);
                let error = format!("refused by the agent: {reason}: {}", refused.detail);
                tracing::warn!(deployment = %d.id, %host, %error, "command refused");
                self.host_failed(&mut d, i, error)?;
                self.advance(&mut d).await?;
            }
        }
        Ok(())
    }

    /// A result for a command its host was already given up on (it expired
    /// while the agent was cut off, or the host was revoked): the rollout has
    /// moved on, but what the host now runs is recorded and said, so nobody
    /// believes it is still on its old release.
    fn late_result(
        &self,
        d: &mut Deployment,
        i: usize,
        rollback: bool,
        result: &pb::CommandResult,
    ) -> Result<(), StoreError> {
        let Ok(now) = ImageRef::parse(&result.deployed_image) else {
            return Ok(());
        };
        let h = &mut d.hosts[i];
        if rollback || h.state == HostState::Pending || h.image.as_ref() == Some(&now) {
            return Ok(());
        }
        let note = format!("its result came after it was given up: it now runs {now}");
        tracing::warn!(deployment = %d.id, host = %h.host_id, image = %now, "late result recorded");
        h.error = join_error(&h.error, &note);
        h.image = Some(now);
        d.event("host_late_result", Some(i), note);
        self.store.save_deployment(d, None, &[])?;
        self.changed();
        Ok(())
    }

    /// Records a command result on host `i`.
    fn apply_result(
        &self,
        d: &mut Deployment,
        i: usize,
        rollback: bool,
        result: pb::CommandResult,
    ) {
        let outcome = pb::Outcome::try_from(result.outcome).unwrap_or_default();
        let error = if !result.error.is_empty() {
            result.error
        } else if outcome == pb::Outcome::Interrupted {
            "interrupted: the agent stopped while the command ran; it was not re-run".into()
        } else {
            "the command failed".into()
        };
        let entry = &mut d.hosts[i];
        entry.accepted = true;
        entry.exit_code = result.exit_code;
        entry.finished_at_ms = now_ms();
        if let Ok(image) = ImageRef::parse(&result.deployed_image) {
            entry.image = Some(image);
        }
        if rollback {
            if outcome == pb::Outcome::Succeeded {
                entry.state = HostState::RolledBack;
            } else {
                entry.state = HostState::RollbackFailed;
                entry.error = join_error(&entry.error, &format!("rollback failed: {error}"));
            }
            let message = entry.error.clone();
            tracing::info!(deployment = %d.id, host = %entry.host_id, state = entry.state.as_str(), "host rollback finished");
            d.event("host_rollback_finished", Some(i), message);
            return;
        }
        if let Ok(before) = ImageRef::parse(&result.previous_image) {
            entry.image_before = Some(before);
        }
        entry.changes = result.changes;
        match outcome {
            pb::Outcome::Succeeded => entry.state = HostState::Succeeded,
            pb::Outcome::Interrupted => {
                entry.state = HostState::Interrupted;
                entry.error = error;
            }
            _ => {
                entry.state = HostState::Failed;
                entry.error = error;
            }
        }
        if entry.state != HostState::Succeeded {
            d.failures += 1;
            self.notify(d, crate::notify::EventKind::HostFailed, Some(i));
        }
        let entry = &d.hosts[i];
        tracing::info!(deployment = %d.id, host = %entry.host_id, state = entry.state.as_str(),
            exit_code = ?entry.exit_code, "host finished");
        let message = if entry.state == HostState::Succeeded && d.kind.is_converge() {
            converge_summary(d.kind, &entry.changes)
        } else if entry.state == HostState::Succeeded {
            format!(
                "now at {}",
                entry.image.as_ref().map_or("?", ImageRef::as_str)
            )
        } else {
            entry.error.clone()
        };
        d.event("host_finished", Some(i), message);
    }

    /// Moves `d` forward: dispatch, pause, wait, roll back or finish.
    /// The caller holds `self.lock`.
    async fn advance(&self, d: &mut Deployment) -> Result<(), RolloutError> {
        loop {
            match d.state {
                State::Queued | State::Paused | State::AwaitingPromotion => {
                    return self.save(d, &[]).await;
                }
                s if s.is_final() => return self.save(d, &[]).await,
                State::RollingBack => {
                    if self.waiting(d) {
                        return self.save(d, &[]).await;
                    }
                    let (state, cause) = match &d.cancel {
                        Some(c) => (
                            State::Cancelled,
                            format!("cancelled by {}; changed hosts rolled back", c.by),
                        ),
                        None => (State::RolledBack, d.error.clone()),
                    };
                    let failed_rollbacks = d
                        .hosts
                        .iter()
                        .filter(|h| h.state == HostState::RollbackFailed)
                        .map(|h| h.host_id.to_string())
                        .collect::<Vec<_>>();
                    let (state, cause) = if failed_rollbacks.is_empty() {
                        (state, cause)
                    } else {
                        // Some hosts still run the new release: not "rolled back".
                        let cause = format!(
                            "{cause}; rollback FAILED on {}",
                            failed_rollbacks.join(", ")
                        );
                        let state = if state == State::RolledBack {
                            State::Failed
                        } else {
                            state
                        };
                        (state, cause)
                    };
                    return self.finish(d, state, cause, None).await;
                }
                _ => {}
            }
            // Running.
            let over_budget = d.failures > d.strategy.max_failures;
            let stop = match &d.cancel {
                // A cancel does not switch off a rollback the failures already call for.
                Some(c) => Some(Stop::Cancelled {
                    by: c.by.clone(),
                    rollback: c.rollback || (over_budget && d.strategy.auto_rollback),
                }),
                None if over_budget => Some(Stop::Failures),
                None => None,
            };
            if let Some(stop) = stop {
                return self.stop(d, stop).await;
            }
            let batch = d.current_batch;
            let pending: Vec<usize> = (0..d.hosts.len())
                .filter(|&i| d.hosts[i].batch == batch && d.hosts[i].state == HostState::Pending)
                .collect();
            if !pending.is_empty() {
                return self.dispatch(d, &pending, false).await;
            }
            if self.waiting(d) {
                return self.save(d, &[]).await;
            }
            // The batch is done.
            if d.current_batch + 1 >= d.batches {
                return self.succeed(d).await;
            }
            // Gates before every further batch: a freeze that began mid-rollout
            // stops it here; Flagsmith is asked by the timer, outside the lock.
            let canary_batch = d.strategy.canary > 0 && d.current_batch == 0;
            if canary_batch && d.strategy.canary_manual && !d.promoted {
                d.state = State::AwaitingPromotion;
                d.event(
                    "awaiting_promotion",
                    None,
                    format!(
                        "canary batch done; continue with `flotilla promote {}`",
                        d.id
                    ),
                );
                tracing::info!(deployment = %d.id, "canary done; awaiting promotion");
                continue;
            }
            let flagsmith = d.kind == DeploymentKind::Deploy
                && self.gates.as_ref().is_some_and(|g| g.has_flagsmith(&d.env));
            if d.strategy.pause_ms > 0 || flagsmith {
                // The timer ends the pause and asks every gate first.
                d.gate_pending = false;
                d.state = State::Paused;
                d.resume_at_ms =
                    now_ms().saturating_add(i64::try_from(d.strategy.pause_ms).unwrap_or(i64::MAX));
                d.event(
                    "paused",
                    None,
                    format!("next batch at {}", format_ms(d.resume_at_ms)),
                );
                tracing::info!(deployment = %d.id, resume_at = %format_ms(d.resume_at_ms), "deployment paused between batches");
                self.timer.notify_one();
                continue;
            }
            // No pause: a freeze that began mid-rollout stops it here.
            if d.kind == DeploymentKind::Deploy
                && let Some(freeze) = self.freeze_gate(d, d.current_batch + 1)?
            {
                let refused = (!freeze.allowed).then(|| freeze.reason.clone());
                d.gates.push(freeze);
                if let Some(reason) = refused {
                    return self.block(d, reason).await;
                }
            }
            self.next_batch(d);
        }
    }

    /// Whether a command is in flight on any host. (Undelivered ones wait in
    /// the outbox; every new session of an agent is sent its outbox first.)
    fn waiting(&self, d: &Deployment) -> bool {
        d.hosts.iter().any(|h| h.state.in_flight())
    }

    /// Stops dispatching: pending hosts are skipped; once nothing runs, rolls
    /// back (when asked) or finishes.
    async fn stop(&self, d: &mut Deployment, stop: Stop) -> Result<(), RolloutError> {
        let cause = match &stop {
            Stop::Cancelled { by, .. } => format!("cancelled by {by}"),
            Stop::Failures => failure_cause(d),
        };
        let why_skipped = match &stop {
            Stop::Cancelled { by, .. } => format!("not attempted: cancelled by {by}"),
            Stop::Failures => "not attempted: the rollout stopped on failures".to_owned(),
        };
        for i in 0..d.hosts.len() {
            if d.hosts[i].state == HostState::Pending {
                d.hosts[i].state = HostState::Skipped;
                d.hosts[i].error = why_skipped.clone();
                d.event("host_finished", Some(i), "skipped");
            }
        }
        if self.waiting(d) {
            return self.save(d, &[]).await;
        }
        let rollback = match stop {
            Stop::Cancelled { rollback, .. } => rollback,
            Stop::Failures => d.strategy.auto_rollback,
        } && !d.kind.is_converge(); // a converge changes no image to return from
        let (state, cause) = match &stop {
            Stop::Cancelled { .. } => (State::Cancelled, cause),
            Stop::Failures if rollback => (State::RolledBack, cause),
            Stop::Failures => (State::Failed, cause),
        };
        if !rollback {
            return self.finish(d, state, cause, None).await;
        }
        // Every host whose image changed goes back to the image it had.
        d.error = cause.clone();
        let mut to_roll_back = Vec::new();
        let mut impossible = Vec::new();
        for i in 0..d.hosts.len() {
            let h = &d.hosts[i];
            if !matches!(
                h.state,
                HostState::Succeeded | HostState::Failed | HostState::Interrupted
            ) || !changed(h)
            {
                continue;
            }
            let revoked = self.store.host(&h.host_id)?.is_none_or(|h| h.revoked);
            let why = if revoked {
                "the host is revoked"
            } else if h.image_before.is_none() {
                "the app had no earlier image on this host"
            } else {
                to_roll_back.push(i);
                continue;
            };
            let error = join_error(&h.error, &format!("not rolled back: {why}"));
            impossible.push(format!("{} ({why})", h.host_id));
            d.hosts[i].error = error;
        }
        if to_roll_back.is_empty() {
            return if !impossible.is_empty() {
                // Hosts changed and cannot go back: that is not "rolled back".
                let cause = format!("{cause}; not rolled back: {}", impossible.join(", "));
                let state = if matches!(state, State::RolledBack) {
                    State::Failed
                } else {
                    state
                };
                self.finish(d, state, cause, None).await
            } else if matches!(state, State::RolledBack) {
                self.finish(d, state, format!("{cause} (no host had changed)"), None)
                    .await
            } else {
                self.finish(d, state, cause, None).await
            };
        }
        d.state = State::RollingBack;
        d.event(
            "rollback_started",
            None,
            format!("rolling back {} host(s): {cause}", to_roll_back.len()),
        );
        tracing::warn!(deployment = %d.id, hosts = to_roll_back.len(), %cause, "rolling back");
        self.dispatch(d, &to_roll_back, true).await
    }

    /// The deployment succeeded: record the release (unless the image is
    /// already the current one) and finish.
    async fn succeed(&self, d: &mut Deployment) -> Result<(), RolloutError> {
        if d.kind.is_converge() {
            // Every host ran (no failure budget); any failure fails it. No release.
            let failed: Vec<String> = d
                .hosts
                .iter()
                .filter(|h| h.state != HostState::Succeeded)
                .map(|h| h.host_id.to_string())
                .collect();
            if failed.is_empty() {
                return self.finish(d, State::Succeeded, String::new(), None).await;
            }
            let cause = format!("{} failed on {}", d.kind.as_str(), failed.join(", "));
            return self.finish(d, State::Failed, cause, None).await;
        }
        let releases = self.store.releases(&d.app, &d.env)?;
        let current = releases.last();
        let note = if d.failures > 0 {
            format!(
                "{} host(s) failed, within --max-failures {}",
                d.failures, d.strategy.max_failures
            )
        } else {
            String::new()
        };
        // Re-deploying the current image changes nothing: no new release.
        if current.is_some_and(|r| r.image == d.image) {
            return self.finish(d, State::Succeeded, note, None).await;
        }
        let release = Release {
            number: current.map_or(1, |r| r.number + 1),
            app: d.app.clone(),
            env: d.env.clone(),
            image: d.image.clone(),
            deployment_id: d.id.clone(),
            kind: d.kind,
            created_at_ms: now_ms(),
        };
        d.release = release.number;
        self.finish(d, State::Succeeded, note, Some(&release)).await
    }

    /// Ends the deployment, durably, then starts the next queued one.
    async fn finish(
        &self,
        d: &mut Deployment,
        state: State,
        cause: String,
        release: Option<&Release>,
    ) -> Result<(), RolloutError> {
        d.state = state;
        d.error = cause;
        d.finished_at_ms = now_ms();
        d.resume_at_ms = 0;
        let message = if d.error.is_empty() {
            state.as_str().to_owned()
        } else {
            format!("{}: {}", state.as_str(), d.error)
        };
        d.event("finished", None, message);
        self.store.save_deployment(d, release, &[])?;
        // Queued before the flush: durable together with the final state.
        let kind = match state {
            State::Succeeded => Some(crate::notify::EventKind::DeploymentSucceeded),
            State::Failed => Some(crate::notify::EventKind::DeploymentFailed),
            State::RolledBack => Some(crate::notify::EventKind::DeploymentRolledBack),
            State::Cancelled => Some(crate::notify::EventKind::DeploymentCancelled),
            State::Blocked => Some(crate::notify::EventKind::DeploymentBlocked),
            _ => None,
        };
        if let Some(kind) = kind {
            self.notify(d, kind, None);
        }
        self.store.flush().await?;
        self.changed();
        self.sessions.metrics().deployment_ended(
            d.kind.as_str(),
            state.as_str(),
            (d.finished_at_ms - d.created_at_ms) as f64 / 1000.0,
        );
        if matches!(state, State::Failed | State::RolledBack) {
            // One Sentry event per failed deployment (with a DSN), tagged.
            let failed_host = d
                .hosts
                .iter()
                .find(|h| matches!(h.state, HostState::Failed | HostState::RollbackFailed))
                .map(|h| h.host_id.to_string());
            deployment_span(d, failed_host.as_deref()).in_scope(|| {
                tracing::error!(kind = d.kind.as_str(), state = state.as_str(), error = %d.error,
                    "deployment failed");
            });
        }
        match state {
            State::Succeeded => {
                tracing::info!(deployment = %d.id, release = d.release, "deployment succeeded");
            }
            _ => {
                tracing::warn!(deployment = %d.id, state = state.as_str(), error = %d.error, "deployment ended");
            }
        }
        let (app, env) = (d.app.clone(), d.env.clone());
        self.start_queued(&app, &env).await
    }

    async fn save(&self, d: &mut Deployment, dispatches: &[Dispatch]) -> Result<(), RolloutError> {
        self.store.save_deployment(d, None, dispatches)?;
        self.changed();
        Ok(())
    }

    /// Signs one command per host in `indices` (deploys, or rollbacks to each
    /// host's previous image), saves them with the deployment, makes that
    /// durable, then sends them.
    async fn dispatch(
        &self,
        d: &mut Deployment,
        indices: &[usize],
        rollback: bool,
    ) -> Result<(), RolloutError> {
        let now = now_ms();
        let ttl_ms = i64::try_from(self.command_ttl.as_millis()).unwrap_or(i64::MAX);
        let releases = if rollback {
            self.store.releases(&d.app, &d.env)?
        } else {
            Vec::new()
        };
        let mut dispatches = Vec::with_capacity(indices.len());
        let mut messages = Vec::with_capacity(indices.len());
        for &i in indices {
            let host_id = d.hosts[i].host_id.clone();
            if !rollback {
                let known = self.store.host(&host_id)?;
                if known.is_none_or(|h| h.revoked) {
                    // Revoked after the deployment started: nothing can run there.
                    d.hosts[i].state = HostState::Failed;
                    d.hosts[i].error = "the host was revoked".into();
                    d.failures += 1;
                    d.event("host_finished", Some(i), "the host was revoked");
                    self.notify(d, crate::notify::EventKind::HostFailed, Some(i));
                    continue;
                }
            }
            let action = if rollback {
                let Some(before) = d.hosts[i].image_before.clone() else {
                    continue;
                };
                let release = releases
                    .iter()
                    .rev()
                    .find(|r| r.image == before)
                    .map_or(0, |r| r.number);
                Action::Rollback {
                    app: d.app.clone(),
                    image: before,
                    release,
                }
            } else {
                match d.kind {
                    DeploymentKind::Deploy => Action::Deploy {
                        app: d.app.clone(),
                        image: d.image.clone(),
                        health: d.strategy.health.clone(),
                    },
                    DeploymentKind::Rollback => Action::Rollback {
                        app: d.app.clone(),
                        image: d.image.clone(),
                        release: d.target_release,
                    },
                    DeploymentKind::Converge | DeploymentKind::Diff => {
                        match self.converge_action(d) {
                            Ok(action) => action,
                            Err(error) => {
                                d.hosts[i].state = HostState::Failed;
                                d.hosts[i].error.clone_from(&error);
                                d.failures += 1;
                                d.event("host_finished", Some(i), error);
                                continue;
                            }
                        }
                    }
                }
            };
            let command_id = uuid::Uuid::now_v7().to_string();
            let envelope = pb::CommandEnvelope {
                command_id: command_id.clone(),
                host_id: host_id.to_string(),
                deployment_id: d.id.clone(),
                issued_at_ms: now,
                expires_at_ms: now.saturating_add(ttl_ms),
                nonce: random_nonce()?,
                action: Some(action.to_proto()),
            };
            let signed = self.signer.sign(&envelope);
            let h = &mut d.hosts[i];
            h.accepted = false;
            h.expires_at_ms = envelope.expires_at_ms;
            if rollback {
                h.state = HostState::RollingBack;
                h.rollback_command_id = Some(command_id.clone());
            } else {
                h.state = HostState::Running;
                h.command_id = Some(command_id.clone());
                h.started_at_ms = now;
                if h.image_before.is_none() {
                    h.image_before = self.store.host_image(&host_id, &d.app)?;
                }
            }
            let kind = if rollback {
                "host_rollback_dispatched"
            } else {
                "host_dispatched"
            };
            let message = match action.image() {
                Some(image) => format!("{} {image}", action.kind()),
                None => action.kind().to_owned(),
            };
            d.event(kind, Some(i), message);
            let mut stored = signed.encode_to_vec();
            if !action.secret_values().is_empty() {
                // Secret values never go into sled in the clear.
                let Some(keyring) = &self.keyring else {
                    return Err(RolloutError::NoKeyring);
                };
                let sealed = keyring
                    .seal(&stored, &outbox_aad(&command_id))
                    .map_err(|e| RolloutError::Seal(e.to_string()))?;
                stored = [SEALED_OUTBOX, sealed.to_bytes().as_slice()].concat();
            }
            dispatches.push(Dispatch {
                host_index: u32::try_from(i).unwrap_or(u32::MAX),
                command_id: command_id.clone(),
                signed: stored,
                rollback,
            });
            messages.push((host_id, command_id, signed));
        }
        self.store.save_deployment(d, None, &dispatches)?;
        self.store.flush().await?;
        self.changed();
        for (host_id, command_id, signed) in messages {
            let sent = self.sessions.send(
                &host_id,
                pb::CoordinatorMessage {
                    msg: Some(pb::coordinator_message::Msg::Command(signed)),
                },
            );
            if sent {
                self.sessions.metrics().command_sent();
            }
            tracing::info!(deployment = %d.id, host = %host_id, command = %command_id, sent, rollback,
                "command dispatched");
        }
        if dispatches.is_empty() {
            // Every host of the batch failed before dispatch (revoked): go on.
            return Box::pin(self.advance(d)).await;
        }
        Ok(())
    }

    /// The converge action of `d` (a converge or diff deployment): its desired
    /// state and the secret values held while it is being started.
    fn converge_action(&self, d: &Deployment) -> Result<Action, String> {
        let desired: DesiredState = d
            .desired
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok())
            .ok_or("the deployment has no readable desired state")?;
        let held = self
            .converge_secrets
            .lock()
            .ok()
            .and_then(|map| map.get(&d.id).cloned());
        // The values live only in memory while a converge starts: after a
        // coordinator restart they are gone, and sending the command without
        // them would leave the secrets unconverged yet report success.
        let secrets = match held {
            Some(secrets) => secrets,
            None if desired.secret_keys.is_empty() => BTreeMap::new(),
            None => {
                return Err("the secret values of this converge were lost when the coordinator restarted; run `flotilla app apply` again".into());
            }
        };
        Ok(Action::Converge {
            app: d.app.clone(),
            desired: Box::new(desired),
            secrets,
            dry_run: d.kind == DeploymentKind::Diff,
        })
    }

    /// Sends a signed no-op to every connected host of `env` matching
    /// `selector` and waits (up to `timeout`) for their answers.
    pub async fn ping(
        &self,
        env: &EnvName,
        strategy: &Strategy,
        timeout: Duration,
    ) -> Result<(Vec<PingResult>, Duration), RolloutError> {
        let hosts = plan::select_hosts(self.store.hosts()?, env, strategy);
        let started = Instant::now();
        let now = now_ms();
        // Every registration is removed when this call ends, however it ends
        // (the RPC may be dropped mid-wait).
        let mut registered = PingRegistrations {
            pings: &self.pings,
            ids: Vec::with_capacity(hosts.len()),
        };
        let mut waiting = Vec::with_capacity(hosts.len());
        let mut results = Vec::with_capacity(hosts.len());
        for host_id in hosts {
            if !self.sessions.is_connected(&host_id) {
                results.push(PingResult {
                    host_id,
                    rtt: None,
                    error: "not connected".into(),
                });
                continue;
            }
            let command_id = uuid::Uuid::now_v7().to_string();
            let envelope = pb::CommandEnvelope {
                command_id: command_id.clone(),
                host_id: host_id.to_string(),
                deployment_id: String::new(),
                issued_at_ms: now,
                expires_at_ms: now.saturating_add(PING_TTL_MS),
                nonce: random_nonce()?,
                action: Some(Action::Ping.to_proto()),
            };
            let signed = self.signer.sign(&envelope);
            let (tx, rx) = oneshot::channel();
            if let Ok(mut pings) = self.pings.lock() {
                pings.insert(command_id.clone(), (host_id.clone(), tx));
            }
            registered.ids.push(command_id.clone());
            let sent_at = Instant::now();
            let sent = self.sessions.send(
                &host_id,
                pb::CoordinatorMessage {
                    msg: Some(pb::coordinator_message::Msg::Command(signed)),
                },
            );
            waiting.push((host_id, sent_at, sent, rx));
        }
        let deadline = tokio::time::Instant::from_std(started + timeout);
        let mut last_answer = None::<Instant>;
        for (host_id, sent_at, sent, rx) in waiting {
            let answer = if sent {
                tokio::time::timeout_at(deadline, rx)
                    .await
                    .ok()
                    .and_then(Result::ok)
            } else {
                None
            };
            results.push(match answer {
                Some(at) => {
                    last_answer = Some(last_answer.map_or(at, |l| l.max(at)));
                    PingResult {
                        host_id,
                        rtt: Some(at.saturating_duration_since(sent_at)),
                        error: String::new(),
                    }
                }
                None => PingResult {
                    host_id,
                    rtt: None,
                    error: if sent {
                        format!("no answer within {}", humantime::format_duration(timeout))
                    } else {
                        "the session dropped the message".into()
                    },
                },
            });
        }
        // All answered: until the last answer; otherwise until we gave up.
        let total = match last_answer {
            Some(last) if results.iter().all(|r| r.rtt.is_some()) => {
                last.saturating_duration_since(started)
            }
            _ => started.elapsed(),
        };
        results.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        Ok((results, total))
    }

    /// A pong from `host`.
    pub fn on_pong(&self, host: &HostId, command_id: &str) {
        let at = Instant::now();
        let Ok(mut pings) = self.pings.lock() else {
            return;
        };
        if pings.get(command_id).is_some_and(|(h, _)| h == host)
            && let Some((_, tx)) = pings.remove(command_id)
        {
            let _ = tx.send(at);
        }
    }
}

/// Ping waiters registered by one `ping` call; removed on drop.
struct PingRegistrations<'a> {
    pings: &'a PingWaiters,
    ids: Vec<String>,
}

impl Drop for PingRegistrations<'_> {
    fn drop(&mut self) {
        if let Ok(mut pings) = self.pings.lock() {
            for id in &self.ids {
                pings.remove(id);
            }
        }
    }
}

/// Whether host `h`'s image (may have) changed in this deployment: unknown
/// counts as changed once the agent took the command.
/// The span whose `tags.*` fields tag Sentry events about `d` (see
/// `flotilla_shared::sentry`); `host` is the host the event is about.
/// How a converged host's event reads: in sync, or its changes.
fn converge_summary(kind: DeploymentKind, changes: &[String]) -> String {
    if changes.is_empty() {
        return "in sync".to_owned();
    }
    let verb = if kind == DeploymentKind::Diff {
        "would change"
    } else {
        "changed"
    };
    format!("{verb} {}: {}", changes.len(), changes.join("; "))
}

fn deployment_span(d: &Deployment, host: Option<&str>) -> tracing::Span {
    tracing::info_span!("deployment", tags.app = %d.app, tags.env = %d.env,
        tags.deployment = %d.id, tags.kind = d.kind.as_str(),
        tags.tenant = d.team.as_deref().unwrap_or_default(),
        tags.host = host.unwrap_or_default())
}

fn changed(h: &HostDeployment) -> bool {
    match (&h.image_before, &h.image) {
        (Some(before), Some(after)) => before != after,
        (_, None) => h.accepted,
        (None, Some(_)) => true,
    }
}

/// Why a rollout stopped on failures: the hosts that failed.
fn failure_cause(d: &Deployment) -> String {
    let failed: Vec<String> = d
        .hosts
        .iter()
        .filter(|h| {
            matches!(h.state, HostState::Failed | HostState::Interrupted)
                || (!h.error.is_empty()
                    && matches!(h.state, HostState::RolledBack | HostState::RollbackFailed))
        })
        .map(|h| format!("{}: {}", h.host_id, h.error))
        .collect();
    format!(
        "{} host(s) failed (max failures {}): {}",
        d.failures,
        d.strategy.max_failures,
        failed.join("; ")
    )
}

fn join_error(first: &str, then: &str) -> String {
    if first.is_empty() {
        then.to_owned()
    } else {
        format!("{first}; {then}")
    }
}

fn batch_text(d: &Deployment) -> String {
    let hosts: Vec<&str> = d
        .hosts
        .iter()
        .filter(|h| h.batch == d.current_batch)
        .map(|h| h.host_id.as_str())
        .collect();
    let canary = if d.strategy.canary > 0 && d.current_batch == 0 {
        " (canary)"
    } else {
        ""
    };
    format!(
        "batch {}/{}{canary}: {}",
        d.current_batch + 1,
        d.batches,
        hosts.join(", ")
    )
}

fn selector_text(strategy: &Strategy) -> String {
    strategy
        .hosts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn random_nonce() -> Result<Vec<u8>, flotilla_shared::token::TokenError> {
    use ring::rand::SecureRandom as _;
    let mut nonce = vec![0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| flotilla_shared::token::TokenError::Random)?;
    Ok(nonce)
}
