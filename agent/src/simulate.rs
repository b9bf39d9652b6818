//! `flotilla-agent simulate`: many agents in one process, for tests and
//! benchmarks. Each simulated agent is real where the coordinator can tell: its
//! own identity (joined with one multi-use token, kept under `DIR/<host id>/`
//! and reused by later runs), its own session (the same `link` code: mTLS,
//! signature checks, replay protection, spool, acks, pings, reconnects). Only
//! Dokku is simulated (`exec::memory`), and the spools share one sled database.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flotilla_shared::token::JoinToken;
use flotilla_shared::{EnvName, HostId, Labels};
use tokio::sync::watch;

use crate::exec::memory::{FailImages, MemoryDokku};
use crate::identity::{AgentDir, AgentFile, Identity};
use crate::join::{JoinOptions, join};
use crate::link::Ctx;
use crate::spool::{Spool, SpoolDb};
use crate::{Agent, RunConfig, Stops, report_interrupted, stop_all};

/// Page cache of the shared spool database (all agents together).
const SPOOL_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// What `simulate` runs.
#[derive(Debug, Clone)]
pub struct SimulateOptions {
    /// Number of agents.
    pub count: NonZeroUsize,
    /// Holds `<host id>/` (each agent's identity) and `spool/` (the shared spool).
    pub dir: PathBuf,
    /// Coordinator URL.
    pub server: String,
    /// One join token for all agents (the coordinator must allow `count`
    /// uses); needed only while some agent has no identity yet.
    pub token: Option<JoinToken>,
    pub env: EnvName,
    /// Host ids are `<prefix>-0001`, `<prefix>-0002`, …
    pub prefix: String,
    /// Extra `key=value` labels for every agent (besides `sim=1`, `slot=<i>`).
    pub labels: Vec<String>,
    /// Images whose deploys fail (one a line; read at every deploy).
    pub fail_images: Option<PathBuf>,
    /// Joins in flight at once.
    pub concurrency: NonZeroUsize,
    /// Session settings shared by every agent (`dir` is replaced per agent).
    pub run: RunConfig,
}

/// One simulated agent before it starts.
struct Slot {
    host_id: HostId,
    labels: Labels,
    dir: AgentDir,
}

/// Joins the agents that are not joined yet, starts all of them, calls
/// `on_connected(count)` once every one has had a session, and runs until
/// `shutdown`: then every session stops, commands finish (bounded), and the
/// shared spool is flushed once.
pub async fn run(
    opts: SimulateOptions,
    shutdown: impl Future<Output = ()>,
    on_connected: impl FnOnce(usize),
) -> anyhow::Result<()> {
    let slots = slots(&opts)?;
    let n_agents = slots.len();
    raise_fd_limit(n_agents);
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("create {}", opts.dir.display()))?;
    let fail_images = Arc::new(match &opts.fail_images {
        Some(path) => FailImages::from_file(path.clone())
            .with_context(|| format!("read --fail-images {}", path.display()))?,
        None => FailImages::none(),
    });
    tokio::pin!(shutdown);

    // 1. Identities: join the agents without one, a bounded number at a time.
    let joining = join_missing(&opts, &slots);
    tokio::select! {
        () = &mut shutdown => return Ok(()),
        joined = joining => joined?,
    }

    // 2. One spool database for all; then every agent's worker and link.
    let spool_path = opts.dir.join("spool");
    let db = Arc::new(
        SpoolDb::open(&spool_path, SPOOL_CACHE_BYTES, None)
            .with_context(|| format!("open spool {}", spool_path.display()))?,
    );
    let stops = Stops::default();
    let mut agents = Vec::with_capacity(n_agents);
    let mut connected = Vec::with_capacity(n_agents);
    for slot in &slots {
        let prepared = async {
            let identity = Identity::load(&slot.dir)?;
            let spool = Spool::open_in(&db, &slot.host_id)?;
            report_interrupted(&spool).await?;
            anyhow::Ok((identity, spool))
        }
        .await;
        let (identity, spool) = match prepared {
            Ok(p) => p,
            Err(e) => {
                // Stop the agents already started before giving up.
                stop_all(agents, opts.run.shutdown_grace).await;
                return Err(e.context(format!("start simulated agent {}", slot.host_id)));
            }
        };
        let mut config = opts.run.clone();
        config.dir = slot.dir.clone();
        let ctx = Arc::new(Ctx::new(identity, spool, &config));
        connected.push(ctx.connected.subscribe());
        let span = tracing::info_span!("sim", host_id = %slot.host_id);
        let dokku = MemoryDokku::new(Arc::clone(&fail_images));
        agents.push(Agent::start_in(ctx, dokku, &stops, span));
    }
    tracing::info!(n_agents, "simulated agents started");

    // 3. Tell the harness once every agent has been connected, then wait —
    //    unless a worker dies: an agent that accepts commands it never runs
    //    would leave deployments waiting, so the whole simulation stops.
    let mut failure = None;
    {
        let waiting = async {
            all_connected(connected).await;
            on_connected(n_agents);
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = &mut shutdown => {}
            () = waiting => {}
            died = any_worker_stopped(&mut agents) => {
                failure = Some(format!("a simulated agent's command worker stopped unexpectedly: {died}"));
            }
        }
    }

    // 4. Stop every agent (shared deadlines), then one flush for all spools.
    stop_all(agents, opts.run.shutdown_grace).await;
    db.flush().await.context("flush the shared spool")?;
    if let Some(failure) = failure {
        anyhow::bail!(failure);
    }
    tracing::info!(n_agents, "simulated agents stopped");
    Ok(())
}

