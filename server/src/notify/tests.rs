//! Notifications against real receivers on 127.0.0.1: a scripted HTTP stub
//! for Slack and webhooks, aiosmtpd for email. Waits are on received
//! requests, outbox state or a ready line, each with a deadline.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;

// ----- helpers -----

/// One request as the stub received it.
#[derive(Debug, Clone)]
struct Request {
    path: String,
    /// Lower-case names.
    headers: HashMap<String, String>,
    body: Vec<u8>,
    at: Instant,
}

impl Request {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map_or("", String::as_str)
    }
}

#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: &'static str,
    /// Held this long before answering.
    delay: Duration,
}

fn reply(status: u16, body: &'static str) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body,
        delay: Duration::ZERO,
    }
}

/// An HTTP/1.1 receiver answering with `replies` in order, then 200 `ok`.
struct Stub {
    base: String,
    requests: mpsc::UnboundedReceiver<Request>,
    _task: tokio::task::JoinHandle<()>,
}

impl Stub {
    async fn start(replies: Vec<Reply>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, requests) = mpsc::unbounded_channel();
        let replies = std::sync::Arc::new(Mutex::new(VecDeque::from(replies)));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tx, replies) = (tx.clone(), replies.clone());
                tokio::spawn(async move {
                    let _ = serve_one(stream, tx, replies).await;
                });
            }
        });
        Self {
            base,
            requests,
            _task: task,
        }
    }

    async fn next(&mut self) -> Request {
        tokio::time::timeout(Duration::from_secs(10), self.requests.recv())
            .await
            .expect("no request within 10 s")
            .unwrap()
    }

    /// Every request received so far, without waiting.
    fn received(&mut self) -> Vec<Request> {
        let mut out = Vec::new();
        while let Ok(r) = self.requests.try_recv() {
            out.push(r);
        }
        out
    }
}

async fn serve_one(
    stream: tokio::net::TcpStream,
    tx: mpsc::UnboundedSender<Request>,
    replies: std::sync::Arc<Mutex<VecDeque<Reply>>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let path = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await?;
    let _ = tx.send(Request {
        path,
        headers,
        body,
        at: Instant::now(),
    });
    let reply = replies
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| reply(200, "ok"));
    tokio::time::sleep(reply.delay).await;
    let mut head = format!(
        "HTTP/1.1 {} X\r\ncontent-length: {}\r\nconnection: close\r\n",
        reply.status,
        reply.body.len()
    );
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = reader.into_inner();
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(reply.body.as_bytes()).await?;
    stream.shutdown().await
}

#[derive(serde::Deserialize)]
struct File {
    notifications: NotifyConfig,
}

/// Resolves a `[notifications]` TOML document with `env` as the environment.
fn resolve(toml_text: &str, env: &[(&str, &str)]) -> Result<ResolvedNotify, ConfigError> {
    let file: File = toml::from_str(toml_text).unwrap();
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    file.notifications.resolve_with(|k| env.get(k).cloned())
}

/// Short retries, so tests wait milliseconds.
const FAST: &str = r#"
[notifications]
retry_initial = "50ms"
retry_max = "200ms"
send_timeout = "2s"
"#;

fn store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Store::open(dir.path()).unwrap(), dir)
}

fn event(kind: EventKind) -> Event {
    Event {
        kind,
        app: Some("shop".into()),
        env: "production".into(),
        deployment_id: Some("0190-dep".into()),
        image: Some("registry.example.com/shop:v42".into()),
        release: Some(42),
        by: Some("alice".into()),
        host: None,
        duration_ms: Some(125_000),
        reason: Some("2 of 4 hosts failed: health check on web-2 answered 502".into()),
        at_ms: 1_767_225_600_000, // 2026-01-01T00:00:00Z
        deployment_kind: None,
    }
}

/// The worker, running until `stop`.
struct Worker {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Worker {
    fn start(notifier: &Arc<Notifier>) -> Self {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(notifier).run(cancel.clone()));
        Self { cancel, task }
    }

    async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("worker did not stop")
            .unwrap();
    }
}

/// Polls `check` until it returns `Some`, for at most 10 s.
async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn until_outbox_empty(store: &Store) {
    until("an empty outbox", || {
        store.notify_pending().unwrap().is_empty().then_some(())
    })
    .await;
}

