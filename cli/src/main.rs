//! `flotilla`: the command-line client of the coordinator's `FleetService`,
//! for operators and CI pipelines. Every list command has `--output json`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

mod client;
mod github;
mod output;

use client::Client;

/// Deploy web apps to a fleet of Dokku hosts through a Flotilla coordinator.
#[derive(Parser)]
#[command(name = "flotilla", version, about, long_about = None)]
struct Args {
    /// Coordinator URL, e.g. https://flotilla.example.com:7443.
    #[arg(long, env = "FLOTILLA_SERVER", global = true)]
    server: Option<String>,
    /// File holding the API token (or set FLOTILLA_TOKEN to the token itself).
    #[arg(long, env = "FLOTILLA_TOKEN_FILE", global = true)]
    token_file: Option<PathBuf>,
    /// The API token itself; prefer the FLOTILLA_TOKEN variable or --token-file.
    #[arg(
        long = "token",
        env = "FLOTILLA_TOKEN",
        hide_env_values = true,
        hide = true,
        global = true
    )]
    token: Option<String>,
    /// CA certificate that signed the coordinator's certificate (the server's DIR/ca.pem).
    #[arg(long, env = "FLOTILLA_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// List the hosts (agents) and whether they are connected.
    Hosts {
        /// Only hosts of this environment.
        #[arg(long)]
        env: Option<String>,
    },
    /// Revoke a host: its agent is disconnected and refused from now on (admin).
    Revoke { host_id: String },
    /// Deploy an image of an app to every host of an environment, one host at a
    /// time, stopping at the first failure. Prints the deployment id.
    Deploy {
        app: String,
        /// Image reference; use an immutable tag or @sha256 digest.
        #[arg(long)]
        image: String,
        /// Environment: every (non-revoked) host in it gets the release.
        #[arg(long)]
        env: String,
        /// Stream the output and wait for the end; exit non-zero if it fails.
        #[arg(long)]
        wait: bool,
    },
    /// Roll an app back to an earlier release (by default, the previous one).
    Rollback {
        app: String,
        /// Environment to roll back.
        #[arg(long)]
        env: String,
        /// Release number (see `flotilla releases`) or image to return to.
        #[arg(long)]
        to: Option<String>,
        /// Stream the output and wait for the end; exit non-zero if it fails.
        #[arg(long)]
        wait: bool,
    },
    /// The release history of an app in an environment.
    Releases {
        app: String,
        /// Environment whose history to show.
        #[arg(long)]
        env: String,
    },
    /// Recent deployments, newest first.
    Deployments {
        /// Only this app.
        #[arg(long)]
        app: Option<String>,
        /// Only this environment.
        #[arg(long)]
        env: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One deployment and the state of each host.
    Status { id: String },
    /// The Dokku output of a deployment, per host.
    Logs {
        id: String,
        /// Keep streaming until the deployment ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// API tokens (admin).
    #[command(subcommand, visible_alias = "tokens")]
    Token(TokenCmd),
    /// One-time tokens that let an agent join (admin).
    #[command(subcommand)]
    JoinToken(JoinTokenCmd),
    /// Who did what, when, and how it ended: every mutating call (admin).
    Audit {
        /// At most this many entries, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// List API tokens (ids, names, roles, scopes; never the secrets).
    List,
    /// Revoke an API token by the id `token list` shows.
    Revoke { id: String },
    /// Create an API token; prints only the token.
    Create {
        /// admin, deployer (deploy and roll back) or viewer (read only).
        #[arg(long)]
        role: String,
        /// A name for audit logs, e.g. `ci-web`.
        #[arg(long)]
        name: Option<String>,
        /// Only these apps may be deployed or rolled back with it (comma-separated).
        #[arg(long, value_delimiter = ',')]
        apps: Vec<String>,
        /// Only in these environments (comma-separated).
        #[arg(long, value_delimiter = ',')]
        envs: Vec<String>,
    },
}

#[derive(Subcommand)]
enum JoinTokenCmd {
    /// Create a single-use join token; prints only the token.
    Create {
        /// How long the token stays valid (at most 7 days).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let token = match (&args.token, &args.token_file) {
        (_, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("read token file {}", path.display()))?
            .trim()
            .to_owned(),
        (Some(token), None) => token.trim().to_owned(),
        (None, None) => anyhow::bail!("no API token: set FLOTILLA_TOKEN or pass --token-file"),
    };
    let server = args
        .server
        .context("no coordinator: set FLOTILLA_SERVER or pass --server https://HOST:PORT")?;
    let ca = args.ca_cert.context(
        "no CA certificate: set FLOTILLA_CA_CERT or pass --ca-cert (the server's ca.pem)",
    )?;
    let mut client = Client::connect(&server, &ca, token).await?;
    let out = args.output;
    match args.command {
        Cmd::Hosts { env } => output::hosts(out, &client.hosts(env).await?),
        Cmd::Revoke { host_id } => {
            client.revoke(&host_id).await?;
            crate::output::outln!("revoked {host_id}");
        }
        Cmd::Deploy {
            app,
            image,
            env,
            wait,
        } => {
            let d = client.deploy(&app, &env, &image).await?;
            return client.after_create(out, d, wait).await;
        }
        Cmd::Rollback { app, env, to, wait } => {
            let d = client.rollback(&app, &env, to.as_deref()).await?;
            return client.after_create(out, d, wait).await;
        }
        Cmd::Releases { app, env } => output::releases(out, &client.releases(&app, &env).await?),
        Cmd::Deployments { app, env, limit } => {
            output::deployments(out, &client.deployments(app, env, limit).await?);
        }
        Cmd::Status { id } => {
            let d = client.deployment(&id).await?;
            output::status(out, &d);
        }
        Cmd::Logs { id, follow } => client.logs(out, &id, follow).await?,
        Cmd::Token(TokenCmd::Create {
            role,
            name,
            apps,
            envs,
        }) => {
            crate::output::outln!(
                "{}",
                client
                    .create_token(&role, name.as_deref(), apps, envs)
                    .await?
            );
        }
        Cmd::Token(TokenCmd::List) => output::tokens(out, &client.tokens().await?),
        Cmd::Token(TokenCmd::Revoke { id }) => {
            client.revoke_token(&id).await?;
            crate::output::outln!("revoked token {id}");
        }
        Cmd::Audit { limit } => output::audit(out, &client.audit(limit).await?),
        Cmd::JoinToken(JoinTokenCmd::Create { ttl }) => {
            crate::output::outln!("{}", client.create_join_token(ttl).await?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
