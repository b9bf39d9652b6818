//! The link to the coordinator: dial out over mTLS, keep one bidirectional
//! session, reconnect with exponential backoff and jitter, and resume — every
//! unacknowledged report is re-sent from the spool after a reconnect.
//! Protobuf stops here and in `exec`; commands reach the worker verified.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_service_client::AgentServiceClient;
use flotilla_shared::backoff::Backoff;
use flotilla_shared::signing::{self, Action, TrustedKeys, VerifiedCommand, VerifyPolicy};
use flotilla_shared::time::now_ms;
use flotilla_shared::{AppName, ImageRef};
use prost::Message as _;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::identity::{AgentDir, Identity, write_trusted_keys};
use crate::spool::Spool;

#[cfg(test)]
mod tests;

/// Shared by the link, the pump and the worker.
pub struct Ctx {
    pub dir: AgentDir,
    pub identity: Identity,
    /// The command-verification keys and when they were last updated; starts
    /// as `identity.trusted`, replaced by verified key-set updates.
    pub trusted: RwLock<(TrustedKeys, i64)>,
    /// Client certificate and key (PEM); replaced when renewed.
    pub identity_pem: RwLock<Vec<u8>>,
    /// Renew the client certificate when it expires within this.
    pub renew_before: Duration,
    pub spool: Spool,
    /// Signalled whenever a report is added to the spool.
    pub reports: Notify,
    pub policy: VerifyPolicy,
    pub heartbeat: Duration,
    pub keepalive: Duration,
    pub backoff_max: Duration,
    /// Whether a session is up now (`simulate` waits on it).
    pub connected: watch::Sender<bool>,
    /// The newest host metrics sample; sent at session start and on change.
    pub host_metrics: watch::Sender<Option<pb::HostMetrics>>,
    /// Deploy output to Loki, when configured.
    pub logs: Option<crate::logs::LogFeed>,
    /// Sessions, commands and refusals (`/metrics`).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl Ctx {
    /// The state of an agent whose data dir is `config.dir`.
    pub fn new(identity: Identity, spool: Spool, config: &crate::RunConfig) -> Self {
        Self {
            dir: config.dir.clone(),
            trusted: RwLock::new((identity.trusted.clone(), identity.keys_updated_at_ms)),
            identity_pem: RwLock::new(identity.identity_pem.clone()),
            renew_before: config.renew_before,
            identity,
            spool,
            reports: Notify::new(),
            policy: VerifyPolicy::default(),
            heartbeat: config.heartbeat,
            keepalive: config.keepalive,
            backoff_max: config.backoff_max,
            connected: watch::Sender::new(false),
            host_metrics: watch::Sender::new(None),
            logs: None,
            metrics: std::sync::Arc::default(),
        }
    }

    /// This agent's metrics go to `metrics` (registered for `/metrics`).
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }
}