/// Everything logged at any level while the guard lives (this thread; tokio
/// tests run on one thread, so spawned tasks are included).
struct Logs(std::sync::Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let buf = std::sync::Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .finish();
        (Self(buf), tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct LogWriter(std::sync::Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ----- config -----

const EXAMPLE: &str = r#"
[notifications]
disconnect_after = "5m"
cert_expiry_warning = "14d"
public_url = "https://flotilla.example.com/"

[notifications.channels.ops-slack]
kind = "slack"
webhook_url_env = "FLOTILLA_SLACK_URL"
environments = ["production"]
events = ["deployment_failed", "deployment_rolled_back", "deployment_blocked", "host_failed"]

[notifications.channels.hooks]
kind = "webhook"
url = "https://hooks.example.com/flotilla"
secret_env = "FLOTILLA_WEBHOOK_SECRET"

[notifications.channels.oncall]
kind = "email"
host = "smtp.example.com"
port = 587
tls = "starttls"
username = "flotilla"
password_env = "FLOTILLA_SMTP_PASSWORD"
from = "Flotilla <flotilla@example.com>"
to = ["oncall@example.com"]
"#;

const EXAMPLE_ENV: &[(&str, &str)] = &[
    (
        "FLOTILLA_SLACK_URL",
        "https://hooks.slack.com/services/T000/B000/slacksecrettoken",
    ),
    ("FLOTILLA_WEBHOOK_SECRET", "whsec-example-secret"),
    ("FLOTILLA_SMTP_PASSWORD", "smtp-example-password"),
];

#[test]
fn example_config_resolves_with_defaults_and_redacted_secrets() {
    let config = resolve(EXAMPLE, EXAMPLE_ENV).unwrap();
    assert_eq!(config.disconnect_after, Duration::from_secs(300));
    assert_eq!(config.cert_expiry_warning, Duration::from_secs(14 * 86_400));
    assert_eq!(
        config.public_url.as_deref(),
        Some("https://flotilla.example.com")
    );
    assert_eq!(
        config.retry,
        RetryPolicy {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(900),
            give_up_after: Duration::from_secs(86_400),
        }
    );
    let names: Vec<&str> = config.channels.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["hooks", "oncall", "ops-slack"]);
    let slack = config.channel("ops-slack").unwrap();
    assert_eq!(slack.environments, ["production"]);
    assert_eq!(slack.events.as_ref().unwrap().len(), 4);
    let Target::Email(email) = &config.channel("oncall").unwrap().target else {
        panic!("oncall is not email")
    };
    assert_eq!((email.port, email.tls), (587, SmtpTls::Starttls));
    assert_eq!(
        email.password.as_ref().unwrap().expose(),
        "smtp-example-password"
    );

    let debug = format!("{config:?}");
    for (_, secret) in EXAMPLE_ENV {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    assert_eq!(Secret::new("x").to_string(), "***");
    assert_eq!(format!("{:?}", Secret::new("x")), "***");
}

#[test]
fn secret_files_are_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, "whsec-from-file\n").unwrap();
    let config = resolve(
        &format!(
            r#"
[notifications.channels.hooks]
kind = "webhook"
url = "https://hooks.example.com/x"
secret_file = "{}"
"#,
            path.display()
        ),
        &[],
    )
    .unwrap();
    let Target::Webhook { secret, .. } = &config.channels[0].target else {
        panic!()
    };
    assert_eq!(secret.expose(), "whsec-from-file");
}

#[test]
fn config_errors_name_the_channel_and_field_but_never_the_secret() {
    let slack_secret = "https://hooks.slack.com/services/T1/B1/leakme";
    let check = |toml_text: &str, env: &[(&str, &str)], expected: &str| {
        let err = resolve(toml_text, env).unwrap_err().to_string();
        assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        assert!(!err.contains("leakme"), "secret in {err:?}");
    };
    check(
        "[notifications.channels.ops]\nkind = \"slack\"\nwebhook_url_env = \"NOPE\"\n",
        &[],
        "notifications.channels.ops.webhook_url_env: environment variable NOPE is not set",
    );
    check(
        "[notifications.channels.ops]\nkind = \"slack\"\n",
        &[],
        "notifications.channels.ops.webhook_url_env: set webhook_url_env or webhook_url_file",
    );
    check(
        "[notifications.channels.ops]\nkind = \"slack\"\nwebhook_url_env = \"U\"\nwebhook_url = \"https://x/leakme\"\n",
        &[("U", slack_secret)],
        "set only one of webhook_url_env, webhook_url_file, webhook_url",
    );
    check(
        "[notifications.channels.ops]\nkind = \"slack\"\nwebhook_url_env = \"U\"\n",
        &[("U", "http://hooks.slack.com/services/leakme")],
        "notifications.channels.ops.webhook_url: must use https",
    );
    check(
        "[notifications.channels.ops]\nkind = \"slack\"\nwebhook_url_env = \"U\"\n",
        &[("U", "leakme")],
        "notifications.channels.ops.webhook_url: not a valid URL",
    );
    check(
        "[notifications.channels.ops]\nkind = \"slack\"\nwebhook_url_env = \"U\"\n",
        &[("U", "  \n")],
        "notifications.channels.ops.webhook_url_env: the secret is empty",
    );
    check(
        "[notifications.channels.h]\nkind = \"webhook\"\nurl = \"https://x.example.com\"\n",
        &[],
        "notifications.channels.h.secret_env: set secret_env or secret_file",
    );
    check(
        "[notifications.channels.h]\nkind = \"webhook\"\nurl = \"https://x.example.com\"\nsecret_file = \"/nonexistent/secret\"\n",
        &[],
        "notifications.channels.h.secret_file: cannot read /nonexistent/secret",
    );
    check(
        "[notifications.channels.m]\nkind = \"email\"\nhost = \"smtp.example.com\"\ntls = \"none\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\n",
        &[],
        "notifications.channels.m.tls: \"none\" sends mail and credentials in clear text and is only allowed for a loopback host",
    );
    check(
        "[notifications.channels.m]\nkind = \"email\"\nhost = \"smtp.example.com\"\nusername = \"u\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\n",
        &[],
        "notifications.channels.m.password_env: username is set",
    );
    check(
        "[notifications.channels.m]\nkind = \"email\"\nhost = \"smtp.example.com\"\nfrom = \"a@example.com\"\nto = []\n",
        &[],
        "notifications.channels.m.to: needs at least one recipient",
    );
    check(
        "[notifications.channels.h]\nkind = \"webhook\"\nurl = \"https://x.example.com\"\nsecret_env = \"S\"\nevents = []\n",
        &[("S", "s")],
        "notifications.channels.h.events: is empty",
    );
    check(
        "[notifications.channels.h]\nkind = \"webhook\"\nurl = \"https://x.example.com\"\nsecret_env = \"S\"\nenvironments = [\"Prod uction\"]\n",
        &[("S", "s")],
        "notifications.channels.h.environments: \"Prod uction\"",
    );
    check(
        "[notifications]\ndisconnect_after = \"soon\"\n",
        &[],
        "notifications.disconnect_after: \"soon\" is not a duration",
    );
    check(
        "[notifications.channels.\"bad name\"]\nkind = \"webhook\"\nurl = \"https://x.example.com\"\nsecret_env = \"S\"\n",
        &[("S", "s")],
        "channel name \"bad name\"",
    );
    // Typos and unknown kinds fail at parse time.
    for bad in [
        "[notifications]\ndisconect_after = \"5m\"\n",
        "[notifications.channels.h]\nkind = \"webhook\"\nurl = \"https://x\"\nsecret_env = \"S\"\nsecrets_env = \"T\"\n",
        "[notifications.channels.h]\nkind = \"webhook\"\nurl = \"https://x\"\nsecret_env = \"S\"\nevents = [\"deploy_failed\"]\n",
        "[notifications.channels.h]\nkind = \"pager\"\n",
    ] {
        assert!(toml::from_str::<File>(bad).is_err(), "{bad} parsed");
    }
}

// ----- filters and the outbox -----

#[tokio::test]
async fn enqueue_follows_environment_and_event_filters() {
    let (store, _dir) = store();
    let config = resolve(
        r#"
[notifications.channels.prod-failures]
kind = "webhook"
url = "https://a.example.com"
secret_env = "S"
environments = ["production"]
events = ["deployment_failed", "host_failed"]

[notifications.channels.everything]
kind = "webhook"
url = "https://b.example.com"
secret_env = "S"
"#,
        &[("S", "s")],
    )
    .unwrap();
    let notifier = Notifier::new(store.clone(), config);
    let mut staging = event(EventKind::DeploymentFailed);
    staging.env = "staging".into();
    assert_eq!(
        notifier
            .enqueue(&event(EventKind::DeploymentFailed))
            .unwrap(),
        2
    );
    assert_eq!(
        notifier
            .enqueue(&event(EventKind::DeploymentSucceeded))
            .unwrap(),
        1
    );
    assert_eq!(notifier.enqueue(&staging).unwrap(), 1);
    assert_eq!(notifier.enqueue(&event(EventKind::HostFailed)).unwrap(), 2);

    let pending = store.notify_pending().unwrap();
    let to = |channel: &str| {
        pending
            .iter()
            .filter(|r| r.channel == channel)
            .map(|r| {
                serde_json::from_value::<Event>(r.event.clone())
                    .unwrap()
                    .kind
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        to("prod-failures"),
        [EventKind::DeploymentFailed, EventKind::HostFailed]
    );
    assert_eq!(to("everything").len(), 4);
    assert!(pending.iter().all(|r| r.attempts == 0));

    let nobody = Notifier::new(store, resolve("[notifications]\n", &[]).unwrap());
    assert_eq!(
        nobody.enqueue(&event(EventKind::DeploymentFailed)).unwrap(),
        0
    );
}

#[test]
fn outbox_orders_each_channel_by_next_attempt() {
    let (store, _dir) = store();
    let record = |id: &str, channel: &str, next: i64| NotifyRecord {
        id: id.into(),
        channel: channel.into(),
        event: json!({}),
        attempts: 0,
        next_attempt_ms: next,
        created_at_ms: 1,
        last_error: String::new(),
    };
    store
        .notify_insert(&[
            record("a", "x", 30),
            record("b", "x", 10),
            record("c", "y", 5),
        ])
        .unwrap();
    assert_eq!(store.notify_next("x").unwrap().unwrap().id, "b");
    assert!(store.notify_reschedule("b", 1, 40, "HTTP 503").unwrap());
    let a = store.notify_next("x").unwrap().unwrap();
    assert_eq!(a.id, "a");
    assert_eq!(store.notify_remove("a").unwrap().unwrap().id, "a");
    let b = store.notify_next("x").unwrap().unwrap();
    assert_eq!((b.id.as_str(), b.attempts, b.next_attempt_ms), ("b", 1, 40));
    assert_eq!(b.last_error, "HTTP 503");
    assert!(store.notify_remove("b").unwrap().is_some());
    assert!(store.notify_next("x").unwrap().is_none());
    assert!(!store.notify_reschedule("b", 2, 50, "").unwrap());
    assert_eq!(store.notify_next("y").unwrap().unwrap().id, "c");
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_cap() {
    let policy = RetryPolicy {
        initial: Duration::from_secs(10),
        max: Duration::from_secs(60),
        give_up_after: Duration::from_secs(3600),
    };
    for (attempts, base) in [(1, 10), (2, 20), (3, 40), (4, 60), (30, 60)] {
        for _ in 0..20 {
            let d = backoff(&policy, attempts);
            let base = Duration::from_secs(base);
            assert!(d >= base / 2 && d <= base, "attempt {attempts}: {d:?}");
        }
    }
}

// ----- Slack -----

fn slack_config(url: &str, extra: &str) -> ResolvedNotify {
    resolve(
        &format!(
            "{FAST}{extra}\n[notifications.channels.ops-slack]\nkind = \"slack\"\nwebhook_url_env = \"SLACK\"\n"
        ),
        &[("SLACK", url)],
    )
    .unwrap()
}

#[tokio::test]
async fn slack_message_has_blocks_and_a_text_fallback() {
    let mut stub = Stub::start(vec![]).await;
    let (store, _dir) = store();
    let url = format!("{}/services/T000/B000/token", stub.base);
    let notifier = Notifier::new(
        store.clone(),
        slack_config(&url, "public_url = \"https://flotilla.example.com\""),
    );
    let worker = Worker::start(&notifier);
    notifier
        .enqueue(&event(EventKind::DeploymentRolledBack))
        .unwrap();
    let request = stub.next().await;
    assert_eq!(request.path, "/services/T000/B000/token");
    assert_eq!(request.header("content-type"), "application/json");
    let expected = json!({
        "text": "shop in production: rolled back: 2 of 4 hosts failed: health check on web-2 answered 502",
        "blocks": [
            { "type": "header", "text": { "type": "plain_text", "text": "shop in production: rolled back", "emoji": false } },
            { "type": "section", "fields": [
                { "type": "mrkdwn", "text": "*App*\nshop" },
                { "type": "mrkdwn", "text": "*Environment*\nproduction" },
                { "type": "mrkdwn", "text": "*Release*\n#42" },
                { "type": "mrkdwn", "text": "*Image*\nregistry.example.com/shop:v42" },
                { "type": "mrkdwn", "text": "*By*\nalice" },
                { "type": "mrkdwn", "text": "*Duration*\n2m 05s" },
            ] },
            { "type": "section", "text": { "type": "mrkdwn", "text": "*Reason*\n2 of 4 hosts failed: health check on web-2 answered 502" } },
            { "type": "context", "elements": [ { "type": "mrkdwn",
                "text": "<https://flotilla.example.com/deployments/0190-dep|Logs> · deployment `0190-dep` · 2026-01-01T00:00:00Z" } ] },
        ],
    });
    assert_eq!(request.json(), expected);
    until_outbox_empty(&store).await;
    worker.stop().await;
    assert!(stub.received().is_empty(), "delivered more than once");
}

#[test]
fn slack_message_without_public_url_names_the_cli_command_and_escapes_text() {
    let mut e = event(EventKind::DeploymentFailed);
    e.reason = Some("exit 1: <script> & more".into());
    let payload = slack::payload(&e, None);
    let blocks = payload["blocks"].as_array().unwrap();
    assert_eq!(
        blocks[2]["text"]["text"],
        "*Reason*\nexit 1: &lt;script&gt; &amp; more"
    );
    assert_eq!(
        blocks[3]["elements"][0]["text"],
        "Logs: `flotilla logs 0190-dep` · deployment `0190-dep` · 2026-01-01T00:00:00Z"
    );
    let host_event = Event {
        host: Some("web-1".into()),
        ..Event::new(EventKind::AgentDisconnected, "production")
    };
    assert_eq!(
        host_event.summary(),
        "web-1 in production: agent disconnected"
    );
    assert_eq!(
        slack::payload(&host_event, None)["blocks"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn slack_429_waits_for_retry_after_then_delivers_once() {
    let mut stub = Stub::start(vec![Reply {
        headers: vec![("retry-after", "1".into())],
        ..reply(429, "rate_limited")
    }])
    .await;
    let (store, _dir) = store();
    let notifier = Notifier::new(store.clone(), slack_config(&format!("{}/s", stub.base), ""));
    let worker = Worker::start(&notifier);
    notifier
        .enqueue(&event(EventKind::DeploymentFailed))
        .unwrap();
    let first = stub.next().await;
    let second = stub.next().await;
    // Retry-After: 1 beats the 50 ms backoff.
    assert!(
        second.at - first.at >= Duration::from_millis(950),
        "retried after {:?}",
        second.at - first.at
    );
    assert_eq!(first.body, second.body);
    until_outbox_empty(&store).await;
    worker.stop().await;
    assert!(stub.received().is_empty(), "delivered more than once");
}

#[tokio::test]
async fn slack_500_is_retried_with_backoff_and_the_attempt_recorded() {
    let mut stub = Stub::start(vec![reply(500, "rollup_error"), reply(503, "")]).await;
    let (store, _dir) = store();
    let notifier = Notifier::new(store.clone(), slack_config(&format!("{}/s", stub.base), ""));
    let (logs, _guard) = Logs::capture();
    let worker = Worker::start(&notifier);
    notifier
        .enqueue(&event(EventKind::DeploymentFailed))
        .unwrap();
    stub.next().await;
    stub.next().await;
    stub.next().await;
    until_outbox_empty(&store).await;
    worker.stop().await;
    assert!(stub.received().is_empty(), "delivered more than once");
    let logs = logs.text();
    assert!(
        logs.contains("notification not delivered, will retry: HTTP 500: rollup_error"),
        "{logs}"
    );
    assert!(logs.contains("channel=ops-slack"), "{logs}");
    assert!(
        logs.contains("attempts=3") && logs.contains("notification delivered"),
        "{logs}"
    );
}

#[tokio::test]
async fn slack_400_is_permanent_dropped_and_not_retried() {
    let mut stub = Stub::start(vec![reply(400, "invalid_payload")]).await;
    let (store, _dir) = store();
    let url = format!("{}/services/T0/B0/permanent-token", stub.base);
    let notifier = Notifier::new(store.clone(), slack_config(&url, ""));
    let (logs, _guard) = Logs::capture();
    let worker = Worker::start(&notifier);
    notifier
        .enqueue(&event(EventKind::DeploymentFailed))
        .unwrap();
    stub.next().await;
    until_outbox_empty(&store).await;
    worker.stop().await;
    assert!(stub.received().is_empty(), "a 400 was retried");
    let logs = logs.text();
    assert!(
        logs.contains("notification refused, dropped: HTTP 400: invalid_payload"),
        "{logs}"
    );
    assert!(
        logs.contains("channel=ops-slack") && logs.contains("status=400"),
        "{logs}"
    );
    assert!(!logs.contains("permanent-token"), "{logs}");
}

#[tokio::test]
async fn undeliverable_notifications_are_given_up_after_the_bound() {
    let mut stub = Stub::start(vec![reply(503, ""); 50]).await;
    let (store, _dir) = store();
    let config = slack_config(&format!("{}/s", stub.base), "give_up_after = \"1s\"");
    let notifier = Notifier::new(store.clone(), config);
    let (logs, _guard) = Logs::capture();
    let worker = Worker::start(&notifier);
    notifier
        .enqueue(&event(EventKind::DeploymentFailed))
        .unwrap();
    stub.next().await;
    until_outbox_empty(&store).await;
    worker.stop().await;
    let attempts = 1 + stub.received().len();
    assert!((2..=40).contains(&attempts), "{attempts} attempts");
    assert!(
        logs.text()
            .contains("notification undeliverable, giving up: HTTP 503")
    );
}

#[tokio::test]
async fn test_message_reports_the_outcome() {
    let mut stub = Stub::start(vec![reply(404, "no_service")]).await;
    let (store, _dir) = store();
    let notifier = Notifier::new(store.clone(), slack_config(&format!("{}/s", stub.base), ""));
    let err = notifier.test("ops-slack").await.unwrap_err().to_string();
    assert_eq!(err, "channel ops-slack: refused: HTTP 404: no_service");
    assert_eq!(
        notifier.test("ops-slack").await.unwrap(),
        "slack channel ops-slack: delivered (HTTP 200: ok)"
    );
    let request = stub.next().await;
    assert!(
        request.json()["text"]
            .as_str()
            .unwrap()
            .contains("ops-slack")
    );
    assert!(matches!(
        notifier.test("nope").await,
        Err(NotifyError::UnknownChannel(_))
    ));
    assert!(
        store.notify_pending().unwrap().is_empty(),
        "test used the outbox"
    );
}

// ----- webhooks -----

fn webhook_config(url: &str, secret: &str) -> ResolvedNotify {
    resolve(
        &format!(
            "{FAST}\n[notifications.channels.hooks]\nkind = \"webhook\"\nurl = \"{url}\"\nsecret_env = \"SECRET\"\n"
        ),
        &[("SECRET", secret)],
    )
    .unwrap()
}

/// Verifies `X-Flotilla-Signature` the way docs/notifications.md tells
/// receivers to, with ring rather than the hmac crate the sender uses.
/// Returns the signed timestamp.
fn verify_signature(header: &str, body: &[u8], secret: &str) -> Result<i64, String> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value.to_owned()),
            Some(("v1", value)) => v1 = Some(value.to_owned()),
            _ => {}
        }
    }
    let (t, v1) = (t.ok_or("no t=")?, v1.ok_or("no v1=")?);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let mac = hex::decode(v1).map_err(|e| e.to_string())?;
    ring::hmac::verify(&key, &signed, &mac).map_err(|_| "bad signature".to_owned())?;
    t.parse().map_err(|_| "bad t".to_owned())
}

#[tokio::test]
async fn webhook_posts_the_event_json_signed() {
    let mut stub = Stub::start(vec![]).await;
    let (store, _dir) = store();
    let secret = "whsec-test-secret";
    let notifier = Notifier::new(
        store.clone(),
        webhook_config(&format!("{}/flotilla", stub.base), secret),
    );
    let worker = Worker::start(&notifier);
    let e = event(EventKind::HostFailed);
    notifier.enqueue(&e).unwrap();
    let id = store.notify_pending().unwrap()[0].id.clone();
    let request = stub.next().await;
    assert_eq!(request.path, "/flotilla");
    assert_eq!(request.header("content-type"), "application/json");
    assert_eq!(request.header("x-flotilla-event"), "host_failed");
    assert_eq!(request.header("x-flotilla-delivery"), id);
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    assert_eq!(
        request.json(),
        json!({
            "kind": "host_failed", "app": "shop", "env": "production", "deployment_id": "0190-dep",
            "image": "registry.example.com/shop:v42", "release": 42, "by": "alice", "host": null,
            "duration_ms": 125000, "reason": "2 of 4 hosts failed: health check on web-2 answered 502",
            "at_ms": 1_767_225_600_000_i64,
        })
    );
    let signature = request.header("x-flotilla-signature");
    let t = verify_signature(signature, &request.body, secret).unwrap();
    assert!((t - now_ms() / 1000).abs() < 60, "timestamp {t}");
    // A tampered body or another secret does not verify.
    let tampered = [&request.body[..], b" "].concat();
    assert!(verify_signature(signature, &tampered, secret).is_err());
    assert!(verify_signature(signature, &request.body, "other").is_err());
    until_outbox_empty(&store).await;
    worker.stop().await;
    assert!(stub.received().is_empty());
}

#[test]
fn signature_matches_a_known_vector() {
    // The hmac crate (sender) against ring (an independent implementation).
    assert_eq!(
        webhook::signature(&Secret::new("secret"), 1_700_000_000, br#"{"a":1}"#),
        "t=1700000000,v1=".to_owned()
            + &hex::encode(ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret"),
                br#"1700000000.{"a":1}"#
            ))
    );
}

#[tokio::test]
async fn a_restart_in_the_middle_of_retries_delivers_exactly_once() {
    let mut stub = Stub::start(vec![reply(503, "")]).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("{}/hook", stub.base);
    let config = resolve(
        &format!(
            "[notifications]\nretry_initial = \"400ms\"\nretry_max = \"400ms\"\n[notifications.channels.hooks]\nkind = \"webhook\"\nurl = \"{url}\"\nsecret_env = \"S\"\n"
        ),
        &[("S", "s")],
    )
    .unwrap();

    // First coordinator: the first attempt fails and is rescheduled.
    let store = Store::open(dir.path()).unwrap();
    let notifier = Notifier::new(store.clone(), config.clone());
    let worker = Worker::start(&notifier);
    notifier
        .enqueue(&event(EventKind::DeploymentFailed))
        .unwrap();
    let first = stub.next().await;
    let record = until("the failed attempt to be recorded", || {
        store
            .notify_pending()
            .unwrap()
            .into_iter()
            .find(|r| r.attempts == 1)
    })
    .await;
    assert_eq!(record.last_error, "HTTP 503");
    worker.stop().await;
    drop((notifier, store));

    // Second coordinator over the same data: it delivers, once.
    let store = Store::open(dir.path()).unwrap();
    let notifier = Notifier::new(store.clone(), config);
    let worker = Worker::start(&notifier);
    let second = stub.next().await;
    assert_eq!(second.header("x-flotilla-delivery"), record.id);
    assert_eq!(first.header("x-flotilla-delivery"), record.id);
    assert_eq!(first.body, second.body);
    until_outbox_empty(&store).await;
    worker.stop().await;
    drop((notifier, store));

    // A third start finds nothing to send.
    let store = Store::open(dir.path()).unwrap();
    assert!(store.notify_pending().unwrap().is_empty());
    let worker = Worker::start(&Notifier::new(
        store.clone(),
        resolve("[notifications]\n", &[]).unwrap(),
    ));
    worker.stop().await;
    assert!(
        stub.received().is_empty(),
        "delivered again after a restart"
    );
}

#[tokio::test]
async fn a_slow_channel_slows_neither_enqueue_nor_other_channels() {
    let mut slow = Stub::start(vec![Reply {
        delay: Duration::from_secs(30),
        ..reply(200, "ok")
    }])
    .await;
    let mut fast = Stub::start(vec![]).await;
    let (store, _dir) = store();
    let config = resolve(
        &format!(
            "[notifications]\nsend_timeout = \"20s\"\n\
             [notifications.channels.slow]\nkind = \"webhook\"\nurl = \"{}/slow\"\nsecret_env = \"S\"\n\
             [notifications.channels.fast]\nkind = \"webhook\"\nurl = \"{}/fast\"\nsecret_env = \"S\"\n",
            slow.base, fast.base
        ),
        &[("S", "s")],
    )
    .unwrap();
    let notifier = Notifier::new(store.clone(), config);
    let worker = Worker::start(&notifier);
    notifier
        .enqueue(&event(EventKind::DeploymentStarted))
        .unwrap();
    slow.next().await; // the slow channel now holds a request open
    fast.next().await;

    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(
            notifier
                .enqueue(&event(EventKind::DeploymentSucceeded))
                .unwrap(),
            2
        );
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "100 enqueues took {took:?}");

    // The fast channel delivers all 100 while the slow one is still stuck.
    for _ in 0..100 {
        fast.next().await;
    }
    until("the fast channel's records to be gone", || {
        let left = store.notify_pending().unwrap();
        left.iter().all(|r| r.channel == "slow").then_some(())
    })
    .await;
    assert_eq!(store.notify_pending().unwrap().len(), 101);
    assert!(
        slow.received().is_empty(),
        "the slow channel sent in parallel"
    );
    worker.stop().await; // bounded: abandons the stuck delivery
    assert_eq!(store.notify_pending().unwrap().len(), 101, "nothing lost");
}

#[tokio::test]
async fn records_for_removed_channels_are_dropped_with_a_warning() {
    let (store, _dir) = store();
    let old = Notifier::new(store.clone(), webhook_config("https://x.example.com", "s"));
    old.enqueue(&event(EventKind::DeploymentFailed)).unwrap();
    let (logs, _guard) = Logs::capture();
    let worker = Worker::start(&Notifier::new(
        store.clone(),
        resolve("[notifications]\n", &[]).unwrap(),
    ));
    until_outbox_empty(&store).await;
    worker.stop().await;
    assert!(
        logs.text()
            .contains("notifications for a channel no longer configured were dropped")
    );
    assert!(logs.text().contains("channel=hooks n_dropped=1"));
}

// ----- secrets -----

#[tokio::test]
async fn secrets_never_appear_in_logs_errors_payloads_or_the_outbox() {
    const SLACK_TOKEN: &str = "xoxslacktoken0123456789";
    const WEBHOOK_SECRET: &str = "whsec-do-not-leak-0123456789";
    const SMTP_PASSWORD: &str = "smtp-do-not-leak-0123456789";
    // A port nobody listens on: connection refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut failing_slack = Stub::start(vec![reply(500, "rollup_error"); 3]).await;
    let mut hooks = Stub::start(vec![reply(503, ""), reply(400, "bad")]).await;
    let (store, _dir) = store();
    let config = resolve(
        &format!(
            "{FAST}\n\
             [notifications.channels.dead-slack]\nkind = \"slack\"\nwebhook_url_env = \"DEAD\"\n\
             [notifications.channels.failing-slack]\nkind = \"slack\"\nwebhook_url_env = \"FAILING\"\n\
             [notifications.channels.hooks]\nkind = \"webhook\"\nurl = \"{}/h\"\nsecret_env = \"SECRET\"\n\
             [notifications.channels.mail]\nkind = \"email\"\nhost = \"127.0.0.1\"\nport = {closed}\ntls = \"none\"\n\
             username = \"flotilla\"\npassword_env = \"PASSWORD\"\nfrom = \"f@example.com\"\nto = [\"t@example.com\"]\n",
            hooks.base
        ),
        &[
            (
                "DEAD",
                &format!("http://127.0.0.1:{closed}/services/T0/B0/{SLACK_TOKEN}"),
            ),
            (
                "FAILING",
                &format!("{}/services/T1/B1/{SLACK_TOKEN}", failing_slack.base),
            ),
            ("SECRET", WEBHOOK_SECRET),
            ("PASSWORD", SMTP_PASSWORD),
        ],
    )
    .unwrap();
    let secrets = [SLACK_TOKEN, WEBHOOK_SECRET, SMTP_PASSWORD];
    let mut seen = vec![format!("{config:?}")];
    let (logs, guard) = Logs::capture();
    let notifier = Notifier::new(store.clone(), config);
    for channel in ["dead-slack", "failing-slack", "mail"] {
        let err = notifier.test(channel).await.unwrap_err();
        seen.push(err.to_string());
        seen.push(format!("{err:?}"));
    }
    let worker = Worker::start(&notifier);
    notifier
        .enqueue(&event(EventKind::DeploymentFailed))
        .unwrap();
    // Failing Slack: 500 three times; hooks: 503, then 400 (dropped).
    for _ in 0..3 {
        let request = failing_slack.next().await;
        seen.push(String::from_utf8_lossy(&request.body).into_owned());
    }
    for _ in 0..2 {
        let request = hooks.next().await;
        seen.push(String::from_utf8_lossy(&request.body).into_owned());
        seen.push(format!("{:?}", request.headers));
    }
    // Wait until the dead channels have failed at least twice too.
    until("retries on the dead channels", || {
        let pending = store.notify_pending().unwrap();
        ["dead-slack", "mail"]
            .iter()
            .all(|c| pending.iter().any(|r| r.channel == *c && r.attempts >= 2))
            .then_some(())
    })
    .await;
    seen.push(format!("{:?}", store.notify_pending().unwrap()));
    worker.stop().await;
    drop(guard);
    let logs = logs.text();
    assert!(logs.contains("channel=dead-slack"), "{logs}");
    assert!(logs.contains("channel=mail"), "{logs}");
    seen.push(logs);
    for text in &seen {
        for secret in secrets {
            assert!(!text.contains(secret), "{secret} leaked into: {text}");
        }
    }
}

// ----- email -----

/// An SMTP server (aiosmtpd) on 127.0.0.1 that requires no TLS, accepts the
/// login `flotilla` / `smtp-test-password`, and writes every message it
/// receives, parsed, as `N.json` into `out`.
const SMTP_SERVER: &str = r#"
import email, email.policy, json, os, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

port, out = int(sys.argv[1]), sys.argv[2]

def authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"flotilla" and auth_data.password == b"smtp-test-password"
    return AuthResult(success=ok, handled=False)

class Handler:
    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        record = {
            "authenticated": bool(session.authenticated),
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "from": str(msg["From"]),
            "to": str(msg["To"]),
            "subject": str(msg["Subject"]),
            "content_type": msg.get_content_type(),
            "plain": msg.get_body(("plain",)).get_content(),
            "html": msg.get_body(("html",)).get_content(),
        }
        n = len([f for f in os.listdir(out) if f.endswith(".json")])
        tmp = os.path.join(out, f"{n}.tmp")
        with open(tmp, "w") as f:
            json.dump(record, f)
        os.rename(tmp, os.path.join(out, f"{n}.json"))
        return "250 OK"

controller = Controller(Handler(), hostname="127.0.0.1", port=port,
                        authenticator=authenticator, auth_require_tls=False)
controller.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"#;

/// A Python that has aiosmtpd: Debian's first (apt's python3-aiosmtpd), then
/// whatever `python3` is on PATH.
fn python_with_aiosmtpd() -> String {
    for python in ["/usr/bin/python3", "python3"] {
        let ok = std::process::Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return python.to_owned();
        }
    }
    panic!(
        "the email test needs aiosmtpd: apt-get install python3-aiosmtpd (scripts/test installs it)"
    );
}

struct SmtpServer {
    port: u16,
    out: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl SmtpServer {
    async fn start() -> Self {
        let python = python_with_aiosmtpd();
        let out = tempfile::tempdir().unwrap();
        let script = out.path().join("smtp_server.py");
        std::fs::write(&script, SMTP_SERVER).unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut child = tokio::process::Command::new(python)
            .arg(&script)
            .arg(port.to_string())
            .arg(out.path())
            .env("PYTHONWARNINGS", "ignore")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("aiosmtpd did not start within 20 s")
            .unwrap();
        assert_eq!(ready.as_deref(), Some("ready"), "aiosmtpd failed to start");
        // The controller checks itself, but make sure the port takes connections.
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("aiosmtpd is not accepting connections");
        Self {
            port,
            out,
            _child: child,
        }
    }

    /// The `n`th message received (0-based).
    async fn message(&self, n: usize) -> Value {
        let path = self.out.path().join(format!("{n}.json"));
        let text = until("a message at the SMTP server", || {
            std::fs::read_to_string(&path).ok()
        })
        .await;
        serde_json::from_str(&text).unwrap()
    }

    fn count(&self) -> usize {
        count_json(self.out.path())
    }
}

fn count_json(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
        })
        .count()
}

