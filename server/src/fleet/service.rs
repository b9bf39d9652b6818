//! `AgentService`: the join handshake and the long-lived agent session.
//! Protobuf stops here; the rollout engine and the store get domain types.

use std::pin::Pin;
use std::sync::Arc;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_service_server::AgentService;
use flotilla_shared::time::{format_ms, now_ms};
use flotilla_shared::{EnvName, HostId, Labels};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::Coordinator;
use crate::rollout::RolloutError;
use crate::store::{AuditEntry, Host, JoinOutcome, StoreError};

pub struct AgentApi {
    pub coordinator: Arc<Coordinator>,
    pub cancel: CancellationToken,
}

impl AgentApi {
    /// The registered, non-revoked host a request's client certificate names.
    /// rustls already checked the certificate chains to our CA.
    fn authenticated_host<T>(&self, req: &Request<T>) -> Result<HostId, Status> {
        let certs = req.peer_certs().ok_or_else(|| {
            Status::unauthenticated("a client certificate from the coordinator's CA is required")
        })?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let host_id = flotilla_shared::tls::host_id_from_cert(leaf)
            .map_err(|e| Status::unauthenticated(format!("bad client certificate: {e}")))?;
        match self.coordinator.store.host(&host_id).map_err(internal)? {
            None => Err(Status::permission_denied(format!(
                "host {host_id} is not registered"
            ))),
            Some(h) if h.revoked => {
                tracing::warn!(%host_id, "revoked host refused");
                Err(Status::permission_denied(format!(
                    "host {host_id} has been revoked"
                )))
            }
            Some(_) => Ok(host_id),
        }
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

fn internal(err: impl std::fmt::Display) -> Status {
    tracing::error!("internal error: {err}");
    Status::internal("internal error; see the coordinator log")
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    #[tracing::instrument(skip_all, fields(rpc = "join", host = %req.get_ref().host_id))]
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let req = req.into_inner();
        let host_id =
            HostId::parse(&req.host_id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let env = EnvName::parse(&req.env).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let labels = Labels::try_from(
            req.labels
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>(),
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let c = &self.coordinator;
        let token_hash = flotilla_shared::token::hash_secret(&req.token);
        // Unknown tokens are refused before any work (and not audited: anyone
        // who can reach the port could fill the audit log with them).
        if c.store.join_token(&token_hash).map_err(internal)?.is_none() {
            tracing::warn!("join with an unknown token refused");
            return Err(Status::permission_denied(
                "join token is not valid; create one with `flotilla join-token create`",
            ));
        }
        flotilla_shared::secret::register_for_scrubbing(&req.token);
        let (certificate_pem, not_after_ms) =
            c.ca.issue_agent_cert(&req.csr_pem, &host_id)
                .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        let now = now_ms();
        let host = Host {
            host_id: host_id.clone(),
            env,
            labels,
            agent_version: req.agent_version.chars().take(64).collect(),
            joined_at_ms: now,
            last_seen_ms: 0,
            revoked: false,
            cert_not_after_ms: not_after_ms,
        };
        let outcome = c
            .store
            .join_host(&token_hash, &host, now)
            .map_err(internal)?;
        let result = match &outcome {
            JoinOutcome::Joined => Ok(()),
            JoinOutcome::UnknownToken => Err(Status::permission_denied(
                "join token is not valid; create one with `flotilla join-token create`",
            )),
            JoinOutcome::Expired { at_ms } => Err(Status::permission_denied(format!(
                "join token expired at {}; create a new one with `flotilla join-token create`",
                format_ms(*at_ms)
            ))),
            JoinOutcome::AlreadyUsed { by, at_ms } => Err(Status::permission_denied(format!(
                "join token was already used{} at {}; join tokens are single-use, create a new one",
                by.as_ref()
                    .map(|h| format!(" by host {h}"))
                    .unwrap_or_default(),
                format_ms(*at_ms)
            ))),
            JoinOutcome::HostExists => Err(Status::already_exists(format!(
                "host id {host_id} is already registered (host ids are never reused, even after revocation); choose another --host-id"
            ))),
        };
        let audit = AuditEntry {
            at_ms: now,
            actor: format!("agent:{host_id}"),
            action: "join".into(),
            target: host_id.to_string(),
            outcome: match &result {
                Ok(()) => "ok".into(),
                Err(status) => status.message().to_owned(),
            },
        };
        c.store.audit(&audit).map_err(internal)?;
        result?;
        c.store.flush().await.map_err(internal)?;
        tracing::info!(env = %host.env, "host joined");
        Ok(Response::new(pb::JoinResponse {
            certificate_pem,
            ca_pem: c.ca.cert_pem.clone(),
            verification_keys: c
                .verification_keys
                .iter()
                .map(|key| pb::VerificationKey {
                    key_id: flotilla_shared::signing::KeyId::of(key).to_string(),
                    public_key: key.to_bytes().to_vec(),
                })
                .collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc = "renew"))]
    async fn renew(
        &self,
        req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let host_id = self.authenticated_host(&req)?;
        let c = &self.coordinator;
        let (certificate_pem, not_after_ms) =
            c.ca.issue_agent_cert(&req.get_ref().csr_pem, &host_id)
                .map_err(|e| Status::invalid_argument(format!("{e:#}")))?;
        c.store
            .update_host(&host_id, |h| h.cert_not_after_ms = not_after_ms)
            .map_err(internal)?;
        let audit = AuditEntry {
            at_ms: now_ms(),
            actor: format!("agent:{host_id}"),
            action: "renew-certificate".into(),
            target: host_id.to_string(),
            outcome: "ok".into(),
        };
        c.store.audit(&audit).map_err(internal)?;
        c.store.flush().await.map_err(internal)?;
        tracing::info!(%host_id, expires = %format_ms(not_after_ms), "agent certificate renewed");
        Ok(Response::new(pb::RenewResponse { certificate_pem }))
    }

    type SessionStream = SessionStream;

    #[tracing::instrument(skip_all, fields(rpc = "session"))]
    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if self.cancel.is_cancelled() {
            return Err(Status::unavailable("coordinator is shutting down"));
        }
        let host_id = self.authenticated_host(&req)?;
        let c = Arc::clone(&self.coordinator);
        let (session_id, rx) = c.sessions.register(&host_id);
        // A revocation between the check above and the registration would
        // otherwise leave this session alive: check again now that it is visible.
        let env = match c.store.host(&host_id).map_err(internal)? {
            Some(h) if !h.revoked => h.env.to_string(),
            _ => {
                c.sessions.unregister(&host_id, session_id);
                return Err(Status::permission_denied(format!(
                    "host {host_id} has been revoked"
                )));
            }
        };
        c.sessions.metrics().session_started(host_id.as_str(), &env);
        tracing::info!(%host_id, session_id, "agent connected");
        // The current key set first (rotation), then everything the agent has
        // not accepted yet, oldest first.
        c.sessions.send(
            &host_id,
            pb::CoordinatorMessage {
                msg: Some(pb::coordinator_message::Msg::KeyUpdate(
                    c.key_update.clone(),
                )),
            },
        );
        for entry in c.store.outbox(&host_id).map_err(internal)? {
            match c.rollout.outbox_command(&entry) {
                Ok(signed) => {
                    let sent = c.sessions.send(
                        &host_id,
                        pb::CoordinatorMessage {
                            msg: Some(pb::coordinator_message::Msg::Command(signed)),
                        },
                    );
                    if sent {
                        c.sessions.metrics().command_sent();
                    }
                }
                Err(e) => {
                    tracing::error!(command = %entry.command_id, "undecodable outbox entry: {e}")
                }
            }
        }
        let inbound = req.into_inner();
        let cancel = self.cancel.child_token();
        c.tasks.clone().spawn(handle_inbound(
            c,
            host_id,
            env,
            session_id,
            inbound,
            cancel.clone(),
        ));
        // The stream ends when the session's sender is dropped: on reconnect,
        // revocation, or shutdown (`Sessions::clear`).
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Polls `fut` once: its output if it is ready now, else `None` (the future is
/// dropped; `Streaming::message` keeps its state in the stream, so that is safe).
fn poll_once<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

/// Flushes the store, then acks every report up to `up_to`; false if the
/// session is gone or the store failed (then nothing is acked).
async fn flush_and_ack(c: &crate::Coordinator, host_id: &HostId, up_to: u64) -> bool {
    if let Err(e) = c.store.flush().await {
        tracing::error!(%host_id, "cannot flush store: {e}");
        return false;
    }
    let ack = pb::CoordinatorMessage {
        msg: Some(pb::coordinator_message::Msg::Ack(pb::ReportAck { up_to })),
    };
    c.sessions.send(host_id, ack)
}

/// Most reports applied before one flush and one cumulative ack.
const MAX_REPORTS_PER_ACK: usize = 512;

/// Reads one agent's messages until the stream ends or shutdown. Reports are
/// applied in order; whenever no further message is waiting (or after
/// `MAX_REPORTS_PER_ACK`), the store is flushed once and everything applied
/// so far is acknowledged cumulatively, so a burst of log lines costs one
/// fsync, not one per line. Nothing is acked before it is durable.
async fn handle_inbound(
    c: Arc<crate::Coordinator>,
    host_id: HostId,
    env: String,
    session_id: u64,
    mut inbound: Streaming<pb::AgentMessage>,
    cancel: CancellationToken,
) {
    let touch = |version: Option<String>| {
        let now = now_ms();
        if let Err(e) = c.store.update_host(&host_id, |h| {
            h.last_seen_ms = now;
            if let Some(v) = &version {
                h.agent_version.clone_from(v);
            }
        }) {
            tracing::warn!(%host_id, "cannot update last_seen: {e}");
        }
    };
    touch(None);
    let mut unacked: Option<u64> = None;
    let mut batch = 0usize;
    loop {
        let msg = match unacked {
            // Something to ack: take a message only if one is already waiting,
            // otherwise flush and ack first.
            Some(up_to) => match poll_once(inbound.message()) {
                Some(msg) if batch < MAX_REPORTS_PER_ACK => msg,
                ready => {
                    if !flush_and_ack(&c, &host_id, up_to).await {
                        break;
                    }
                    unacked = None;
                    batch = 0;
                    match ready {
                        Some(msg) => msg,
                        None => continue,
                    }
                }
            },
            None => tokio::select! {
                () = cancel.cancelled() => break,
                msg = inbound.message() => msg,
            },
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(status) => {
                tracing::info!(%host_id, "agent stream ended: {}", status.message());
                break;
            }
        };
        match msg.msg {
            Some(pb::agent_message::Msg::Hello(hello)) => {
                touch(Some(hello.agent_version.chars().take(64).collect()));
            }
            Some(pb::agent_message::Msg::Heartbeat(_)) => touch(None),
            Some(pb::agent_message::Msg::Metrics(sample)) => {
                c.sessions.set_host_metrics(&host_id, sample);
            }
            Some(pb::agent_message::Msg::Pong(pong)) => {
                c.rollout.on_pong(&host_id, &pong.command_id);
            }
            Some(pb::agent_message::Msg::Report(report)) => {
                let seq = report.spool_seq;
                match c.rollout.on_report(&host_id, report).await {
                    Ok(()) => {}
                    // A record that cannot be decoded will never apply: skip the
                    // report (acked with the rest) instead of blocking every later one.
                    Err(RolloutError::Store(e @ StoreError::Corrupt { .. })) => {
                        tracing::error!(%host_id, "report {seq} skipped: {e}");
                    }
                    Err(e) => {
                        // Not acked: the agent re-sends it after reconnecting.
                        tracing::error!(%host_id, "cannot apply report {seq}: {e}");
                        break;
                    }
                }
                unacked = Some(seq);
                batch += 1;
            }
            None => {}
        }
    }
    // Reports applied but not acked are re-sent after a reconnect; applying
    // them again is harmless.
    c.sessions.unregister(&host_id, session_id);
    if !c.sessions.is_connected(&host_id) {
        c.sessions.metrics().session_ended(host_id.as_str(), &env);
    }
    touch(None);
    tracing::info!(%host_id, session_id, "agent disconnected");
}
