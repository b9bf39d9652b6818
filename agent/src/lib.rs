//! `flotilla-agent`: runs on each Dokku host, dials the coordinator, verifies
//! signed commands and runs them with the `dokku` CLI.
//!
//! Code map: `identity` (data dir), `join` (first contact), `link` (session,
//! reconnect, verification, pings), `spool` (sled: seen commands, unacked
//! reports), `exec` (the `Executor` trait: typed actions → dokku argument
//! vectors, the health gate; the in-memory Dokku), `simulate` (many agents in
//! one process). `Agent` is one agent's worker and link; `run` is the daemon.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flotilla_proto::v1 as pb;
use flotilla_shared::AppName;
use flotilla_shared::signing::{Action, VerifiedCommand};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub mod certs;
pub mod config;
pub mod exec;
pub mod identity;
pub mod join;
pub mod link;
pub mod logs;
pub mod metrics;
pub mod renew;
pub mod sampler;
pub mod simulate;
pub mod spool;
pub mod telemetry;

use exec::{Dokku, Executor, Numbered};
use identity::{AgentDir, Identity};
use link::Ctx;
use spool::{CommandState, Spool};

/// Validated settings for `run`.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub dir: AgentDir,
    /// The `dokku` executable.
    pub dokku_bin: PathBuf,
    /// On shutdown, how long a running dokku command may still take before it
    /// is killed (and reported as interrupted).
    pub shutdown_grace: Duration,
    pub heartbeat: Duration,
    /// HTTP/2 keepalive interval and timeout on the coordinator connection.
    pub keepalive: Duration,
    pub backoff_max: Duration,
    /// Renew the client certificate when it expires within this.
    pub renew_before: Duration,
    /// Host metrics sampling interval; `None`: no sampling (`simulate`).
    pub metrics_interval: Option<Duration>,
    /// Where host metrics go (Prometheus remote-write), if anywhere.
    pub remote_write: Option<telemetry::ship::ShipConfig>,
    /// Where deploy output and the agent's warnings go (Loki), if anywhere.
    pub loki: Option<telemetry::ship::ShipConfig>,
    /// How often to check the apps' certificates (`certs:report` and a TLS
    /// handshake per domain through `tls_probe_addr`); `None`: never.
    pub cert_check_interval: Option<Duration>,
    /// Where the local proxy serves HTTPS.
    pub tls_probe_addr: String,
    /// Where to serve `/healthz`, `/readyz` and `/metrics` (plain HTTP); off when `None`.
    pub http_listen: Option<std::net::SocketAddr>,
}

impl RunConfig {
    pub fn new(dir: AgentDir) -> Self {
        Self {
            dir,
            dokku_bin: PathBuf::from("dokku"),
            shutdown_grace: Duration::from_secs(60),
            heartbeat: Duration::from_secs(15),
            keepalive: Duration::from_secs(20),
            backoff_max: Duration::from_secs(30),
            renew_before: Duration::from_secs(30 * 24 * 3600),
            metrics_interval: None,
            remote_write: None,
            loki: None,
            cert_check_interval: None,
            tls_probe_addr: "127.0.0.1:443".into(),
            http_listen: None,
        }
    }
}

