//! Notifications: events (deployment started/succeeded/failed/…, host failed,
//! agent disconnected, certificate expiring) delivered to Slack, signed
//! webhooks and email through a durable outbox — which also carries Grafana
//! annotations (`grafana.rs`) and Sentry deploy markers (`sentry_releases.rs`).
//!
//! [`Notifier::enqueue`] only writes outbox records (one per matching
//! channel, in sled via `store::notify`) and wakes the worker; it never sends,
//! so a slow or dead channel cannot slow a deployment. [`Notifier::run`] is
//! the worker: each channel sends one record at a time, earliest due first,
//! several channels at once (`max_in_flight`). 2xx removes the record and
//! flushes, so it is never sent again; 429, 5xx and transport errors retry
//! with exponential backoff and jitter (or after `Retry-After`), pausing the
//! channel meanwhile; other 4xx drop the record; a record still undelivered
//! after `give_up_after` is dropped with an error. Records survive restarts;
//! one whose attempt was cut short by a crash is sent again (receivers dedupe
//! webhooks on `X-Flotilla-Delivery`).
//!
//! `check_fleet` (fleet.rs) turns host records into `agent_disconnected` and
//! `cert_expiring` events, once per episode.
//!
//! Not here: deciding when a deployment event happens (the rollout engine
//! calls `enqueue`), config file loading (the coordinator embeds
//! [`NotifyConfig`] as `[notifications]`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use flotilla_shared::time::{ms_to_duration, now_ms};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::store::notify::NotifyRecord;
use crate::store::{Store, StoreError};

pub mod config;
mod email;
pub mod event;
mod fleet;
pub mod grafana;
mod outcome;
pub mod sentry_releases;
mod slack;
#[cfg(test)]
mod tests;
pub mod webhook;

pub use config::{
    Channel, ChannelConfig, ConfigError, EmailTarget, NotifyConfig, ResolvedNotify, RetryPolicy,
    Secret, SmtpTls, Target,
};
pub use event::{Event, EventKind};
use outcome::Outcome;

/// How long `run` waits for deliveries in flight when it is cancelled; the
/// rest are abandoned and sent again after a restart.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long a channel waits after the outbox could not be read.
const STORE_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("no notification channel named {0:?}")]
    UnknownChannel(String),
    /// The channel did not take the message; `detail` names no secret.
    #[error("channel {channel}: {detail}")]
    Delivery { channel: String, detail: String },
}

/// Delivers notifications. One per coordinator (and per store): two workers
/// over one outbox would send records twice.
pub struct Notifier {
    store: Store,
    config: ResolvedNotify,
    /// Woken by `enqueue`; a wake-up with nobody waiting is kept for the next wait.
    wake: Notify,
}

impl Notifier {
    pub fn new(store: Store, config: ResolvedNotify) -> Arc<Self> {
        Arc::new(Self {
            store,
            config,
            wake: Notify::new(),
        })
    }

    pub fn config(&self) -> &ResolvedNotify {
        &self.config
    }

    /// Writes one outbox record per channel whose filters match `event` and
    /// wakes the worker; returns how many. Never sends, never waits on a
    /// channel: a sled write, durable with the store's next flush.
    pub fn enqueue(&self, event: &Event) -> Result<usize, StoreError> {
        let channels: Vec<&Channel> = self
            .config
            .channels
            .iter()
            .filter(|c| c.wants(event))
            .collect();
        if channels.is_empty() {
            return Ok(0);
        }
        let json = serde_json::to_value(event).map_err(StoreError::Encode)?;
        let now = now_ms();
        let records: Vec<NotifyRecord> = channels
            .iter()
            .map(|c| NotifyRecord {
                id: uuid::Uuid::now_v7().to_string(),
                channel: c.name.clone(),
                event: json.clone(),
                attempts: 0,
                next_attempt_ms: now,
                created_at_ms: now,
                last_error: String::new(),
            })
            .collect();
        self.store.notify_insert(&records)?;
        self.wake.notify_one();
        Ok(records.len())
    }

