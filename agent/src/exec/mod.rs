//! Runs typed actions as `dokku` argument vectors (never through a shell) and
//! turns their output into numbered log lines. Knows Dokku's real behaviour
//! (see `../shared/dokku.md`): exit 20 means "no such app", and
//! `git:from-image` with the current image exits 1 with "No changes detected".
//! After a deploy, the optional HTTP health gate (`health`) decides the outcome.

use std::path::PathBuf;
use std::process::Stdio;

use flotilla_proto::v1 as pb;
use flotilla_shared::health::HealthCheck;
use flotilla_shared::signing::Action;
use flotilla_shared::time::now_ms;
use flotilla_shared::{AppName, EnvName, HostId, ImageRef};
use tokio::io::AsyncBufReadExt as _;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

pub mod converge;
pub mod health;
pub mod memory;
#[cfg(test)]
mod tests;

/// Carries out verified actions for the worker: `Dokku` on a real host,
/// `memory::MemoryDokku` in `simulate`.
pub trait Executor: Send + Sync + 'static {
    /// Carries out `action` (a deploy or rollback), streaming every line to
    /// `sink`, and says how it ended; `Interrupted` once `cancel` fires. Not
    /// cancel-safe by dropping: use `cancel`.
    fn execute(
        &self,
        action: &Action,
        sink: &mut (dyn LineSink + Send),
        cancel: &CancellationToken,
    ) -> impl Future<Output = pb::CommandResult> + Send;
}

impl Executor for Dokku {
    fn execute(
        &self,
        action: &Action,
        sink: &mut (dyn LineSink + Send),
        cancel: &CancellationToken,
    ) -> impl Future<Output = pb::CommandResult> + Send {
        Dokku::execute(self, action, sink, cancel)
    }
}

/// Dokku's exit code for "app does not exist".
pub const EXIT_APP_MISSING: i32 = 20;

/// Receives every output line of a command, in order.
pub trait LineSink {
    fn line(&mut self, stream: pb::Stream, line: String);
}

/// How one `dokku` invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    /// The last error line dokku wrote (` !     …`), without the marker.
    pub last_stderr: Option<String>,
    /// Dokku said "No changes detected" (same image as deployed).
    pub no_changes: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("reading dokku output failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("interrupted by agent shutdown")]
    Cancelled,
}

/// Keeps stdout lines (a query's answer); forwards nothing.
struct Capture(Vec<String>);

impl LineSink for Capture {
    fn line(&mut self, stream: pb::Stream, line: String) {
        if stream == pb::Stream::Stdout {
            self.0.push(line);
        }
    }
}

impl Dokku {
    /// Runs a read-only query (`*:report`, `*:exists`, `config:export`):
    /// its stdout lines are returned, nothing is logged (some print values).
    pub async fn query(
        &self,
        args: &[&str],
        cancel: &CancellationToken,
    ) -> Result<(Exit, Vec<String>), ExecError> {
        let mut capture = Capture(Vec::new());
        let exit = self.run(args, &mut capture, cancel).await?;
        Ok((exit, capture.0))
    }
}

/// Names of environment variables `dokku` (and every plugin it runs) must
/// not inherit: the agent's own settings and secrets (`FLOTILLA_*`,
/// `SENTRY_*`) and the variables its configuration names for secrets
/// (`password_env`, …; registered with [`hide_from_children`]).
fn hidden_env() -> Vec<std::ffi::OsString> {
    let named = HIDDEN.get().map(Vec::as_slice).unwrap_or_default();
    std::env::vars_os()
        .map(|(k, _)| k)
        .filter(|k| {
            let k = k.to_string_lossy();
            k.starts_with("FLOTILLA_") || k.starts_with("SENTRY_") || named.iter().any(|n| *n == *k)
        })
        .collect()
}

static HIDDEN: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// Keeps the variables `names` out of the environment of every `dokku` the
/// agent runs (call once, at start; later calls are ignored).
pub fn hide_from_children(names: Vec<String>) {
    let _ = HIDDEN.set(names);
}

#[derive(Debug, Clone)]
pub struct Dokku {
    /// The `dokku` executable.
    pub bin: PathBuf,
    /// This agent's host id and environment: `{host}` and `{env}` in
    /// health-check URLs.
    pub host_id: HostId,
    pub env: EnvName,
}

