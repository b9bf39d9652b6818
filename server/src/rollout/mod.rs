//! The deployment state machine. A deployment goes host by host through its
//! environment (sorted by host id) and stops at the first failure. Every step
//! is persisted before it is acted on, so `resume` after a restart continues
//! where the coordinator stopped without re-sending what an agent accepted.
//!
//! Reports from agents (accepted, log lines, results, refusals) drive it.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_shared::signing::{Action, CommandSigner, RefusalReason};
use flotilla_shared::time::{format_ms, now_ms};
use flotilla_shared::{AppName, EnvName, HostId, ImageRef};
use prost::Message as _;
use tokio::sync::{Mutex, watch};

use crate::fleet::Sessions;
use crate::store::{
    Deployment, DeploymentKind, HostDeployment, LogLine, Release, State, Store, StoreError,
};

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("environment {0} has no hosts; join one with `flotilla-agent join --env {0}`")]
    NoHosts(EnvName),
    #[error("deployment {active} of {app} in {env} is still in progress; wait for it to finish")]
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
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot sign command: {0}")]
    Random(#[from] flotilla_shared::token::TokenError),
}

/// What `start` needs.
pub struct NewDeployment {
    pub app: AppName,
    pub env: EnvName,
    pub kind: DeploymentKind,
    pub image: ImageRef,
    pub created_by: String,
    pub target_release: u64,
}

/// How long after a command's expiry an unaccepted host is failed: twice the
/// agents' allowed clock skew.
const SWEEP_GRACE_MS: i64 = 120_000;