    /// The delivery worker, until `cancel`; then it waits up to 3 s for
    /// deliveries in flight and flushes the store. Start it once per
    /// `Notifier`. Records left by an earlier run are picked up; records for
    /// channels no longer configured are dropped with a warning.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        self.drop_unconfigured();
        let n = self.config.channels.len();
        let mut busy = vec![false; n];
        let mut paused_until: Vec<Option<Instant>> = vec![None; n];
        let mut tasks: JoinSet<Option<Duration>> = JoinSet::new();
        let mut task_channel: HashMap<tokio::task::Id, usize> = HashMap::new();
        // The channel looked at first rotates, so that with more channels
        // than `max_in_flight` none waits for ever.
        let mut first = 0;
        loop {
            let now = Instant::now();
            let now_wall = now_ms();
            let mut wake_at: Option<Instant> = None;
            for k in 0..n {
                let i = (first + k) % n;
                if busy[i] {
                    continue;
                }
                if let Some(until) = paused_until[i] {
                    if until > now {
                        wake_at = Some(wake_at.map_or(until, |w| w.min(until)));
                        continue;
                    }
                    paused_until[i] = None;
                }
                if tasks.len() >= self.config.max_in_flight {
                    break; // a finished delivery wakes the loop
                }
                let channel = &self.config.channels[i];
                match self.store.notify_next(&channel.name) {
                    Ok(None) => {}
                    Ok(Some(record)) if record.next_attempt_ms > now_wall => {
                        let due = now + ms_to_duration(record.next_attempt_ms - now_wall);
                        wake_at = Some(wake_at.map_or(due, |w| w.min(due)));
                    }
                    Ok(Some(record)) => {
                        busy[i] = true;
                        let this = Arc::clone(&self);
                        let handle = tasks.spawn(async move { this.attempt(i, record).await });
                        task_channel.insert(handle.id(), i);
                    }
                    Err(e) => {
                        tracing::error!(channel = %channel.name, "reading the notification outbox failed: {e}");
                        paused_until[i] = Some(now + STORE_RETRY);
                        wake_at =
                            Some(wake_at.map_or(now + STORE_RETRY, |w| w.min(now + STORE_RETRY)));
                    }
                }
            }
            first = (first + 1) % n.max(1);
            let sleep_until = wake_at.unwrap_or_else(|| now + Duration::from_secs(3600));
            tokio::select! {
                () = cancel.cancelled() => break,
                Some(joined) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let (id, pause) = match joined {
                        Ok((id, pause)) => (id, pause),
                        Err(e) => {
                            tracing::error!("notification delivery task failed: {e}");
                            (e.id(), None)
                        }
                    };
                    if let Some(i) = task_channel.remove(&id) {
                        busy[i] = false;
                        paused_until[i] = pause.map(|d| Instant::now() + d);
                    }
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(sleep_until), if wake_at.is_some() => {}
            }
        }
        if !tasks.is_empty() {
            let drain = async { while tasks.join_next().await.is_some() {} };
            if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
                tracing::warn!(
                    n_abandoned = tasks.len(),
                    "notification deliveries cut short by shutdown; they are sent again after a restart"
                );
                tasks.abort_all();
            }
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!("flushing the notification outbox failed: {e}");
        }
    }

    /// Sends a test message to `channel` now, outside the outbox, and
    /// describes the outcome (`slack channel ops: delivered (HTTP 200: ok)`).
    /// Cancel-safe.
    pub async fn test(&self, channel: &str) -> Result<String, NotifyError> {
        let channel = self
            .config
            .channel(channel)
            .ok_or_else(|| NotifyError::UnknownChannel(channel.to_owned()))?;
        let name = channel.name.as_str();
        let send = async {
            match &channel.target {
                Target::Slack { webhook_url } => {
                    slack::send(&self.config.http, webhook_url, &slack::test_payload(name)).await
                }
                Target::Webhook { url, secret } => {
                    let body =
                        serde_json::json!({ "kind": "test", "channel": name, "at_ms": now_ms() });
                    let delivery_id = uuid::Uuid::now_v7().to_string();
                    webhook::send(
                        &self.config.http,
                        url,
                        secret,
                        "test",
                        &delivery_id,
                        body.to_string().into_bytes(),
                    )
                    .await
                }
                Target::Email(target) => {
                    email::send(target, self.config.send_timeout, email::render_test(name)).await
                }
                Target::Grafana(target) => {
                    let mut event = Event::new(EventKind::DeploymentSucceeded, "test");
                    event.app = Some("flotilla-test".into());
                    event.deployment_id = Some(format!("test-{}", uuid::Uuid::now_v7()));
                    event.duration_ms = Some(0);
                    grafana::send(&self.config.http, &self.store, target, &event).await
                }
                Target::SentryReleases(target) => {
                    // The first configured app, release `APP@flotilla-test`.
                    let app = target.projects.keys().next().cloned().unwrap_or_default();
                    let mut event = Event::new(EventKind::DeploymentSucceeded, "test");
                    event.image = Some(format!("{app}:flotilla-test"));
                    event.app = Some(app);
                    sentry_releases::send(&self.config.http, target, &event).await
                }
            }
        };
        match self.bounded(channel, send).await {
            Outcome::Delivered(detail) => Ok(format!(
                "{} channel {name}: delivered ({detail})",
                channel.kind()
            )),
            Outcome::Retry { detail, .. } => Err(NotifyError::Delivery {
                channel: name.to_owned(),
                detail: format!("not delivered: {detail} (temporary; events are retried)"),
            }),
            Outcome::Permanent { detail, .. } => Err(NotifyError::Delivery {
                channel: name.to_owned(),
                detail: format!("refused: {detail}"),
            }),
        }
    }

    /// One delivery attempt of `record` to channel `i`, recorded in the
    /// store. Returns how long the channel should pause (after a failure).
    async fn attempt(&self, i: usize, record: NotifyRecord) -> Option<Duration> {
        let channel = &self.config.channels[i];
        let event: Event = match serde_json::from_value(record.event.clone()) {
            Ok(event) => event,
            Err(e) => {
                tracing::error!(channel = %channel.name, delivery_id = %record.id, "unreadable notification record dropped: {e}");
                self.remove(&record);
                return None;
            }
        };
        let outcome = self.send_event(channel, &event, &record.id).await;
        let attempts = record.attempts.saturating_add(1);
        match outcome {
            Outcome::Delivered(detail) => {
                self.remove(&record);
                // Durable before anything else happens: never sent twice.
                if let Err(e) = self.store.flush().await {
                    tracing::error!(channel = %channel.name, delivery_id = %record.id, "flushing the notification outbox failed: {e}");
                }
                tracing::info!(channel = %channel.name, delivery_id = %record.id, event = %event.kind, attempts, outcome = %detail, "notification delivered");
                None
            }
            Outcome::Permanent { detail, status } => {
                tracing::error!(channel = %channel.name, delivery_id = %record.id, event = %event.kind, attempts, status, "notification refused, dropped: {detail}");
                self.remove(&record);
                None
            }
            Outcome::Retry {
                detail,
                after,
                status,
            } => {
                let delay = after.unwrap_or_else(|| backoff(&self.config.retry, attempts));
                let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
                let next_ms = now_ms().saturating_add(delay_ms);
                let give_up_ms =
                    i64::try_from(self.config.retry.give_up_after.as_millis()).unwrap_or(i64::MAX);
                if next_ms.saturating_sub(record.created_at_ms) > give_up_ms {
                    tracing::error!(channel = %channel.name, delivery_id = %record.id, event = %event.kind, attempts, status, "notification undeliverable, giving up: {detail}");
                    self.remove(&record);
                } else {
                    match self
                        .store
                        .notify_reschedule(&record.id, attempts, next_ms, &detail)
                    {
                        Ok(_) => {
                            tracing::warn!(channel = %channel.name, delivery_id = %record.id, event = %event.kind, attempts, status, retry_in_ms = delay_ms, "notification not delivered, will retry: {detail}");
                        }
                        Err(e) => {
                            tracing::error!(channel = %channel.name, delivery_id = %record.id, "recording a failed notification attempt failed: {e}");
                        }
                    }
                }
                Some(delay)
            }
        }
    }

    /// Renders and sends `event` to `channel`.
    async fn send_event(&self, channel: &Channel, event: &Event, delivery_id: &str) -> Outcome {
        let public_url = self.config.public_url.as_deref();
        let send = async {
            match &channel.target {
                Target::Slack { webhook_url } => {
                    let body = slack::payload(event, public_url);
                    slack::send(&self.config.http, webhook_url, &body).await
                }
                Target::Webhook { url, secret } => match serde_json::to_vec(event) {
                    Ok(body) => {
                        webhook::send(
                            &self.config.http,
                            url,
                            secret,
                            event.kind.as_str(),
                            delivery_id,
                            body,
                        )
                        .await
                    }
                    Err(e) => Outcome::Permanent {
                        detail: format!("cannot encode the event: {e}"),
                        status: None,
                    },
                },
                Target::Email(target) => {
                    let message = email::render(event, public_url);
                    email::send(target, self.config.send_timeout, message).await
                }
                Target::Grafana(target) => {
                    grafana::send(&self.config.http, &self.store, target, event).await
                }
                Target::SentryReleases(target) => {
                    sentry_releases::send(&self.config.http, target, event).await
                }
            }
        };
        self.bounded(channel, send).await
    }

    /// `send`, given at most `send_timeout` + 5 s, its description scrubbed
    /// of the channel's secrets.
    async fn bounded(&self, channel: &Channel, send: impl Future<Output = Outcome>) -> Outcome {
        let limit = self.config.send_timeout + Duration::from_secs(5);
        let outcome = tokio::time::timeout(limit, send)
            .await
            .unwrap_or_else(|_| Outcome::Retry {
                detail: format!("no answer within {}", humantime::format_duration(limit)),
                after: None,
                status: None,
            });
        outcome.scrubbed(&channel.target.secrets())
    }

    fn remove(&self, record: &NotifyRecord) {
        if let Err(e) = self.store.notify_remove(&record.id) {
            tracing::error!(channel = %record.channel, delivery_id = %record.id, "removing a notification from the outbox failed: {e}");
        }
    }

    /// Drops records whose channel was removed from the config.
    fn drop_unconfigured(&self) {
        let records = match self.store.notify_pending() {
            Ok(records) => records,
            Err(e) => {
                tracing::error!("reading the notification outbox failed: {e}");
                return;
            }
        };
        let mut dropped: BTreeMap<String, usize> = BTreeMap::new();
        for record in records {
            if self.config.channel(&record.channel).is_none() {
                self.remove(&record);
                *dropped.entry(record.channel).or_default() += 1;
            }
        }
        for (channel, n_dropped) in dropped {
            tracing::warn!(%channel, n_dropped, "notifications for a channel no longer configured were dropped");
        }
    }
}

/// Exponential from `initial`, capped at `max`, with equal jitter (half
/// fixed, half random) so retries of many records spread out.
fn backoff(policy: &RetryPolicy, attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    let base = policy
        .initial
        .saturating_mul(1 << doublings)
        .min(policy.max);
    let half = base / 2;
    half + half.mul_f64(random_fraction())
}

/// Uniform in [0, 1]; 0.5 if the system RNG fails.
fn random_fraction() -> f64 {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX)
}
