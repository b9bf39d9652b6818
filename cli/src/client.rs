//! A thin, authenticated client of `FleetService`, with error messages for
//! people. Streams (logs, deployment events) resume through coordinator
//! restarts; rendering them is `output`'s and `wait`'s job, not this module's.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::fleet_service_client::FleetServiceClient;
use tonic::transport::Channel;

use crate::Output;
use crate::output;

/// How many 1-second retries a broken connection to the coordinator gets.
pub const RECONNECT_ATTEMPTS: usize = 30;
/// Pause between two reconnection attempts.
pub const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Cheap to clone: clones share one HTTP/2 connection.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: FleetServiceClient<Channel>,
    auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

/// A call the coordinator answered with an error: the message a person needs,
/// and the gRPC code, from which `exit` derives the exit code.
#[derive(Debug)]
pub struct ApiError {
    pub code: tonic::Code,
    message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// Turns a gRPC status into the message a person needs.
pub fn explain(status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let msg = status.message();
    let message = match status.code() {
        Code::Unauthenticated => format!("authentication failed: {msg}"),
        Code::PermissionDenied => format!("permission denied: {msg}"),
        Code::Unavailable => format!("coordinator unavailable: {msg}"),
        Code::FailedPrecondition => format!("refused: {msg}"),
        Code::Unimplemented => {
            format!(
                "the coordinator does not support this call (is it older than this CLI?): {msg}"
            )
        }
        _ => msg.to_owned(),
    };
    ApiError {
        code: status.code(),
        message,
    }
    .into()
}

/// Worth retrying after a pause: the coordinator is restarting or the
/// connection broke, as opposed to an answer (not found, denied, invalid).
pub fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

impl Client {
    pub async fn connect(server: &str, ca: &Path, token: String) -> anyhow::Result<Self> {
        let ca_pem =
            std::fs::read(ca).with_context(|| format!("read CA certificate {}", ca.display()))?;
        let (_, name) = flotilla_shared::tls::split_server_url(server)?;
        let channel = Channel::from_shared(server.to_owned())
            .context("server URL")?
            .tls_config(flotilla_shared::tls::client_config(&ca_pem, &name, None))
            .context("TLS configuration")?
            .connect_timeout(Duration::from_secs(10))
            // A coordinator that froze or got cut off is noticed (and the
            // stream resumed) within ~30 s instead of waiting forever.
            .http2_keep_alive_interval(Duration::from_secs(15))
            .keep_alive_timeout(Duration::from_secs(15))
            .keep_alive_while_idle(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {server}"))?;
        let auth = format!("Bearer {token}")
            .parse()
            .context("the API token contains characters that cannot be sent")?;
        Ok(Self {
            inner: FleetServiceClient::new(channel),
            auth,
        })
    }

    pub(crate) fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut()
            .insert("authorization", self.auth.clone());
        req
    }

    pub async fn hosts(&mut self, env: Option<String>) -> anyhow::Result<Vec<pb::Host>> {
        let req = self.req(pb::ListHostsRequest {
            env: env.unwrap_or_default(),
        });
        Ok(self
            .inner
            .list_hosts(req)
            .await
            .map_err(explain)?
            .into_inner()
            .hosts)
    }

    pub async fn revoke(&mut self, host_id: &str) -> anyhow::Result<()> {
        let req = self.req(pb::RevokeHostRequest {
            host_id: host_id.into(),
        });
        self.inner.revoke_host(req).await.map_err(explain)?;
        Ok(())
    }

    pub async fn deploy(
        &mut self,
        app: &str,
        env: &str,
        image: &str,
        strategy: pb::Strategy,
        queue: bool,
        override_freeze: bool,
    ) -> anyhow::Result<pb::Deployment> {
        let req = self.req(pb::CreateDeploymentRequest {
            app: app.into(),
            env: env.into(),
            image: image.into(),
            strategy: Some(strategy),
            queue,
            override_freeze,
        });
        Ok(self
            .inner
            .create_deployment(req)
            .await
            .map_err(explain)?
            .into_inner())
    }

    pub async fn rollback(
        &mut self,
        app: &str,
        env: &str,
        to: Option<&str>,
    ) -> anyhow::Result<pb::Deployment> {
        let req = self.req(pb::CreateRollbackRequest {
            app: app.into(),
            env: env.into(),
            to: to.unwrap_or_default().into(),
        });
        Ok(self
            .inner
            .create_rollback(req)
            .await
            .map_err(explain)?
            .into_inner())
    }

    pub async fn cancel(
        &mut self,
        id: &str,
        rollback: bool,
        force: bool,
    ) -> anyhow::Result<pb::Deployment> {
        let req = self.req(pb::CancelDeploymentRequest {
            id: id.into(),
            rollback,
            force,
        });
        Ok(self
            .inner
            .cancel_deployment(req)
            .await
            .map_err(explain)?
            .into_inner())
    }

