//! `flotilla`: the command-line client of the coordinator's `FleetService`,
//! for operators and CI pipelines. Every list command has `--output json`;
//! exit codes are in `exit`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};

mod apps;
mod client;
mod config;
mod exit;
mod github;
mod hosts;
mod output;
mod strategy;
mod wait;

use client::Client;
use strategy::StrategyArgs;

/// Exit codes, shown under `deploy --help` and the other `--wait` commands.
const EXIT_CODES: &str = "\
Exit codes:
  0  succeeded (without --wait: the deployment was accepted; --canary-manual: the canary batch is done)
  1  the CLI could not do it: connection, authentication, bad argument, unknown id
  2  usage error
  3  the deployment failed
  4  the deployment was rolled back
  5  the deployment was cancelled
  6  refused: another deployment of the app is active (see --queue), no host matches, ...;
     or blocked by a deploy gate (a freeze window, a Flagsmith flag; see `flotilla status ID`)
  130 --wait interrupted (Ctrl-C); the deployment goes on

With --wait on a terminal, progress is a live view on stderr: one line per host with its latest \
log line; the last lines of failed hosts print at the end. Otherwise (CI, pipes, --output json) \
each event and each log line is one line, prefixed with its host. Under GitHub Actions each \
host's output is a log group, failed hosts get error annotations, and a table goes to the step \
summary. --wait has no timeout of its own; through a coordinator restart it reconnects (for up \
to 30 s) and goes on without repeating or skipping anything.";

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
enum HostsView {
    /// Refresh the host table live, busiest CPU first, until Ctrl-C.
    ///
    /// On a terminal the screen is redrawn in place; otherwise (or with
    /// --output json, one JSON document a line) each refresh is printed after
    /// the last.
    Top {
        /// Time between refreshes.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// List the hosts (agents): connection, CPU, memory, fullest disk, load, last seen.
    ///
    /// Figures are the newest sample each connected agent sent (every
    /// --metrics-interval of the agent, 10 s by default); offline hosts show
    /// `-` (their last sample is in --output json, with its time).
    Hosts {
        /// Only hosts of this environment.
        #[arg(long, global = true)]
        env: Option<String>,
        #[command(subcommand)]
        view: Option<HostsView>,
    },
    /// What is wrong with the fleet now: agents offline, certificates that
    /// expire soon (or that the hosts' proxies fail to serve), outside
    /// services (Flagsmith, Grafana, Sentry) the coordinator cannot reach.
    ///
    /// Exits 0 when nothing is wrong, 3 when something is (each problem on
    /// its own line), so it can run from cron or CI.
    Doctor {
        /// Only hosts of this environment.
        #[arg(long)]
        env: Option<String>,
        /// Report certificates that expire within this many days.
        #[arg(long, default_value_t = 14)]
        cert_days: u32,
    },
    /// Revoke a host: its agent is disconnected and refused from now on (admin).
    Revoke {
        /// The host id, as `flotilla hosts` lists it.
        host_id: String,
    },
    /// Deploy an image of an app to the hosts of an environment, batch by batch.
    ///
    /// One host at a time by default, stopping at the first failure and rolling
    /// back the hosts that took the new image. Prints the deployment id (with
    /// --output json, the deployment). --wait follows it to the end.
    #[command(after_long_help = EXIT_CODES)]
    Deploy {
        /// The app, as Dokku names it.
        app: String,
        /// Image reference; use an immutable tag or @sha256 digest.
        #[arg(long)]
        image: String,
        /// Environment: every non-revoked host in it (or those --hosts selects) gets the release.
        #[arg(long)]
        env: String,
        #[command(flatten)]
        strategy: StrategyArgs,
        /// Deploy even inside a freeze window of the environment (admin
        /// tokens only; the override is audited and recorded on the deployment).
        #[arg(long)]
        override_freeze: bool,
        /// Follow the deployment to its end and exit with its outcome (see below).
        #[arg(long)]
        wait: bool,
    },
    /// Roll an app back to an earlier release (by default, the previous one).
    #[command(after_long_help = EXIT_CODES)]
    Rollback {
        /// The app, as Dokku names it.
        app: String,
        /// Environment to roll back.
        #[arg(long)]
        env: String,
        /// Release number (see `flotilla releases`) or image to return to. Default: the previous release.
        #[arg(long)]
        to: Option<String>,
        /// Follow the rollback to its end and exit with its outcome (see below).
        #[arg(long)]
        wait: bool,
    },
    /// Cancel a deployment: no further host is started; hosts already running finish.
    #[command(after_long_help = EXIT_CODES)]
    Cancel {
        /// Deployment id (from `deploy` or `flotilla deployments`).
        id: String,
        /// Then return every host that took the new image to the image it had.
        #[arg(long)]
        rollback: bool,
        /// Also stop waiting for hosts whose command is in flight (an agent that
        /// is not coming back): they fail as abandoned. A result that still
        /// arrives later is recorded on the host. Can be given again to a
        /// deployment already stopping.
        #[arg(long)]
        force: bool,
        /// Follow the deployment to its end; exit 5 once it is cancelled (4 if rolled back).
        #[arg(long)]
        wait: bool,
    },
    /// Go on with a deployment that waits after its canary batch (--canary-manual).
    #[command(after_long_help = EXIT_CODES)]
    Promote {
        /// Deployment id (from `deploy` or `flotilla deployments`).
        id: String,
        /// Follow the deployment to its end and exit with its outcome (see below).
        #[arg(long)]
        wait: bool,
    },
    /// Check that the agents of an environment answer: a signed no-op to each
    /// connected host, and its round-trip time.
    ///
    /// Exit code 0 if every host answered, 3 if one did not, 1 if the
    /// coordinator could not be asked, 6 if no host matches.
    Ping {
        /// Environment whose hosts to ping.
        #[arg(long)]
        env: String,
        /// Only hosts with all these labels, e.g. `region=eu,tier=web`. Default: every host.
        #[arg(long, value_name = "K=V[,K=V]", value_parser = strategy::parse_selector)]
        hosts: Option<flotilla_shared::Labels>,
        /// How long to wait for the answers.
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = strategy::parse_positive_duration)]
        timeout: Duration,
    },
    /// Apps: converge hosts to an app spec (diff, apply) and per-app settings (health-check URL).
    #[command(subcommand)]
    App(AppCmd),
    /// App config and secrets per environment (set, unset, list, get, reseal).
    #[command(subcommand)]
    Config(config::ConfigCmd),
    /// The release history of an app in an environment.
    Releases {
        /// Release history of this app.
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
    /// One deployment: its strategy, progress, and the state of each host.
    Status {
        /// Deployment id.
        id: String,
    },
    /// The Dokku output of a deployment, per host.
    Logs {
        /// Deployment id.
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
    /// Deploy freeze windows: deploys to the environment are refused inside
    /// one (rollbacks never are). Admins may deploy with --override-freeze.
    #[command(subcommand)]
    Freeze(FreezeCmd),
    /// Notification channels (configured in the coordinator's server.toml).
    #[command(subcommand)]
    Notify(NotifyCmd),
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
    Revoke {
        /// The token id `token list` shows (not the token).
        id: String,
    },
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
        /// The team it acts for; sent to deploy gates as the Flagsmith trait `team`.
        #[arg(long)]
        team: Option<String>,
    },
}

