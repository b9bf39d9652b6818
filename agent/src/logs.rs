//! What the agent sends to Loki: every output line of a deploy or rollback
//! (`source="deploy"`) and the agent's own warnings and errors
//! (`source="agent"`). Stream labels stay low-cardinality (`app`, `env`,
//! `host`, `source`); ids go in structured metadata (`deployment`,
//! `command`, …).
//!
//! Warnings are captured by `WarningLayer`, a `tracing` layer installed with
//! the subscriber before the pipeline exists: it forwards into a bounded
//! channel once `install_warning_sink` is called and drops (counting) when
//! it is full, so logging never blocks. The telemetry pipeline's own events
//! are left out: a failing Loki push must not produce lines for Loki.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use flotilla_proto::v1 as pb;
use flotilla_shared::signing::VerifiedCommand;
use flotilla_shared::{EnvName, HostId};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};

use crate::telemetry::loki::LogEntry;
use crate::telemetry::ship::LogShipper;

/// Feeds one agent's lines into the Loki pipeline.
#[derive(Clone)]
pub struct LogFeed {
    shipper: Arc<LogShipper>,
    host: HostId,
    env: EnvName,
}

impl LogFeed {
    pub fn new(shipper: Arc<LogShipper>, host: HostId, env: EnvName) -> Self {
        Self { shipper, host, env }
    }

    fn labels(&self, source: &str, app: Option<&str>) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            ("env".to_owned(), self.env.to_string()),
            ("host".to_owned(), self.host.to_string()),
            ("source".to_owned(), source.to_owned()),
        ]);
        if let Some(app) = app {
            labels.insert("app".to_owned(), app.to_owned());
        }
        labels
    }

    /// One output line of `cmd` (as numbered for the coordinator).
    pub fn command_line(&self, cmd: &VerifiedCommand, line: &pb::LogLine) {
        let stream = pb::Stream::try_from(line.stream)
            .map(|s| {
                s.as_str_name()
                    .trim_start_matches("STREAM_")
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let entry = LogEntry {
            labels: self.labels("deploy", cmd.action.app().map(|a| a.as_str())),
            timestamp_ns: line.at_ms.saturating_mul(1_000_000),
            line: line.line.clone(),
            metadata: vec![
                ("deployment".to_owned(), cmd.deployment_id.clone()),
                ("command".to_owned(), cmd.command_id.clone()),
                ("action".to_owned(), cmd.action.kind().to_owned()),
                ("stream".to_owned(), stream),
                ("seq".to_owned(), line.seq.to_string()),
            ],
        };
        self.push(entry);
    }

    /// One of the agent's own warnings or errors.
    pub fn warning(&self, w: Warning) {
        let mut metadata = vec![
            ("level".to_owned(), w.level.to_owned()),
            ("target".to_owned(), w.target),
        ];
        if let Some(command) = w.command {
            metadata.push(("command".to_owned(), command));
        }
        let entry = LogEntry {
            labels: self.labels("agent", w.app.as_deref()),
            timestamp_ns: w.at_ms.saturating_mul(1_000_000),
            line: w.line,
            metadata,
        };
        self.push(entry);
    }

    fn push(&self, entry: LogEntry) {
        if let Err(e) = self.shipper.push(&[entry]) {
            // Logged at debug only: a warning would come back here.
            tracing::debug!(target: "flotilla_agent::telemetry", "cannot queue a line for Loki: {e}");
        }
    }
}

/// A captured warning or error.
#[derive(Debug, Clone)]
pub struct Warning {
    pub at_ms: i64,
    pub level: &'static str,
    pub target: String,
    /// The message and its fields, as `message key=value …`.
    pub line: String,
    /// From an `app` field, when the event has one (a label).
    pub app: Option<String>,
    /// From a `command` field (structured metadata).
    pub command: Option<String>,
}

/// Warnings waiting for the pipeline, at most.
const WARNING_BUFFER: usize = 1024;

static SINK: OnceLock<mpsc::Sender<Warning>> = OnceLock::new();
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Warnings the layer dropped because the channel was full.
pub fn warnings_dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Starts forwarding captured warnings to `feed`, until `cancel`. Call once
/// per process (a second call is ignored and returns `None`).
pub fn install_warning_sink(
    feed: LogFeed,
    cancel: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let (tx, mut rx) = mpsc::channel(WARNING_BUFFER);
    SINK.set(tx).ok()?;
    Some(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = cancel.cancelled() => {
                    // What already arrived still goes to the queue.
                    while let Ok(w) = rx.try_recv() {
                        feed.warning(w);
                    }
                    return;
                }
                w = rx.recv() => match w {
                    Some(w) => feed.warning(w),
                    None => return,
                },
            }
        }
    }))
}

