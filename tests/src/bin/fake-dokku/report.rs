//! `*:report` output (dokku.md §11, `ReportSingleApp` in Dokku's `common.go`): the header and padded rows, a
//! single flag's bare value, or a flat JSON object. Which flags a report has is up to the module that owns them.

use std::collections::BTreeMap;

use crate::Ctx;
use crate::out::{CmdResult, Failure};
use crate::store::Store;

/// A report's flags (with their `--`) and values.
pub type Flags = BTreeMap<String, String>;

/// Builds report flags from `(flag, value)` pairs.
pub fn flags(pairs: impl IntoIterator<Item = (&'static str, String)>) -> Flags {
    pairs
        .into_iter()
        .map(|(flag, value)| (flag.to_string(), value))
        .collect()
}

/// Collects one app's report flags.
pub type Collect = fn(&Store, &str) -> Result<Flags, Failure>;

/// What the report arguments ask for.
#[derive(Debug, PartialEq, Eq)]
pub enum Mode {
    /// Header and all rows.
    Text,
    /// `--format json`.
    Json,
    /// One `--flag`: its value only.
    Single(String),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub positionals: Vec<String>,
    pub mode: Mode,
}

/// Reads report arguments like Dokku's `ParseReportArgs`: `--format X` is consumed, any other `--x` is an info flag
/// (at most one), the rest are positionals.
pub fn parse_request(plugin: &str, args: &[String]) -> Result<Request, Failure> {
    let mut positionals = Vec::new();
    let mut info_flags = Vec::new();
    let mut format = "stdout".to_string();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == "--format" {
            format = iter.next().cloned().unwrap_or_default();
        } else if let Some(value) = arg.strip_prefix("--format=") {
            format = value.to_string();
        } else if arg.starts_with("--") {
            info_flags.push(arg.clone());
        } else {
            positionals.push(arg.clone());
        }
    }
    if info_flags.len() > 1 {
        return Err(Failure::msg(
            1,
            format!("{plugin}:report command allows only a single flag"),
        ));
    }
    let mode = match (format.as_str(), info_flags.pop()) {
        ("stdout", Some(flag)) => Mode::Single(flag),
        (_, Some(_)) => {
            return Err(Failure::msg(
                1,
                "--format flag cannot be specified when specifying an info flag",
            ));
        }
        ("stdout", None) => Mode::Text,
        ("json", None) => Mode::Json,
        (other, None) => {
            return Err(Failure::msg(
                1,
                format!("Invalid --format value specified: {other}"),
            ));
        }
    };
    Ok(Request { positionals, mode })
}

/// The rows under the header (without the 7-space indent): `Key:` padded to max(31, longest flag), then the value.
/// The key is the flag without `--`, `-` and `.` turned into spaces, first letter capitalised; rows sorted by flag.
pub fn render_rows(flags: &Flags) -> Vec<String> {
    let width = flags.keys().map(String::len).max().unwrap_or(0).max(31);
    flags
        .iter()
        .map(|(flag, value)| {
            let key = flag.trim_start_matches("--").replace(['-', '.'], " ");
            let mut chars = key.chars();
            let key = match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            };
            format!("{:<width$}{value}", format!("{key}:"))
        })
        .collect()
}

/// One flat JSON object of strings with both key styles Dokku 0.38.x emits: without the plugin prefix
/// (`deploy-source`) and the legacy flag name (`app-deploy-source`).
pub fn render_json(kind: &str, flags: &Flags) -> String {
    let prefix = format!("--{kind}-");
    let mut object = BTreeMap::new();
    for (flag, value) in flags {
        let short = flag
            .strip_prefix(&prefix)
            .unwrap_or_else(|| flag.trim_start_matches("--"));
        object.insert(short.to_string(), value.clone());
        object.insert(flag.trim_start_matches("--").to_string(), value.clone());
    }
    serde_json::to_string(&object).unwrap_or_else(|_| "{}".to_string())
}

