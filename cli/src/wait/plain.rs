//! `--wait` without a terminal (CI, pipes, `--output json`): one line per
//! event, each log line prefixed with its host, and under GitHub Actions a
//! log group per host.

use flotilla_proto::v1 as pb;

use super::tracker::Tracker;
use crate::Output;
use crate::github::Actions;
use crate::output::{self, batch_text, clean, clock, duration_text, outln};

/// The line for one event, after the tracker has applied it. The
/// coordinator's message is used where it says more than the event's kind.
pub fn event_line(t: &Tracker, ev: &pb::DeploymentEvent) -> String {
    let msg = clean(&ev.message);
    // The message, or `fallback` when there is none.
    let msg_or = |fallback: &str| {
        if msg.is_empty() {
            fallback.to_owned()
        } else {
            msg.clone()
        }
    };
    let host = clean(&ev.host_id);
    let took = || {
        t.phase_ms(&ev.host_id, ev.at_ms)
            .map(|ms| format!(" ({})", duration_text(ms)))
            .unwrap_or_default()
    };
    let text = match ev.kind.as_str() {
        "created" => {
            let mut text = format!(
                "{} of {} → {} in {} created",
                t.d.kind,
                t.d.app,
                clean(&t.d.image),
                t.d.env
            );
            if ev.state == "queued" || t.d.state == "queued" {
                let why = if t.d.error.is_empty() {
                    &msg
                } else {
                    &t.d.error
                };
                text.push_str(&format!("; {}", clean(why)));
            }
            text
        }
        "started" => {
            let n = t.d.hosts.len();
            let mut text = format!("started on {n} host{}", if n == 1 { "" } else { "s" });
            if t.d.batches > 0 {
                text.push_str(&format!(
                    " in {} batch{}",
                    t.d.batches,
                    if t.d.batches == 1 { "" } else { "es" }
                ));
            }
            if !msg.is_empty() {
                text.push_str(&format!(": {msg}"));
            }
            text
        }
        "batch_started" => {
            let batch = batch_text(ev.batch, t.d.batches, t.canary());
            let hosts: Vec<&str> =
                t.d.hosts
                    .iter()
                    .filter(|h| h.batch == ev.batch && h.state != "skipped")
                    .map(|h| h.host_id.as_str())
                    .collect();
            if batch.is_empty() || hosts.is_empty() {
                msg_or(&format!("batch {} started", ev.batch + 1))
            } else {
                format!("{batch} started: {}", clean(&hosts.join(", ")))
            }
        }
        "host_dispatched" => format!("{host} deploying"),
        "host_accepted" => format!("{host} {}", or(&ev.state, "running")),
        "host_finished" | "host_rollback_finished" => {
            let mut text = format!("{host} {}{}", ev.state, took());
            if !msg.is_empty() && msg != ev.state {
                text.push_str(&format!(": {msg}"));
            }
            text
        }
        "host_rollback_dispatched" => {
            let before = t.host(&ev.host_id).map_or("", |h| h.image_before.as_str());
            if before.is_empty() {
                format!("{host} rolling back")
            } else {
                format!("{host} rolling back to {}", clean(before))
            }
        }
        "paused" => {
            let pause = t.d.strategy.as_ref().map_or(0, |s| s.pause_ms);
            let next = batch_text(ev.batch + 1, t.d.batches, false);
            if pause > 0 && !next.is_empty() {
                format!(
                    "paused; {next} starts at {}",
                    clock(ev.at_ms.saturating_add(i64::try_from(pause).unwrap_or(0)))
                )
            } else {
                format!("paused; {}", msg_or("waiting for the next batch"))
            }
        }
        "awaiting_promotion" => msg_or(&format!(
            "canary batch done; continue with `flotilla promote {}`",
            t.d.id
        )),
        "promoted" => msg_or("promoted"),
        "cancel_requested" => msg_or("cancel requested"),
        "rollback_started" => msg_or("rolling back"),
        "finished" => format!("{} {}", t.d.kind, msg_or(&ev.state)),
        other => {
            let mut text = clean(other);
            for part in [host.as_str(), ev.state.as_str(), msg.as_str()] {
                if !part.is_empty() {
                    text.push(' ');
                    text.push_str(part);
                }
            }
            text
        }
    };
    format!("[{}] {text}", clock(ev.at_ms))
}

fn or<'a>(s: &'a str, default: &'a str) -> &'a str {
    if s.is_empty() { default } else { s }
}

pub struct Plain {
    /// Progress goes to stderr when stdout is reserved for the final JSON object.
    to_stderr: bool,
    actions: Option<Actions>,
}

impl Plain {
    pub fn new(out: Output) -> Self {
        let to_stderr = out == Output::Json;
        Self {
            to_stderr,
            // Workflow commands only work on stdout.
            actions: Actions::detect().filter(|_| !to_stderr),
        }
    }

    fn print(&self, line: &str) {
        if self.to_stderr {
            eprintln!("{line}");
        } else {
            outln!("{line}");
        }
    }

    pub fn event(&mut self, t: &Tracker, ev: &pb::DeploymentEvent) {
        if let Some(actions) = self.actions.as_mut() {
            actions.end_group();
        }
        self.print(&event_line(t, ev));
    }

    pub fn log(&mut self, line: &pb::DeploymentLogLine) {
        if let Some(actions) = self.actions.as_mut() {
            actions.before_line(&line.host_id);
        }
        output::log_line(Output::Text, line, self.to_stderr);
    }

    pub fn note(&mut self, note: &str) {
        if let Some(actions) = self.actions.as_mut() {
            actions.end_group();
        }
        eprintln!("{note}");
    }

    /// Annotations and the step summary under GitHub Actions, then the summary table.
    pub fn finish(&mut self, d: &pb::Deployment, now_ms: i64) {
        if let Some(actions) = self.actions.as_mut() {
            actions.finish(d);
        }
        for line in output::wait_summary(d, now_ms) {
            self.print(&line);
        }
    }
}
