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

mod apps;
mod config;
use crate::rollout::{NewDeployment, RolloutError};
use crate::store::{
    ApiToken, AppSettings, AuditEntry, BatchSize, Deployment, DeploymentKind, Event,
    JoinTokenRecord, Role, StoreError, Strategy,
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
            RolloutError::NoHosts(_)
            | RolloutError::NoMatchingHosts { .. }
            | RolloutError::Busy { .. }
            | RolloutError::WrongState { .. } => Status::failed_precondition(err.to_string()),
            RolloutError::NotFound(_) => Status::not_found(err.to_string()),
            RolloutError::NoReleases { .. }
            | RolloutError::NoPreviousRelease { .. }
            | RolloutError::UnknownRelease { .. } => Status::not_found(err.to_string()),
            RolloutError::Store(e) => internal(e),
            RolloutError::Random(e) => internal(e),
            RolloutError::NoKeyring => Status::failed_precondition(err.to_string()),
            RolloutError::Seal(e) => internal(e),
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
        // A valid token is a secret this process now knows: never in a Sentry event.
        flotilla_shared::secret::register_for_scrubbing(token.trim());
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
    let image = |i: &Option<ImageRef>| i.as_ref().map(ToString::to_string).unwrap_or_default();
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
                image: image(&h.image),
                exit_code: h.exit_code,
                error: h.error.clone(),
                command_id: h.command_id.clone().unwrap_or_default(),
                batch: h.batch,
                image_before: image(&h.image_before),
                started_at_ms: h.started_at_ms,
                finished_at_ms: h.finished_at_ms,
                rollback_command_id: h.rollback_command_id.clone().unwrap_or_default(),
                changes: h.changes.clone(),
            })
            .collect(),
        error: d.error.clone(),
        target_release: d.target_release,
        strategy: Some(strategy_to_proto(&d.strategy)),
        current_batch: d.current_batch,
        batches: d.batches,
        resume_at_ms: d.resume_at_ms,
        failures: d.failures,
        release: d.release,
        gates: d
            .gates
            .iter()
            .map(|g| pb::GateDecision {
                gate: g.gate.clone(),
                allowed: g.allowed,
                source: g.source.clone(),
                reason: g.reason.clone(),
                at_ms: g.at_ms,
                batch: g.batch,
            })
            .collect(),
    }
}

fn freeze_to_proto(f: &crate::gates::Freeze) -> pb::Freeze {
    let (from_ms, until_ms, weekly) = match &f.window {
        crate::gates::Window::Once { from_ms, until_ms } => (*from_ms, *until_ms, String::new()),
        crate::gates::Window::Weekly(w) => (0, 0, w.to_string()),
    };
    pb::Freeze {
        id: f.id.clone(),
        env: f.env.to_string(),
        from_ms,
        until_ms,
        weekly,
        reason: f.reason.clone(),
        created_by: f.created_by.clone(),
        created_at_ms: f.created_at_ms,
    }
}

fn strategy_to_proto(s: &Strategy) -> pb::Strategy {
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    pb::Strategy {
        batch: s.batch.to_string(),
        canary: s.canary,
        canary_manual: s.canary_manual,
        pause_ms: s.pause_ms,
        max_failures: s.max_failures,
        hosts: s.hosts.clone().into_iter().collect(),
        auto_rollback: Some(s.auto_rollback),
        health: s.health.as_ref().map(|h| pb::HealthGate {
            path: h.path.clone(),
            url_template: flotilla_shared::health::redact_url(&h.url_template),
            expect: h.expect.to_string(),
            healthy_deadline_ms: ms(h.deadline),
            interval_ms: ms(h.interval),
            min_healthy_ms: ms(h.min_healthy),
            timeout_ms: ms(h.timeout),
        }),
    }
}

/// Longest pause between batches accepted.
const MAX_PAUSE: Duration = Duration::from_secs(24 * 3600);

