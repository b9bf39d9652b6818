//! The `converge` command (docs/apps.md): read the app's current state on
//! this host with single-flag queries, diff it against the desired state
//! (`appspec::diff`), apply each change with `--no-restart` where Dokku has
//! it, then one `ps:restart` if any change needs it — checking its exit code,
//! because `config:set` without `--no-restart` exits 0 even when its restart
//! fails (dokku.md §9). A dry run only reads and reports.
//!
//! Secret values exist only in the verified command: every line this module
//! emits (dokku's own output included: `config:set` prints values) and every
//! error goes through [`Redactor`] first, and reads that print values
//! (`config:export`) never reach the sink at all.

use std::collections::{BTreeMap, BTreeSet};

use flotilla_proto::v1 as pb;
use flotilla_shared::appspec::{
    Change, CurrentLetsEncrypt, CurrentService, CurrentState, DesiredState, diff, needs_restart,
};
use flotilla_shared::secret::Secret;
use flotilla_shared::{AppName, ConfigKey};
use tokio_util::sync::CancellationToken;

use super::{Dokku, EXIT_APP_MISSING, ExecError, Exit, LineSink, describe, failed, interrupted};

/// Replaces every secret value of one command with `***`.
pub struct Redactor {
    /// Longest first, so a value containing another is replaced whole.
    values: Vec<String>,
}

impl Redactor {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut values: Vec<String> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            // A multi-line value (a PEM key) reaches a sink line by line:
            // each line of it is a value too (short ones would mangle text).
            .flat_map(|v| {
                let mut parts = vec![v.to_owned()];
                if v.contains(['\n', '\r']) {
                    parts.extend(
                        v.split(['\n', '\r'])
                            .map(str::trim)
                            .filter(|p| p.len() >= 6)
                            .map(str::to_owned),
                    );
                }
                parts
            })
            .collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self { values }
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), "***");
            }
        }
        redact_url_passwords(&out)
    }
}

/// `scheme://user:password@host` → `scheme://user:***@host`: service links
/// (`DATABASE_URL=postgres://postgres:PASSWORD@dokku-postgres-…`) carry
/// passwords the command itself does not know.
fn redact_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first `/`, whitespace or quote.
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..=colon]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// A sink that redacts every line before passing it on (to numbering,
/// spooling, Loki and the coordinator).
struct Redacting<'a> {
    inner: &'a mut (dyn LineSink + Send),
    redactor: &'a Redactor,
}

impl LineSink for Redacting<'_> {
    fn line(&mut self, stream: pb::Stream, line: String) {
        let line = self.redactor.redact(&line);
        self.inner.line(stream, line);
    }
}

/// Why reading or applying stopped.
enum Stop {
    Failed { code: Option<i32>, error: String },
    Cancelled,
}

impl From<ExecError> for Stop {
    fn from(e: ExecError) -> Self {
        match e {
            ExecError::Cancelled => Self::Cancelled,
            e => Self::Failed {
                code: None,
                error: e.to_string(),
            },
        }
    }
}

