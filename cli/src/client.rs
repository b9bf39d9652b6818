//! A thin, authenticated client of `FleetService`, with error messages for people.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::fleet_service_client::FleetServiceClient;
use tonic::transport::Channel;

use crate::Output;
use crate::output;

/// How many 1-second retries a broken connection to the coordinator gets.
const RECONNECT_ATTEMPTS: usize = 30;
/// How often `--wait` re-follows a deployment whose log stream ended early.
const FOLLOW_ROUNDS: usize = 5;

pub struct Client {
    inner: FleetServiceClient<Channel>,
    auth: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

/// Turns a gRPC status into the message a person needs.
fn explain(status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let msg = status.message();
    match status.code() {
        Code::Unauthenticated => anyhow::anyhow!("authentication failed: {msg}"),
        Code::PermissionDenied => anyhow::anyhow!("permission denied: {msg}"),
        Code::Unavailable => anyhow::anyhow!("coordinator unavailable: {msg}"),
        _ => anyhow::anyhow!("{msg}"),
    }
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

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
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
    ) -> anyhow::Result<pb::Deployment> {
        let req = self.req(pb::CreateDeploymentRequest {
            app: app.into(),
            env: env.into(),
            image: image.into(),
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
    ) -> anyhow::Result<String> {
        let req = self.req(pb::CreateApiTokenRequest {
            role: role.into(),
            name: name.unwrap_or_default().into(),
            apps,
            envs,
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

    pub async fn create_join_token(&mut self, ttl: Duration) -> anyhow::Result<String> {
        let req = self.req(pb::CreateJoinTokenRequest {
            ttl_seconds: ttl.as_secs().max(1),
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
    /// A broken stream is resumed a bounded number of times, skipping lines
    /// already printed. Returns how many lines were printed.
    pub async fn logs(&mut self, out: Output, id: &str, follow: bool) -> anyhow::Result<()> {
        self.stream_logs(id, follow, |line| output::log_line(out, line, false))
            .await
            .map(|_| ())
    }

    async fn stream_logs(
        &mut self,
        id: &str,
        follow: bool,
        print: impl FnMut(&pb::DeploymentLogLine),
    ) -> anyhow::Result<usize> {
        self.stream_logs_from(id, follow, 0, print).await
    }

    /// `GetDeployment`, retried while the coordinator is briefly unavailable.
    async fn deployment_retrying(&mut self, id: &str) -> anyhow::Result<pb::Deployment> {
        for _ in 0..RECONNECT_ATTEMPTS {
            let req = self.req(pb::GetDeploymentRequest { id: id.into() });
            match self.inner.get_deployment(req).await {
                Ok(d) => return Ok(d.into_inner()),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(status) => return Err(explain(status)),
            }
        }
        anyhow::bail!("the coordinator stayed unavailable for {RECONNECT_ATTEMPTS}s")
    }

    /// Streams log lines, skipping the first `printed` (already shown), and
    /// resumes a broken stream up to `RECONNECT_ATTEMPTS` times, 1 s apart.
    /// Returns how many lines have been shown in all.
    async fn stream_logs_from(
        &mut self,
        id: &str,
        follow: bool,
        mut printed: usize,
        mut print: impl FnMut(&pb::DeploymentLogLine),
    ) -> anyhow::Result<usize> {
        const ATTEMPTS: usize = RECONNECT_ATTEMPTS;
        let mut last_err = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let req = self.req(pb::StreamLogsRequest {
                deployment_id: id.into(),
                follow,
            });
            let mut stream = match self.inner.stream_logs(req).await {
                Ok(s) => s.into_inner(),
                Err(status) if status.code() == tonic::Code::Unavailable => {
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
                        eprintln!("log stream interrupted ({}); resuming", status.message());
                        last_err = Some(explain(status));
                        break;
                    }
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("log stream failed")))
    }

    /// After `deploy`/`rollback`: print the id (or the status object), and with
    /// `wait` stream the output and return failure if the deployment failed.
    pub async fn after_create(
        &mut self,
        out: Output,
        d: pb::Deployment,
        wait: bool,
    ) -> anyhow::Result<ExitCode> {
        if !wait {
            match out {
                Output::Json => output::status(out, &d),
                Output::Text => {
                    crate::output::outln!("{}", d.id);
                    eprintln!(
                        "{} of {} in {} started; follow it with `flotilla logs {} --follow`",
                        d.kind, d.app, d.env, d.id
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        if out == Output::Text {
            crate::output::outln!("{}", d.id);
        }
        // In JSON mode stdout carries only the final object; progress goes to stderr.
        let to_stderr = out == Output::Json;
        let mut actions = crate::github::Actions::detect().filter(|_| !to_stderr);
        let mut printed = 0;
        let mut final_state = None;
        // The stream ends when the deployment does; if a coordinator restart
        // ended it early, follow again (bounded) rather than report a failure.
        for _ in 0..FOLLOW_ROUNDS {
            printed = self
                .stream_logs_from(&d.id, true, printed, |line| {
                    if let Some(actions) = actions.as_mut() {
                        actions.before_line(&line.host_id);
                    }
                    output::log_line(Output::Text, line, to_stderr)
                })
                .await?;
            let state = self.deployment_retrying(&d.id).await?;
            if matches!(state.state.as_str(), "succeeded" | "failed") {
                final_state = Some(state);
                break;
            }
        }
        let final_state = final_state.with_context(|| {
            format!(
                "deployment {} has not finished; follow it with `flotilla logs {} --follow`",
                d.id, d.id
            )
        })?;
        if let Some(actions) = actions.as_mut() {
            actions.finish(&final_state);
        }
        output::status(out, &final_state);
        Ok(if final_state.state == "succeeded" {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        })
    }
}