impl Dokku {
    /// Runs `dokku ARGS...`, forwarding each output line to `sink`. On `cancel`
    /// the process is killed and `Cancelled` returned. Not cancel-safe by
    /// dropping: use `cancel`.
    ///
    /// stdout and stderr share one pipe, so lines keep the exact order dokku
    /// wrote them in (two pipes would interleave arbitrarily). Dokku marks its
    /// error lines with ` !`, which is how lines are classed as stderr.
    pub async fn run(
        &self,
        args: &[&str],
        sink: &mut (dyn LineSink + Send),
        cancel: &CancellationToken,
    ) -> Result<Exit, ExecError> {
        let (reader, writer) = std::io::pipe()?;
        let mut command = Command::new(&self.bin);
        for name in hidden_env() {
            command.env_remove(name);
        }
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(writer.try_clone()?)
            .stderr(writer)
            // Its own process group, so cancelling kills what dokku started too.
            .process_group(0)
            .kill_on_drop(true);
        let spawned = command.spawn();
        // Close our copies of the write end, so EOF comes when dokku exits.
        drop(command);
        let mut child = spawned.map_err(|source| ExecError::Spawn {
            bin: self.bin.display().to_string(),
            source,
        })?;
        let reader =
            tokio::net::unix::pipe::Receiver::from_owned_fd(std::os::fd::OwnedFd::from(reader))?;
        let mut lines = LineReader::new(reader);
        let mut exit = Exit {
            code: None,
            last_stderr: None,
            no_changes: false,
        };
        let mut status = None;
        let mut drain_until = None;
        loop {
            let line = if let Some(deadline) = drain_until {
                // dokku exited; a process it left behind may still hold the
                // pipe open, so the rest of the output gets one bounded wait.
                tokio::select! {
                    () = cancel.cancelled() => break,
                    read = tokio::time::timeout_at(deadline, lines.next_line()) => match read {
                        Ok(line) => line?,
                        Err(_) => {
                            tracing::warn!("dokku exited but its output stayed open; stopped reading");
                            break;
                        }
                    },
                }
            } else {
                tokio::select! {
                    () = cancel.cancelled() => {
                        kill_group(&mut child).await;
                        return Err(ExecError::Cancelled);
                    }
                    exited = child.wait() => {
                        status = Some(exited?);
                        drain_until = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
                        continue;
                    }
                    line = lines.next_line() => line?,
                }
            };
            let Some(line) = line else { break };
            let stream = if line.starts_with(" !") {
                if line.contains("No changes detected") {
                    exit.no_changes = true;
                }
                exit.last_stderr = Some(line.trim_start_matches(" !").trim().to_owned());
                pb::Stream::Stderr
            } else {
                pb::Stream::Stdout
            };
            sink.line(stream, line);
        }
        let status = match status {
            Some(status) => status,
            None => tokio::select! {
                () = cancel.cancelled() => {
                    kill_group(&mut child).await;
                    return Err(ExecError::Cancelled);
                }
                status = child.wait() => status?,
            },
        };
        exit.code = status.code();
        Ok(exit)
    }

    /// `dokku apps:report APP --app-deploy-source-metadata`: the deployed image
    /// (Dokku's record of truth), or `None` if it cannot tell.
    pub async fn deployed_image(
        &self,
        app: &AppName,
        cancel: &CancellationToken,
    ) -> Option<String> {
        self.report_value(
            &["apps:report", app.as_str(), "--app-deploy-source-metadata"],
            cancel,
        )
        .await
    }

    /// `dokku domains:report APP --domains-app-vhosts` (space-separated): the
    /// app's first domain, or `None` if it has none or Dokku cannot tell.
    pub async fn first_domain(&self, app: &AppName, cancel: &CancellationToken) -> Option<String> {
        let vhosts = self
            .report_value(
                &["domains:report", app.as_str(), "--domains-app-vhosts"],
                cancel,
            )
            .await?;
        vhosts.split_whitespace().next().map(str::to_owned)
    }

    /// The first non-empty stdout line of a single-flag report, trimmed;
    /// `None` on a non-zero exit or no value.
    async fn report_value(&self, args: &[&str], cancel: &CancellationToken) -> Option<String> {
        struct Capture(Vec<String>);
        impl LineSink for Capture {
            fn line(&mut self, stream: pb::Stream, line: String) {
                if stream == pb::Stream::Stdout {
                    self.0.push(line);
                }
            }
        }
        let mut capture = Capture(Vec::new());
        let exit = self.run(args, &mut capture, cancel).await.ok()?;
        if exit.code != Some(0) {
            return None;
        }
        capture
            .0
            .into_iter()
            .map(|l| l.trim().to_owned())
            .find(|l| !l.is_empty())
    }

