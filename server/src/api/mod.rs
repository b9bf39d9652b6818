//! `FleetService`: the operator and automation API. Every call authenticates a
//! bearer token (role, stored hashed); every mutating call is audited.
//! Protobuf stops here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::fleet_service_server::FleetService;
use flotilla_shared::time::now_ms;
use flotilla_shared::token::{JoinToken, hash_secret, random_secret};
use flotilla_shared::{AppName, EnvName, HostId, ImageRef};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::Coordinator;
use crate::rollout::{NewDeployment, RolloutError};
use crate::store::{
    ApiToken, AuditEntry, Deployment, DeploymentKind, JoinTokenRecord, Role, StoreError,
};

/// Longest join token lifetime accepted.
const MAX_JOIN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

pub struct Api {
    pub coordinator: Arc<Coordinator>,
    pub cancel: CancellationToken,
    /// Serialises token revocation, so "never revoke the last admin token"
    /// holds under concurrent calls.
    pub token_admin: tokio::sync::Mutex<()>,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    pub token: ApiToken,
}

impl Caller {
    /// Refuses unless the token's scope covers `app` in `env`.
    fn check_scope(&self, app: &AppName, env: &EnvName) -> Result<(), Status> {
        if self.token.covers(app, env) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "token {:?} is scoped to apps [{}] in environments [{}]; {app} in {env} is outside it",
            self.name,
            join(&self.token.apps),
            join(&self.token.envs),
        )))
    }
}

fn join<T: std::fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "all".into();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn internal(err: impl std::fmt::Display) -> Status {
    tracing::error!("internal error: {err}");
    Status::internal("internal error; see the coordinator log")
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        internal(err)
    }
}

impl From<RolloutError> for Status {
    fn from(err: RolloutError) -> Self {
        match err {
            RolloutError::NoHosts(_) | RolloutError::Busy { .. } => {
                Status::failed_precondition(err.to_string())
            }
            RolloutError::NoReleases { .. }
            | RolloutError::NoPreviousRelease { .. }
            | RolloutError::UnknownRelease { .. } => Status::not_found(err.to_string()),
            RolloutError::Store(e) => internal(e),
            RolloutError::Random(e) => internal(e),
        }
    }
}

/// The public id of a token: the start of its hash.
fn token_id(hash: &str) -> String {
    hash.chars().take(12).collect()
}

fn arg<T>(what: &str, result: Result<T, flotilla_shared::NameError>) -> Result<T, Status> {
    result.map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

impl Api {
    /// Checks the bearer token and that its role is at least `need`. `action`
    /// names the call in the audit log when a mutating call is refused.
    fn authorize<T>(&self, req: &Request<T>, need: Role, action: &str) -> Result<Caller, Status> {
        let header = req.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated("missing API token (use --token-file or FLOTILLA_TOKEN)")
        })?;
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| Status::unauthenticated("authorization must be `Bearer <token>`"))?;
        let record = self
            .coordinator
            .store
            .api_token(&hash_secret(token.trim()))?
            .ok_or_else(|| Status::unauthenticated("invalid API token"))?;
        if record.role < need {
            let status = Status::permission_denied(format!(
                "token {:?} has role {}; this needs {}",
                record.name,
                record.role.as_str(),
                need.as_str()
            ));
            // Refused attempts to change something are audited too.
            if need > Role::Viewer {
                let entry = AuditEntry {
                    at_ms: now_ms(),
                    actor: record.name.clone(),
                    action: action.to_owned(),
                    target: String::new(),
                    outcome: format!("{:?}: {}", status.code(), status.message()),
                };
                if let Err(e) = self.coordinator.store.audit(&entry) {
                    tracing::error!("cannot write audit entry: {e}");
                }
            }
            return Err(status);
        }
        Ok(Caller {
            name: record.name.clone(),
            role: record.role,
            token: record,
        })
    }

    fn audit<T>(&self, caller: &Caller, action: &str, target: &str, result: &Result<T, Status>) {
        let entry = AuditEntry {
            at_ms: now_ms(),
            actor: caller.name.clone(),
            action: action.into(),
            target: target.into(),
            outcome: match result {
                Ok(_) => "ok".into(),
                Err(status) => format!("{:?}: {}", status.code(), status.message()),
            },
        };
        if let Err(e) = self.coordinator.store.audit(&entry) {
            tracing::error!("cannot write audit entry: {e}");
        }
    }
}

