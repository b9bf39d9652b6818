//! `flotilla-server` entry point: parse flags, set up logging and the runtime,
//! then run one of `init`, `serve` or `dev`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use flotilla_server::pki::{self, DataDir};
use flotilla_server::{ServeConfig, dev};
use flotilla_shared::EnvName;
use flotilla_shared::sentry::SentryArgs;
use flotilla_shared::telemetry::LogArgs;

/// The Flotilla coordinator: signs deploy and rollback commands and sends them
/// to the agents on your Dokku hosts.
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
    /// Create a data directory: CA, server certificate, command-signing key,
    /// the secrets key (DIR/secrets.key, mode 0600) and an admin API token
    /// (DIR/admin.token, mode 0600). Refuses to overwrite.
    Init {
        /// Where the coordinator keeps its keys and state.
        #[arg(long, env = "FLOTILLA_DATA_DIR")]
        data_dir: PathBuf,
        /// DNS name or IP address agents and the CLI use to reach this server
        /// (repeatable). `localhost`, `127.0.0.1` and `::1` are always included.
        #[arg(long = "server-name")]
        server_names: Vec<String>,
    },
    /// Serve the agent and API gRPC services over TLS.
    Serve {
        /// The data directory made by `init`.
        #[arg(long, env = "FLOTILLA_DATA_DIR")]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, env = "FLOTILLA_LISTEN", default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// Sign commands with this PKCS#8 PEM ed25519 key instead of DIR/signing.key.
        #[arg(long, env = "FLOTILLA_SIGNING_KEY")]
        signing_key: Option<PathBuf>,
        /// A key commands were signed with before a rotation (repeatable). Agents
        /// that trust it are sent, signed with it, the new key set. Drop it once
        /// every agent has connected and no deployment from before is in flight.
        #[arg(
            long = "previous-signing-key",
            env = "FLOTILLA_PREVIOUS_SIGNING_KEYS",
            value_delimiter = ','
        )]
        previous_signing_keys: Vec<PathBuf>,
        /// How long a signed command stays valid (an agent refuses it after that).
        #[arg(long, env = "FLOTILLA_COMMAND_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
        command_ttl: Duration,
        /// HTTP/2 keepalive ping interval for connections (agent sessions
        /// included); a peer that does not answer a ping within the same time
        /// is dropped, so a frozen or cut-off agent is noticed within about
        /// twice this, and its commands wait in the outbox for its reconnect.
        #[arg(long, env = "FLOTILLA_KEEPALIVE", default_value = "20s", value_parser = humantime::parse_duration)]
        keepalive: Duration,
        /// The configuration file: deploy gates (Flagsmith) and notification
        /// channels (Slack, email, webhooks). See docs/gates.md and
        /// docs/notifications.md.
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: Option<PathBuf>,
        /// Serve `/healthz`, `/readyz` and `/metrics` (plain HTTP) on this
        /// address, e.g. 127.0.0.1:9464. Off by default.
        #[arg(long, env = "FLOTILLA_HTTP_LISTEN")]
        http_listen: Option<SocketAddr>,
        /// The key file app secrets are sealed with (mode 0600; docs/secrets.md).
        /// Default: DIR/secrets.key. FLOTILLA_SECRETS_KEY (the file's contents)
        /// wins over it. Without either, plain config works and secrets are refused.
        #[arg(long, env = "FLOTILLA_SECRETS_KEY_FILE")]
        secrets_key_file: Option<PathBuf>,
    },
    /// The secrets key app config secrets are sealed with (docs/secrets.md).
    #[command(subcommand)]
    Secrets(SecretsCmd),
    /// Run a local dev fleet: a coordinator plus N agents on simulated Dokku
    /// hosts (fake-dokku) in a temporary directory. Prints how to point
    /// `flotilla` at it. Ctrl-C stops everything and removes the directory.
    Dev {
        /// Number of agents (simulated Dokku hosts).
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=50))]
        agents: u16,
        /// Address for the coordinator.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// Environment the agents join.
        #[arg(long, default_value = "dev")]
        env: EnvName,
        /// Keep the fleet's state in this new directory instead of a temporary one.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// `server.toml` for the coordinator: deploy gates and notification
        /// channels (docs/gates.md, docs/notifications.md).
        #[arg(long, env = "FLOTILLA_CONFIG")]
        config: Option<PathBuf>,
        /// Serve the coordinator's `/healthz`, `/readyz` and `/metrics` here.
        #[arg(long, env = "FLOTILLA_HTTP_LISTEN")]
        http_listen: Option<SocketAddr>,
    },
}