/// The `tracing` layer that captures WARN and ERROR events of the agent
/// (not of the telemetry pipeline itself).
pub struct WarningLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for WarningLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let meta = event.metadata();
        if *meta.level() > tracing::Level::WARN
            || !meta.target().starts_with("flotilla_agent")
            || meta.target().starts_with("flotilla_agent::telemetry")
        {
            return;
        }
        let Some(sink) = SINK.get() else { return };
        let mut visitor = LineVisitor::default();
        event.record(&mut visitor);
        let warning = Warning {
            at_ms: flotilla_shared::time::now_ms(),
            level: if *meta.level() == tracing::Level::ERROR {
                "error"
            } else {
                "warn"
            },
            target: meta.target().to_owned(),
            line: visitor.line(),
            app: visitor.app,
            command: visitor.command,
        };
        if sink.try_send(warning).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct LineVisitor {
    message: String,
    fields: Vec<String>,
    app: Option<String>,
    command: Option<String>,
}

impl LineVisitor {
    fn line(&self) -> String {
        let mut line = self.message.clone();
        for f in &self.fields {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(f);
        }
        line
    }

    fn take(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            name => {
                if name == "app" {
                    // `app = %name` or `app = ?Some("name")`: only a valid
                    // app name becomes a label.
                    let bare = value
                        .trim_start_matches("Some(")
                        .trim_end_matches(')')
                        .trim_matches('"');
                    self.app = flotilla_shared::AppName::parse(bare)
                        .ok()
                        .map(|a| a.as_str().to_owned());
                } else if name == "command" {
                    self.command = Some(value.clone());
                }
                self.fields.push(format!("{name}={value}"));
            }
        }
    }
}

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.take(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.take(field, format!("{value:?}"));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::spool::Spool;
    use crate::telemetry::ship::{Endpoint, LOGS_QUEUE, ShipConfig};

    #[tokio::test]
    async fn agent_warnings_become_loki_lines_but_pipeline_noise_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let config = ShipConfig::new(Endpoint {
            // Never contacted: the sender task is not started.
            url: "http://127.0.0.1:9/loki/api/v1/push".parse().unwrap(),
            auth: None,
            headers: Vec::new(),
        });
        let queue = spool.queue(LOGS_QUEUE, 1 << 20).unwrap();
        let shipper = Arc::new(LogShipper::new(config, queue).unwrap());
        let feed = LogFeed::new(
            Arc::clone(&shipper),
            HostId::parse("web-1").unwrap(),
            EnvName::parse("prod").unwrap(),
        );
        let cancel = CancellationToken::new();
        let task = install_warning_sink(feed, cancel.clone()).unwrap();

        let subscriber = tracing_subscriber::registry().with(WarningLayer);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "flotilla_agent::link", app = ?Some("shop"), command = "c-1", "cannot do {}", "it");
            tracing::error!(target: "flotilla_agent::exec", "disk full");
            tracing::info!(target: "flotilla_agent::link", "not a warning");
            tracing::warn!(target: "flotilla_agent::telemetry::ship", "push failed");
            tracing::warn!(target: "hyper", "someone else's warning");
        });
        cancel.cancel();
        task.await.unwrap();

        let entries: Vec<crate::telemetry::loki::LogEntry> = spool
            .queue(LOGS_QUEUE, 1 << 20)
            .unwrap()
            .peek(10)
            .unwrap()
            .iter()
            .map(|e| serde_json::from_slice(&e.value).unwrap())
            .collect();
        assert_eq!(entries.len(), 2, "{entries:#?}");
        let first = &entries[0];
        assert_eq!(first.line, "cannot do it app=Some(\"shop\") command=c-1");
        assert_eq!(
            first.labels,
            BTreeMap::from(
                [
                    ("app", "shop"),
                    ("env", "prod"),
                    ("host", "web-1"),
                    ("source", "agent")
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
            )
        );
        assert!(first.metadata.contains(&("level".into(), "warn".into())));
        assert!(first.metadata.contains(&("command".into(), "c-1".into())));
        assert_eq!(entries[1].line, "disk full");
        assert!(!entries[1].labels.contains_key("app"));
        assert!(
            entries[1]
                .metadata
                .contains(&("level".into(), "error".into()))
        );
    }
}
