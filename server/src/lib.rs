//! `flotilla-server`, the coordinator: signs deploy and rollback commands,
//! dispatches them to agents over their mTLS sessions, drives deployments and
//! serves the operator API.
//!
//! Code map: `pki` (CA, data dir), `store` (sled, the only sled user),
//! `rollout` (deployment state machine), `fleet` (agent sessions and
//! `AgentService`), `api` (`FleetService`, tokens, audit), `dev` (local fleet).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flotilla_proto::v1::agent_service_server::AgentServiceServer;
use flotilla_proto::v1::fleet_service_server::FleetServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod api;
pub mod appconfig;
pub mod config;
pub mod dev;
pub mod doctor;
pub mod fleet;
pub mod gates;
pub mod metrics;
pub mod notify;
pub mod pki;
pub mod rollout;
pub mod store;

use fleet::Sessions;
use pki::{Ca, DataDir, ServerTls};
use rollout::Engine;
use store::Store;

/// Validated settings for `serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: DataDir,
    /// Signing key to use instead of `DATA_DIR/signing.key` (rotation, tests).
    pub signing_key: Option<PathBuf>,
    /// Keys signed with before a rotation: agents that trust one of them are
    /// told (in a key-set update signed by it) to trust the new key too.
    pub previous_signing_keys: Vec<PathBuf>,
    /// How long a signed command stays valid.
    pub command_ttl: Duration,
    /// How often commands that expired undelivered are failed.
    pub sweep_interval: Duration,
    /// Longest wait for background tasks at shutdown.
    pub shutdown_grace: Duration,
    /// HTTP/2 keepalive interval and timeout.
    pub keepalive: Duration,
    /// `server.toml`: deploy gates and notification channels (none without it).
    pub config_file: Option<PathBuf>,
    /// Where to serve `/healthz`, `/readyz` and `/metrics` (plain HTTP); off when `None`.
    pub http_listen: Option<std::net::SocketAddr>,
    /// The secrets key file (docs/secrets.md); `DATA_DIR/secrets.key` when `None`.
    pub secrets_key_file: Option<PathBuf>,
    /// The secrets keyring itself (`FLOTILLA_SECRETS_KEY`, the key file's format); wins over
    /// the file.
    pub secrets_key: Option<flotilla_shared::secret::Secret>,
}

impl ServeConfig {
    pub fn new(data_dir: DataDir) -> Self {
        Self {
            data_dir,
            signing_key: None,
            previous_signing_keys: Vec::new(),
            command_ttl: Duration::from_secs(600),
            sweep_interval: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(10),
            keepalive: Duration::from_secs(20),
            config_file: None,
            http_listen: None,
            secrets_key_file: None,
            secrets_key: None,
        }
    }
}

/// Shared state of a running coordinator.
pub struct Coordinator {
    pub store: Store,
    pub sessions: Arc<Sessions>,
    pub rollout: Engine,
    /// Notification channels, when `server.toml` configures any.
    pub notifier: Option<Arc<notify::Notifier>>,
    pub ca: Ca,
    /// Owns the per-session and log-stream tasks; `run` waits for them (bounded)
    /// at shutdown.
    pub tasks: tokio_util::task::TaskTracker,
    /// Sent to every agent at the start of its session (key rotation).
    pub key_update: flotilla_proto::v1::KeySetUpdate,
    /// The keys agents should trust: the signing key, then previous ones.
    pub verification_keys: Vec<ed25519_dalek::VerifyingKey>,
    /// The keyring app secrets are sealed with (`appconfig`); `None` when no key was
    /// created, and then secrets are refused while plain config works.
    pub secrets: Option<Arc<flotilla_shared::sealed::Keyring>>,
    /// Outside services `flotilla doctor` probes (Flagsmith, Grafana, Sentry).
    pub doctor_endpoints: Vec<doctor::Endpoint>,
}

/// The outside services this coordinator talks to, for `flotilla doctor`.
fn doctor_endpoints(settings: &config::ServerSettings) -> Vec<doctor::Endpoint> {
    let mut out = Vec::new();
    if let Some(url) = settings.gates.as_ref().and_then(|g| g.flagsmith_url()) {
        out.push(doctor::Endpoint {
            name: "flagsmith".into(),
            url: url.to_string(),
        });
    }
    for channel in settings.notifications.iter().flat_map(|n| &n.channels) {
        match &channel.target {
            notify::config::Target::Grafana(g) => out.push(doctor::Endpoint {
                name: "grafana".into(),
                url: format!("{}/api/health", g.url),
            }),
            notify::config::Target::SentryReleases(s) => out.push(doctor::Endpoint {
                name: "sentry-releases".into(),
                url: format!("{}/api/0/", s.url),
            }),
            _ => {}
        }
    }
    if let Some(url) = flotilla_shared::sentry::ingest_url() {
        out.push(doctor::Endpoint {
            name: "sentry".into(),
            url,
        });
    }
    out
}

