//! `flotilla-agent` entry point: parse flags, set up logging and the runtime,
//! then `join` once or `run` until SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use flotilla_agent::identity::AgentDir;
use flotilla_agent::join::{JoinOptions, join};
use flotilla_agent::{RunConfig, run};
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
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    flotilla_shared::telemetry::exit_on_error(real_main(args))
}

fn real_main(args: Args) -> anyhow::Result<()> {
    flotilla_shared::tls::install_crypto_provider();
    args.logging.init();
    let runtime = tokio::runtime::Runtime::new()?;
    match args.command {
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
        } => {
            let mut config = RunConfig::new(AgentDir::new(data_dir));
            config.dokku_bin = dokku_bin;
            config.shutdown_grace = shutdown_grace;
            config.backoff_max = reconnect_max;
            config.renew_before = renew_before;
            runtime.block_on(run(config, flotilla_shared::shutdown::signal()))
        }
    }
}