impl Dokku {
    /// Carries out a converge command; see the module docs.
    pub async fn converge(
        &self,
        desired: &DesiredState,
        secrets: &BTreeMap<ConfigKey, Secret>,
        dry_run: bool,
        sink: &mut (dyn LineSink + Send),
        cancel: &CancellationToken,
    ) -> pb::CommandResult {
        let redactor = Redactor::new(secrets.values().map(Secret::expose));
        let mut sink = Redacting {
            inner: sink,
            redactor: &redactor,
        };
        let app = &desired.app;
        let current = match self.current_state(desired, cancel).await {
            Ok(current) => current,
            Err(Stop::Cancelled) => return interrupted(),
            Err(Stop::Failed { code, error }) => {
                let error = redactor.redact(&format!("reading the current state: {error}"));
                sink.line(pb::Stream::Agent, error.clone());
                return failed(code, error);
            }
        };
        let changes = diff(desired, secrets, &current);
        let listed: Vec<String> = changes.iter().map(ToString::to_string).collect();
        if changes.is_empty() {
            sink.line(
                pb::Stream::Agent,
                format!("{app} is in sync: nothing to change"),
            );
            return with_changes(super::succeeded(None), listed);
        }
        if dry_run {
            for change in &listed {
                sink.line(pb::Stream::Agent, format!("would {change}"));
            }
            sink.line(
                pb::Stream::Agent,
                format!(
                    "{} change(s) found (dry run: nothing changed)",
                    listed.len()
                ),
            );
            return with_changes(super::succeeded(None), listed);
        }
        // A link whose variable is already taken (by hand, or by another
        // service's link) would make the plugin pick `DOKKU_<PLUGIN>_<COLOR>_URL`
        // instead, and the app would keep using the old value: refuse first.
        for change in &changes {
            if let Change::LinkService {
                kind,
                name,
                variable,
                ..
            } = change
                && let Some(value) = current.config.get(variable.as_str())
                && !value.contains(&format!("@dokku-{}-{}", kind.plugin(), name))
            {
                let error = format!(
                    "{variable} is already set on {app} by something else than the {} service {name}; \
                     linking would make the plugin use another variable. Unset it (or give the link an alias) and apply again",
                    kind.plugin()
                );
                sink.line(pb::Stream::Agent, error.clone());
                return with_changes(failed(None, error), listed);
            }
        }
        // A new app: create it first, then read the state again, because
        // `apps:create` may already have given it domains (a global domain
        // makes `APP.GLOBAL`) the first diff could not see.
        let mut changes = changes;
        let mut listed = listed;
        if matches!(changes.first(), Some(Change::CreateApp)) {
            sink.line(pb::Stream::Agent, Change::CreateApp.to_string());
            match self.apply(app, &Change::CreateApp, &mut sink, cancel).await {
                Ok(_) => {}
                Err(Stop::Cancelled) => return with_changes(interrupted(), listed),
                Err(Stop::Failed { code, error }) => {
                    return with_changes(failed(code, redactor.redact(&error)), listed);
                }
            }
            match self.current_state(desired, cancel).await {
                Ok(current) => {
                    changes = diff(desired, secrets, &current);
                    listed = std::iter::once(Change::CreateApp.to_string())
                        .chain(changes.iter().map(ToString::to_string))
                        .collect();
                }
                Err(Stop::Cancelled) => return with_changes(interrupted(), listed),
                Err(Stop::Failed { code, error }) => {
                    let error = redactor.redact(&format!("reading the new app's state: {error}"));
                    return with_changes(failed(code, error), listed);
                }
            }
        }
        let mut last_code = None;
        let mut applied: Vec<&Change> = Vec::new();
        for change in &changes {
            sink.line(pb::Stream::Agent, change.to_string());
            match self.apply(app, change, &mut sink, cancel).await {
                Ok(code) => {
                    last_code = code;
                    applied.push(change);
                }
                Err(Stop::Cancelled) => return with_changes(interrupted(), listed),
                Err(Stop::Failed { code, error }) => {
                    let mut error = redactor.redact(&error);
                    // Config or links already changed: restart anyway, or
                    // the app would keep running with the old environment
                    // while the host looks converged to the next diff.
                    if applied.iter().any(|c| c.requires_restart()) {
                        let restarted = self
                            .logged(&["ps:restart", app.as_str()], &mut sink, cancel)
                            .await;
                        let outcome = match restarted {
                            Ok(exit) if exit.code == Some(0) => {
                                "the app was restarted with the changes made so far".to_owned()
                            }
                            Ok(exit) => redactor.redact(&describe("ps:restart", &exit)),
                            Err(e) => redactor.redact(&e.to_string()),
                        };
                        error = format!("{error} ({outcome})");
                    }
                    return with_changes(failed(code, error), listed);
                }
            }
        }
        if needs_restart(&changes) {
            // The one restart: config and links were all set with --no-restart.
            match self
                .logged(&["ps:restart", app.as_str()], &mut sink, cancel)
                .await
            {
                Ok(exit) if exit.code == Some(0) => last_code = exit.code,
                Ok(exit) => {
                    let error = redactor.redact(&describe("ps:restart", &exit));
                    return with_changes(failed(exit.code, error), listed);
                }
                Err(ExecError::Cancelled) => return with_changes(interrupted(), listed),
                Err(e) => {
                    return with_changes(failed(None, redactor.redact(&e.to_string())), listed);
                }
            }
        }
        sink.line(
            pb::Stream::Agent,
            format!("{} change(s) applied to {app}", listed.len()),
        );
        with_changes(super::succeeded(last_code), listed)
    }