    /// Carries out `action`, streaming every line to `sink`, and says how it
    /// ended. `previous_image` is what Dokku reported before `git:from-image`
    /// (left empty when the app had to be created), `deployed_image` what it
    /// reports afterwards. Not cancel-safe by dropping: use `cancel`.
    pub async fn execute(
        &self,
        action: &Action,
        sink: &mut (dyn LineSink + Send),
        cancel: &CancellationToken,
    ) -> pb::CommandResult {
        if let Action::Converge {
            desired,
            secrets,
            dry_run,
            ..
        } = action
        {
            return self
                .converge(desired, secrets, *dry_run, sink, cancel)
                .await;
        }
        // A ping is answered by the link, never queued; kept harmless here.
        let Some((app, image, health)) = action.install() else {
            return succeeded(None);
        };
        let mut previous = None;
        let mut result = match self
            .deploy_image(app, image, &mut previous, sink, cancel)
            .await
        {
            Ok(mut result) => {
                if let Some(check) = health
                    && result.outcome == i32::from(pb::Outcome::Succeeded)
                {
                    match self.health_gate(app, check, sink, cancel).await {
                        health::Verdict::Healthy { .. } => {}
                        health::Verdict::Failed(verdict) => {
                            // The new image runs but is unhealthy: the
                            // coordinator decides about rolling back.
                            result.outcome = pb::Outcome::Failed.into();
                            result.error = verdict;
                        }
                        health::Verdict::Cancelled => {
                            let mut result = interrupted();
                            result.error = "interrupted: the agent shut down during the health \
                                check; the new image is deployed, its health is unknown"
                                .into();
                            result.previous_image = previous.unwrap_or_default();
                            return result;
                        }
                    }
                }
                if let Some(deployed) = self.deployed_image(app, cancel).await {
                    result.deployed_image = deployed;
                }
                result
            }
            Err(ExecError::Cancelled) => interrupted(),
            Err(e) => failed(None, e.to_string()),
        };
        result.previous_image = previous.unwrap_or_default();
        result
    }

    /// Expands the check's URL for this host (`{domain}`: the app's first
    /// Dokku domain) and runs the HTTP health gate.
    async fn health_gate(
        &self,
        app: &AppName,
        check: &HealthCheck,
        sink: &mut (dyn LineSink + Send),
        cancel: &CancellationToken,
    ) -> health::Verdict {
        let domain = if check.needs_domain() {
            match self.first_domain(app, cancel).await {
                Some(domain) => Some(domain),
                None if cancel.is_cancelled() => return health::Verdict::Cancelled,
                None => {
                    let verdict = format!(
                        "health check failed: its URL {} needs {{domain}}, but \
                         `dokku domains:report {app} --domains-app-vhosts` lists no domain",
                        health::redact(&check.url_template)
                    );
                    sink.line(pb::Stream::Agent, verdict.clone());
                    return health::Verdict::Failed(verdict);
                }
            }
        } else {
            None
        };
        let url = check.url(
            app.as_str(),
            self.env.as_str(),
            self.host_id.as_str(),
            domain.as_deref(),
        );
        health::gate(check, &url, sink, cancel).await
    }

    /// `apps:exists` (creating the app when missing), then `git:from-image`.
    /// Sets `previous` to the deployed image before deploying, if the app existed.
    async fn deploy_image(
        &self,
        app: &AppName,
        image: &ImageRef,
        previous: &mut Option<String>,
        sink: &mut (dyn LineSink + Send),
        cancel: &CancellationToken,
    ) -> Result<pb::CommandResult, ExecError> {
        let exists = self
            .logged(&["apps:exists", app.as_str()], sink, cancel)
            .await?;
        match exists.code {
            Some(0) => *previous = self.deployed_image(app, cancel).await,
            Some(EXIT_APP_MISSING) => {
                let created = self
                    .logged(&["apps:create", app.as_str()], sink, cancel)
                    .await?;
                if created.code != Some(0) {
                    return Ok(failed(created.code, describe("apps:create", &created)));
                }
            }
            _ => return Ok(failed(exists.code, describe("apps:exists", &exists))),
        }
        let deploy = self
            .logged(
                &["git:from-image", app.as_str(), image.as_str()],
                sink,
                cancel,
            )
            .await?;
        if deploy.code == Some(0) {
            return Ok(succeeded(deploy.code));
        }
        if deploy.no_changes {
            // Dokku ≥ 0.29.3 exits 1 when the image is already the deployed one.
            let current = self.deployed_image(app, cancel).await;
            if current.as_deref() == Some(image.as_str()) {
                sink.line(
                    pb::Stream::Agent,
                    format!("{app} is already at {image}; nothing to deploy"),
                );
                return Ok(succeeded(deploy.code));
            }
        }
        Ok(failed(deploy.code, describe("git:from-image", &deploy)))
    }

