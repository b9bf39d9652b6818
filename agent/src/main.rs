//! `flotilla-agent` entry point: parse flags, set up logging and the runtime,
//! then `join` once, `run` until SIGTERM, or `simulate` many agents.

use std::io::Write as _;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use flotilla_agent::config::{AgentSettings, Overrides};
use flotilla_agent::identity::AgentDir;
use flotilla_agent::join::{JoinOptions, join};
use flotilla_agent::simulate::{self, SimulateOptions};
use flotilla_agent::{RunConfig, run};
use flotilla_shared::sentry::SentryArgs;
use flotilla_shared::telemetry::LogArgs;
use flotilla_shared::token::JoinToken;
use flotilla_shared::{EnvName, HostId, Labels};

/// The Flotilla agent: runs on a Dokku host, takes signed deploy and rollback
/// commands from the coordinator and runs them with the `dokku` CLI.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(flatten)]
    logging: LogArgs,
    #[command(flatten)]
    sentry: SentryArgs,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Join a coordinator with a one-time token from `flotilla join-token create`.
    Join {
        /// Coordinator URL, e.g. https://flotilla.example.com:7443.
        #[arg(long, env = "FLOTILLA_SERVER")]
        server: String,
        /// The join token (prefer FLOTILLA_JOIN_TOKEN: arguments are visible in `ps`).
        #[arg(long, env = "FLOTILLA_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// This host's id: one DNS label, unique in the fleet (e.g. web-eu-1).
        #[arg(long)]
        host_id: HostId,
        /// The environment this host belongs to (e.g. staging, production).
        #[arg(long)]
        env: EnvName,
        /// A label `key=value` (repeatable), e.g. --label region=eu.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Where the agent keeps its key, certificate and spool.
        #[arg(
            long,
            env = "FLOTILLA_AGENT_DATA_DIR",
            default_value = "/var/lib/flotilla-agent"
        )]
        data_dir: PathBuf,
    },
    /// Connect to the coordinator and run the commands it sends, until SIGTERM.
    Run {
        /// The directory `join` wrote (identity, trusted keys, spool).
        #[arg(
            long,
            env = "FLOTILLA_AGENT_DATA_DIR",
            default_value = "/var/lib/flotilla-agent"
        )]
        data_dir: PathBuf,
        /// The dokku executable to run.
        #[arg(long, env = "FLOTILLA_DOKKU_BIN", default_value = "dokku")]
        dokku_bin: PathBuf,
        /// On SIGTERM, how long a running deploy may continue before it is killed.
        #[arg(long, env = "FLOTILLA_SHUTDOWN_GRACE", default_value = "60s", value_parser = humantime::parse_duration)]
        shutdown_grace: Duration,
        /// Longest wait between reconnection attempts (backoff doubles up to this, with jitter).
        #[arg(long, env = "FLOTILLA_RECONNECT_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
        reconnect_max: Duration,
        /// Renew the client certificate (90 days) once it expires within this.
        #[arg(long, env = "FLOTILLA_RENEW_BEFORE", default_value = "30days", value_parser = humantime::parse_duration)]
        renew_before: Duration,
        /// HTTP/2 keepalive ping interval to the coordinator; a connection whose
        /// ping is not answered within the same time is dropped and redialled,
        /// so a cut-off link is noticed within about twice this.
        #[arg(long, env = "FLOTILLA_KEEPALIVE", default_value = "20s", value_parser = humantime::parse_duration)]
        keepalive: Duration,
        /// The agent's configuration file (host metrics, remote-write, Loki,
        /// the ops listener; docs/telemetry.md). Default: /etc/flotilla/agent.toml
        /// when it exists. Flags and FLOTILLA_* variables override it.
        #[arg(long, env = "FLOTILLA_AGENT_CONFIG")]
        config: Option<PathBuf>,
        /// How often to sample the host's metrics (default 10s, or [metrics] interval).
        #[arg(long, env = "FLOTILLA_METRICS_INTERVAL", value_parser = humantime::parse_duration)]
        metrics_interval: Option<Duration>,
        /// How often to check the deployed apps' certificates for `flotilla
        /// doctor` (default 1h, or [certs] check_interval).
        #[arg(long, env = "FLOTILLA_CERT_CHECK_INTERVAL", value_parser = humantime::parse_duration)]
        cert_check_interval: Option<Duration>,
        /// Where the local proxy serves HTTPS, for the TLS check of each
        /// app domain (default 127.0.0.1:443, or [certs] probe_addr).
        #[arg(long, env = "FLOTILLA_TLS_PROBE_ADDR")]
        tls_probe_addr: Option<String>,
        /// Prometheus remote-write endpoint for host metrics (or [remote_write] url).
        #[arg(long, env = "FLOTILLA_REMOTE_WRITE_URL")]
        remote_write_url: Option<String>,
        /// Loki push endpoint for deploy logs, e.g. https://logs.example/loki/api/v1/push (or [loki] url).
        #[arg(long, env = "FLOTILLA_LOKI_URL")]
        loki_url: Option<String>,
        /// Serve `/healthz`, `/readyz` and `/metrics` (plain HTTP) on this
        /// address, e.g. 127.0.0.1:9465 (or [http] listen). Off by default.
        #[arg(long, env = "FLOTILLA_HTTP_LISTEN")]
        http_listen: Option<std::net::SocketAddr>,
    },
    /// Run many simulated agents in this process, for tests and benchmarks.
    ///
    /// Each agent is real as far as the coordinator can tell: host id
    /// PREFIX-0001, PREFIX-0002, … (labels sim=1, slot=I and every --label),
    /// its own key and certificate (joined with the one --join-token, which the
    /// coordinator must allow COUNT uses of; DIR/HOST_ID/ keeps it, so a later
    /// run with the same --dir reuses it instead of joining again), and its own
    /// mTLS session with the agent's usual command verification, replay
    /// protection, spool, acknowledgements, pings and reconnects.
    ///
    /// Only Dokku is simulated, in memory and instantly: a deploy or rollback
    /// records APP → IMAGE, logs `$ dokku git:from-image APP IMAGE` and
    /// `=====> Application deployed`, reports previous_image/deployed_image and
    /// succeeds. An image listed in --fail-images fails instead, like
    /// fake-dokku's "unhealthy" images: ` !     Could not start due to 1 failed
    /// checks (web.1)`, exit 1, the old image stays. HTTP health checks are
    /// skipped (the log says so). Apps start empty at every run.
    ///
    /// The spools are trees of one sled database in DIR/spool. Once every
    /// agent has had a session, one line goes to stdout:
    /// `simulate: COUNT agents connected`. SIGINT/SIGTERM stops every session,
    /// lets commands finish and flushes the spool. Logs go to stderr, each
    /// agent's in a `sim{host_id=…}` span.
    #[command(verbatim_doc_comment)]
    Simulate {
        /// Number of agents.
        #[arg(long)]
        count: NonZeroUsize,
        /// Where the agents' identities (DIR/HOST_ID/) and the shared spool (DIR/spool) live.
        #[arg(long)]
        dir: PathBuf,
        /// Coordinator URL, e.g. https://127.0.0.1:7443.
        #[arg(long, env = "FLOTILLA_SERVER")]
        server: String,
        /// A join token allowing COUNT uses (prefer FLOTILLA_JOIN_TOKEN: arguments are visible in `ps`).
        /// Needed only while some agent has no identity in DIR yet.
        #[arg(long, env = "FLOTILLA_JOIN_TOKEN", hide_env_values = true)]
        join_token: Option<String>,
        /// The environment of every agent.
        #[arg(long)]
        env: EnvName,
        /// Host id prefix: PREFIX-0001 … (must make valid host ids).
        #[arg(long, default_value = "sim")]
        prefix: String,
        /// An extra label `key=value` for every agent (repeatable); sim=1 and slot=I are always set.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// A file of images whose deploys fail: one image reference a line, blank lines and
        /// `#` comments ignored; read at every deploy (so it can change while running).
        #[arg(long)]
        fail_images: Option<PathBuf>,
        /// Joins in flight at once.
        #[arg(long, default_value = "64")]
        concurrency: NonZeroUsize,
        /// On SIGTERM, how long running commands may continue before they are killed.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        shutdown_grace: Duration,
        /// Longest wait between reconnection attempts (backoff doubles up to this, with jitter).
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        reconnect_max: Duration,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    flotilla_shared::telemetry::exit_on_error(real_main(args))
}