/// Serves until `shutdown` completes, then stops in order: end agent sessions
/// and log streams, drain RPCs, stop background tasks, flush the store.
pub async fn run(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // 1. Load everything that can fail before serving.
    let dir = &config.data_dir;
    let tls = ServerTls::load(dir)?;
    let ca = Ca::load(dir)?;
    let signing_key = config
        .signing_key
        .clone()
        .unwrap_or_else(|| dir.signing_key());
    let signer = pki::load_signer(&signing_key)?;
    let previous = config
        .previous_signing_keys
        .iter()
        .map(|p| pki::load_signer(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut verification_keys = vec![signer.verifying_key()];
    verification_keys.extend(previous.iter().map(|p| p.verifying_key()));
    let mut signers = vec![&signer];
    signers.extend(previous.iter());
    let key_update = flotilla_shared::signing::sign_key_set(
        &verification_keys,
        flotilla_shared::time::now_ms(),
        &signers,
    );
    let secrets = load_secrets(&config)?;
    let settings = match &config.config_file {
        Some(path) => config::ServerSettings::load(path)?,
        None => config::ServerSettings::default(),
    };
    let ops_listener = match config.http_listen {
        Some(addr) => Some(flotilla_shared::ops::bind(addr).await?),
        None => None,
    };
    let store = Store::open(&dir.state())
        .with_context(|| format!("open store {}", dir.state().display()))?;
    let doctor_endpoints = doctor_endpoints(&settings);
    let gates = settings
        .gates
        .map(|g| Arc::new(gates::Gates::new(store.clone(), g)));
    let notifier = settings
        .notifications
        .map(|n| notify::Notifier::new(store.clone(), n));
    let metrics = Arc::new(metrics::Metrics::new());
    let sessions = Arc::new(Sessions::with_metrics(Arc::clone(&metrics)));
    tracing::info!(key_id = %signer.key_id(), previous = previous.len(), "command signing key loaded");
    let coordinator = Arc::new(Coordinator {
        rollout: Engine::new(
            store.clone(),
            signer,
            Arc::clone(&sessions),
            config.command_ttl,
        )
        .with(gates, notifier.clone())
        // Converge commands carrying secret values are sealed in the outbox
        // with the secrets key (and refused without one).
        .with_keyring(secrets.clone()),
        notifier: notifier.clone(),
        store,
        sessions,
        ca,
        key_update,
        verification_keys,
        secrets,
        doctor_endpoints,
        tasks: tokio_util::task::TaskTracker::new(),
    });

    // 2. Continue what a previous run left unfinished.
    let resumed = coordinator.rollout.resume().await?;
    if resumed > 0 {
        tracing::info!(resumed, "resumed unfinished deployments");
    }

    // 3. Background work, owned by `cancel`.
    let cancel = CancellationToken::new();
    let sweeper = tokio::spawn(sweep(
        Arc::clone(&coordinator),
        config.sweep_interval,
        cancel.child_token(),
    ));
    let delivery = notifier.map(|n| tokio::spawn(n.run(cancel.child_token())));
    // Ready while the gRPC services serve: from here until shutdown starts.
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // The ops listener outlives the drain (answering 503 on /readyz) and
    // stops with the background tasks.
    let ops_stop = tokio_util::sync::CancellationToken::new();
    let ops = match ops_listener {
        Some(listener) => {
            tracing::info!(addr = %listener.local_addr()?, "ops HTTP listening");
            let flag = Arc::clone(&serving);
            let ready: flotilla_shared::ops::Readiness = Arc::new(move || {
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    Ok(())
                } else {
                    Err("the coordinator is shutting down".into())
                }
            });
            Some(tokio::spawn(flotilla_shared::ops::serve(
                listener,
                metrics.registry(),
                ready,
                ops_stop.clone().cancelled_owned(),
            )))
        }
        None => None,
    };

    // 4. Serve. Cancelling first ends the long-lived streams, so the drain is quick.
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "coordinator listening");
    let server_tls = flotilla_shared::tls::server_config(&tls.chain_pem, &tls.key_pem, &tls.ca_pem);
    let stop = cancel.clone();
    let sessions = Arc::clone(&coordinator.sessions);
    let serve = tonic::transport::Server::builder()
        .tls_config(server_tls)
        .context("TLS configuration")?
        .http2_keepalive_interval(Some(config.keepalive))
        .http2_keepalive_timeout(Some(config.keepalive))
        .add_service(AgentServiceServer::new(fleet::service::AgentApi {
            coordinator: Arc::clone(&coordinator),
            cancel: cancel.clone(),
        }))
        .add_service(FleetServiceServer::new(api::Api {
            coordinator: Arc::clone(&coordinator),
            cancel: cancel.clone(),
            token_admin: tokio::sync::Mutex::new(()),
        }))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            async move {
                shutdown.await;
                serving.store(false, std::sync::atomic::Ordering::Relaxed);
                stop.cancel();
                sessions.clear();
            },
        );
    let served = serve.await.context("serve");

    // 5. Stop background tasks (bounded), then make state durable.
    cancel.cancel();
    ops_stop.cancel();
    coordinator.tasks.close();
    let background = async {
        let _ = sweeper.await;
        if let Some(delivery) = delivery {
            let _ = delivery.await;
        }
        if let Some(ops) = ops
            && let Ok(Err(e)) = ops.await
        {
            tracing::warn!("ops HTTP listener failed: {e}");
        }
        coordinator.tasks.wait().await;
    };
    if tokio::time::timeout(config.shutdown_grace, background)
        .await
        .is_err()
    {
        tracing::warn!("background tasks did not stop in time");
    }
    coordinator.store.flush().await.context("flush store")?;
    tracing::info!("coordinator stopped");
    served
}