pub struct Engine {
    store: Store,
    signer: CommandSigner,
    sessions: Arc<Sessions>,
    /// Serialises every change to deployments: one writer, no lost updates.
    lock: Mutex<()>,
    changes: watch::Sender<u64>,
    command_ttl: Duration,
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
            command_ttl,
        }
    }

    pub fn signer(&self) -> &CommandSigner {
        &self.signer
    }

    /// A receiver that changes whenever a deployment or its logs change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Creates a deployment to every (non-revoked) host of the environment and
    /// dispatches the first command.
    pub async fn start(&self, new: NewDeployment) -> Result<Deployment, RolloutError> {
        let _guard = self.lock.lock().await;
        let mut hosts: Vec<HostId> = self
            .store
            .hosts()?
            .into_iter()
            .filter(|h| h.env == new.env && !h.revoked)
            .map(|h| h.host_id)
            .collect();
        hosts.sort();
        if hosts.is_empty() {
            return Err(RolloutError::NoHosts(new.env));
        }
        let mut deployment = Deployment {
            id: uuid::Uuid::now_v7().to_string(),
            app: new.app,
            env: new.env,
            kind: new.kind,
            image: new.image,
            state: State::Pending,
            created_at_ms: now_ms(),
            finished_at_ms: 0,
            created_by: new.created_by,
            hosts: hosts
                .into_iter()
                .map(|host_id| HostDeployment {
                    host_id,
                    state: State::Pending,
                    image: None,
                    exit_code: None,
                    error: String::new(),
                    command_id: None,
                    expires_at_ms: 0,
                    accepted: false,
                })
                .collect(),
            error: String::new(),
            target_release: new.target_release,
        };
        if let Err(active) = self.store.insert_deployment(&deployment)? {
            return Err(RolloutError::Busy {
                app: deployment.app,
                env: deployment.env,
                active,
            });
        }
        tracing::info!(deployment = %deployment.id, app = %deployment.app, env = %deployment.env,
            kind = deployment.kind.as_str(), image = %deployment.image, "deployment created");
        self.advance(&mut deployment).await?;
        Ok(deployment)
    }

    /// Starts a rollback to release `to` (a number or an image), or by default
    /// to the newest release whose image differs from the current one.
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
            // The last deployment failed after changing some hosts: undo that,
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
        })
        .await
    }

    /// Whether the newest deployment of `app` in `env` failed after at least
    /// one host took its image (so hosts may differ from the current release).
    fn last_deployment_left_hosts_changed(
        &self,
        app: &AppName,
        env: &EnvName,
    ) -> Result<bool, RolloutError> {
        let last = self
            .store
            .recent_deployments(1, |d| &d.app == app && &d.env == env)?;
        Ok(last.first().is_some_and(|d| {
            d.state == State::Failed && d.hosts.iter().any(|h| h.state == State::Succeeded)
        }))
    }

    /// Continues every unfinished deployment (after a restart).
    pub async fn resume(&self) -> Result<usize, RolloutError> {
        let _guard = self.lock.lock().await;
        let mut n = 0;
        for mut deployment in self.store.active_deployments()? {
            if !deployment.state.is_final() {
                self.advance(&mut deployment).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Fails hosts whose command expired before their agent accepted it.
    pub async fn sweep_expired(&self) -> Result<(), RolloutError> {
        let _guard = self.lock.lock().await;
        // Agents' clocks may run behind ours by the allowed skew: an agent can
        // accept a command until then, and its report needs time to arrive.
        let now = now_ms().saturating_sub(SWEEP_GRACE_MS);
        for mut deployment in self.store.active_deployments()? {
            if deployment.state.is_final() {
                continue;
            }
            let mut changed = false;
            for host in &mut deployment.hosts {
                if host.state == State::Running && !host.accepted && now >= host.expires_at_ms {
                    host.state = State::Failed;
                    host.error = format!(
                        "the agent did not take the command before it expired at {} (is the host connected?)",
                        format_ms(host.expires_at_ms)
                    );
                    if let Some(command_id) = &host.command_id {
                        self.store.remove_from_outbox(&host.host_id, command_id)?;
                    }
                    changed = true;
                }
            }
            if changed {
                self.advance(&mut deployment).await?;
            }
        }
        Ok(())
    }

    /// Fails every command in flight on `host` (it was revoked: no result
    /// will come), so its deployments end instead of waiting forever.
    pub async fn fail_host(&self, host: &HostId, reason: &str) -> Result<usize, RolloutError> {
        let _guard = self.lock.lock().await;
        let mut n = 0;
        for mut deployment in self.store.active_deployments()? {
            if deployment.state.is_final() {
                continue;
            }
            let mut changed = false;
            for entry in &mut deployment.hosts {
                if &entry.host_id == host && entry.state == State::Running {
                    entry.state = State::Failed;
                    entry.error = reason.to_owned();
                    if let Some(command_id) = &entry.command_id {
                        self.store.remove_from_outbox(host, command_id)?;
                    }
                    changed = true;
                }
            }
            if changed {
                n += 1;
                self.advance(&mut deployment).await?;
            }
        }
        Ok(n)
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
                &command.deployment_id,
                command.host_index,
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
        let Some(mut deployment) = self.store.deployment(&command.deployment_id)? else {
            return Ok(());
        };
        let Some(entry) = deployment.hosts.get_mut(command.host_index as usize) else {
            return Ok(());
        };
        if entry.command_id.as_deref() != Some(report.command_id.as_str()) {
            return Ok(());
        }
        match body {
            pb::report::Body::Log(_) => {}
            pb::report::Body::Accepted(_) => {
                self.store.remove_from_outbox(host, &report.command_id)?;
                if !entry.accepted {
                    entry.accepted = true;
                    self.store.save_deployment(&deployment, None)?;
                }
            }
            pb::report::Body::Result(result) => {
                self.store.remove_from_outbox(host, &report.command_id)?;
                if entry.state.is_final() {
                    return Ok(());
                }
                entry.accepted = true;
                entry.exit_code = result.exit_code;
                if let Ok(image) = ImageRef::parse(&result.deployed_image) {
                    entry.image = Some(image);
                }
                match pb::Outcome::try_from(result.outcome) {
                    Ok(pb::Outcome::Succeeded) => entry.state = State::Succeeded,
                    Ok(pb::Outcome::Interrupted) => {
                        entry.state = State::Failed;
                        entry.error = if result.error.is_empty() {
                            "interrupted: the agent stopped while the command ran; it was not re-run".into()
                        } else {
                            result.error
                        };
                    }
                    _ => {
                        entry.state = State::Failed;
                        entry.error = if result.error.is_empty() {
                            "the command failed".into()
                        } else {
                            result.error
                        };
                    }
                }
                tracing::info!(deployment = %deployment.id, %host, state = entry.state.as_str(),
                    exit_code = ?entry.exit_code, "host finished");
                self.advance(&mut deployment).await?;
            }
            pb::report::Body::Refused(refused) => {
                let reason = pb::RefusalReason::try_from(refused.reason)
                    .ok()
                    .and_then(RefusalReason::from_proto);
                self.store.remove_from_outbox(host, &report.command_id)?;
                if reason == Some(RefusalReason::Replayed) {
                    // A re-sent command the agent already holds: its result comes separately.
                    tracing::info!(%host, command = %report.command_id, "agent already had this command");
                    return Ok(());
                }
                if entry.state.is_final() || entry.accepted {
                    // An accepted command's outcome comes as its result.
                    return Ok(());
                }
                let reason = reason.map_or("unknown reason", RefusalReason::as_str);
                entry.state = State::Failed;
                entry.error = format!("refused by the agent: {reason}: {}", refused.detail);
                tracing::warn!(deployment = %deployment.id, %host, error = %entry.error, "command refused");
                self.advance(&mut deployment).await?;
            }
        }
        Ok(())
    }

    /// Moves `deployment` forward: dispatch to the next pending host, or finish.
    /// The caller holds `self.lock`.
    async fn advance(&self, deployment: &mut Deployment) -> Result<(), RolloutError> {
        if deployment.state.is_final() {
            return Ok(());
        }
        deployment.state = State::Running;
        let failed = deployment
            .hosts
            .iter()
            .find(|h| h.state == State::Failed)
            .map(|h| (h.host_id.clone(), h.error.clone()));
        if let Some((failed_host, error)) = failed {
            for host in &mut deployment.hosts {
                if host.state == State::Pending {
                    host.error = format!("not attempted: {failed_host} failed first");
                }
            }
            if deployment.hosts.iter().any(|h| h.state == State::Running) {
                self.store.save_deployment(deployment, None)?;
                self.changed();
                return Ok(());
            }
            deployment.state = State::Failed;
            deployment.error = format!("{failed_host}: {error}");
            deployment.finished_at_ms = now_ms();
            self.store.save_deployment(deployment, None)?;
            self.store.flush().await?;
            self.changed();
            tracing::warn!(deployment = %deployment.id, error = %deployment.error, "deployment failed");
            return Ok(());
        }
        let next = deployment
            .hosts
            .iter()
            .position(|h| h.state != State::Succeeded);
        match next {
            Some(i) if deployment.hosts[i].state == State::Running => {
                // Waiting for that host; make sure the persisted state says so.
                self.store.save_deployment(deployment, None)?;
                if let Some(command_id) = deployment.hosts[i].command_id.clone() {
                    self.resend_if_queued(&deployment.hosts[i].host_id, &command_id)?;
                }
            }
            Some(i) => {
                let host = self.store.host(&deployment.hosts[i].host_id)?;
                if host.is_none_or(|h| h.revoked) {
                    // Revoked after the deployment started: nothing can run there.
                    deployment.hosts[i].state = State::Failed;
                    deployment.hosts[i].error = "the host was revoked".into();
                    return Box::pin(self.advance(deployment)).await;
                }
                self.dispatch(deployment, i).await?;
            }
            None => {
                deployment.state = State::Succeeded;
                deployment.finished_at_ms = now_ms();
                let releases = self.store.releases(&deployment.app, &deployment.env)?;
                let current = releases.last();
                // Re-deploying the current image changes nothing: no new release.
                if current.is_some_and(|r| r.image == deployment.image) {
                    self.store.save_deployment(deployment, None)?;
                    self.store.flush().await?;
                    tracing::info!(deployment = %deployment.id, "deployment succeeded (already at this release)");
                    self.changed();
                    return Ok(());
                }
                let number = current.map_or(1, |r| r.number + 1);
                let release = Release {
                    number,
                    app: deployment.app.clone(),
                    env: deployment.env.clone(),
                    image: deployment.image.clone(),
                    deployment_id: deployment.id.clone(),
                    kind: deployment.kind,
                    created_at_ms: deployment.finished_at_ms,
                };
                self.store.save_deployment(deployment, Some(&release))?;
                self.store.flush().await?;
                tracing::info!(deployment = %deployment.id, release = number, "deployment succeeded");
            }
        }
        self.changed();
        Ok(())
    }

    /// After a restart the outbox may hold a command a live session never got.
    fn resend_if_queued(&self, host: &HostId, command_id: &str) -> Result<(), RolloutError> {
        if let Some(entry) = self
            .store
            .outbox(host)?
            .into_iter()
            .find(|e| e.command_id == command_id)
            && let Ok(signed) = pb::SignedCommand::decode(entry.signed.as_slice())
        {
            self.sessions.send(
                host,
                pb::CoordinatorMessage {
                    msg: Some(pb::coordinator_message::Msg::Command(signed)),
                },
            );
        }
        Ok(())
    }

    async fn dispatch(&self, deployment: &mut Deployment, i: usize) -> Result<(), RolloutError> {
        let now = now_ms();
        let ttl_ms = i64::try_from(self.command_ttl.as_millis()).unwrap_or(i64::MAX);
        let command_id = uuid::Uuid::now_v7().to_string();
        let action = match deployment.kind {
            DeploymentKind::Deploy => Action::Deploy {
                app: deployment.app.clone(),
                image: deployment.image.clone(),
            },
            DeploymentKind::Rollback => Action::Rollback {
                app: deployment.app.clone(),
                image: deployment.image.clone(),
                release: deployment.target_release,
            },
        };
        let host = &mut deployment.hosts[i];
        let envelope = pb::CommandEnvelope {
            command_id: command_id.clone(),
            host_id: host.host_id.to_string(),
            deployment_id: deployment.id.clone(),
            issued_at_ms: now,
            expires_at_ms: now.saturating_add(ttl_ms),
            nonce: random_nonce()?,
            action: Some(action.to_proto()),
        };
        let signed = self.signer.sign(&envelope);
        host.state = State::Running;
        host.command_id = Some(command_id.clone());
        host.expires_at_ms = envelope.expires_at_ms;
        let host_id = host.host_id.clone();
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        self.store
            .dispatch(deployment, index, &command_id, &signed.encode_to_vec())?;
        self.store.flush().await?;
        let sent = self.sessions.send(
            &host_id,
            pb::CoordinatorMessage {
                msg: Some(pb::coordinator_message::Msg::Command(signed)),
            },
        );
        tracing::info!(deployment = %deployment.id, host = %host_id, command = %command_id, sent,
            "command dispatched");
        Ok(())
    }
}

fn random_nonce() -> Result<Vec<u8>, flotilla_shared::token::TokenError> {
    use ring::rand::SecureRandom as _;
    let mut nonce = vec![0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| flotilla_shared::token::TokenError::Random)?;
    Ok(nonce)
}