/// Runs until `shutdown`: stop taking commands, let a running one finish
/// (bounded by `shutdown_grace`, then kill it), flush the spool.
pub async fn run(
    config: RunConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // 1. Identity, spool and the ops listener (bound first: fail fast).
    let ops_listener = match config.http_listen {
        Some(addr) => Some(flotilla_shared::ops::bind(addr).await?),
        None => None,
    };
    let identity = Identity::load(&config.dir)?;
    let spool = Spool::open(&config.dir.spool())
        .with_context(|| format!("open spool {}", config.dir.spool().display()))?;
    warn_if_cert_expires_soon(&identity);

    // 2. Commands a previous run accepted but did not finish are reported as
    //    interrupted; they never re-run on their own.
    report_interrupted(&spool).await?;
    tracing::info!(host_id = %identity.file.host_id, env = %identity.file.env, server = %identity.file.server, "agent starting");

    let dokku = Dokku {
        bin: config.dokku_bin.clone(),
        host_id: identity.file.host_id.clone(),
        env: identity.file.env.clone(),
    };
    // 3. Metrics for /metrics, then the telemetry pipelines: a bounded queue in the spool and one sender
    //    task each (docs/telemetry.md).
    let mut registry = prometheus_client::registry::Registry::default();
    let agent_metrics = Arc::new(metrics::Metrics::register(&mut registry));
    let mut pipelines = Vec::new();
    let telemetry = CancellationToken::new();
    let mut telemetry_tasks = Vec::new();
    let metrics_shipper = match &config.remote_write {
        Some(ship) => {
            let queue = spool.queue(telemetry::ship::METRICS_QUEUE, ship.buffer_max_bytes)?;
            let shipper = Arc::new(telemetry::ship::MetricsShipper::new(ship.clone(), queue)?);
            telemetry_tasks.push(tokio::spawn(Arc::clone(&shipper).run(telemetry.clone())));
            pipelines.push(("remote_write", shipper.stats()));
            Some(shipper)
        }
        None => None,
    };
    let log_feed = match &config.loki {
        Some(ship) => {
            let queue = spool.queue(telemetry::ship::LOGS_QUEUE, ship.buffer_max_bytes)?;
            let shipper = Arc::new(telemetry::ship::LogShipper::new(ship.clone(), queue)?);
            telemetry_tasks.push(tokio::spawn(Arc::clone(&shipper).run(telemetry.clone())));
            pipelines.push(("loki", shipper.stats()));
            let feed = logs::LogFeed::new(
                shipper,
                identity.file.host_id.clone(),
                identity.file.env.clone(),
            );
            if let Some(task) = logs::install_warning_sink(feed.clone(), telemetry.clone()) {
                telemetry_tasks.push(task);
            }
            Some(feed)
        }
        None => None,
    };
    let (host, env) = (
        identity.file.host_id.to_string(),
        identity.file.env.to_string(),
    );
    metrics::register_pipelines(&mut registry, pipelines);
    let registry = Arc::new(registry);
    let mut ctx = Ctx::new(identity, spool, &config).with_metrics(agent_metrics);
    ctx.logs = log_feed;
    let ctx = Arc::new(ctx);
    let ops_stop = CancellationToken::new();
    let ops = match ops_listener {
        Some(listener) => {
            tracing::info!(addr = %listener.local_addr()?, "ops HTTP listening");
            let connected = ctx.connected.subscribe();
            let ready: flotilla_shared::ops::Readiness = Arc::new(move || {
                if *connected.borrow() {
                    Ok(())
                } else {
                    Err("not connected to the coordinator".into())
                }
            });
            Some(tokio::spawn(flotilla_shared::ops::serve(
                listener,
                registry,
                ready,
                ops_stop.clone().cancelled_owned(),
            )))
        }
        None => None,
    };

    // 4. The worker (runs dokku) and the link (talks to the coordinator);
    //    the host metrics sampler.
    let mut agent = Agent::start(Arc::clone(&ctx), dokku.clone(), &Stops::default());
    let cert_facts = certs::CertFacts::default();
    let cert_checker = config.cert_check_interval.map(|interval| {
        let apps_ctx = Arc::clone(&ctx);
        tokio::spawn(certs::run(
            dokku.clone(),
            config.tls_probe_addr.clone(),
            interval,
            move || {
                let mut apps: std::collections::BTreeMap<String, Vec<(String, String)>> =
                    apps_ctx.spool.services().unwrap_or_default();
                for app in apps_ctx.spool.releases().unwrap_or_default().into_keys() {
                    apps.entry(app).or_default();
                }
                apps
            },
            {
                let ctx = Arc::clone(&ctx);
                move |app: &str| {
                    if let Err(e) = ctx.spool.forget_app(app) {
                        tracing::warn!(%app, "cannot forget a destroyed app: {e}");
                    }
                }
            },
            Arc::clone(&cert_facts),
            telemetry.clone(),
        ))
    });
    let sampler = config.metrics_interval.map(|interval| {
        let apps_ctx = Arc::clone(&ctx);
        let mut last_at = i64::MIN;
        tokio::spawn(sampler::run(
            interval,
            ctx.host_metrics.clone(),
            move || {
                apps_ctx.spool.releases().unwrap_or_else(|e| {
                    tracing::warn!("cannot read the deployed releases: {e}");
                    Default::default()
                })
            },
            Arc::clone(&cert_facts),
            move |sample, previous| {
                let Some(shipper) = &metrics_shipper else {
                    return;
                };
                // Per-series timestamps must increase: a clock stepped back
                // would make the receiver refuse the batch.
                if sample.at_ms <= last_at {
                    tracing::warn!("the clock went back; not writing this metrics sample");
                    return;
                }
                last_at = sample.at_ms;
                if let Err(e) = shipper.push(&sampler::series(sample, previous, &host, &env)) {
                    tracing::warn!("cannot queue host metrics: {e}");
                }
            },
            telemetry.clone(),
        ))
    });

    let mut failure = None;
    tokio::select! {
        () = shutdown => {}
        res = agent.worker_stopped() => {
            failure = Some(format!("the command worker stopped unexpectedly: {res:?}"));
        }
    }

    // 5. Shutdown order: see `stop_all`; telemetry (what is queued stays in
    //    the spool for the next run); the spool last.
    stop_all(vec![agent], config.shutdown_grace).await;
    telemetry.cancel();
    if let Some(checker) = cert_checker {
        // Its dokku children are killed with it (kill_on_drop).
        checker.abort();
    }
    if let Some(mut sampler) = sampler
        && tokio::time::timeout(Duration::from_secs(5), &mut sampler)
            .await
            .is_err()
    {
        // A sample stuck in the kernel (a hung filesystem): leave it.
        sampler.abort();
    }
    for mut task in telemetry_tasks {
        if tokio::time::timeout(Duration::from_secs(10), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
    ops_stop.cancel();
    if let Some(ops) = ops
        && let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), ops)
            .await
            .unwrap_or(Ok(Ok(())))
    {
        tracing::warn!("ops HTTP listener failed: {e}");
    }
    ctx.spool.flush().await?;
    if let Some(failure) = failure {
        // Exit non-zero so the service manager restarts the agent.
        anyhow::bail!(failure);
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// Reports every command a previous run accepted but did not finish as
/// interrupted (it is never re-run on its own).
pub async fn report_interrupted(spool: &Spool) -> anyhow::Result<()> {
    for record in spool.unfinished()? {
        tracing::warn!(command = %record.command_id, app = %record.app, "command was interrupted by a restart; reporting it, not re-running it");
        let error = if record.state == CommandState::Running {
            "interrupted: the agent stopped while dokku ran; it was not re-run"
        } else {
            "interrupted: the agent stopped before the command started; it was not run"
        };
        spool
            .finish(
                &record.command_id,
                pb::CommandResult {
                    outcome: pb::Outcome::Interrupted.into(),
                    exit_code: None,
                    error: error.into(),
                    ..Default::default()
                },
            )
            .await?;
    }
    Ok(())
}

/// The parent tokens of a group of agents' tasks, so a whole group stops at
/// once (each agent gets child tokens).
#[derive(Debug, Clone, Default)]
pub struct Stops {
    /// Ends the links (no new commands).
    pub link: CancellationToken,
    /// Makes the workers stop taking queued commands.
    pub work: CancellationToken,
    /// Kills running commands (reported interrupted).
    pub kill: CancellationToken,
}

/// One agent's running tasks: the worker, which runs accepted commands one
/// at a time with an `Executor`, and the link, which talks to the coordinator.
pub struct Agent {
    link: tokio::task::JoinHandle<()>,
    worker: tokio::task::JoinHandle<()>,
    stops: Stops,
}

impl Agent {
    /// Starts the worker and the link, under child tokens of `parent`.
    pub fn start<E: Executor>(ctx: Arc<Ctx>, executor: E, parent: &Stops) -> Self {
        Self::start_in(ctx, executor, parent, tracing::Span::none())
    }

    /// `start`, with both tasks' events in `span` (e.g. the host id in `simulate`).
    pub fn start_in<E: Executor>(
        ctx: Arc<Ctx>,
        executor: E,
        parent: &Stops,
        span: tracing::Span,
    ) -> Self {
        use tracing::Instrument as _;
        let stops = Stops {
            link: parent.link.child_token(),
            work: parent.work.child_token(),
            kill: parent.kill.child_token(),
        };
        let (work_tx, work_rx) = mpsc::channel::<VerifiedCommand>(64);
        let worker = tokio::spawn(
            work(
                Arc::clone(&ctx),
                executor,
                work_rx,
                stops.work.clone(),
                stops.kill.clone(),
            )
            .instrument(span.clone()),
        );
        let link = tokio::spawn(link::run(ctx, work_tx, stops.link.clone()).instrument(span));
        Self {
            link,
            worker,
            stops,
        }
    }

    /// Completes if the worker ends on its own (it should not before a stop).
    /// Cancel-safe.
    pub async fn worker_stopped(&mut self) -> Result<(), tokio::task::JoinError> {
        (&mut self.worker).await
    }
}

/// Stops agents in the written order, with shared deadlines so the total wait
/// is bounded however many there are: 1. end every link (no new commands;
/// 5 s, then abort); 2. let running commands finish within `grace`; 3. kill
/// those still running (reported interrupted; 10 s, then abort). The caller
/// flushes the spool(s) afterwards.
pub async fn stop_all(agents: Vec<Agent>, grace: Duration) {
    for agent in &agents {
        agent.stops.link.cancel();
        agent.stops.work.cancel();
    }
    let links_deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut workers = Vec::with_capacity(agents.len());
    for agent in agents {
        let Agent {
            mut link,
            worker,
            stops,
        } = agent;
        if tokio::time::timeout_at(links_deadline, &mut link)
            .await
            .is_err()
        {
            link.abort();
        }
        workers.push((worker, stops));
    }
    let grace_deadline = tokio::time::Instant::now() + grace;
    let mut running = Vec::new();
    for (mut worker, stops) in workers {
        // (`is_finished` first: the handle may already have been awaited.)
        if !worker.is_finished()
            && tokio::time::timeout_at(grace_deadline, &mut worker)
                .await
                .is_err()
        {
            stops.kill.cancel();
            running.push(worker);
        }
    }
    if !running.is_empty() {
        tracing::warn!(
            n_running = running.len(),
            "running commands did not finish in time; killed them"
        );
    }
    let kill_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for mut worker in running {
        if tokio::time::timeout_at(kill_deadline, &mut worker)
            .await
            .is_err()
        {
            worker.abort();
        }
    }
}

/// Runs accepted commands one at a time, in order. Stops taking new ones on `stop`.
async fn work<E: Executor>(
    ctx: Arc<Ctx>,
    executor: E,
    mut rx: mpsc::Receiver<VerifiedCommand>,
    stop: CancellationToken,
    kill: CancellationToken,
) {
    loop {
        let cmd = tokio::select! {
            () = stop.cancelled() => return,
            cmd = rx.recv() => match cmd { Some(cmd) => cmd, None => return },
        };
        let id = cmd.command_id.clone();
        if let Err(e) = ctx.spool.mark_running(&id).await {
            // Without the mark a crash would be reported as "not run": don't run.
            tracing::error!(command = %id, "cannot record command start; not running it: {e}");
            let result = pb::CommandResult {
                outcome: pb::Outcome::Failed.into(),
                exit_code: None,
                error: format!(
                    "the agent could not record the command start, so it did not run it: {e}"
                ),
                ..Default::default()
            };
            if let Err(e) = ctx.spool.finish(&id, result).await {
                tracing::error!(command = %id, "cannot record the result: {e}");
            }
            ctx.reports.notify_one();
            continue;
        }
        let spool = &ctx.spool;
        let reports = &ctx.reports;
        let logs = ctx.logs.as_ref();
        let mut sink = Numbered::new(|line| {
            if let Some(logs) = logs {
                logs.command_line(&cmd, &line);
            }
            if let Err(e) = spool.push_log(&id, line) {
                tracing::error!(command = %id, "cannot spool a log line: {e}");
            }
            reports.notify_one();
        });
        // A Sentry transaction (when sampled) whose tags mark errors inside it.
        let span = tracing::info_span!("command", tags.host = %ctx.identity.file.host_id,
            tags.env = %ctx.identity.file.env,
            tags.app = cmd.action.app().map_or("", AppName::as_str),
            tags.deployment = %cmd.deployment_id, tags.action = cmd.action.kind(), command = %id);
        let result = {
            use tracing::Instrument as _;
            executor
                .execute(&cmd.action, &mut sink, &kill)
                .instrument(span.clone())
                .await
        };
        let outcome = pb::Outcome::try_from(result.outcome).unwrap_or_default();
        if outcome == pb::Outcome::Succeeded
            && !result.deployed_image.is_empty()
            && let Some(app) = cmd.action.app()
            && let Err(e) = ctx.spool.set_release(app.as_str(), &result.deployed_image)
        {
            tracing::warn!(command = %id, "cannot record the deployed release: {e}");
        }
        if outcome == pb::Outcome::Succeeded
            && let Action::Converge {
                app,
                desired,
                dry_run: false,
                ..
            } = &cmd.action
        {
            let services: Vec<(String, String)> = desired
                .services
                .iter()
                .map(|s| (s.kind.plugin().to_owned(), s.name.as_str().to_owned()))
                .collect();
            if let Err(e) = ctx.spool.set_services(app.as_str(), &services) {
                tracing::warn!(command = %id, "cannot record the app's services: {e}");
            }
        }
        span.in_scope(|| {
            if outcome == pb::Outcome::Failed {
                tracing::error!(command = %id, exit_code = ?result.exit_code, error = %result.error,
                    "command failed");
            }
            tracing::info!(command = %id, outcome = outcome.as_str_name(), exit_code = ?result.exit_code,
                error = %result.error, "command finished");
        });
        ctx.metrics.command_finished(outcome.as_str_name());
        if let Err(e) = ctx.spool.finish(&id, result).await {
            tracing::error!(command = %id, "cannot record the result: {e}");
        }
        ctx.reports.notify_one();
    }
}

fn warn_if_cert_expires_soon(identity: &Identity) {
    match renew::remaining_ms(&identity.identity_pem) {
        Ok(left) if left <= 0 => tracing::error!(
            "the client certificate has expired; the coordinator will refuse this agent. Re-join the host"
        ),
        Ok(left) if left < 7 * 24 * 3600 * 1000 => tracing::warn!(
            days_left = left / (24 * 3600 * 1000),
            "the client certificate expires soon; it is renewed automatically once connected"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the client certificate's expiry: {e:#}"),
    }
}