#[derive(Subcommand)]
enum JoinTokenCmd {
    /// Create a join token; prints only the token.
    Create {
        /// How long the token stays valid (at most 7 days).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// How many hosts may join with it.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        uses: u32,
    },
}

#[derive(Subcommand)]
enum FreezeCmd {
    /// Create a freeze window (admin): one-off with --from/--until, or
    /// recurring every week with --weekly (UTC).
    Create {
        #[arg(long)]
        env: String,
        /// Start: RFC 3339 (`2026-12-24T00:00:00Z`) or `now`.
        #[arg(long, requires = "until", conflicts_with = "weekly")]
        from: Option<String>,
        /// End: RFC 3339, or a duration after --from (`48h`).
        #[arg(long, requires = "from")]
        until: Option<String>,
        /// A weekly window in UTC, e.g. `fri 18:00-mon 06:00`.
        #[arg(long)]
        weekly: Option<String>,
        /// Why; shown to whoever is refused.
        #[arg(long)]
        reason: String,
    },
    /// List freeze windows (all environments, or one).
    List {
        #[arg(long)]
        env: Option<String>,
    },
    /// Delete a freeze window by id (admin).
    Delete { id: String },
}

#[derive(Subcommand)]
enum NotifyCmd {
    /// Send a test message through a channel and say how it went (admin).
    Test {
        /// The channel's name in server.toml (`[notifications.channels.NAME]`).
        #[arg(long)]
        channel: String,
    },
}

