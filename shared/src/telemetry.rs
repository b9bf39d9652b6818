//! Logging setup shared by both daemons: one `init` that builds the filter and
//! the fmt layer (human or JSON) in a fixed order, plus the Sentry layers when
//! `sentry::init` started a client. Logs go to stderr.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Log line format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for journald/Loki pipelines).
    Json,
}

/// The logging flags both daemons take (`#[command(flatten)]`).
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log filter (RUST_LOG syntax), e.g. `info` or `flotilla_agent=debug`.
    #[arg(long, env = "FLOTILLA_LOG", global = true)]
    pub log: Option<String>,
    /// Log format.
    #[arg(
        long,
        env = "FLOTILLA_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Installs the global subscriber (default filter `info`).
    pub fn init(&self) {
        init(self.log_format, self.log.as_deref(), "info");
    }

    /// `init`, with one more layer that sees every event the filter lets
    /// through (the agent forwards its warnings to Loki this way).
    pub fn init_with(&self, extra: ExtraLayer) {
        init_with(self.log_format, self.log.as_deref(), "info", Some(extra));
    }
}

/// A layer added to the subscriber by [`init_with`].
pub type ExtraLayer =
    Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// Installs the global subscriber. `filter` uses `RUST_LOG` syntax (e.g.
/// `info,flotilla_agent=debug`); `default` applies when it is `None`.
pub fn init(format: LogFormat, filter: Option<&str>, default: &str) {
    init_with(format, filter, default, None);
}

/// `init` with an optional extra layer.
pub fn init_with(
    format: LogFormat,
    filter: Option<&str>,
    default: &str,
    extra: Option<ExtraLayer>,
) {
    let filter = match filter.map(EnvFilter::try_new) {
        Some(Ok(filter)) => filter,
        Some(Err(e)) => {
            eprintln!("warning: ignoring invalid log filter ({e}); using {default:?}");
            EnvFilter::new(default)
        }
        None => EnvFilter::new(default),
    };
    // Order: the extra layer, the filter (global: it limits the extra layer
    // too), then Sentry (only with a DSN: deploy spans →
    // transactions, ERROR events → Sentry events), then the fmt layer.
    let sentry = crate::sentry::is_enabled().then(crate::sentry::layers);
    let registry = tracing_subscriber::registry()
        .with(extra)
        .with(filter)
        .with(sentry);
    let ansi = std::io::stderr().is_terminal();
    let result = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// Runs a binary's body and turns an error into one `error: ...` line on
/// stderr and exit status 1 (no `Debug` dump or backtrace for operators).
pub fn exit_on_error(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