#[tokio::test]
async fn email_arrives_with_headers_and_both_bodies() {
    let smtp = SmtpServer::start().await;
    let (store, _dir) = store();
    let config = resolve(
        &format!(
            "{FAST}\n[notifications.channels.oncall]\nkind = \"email\"\nhost = \"127.0.0.1\"\nport = {}\n\
             tls = \"none\"\nusername = \"flotilla\"\npassword_env = \"PW\"\n\
             from = \"Flotilla <flotilla@example.com>\"\nto = [\"oncall@example.com\", \"Ops <ops@example.com>\"]\n",
            smtp.port
        ),
        &[("PW", "smtp-test-password")],
    )
    .unwrap();
    let notifier = Notifier::new(store.clone(), config);
    let worker = Worker::start(&notifier);
    notifier
        .enqueue(&event(EventKind::DeploymentRolledBack))
        .unwrap();
    let message = smtp.message(0).await;
    assert_eq!(message["authenticated"], true);
    assert_eq!(message["mail_from"], "flotilla@example.com");
    assert_eq!(
        message["rcpt_tos"],
        json!(["oncall@example.com", "ops@example.com"])
    );
    assert_eq!(message["from"], "Flotilla <flotilla@example.com>");
    assert_eq!(message["to"], "oncall@example.com, Ops <ops@example.com>");
    assert_eq!(
        message["subject"],
        "[flotilla] shop in production: rolled back"
    );
    assert_eq!(message["content_type"], "multipart/alternative");
    // SMTP lines end in CRLF.
    let plain = message["plain"].as_str().unwrap().replace("\r\n", "\n");
    assert_eq!(
        plain,
        "shop in production: rolled back\n\n\
         App:         shop\n\
         Environment: production\n\
         Release:     #42\n\
         Image:       registry.example.com/shop:v42\n\
         By:          alice\n\
         Duration:    2m 05s\n\
         Deployment:  0190-dep\n\
         At:          2026-01-01T00:00:00Z\n\
         \nReason:\n2 of 4 hosts failed: health check on web-2 answered 502\n\
         \nLogs: flotilla logs 0190-dep\n"
    );
    let html = message["html"].as_str().unwrap();
    assert!(
        html.contains("<h2>shop in production: rolled back</h2>"),
        "{html}"
    );
    assert!(
        html.contains(
            "<tr><th align=\"left\" style=\"padding-right: 1em\">Release</th><td>#42</td></tr>"
        ),
        "{html}"
    );
    assert!(
        html.contains("<pre>2 of 4 hosts failed: health check on web-2 answered 502</pre>"),
        "{html}"
    );
    assert!(
        html.contains("<code>flotilla logs 0190-dep</code>"),
        "{html}"
    );
    until_outbox_empty(&store).await;

    // The test message goes straight out, not through the outbox.
    let outcome = notifier.test("oncall").await.unwrap();
    assert!(
        outcome.starts_with("email channel oncall: delivered (SMTP 250"),
        "{outcome}"
    );
    let test = smtp.message(1).await;
    assert_eq!(
        test["subject"],
        "[flotilla] test message for channel oncall"
    );
    worker.stop().await;
    assert_eq!(smtp.count(), 2);
}