#[derive(Subcommand)]
enum AppCmd {
    /// Show or set the URL template the health gate probes for an app in an
    /// environment (deploy --health-path adds the path).
    ///
    /// Placeholders: {app}, {env}, {host} (the host id), {domain} (the app's
    /// domain), e.g. `http://{host}.internal:5000` or `https://{domain}`.
    HealthUrl {
        /// The app, as Dokku names it.
        app: String,
        /// Environment the setting is for.
        #[arg(long)]
        env: String,
        /// The new template; without it, the current one is shown.
        template: Option<String>,
    },
    /// Show, per host of an environment, what `app apply` would change (drift).
    ///
    /// The spec is checked first, here: every error prints as
    /// `file:line:col: key.path: message` and the exit code is 2, with nothing
    /// sent. Then each host's agent reads the app's current state (domains,
    /// Let's Encrypt, postgres/redis services and links, config) and reports
    /// the changes without making them. Prints `HOST: CHANGE` per change,
    /// `HOST: in sync`, or `HOST: FAILED: why` (secret values show as `***`);
    /// --output json prints the diff deployment with each host's `changes`.
    ///
    /// Exit codes: 0 every host answered (in sync or not), 1 the CLI could not
    /// do it, 2 the spec is invalid, 3 a host failed to read its state,
    /// 6 refused (no host, another deployment of the app is active).
    #[command(after_long_help = APP_SPEC_HELP)]
    Diff {
        /// The app spec (TOML; see docs/apps.md).
        file: PathBuf,
        /// Environment of the spec whose hosts to compare.
        #[arg(long)]
        env: String,
    },
    /// Converge every host of an environment to an app spec.
    ///
    /// The spec is checked first, here (errors as `file:line:col: …`, exit 2,
    /// nothing sent), then again by the coordinator, which keeps it and sends
    /// one signed converge command to every host of the environment at once.
    /// Each agent changes only what differs — app, services and links, config
    /// (always `--no-restart`), domains, Let's Encrypt — then restarts the app
    /// once if config or links changed, checking that the restart worked.
    /// Applying the same spec again changes nothing. Prints the deployment id
    /// (kind `converge`); --wait follows it like `deploy --wait`.
    #[command(after_long_help = EXIT_CODES)]
    Apply {
        /// The app spec (TOML; see docs/apps.md).
        file: PathBuf,
        /// Environment of the spec to converge.
        #[arg(long)]
        env: String,
        /// Follow the converge to its end; exit 3 if any host failed.
        #[arg(long)]
        wait: bool,
    },
}

const APP_SPEC_HELP: &str = "\
Example:
  flotilla app diff web.toml --env staging
  web-1: add domain acme.staging.example.com
  web-1: set API_KEY=*** (secret)
  web-2: in sync";

