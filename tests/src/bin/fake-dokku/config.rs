//! `config:*` (dokku.md §9): app and global environment in Dokku's `ENV` files, and the restart that
//! `config:set`/`config:unset` trigger on a deployed app unless given `--no-restart`.

use crate::args::{self, Parsed, Spec};
use crate::out::{CmdResult, Failure};
use crate::store::Scope;
use crate::util::{self, Env};
use crate::{Ctx, deploy};

const SET: Spec = Spec {
    command: "config:set",
    switches: &["--encoded", "--no-restart", "--global"],
    options: &[],
};
const UNSET: Spec = Spec {
    command: "config:unset",
    switches: &["--no-restart", "--global"],
    options: &[],
};
const GET: Spec = Spec {
    command: "config:get",
    switches: &["--global", "--quoted"],
    options: &[],
};
const SHOW: Spec = Spec {
    command: "config:show",
    switches: &["--global", "--merged"],
    options: &[],
};
const KEYS: Spec = Spec {
    command: "config:keys",
    switches: &["--global", "--merged"],
    options: &[],
};
const EXPORT: Spec = Spec {
    command: "config:export",
    switches: &["--global", "--merged"],
    options: &["--format"],
};

/// `--global` or the app (validated), and the arguments after it.
fn scope_and_rest(ctx: &Ctx, parsed: &Parsed) -> Result<(Scope, Vec<String>), Failure> {
    if parsed.has("--global") {
        return Ok((Scope::Global, parsed.positionals.clone()));
    }
    let mut positionals = parsed.positionals.clone();
    if let Some(app) = &ctx.app {
        positionals.insert(0, app.clone());
    }
    let app = ctx.require_app(positionals.first())?;
    Ok((
        Scope::App(app),
        positionals.get(1..).unwrap_or_default().to_vec(),
    ))
}

/// The environment a command reads: with `--merged`, the global one overlaid by the app's.
fn load(ctx: &Ctx, scope: &Scope, merged: bool) -> Result<Env, Failure> {
    let env = ctx.store.env(scope)?;
    if !merged || matches!(scope, Scope::Global) {
        return Ok(env);
    }
    let mut combined = ctx.store.env(&Scope::Global)?;
    combined.extend(env);
    Ok(combined)
}

/// `K:  V` lines with the keys' column padded to the longest, as Dokku's columnize output.
pub fn pretty(env: &Env) -> Vec<String> {
    let width = env.keys().map(|key| key.len() + 1).max().unwrap_or(0);
    env.iter()
        .map(|(key, value)| format!("{:<width$}  {value}", format!("{key}:")))
        .collect()
}

fn restart_unless(ctx: &Ctx, parsed: &Parsed, scope: &Scope) -> CmdResult {
    match scope {
        Scope::App(app) if !parsed.has("--no-restart") => deploy::restart_after_config(ctx, app),
        _ => Ok(()),
    }
}

pub fn set(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&SET, args, None)?;
    let (scope, pairs) = scope_and_rest(ctx, &parsed)?;
    if pairs.is_empty() {
        return Err(Failure::msg(1, "At least one env pair must be given"));
    }
    let mut entries = Vec::new();
    for pair in &pairs {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Failure::msg(1, format!("Invalid env pair: {pair}")));
        };
        if !util::is_valid_env_key(key) {
            return Err(Failure::msg(1, format!("Invalid key name: '{key}'")));
        }
        let value = if parsed.has("--encoded") {
            util::base64_decode(value).ok_or_else(|| {
                Failure::msg(1, format!("Unable to decode base64 value for key: {key}"))
            })?
        } else {
            value.to_string()
        };
        entries.push((key.to_string(), value));
    }
    // Like Dokku's `SetMany`: every given pair is printed and written, changed or not, and the restart happens
    // even if nothing changed.
    let mut env = ctx.store.env(&scope)?;
    let given: Env = entries.into_iter().collect();
    ctx.out.step("Setting config vars");
    for line in pretty(&given) {
        ctx.out.info(&line);
    }
    env.extend(given);
    ctx.store.write_env(&scope, &env)?;
    restart_unless(ctx, &parsed, &scope)
}