impl Api {
    /// Checks a requested strategy; the health gate's URL template defaults to
    /// the app's `health_url` setting.
    fn strategy(
        &self,
        app: &AppName,
        env: &EnvName,
        p: Option<pb::Strategy>,
    ) -> Result<Strategy, Status> {
        let p = p.unwrap_or_default();
        let batch = BatchSize::parse(&p.batch).ok_or_else(|| {
            Status::invalid_argument(format!(
                "batch {:?}: give a host count (3) or a percentage (25%) from 1 to 100",
                p.batch
            ))
        })?;
        if Duration::from_millis(p.pause_ms) > MAX_PAUSE {
            return Err(Status::invalid_argument("pause may be at most 24h"));
        }
        let pairs: Vec<String> = p.hosts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let hosts = arg(
            "host selector",
            flotilla_shared::Labels::from_pairs(pairs.iter().map(String::as_str)),
        )?
        .as_map()
        .clone();
        let health = match p.health {
            Some(h) if !h.path.is_empty() || !h.url_template.is_empty() => {
                let template = if h.url_template.is_empty() {
                    let configured = self.coordinator.store.app_settings(app, env)?.health_url;
                    if configured.is_empty() {
                        return Err(Status::failed_precondition(format!(
                            "no health-check URL for {app} in {env}: set one with `flotilla app health-url {app} --env {env} 'http://127.0.0.1:5000'` or pass --health-url"
                        )));
                    }
                    configured
                } else {
                    h.url_template
                };
                Some(arg(
                    "health check",
                    flotilla_shared::health::HealthCheck::new(
                        &template,
                        &h.path,
                        &h.expect,
                        Duration::from_millis(h.healthy_deadline_ms),
                        Duration::from_millis(h.interval_ms),
                        Duration::from_millis(h.min_healthy_ms),
                        Duration::from_millis(h.timeout_ms),
                    ),
                )?)
            }
            _ => None,
        };
        Ok(Strategy {
            batch,
            canary: p.canary,
            canary_manual: p.canary_manual,
            pause_ms: p.pause_ms,
            max_failures: p.max_failures,
            hosts,
            auto_rollback: p.auto_rollback.unwrap_or(true),
            health,
        })
    }

    /// Loads a deployment the caller may act on.
    fn scoped_deployment(&self, caller: &Caller, id: &str) -> Result<Deployment, Status> {
        let d = self
            .coordinator
            .store
            .deployment(id)?
            .ok_or_else(|| Status::not_found(format!("no deployment {id:?}")))?;
        caller.check_scope(&d.app, &d.env)?;
        Ok(d)
    }
}

