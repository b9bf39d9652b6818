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

    /// Annotations for failed hosts and the step summary.
    pub fn finish(&mut self, d: &pb::Deployment) {
        self.end_group();
        for h in d.hosts.iter().filter(|h| h.state == "failed") {
            crate::output::outln!(
                "::error title={}::{}",
                escape_property(&format!("{} of {} failed on {}", d.kind, d.app, h.host_id)),
                escape_data(&h.error)
            );
        }
        if let Some(path) = &self.summary_path
            && let Err(e) = append(path, &summary(d))
        {
            eprintln!("warning: cannot write the GitHub step summary: {e}");
        }
    }
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
    let icon = if d.state == "succeeded" { "✅" } else { "❌" };
    let mut md = format!(
        "### {icon} Flotilla {}: `{}` → `{}` in `{}`: {}\n\n",
        d.kind,
        md_cell(&d.app),
        md_cell(&d.image),
        md_cell(&d.env),
        d.state
    );
    md.push_str("| host | state | exit | image | error |\n|---|---|---|---|---|\n");
    for h in &d.hosts {
        let exit = h.exit_code.map(|c| c.to_string()).unwrap_or_default();
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            md_cell(&h.host_id),
            md_cell(&h.state),
            exit,
            md_cell(&h.image),
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

    #[test]
    fn summary_is_a_markdown_table() {
        let d = pb::Deployment {
            id: "d1".into(),
            app: "shop".into(),
            env: "prod".into(),
            kind: "deploy".into(),
            state: "failed".into(),
            image: "acme/shop:2".into(),
            hosts: vec![pb::HostDeployment {
                host_id: "web-1".into(),
                state: "failed".into(),
                image: "acme/shop:1".into(),
                exit_code: Some(1),
                error: "checks | failed".into(),
                command_id: String::new(),
            }],
            ..Default::default()
        };
        let md = summary(&d);
        assert!(
            md.contains("❌ Flotilla deploy: `shop` → `acme/shop:2` in `prod`: failed"),
            "{md}"
        );
        assert!(
            md.contains("| web-1 | failed | 1 | acme/shop:1 | checks \\| failed |"),
            "{md}"
        );
    }
}