#[tokio::test]
async fn email_with_a_wrong_password_is_refused_for_good() {
    let smtp = SmtpServer::start().await;
    let (store, _dir) = store();
    let config = resolve(
        &format!(
            "{FAST}\n[notifications.channels.oncall]\nkind = \"email\"\nhost = \"127.0.0.1\"\nport = {}\n\
             tls = \"none\"\nusername = \"flotilla\"\npassword_env = \"PW\"\n\
             from = \"flotilla@example.com\"\nto = [\"oncall@example.com\"]\n",
            smtp.port
        ),
        &[("PW", "wrong-password-value")],
    )
    .unwrap();
    let notifier = Notifier::new(store, config);
    let err = notifier.test("oncall").await.unwrap_err().to_string();
    assert!(err.starts_with("channel oncall: refused: "), "{err}");
    assert!(err.contains("535"), "{err}");
    assert!(!err.contains("wrong-password-value"), "{err}");
    assert_eq!(smtp.count(), 0);
}

#[tokio::test]
async fn starttls_is_required_not_opportunistic() {
    // aiosmtpd here offers no STARTTLS: the message must not go out in clear.
    let smtp = SmtpServer::start().await;
    let (store, _dir) = store();
    let config = resolve(
        &format!(
            "{FAST}\n[notifications.channels.oncall]\nkind = \"email\"\nhost = \"127.0.0.1\"\nport = {}\n\
             tls = \"starttls\"\nfrom = \"flotilla@example.com\"\nto = [\"oncall@example.com\"]\n",
            smtp.port
        ),
        &[],
    )
    .unwrap();
    let notifier = Notifier::new(store, config);
    let err = notifier.test("oncall").await.unwrap_err().to_string();
    assert!(err.starts_with("channel oncall: "), "{err}");
    assert_eq!(smtp.count(), 0);
}