pub fn unset(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&UNSET, args, None)?;
    let (scope, keys) = scope_and_rest(ctx, &parsed)?;
    if keys.is_empty() {
        return Err(Failure::msg(1, "At least one key must be given"));
    }
    let mut env = ctx.store.env(&scope)?;
    let mut changed = false;
    for key in &keys {
        if env.remove(key).is_some() {
            ctx.out.step(&format!("Unsetting {key}"));
            changed = true;
        } else {
            ctx.out
                .step(&format!("Skipping {key}, it is not set in the environment"));
        }
    }
    if changed {
        ctx.store.write_env(&scope, &env)?;
    }
    restart_unless(ctx, &parsed, &scope)
}

pub fn get(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&GET, args, None)?;
    let (scope, rest) = scope_and_rest(ctx, &parsed)?;
    let Some(key) = rest.first() else {
        return Err(Failure::msg(1, "Expected: key"));
    };
    match ctx.store.env(&scope)?.get(key) {
        Some(value) if parsed.has("--quoted") => ctx.out.line(&util::single_quote(value)),
        Some(value) => ctx.out.line(value),
        // A missing key: exit 1 and no output.
        None => return Err(Failure::silent(1)),
    }
    Ok(())
}

pub fn show(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&SHOW, args, None)?;
    let (scope, _) = scope_and_rest(ctx, &parsed)?;
    let env = load(ctx, &scope, parsed.has("--merged"))?;
    let name = match &scope {
        Scope::Global => "global",
        Scope::App(app) => app,
    };
    ctx.out.header(&format!("{name} env vars"));
    for line in pretty(&env) {
        ctx.out.info(&line);
    }
    Ok(())
}

pub fn keys(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&KEYS, args, None)?;
    let (scope, _) = scope_and_rest(ctx, &parsed)?;
    for key in load(ctx, &scope, parsed.has("--merged"))?.keys() {
        ctx.out.line(key);
    }
    Ok(())
}

pub fn export(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&EXPORT, args, None)?;
    let (scope, _) = scope_and_rest(ctx, &parsed)?;
    let env = load(ctx, &scope, parsed.has("--merged"))?;
    let format = parsed.value("--format").unwrap_or("exports");
    let text = render_export(&env, format)
        .ok_or_else(|| Failure::msg(1, format!("Unknown export format: {format}")))?;
    // `fmt.Println`: an empty export is an empty line.
    ctx.out.line(&text);
    Ok(())
}

/// `config:export --format …` output (without the final newline); `None` for an unknown format. Follows Dokku's
/// `Env.Export`: `exports`, `shell` and `docker-args` single-quote values (`'` as `'\''`, newlines kept raw);
/// `envfile` is `godotenv.Marshal` (integers bare, the rest double-quoted and escaped, lines sorted); `json` and
/// `json-list` are Go's `json.Marshal` (which escapes `<`, `>` and `&`); `pretty` is the aligned `K:  V` table.
pub fn render_export(env: &Env, format: &str) -> Option<String> {
    let quoted = |(key, value): (&String, &String)| format!("{key}={}", util::single_quote(value));
    let text = match format {
        "exports" => env
            .iter()
            .map(|pair| format!("export {}", quoted(pair)))
            .collect::<Vec<_>>()
            .join("\n"),
        "envfile" => {
            let mut lines: Vec<String> = env
                .iter()
                .map(|(key, value)| util::godotenv_line(key, value))
                .collect();
            lines.sort();
            lines.join("\n")
        }
        "json" => {
            let fields: Vec<String> = env
                .iter()
                .map(|(key, value)| {
                    format!(
                        "{}:{}",
                        util::go_json_string(key),
                        util::go_json_string(value)
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        "json-list" => {
            let items: Vec<String> = env
                .iter()
                .map(|(key, value)| {
                    format!(
                        "{{\"name\":{},\"value\":{}}}",
                        util::go_json_string(key),
                        util::go_json_string(value)
                    )
                })
                .collect();
            if items.is_empty() {
                // Go marshals the nil slice of an empty environment as `null`.
                "null".to_string()
            } else {
                format!("[{}]", items.join(","))
            }
        }
        "shell" => env.iter().map(quoted).collect::<Vec<_>>().join(" "),
        "docker-args" => env
            .iter()
            .map(|pair| format!("--env={}", quoted(pair)))
            .collect::<Vec<_>>()
            .join(" "),
        "pretty" => pretty(env).join("\n"),
        _ => return None,
    };
    Some(text)
}