    /// Reads what `diff` compares, with single-flag queries whose output is
    /// parsed, never forwarded (`config:export` prints every value).
    async fn current_state(
        &self,
        desired: &DesiredState,
        cancel: &CancellationToken,
    ) -> Result<CurrentState, Stop> {
        let app = desired.app.as_str();
        let mut current = CurrentState::default();
        let (exists, _) = self.query(&["apps:exists", app], cancel).await?;
        current.app_exists = match exists.code {
            Some(0) => true,
            Some(EXIT_APP_MISSING) => false,
            _ => return Err(failure("apps:exists", &exists)),
        };
        for s in &desired.services {
            let plugin = s.kind.plugin();
            let (exists, _) = self
                .query(
                    &[format!("{plugin}:exists").as_str(), s.name.as_str()],
                    cancel,
                )
                .await?;
            let exists = exists.code == Some(0);
            let linked = exists
                && current.app_exists
                && self
                    .query(
                        &[format!("{plugin}:linked").as_str(), s.name.as_str(), app],
                        cancel,
                    )
                    .await?
                    .0
                    .code
                    == Some(0);
            current.services.push(CurrentService {
                kind: s.kind,
                name: s.name.clone(),
                exists,
                linked,
            });
        }
        if !current.app_exists {
            return Ok(current);
        }
        let (exit, lines) = self
            .query(&["domains:report", app, "--domains-app-vhosts"], cancel)
            .await?;
        if exit.code != Some(0) {
            return Err(failure("domains:report", &exit));
        }
        current.domains = lines
            .iter()
            .flat_map(|l| l.split_whitespace())
            .map(str::to_owned)
            .collect::<BTreeSet<_>>();
        let (exit, lines) = self
            .query(&["config:export", app, "--format", "json"], cancel)
            .await?;
        if exit.code != Some(0) {
            return Err(failure("config:export", &exit));
        }
        current.config = serde_json::from_str(&lines.join("\n")).map_err(|e| Stop::Failed {
            code: exit.code,
            error: format!("dokku config:export printed no JSON object of strings: {e}"),
        })?;
        if desired.letsencrypt.is_some() {
            current.letsencrypt = self.current_letsencrypt(app, &current, cancel).await?;
        }
        Ok(current)
    }

    async fn current_letsencrypt(
        &self,
        app: &str,
        current: &CurrentState,
        cancel: &CancellationToken,
    ) -> Result<CurrentLetsEncrypt, Stop> {
        let (exit, lines) = self.query(&["letsencrypt:active", app], cancel).await?;
        if exit.code != Some(0) {
            return Err(failure("letsencrypt:active", &exit));
        }
        let active = first(&lines).as_deref() == Some("true");
        // The app's own property (plugin 0.20+); before that the plugin read
        // config DOKKU_LETSENCRYPT_EMAIL (dokku.md §7).
        let (exit, lines) = self
            .query(&["letsencrypt:report", app, "--letsencrypt-email"], cancel)
            .await?;
        let email = if exit.code == Some(0) {
            first(&lines)
        } else {
            current.config.get("DOKKU_LETSENCRYPT_EMAIL").cloned()
        }
        .filter(|e| !e.is_empty());
        let (exit, lines) = self.query(&["letsencrypt:cron-job"], cancel).await?;
        let auto_renew = exit.code == Some(0)
            && lines
                .iter()
                .any(|l| l.contains("cron job is enabled") && !l.contains("not enabled"));
        // What the installed certificate covers (a re-issue that failed
        // earlier leaves domains the certificate misses).
        let certificate_hosts = if active {
            let (exit, lines) = self
                .query(&["certs:report", app, "--ssl-hostnames"], cancel)
                .await?;
            (exit.code == Some(0)).then(|| {
                lines
                    .iter()
                    .flat_map(|l| l.split_whitespace())
                    .map(str::to_owned)
                    .collect()
            })
        } else {
            None
        };
        Ok(CurrentLetsEncrypt {
            active,
            email,
            auto_renew,
            certificate_hosts,
        })
    }