fn real_main(args: Args) -> anyhow::Result<()> {
    flotilla_shared::tls::install_crypto_provider();
    // Sentry before logging and the runtime; the guard flushes at the end of main.
    let _sentry =
        flotilla_shared::sentry::init(&args.sentry, "flotilla-agent", env!("CARGO_PKG_VERSION"))?;
    // The agent's warnings also go to Loki when a Loki URL is configured
    // (the layer forwards nothing until `run` connects it to the pipeline).
    args.logging
        .init_with(Box::new(flotilla_agent::logs::WarningLayer));
    let runtime = tokio::runtime::Runtime::new()?;
    let result = main_command(args.command, &runtime);
    // Blocking work still running (e.g. a host sample stuck on a hung
    // filesystem) must not hold the exit past the unit's stop timeout.
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

fn main_command(command: Cmd, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    match command {
        Cmd::Join {
            server,
            token,
            host_id,
            env,
            labels,
            data_dir,
        } => {
            let labels = Labels::from_pairs(labels.iter().map(String::as_str))?;
            // Parsed here, not by clap, whose errors would print the secret.
            let token: JoinToken = token.parse()?;
            let dir = AgentDir::new(data_dir);
            runtime.block_on(join(JoinOptions {
                server,
                token,
                host_id: host_id.clone(),
                env,
                labels,
                dir: dir.clone(),
            }))?;
            println!("joined as {host_id}; state in {}", dir.root().display());
            Ok(())
        }
        Cmd::Run {
            data_dir,
            dokku_bin,
            shutdown_grace,
            reconnect_max,
            renew_before,
            keepalive,
            config: config_path,
            metrics_interval,
            cert_check_interval,
            tls_probe_addr,
            remote_write_url,
            loki_url,
            http_listen,
        } => {
            let settings = AgentSettings::load(
                config_path.as_deref(),
                Overrides {
                    metrics_interval,
                    cert_check_interval,
                    tls_probe_addr,
                    http_listen,
                    remote_write_url,
                    loki_url,
                },
                &|name| std::env::var(name).ok(),
            )?;
            flotilla_agent::exec::hide_from_children(settings.secret_env_names.clone());
            let mut config = RunConfig::new(AgentDir::new(data_dir));
            config.metrics_interval = Some(settings.metrics_interval);
            config.remote_write = settings.remote_write;
            config.cert_check_interval = Some(settings.cert_check_interval);
            config.tls_probe_addr = settings.tls_probe_addr;
            config.loki = settings.loki;
            config.keepalive = keepalive;
            config.dokku_bin = dokku_bin;
            config.shutdown_grace = shutdown_grace;
            config.backoff_max = reconnect_max;
            config.renew_before = renew_before;
            config.http_listen = settings.http_listen;
            runtime.block_on(run(config, flotilla_shared::shutdown::signal()))
        }
        Cmd::Simulate {
            count,
            dir,
            server,
            join_token,
            env,
            prefix,
            labels,
            fail_images,
            concurrency,
            shutdown_grace,
            reconnect_max,
        } => {
            // Parsed here, not by clap, whose errors would print the secret.
            let token = join_token.map(|t| t.parse::<JoinToken>()).transpose()?;
            let mut run = RunConfig::new(AgentDir::new(&dir));
            run.shutdown_grace = shutdown_grace;
            run.backoff_max = reconnect_max;
            let opts = SimulateOptions {
                count,
                dir,
                server,
                token,
                env,
                prefix,
                labels,
                fail_images,
                concurrency,
                run,
            };
            runtime.block_on(simulate::run(
                opts,
                flotilla_shared::shutdown::signal(),
                |n_agents| {
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(stdout, "simulate: {n_agents} agents connected");
                    let _ = stdout.flush();
                },
            ))
        }
    }
}