fn event_to_proto(deployment_id: &str, e: Event) -> pb::DeploymentEvent {
    pb::DeploymentEvent {
        seq: e.seq,
        at_ms: e.at_ms,
        deployment_id: deployment_id.to_owned(),
        kind: e.kind,
        host_id: e.host_id.map(|h| h.to_string()).unwrap_or_default(),
        batch: e.batch,
        state: e.state,
        message: e.message,
    }
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::DeploymentLogLine, Status>> + Send>>;
type EventStream = Pin<Box<dyn Stream<Item = Result<pb::DeploymentEvent, Status>> + Send>>;

#[tonic::async_trait]
impl FleetService for Api {
    async fn doctor(
        &self,
        req: Request<pb::DoctorRequest>,
    ) -> Result<Response<pb::DoctorResponse>, Status> {
        let caller = self.authorize(&req, Role::Viewer, "read")?;
        let r = req.into_inner();
        let env = if r.env.is_empty() {
            None
        } else {
            Some(arg("environment", EnvName::parse(&r.env))?)
        };
        let days = if r.cert_days == 0 {
            14
        } else {
            r.cert_days.min(3650)
        };
        let window = std::time::Duration::from_secs(u64::from(days) * 86_400);
        let scope = &caller.token.envs;
        let visible = |e: &EnvName| {
            env.as_ref().is_none_or(|want| want == e) && (scope.is_empty() || scope.contains(e))
        };
        let answer = crate::doctor::run(&self.coordinator, visible, window).await?;
        Ok(Response::new(answer))
    }

    async fn apply_app(
        &self,
        req: Request<pb::ApplyAppRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        apps::apply_app(self, req).await
    }

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
                metrics: c.sessions.host_metrics(&h.host_id),
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
            let host = c
                .store
                .update_host(&host_id, |h| h.revoked = true)?
                .ok_or_else(|| Status::not_found(format!("no host {host_id}")))?;
            c.store.flush().await?;
            c.sessions.disconnect(&host_id);
            c.sessions
                .metrics()
                .host_removed(host_id.as_str(), host.env.as_str());
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
        let target = format!(
            "{} {} {}{}",
            r.app,
            r.env,
            r.image,
            if r.override_freeze {
                " (override-freeze)"
            } else {
                ""
            }
        );
        let result = async {
            let app = arg("app", AppName::parse(&r.app))?;
            let env = arg("environment", EnvName::parse(&r.env))?;
            caller.check_scope(&app, &env)?;
            // The app spec's required config keys (recorded by `app apply`) must all have a value.
            if let Some(refusal) =
                crate::appconfig::deploy_refusal(&self.coordinator.store, &app, &env)?
            {
                return Err(Status::failed_precondition(refusal));
            }
            let strategy = self.strategy(&app, &env, r.strategy)?;
            if r.override_freeze && caller.role < Role::Admin {
                return Err(Status::permission_denied(format!(
                    "token {:?} has role {}; overriding a freeze window needs an admin token",
                    caller.name,
                    caller.role.as_str()
                )));
            }
            let new = NewDeployment {
                app,
                env,
                kind: DeploymentKind::Deploy,
                image: arg("image", ImageRef::parse(&r.image))?,
                created_by: caller.name.clone(),
                target_release: 0,
                strategy,
                queue: r.queue,
                override_freeze: r.override_freeze,
                team: caller.token.team.clone(),
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
        let uses = req.get_ref().uses.max(1);
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
                    max_uses: uses,
                    uses: 0,
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
            &format!("ttl {}s uses {uses}", ttl.as_secs()),
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
            let team = match r.team.trim() {
                "" => None,
                t if t.len() <= 63
                    && t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) =>
                {
                    Some(t.to_owned())
                }
                t => {
                    return Err(Status::invalid_argument(format!(
                        "team {t:?}: 1 to 63 of A-Z a-z 0-9 . _ -"
                    )));
                }
            };
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
                    team,
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
                team: t.team.unwrap_or_default(),
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

    type WatchDeploymentStream = EventStream;

    async fn watch_deployment(
        &self,
        req: Request<pb::WatchDeploymentRequest>,
    ) -> Result<Response<Self::WatchDeploymentStream>, Status> {
        let caller = self.authorize(&req, Role::Viewer, "read")?;
        let r = req.into_inner();
        self.scoped_deployment(&caller, &r.id)?;
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let c = Arc::clone(&self.coordinator);
        let cancel = self.cancel.child_token();
        c.tasks
            .clone()
            .spawn(follow_events(c, r.id, r.after_seq, tx, cancel));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn cancel_deployment(
        &self,
        req: Request<pb::CancelDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = self.authorize(&req, Role::Deployer, "cancel")?;
        let r = req.into_inner();
        let target = format!(
            "{}{}{}",
            r.id,
            if r.rollback { " with rollback" } else { "" },
            if r.force { " (force)" } else { "" }
        );
        let result = async {
            self.scoped_deployment(&caller, &r.id)?;
            Ok(self
                .coordinator
                .rollout
                .cancel(&r.id, caller.name.clone(), r.rollback, r.force)
                .await?)
        }
        .await;
        self.audit(&caller, "cancel", &target, &result);
        result.map(|d| Response::new(deployment_to_proto(&d)))
    }

    async fn promote_deployment(
        &self,
        req: Request<pb::PromoteDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        let caller = self.authorize(&req, Role::Deployer, "promote")?;
        let id = req.into_inner().id;
        let result = async {
            self.scoped_deployment(&caller, &id)?;
            Ok(self
                .coordinator
                .rollout
                .promote(&id, caller.name.clone())
                .await?)
        }
        .await;
        self.audit(&caller, "promote", &id, &result);
        result.map(|d| Response::new(deployment_to_proto(&d)))
    }

    async fn ping(
        &self,
        req: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        let caller = self.authorize(&req, Role::Deployer, "ping")?;
        let r = req.into_inner();
        let env = arg("environment", EnvName::parse(&r.env))?;
        if !caller.token.envs.is_empty() && !caller.token.envs.contains(&env) {
            return Err(Status::permission_denied(format!(
                "token {:?} is scoped to environments [{}]",
                caller.name,
                join(&caller.token.envs)
            )));
        }
        let pairs: Vec<String> = r.hosts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let selector = Strategy {
            hosts: arg(
                "host selector",
                flotilla_shared::Labels::from_pairs(pairs.iter().map(String::as_str)),
            )?
            .as_map()
            .clone(),
            ..Strategy::default()
        };
        let timeout = match r.timeout_ms {
            0 => Duration::from_secs(10),
            ms => Duration::from_millis(ms).min(Duration::from_secs(300)),
        };
        let (results, total) = self
            .coordinator
            .rollout
            .ping(&env, &selector, timeout)
            .await?;
        let micros = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Ok(Response::new(pb::PingResponse {
            hosts: results
                .into_iter()
                .map(|p| pb::HostPing {
                    host_id: p.host_id.to_string(),
                    ok: p.rtt.is_some(),
                    rtt_us: p.rtt.map_or(0, micros),
                    error: p.error,
                })
                .collect(),
            total_us: micros(total),
        }))
    }

    async fn set_app_settings(
        &self,
        req: Request<pb::SetAppSettingsRequest>,
    ) -> Result<Response<pb::AppSettings>, Status> {
        let caller = self.authorize(&req, Role::Deployer, "set-app-settings")?;
        let r = req.into_inner();
        let target = format!(
            "{} {} health_url={}",
            r.app,
            r.env,
            flotilla_shared::health::redact_url(&r.health_url)
        );
        let result = async {
            let app = arg("app", AppName::parse(&r.app))?;
            let env = arg("environment", EnvName::parse(&r.env))?;
            caller.check_scope(&app, &env)?;
            let health_url = r.health_url.trim().trim_end_matches('/').to_owned();
            if !health_url.is_empty() {
                arg(
                    "health URL",
                    flotilla_shared::health::check_template(&health_url),
                )?;
            }
            let store = &self.coordinator.store;
            store.put_app_settings(
                &app,
                &env,
                &AppSettings {
                    health_url: health_url.clone(),
                },
            )?;
            store.flush().await?;
            Ok(pb::AppSettings {
                app: app.to_string(),
                env: env.to_string(),
                health_url: flotilla_shared::health::redact_url(&health_url),
            })
        }
        .await;
        self.audit(&caller, "set-app-settings", &target, &result);
        result.map(Response::new)
    }

    async fn get_app_settings(
        &self,
        req: Request<pb::GetAppSettingsRequest>,
    ) -> Result<Response<pb::AppSettings>, Status> {
        let caller = self.authorize(&req, Role::Viewer, "read")?;
        let r = req.into_inner();
        let app = arg("app", AppName::parse(&r.app))?;
        let env = arg("environment", EnvName::parse(&r.env))?;
        caller.check_scope(&app, &env)?;
        let settings = self.coordinator.store.app_settings(&app, &env)?;
        Ok(Response::new(pb::AppSettings {
            app: app.to_string(),
            env: env.to_string(),
            // Credentials in a template are write-only.
            health_url: flotilla_shared::health::redact_url(&settings.health_url),
        }))
    }

    async fn set_config(
        &self,
        req: Request<pb::SetConfigRequest>,
    ) -> Result<Response<pb::SetConfigResponse>, Status> {
        self.config_set(req).await
    }

    async fn unset_config(
        &self,
        req: Request<pb::UnsetConfigRequest>,
    ) -> Result<Response<pb::UnsetConfigResponse>, Status> {
        self.config_unset(req).await
    }

    async fn list_config(
        &self,
        req: Request<pb::ListConfigRequest>,
    ) -> Result<Response<pb::ListConfigResponse>, Status> {
        self.config_list(req).await
    }

    async fn get_config(
        &self,
        req: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::ConfigEntry>, Status> {
        self.config_get(req).await
    }

    async fn reseal_config(
        &self,
        req: Request<pb::ResealConfigRequest>,
    ) -> Result<Response<pb::ResealConfigResponse>, Status> {
        self.config_reseal(req).await
    }

    async fn create_freeze(
        &self,
        req: Request<pb::CreateFreezeRequest>,
    ) -> Result<Response<pb::Freeze>, Status> {
        let caller = self.authorize(&req, Role::Admin, "create-freeze")?;
        let r = req.into_inner();
        let target = format!(
            "{} {} reason {:?}",
            r.env,
            if r.weekly.is_empty() {
                format!("{}..{}", r.from_ms, r.until_ms)
            } else {
                format!("weekly {}", r.weekly)
            },
            r.reason
        );
        let result = async {
            let env = arg("environment", EnvName::parse(&r.env))?;
            let window = if r.weekly.trim().is_empty() {
                crate::gates::Window::Once {
                    from_ms: r.from_ms,
                    until_ms: r.until_ms,
                }
            } else {
                crate::gates::Window::Weekly(
                    crate::gates::WeeklyWindow::parse(&r.weekly)
                        .map_err(|e| Status::invalid_argument(format!("weekly window: {e}")))?,
                )
            };
            let freeze =
                crate::gates::Freeze::new(env, window, r.reason.trim(), &caller.name, now_ms())
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let store = &self.coordinator.store;
            store.put_freeze(&freeze)?;
            store.flush().await?;
            tracing::warn!(freeze = %freeze.id, env = %freeze.env, by = %caller.name, "freeze window created");
            Ok(freeze_to_proto(&freeze))
        }
        .await;
        self.audit(&caller, "create-freeze", &target, &result);
        result.map(Response::new)
    }

    async fn list_freezes(
        &self,
        req: Request<pb::ListFreezesRequest>,
    ) -> Result<Response<pb::ListFreezesResponse>, Status> {
        let caller = self.authorize(&req, Role::Viewer, "read")?;
        let env = &req.get_ref().env;
        let env = if env.is_empty() {
            None
        } else {
            Some(arg("environment", EnvName::parse(env))?)
        };
        let freezes = self
            .coordinator
            .store
            .freezes(env.as_ref())?
            .iter()
            .filter(|f| caller.token.envs.is_empty() || caller.token.envs.contains(&f.env))
            .map(freeze_to_proto)
            .collect();
        Ok(Response::new(pb::ListFreezesResponse { freezes }))
    }

    async fn delete_freeze(
        &self,
        req: Request<pb::DeleteFreezeRequest>,
    ) -> Result<Response<pb::DeleteFreezeResponse>, Status> {
        let caller = self.authorize(&req, Role::Admin, "delete-freeze")?;
        let id = req.into_inner().id;
        let result = async {
            let store = &self.coordinator.store;
            if !store.delete_freeze(&id)? {
                return Err(Status::not_found(format!(
                    "no freeze window {id:?} (see `flotilla freeze list`)"
                )));
            }
            store.flush().await?;
            Ok(pb::DeleteFreezeResponse {})
        }
        .await;
        self.audit(&caller, "delete-freeze", &id, &result);
        result.map(Response::new)
    }

    async fn test_notification(
        &self,
        req: Request<pb::TestNotificationRequest>,
    ) -> Result<Response<pb::TestNotificationResponse>, Status> {
        let caller = self.authorize(&req, Role::Admin, "notify-test")?;
        let channel = req.into_inner().channel;
        let result = async {
            let Some(notifier) = &self.coordinator.notifier else {
                return Err(Status::failed_precondition(
                    "no notification channels are configured ([notifications] in server.toml)",
                ));
            };
            Ok(match notifier.test(&channel).await {
                Ok(detail) => pb::TestNotificationResponse {
                    delivered: true,
                    detail,
                },
                Err(e @ crate::notify::NotifyError::UnknownChannel(_)) => {
                    return Err(Status::not_found(e.to_string()));
                }
                Err(e) => pb::TestNotificationResponse {
                    delivered: false,
                    detail: e.to_string(),
                },
            })
        }
        .await;
        self.audit(&caller, "notify-test", &channel, &result);
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
    let mut cursor: Option<Vec<u8>> = None;
    let store = c.store.clone();
    let id = deployment_id.clone();
    let page = move || {
        let (lines, next) = store.logs_after(&id, cursor.as_deref(), 512)?;
        cursor = next;
        Ok(lines
            .into_iter()
            .map(|line| pb::DeploymentLogLine {
                host_id: line.host_id.to_string(),
                seq: line.seq,
                stream: line.stream,
                line: line.line,
                at_ms: line.at_ms,
            })
            .collect())
    };
    follow_deployment(&c, &deployment_id, follow, 512, page, tx, cancel).await;
}

/// Streams a deployment's events after `after_seq`, until the final event is
/// sent, the client goes away, or shutdown.
async fn follow_events(
    c: Arc<Coordinator>,
    deployment_id: String,
    mut after_seq: u64,
    tx: tokio::sync::mpsc::Sender<Result<pb::DeploymentEvent, Status>>,
    cancel: CancellationToken,
) {
    let store = c.store.clone();
    let id = deployment_id.clone();
    let page = move || {
        let events = store.events_after(&id, after_seq, 256)?;
        if let Some(last) = events.last() {
            after_seq = last.seq;
        }
        Ok(events.into_iter().map(|e| event_to_proto(&id, e)).collect())
    };
    follow_deployment(&c, &deployment_id, true, 256, page, tx, cancel).await;
}

/// Sends what `page` yields (pages of at most `page_size`), and with `follow`
/// waits for changes and sends more, until the deployment is final and
/// everything is sent, the client goes away, or shutdown. Items are sent only
/// once durable: a crash cannot take back what a client saw (a log line would
/// be stored again elsewhere in the order, an event number reused).
async fn follow_deployment<T>(
    c: &Coordinator,
    deployment_id: &str,
    follow: bool,
    page_size: usize,
    mut page: impl FnMut() -> Result<Vec<T>, StoreError>,
    tx: tokio::sync::mpsc::Sender<Result<T, Status>>,
    cancel: CancellationToken,
) {
    let mut changes = c.rollout.subscribe();
    loop {
        // Read the state before the items, so a final state seen here means
        // every item written before it is in the pages below.
        changes.borrow_and_update();
        let finished = match c.store.deployment(deployment_id) {
            Ok(Some(d)) => d.state.is_final(),
            Ok(None) => true,
            Err(e) => {
                let _ = tx.send(Err(internal(e))).await;
                return;
            }
        };
        loop {
            let items = match page() {
                Ok(items) => items,
                Err(e) => {
                    let _ = tx.send(Err(internal(e))).await;
                    return;
                }
            };
            let n = items.len();
            if n > 0
                && let Err(e) = c.store.flush().await
            {
                let _ = tx.send(Err(internal(e))).await;
                return;
            }
            for item in items {
                if tx.send(Ok(item)).await.is_err() {
                    return; // client went away
                }
            }
            if n < page_size {
                break;
            }
        }
        if !follow || finished {
            return;
        }
        tokio::select! {
            () = cancel.cancelled() => {
                // Tell the client to resume after the restart, not that the stream ended.
                let _ = tx.try_send(Err(Status::unavailable("coordinator is shutting down")));
                return;
            }
            () = tx.closed() => return,
            res = changes.changed() => if res.is_err() { return },
        }
    }
}