pub fn deployment_to_proto(d: &Deployment) -> pb::Deployment {
    pb::Deployment {
        id: d.id.clone(),
        app: d.app.to_string(),
        env: d.env.to_string(),
        kind: d.kind.as_str().into(),
        state: d.state.as_str().into(),
        image: d.image.to_string(),
        created_at_ms: d.created_at_ms,
        finished_at_ms: d.finished_at_ms,
        created_by: d.created_by.clone(),
        hosts: d
            .hosts
            .iter()
            .map(|h| pb::HostDeployment {
                host_id: h.host_id.to_string(),
                state: h.state.as_str().into(),
                image: h
                    .image
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                exit_code: h.exit_code,
                error: h.error.clone(),
                command_id: h.command_id.clone().unwrap_or_default(),
            })
            .collect(),
        error: d.error.clone(),
        target_release: d.target_release,
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::DeploymentLogLine, Status>> + Send>>;

#[tonic::async_trait]
impl FleetService for Api {
    async fn list_hosts(
        &self,
        req: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        let caller = self.authorize(&req, Role::Viewer, "read")?;
        let env = req.get_ref().env.clone();
        let c = &self.coordinator;
        let hosts = c
            .store
            .hosts()?
            .into_iter()
            .filter(|h| env.is_empty() || h.env.as_str() == env)
            .filter(|h| caller.token.envs.is_empty() || caller.token.envs.contains(&h.env))
            .map(|h| pb::Host {
                connected: c.sessions.is_connected(&h.host_id),
                host_id: h.host_id.to_string(),
                env: h.env.to_string(),
                labels: h.labels.as_map().clone().into_iter().collect(),
                last_seen_ms: h.last_seen_ms,
                agent_version: h.agent_version,
                revoked: h.revoked,
            })
            .collect();
        Ok(Response::new(pb::ListHostsResponse { hosts }))
    }

    async fn revoke_host(
        &self,
        req: Request<pb::RevokeHostRequest>,
    ) -> Result<Response<pb::RevokeHostResponse>, Status> {
        let caller = self.authorize(&req, Role::Admin, "revoke-host")?;
        let raw = req.into_inner().host_id;
        let result = async {
            let host_id = arg("host id", HostId::parse(&raw))?;
            let c = &self.coordinator;
            c.store
                .update_host(&host_id, |h| h.revoked = true)?
                .ok_or_else(|| Status::not_found(format!("no host {host_id}")))?;
            c.store.flush().await?;
            c.sessions.disconnect(&host_id);
            let failed = c
                .rollout
                .fail_host(&host_id, "the host was revoked while its command was in flight")
                .await?;
            if failed > 0 {
                tracing::warn!(%host_id, failed, "deployments with a command on the revoked host failed");
            }
            tracing::warn!(%host_id, by = %caller.name, "host revoked");
            Ok(pb::RevokeHostResponse {})
        }
        .await;
        self.audit(&caller, "revoke-host", &raw, &result);
        result.map(Response::new)
    }

    async fn create_deployment(
        &self,
        req: Request<pb::CreateDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = self.authorize(&req, Role::Deployer, "deploy")?;
        let r = req.into_inner();
        let target = format!("{} {} {}", r.app, r.env, r.image);
        let result = async {
            let app = arg("app", AppName::parse(&r.app))?;
            let env = arg("environment", EnvName::parse(&r.env))?;
            caller.check_scope(&app, &env)?;
            let new = NewDeployment {
                app,
                env,
                kind: DeploymentKind::Deploy,
                image: arg("image", ImageRef::parse(&r.image))?,
                created_by: caller.name.clone(),
                target_release: 0,
            };
            Ok(self.coordinator.rollout.start(new).await?)
        }
        .await;
        self.audit(&caller, "deploy", &target, &result);
        result.map(|d| Response::new(deployment_to_proto(&d)))
    }

    async fn create_rollback(
        &self,
        req: Request<pb::CreateRollbackRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = self.authorize(&req, Role::Deployer, "rollback")?;
        let r = req.into_inner();
        let target = format!(
            "{} {} to {}",
            r.app,
            r.env,
            if r.to.is_empty() {
                "previous release"
            } else {
                &r.to
            }
        );
        let result = async {
            let app = arg("app", AppName::parse(&r.app))?;
            let env = arg("environment", EnvName::parse(&r.env))?;
            caller.check_scope(&app, &env)?;
            let to = Some(r.to.trim()).filter(|t| !t.is_empty());
            Ok(self
                .coordinator
                .rollout
                .rollback(app, env, to, caller.name.clone())
                .await?)
        }
        .await;
        self.audit(&caller, "rollback", &target, &result);
        result.map(|d| Response::new(deployment_to_proto(&d)))
    }

    async fn get_deployment(
        &self,
        req: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = self.authorize(&req, Role::Viewer, "read")?;
        let id = &req.get_ref().id;
        let d = self
            .coordinator
            .store
            .deployment(id)?
            .ok_or_else(|| Status::not_found(format!("no deployment {id:?}")))?;
        caller.check_scope(&d.app, &d.env)?;
        Ok(Response::new(deployment_to_proto(&d)))
    }

    async fn list_deployments(
        &self,
        req: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        let caller = self.authorize(&req, Role::Viewer, "read")?;
        let r = req.into_inner();
        let limit = if r.limit == 0 { 20 } else { r.limit as usize };
        let deployments = self
            .coordinator
            .store
            .recent_deployments(limit, |d| {
                (r.app.is_empty() || d.app.as_str() == r.app)
                    && (r.env.is_empty() || d.env.as_str() == r.env)
                    && caller.token.covers(&d.app, &d.env)
            })?
            .iter()
            .map(deployment_to_proto)
            .collect();
        Ok(Response::new(pb::ListDeploymentsResponse { deployments }))
    }

    async fn list_releases(
        &self,
        req: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        let caller = self.authorize(&req, Role::Viewer, "read")?;
        let r = req.into_inner();
        let app = arg("app", AppName::parse(&r.app))?;
        let env = arg("environment", EnvName::parse(&r.env))?;
        caller.check_scope(&app, &env)?;
        let releases = self
            .coordinator
            .store
            .releases(&app, &env)?
            .into_iter()
            .map(|r| pb::Release {
                number: r.number,
                app: r.app.to_string(),
                env: r.env.to_string(),
                image: r.image.to_string(),
                deployment_id: r.deployment_id,
                kind: r.kind.as_str().into(),
                created_at_ms: r.created_at_ms,
            })
            .collect();
        Ok(Response::new(pb::ListReleasesResponse { releases }))
    }

    type StreamLogsStream = LogStream;

    async fn stream_logs(
        &self,
        req: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let caller = self.authorize(&req, Role::Viewer, "read")?;
        let r = req.into_inner();
        let c = Arc::clone(&self.coordinator);
        let Some(d) = c.store.deployment(&r.deployment_id)? else {
            return Err(Status::not_found(format!(
                "no deployment {:?}",
                r.deployment_id
            )));
        };
        caller.check_scope(&d.app, &d.env)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let cancel = self.cancel.child_token();
        let tasks = c.tasks.clone();
        tasks.spawn(follow_logs(c, r.deployment_id, r.follow, tx, cancel));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn create_join_token(
        &self,
        req: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        let caller = self.authorize(&req, Role::Admin, "create-join-token")?;
        let ttl = match req.get_ref().ttl_seconds {
            0 => Duration::from_secs(3600),
            s => Duration::from_secs(s),
        };
        let result = async {
            if ttl > MAX_JOIN_TTL {
                return Err(Status::invalid_argument(
                    "join token ttl may be at most 7 days",
                ));
            }
            let secret = random_secret().map_err(internal)?;
            let expires_at_ms =
                now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
            self.coordinator.store.put_join_token(
                &hash_secret(&secret),
                &JoinTokenRecord {
                    expires_at_ms,
                    created_by: caller.name.clone(),
                    used_by: None,
                    used_at_ms: 0,
                },
            )?;
            self.coordinator.store.flush().await?;
            let token = JoinToken {
                secret,
                ca_fingerprint: self.coordinator.ca.fingerprint.clone(),
            };
            Ok(pb::CreateJoinTokenResponse {
                token: token.to_string(),
                expires_at_ms,
            })
        }
        .await;
        self.audit(
            &caller,
            "create-join-token",
            &format!("ttl {}s", ttl.as_secs()),
            &result,
        );
        result.map(Response::new)
    }

    async fn create_api_token(
        &self,
        req: Request<pb::CreateApiTokenRequest>,
    ) -> Result<Response<pb::CreateApiTokenResponse>, Status> {
        let caller = self.authorize(&req, Role::Admin, "create-api-token")?;
        let r = req.into_inner();
        let result = async {
            let role = Role::parse(&r.role).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "unknown role {:?}; use admin, deployer or viewer",
                    r.role
                ))
            })?;
            let name = if r.name.is_empty() {
                format!("{}-token", role.as_str())
            } else {
                r.name.clone()
            };
            if name.len() > 64 || name.chars().any(char::is_control) {
                return Err(Status::invalid_argument(
                    "token name must be at most 64 printable characters",
                ));
            }
            let apps = r
                .apps
                .iter()
                .map(|a| arg("scope app", AppName::parse(a)))
                .collect::<Result<Vec<_>, _>>()?;
            let envs = r
                .envs
                .iter()
                .map(|e| arg("scope environment", EnvName::parse(e)))
                .collect::<Result<Vec<_>, _>>()?;
            if role == Role::Admin && (!apps.is_empty() || !envs.is_empty()) {
                return Err(Status::invalid_argument(
                    "admin tokens cannot be scoped (an admin can create tokens); scope deployer or viewer tokens",
                ));
            }
            let secret = format!("flt_{}", random_secret().map_err(internal)?);
            self.coordinator.store.put_api_token(
                &hash_secret(&secret),
                &ApiToken {
                    name,
                    role,
                    created_at_ms: now_ms(),
                    created_by: caller.name.clone(),
                    apps,
                    envs,
                },
            )?;
            self.coordinator.store.flush().await?;
            Ok(pb::CreateApiTokenResponse { token: secret })
        }
        .await;
        self.audit(
            &caller,
            "create-api-token",
            &format!(
                "role {} name {:?} apps {:?} envs {:?}",
                r.role, r.name, r.apps, r.envs
            ),
            &result,
        );
        result.map(Response::new)
    }

    async fn list_audit(
        &self,
        req: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        self.authorize(&req, Role::Admin, "read-audit")?;
        let limit = match req.get_ref().limit {
            0 => 100,
            n => n as usize,
        };
        let entries = self
            .coordinator
            .store
            .audit_log(limit)?
            .into_iter()
            .map(|e| pb::AuditEntry {
                at_ms: e.at_ms,
                actor: e.actor,
                action: e.action,
                target: e.target,
                outcome: e.outcome,
            })
            .collect();
        Ok(Response::new(pb::ListAuditResponse { entries }))
    }

    async fn list_api_tokens(
        &self,
        req: Request<pb::ListApiTokensRequest>,
    ) -> Result<Response<pb::ListApiTokensResponse>, Status> {
        self.authorize(&req, Role::Admin, "read-tokens")?;
        let tokens = self
            .coordinator
            .store
            .api_tokens()?
            .into_iter()
            .map(|(hash, t)| pb::ApiToken {
                id: token_id(&hash),
                name: t.name,
                role: t.role.as_str().into(),
                apps: t.apps.iter().map(ToString::to_string).collect(),
                envs: t.envs.iter().map(ToString::to_string).collect(),
                created_at_ms: t.created_at_ms,
                created_by: t.created_by,
            })
            .collect();
        Ok(Response::new(pb::ListApiTokensResponse { tokens }))
    }

    async fn revoke_api_token(
        &self,
        req: Request<pb::RevokeApiTokenRequest>,
    ) -> Result<Response<pb::RevokeApiTokenResponse>, Status> {
        let caller = self.authorize(&req, Role::Admin, "revoke-api-token")?;
        let id = req.into_inner().id;
        let result = async {
            let _guard = self.token_admin.lock().await;
            let store = &self.coordinator.store;
            let tokens = store.api_tokens()?;
            let matching: Vec<_> = tokens
                .iter()
                .filter(|(hash, _)| !id.is_empty() && token_id(hash) == id)
                .collect();
            let [(hash, token)] = matching.as_slice() else {
                return Err(Status::not_found(format!(
                    "no API token with id {id:?} (see `flotilla token list`)"
                )));
            };
            let admins = tokens.iter().filter(|(_, t)| t.role == Role::Admin).count();
            if token.role == Role::Admin && admins == 1 {
                return Err(Status::failed_precondition(
                    "this is the last admin token; create another admin token first",
                ));
            }
            store.remove_api_token(hash)?;
            store.flush().await?;
            tracing::warn!(token = %id, name = %token.name, by = %caller.name, "API token revoked");
            Ok(pb::RevokeApiTokenResponse {})
        }
        .await;
        self.audit(&caller, "revoke-api-token", &id, &result);
        result.map(Response::new)
    }
}

