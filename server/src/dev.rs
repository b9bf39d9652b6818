//! `flotilla-server dev`: a whole local fleet in one command — a coordinator
//! plus N `flotilla-agent` processes, each driving `fake-dokku` in its own
//! directory — for trying Flotilla out and for demos. Not for production.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use flotilla_shared::EnvName;
use flotilla_shared::time::now_ms;
use flotilla_shared::token::{JoinToken, hash_secret, random_secret};
use tokio::process::{Child, Command};

use crate::pki::{self, DataDir};
use crate::store::{JoinTokenRecord, Store};
use crate::{ServeConfig, run};

pub struct DevOptions {
    pub agents: usize,
    pub listen: SocketAddr,
    pub env: EnvName,
    /// Keep state here instead of a temporary directory (must not exist yet).
    pub data_dir: Option<PathBuf>,
    /// `server.toml` for the coordinator (gates, notifications).
    pub config: Option<PathBuf>,
    /// Where the coordinator serves `/healthz`, `/readyz` and `/metrics` (off when `None`).
    pub http_listen: Option<std::net::SocketAddr>,
}

fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate flotilla-server")?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} not found next to {}; build the whole workspace first: cargo build --workspace",
            name,
            exe.display()
        );
    }
    Ok(path)
}

/// Runs the dev fleet until `shutdown`, then stops the agents and the coordinator.
pub async fn run_dev(
    opts: DevOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let agent_bin = sibling_binary("flotilla-agent")?;
    let dokku_bin = sibling_binary("fake-dokku")?;
    let temp;
    let root = match &opts.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("flotilla-dev-")
                .tempdir()
                .context("create temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let dir = DataDir::new(root.join("server"));
    let init = pki::init(&dir, &[])?;

    // Join tokens go straight into the store, before the coordinator opens it.
    let mut tokens = Vec::new();
    {
        let store = Store::open(&dir.state())?;
        for _ in 0..opts.agents {
            let secret = random_secret()?;
            store.put_join_token(
                &hash_secret(&secret),
                &JoinTokenRecord {
                    expires_at_ms: now_ms() + 600_000,
                    created_by: "dev".into(),
                    used_by: None,
                    used_at_ms: 0,
                    max_uses: 1,
                    uses: 0,
                },
            )?;
            tokens.push(JoinToken {
                secret,
                ca_fingerprint: init.ca_fingerprint.clone(),
            });
        }
        store.db_flush_blocking()?;
    }

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("bind {} (choose another with --listen)", opts.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("https://{addr}");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut serve = ServeConfig::new(dir.clone());
    serve.config_file = opts.config.clone();
    serve.http_listen = opts.http_listen;
    let server = tokio::spawn(run(serve, listener, async move {
        let _ = stop_rx.await;
    }));

    let mut agents = Agents::default();
    let result = start_agents(
        &opts,
        &root,
        &url,
        &tokens,
        &agent_bin,
        &dokku_bin,
        &mut agents,
    )
    .await;
    if result.is_ok() {
        let admin_token = std::fs::read_to_string(dir.admin_token())?;
        println!(
            "Flotilla dev fleet is up: coordinator on {url}, {} agent(s) in env {:?}.",
            opts.agents,
            opts.env.as_str()
        );
        println!("State and logs: {}", root.display());
        println!();
        println!("Point the CLI at it (in another shell):");
        if let Some(bin_dir) = agent_bin.parent() {
            println!("  export PATH={}:$PATH", bin_dir.display());
        }
        println!("  export FLOTILLA_SERVER={url}");
        println!("  export FLOTILLA_CA_CERT={}", dir.ca_cert().display());
        println!("  export FLOTILLA_TOKEN={}", admin_token.trim());
        println!();
        println!("Then try:");
        println!("  flotilla hosts");
        println!(
            "  flotilla deploy hello --image nginx:1.27 --env {} --wait",
            opts.env
        );
        println!(
            "  flotilla deploy hello --image nginx:1.28 --env {} --wait",
            opts.env
        );
        println!("  flotilla rollback hello --env {} --wait", opts.env);
        println!("  flotilla releases hello --env {}", opts.env);
        println!();
        println!(
            "(fake-dokku fails images whose name contains `unhealthy` or `missing`.) Ctrl-C stops everything."
        );
        tokio::select! {
            () = shutdown => {}
            res = agents.any_exited() => eprintln!("an agent exited ({res}); stopping the dev fleet"),
        }
    }
    agents.stop().await;
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(15), server).await {
        Ok(Ok(res)) => res?,
        Ok(Err(e)) => bail!("coordinator task failed: {e}"),
        Err(_) => bail!("coordinator did not stop within 15s"),
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn start_agents(
    opts: &DevOptions,
    root: &Path,
    url: &str,
    tokens: &[JoinToken],
    agent_bin: &Path,
    dokku_bin: &Path,
    agents: &mut Agents,
) -> anyhow::Result<()> {
    for (i, token) in tokens.iter().enumerate() {
        let host_id = format!("{}-{}", opts.env, i + 1);
        let agent_dir = root.join(&host_id);
        let dokku_root = agent_dir.join("dokku");
        std::fs::create_dir_all(&dokku_root)?;
        let log = std::fs::File::create(agent_dir.join("agent.log"))?;
        let status = Command::new(agent_bin)
            .arg("join")
            .args([
                "--server",
                url,
                "--host-id",
                &host_id,
                "--env",
                opts.env.as_str(),
            ])
            .args(["--label", &format!("slot={}", i + 1)])
            .arg("--data-dir")
            .arg(agent_dir.join("agent"))
            .env("FLOTILLA_JOIN_TOKEN", token.to_string())
            .stdout(Stdio::null())
            .stderr(log.try_clone()?)
            .status()
            .await
            .context("run flotilla-agent join")?;
        if !status.success() {
            bail!(
                "flotilla-agent join for {host_id} failed; see {}",
                agent_dir.join("agent.log").display()
            );
        }
        let child = Command::new(agent_bin)
            .arg("run")
            .arg("--data-dir")
            .arg(agent_dir.join("agent"))
            .arg("--dokku-bin")
            .arg(dokku_bin)
            // Figures in `flotilla hosts` within seconds of the start.
            .args(["--metrics-interval", "2s"])
            .env("DOKKU_ROOT", &dokku_root)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("start flotilla-agent run")?;
        agents.add(host_id, child);
    }
    Ok(())
}

/// The running agents: their pids (for SIGTERM) and the tasks that own them.
#[derive(Default)]
struct Agents {
    pids: Vec<(String, u32)>,
    tasks: tokio::task::JoinSet<(String, std::io::Result<std::process::ExitStatus>)>,
}

impl Agents {
    fn add(&mut self, host: String, mut child: Child) {
        if let Some(pid) = child.id() {
            self.pids.push((host.clone(), pid));
        }
        self.tasks.spawn(async move { (host, child.wait().await) });
    }

    /// Completes when any agent exits (never, with no agents).
    async fn any_exited(&mut self) -> String {
        match self.tasks.join_next().await {
            Some(Ok((host, status))) => format!("{host}: {status:?}"),
            Some(Err(e)) => format!("agent task failed: {e}"),
            None => std::future::pending().await,
        }
    }

    /// SIGTERM to every agent, then a bounded wait; stragglers are killed when
    /// their task is dropped (`kill_on_drop`).
    async fn stop(mut self) {
        for (_, pid) in &self.pids {
            if let Ok(pid) = i32::try_from(*pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .is_err()
        {
            eprintln!("some agents did not stop on SIGTERM within 10s; killing them");
            self.tasks.abort_all();
        }
    }
}