/// Keeps a session up until `cancel`. Verified, accepted commands go to `work`.
pub async fn run(ctx: Arc<Ctx>, work: mpsc::Sender<VerifiedCommand>, cancel: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(250), ctx.backoff_max);
    loop {
        match session(&ctx, &work, &cancel).await {
            Ok(()) => {
                backoff.reset();
                tracing::info!("session ended");
            }
            Err(e) => tracing::warn!("coordinator link: {e:#}"),
        }
        if cancel.is_cancelled() {
            return;
        }
        let delay = backoff.next_delay();
        tracing::debug!(?delay, "reconnecting after delay");
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn session(
    ctx: &Arc<Ctx>,
    work: &mpsc::Sender<VerifiedCommand>,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let id = &ctx.identity;
    let identity_pem = ctx
        .identity_pem
        .read()
        .map(|pem| pem.clone())
        .map_err(|_| anyhow::anyhow!("identity lock poisoned"))?;
    let tls = flotilla_shared::tls::client_config(
        &id.ca_pem,
        &id.file.server_name,
        Some((&identity_pem, &identity_pem)),
    );
    let endpoint = tonic::transport::Channel::from_shared(id.file.server.clone())
        .context("server URL")?
        .tls_config(tls)
        .context("TLS configuration")?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(ctx.keepalive)
        .keep_alive_timeout(ctx.keepalive)
        .keep_alive_while_idle(true);
    let channel = tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        c = endpoint.connect() => c.with_context(|| format!("connect to {}", id.file.server))?,
    };
    renew(ctx, &channel).await;
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
    tx.send(pb::AgentMessage {
        msg: Some(pb::agent_message::Msg::Hello(pb::Hello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
        })),
    })
    .await
    .context("queue hello")?;
    let mut client = AgentServiceClient::new(channel.clone());
    let response = tokio::select! {
        () = cancel.cancelled() => return Ok(()),
        r = client.session(tokio_stream::wrappers::ReceiverStream::new(rx)) => r,
    };
    let mut inbound = response
        .map_err(|s| anyhow::anyhow!("session refused: {} ({:?})", s.message(), s.code()))?
        .into_inner();
    tracing::info!(server = %id.file.server, pending = ctx.spool.pending_len(), "session established");
    ctx.connected.send_replace(true);
    ctx.metrics.session_started();

    let session_cancel = cancel.child_token();
    let pump = tokio::spawn(pump(Arc::clone(ctx), tx.clone(), session_cancel.clone()));
    let mut heartbeat = tokio::time::interval(ctx.heartbeat);
    heartbeat.tick().await;
    let mut renewal = tokio::time::interval(RENEWAL_CHECK);
    renewal.tick().await;
    let mut metrics = ctx.host_metrics.subscribe();
    // The newest sample straight away, so `flotilla hosts` has figures at once.
    metrics.mark_changed();
    let result = loop {
        tokio::select! {
            () = cancel.cancelled() => break Ok(()),
            Ok(()) = metrics.changed() => {
                let sample = metrics.borrow_and_update().clone();
                if let Some(sample) = sample {
                    let msg = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Metrics(sample)) };
                    if tx.send(msg).await.is_err() {
                        break Ok(());
                    }
                }
            }
            _ = renewal.tick() => renew(ctx, &channel).await,
            _ = heartbeat.tick() => {
                let hb = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {})) };
                if tx.send(hb).await.is_err() {
                    break Ok(());
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(msg)) => {
                    if let Err(e) = handle(ctx, work, &tx, msg).await {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(status) => break Err(anyhow::anyhow!("session broke: {} ({:?})", status.message(), status.code())),
            },
        }
    };
    ctx.connected.send_replace(false);
    ctx.metrics.session_ended();
    session_cancel.cancel();
    let _ = pump.await;
    result
}

/// How often a long session checks whether the certificate needs renewal.
const RENEWAL_CHECK: Duration = Duration::from_secs(6 * 3600);

/// Renews the client certificate if due; failures are logged and retried later.
async fn renew(ctx: &Ctx, channel: &tonic::transport::Channel) {
    if let Err(e) = crate::renew::renew_if_due(ctx, channel.clone(), ctx.renew_before).await {
        tracing::warn!("certificate renewal failed (will retry): {e:#}");
    }
}

/// Sends spool reports in order, from the oldest unacknowledged one, then
/// each new one as it is added. Ends with the session.
async fn pump(ctx: Arc<Ctx>, tx: mpsc::Sender<pb::AgentMessage>, cancel: CancellationToken) {
    let mut last: Option<u64> = None;
    loop {
        let batch = match ctx.spool.pending_after(last, 256) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!("cannot read spool: {e}");
                return;
            }
        };
        if batch.is_empty() {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = ctx.reports.notified() => continue,
            }
        }
        for report in batch {
            last = Some(report.spool_seq);
            let msg = pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Report(report)),
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                sent = tx.send(msg) => if sent.is_err() { return },
            }
        }
    }
}

async fn handle(
    ctx: &Arc<Ctx>,
    work: &mpsc::Sender<VerifiedCommand>,
    session: &mpsc::Sender<pb::AgentMessage>,
    msg: pb::CoordinatorMessage,
) -> anyhow::Result<()> {
    match msg.msg {
        Some(pb::coordinator_message::Msg::Ack(ack)) => {
            ctx.spool.ack(ack.up_to)?;
        }
        Some(pb::coordinator_message::Msg::Command(signed)) => {
            handle_command(ctx, work, session, &signed).await?;
        }
        Some(pb::coordinator_message::Msg::KeyUpdate(update)) => update_keys(ctx, &update)?,
        None => {}
    }
    Ok(())
}

