//! `flotilla config`: an app's config and secrets per environment, kept by the coordinator
//! (docs/config.md). Secret values are sent once, never printed (`***`) except by
//! `get --reveal`; a value read from stdin stays out of `ps` and the shell history.

use std::io::{IsTerminal as _, Read as _};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use flotilla_proto::v1 as pb;
use flotilla_shared::time::format_ms;
use serde_json::{Value, json};

use crate::Output;
use crate::client::{Client, explain};
use crate::exit;
use crate::output::outln;

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Set config values of an app in one environment (deployer for the app and
    /// environment, or admin).
    ///
    /// `KEY=VALUE` sets a value. With --secret every value given is a secret:
    /// stored encrypted, shown as `***` everywhere, readable only by an admin
    /// with `get --reveal`. A KEY without `=VALUE` (at most one) reads its value
    /// from stdin — without echo on a terminal, else all of stdin minus one
    /// trailing newline — so a secret stays out of `ps` and the shell history:
    ///
    ///   flotilla config set web --env production --secret API_KEY < api-key.txt
    ///
    /// Keys are environment variable names (`[A-Za-z_][A-Za-z0-9_]*`); Dokku's own
    /// (`DOKKU_*`, `GIT_REV`, `NO_VHOST`) are refused. Values are at most 64 KiB.
    /// Staging and production are separate: set each environment on its own.
    Set {
        /// The app, as Dokku names it.
        app: String,
        /// The environment the values are for.
        #[arg(long)]
        env: String,
        /// Store the values as secrets.
        #[arg(long)]
        secret: bool,
        /// `KEY=VALUE`, or `KEY` to read the value from stdin.
        #[arg(required = true, value_name = "KEY=VALUE|KEY")]
        assignments: Vec<String>,
    },
    /// Remove config keys of an app in one environment (deployer or admin).
    /// Keys without a value are reported, not an error.
    Unset {
        /// The app, as Dokku names it.
        app: String,
        /// The environment to remove them from.
        #[arg(long)]
        env: String,
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// List the config of an app in one environment; secrets show as `***`.
    ///
    /// Also names the keys the app spec requires that have no value yet (a
    /// deploy to the environment is refused until they are set).
    List {
        /// The app, as Dokku names it.
        app: String,
        /// The environment to list.
        #[arg(long)]
        env: String,
    },
    /// Print one value (a secret prints `***` unless --reveal).
    Get {
        /// The app, as Dokku names it.
        app: String,
        /// The environment to read.
        #[arg(long)]
        env: String,
        key: String,
        /// Print a secret's value (admin only; written to the audit log with the
        /// key's name, never the value).
        #[arg(long)]
        reveal: bool,
    },
    /// After a secrets-key rotation, seal every secret sealed with an older key
    /// again with the current one (admin). Exit 3 if some could not be opened.
    Reseal,
}

/// One `KEY=VALUE` or `KEY` (value from stdin).
#[derive(Debug, PartialEq, Eq)]
pub enum Assignment {
    Value(String, String),
    Stdin(String),
}

/// Splits the assignments of `config set`; an error is a usage error.
pub fn parse_assignments(args: &[String]) -> Result<Vec<Assignment>, String> {
    let mut out = Vec::with_capacity(args.len());
    for arg in args {
        let assignment = match arg.split_once('=') {
            Some((key, value)) => Assignment::Value(key.trim().to_owned(), value.to_owned()),
            None => Assignment::Stdin(arg.trim().to_owned()),
        };
        let key = match &assignment {
            Assignment::Value(k, _) | Assignment::Stdin(k) => k,
        };
        if key.is_empty() {
            // The argument is not quoted: it may be a value.
            return Err("an assignment has no key; write KEY=VALUE".into());
        }
        out.push(assignment);
    }
    if out
        .iter()
        .filter(|a| matches!(a, Assignment::Stdin(_)))
        .count()
        > 1
    {
        return Err(
            "only one KEY may read its value from stdin; give the others as KEY=VALUE".into(),
        );
    }
    Ok(out)
}

/// Argument checks before connecting (usage errors, exit 2).
pub fn check(cmd: &ConfigCmd) -> Result<(), String> {
    if let ConfigCmd::Set { assignments, .. } = cmd {
        parse_assignments(assignments)?;
    }
    Ok(())
}

/// The value of `key` from stdin: without echo on a terminal, else all of it minus one
/// trailing newline.
fn read_stdin_value(key: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let term = console::Term::stderr();
        term.write_str(&format!("value of {key} (not echoed): "))
            .context("write the prompt")?;
        return term.read_secure_line().context("read the value");
    }
    let mut value = String::new();
    std::io::stdin()
        .read_to_string(&mut value)
        .with_context(|| format!("read the value of {key} from stdin"))?;
    if let Some(v) = value.strip_suffix('\n') {
        value = v.strip_suffix('\r').unwrap_or(v).to_owned();
    }
    Ok(value)
}

fn print_json(value: &Value) {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into())
    );
}

fn ts(ms: i64) -> Value {
    if ms > 0 {
        Value::String(format_ms(ms))
    } else {
        Value::Null
    }
}