/// The Python receiver printed in docs/notifications.md, run as written.
#[tokio::test]
async fn the_documented_python_receiver_verifies_our_signatures() {
    let doc = include_str!("../../../docs/notifications.md");
    let start = doc.find("<!-- receiver:start").unwrap();
    let end = doc.find("<!-- receiver:end -->").unwrap();
    let block = &doc[start..end];
    let code = block
        .split_once("```python\n")
        .and_then(|(_, rest)| rest.rsplit_once("```"))
        .unwrap()
        .0;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("receiver.py");
    std::fs::write(&script, code).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut child = tokio::process::Command::new(python)
        .arg(&script)
        .env("FLOTILLA_WEBHOOK_SECRET", "whsec-docs-example")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut printed = BufReader::new(child.stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the receiver did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("http://127.0.0.1:{port}/");

    let (store, _dir) = store();
    let notifier = Notifier::new(store.clone(), webhook_config(&url, "whsec-docs-example"));
    let worker = Worker::start(&notifier);
    notifier
        .enqueue(&event(EventKind::DeploymentFailed))
        .unwrap();
    let line = tokio::time::timeout(Duration::from_secs(10), printed.next_line())
        .await
        .expect("the receiver printed nothing")
        .unwrap();
    assert_eq!(
        line.as_deref(),
        Some(
            "deployment_failed shop production 2 of 4 hosts failed: health check on web-2 answered 502"
        )
    );
    until_outbox_empty(&store).await;
    worker.stop().await;

    let wrong = Notifier::new(store, webhook_config(&url, "another-secret"));
    let err = wrong.test("hooks").await.unwrap_err().to_string();
    assert_eq!(err, "channel hooks: refused: HTTP 401");
}

#[tokio::test]
async fn fleet_events_are_sent_once_per_episode() {
    use crate::store::Host;
    use flotilla_shared::{EnvName, HostId, Labels};
    let (store, _dir) = store();
    let notifier = Notifier::new(store.clone(), webhook_config("https://x.example.com", "s"));
    let now = 1_767_225_600_000;
    let minute = 60_000;
    let day = 24 * 60 * minute;
    let host = |id: &str, last_seen_ms: i64, cert_not_after_ms: i64, revoked: bool| Host {
        host_id: HostId::parse(id).unwrap(),
        env: EnvName::parse("production").unwrap(),
        labels: Labels::default(),
        agent_version: "test".into(),
        joined_at_ms: now - 100 * day,
        last_seen_ms,
        revoked,
        cert_not_after_ms,
    };
    let mut hosts = vec![
        host("online", now - 60 * minute, now + 60 * day, false), // connected: no event
        host("gone", now - 6 * minute, now + 60 * day, false),    // offline 6 min
        host("blip", now - 3 * minute, now + 60 * day, false),    // offline 3 min: not yet
        host("revoked", now - 60 * minute, now + day, true),      // revoked: never
        host("expiring", now, now + 3 * day, false),              // cert in 3 days
    ];
    let connected = |h: &HostId| matches!(h.as_str(), "online" | "expiring");
    assert_eq!(notifier.check_fleet(&hosts, connected, now).unwrap(), 2);
    let mut events: Vec<Event> = store
        .notify_pending()
        .unwrap()
        .into_iter()
        .map(|r| serde_json::from_value(r.event).unwrap())
        .collect();
    events.sort_by_key(|e| e.host.clone());
    assert_eq!(events[0].kind, EventKind::CertExpiring);
    assert_eq!(events[0].host.as_deref(), Some("expiring"));
    assert_eq!(
        events[0].reason.as_deref(),
        Some(
            "agent certificate expires 2026-01-04T00:00:00Z (in 72h 00m); the agent renews it while connected"
        )
    );
    assert_eq!(events[1].kind, EventKind::AgentDisconnected);
    assert_eq!(
        events[1].summary(),
        "gone in production: agent disconnected"
    );
    assert_eq!(
        events[1].reason.as_deref(),
        Some("no contact for 6m 00s (last seen 2025-12-31T23:54:00Z)")
    );

    // Same state later: nothing new, also from a fresh Notifier (restart).
    assert_eq!(
        notifier
            .check_fleet(&hosts, connected, now + minute)
            .unwrap(),
        0
    );
    let again = Notifier::new(store.clone(), webhook_config("https://x.example.com", "s"));
    assert_eq!(
        again
            .check_fleet(&hosts, connected, now + 2 * minute)
            .unwrap(),
        1
    ); // blip: 5 min quiet now
    assert_eq!(
        again
            .check_fleet(&hosts, connected, now + 3 * minute)
            .unwrap(),
        0
    );
    // `gone` came back and went quiet again: a new episode. A renewed cert: quiet.
    hosts[1].last_seen_ms = now + 5 * minute;
    hosts[4].cert_not_after_ms = now + 90 * day;
    assert_eq!(
        again
            .check_fleet(&hosts, connected, now + 11 * minute)
            .unwrap(),
        1
    );
}