/// The secrets keyring `run` serves with: from `secrets_key` if set, else the key file. No key
/// at all is allowed (logged): secrets are then refused until one is created.
fn load_secrets(
    config: &ServeConfig,
) -> anyhow::Result<Option<Arc<flotilla_shared::sealed::Keyring>>> {
    let key_file = config
        .secrets_key_file
        .clone()
        .unwrap_or_else(|| appconfig::default_key_file(config.data_dir.root()));
    let value = config.secrets_key.clone();
    let env = move |name: &str| {
        (name == flotilla_shared::sealed::SECRETS_KEY_ENV)
            .then(|| value.as_ref().map(|v| v.expose().to_owned()))
            .flatten()
    };
    let keyring = appconfig::load_keyring(&key_file, &env).context("load the secrets key")?;
    match &keyring {
        Some(k) => {
            tracing::info!(key_id = %k.current_key_id(), n_keys = k.key_ids().count(), "secrets key loaded")
        }
        None => tracing::warn!(
            key_file = %key_file.display(),
            "no secrets key: config secrets are refused until one is created (flotilla-server secrets generate-key)"
        ),
    }
    Ok(keyring)
}

/// The rollout timer: ends pauses between batches on time and, every
/// `every`, fails commands that expired undelivered.
async fn sweep(c: Arc<Coordinator>, every: Duration, cancel: CancellationToken) {
    let mut next_sweep = tokio::time::Instant::now() + every;
    loop {
        let next_pause_end = match c.rollout.tick().await {
            Ok(next) => next,
            Err(e) => {
                tracing::error!("ending pauses failed: {e}");
                None
            }
        };
        if tokio::time::Instant::now() >= next_sweep {
            if let Err(e) = c.rollout.sweep_expired().await {
                tracing::error!("expiry sweep failed: {e}");
            }
            if let Some(notifier) = &c.notifier {
                // Agents offline too long, certificates near expiry: once per episode.
                let checked = c.store.hosts().and_then(|hosts| {
                    notifier.check_fleet(
                        &hosts,
                        |h| c.sessions.is_connected(h),
                        flotilla_shared::time::now_ms(),
                    )
                });
                if let Err(e) = checked {
                    tracing::error!("host notification sweep failed: {e}");
                }
            }
            next_sweep = tokio::time::Instant::now() + every;
        }
        let mut wake = next_sweep;
        if let Some(at_ms) = next_pause_end {
            let in_ms =
                u64::try_from(at_ms.saturating_sub(flotilla_shared::time::now_ms())).unwrap_or(0);
            wake = wake.min(tokio::time::Instant::now() + Duration::from_millis(in_ms));
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep_until(wake) => {}
            () = c.rollout.timer_changed() => {}
        }
    }
}
