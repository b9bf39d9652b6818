//! `flotilla-agent`: runs on each Dokku host, dials the coordinator, verifies
//! signed commands and runs them with the `dokku` CLI.
//!
//! Code map: `identity` (data dir), `join` (first contact), `link` (session,
//! reconnect, verification), `spool` (sled: seen commands, unacked reports),
//! `exec` (typed actions → dokku argument vectors).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flotilla_proto::v1 as pb;
use flotilla_shared::signing::{VerifiedCommand, VerifyPolicy};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub mod exec;
pub mod identity;
pub mod join;
pub mod link;
pub mod renew;
pub mod spool;

use exec::{Dokku, Numbered};
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
    pub backoff_max: Duration,
    /// Renew the client certificate when it expires within this.
    pub renew_before: Duration,
}

impl RunConfig {
    pub fn new(dir: AgentDir) -> Self {
        Self {
            dir,
            dokku_bin: PathBuf::from("dokku"),
            shutdown_grace: Duration::from_secs(60),
            heartbeat: Duration::from_secs(15),
            backoff_max: Duration::from_secs(30),
            renew_before: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Runs until `shutdown`: stop taking commands, let a running one finish
/// (bounded by `shutdown_grace`, then kill it), flush the spool.
pub async fn run(
    config: RunConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // 1. Identity and spool.
    let identity = Identity::load(&config.dir)?;
    let spool = Spool::open(&config.dir.spool())
        .with_context(|| format!("open spool {}", config.dir.spool().display()))?;
    warn_if_cert_expires_soon(&identity);

    // 2. Commands a previous run accepted but did not finish are reported as
    //    interrupted; they never re-run on their own.
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
    tracing::info!(host_id = %identity.file.host_id, env = %identity.file.env, server = %identity.file.server, "agent starting");

    let ctx = Arc::new(Ctx {
        dir: config.dir.clone(),
        trusted: std::sync::RwLock::new((identity.trusted.clone(), identity.keys_updated_at_ms)),
        identity_pem: std::sync::RwLock::new(identity.identity_pem.clone()),
        renew_before: config.renew_before,
        identity,
        spool,
        reports: Notify::new(),
        policy: VerifyPolicy::default(),
        heartbeat: config.heartbeat,
        backoff_max: config.backoff_max,
    });

    // 3. The worker (runs dokku) and the link (talks to the coordinator).
    let stop_link = CancellationToken::new();
    let stop_work = CancellationToken::new();
    let kill_work = CancellationToken::new();
    let (work_tx, work_rx) = mpsc::channel::<VerifiedCommand>(64);
    let dokku = Dokku {
        bin: config.dokku_bin.clone(),
        host_id: ctx.identity.file.host_id.clone(),
        env: ctx.identity.file.env.clone(),
    };
    let mut worker = tokio::spawn(work(
        Arc::clone(&ctx),
        dokku,
        work_rx,
        stop_work.clone(),
        kill_work.clone(),
    ));
    let mut link = tokio::spawn(link::run(Arc::clone(&ctx), work_tx, stop_link.clone()));

    let mut failure = None;
    tokio::select! {
        () = shutdown => {}
        res = &mut worker => {
            failure = Some(format!("the command worker stopped unexpectedly: {res:?}"));
        }
    }

    // 4. Shutdown order: stop the link (no new commands), let the running
    //    command finish within the grace period, then kill it.
    stop_link.cancel();
    stop_work.cancel();
    if tokio::time::timeout(Duration::from_secs(5), &mut link)
        .await
        .is_err()
    {
        link.abort();
    }
    // (`is_finished` first: the handle may already have been awaited above.)
    if !worker.is_finished()
        && tokio::time::timeout(config.shutdown_grace, &mut worker)
            .await
            .is_err()
    {
        tracing::warn!("running command did not finish in time; killing it");
        kill_work.cancel();
        if tokio::time::timeout(Duration::from_secs(10), &mut worker)
            .await
            .is_err()
        {
            worker.abort();
        }
    }
    ctx.spool.flush().await?;
    if let Some(failure) = failure {
        // Exit non-zero so the service manager restarts the agent.
        anyhow::bail!(failure);
    }
    tracing::info!("agent stopped");
    Ok(())
}

/// Runs accepted commands one at a time, in order. Stops taking new ones on `stop`.
async fn work(
    ctx: Arc<Ctx>,
    dokku: Dokku,
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
        let mut sink = Numbered::new(|line| {
            if let Err(e) = spool.push_log(&id, line) {
                tracing::error!(command = %id, "cannot spool a log line: {e}");
            }
            reports.notify_one();
        });
        let result = dokku.execute(&cmd.action, &mut sink, &kill).await;
        let outcome = pb::Outcome::try_from(result.outcome).unwrap_or_default();
        tracing::info!(command = %id, outcome = outcome.as_str_name(), exit_code = ?result.exit_code,
            error = %result.error, "command finished");
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