    pub async fn promote(&mut self, id: &str) -> anyhow::Result<pb::Deployment> {
        let req = self.req(pb::PromoteDeploymentRequest { id: id.into() });
        Ok(self
            .inner
            .promote_deployment(req)
            .await
            .map_err(explain)?
            .into_inner())
    }

    pub async fn doctor(
        &mut self,
        env: Option<String>,
        cert_days: u32,
    ) -> anyhow::Result<pb::DoctorResponse> {
        let req = self.req(pb::DoctorRequest {
            env: env.unwrap_or_default(),
            cert_days,
        });
        Ok(self.inner.doctor(req).await.map_err(explain)?.into_inner())
    }

    pub async fn ping(
        &mut self,
        env: &str,
        hosts: BTreeMap<String, String>,
        timeout: Duration,
    ) -> anyhow::Result<pb::PingResponse> {
        let req = self.req(pb::PingRequest {
            env: env.into(),
            hosts: hosts.into_iter().collect(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        });
        Ok(self.inner.ping(req).await.map_err(explain)?.into_inner())
    }

    pub async fn set_health_url(
        &mut self,
        app: &str,
        env: &str,
        health_url: &str,
    ) -> anyhow::Result<pb::AppSettings> {
        let req = self.req(pb::SetAppSettingsRequest {
            app: app.into(),
            env: env.into(),
            health_url: health_url.into(),
        });
        Ok(self
            .inner
            .set_app_settings(req)
            .await
            .map_err(explain)?
            .into_inner())
    }

    pub async fn app_settings(&mut self, app: &str, env: &str) -> anyhow::Result<pb::AppSettings> {
        let req = self.req(pb::GetAppSettingsRequest {
            app: app.into(),
            env: env.into(),
        });
        Ok(self
            .inner
            .get_app_settings(req)
            .await
            .map_err(explain)?
            .into_inner())
    }

    pub async fn create_freeze(
        &mut self,
        req: pb::CreateFreezeRequest,
    ) -> anyhow::Result<pb::Freeze> {
        let req = self.req(req);
        Ok(self
            .inner
            .create_freeze(req)
            .await
            .map_err(explain)?
            .into_inner())
    }

    pub async fn freezes(&mut self, env: Option<String>) -> anyhow::Result<Vec<pb::Freeze>> {
        let req = self.req(pb::ListFreezesRequest {
            env: env.unwrap_or_default(),
        });
        Ok(self
            .inner
            .list_freezes(req)
            .await
            .map_err(explain)?
            .into_inner()
            .freezes)
    }

    pub async fn delete_freeze(&mut self, id: &str) -> anyhow::Result<()> {
        let req = self.req(pb::DeleteFreezeRequest { id: id.into() });
        self.inner.delete_freeze(req).await.map_err(explain)?;
        Ok(())
    }

    pub async fn test_notification(
        &mut self,
        channel: &str,
    ) -> anyhow::Result<pb::TestNotificationResponse> {
        let req = self.req(pb::TestNotificationRequest {
            channel: channel.into(),
        });
        Ok(self
            .inner
            .test_notification(req)
            .await
            .map_err(explain)?
            .into_inner())
    }

    pub async fn deployment(&mut self, id: &str) -> anyhow::Result<pb::Deployment> {
        let req = self.req(pb::GetDeploymentRequest { id: id.into() });
        Ok(self
            .inner
            .get_deployment(req)
            .await
            .map_err(explain)?
            .into_inner())
    }

    pub async fn deployments(
        &mut self,
        app: Option<String>,
        env: Option<String>,
        limit: u32,
    ) -> anyhow::Result<Vec<pb::Deployment>> {
        let req = self.req(pb::ListDeploymentsRequest {
            app: app.unwrap_or_default(),
            env: env.unwrap_or_default(),
            limit,
        });
        Ok(self
            .inner
            .list_deployments(req)
            .await
            .map_err(explain)?
            .into_inner()
            .deployments)
    }

    pub async fn releases(&mut self, app: &str, env: &str) -> anyhow::Result<Vec<pb::Release>> {
        let req = self.req(pb::ListReleasesRequest {
            app: app.into(),
            env: env.into(),
        });
        Ok(self
            .inner
            .list_releases(req)
            .await
            .map_err(explain)?
            .into_inner()
            .releases)
    }

    pub async fn create_token(
        &mut self,
        role: &str,
        name: Option<&str>,
        apps: Vec<String>,
        envs: Vec<String>,
        team: Option<&str>,
    ) -> anyhow::Result<String> {
        let req = self.req(pb::CreateApiTokenRequest {
            role: role.into(),
            name: name.unwrap_or_default().into(),
            apps,
            envs,
            team: team.unwrap_or_default().into(),
        });
        Ok(self
            .inner
            .create_api_token(req)
            .await
            .map_err(explain)?
            .into_inner()
            .token)
    }

    pub async fn tokens(&mut self) -> anyhow::Result<Vec<pb::ApiToken>> {
        let req = self.req(pb::ListApiTokensRequest {});
        Ok(self
            .inner
            .list_api_tokens(req)
            .await
            .map_err(explain)?
            .into_inner()
            .tokens)
    }

    pub async fn revoke_token(&mut self, id: &str) -> anyhow::Result<()> {
        let req = self.req(pb::RevokeApiTokenRequest { id: id.into() });
        self.inner.revoke_api_token(req).await.map_err(explain)?;
        Ok(())
    }

    pub async fn audit(&mut self, limit: u32) -> anyhow::Result<Vec<pb::AuditEntry>> {
        let req = self.req(pb::ListAuditRequest { limit });
        Ok(self
            .inner
            .list_audit(req)
            .await
            .map_err(explain)?
            .into_inner()
            .entries)
    }

    pub async fn create_join_token(&mut self, ttl: Duration, uses: u32) -> anyhow::Result<String> {
        let req = self.req(pb::CreateJoinTokenRequest {
            ttl_seconds: ttl.as_secs().max(1),
            uses,
        });
        Ok(self
            .inner
            .create_join_token(req)
            .await
            .map_err(explain)?
            .into_inner()
            .token)
    }

    /// Prints a deployment's log lines (following it to the end with `follow`).
    pub async fn logs(&mut self, out: Output, id: &str, follow: bool) -> anyhow::Result<()> {
        self.stream_logs_from(id, follow, 0, |line| output::log_line(out, line, false))
            .await
            .map(|_| ())
    }

    /// `GetDeployment`, retried while the coordinator is briefly unavailable.
    pub async fn deployment_retrying(&mut self, id: &str) -> anyhow::Result<pb::Deployment> {
        for _ in 0..RECONNECT_ATTEMPTS {
            let req = self.req(pb::GetDeploymentRequest { id: id.into() });
            match self.inner.get_deployment(req).await {
                Ok(d) => return Ok(d.into_inner()),
                Err(status) if transient(&status) => {
                    tokio::time::sleep(RECONNECT_DELAY).await;
                }
                Err(status) => return Err(explain(status)),
            }
        }
        anyhow::bail!("the coordinator stayed unavailable for {RECONNECT_ATTEMPTS}s")
    }

    /// Streams log lines, skipping the first `printed` (already shown), and
    /// resumes a broken stream up to `RECONNECT_ATTEMPTS` times, 1 s apart;
    /// `note` hears about each interruption. Returns how many lines have been
    /// shown in all. Cancel-safe only in that lines already passed to `print`
    /// stay printed.
    pub async fn stream_logs_noting(
        &mut self,
        id: &str,
        follow: bool,
        mut printed: usize,
        mut print: impl FnMut(&pb::DeploymentLogLine),
        mut note: impl FnMut(String),
    ) -> anyhow::Result<usize> {
        let mut last_err = None;
        for attempt in 0..RECONNECT_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
            let req = self.req(pb::StreamLogsRequest {
                deployment_id: id.into(),
                follow,
            });
            let mut stream = match self.inner.stream_logs(req).await {
                Ok(s) => s.into_inner(),
                Err(status) if transient(&status) => {
                    last_err = Some(explain(status));
                    continue;
                }
                Err(status) => return Err(explain(status)),
            };
            let mut seen = 0usize;
            loop {
                match stream.message().await {
                    Ok(Some(line)) => {
                        seen += 1;
                        if seen > printed {
                            print(&line);
                            printed = seen;
                        }
                    }
                    Ok(None) => return Ok(printed),
                    Err(status) => {
                        note(format!(
                            "log stream interrupted ({}); resuming",
                            status.message()
                        ));
                        last_err = Some(explain(status));
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("log stream failed")))
    }

    async fn stream_logs_from(
        &mut self,
        id: &str,
        follow: bool,
        printed: usize,
        print: impl FnMut(&pb::DeploymentLogLine),
    ) -> anyhow::Result<usize> {
        self.stream_logs_noting(id, follow, printed, print, |note| eprintln!("{note}"))
            .await
    }

    /// Opens `WatchDeployment` for events after `after_seq`.
    pub async fn watch(
        &mut self,
        id: &str,
        after_seq: u64,
    ) -> Result<tonic::Streaming<pb::DeploymentEvent>, tonic::Status> {
        let req = self.req(pb::WatchDeploymentRequest {
            id: id.into(),
            after_seq,
        });
        Ok(self.inner.watch_deployment(req).await?.into_inner())
    }

    /// `ApplyApp`: converge (or with `dry_run`, diff) every host of `env` to a spec.
    pub async fn apply_app(
        &mut self,
        file_name: &str,
        spec_toml: &str,
        env: &str,
        dry_run: bool,
    ) -> anyhow::Result<pb::Deployment> {
        let req = self.req(pb::ApplyAppRequest {
            spec_toml: spec_toml.into(),
            env: env.into(),
            dry_run,
            file_name: file_name.into(),
        });
        Ok(self
            .inner
            .apply_app(req)
            .await
            .map_err(explain)?
            .into_inner())
    }
}