/// Applies a key-set update if a trusted key signed it and it is newer than
/// the last one; the new set is written to disk before it is used.
fn update_keys(ctx: &Ctx, update: &pb::KeySetUpdate) -> anyhow::Result<()> {
    let (current, updated_at) = ctx
        .trusted
        .read()
        .map(|t| t.clone())
        .map_err(|_| anyhow::anyhow!("trusted keys lock poisoned"))?;
    let set = match signing::verify_key_set(update, &current) {
        Ok(set) => set,
        Err(e) => {
            tracing::warn!("key-set update refused: {e}");
            return Ok(());
        }
    };
    if set.issued_at_ms <= updated_at || set.keys == current {
        return Ok(());
    }
    write_trusted_keys(&ctx.dir, &set.keys, set.issued_at_ms)?;
    let ids: Vec<String> = set.keys.iter().map(|(id, _)| id.to_string()).collect();
    if let Ok(mut trusted) = ctx.trusted.write() {
        *trusted = (set.keys, set.issued_at_ms);
    }
    tracing::info!(keys = ?ids, "command-verification keys updated");
    Ok(())
}

/// What to do with an incoming signed command.
#[derive(Debug)]
enum Decision {
    /// A verified ping: answer with a `Pong` at once; nothing is recorded.
    Pong { command_id: String },
    /// Verified and new: record it, acknowledge it (through the spool), run it.
    Run(Box<VerifiedCommand>),
    /// Refused: report it (through the spool) and log it; never run it.
    Refuse {
        command_id: String,
        refusal: signing::Refusal,
    },
}

/// Verifies `signed` and decides what to do with it. Pure apart from `seen`.
fn decide(
    signed: &pb::SignedCommand,
    trusted: &TrustedKeys,
    host_id: &flotilla_shared::HostId,
    now_ms: i64,
    policy: VerifyPolicy,
    seen: &dyn Fn(&str) -> bool,
) -> Decision {
    match signing::verify(signed, trusted, host_id, now_ms, policy, seen) {
        Ok(cmd) if cmd.action == Action::Ping => Decision::Pong {
            command_id: cmd.command_id,
        },
        Ok(cmd) => Decision::Run(Box::new(cmd)),
        Err(refusal) => {
            // For reporting only: which command this claimed to be.
            let command_id = refusal.command_id.clone().unwrap_or_else(|| {
                pb::CommandEnvelope::decode(signed.envelope.as_slice())
                    .map(|e| e.command_id.chars().take(64).collect())
                    .unwrap_or_default()
            });
            Decision::Refuse {
                command_id,
                refusal,
            }
        }
    }
}

/// Verifies a command. A ping is answered on `session` at once (not spooled,
/// not remembered: it runs nothing, so a replayed ping costs one pong);
/// accepted commands are recorded durably before they are acknowledged and
/// queued; refused ones are reported and logged, never run.
async fn handle_command(
    ctx: &Arc<Ctx>,
    work: &mpsc::Sender<VerifiedCommand>,
    session: &mpsc::Sender<pb::AgentMessage>,
    signed: &pb::SignedCommand,
) -> anyhow::Result<()> {
    let spool = &ctx.spool;
    let trusted = ctx
        .trusted
        .read()
        .map(|t| t.0.clone())
        .map_err(|_| anyhow::anyhow!("trusted keys lock poisoned"))?;
    let decision = decide(
        signed,
        &trusted,
        &ctx.identity.file.host_id,
        now_ms(),
        ctx.policy,
        &|command_id| spool.seen(command_id),
    );
    match decision {
        Decision::Pong { command_id } => {
            tracing::debug!(command = %command_id, "ping; answering");
            let pong = pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Pong(pb::Pong { command_id })),
            };
            session
                .send(pong)
                .await
                .map_err(|_| anyhow::anyhow!("session closed"))?;
        }
        Decision::Run(cmd) => {
            spool.accept(&cmd).await?;
            ctx.reports.notify_one();
            tracing::info!(command = %cmd.command_id, deployment = %cmd.deployment_id,
                action = cmd.action.kind(), app = ?cmd.action.app().map(AppName::as_str),
                image = ?cmd.action.image().map(ImageRef::as_str),
                "command accepted");
            work.send(*cmd)
                .await
                .map_err(|_| anyhow::anyhow!("worker stopped"))?;
        }
        Decision::Refuse {
            command_id,
            refusal,
        } => {
            ctx.metrics.command_refused(refusal.reason.code());
            if refusal.reason == signing::RefusalReason::Replayed {
                tracing::info!(command = %command_id, "command already seen; not running it again");
            } else {
                tracing::warn!(command = %command_id, reason = refusal.reason.as_str(),
                    detail = %refusal.detail, "command refused");
            }
            spool
                .push_refusal(
                    &command_id,
                    pb::Refused {
                        reason: refusal.reason.to_proto().into(),
                        detail: refusal.detail,
                    },
                )
                .await?;
            ctx.reports.notify_one();
        }
    }
    Ok(())
}
