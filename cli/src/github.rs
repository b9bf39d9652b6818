//! GitHub Actions output for `deploy --wait` / `rollback --wait`: one log group
//! per host, an error annotation per failed host, and a step summary. Active
//! only when `GITHUB_ACTIONS=true` (set by the runner).

use std::io::Write as _;

use flotilla_proto::v1 as pb;

pub struct Actions {
    summary_path: Option<std::path::PathBuf>,
    open_group: Option<String>,
    /// Workflow commands are switched off (`::stop-commands::TOKEN`) while
    /// dokku output streams, so no line of it can act as a command.
    stop_token: String,
    stopped: bool,
}

impl Actions {
    /// `Some` when running under GitHub Actions.
    pub fn detect() -> Option<Self> {
        (std::env::var("GITHUB_ACTIONS").as_deref() == Ok("true")).then(|| Self {
            summary_path: std::env::var_os("GITHUB_STEP_SUMMARY").map(Into::into),
            open_group: None,
            // Random, so dokku output cannot guess it and turn commands back on.
            stop_token: flotilla_shared::token::random_secret()
                .unwrap_or_else(|_| format!("flotilla-{}", std::process::id())),
            stopped: false,
        })
    }

    /// Called before each streamed line: opens a group when the host changes,
    /// then makes sure workflow commands are off while dokku's line prints.
    pub fn before_line(&mut self, host: &str) {
        if self.open_group.as_deref() != Some(host) {
            self.end_group();
            crate::output::outln!(
                "::group::{}",
                escape_data(&format!("Dokku output on {host}"))
            );
            self.open_group = Some(host.to_owned());
        }
        if !self.stopped {
            crate::output::outln!("::stop-commands::{}", self.stop_token);
            self.stopped = true;
        }
    }

    /// Turns workflow commands back on and closes the open group.
    pub fn end_group(&mut self) {
        if self.stopped {
            crate::output::outln!("::{}::", self.stop_token);
            self.stopped = false;
        }
        if self.open_group.take().is_some() {
            crate::output::outln!("::endgroup::");
        }
    }

    /// Annotations (failed hosts, and how the deployment ended) and the step summary.
    pub fn finish(&mut self, d: &pb::Deployment) {
        self.end_group();
        for line in annotations(d) {
            crate::output::outln!("{line}");
        }
        if let Some(path) = &self.summary_path
            && let Err(e) = append(path, &summary(d))
        {
            eprintln!("warning: cannot write the GitHub step summary: {e}");
        }
    }
}

/// `::error` per failed host, then one for the deployment when it did not
/// succeed (a `::warning` when cancelled, a `::notice` while it awaits promotion).
pub fn annotations(d: &pb::Deployment) -> Vec<String> {
    let mut lines = Vec::new();
    for h in &d.hosts {
        let what = match h.state.as_str() {
            "failed" => "failed",
            "interrupted" => "was interrupted",
            "rollback_failed" => "could not be rolled back",
            _ => continue,
        };
        lines.push(format!(
            "::error title={}::{}",
            escape_property(&format!("{} of {} {what} on {}", d.kind, d.app, h.host_id)),
            escape_data(&h.error)
        ));
    }
    let whole = |level: &str, what: &str, message: &str| {
        format!(
            "::{level} title={}::{}",
            escape_property(&format!("{} of {} in {} {what}", d.kind, d.app, d.env)),
            escape_data(message)
        )
    };
    let reason = if d.error.is_empty() {
        d.state.as_str()
    } else {
        d.error.as_str()
    };
    match d.state.as_str() {
        "rolled_back" => lines.push(whole("error", "was rolled back", reason)),
        "cancelled" => lines.push(whole("warning", "was cancelled", reason)),
        "failed" if !d.error.is_empty() => lines.push(whole("error", "failed", reason)),
        "awaiting_promotion" => lines.push(whole(
            "notice",
            "awaits promotion",
            &format!(
                "the canary batch is done; go on with `flotilla promote {}`",
                d.id
            ),
        )),
        _ => {}
    }
    lines
}