/// Streams a deployment's log lines; with `follow`, until it is final and all
/// lines are sent, the client goes away, or shutdown.
async fn follow_logs(
    c: Arc<Coordinator>,
    deployment_id: String,
    follow: bool,
    tx: tokio::sync::mpsc::Sender<Result<pb::DeploymentLogLine, Status>>,
    cancel: CancellationToken,
) {
    let mut changes = c.rollout.subscribe();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        // Read the state before the lines, so a final state seen here means
        // every line written before it is in the scan below.
        changes.borrow_and_update();
        let finished = match c.store.deployment(&deployment_id) {
            Ok(Some(d)) => d.state.is_final(),
            Ok(None) => true,
            Err(e) => {
                let _ = tx.send(Err(internal(e))).await;
                return;
            }
        };
        loop {
            let (lines, next) = match c.store.logs_after(&deployment_id, cursor.as_deref(), 512) {
                Ok(page) => page,
                Err(e) => {
                    let _ = tx.send(Err(internal(e))).await;
                    return;
                }
            };
            let n = lines.len();
            cursor = next;
            for line in lines {
                let msg = pb::DeploymentLogLine {
                    host_id: line.host_id.to_string(),
                    seq: line.seq,
                    stream: line.stream,
                    line: line.line,
                    at_ms: line.at_ms,
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return; // client went away
                }
            }
            if n < 512 {
                break;
            }
        }
        if !follow || finished {
            return;
        }
        tokio::select! {
                    () = cancel.cancelled() => {
                        // Tell the client to resume after the restart, not that the log ended.
        let _ = tx.try_send(Err(Status::unavailable("coordinator is shutting down")));
                        return;
                    }
                    () = tx.closed() => return,
                    res = changes.changed() => if res.is_err() { return },
                }
    }
}