/// The JSON shape of a config entry (a contract: add fields, never rename one).
fn entry_json(e: &pb::ConfigEntry) -> Value {
    json!({
        "key": e.key,
        "secret": e.secret,
        "value": e.value,
        "updated_at": ts(e.updated_at_ms),
        "updated_by": e.updated_by,
        "sealed_with": if e.sealed_with.is_empty() { Value::Null } else { json!(e.sealed_with) },
    })
}

fn keys_text(entries: &[pb::ConfigEntry]) -> String {
    entries
        .iter()
        .map(|e| {
            if e.secret {
                format!("{} (secret)", e.key)
            } else {
                e.key.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn run(client: &mut Client, out: Output, cmd: ConfigCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCmd::Set {
            app,
            env,
            secret,
            assignments,
        } => {
            let assignments = parse_assignments(&assignments).map_err(anyhow::Error::msg)?;
            let mut values = Vec::with_capacity(assignments.len());
            for a in assignments {
                let (key, value) = match a {
                    Assignment::Value(k, v) => (k, v),
                    Assignment::Stdin(k) => {
                        let v = read_stdin_value(&k)?;
                        (k, v)
                    }
                };
                values.push(pb::ConfigValue { key, value, secret });
            }
            let req = client.req(pb::SetConfigRequest {
                app: app.clone(),
                env: env.clone(),
                values,
            });
            let answer = client
                .inner
                .set_config(req)
                .await
                .map_err(explain)?
                .into_inner();
            if out == Output::Json {
                print_json(&Value::Array(
                    answer.entries.iter().map(entry_json).collect(),
                ));
            } else {
                outln!("set {} for {app} in {env}", keys_text(&answer.entries));
            }
        }
        ConfigCmd::Unset { app, env, keys } => {
            let req = client.req(pb::UnsetConfigRequest {
                app: app.clone(),
                env: env.clone(),
                keys,
            });
            let answer = client
                .inner
                .unset_config(req)
                .await
                .map_err(explain)?
                .into_inner();
            if out == Output::Json {
                print_json(&json!({ "removed": answer.removed, "absent": answer.absent }));
            } else {
                if !answer.removed.is_empty() {
                    outln!("unset {} for {app} in {env}", answer.removed.join(", "));
                }
                if !answer.absent.is_empty() {
                    outln!(
                        "{app} had no value for {} in {env}",
                        answer.absent.join(", ")
                    );
                }
            }
        }
        ConfigCmd::List { app, env } => {
            let req = client.req(pb::ListConfigRequest { app, env });
            let answer = client
                .inner
                .list_config(req)
                .await
                .map_err(explain)?
                .into_inner();
            if out == Output::Json {
                print_json(&json!({
                    "app": answer.app,
                    "env": answer.env,
                    "entries": answer.entries.iter().map(entry_json).collect::<Vec<_>>(),
                    "required": answer.required,
                    "missing": answer.missing,
                }));
            } else {
                list_text(&answer);
            }
        }
        ConfigCmd::Get {
            app,
            env,
            key,
            reveal,
        } => {
            let req = client.req(pb::GetConfigRequest {
                app,
                env,
                key,
                reveal,
            });
            let entry = client
                .inner
                .get_config(req)
                .await
                .map_err(explain)?
                .into_inner();
            if out == Output::Json {
                print_json(&entry_json(&entry));
            } else {
                outln!("{}", entry.value);
            }
        }
        ConfigCmd::Reseal => {
            let req = client.req(pb::ResealConfigRequest {});
            let answer = client
                .inner
                .reseal_config(req)
                .await
                .map_err(explain)?
                .into_inner();
            if out == Output::Json {
                print_json(&json!({
                    "key_id": answer.key_id,
                    "resealed": answer.resealed,
                    "current": answer.current,
                    "failed": answer.failed,
                }));
            } else {
                outln!(
                    "resealed {} secrets with key {} ({} already used it)",
                    answer.resealed,
                    answer.key_id,
                    answer.current
                );
                for failure in &answer.failed {
                    eprintln!("error: cannot reseal {failure}");
                }
            }
            if !answer.failed.is_empty() {
                return Ok(exit::code(exit::FAILED));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list_text(answer: &pb::ListConfigResponse) {
    outln!("{:<32} {:<40} {:<21} BY", "KEY", "VALUE", "UPDATED");
    for e in &answer.entries {
        // One line per entry: long or multi-line plain values are cut.
        let mut value: String = e.value.replace(['\n', '\r'], " ");
        if value.chars().count() > 40 {
            value = value.chars().take(39).collect::<String>() + "…";
        }
        outln!(
            "{:<32} {:<40} {:<21} {}",
            e.key,
            value,
            format_ms(e.updated_at_ms),
            e.updated_by
        );
    }
    if !answer.missing.is_empty() {
        eprintln!(
            "warning: required keys without a value (deploys to {} are refused): {}",
            answer.env,
            answer.missing.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn assignments() {
        assert_eq!(
            parse_assignments(&args(&["A=1", "B=x=y", "C=", "D"])).unwrap(),
            vec![
                Assignment::Value("A".into(), "1".into()),
                Assignment::Value("B".into(), "x=y".into()),
                Assignment::Value("C".into(), String::new()),
                Assignment::Stdin("D".into()),
            ]
        );
        let err = parse_assignments(&args(&["=hunter2-secret"])).unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(parse_assignments(&args(&["A", "B"])).is_err());
    }
}