fn append(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// Markdown for `$GITHUB_STEP_SUMMARY`.
pub fn summary(d: &pb::Deployment) -> String {
    let icon = match d.state.as_str() {
        "succeeded" => "✅",
        "cancelled" => "⏹️",
        "awaiting_promotion" => "⏸️",
        _ => "❌",
    };
    let mut md = format!(
        "### {icon} Flotilla {}: `{}` → `{}` in `{}`: {}\n\n",
        d.kind,
        md_cell(&d.app),
        md_cell(&d.image),
        md_cell(&d.env),
        d.state
    );
    if !d.error.is_empty() {
        md.push_str(&format!("Reason: {}\n\n", md_cell(&d.error)));
    }
    if d.batches > 0 {
        md.push_str(&format!(
            "{}, {} failure{}{}\n\n",
            crate::output::batch_text(
                d.current_batch,
                d.batches,
                d.strategy.as_ref().is_some_and(|s| s.canary > 0)
            ),
            d.failures,
            if d.failures == 1 { "" } else { "s" },
            if d.release > 0 {
                format!(", release v{}", d.release)
            } else {
                String::new()
            }
        ));
    }
    // `image` (after) stays the fourth column: scripts that grep the table keep working.
    md.push_str(
        "| host | state | exit | image | before | batch | duration | error |\n|---|---|---|---|---|---|---|---|\n",
    );
    for h in &d.hosts {
        let exit = h.exit_code.map(|c| c.to_string()).unwrap_or_default();
        let batch = if d.batches > 0 {
            (h.batch + 1).to_string()
        } else {
            String::new()
        };
        let duration = crate::output::host_duration_ms(h, 0)
            .map(crate::output::duration_text)
            .unwrap_or_default();
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            md_cell(&h.host_id),
            md_cell(&h.state),
            exit,
            md_cell(&h.image),
            md_cell(&h.image_before),
            batch,
            duration,
            md_cell(&h.error)
        ));
    }
    md.push_str(&format!("\nDeployment `{}`\n\n", d.id));
    md
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// Workflow-command message escaping (GitHub's `escapeData`).
fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// Workflow-command property escaping (GitHub's `escapeProperty`).
fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_the_runner() {
        assert_eq!(escape_data("a%b\nc\rd"), "a%25b%0Ac%0Dd");
        assert_eq!(escape_property("x: y, z"), "x%3A y%2C z");
    }

    fn failed_deployment() -> pb::Deployment {
        pb::Deployment {
            id: "d1".into(),
            app: "shop".into(),
            env: "prod".into(),
            kind: "deploy".into(),
            state: "rolled_back".into(),
            image: "acme/shop:2".into(),
            error: "web-2 failed; rolled back".into(),
            batches: 2,
            current_batch: 1,
            failures: 1,
            hosts: vec![
                pb::HostDeployment {
                    host_id: "web-1".into(),
                    state: "rolled_back".into(),
                    image: "acme/shop:1".into(),
                    image_before: "acme/shop:1".into(),
                    exit_code: Some(0),
                    batch: 0,
                    started_at_ms: 1_000,
                    finished_at_ms: 5_100,
                    ..Default::default()
                },
                pb::HostDeployment {
                    host_id: "web-2".into(),
                    state: "failed".into(),
                    image: "acme/shop:1".into(),
                    image_before: "acme/shop:1".into(),
                    exit_code: Some(1),
                    error: "checks | failed".into(),
                    batch: 1,
                    ..Default::default()
                },
                pb::HostDeployment {
                    host_id: "web-3".into(),
                    state: "rollback_failed".into(),
                    error: "agent\noffline".into(),
                    batch: 1,
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn summary_is_a_markdown_table() {
        let md = summary(&failed_deployment());
        assert!(
            md.contains("❌ Flotilla deploy: `shop` → `acme/shop:2` in `prod`: rolled_back"),
            "{md}"
        );
        assert!(md.contains("Reason: web-2 failed; rolled back"), "{md}");
        assert!(md.contains("batch 2/2, 1 failure"), "{md}");
        assert!(
            md.contains("| web-1 | rolled_back | 0 | acme/shop:1 | acme/shop:1 | 1 | 4.1s |  |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| web-2 | failed | 1 | acme/shop:1 | acme/shop:1 | 2 |  | checks \\| failed |"
            ),
            "{md}"
        );
    }

    #[test]
    fn annotations_name_each_failed_host_and_the_outcome() {
        assert_eq!(
            annotations(&failed_deployment()),
            [
                "::error title=deploy of shop failed on web-2::checks | failed",
                "::error title=deploy of shop could not be rolled back on web-3::agent%0Aoffline",
                "::error title=deploy of shop in prod was rolled back::web-2 failed; rolled back",
            ]
        );
        let cancelled = pb::Deployment {
            state: "cancelled".into(),
            hosts: vec![],
            error: "cancelled by ops".into(),
            ..failed_deployment()
        };
        assert_eq!(
            annotations(&cancelled),
            ["::warning title=deploy of shop in prod was cancelled::cancelled by ops"]
        );
        let ok = pb::Deployment {
            state: "succeeded".into(),
            hosts: vec![],
            error: String::new(),
            ..failed_deployment()
        };
        assert!(annotations(&ok).is_empty());
    }
}
