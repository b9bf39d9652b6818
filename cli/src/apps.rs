//! `flotilla app diff|apply` (docs/apps.md): the spec is checked here first
//! (every error as `file:line:col: key.path: message`, exit 2, nothing sent),
//! then the coordinator checks it again and converges the hosts.

use std::path::Path;
use std::process::ExitCode;

use flotilla_proto::v1 as pb;
use flotilla_shared::EnvName;
use flotilla_shared::appspec::AppSpec;

use crate::Output;
use crate::client::{Client, transient};
use crate::exit;
use crate::output::{self, outln};

/// A spec read and checked locally.
pub struct LocalSpec {
    pub file_name: String,
    pub text: String,
}

/// Reads and checks `path` for `env`. Prints the errors and exits 2 when the
/// spec is invalid (or lacks `env`); exits 1 when it cannot be read.
pub fn check_or_exit(path: &Path, env: &str) -> LocalSpec {
    let file_name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("error: cannot read {file_name}: {e}");
            std::process::exit(exit::ERROR.into());
        }
    };
    let spec = match AppSpec::parse(&file_name, &text) {
        Ok(spec) => spec,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("error: {file_name} is invalid; nothing was sent");
            std::process::exit(exit::USAGE.into());
        }
    };
    let has_env = EnvName::parse(env).is_ok_and(|env| spec.envs.contains_key(&env));
    if !has_env {
        let known: Vec<&str> = spec.envs.keys().map(EnvName::as_str).collect();
        eprintln!(
            "error: {file_name} has no environment {env:?} (it has: {}); nothing was sent",
            known.join(", ")
        );
        std::process::exit(exit::USAGE.into());
    }
    LocalSpec { file_name, text }
}

/// `app diff`: a dry-run converge on every host, then per host what would change.
pub async fn diff(
    client: &mut Client,
    out: Output,
    spec: &LocalSpec,
    env: &str,
) -> anyhow::Result<ExitCode> {
    let d = client
        .apply_app(&spec.file_name, &spec.text, env, true)
        .await?;
    let d = wait_final(client, &d.id).await?;
    if out == Output::Json {
        output::status(out, &d);
    } else {
        for line in diff_lines(&d) {
            outln!("{line}");
        }
    }
    Ok(if d.state == "succeeded" {
        exit::code(exit::SUCCESS)
    } else {
        exit::code(exit::for_state(&d.state))
    })
}

/// What `app diff` prints for people: `HOST: CHANGE` per change, `HOST: in
/// sync`, or `HOST: FAILED: why`.
pub fn diff_lines(d: &pb::Deployment) -> Vec<String> {
    let mut lines = Vec::new();
    for h in &d.hosts {
        match h.state.as_str() {
            "succeeded" if h.changes.is_empty() => lines.push(format!("{}: in sync", h.host_id)),
            "succeeded" => lines.extend(h.changes.iter().map(|c| format!("{}: {c}", h.host_id))),
            state => lines.push(format!(
                "{}: {}: {}",
                h.host_id,
                state.to_uppercase(),
                output::clean(&h.error)
            )),
        }
    }
    lines
}

/// Follows `WatchDeployment` until the deployment ends (the stream ends
/// then), resuming after coordinator restarts, and returns its final record.
async fn wait_final(client: &mut Client, id: &str) -> anyhow::Result<pb::Deployment> {
    let mut after = 0;
    let mut failures = 0;
    loop {
        let d = client.deployment_retrying(id).await?;
        if exit::is_final(&d.state) {
            return Ok(d);
        }
        match client.watch(id, after).await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(ev)) => after = after.max(ev.seq),
                    Ok(None) => break,
                    Err(status) if transient(&status) && failures < 30 => {
                        failures += 1;
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        break;
                    }
                    Err(status) => return Err(crate::client::explain(status)),
                }
            },
            Err(status) if transient(&status) && failures < 30 => {
                failures += 1;
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(status) => return Err(crate::client::explain(status)),
        }
    }
}