/// ` !     Invalid flag passed, valid flags: …` (sorted, comma-separated).
pub fn invalid_flag(flags: &Flags) -> Failure {
    let valid: Vec<&str> = flags.keys().map(String::as_str).collect();
    Failure::msg(
        1,
        format!("Invalid flag passed, valid flags: {}", valid.join(", ")),
    )
}

/// How the rows of a full report are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Core Go plugins (`ReportSingleApp`): `Key:` padded to max(31, longest flag), sorted by flag.
    Go,
    /// Bash plugins: `printf "%-<N>s %-25s" "Key:" value` (letsencrypt uses 30; the value is padded too).
    Bash(usize),
}

/// Bash plugins' rows: `Key:` (the flag without `--`, `-` → space, first letter capitalised) padded to `width`,
/// a space, the value padded to 25, in the flags' order.
pub fn render_bash_rows(flags: &Flags, width: usize) -> Vec<String> {
    flags
        .iter()
        .map(|(flag, value)| {
            let key = capitalise(&flag.trim_start_matches("--").replace('-', " "));
            format!("{:<width$} {value:<25}", format!("{key}:"))
        })
        .collect()
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Runs `<plugin>:report [<app>] [--flag | --format json]`; without an app it reports every app.
pub fn run(ctx: &Ctx, args: &[String], plugin: &str, kind: &str, collect: Collect) -> CmdResult {
    run_with(ctx, args, plugin, kind, collect, Layout::Go)
}

/// `run` with a row layout.
pub fn run_with(
    ctx: &Ctx,
    args: &[String],
    plugin: &str,
    kind: &str,
    collect: Collect,
    layout: Layout,
) -> CmdResult {
    let mut request = parse_request(plugin, args)?;
    if let Some(app) = &ctx.app {
        request.positionals.insert(0, app.clone());
    }
    let apps = match request.positionals.first() {
        Some(app) => vec![ctx.require_app(Some(app))?],
        None => {
            let apps = ctx.store.apps()?;
            if apps.is_empty() {
                ctx.out.warn("You haven't deployed any applications yet");
            }
            apps
        }
    };
    for app in apps {
        let flags = collect(&ctx.store, &app)?;
        print(ctx, &app, kind, &flags, &request.mode, layout)?;
    }
    Ok(())
}

/// Collects a plugin's global report flags.
pub type CollectGlobal = fn(&Store) -> Result<Flags, Failure>;

/// `run` for a plugin that also has `<plugin>:report --global [--flag | --format json]` (0.38.0+): the global
/// flags under the header `=====> --global <kind> information`.
pub fn run_with_global(
    ctx: &Ctx,
    args: &[String],
    plugin: &str,
    kind: &str,
    collect: Collect,
    global: CollectGlobal,
) -> CmdResult {
    if !args.iter().any(|arg| arg == "--global") {
        return run(ctx, args, plugin, kind, collect);
    }
    let rest: Vec<String> = args
        .iter()
        .filter(|arg| *arg != "--global")
        .cloned()
        .collect();
    let request = parse_request(plugin, &rest)?;
    let flags = global(&ctx.store)?;
    print(ctx, "--global", kind, &flags, &request.mode, Layout::Go)
}

/// One report: header and rows, the JSON object, or one flag's value.
fn print(
    ctx: &Ctx,
    label: &str,
    kind: &str,
    flags: &Flags,
    mode: &Mode,
    layout: Layout,
) -> CmdResult {
    match mode {
        Mode::Text => {
            ctx.out.header(&format!("{label} {kind} information"));
            let rows = match layout {
                Layout::Go => render_rows(flags),
                Layout::Bash(width) => render_bash_rows(flags, width),
            };
            for row in rows {
                ctx.out.info(&row);
            }
        }
        Mode::Json => ctx.out.line(&render_json(kind, flags)),
        Mode::Single(flag) => match flags.get(flag) {
            Some(value) => ctx.out.line(value),
            None => return Err(invalid_flag(flags)),
        },
    }
    Ok(())
}