    /// Runs one dokku command, announcing it and its exit code as agent lines.
    async fn logged(
        &self,
        args: &[&str],
        sink: &mut (dyn LineSink + Send),
        cancel: &CancellationToken,
    ) -> Result<Exit, ExecError> {
        sink.line(pb::Stream::Agent, format!("$ dokku {}", args.join(" ")));
        let exit = self.run(args, sink, cancel).await?;
        if exit.code != Some(0) {
            sink.line(
                pb::Stream::Agent,
                match exit.code {
                    Some(code) => format!("dokku {} exited with {code}", args[0]),
                    None => format!("dokku {} was killed by a signal", args[0]),
                },
            );
        }
        Ok(exit)
    }
}

/// Longest line kept; longer ones are cut while reading, so a runaway line
/// cannot exhaust memory or the spool.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// How long output is still read after dokku exits.
const DRAIN_AFTER_EXIT: std::time::Duration = std::time::Duration::from_secs(2);

/// SIGKILL to dokku's whole process group, then reap it.
async fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill().await;
}

/// Splits output into lines of at most `MAX_LINE_BYTES` (the excess is dropped
/// and the line marked), never buffering more than that per line.
struct LineReader<R> {
    inner: tokio::io::BufReader<R>,
    line: Vec<u8>,
    overflow: bool,
}

impl<R: tokio::io::AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner: tokio::io::BufReader::new(inner),
            line: Vec::new(),
            overflow: false,
        }
    }

    /// The next line without its line ending; `None` at the end. Cancel-safe:
    /// a partly read line stays in `self`.
    async fn next_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            let buf = self.inner.fill_buf().await?;
            if buf.is_empty() {
                if self.line.is_empty() && !self.overflow {
                    return Ok(None);
                }
                return Ok(Some(self.take()));
            }
            let newline = buf.iter().position(|&b| b == b'\n');
            let chunk = &buf[..newline.unwrap_or(buf.len())];
            let room = MAX_LINE_BYTES.saturating_sub(self.line.len());
            if chunk.len() > room {
                self.overflow = true;
            }
            self.line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let used = newline.map_or(buf.len(), |i| i + 1);
            self.inner.consume(used);
            if newline.is_some() {
                return Ok(Some(self.take()));
            }
        }
    }

    fn take(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end_matches('\r');
        // Progress bars redraw with `\r`: keep what a terminal would show, so no
        // line ever carries a `\r` (log viewers split on it, too).
        let mut line = text.rsplit('\r').next().unwrap_or_default().to_owned();
        if self.overflow {
            line.push_str(" …[line truncated]");
        }
        self.line.clear();
        self.overflow = false;
        line
    }
}

fn describe(what: &str, exit: &Exit) -> String {
    let code = exit.code.map_or_else(
        || "was killed by a signal".to_owned(),
        |c| format!("exited with {c}"),
    );
    match &exit.last_stderr {
        Some(msg) => format!("dokku {what} {code}: {msg}"),
        None => format!("dokku {what} {code}"),
    }
}

fn succeeded(code: Option<i32>) -> pb::CommandResult {
    pb::CommandResult {
        outcome: pb::Outcome::Succeeded.into(),
        exit_code: code,
        ..Default::default()
    }
}

fn failed(code: Option<i32>, error: String) -> pb::CommandResult {
    pb::CommandResult {
        outcome: pb::Outcome::Failed.into(),
        exit_code: code,
        error,
        ..Default::default()
    }
}

fn interrupted() -> pb::CommandResult {
    pb::CommandResult {
        outcome: pb::Outcome::Interrupted.into(),
        exit_code: None,
        error: "interrupted: the agent shut down while dokku ran; it was not re-run".into(),
        ..Default::default()
    }
}

/// A sink that numbers lines per command and timestamps them.
pub struct Numbered<F: FnMut(pb::LogLine)> {
    next_seq: u64,
    emit: F,
}

impl<F: FnMut(pb::LogLine)> Numbered<F> {
    pub fn new(emit: F) -> Self {
        Self { next_seq: 0, emit }
    }
}

impl<F: FnMut(pb::LogLine)> LineSink for Numbered<F> {
    fn line(&mut self, stream: pb::Stream, line: String) {
        let seq = self.next_seq;
        self.next_seq += 1;
        (self.emit)(pb::LogLine {
            seq,
            stream: stream.into(),
            line,
            at_ms: now_ms(),
        });
    }
}