    /// Applies one change; the exit code of its (last) dokku command.
    async fn apply(
        &self,
        app: &AppName,
        change: &Change,
        sink: &mut (dyn LineSink + Send),
        cancel: &CancellationToken,
    ) -> Result<Option<i32>, Stop> {
        let app = app.as_str();
        let args: Vec<String> = match change {
            Change::CreateApp => vec!["apps:create".into(), app.into()],
            Change::CreateService { kind, name } => {
                vec![format!("{}:create", kind.plugin()), name.to_string()]
            }
            Change::LinkService {
                kind, name, alias, ..
            } => {
                let mut args = vec![
                    format!("{}:link", kind.plugin()),
                    name.to_string(),
                    app.into(),
                ];
                if let Some(alias) = alias {
                    args.extend(["-a".into(), alias.to_string()]);
                }
                args.push("--no-restart".into());
                args
            }
            Change::UnsetConfig { key } => {
                vec![
                    "config:unset".into(),
                    "--no-restart".into(),
                    app.into(),
                    key.clone(),
                ]
            }
            Change::SetConfig { key, value } => vec![
                "config:set".into(),
                "--no-restart".into(),
                app.into(),
                format!("{key}={}", value.expose()),
            ],
            Change::AddDomain(d) => vec!["domains:add".into(), app.into(), d.to_string()],
            Change::RemoveDomain(d) => vec!["domains:remove".into(), app.into(), d.clone()],
            Change::SetLetsEncryptEmail(email) => {
                let args = ["letsencrypt:set", app, "email", email.as_str()];
                let exit = self.logged(&args, sink, cancel).await?;
                if exit.code == Some(0) {
                    return Ok(exit.code);
                }
                if !exit
                    .last_stderr
                    .as_deref()
                    .is_some_and(|e| e.contains("is not a dokku command"))
                {
                    return Err(failure("letsencrypt:set", &exit));
                }
                // Plugin before 0.20.0: the e-mail is a config variable.
                vec![
                    "config:set".into(),
                    "--no-restart".into(),
                    app.into(),
                    format!("DOKKU_LETSENCRYPT_EMAIL={email}"),
                ]
            }
            Change::EnableLetsEncrypt { force } => {
                let mut args = vec!["letsencrypt:enable".into(), app.into()];
                if *force {
                    args.push("--force".into());
                }
                args
            }
            Change::AddLetsEncryptCron => vec!["letsencrypt:cron-job".into(), "--add".into()],
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // `config:set` and service links print the values they set (links:
        // the service's password in its URL): their output is not forwarded
        // (the change line above says what happened); a failure still shows
        // dokku's error line, redacted by the caller.
        let prints_values = matches!(
            change,
            Change::SetConfig { .. } | Change::LinkService { .. }
        ) || args.first() == Some(&"config:set");
        let exit = if prints_values {
            sink.line(
                pb::Stream::Agent,
                format!(
                    "$ dokku {} (output not shown: it prints values)",
                    shown(&args)
                ),
            );
            self.query(&args, cancel).await?.0
        } else {
            self.logged(&args, sink, cancel).await?
        };
        if exit.code != Some(0) {
            return Err(failure(args[0], &exit));
        }
        Ok(exit.code)
    }
}

/// A command line for the log with `KEY=value` arguments as `KEY=***`.
fn shown(args: &[&str]) -> String {
    args.iter()
        .map(|a| match a.split_once('=') {
            Some((k, _)) if !k.starts_with('-') => format!("{k}=***"),
            _ => (*a).to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn first(lines: &[String]) -> Option<String> {
    lines
        .iter()
        .map(|l| l.trim())
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

fn failure(what: &str, exit: &Exit) -> Stop {
    Stop::Failed {
        code: exit.code,
        error: describe(what, exit),
    }
}

fn with_changes(mut result: pb::CommandResult, changes: Vec<String>) -> pb::CommandResult {
    result.changes = changes;
    result
}

#[cfg(test)]
mod tests {
    use super::Redactor;

    #[test]
    fn redacts_url_passwords_and_every_line_of_multi_line_secrets() {
        let r = Redactor::new(["-----BEGIN KEY-----\nAAAAbbbbCCCCdddd\nEEEE\n-----END KEY-----"]);
        assert_eq!(
            r.redact("       API_KEY:  AAAAbbbbCCCCdddd"),
            "       API_KEY:  ***"
        );
        // "EEEE" is too short to be redacted alone (it would mangle text).
        assert_eq!(r.redact("EEEE"), "EEEE");
        assert_eq!(
            r.redact("DATABASE_URL: postgres://postgres:pw9x@dokku-postgres-db:5432/db and redis://:rpw@dokku-redis-c:6379"),
            "DATABASE_URL: postgres://postgres:***@dokku-postgres-db:5432/db and redis://:***@dokku-redis-c:6379"
        );
        assert_eq!(
            r.redact("see https://example.com/x"),
            "see https://example.com/x"
        );
        assert_eq!(
            super::shown(&["config:set", "--no-restart", "web", "K=v"]),
            "config:set --no-restart web K=***"
        );
    }

    #[test]
    fn redacts_every_value_longest_first() {
        let r = Redactor::new(["s3cr3t", "s3cr3t-and-more", ""]);
        assert_eq!(
            r.redact("       API_KEY:  s3cr3t-and-more and s3cr3t"),
            "       API_KEY:  *** and ***"
        );
        assert_eq!(r.redact("nothing here"), "nothing here");
    }
}