/// Completes when any agent's worker ends (it should not before a stop),
/// saying how it ended.
async fn any_worker_stopped(agents: &mut [Agent]) -> String {
    use std::future::Future as _;
    std::future::poll_fn(|cx| {
        for agent in agents.iter_mut() {
            if let std::task::Poll::Ready(res) = std::pin::Pin::new(&mut agent.worker).poll(cx) {
                return std::task::Poll::Ready(format!("{res:?}"));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Host ids, labels and directories of every agent, checked before anything runs.
fn slots(opts: &SimulateOptions) -> anyhow::Result<Vec<Slot>> {
    (1..=opts.count.get())
        .map(|i| {
            let host_id = HostId::parse(format!("{}-{i:04}", opts.prefix))
                .with_context(|| format!("--prefix {:?} makes invalid host ids", opts.prefix))?;
            // `sim` and `slot` last, so they win over a --label of the same key.
            let slot_label = format!("slot={i}");
            let pairs = opts
                .labels
                .iter()
                .map(String::as_str)
                .chain(["sim=1", slot_label.as_str()]);
            let labels = Labels::from_pairs(pairs).context("--label")?;
            let dir = AgentDir::new(opts.dir.join(host_id.as_str()));
            Ok(Slot {
                host_id,
                labels,
                dir,
            })
        })
        .collect()
}

/// Joins every slot without an `agent.json`, at most `concurrency` at once;
/// checks that existing identities belong to this server and environment.
/// Cancel-safe: dropping it aborts the joins in flight (a half-done join
/// leaves no `agent.json`, so the next run joins that host again).
async fn join_missing(opts: &SimulateOptions, slots: &[Slot]) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for slot in slots {
        if !slot.dir.agent_file().exists() {
            missing.push(slot);
            continue;
        }
        let file: AgentFile = serde_json::from_slice(
            &std::fs::read(slot.dir.agent_file())
                .with_context(|| format!("read {}", slot.dir.agent_file().display()))?,
        )
        .with_context(|| format!("parse {}", slot.dir.agent_file().display()))?;
        if file.server != opts.server || file.env != opts.env || file.host_id != slot.host_id {
            anyhow::bail!(
                "{} holds agent {} of {} (env {}), not of {} (env {}); use another --dir",
                slot.dir.root().display(),
                file.host_id,
                file.server,
                file.env,
                opts.server,
                opts.env
            );
        }
    }
    if missing.is_empty() {
        tracing::info!(
            n_agents = slots.len(),
            "every simulated agent is joined already"
        );
        return Ok(());
    }
    let Some(token) = &opts.token else {
        anyhow::bail!(
            "{} of the agents have no identity in {} yet: give --join-token",
            missing.len(),
            opts.dir.display()
        );
    };
    tracing::info!(
        n_joining = missing.len(),
        concurrency = opts.concurrency.get(),
        "joining simulated agents"
    );
    let permits = Arc::new(tokio::sync::Semaphore::new(opts.concurrency.get()));
    let mut joins = tokio::task::JoinSet::new();
    for slot in missing {
        let permits = Arc::clone(&permits);
        let join_opts = JoinOptions {
            server: opts.server.clone(),
            token: token.clone(),
            host_id: slot.host_id.clone(),
            env: opts.env.clone(),
            labels: slot.labels.clone(),
            dir: slot.dir.clone(),
        };
        joins.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let host_id = join_opts.host_id.clone();
            join(join_opts)
                .await
                .with_context(|| format!("join {host_id}"))
        });
    }
    let mut n_joined = 0usize;
    while let Some(joined) = joins.join_next().await {
        // The first failure ends the run; dropping `joins` aborts the rest.
        joined.context("join task")??;
        n_joined += 1;
    }
    tracing::info!(n_joined, "simulated agents joined");
    Ok(())
}

/// Completes once every receiver has seen `true` (each agent had a session).
/// Logs progress every 10 s while waiting. Cancel-safe.
async fn all_connected(mut pending: Vec<watch::Receiver<bool>>) {
    let n_agents = pending.len();
    let mut progress = tokio::time::interval(Duration::from_secs(10));
    progress.tick().await;
    loop {
        pending.retain(|rx| !*rx.borrow());
        let Some(first) = pending.first_mut() else {
            return;
        };
        tokio::select! {
            // An error means the agent's state is gone: stop waiting for it.
            changed = first.changed() => if changed.is_err() { pending.swap_remove(0); },
            _ = progress.tick() => {
                tracing::info!(n_connected = n_agents - pending.len(), n_agents, "waiting for sessions");
            }
        }
    }
}

/// Raises the soft open-files limit to the hard one: each agent holds a TCP
/// connection. Warns when even that is too low.
fn raise_fd_limit(n_agents: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let needed = u64::try_from(n_agents)
        .unwrap_or(u64::MAX)
        .saturating_add(256);
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard
                && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            {
                tracing::warn!("cannot raise the open-files limit from {soft} to {hard}: {e}");
            }
            if hard < needed {
                tracing::warn!(
                    limit = hard,
                    needed,
                    "the open-files limit is too low for this many agents; raise it (ulimit -n)"
                );
            }
        }
        Err(e) => tracing::warn!("cannot read the open-files limit: {e}"),
    }
}