fn main() -> ExitCode {
    let args = Args::parse();
    check_before_connecting(&args);
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
            exit::code(exit::for_error(&e))
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
        Cmd::Hosts { env, view: None } => hosts::print(out, &client.hosts(env).await?),
        Cmd::Hosts {
            env,
            view: Some(HostsView::Top { interval, count }),
        } => {
            if interval < Duration::from_millis(200) {
                anyhow::bail!("--interval must be at least 200ms");
            }
            hosts::top(&mut client, out, env, interval, count).await?;
        }
        Cmd::Revoke { host_id } => {
            client.revoke(&host_id).await?;
            crate::output::outln!("revoked {host_id}");
        }
        Cmd::Deploy {
            app,
            image,
            env,
            strategy,
            override_freeze,
            wait,
        } => {
            let (queue, strategy) = (strategy.queue, strategy_or_usage_error(&strategy));
            let d = client
                .deploy(&app, &env, &image, strategy, queue, override_freeze)
                .await?;
            if d.state == "blocked" {
                // A gate refused it before anything ran: say why, exit "refused".
                if out == Output::Json {
                    output::status(out, &d);
                }
                eprintln!("error: deployment {} was blocked: {}", d.id, d.error);
                return Ok(exit::code(exit::REFUSED));
            }
            if !wait {
                wait::print_started(out, &d);
                return Ok(ExitCode::SUCCESS);
            }
            if out == Output::Text {
                output::outln!("{}", d.id);
            }
            return wait::wait(&client, out, d, true).await;
        }
        Cmd::Rollback { app, env, to, wait } => {
            let d = client.rollback(&app, &env, to.as_deref()).await?;
            if !wait {
                wait::print_started(out, &d);
                return Ok(ExitCode::SUCCESS);
            }
            if out == Output::Text {
                output::outln!("{}", d.id);
            }
            return wait::wait(&client, out, d, false).await;
        }
        Cmd::Cancel {
            id,
            rollback,
            force,
            wait,
        } => {
            let d = client.cancel(&id, rollback, force).await?;
            if wait {
                return wait::wait(&client, out, d, false).await;
            }
            changed(out, "cancel requested for", &d);
        }
        Cmd::Promote { id, wait } => {
            let d = client.promote(&id).await?;
            if wait {
                return wait::wait(&client, out, d, false).await;
            }
            changed(out, "promoted", &d);
        }
        Cmd::Doctor { env, cert_days } => {
            let answer = client.doctor(env, cert_days).await?;
            output::doctor(out, &answer);
            if !answer.findings.is_empty() {
                return Ok(exit::code(exit::FAILED));
            }
        }
        Cmd::Ping {
            env,
            hosts,
            timeout,
        } => {
            let selector = hosts.map(Into::into).unwrap_or_default();
            let answer = client.ping(&env, selector, timeout).await?;
            if answer.hosts.is_empty() {
                if out == Output::Json {
                    output::ping(out, &answer);
                }
                eprintln!("error: no connected host of {env} matched; nothing was pinged");
                return Ok(exit::code(exit::REFUSED));
            }
            output::ping(out, &answer);
            if answer.hosts.iter().any(|h| !h.ok) {
                return Ok(exit::code(exit::FAILED));
            }
        }
        Cmd::App(AppCmd::HealthUrl { app, env, template }) => {
            let settings = match template {
                Some(template) => client.set_health_url(&app, &env, template.trim()).await?,
                None => client.app_settings(&app, &env).await?,
            };
            output::app_settings(out, &settings);
        }
        Cmd::Config(cmd) => return config::run(&mut client, out, cmd).await,
        Cmd::App(AppCmd::Diff { file, env }) => {
            let spec = apps::check_or_exit(&file, &env);
            return apps::diff(&mut client, out, &spec, &env).await;
        }
        Cmd::App(AppCmd::Apply { file, env, wait }) => {
            let spec = apps::check_or_exit(&file, &env);
            let d = client
                .apply_app(&spec.file_name, &spec.text, &env, false)
                .await?;
            if !wait {
                wait::print_started(out, &d);
                return Ok(exit::code(exit::SUCCESS));
            }
            return wait::wait(&client, out, d, false).await;
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
            team,
        }) => {
            crate::output::outln!(
                "{}",
                client
                    .create_token(&role, name.as_deref(), apps, envs, team.as_deref())
                    .await?
            );
        }
        Cmd::Token(TokenCmd::List) => output::tokens(out, &client.tokens().await?),
        Cmd::Token(TokenCmd::Revoke { id }) => {
            client.revoke_token(&id).await?;
            crate::output::outln!("revoked token {id}");
        }
        Cmd::Audit { limit } => output::audit(out, &client.audit(limit).await?),
        Cmd::JoinToken(JoinTokenCmd::Create { ttl, uses }) => {
            crate::output::outln!("{}", client.create_join_token(ttl, uses).await?);
        }
        Cmd::Freeze(FreezeCmd::Create {
            env,
            from,
            until,
            weekly,
            reason,
        }) => {
            let (from_ms, until_ms) = match (from, until) {
                (Some(from), Some(until)) => freeze_times(&from, &until)?,
                _ => (0, 0),
            };
            let freeze = client
                .create_freeze(flotilla_proto::v1::CreateFreezeRequest {
                    env,
                    from_ms,
                    until_ms,
                    weekly: weekly.unwrap_or_default(),
                    reason,
                })
                .await?;
            output::freezes(out, std::slice::from_ref(&freeze));
        }
        Cmd::Freeze(FreezeCmd::List { env }) => output::freezes(out, &client.freezes(env).await?),
        Cmd::Freeze(FreezeCmd::Delete { id }) => {
            client.delete_freeze(&id).await?;
            output::outln!("deleted freeze {id}");
        }
        Cmd::Notify(NotifyCmd::Test { channel }) => {
            let answer = client.test_notification(&channel).await?;
            output::outln!("{}", answer.detail);
            if !answer.delivered {
                return Ok(exit::code(exit::FAILED));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Argument checks clap cannot do alone, before any connection: a failure
/// is a usage error (exit 2).
fn check_before_connecting(args: &Args) {
    match &args.command {
        Cmd::Deploy { strategy, .. } => {
            strategy_or_usage_error(strategy);
        }
        Cmd::App(AppCmd::HealthUrl {
            template: Some(template),
            ..
        }) => {
            if let Err(e) = flotilla_shared::health::check_template(template.trim()) {
                usage_error("app", e.to_string());
            }
        }
        Cmd::Config(cmd) => {
            if let Err(msg) = config::check(cmd) {
                usage_error("config", msg);
            }
        }
        Cmd::App(AppCmd::Diff { file, env } | AppCmd::Apply { file, env, .. }) => {
            apps::check_or_exit(file, env);
        }
        _ => {}
    }
}

/// Reports a usage error of `subcommand` as clap would, and exits 2.
fn usage_error(subcommand: &str, msg: String) -> ! {
    let mut cmd = Args::command();
    cmd.build();
    let err = match cmd.find_subcommand_mut(subcommand) {
        Some(sub) => sub.error(clap::error::ErrorKind::ValueValidation, msg),
        None => cmd.error(clap::error::ErrorKind::ValueValidation, msg),
    };
    let _ = err.print();
    std::process::exit(exit::USAGE.into())
}

/// The strategy the flags describe; flags that do not go together are a
/// usage error (exit 2), reported like clap's own.
fn strategy_or_usage_error(args: &StrategyArgs) -> flotilla_proto::v1::Strategy {
    match args.to_proto() {
        Ok(strategy) => strategy,
        Err(msg) => usage_error("deploy", msg),
    }
}

/// `--from`/`--until` of `freeze create` → epoch milliseconds.
fn freeze_times(from: &str, until: &str) -> anyhow::Result<(i64, i64)> {
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    };
    let from = if from == "now" {
        std::time::SystemTime::now()
    } else {
        humantime::parse_rfc3339_weak(from)
            .map_err(|e| anyhow::anyhow!("--from {from:?}: {e} (use RFC 3339 or `now`)"))?
    };
    let until = match humantime::parse_duration(until) {
        Ok(d) => from + d,
        Err(_) => humantime::parse_rfc3339_weak(until).map_err(|e| {
            anyhow::anyhow!("--until {until:?}: {e} (use RFC 3339 or a duration such as 48h)")
        })?,
    };
    Ok((ms(from), ms(until)))
}

/// After `cancel`/`promote` without `--wait`.
fn changed(out: Output, what: &str, d: &flotilla_proto::v1::Deployment) {
    if out == Output::Json {
        return output::status(out, d);
    }
    output::outln!("{what} deployment {}; it is now {}", d.id, d.state);
}