#[derive(Subcommand)]
enum SecretsCmd {
    /// Create the secrets key file (mode 0600) with one fresh key, for a data
    /// directory made before secrets existed. Refuses to overwrite a key file.
    GenerateKey {
        /// The data directory made by `init`; the key goes to DIR/secrets.key.
        #[arg(long, env = "FLOTILLA_DATA_DIR")]
        data_dir: PathBuf,
        /// Create this file instead of DIR/secrets.key.
        #[arg(long, env = "FLOTILLA_SECRETS_KEY_FILE")]
        key_file: Option<PathBuf>,
    },
    /// Print a new key line (`<key-id> <base64>`) for a rotation: put it first
    /// in the key file, restart, then run `flotilla config reseal`.
    NewKey {
        /// Its id: 1-64 letters, digits, '.', '_' or '-' (a date works well: 2026-09).
        #[arg(long)]
        key_id: String,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    flotilla_shared::telemetry::exit_on_error(real_main(args))
}

fn real_main(args: Args) -> anyhow::Result<()> {
    flotilla_shared::tls::install_crypto_provider();
    // Sentry before logging (its layers join the subscriber) and before the
    // runtime; the guard lives to the end of main and flushes queued events.
    let _sentry =
        flotilla_shared::sentry::init(&args.sentry, "flotilla-server", env!("CARGO_PKG_VERSION"))?;
    args.logging.init();
    match args.command {
        Cmd::Init {
            data_dir,
            server_names,
        } => {
            let out = pki::init(&DataDir::new(&data_dir), &server_names)?;
            println!("initialised {}", data_dir.display());
            println!("CA fingerprint (sha256): {}", out.ca_fingerprint);
            println!("admin API token: {}", out.admin_token_path.display());
            println!(
                "secrets key: {} (back it up apart from the data directory)",
                DataDir::new(&data_dir).secrets_key().display()
            );
            Ok(())
        }
        Cmd::Secrets(SecretsCmd::GenerateKey { data_dir, key_file }) => {
            let path = key_file.unwrap_or_else(|| DataDir::new(&data_dir).secrets_key());
            let key_id = pki::generate_secrets_key(&path)?;
            println!(
                "created {} with key {key_id}; restart the coordinator to use it",
                path.display()
            );
            Ok(())
        }
        Cmd::Secrets(SecretsCmd::NewKey { key_id }) => {
            println!(
                "{}",
                flotilla_shared::sealed::Keyring::generate_line(&key_id)?
            );
            Ok(())
        }
        Cmd::Serve {
            data_dir,
            listen,
            signing_key,
            previous_signing_keys,
            command_ttl,
            keepalive,
            config: config_file,
            http_listen,
            secrets_key_file,
        } => {
            let mut config = ServeConfig::new(DataDir::new(data_dir));
            config.keepalive = keepalive;
            config.config_file = config_file;
            config.signing_key = signing_key;
            config.previous_signing_keys = previous_signing_keys;
            config.command_ttl = command_ttl;
            config.http_listen = http_listen;
            config.secrets_key_file = secrets_key_file;
            config.secrets_key = std::env::var(flotilla_shared::sealed::SECRETS_KEY_ENV)
                .ok()
                .map(flotilla_shared::secret::Secret::new);
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("bind {listen}"))?;
                flotilla_server::run(config, listener, flotilla_shared::shutdown::signal()).await
            })
        }
        Cmd::Dev {
            agents,
            listen,
            env,
            data_dir,
            config,
            http_listen,
        } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(dev::run_dev(
                dev::DevOptions {
                    agents: agents.into(),
                    listen,
                    env,
                    data_dir,
                    config,
                    http_listen,
                },
                flotilla_shared::shutdown::signal(),
            ))
        }
    }
}
