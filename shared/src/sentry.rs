//! Sentry for both daemons, off unless a DSN is configured: the client
//! (reqwest on rustls with the process-wide ring provider; no OpenSSL), the
//! scrubbing `before_send` (registered secrets → `***`, no request or user
//! data) and the tracing layers `telemetry::init` installs: `ERROR` events
//! become Sentry events carrying the `tags.*` fields of their spans, and the
//! spans named in [`TRACED_SPANS`] become transactions.
//!
//! Deploy work opens a span with tag fields, e.g.
//! `tracing::info_span!("command", tags.host = %host, tags.app = %app, …)`;
//! any `tracing::error!` inside it is sent with those tags.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Span names that become Sentry transactions (sampled by
/// `--sentry-traces-sample-rate`): the server's per-deployment work and the
/// agent's per-command execution.
pub const TRACED_SPANS: &[&str] = &["deployment", "command"];

/// Span fields with this prefix become tags of the Sentry events inside them.
pub const TAG_PREFIX: &str = "tags.";

static ENABLED: AtomicBool = AtomicBool::new(false);
static RELEASE: OnceLock<String> = OnceLock::new();

/// The Sentry flags both daemons take (`#[command(flatten)]`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SentryArgs {
    /// Sentry DSN (`https://KEY@o1.ingest.sentry.io/42`); Sentry is off without it.
    #[arg(long, env = "SENTRY_DSN", hide_env_values = true, global = true)]
    pub sentry_dsn: Option<String>,
    /// The environment events are filed under (e.g. `production`).
    #[arg(long, env = "SENTRY_ENVIRONMENT", global = true)]
    pub sentry_environment: Option<String>,
    /// Share of deploy spans sent as Sentry transactions, 0.0 to 1.0.
    #[arg(
        long,
        env = "SENTRY_TRACES_SAMPLE_RATE",
        default_value_t = 0.0,
        global = true
    )]
    pub sentry_traces_sample_rate: f32,
}

/// Whether [`init`] started a client (the tracing layers are installed only then).
pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The release events carry (`flotilla-agent@0.1.0`), once [`init`] ran with a DSN.
pub fn release() -> Option<&'static str> {
    RELEASE.get().map(String::as_str)
}

/// Starts the Sentry client when a DSN is set; keep the guard alive until the
/// end of `main` (dropping it flushes queued events, up to 2 s). Call it in a
/// plain `main`, after `tls::install_crypto_provider()` and before the tokio
/// runtime and `telemetry::init`. `name` is the binary (`flotilla-server`),
/// `version` its version.
pub fn init(
    args: &SentryArgs,
    name: &str,
    version: &str,
) -> anyhow::Result<Option<sentry::ClientInitGuard>> {
    let Some(dsn) = args
        .sentry_dsn
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
    else {
        return Ok(None);
    };
    // Parsed here: `ClientOptions::dsn` panics on a bad one. The error does
    // not repeat the DSN (it may carry a secret key).
    let dsn: sentry::types::Dsn = dsn
        .parse()
        .map_err(|e| anyhow::anyhow!("SENTRY_DSN (--sentry-dsn) is not a valid DSN: {e}"))?;
    if let Some(secret) = dsn.secret_key() {
        crate::secret::register_for_scrubbing(secret);
    }
    let rate = args.sentry_traces_sample_rate;
    if !(0.0..=1.0).contains(&rate) {
        anyhow::bail!("--sentry-traces-sample-rate must be between 0 and 1, not {rate}");
    }
    let release = format!("{name}@{version}");
    let _ = RELEASE.set(release.clone());
    let mut options = sentry::ClientOptions::new()
        .release(release)
        .traces_sample_rate(rate)
        .send_default_pii(false)
        .before_send(|event| Some(scrub_event(event)));
    options.dsn = Some(dsn);
    if let Some(env) = args.sentry_environment.as_deref().filter(|e| !e.is_empty()) {
        options = options.environment(env.to_owned());
    }
    let guard = sentry::init(options);
    ENABLED.store(guard.is_enabled(), Ordering::Relaxed);
    Ok(Some(guard))
}

/// `event` with no request or user data, and every registered secret
/// replaced by `***` in every string it holds (message, exception values,
/// breadcrumbs, tags, extra, contexts).
pub fn scrub_event(
    mut event: sentry::protocol::Event<'static>,
) -> sentry::protocol::Event<'static> {
    event.request = None;
    event.user = None;
    let Ok(mut json) = serde_json::to_value(&event) else {
        return event;
    };
    if !scrub_json(&mut json) {
        return event;
    }
    match serde_json::from_value(json) {
        Ok(scrubbed) => scrubbed,
        // Never send what could not be scrubbed: keep only the safe skeleton.
        Err(_) => sentry::protocol::Event {
            event_id: event.event_id,
            level: event.level,
            release: event.release,
            environment: event.environment,
            message: Some("event dropped by secret scrubbing".into()),
            ..Default::default()
        },
    }
}

/// Scrubs every string in `value` (keys included); true if anything changed.
fn scrub_json(value: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match value {
        Value::String(s) => match crate::secret::scrub(s) {
            Some(clean) => {
                *s = clean;
                true
            }
            None => false,
        },
        Value::Array(items) => {
            // Every item, no short-circuit.
            let mut changed = false;
            for v in items {
                changed |= scrub_json(v);
            }
            changed
        }
        Value::Object(map) => {
            let mut changed = false;
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if let Some(clean) = crate::secret::scrub(&key)
                    && let Some(v) = map.remove(&key)
                {
                    map.insert(clean, v);
                    changed = true;
                }
            }
            for v in map.values_mut() {
                changed |= scrub_json(v);
            }
            changed
        }
        _ => false,
    }
}

/// The base URL of the Sentry ingest this process reports to (no key in
/// it), when Sentry is on; `flotilla doctor` checks it answers.
pub fn ingest_url() -> Option<String> {
    let client = sentry::Hub::current().client()?;
    let dsn = client.dsn()?;
    Some(format!("{}://{}:{}/", dsn.scheme(), dsn.host(), dsn.port()))
}

/// The tracing layers for Sentry (installed by `telemetry::init` when
/// [`is_enabled`]): deploy spans → transactions, `ERROR` events → Sentry
/// events with their spans' tags.
pub fn layers<S>() -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    use tracing_subscriber::filter::filter_fn;
    let spans = sentry::integrations::tracing::SpanLayer::new().with_filter(filter_fn(|m| {
        m.is_span() && TRACED_SPANS.contains(&m.name())
    }));
    spans.and_then(TaggedErrors)
}

/// The `tags.*` fields of a span, kept in its extensions.
#[derive(Default)]
struct SpanTags(BTreeMap<String, String>);

impl Visit for SpanTags {
    fn record_str(&mut self, field: &Field, value: &str) {
        if let Some(tag) = field.name().strip_prefix(TAG_PREFIX) {
            self.0.insert(tag.to_owned(), value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if let Some(tag) = field.name().strip_prefix(TAG_PREFIX) {
            self.0.insert(tag.to_owned(), format!("{value:?}"));
        }
    }
}

/// Turns `ERROR` events into Sentry events (through sentry-tracing's
/// converter) and adds the `tags.*` fields of every enclosing span; inner
/// spans win. Sentry's own `ErrorLayer` cannot do the latter: it files span
/// fields as context data, not tags.
struct TaggedErrors;

impl<S> Layer<S> for TaggedErrors
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: Context<'_, S>,
    ) {
        let mut tags = SpanTags::default();
        attrs.record(&mut tags);
        if !tags.0.is_empty()
            && let Some(span) = ctx.span(id)
        {
            span.extensions_mut().insert(tags);
        }
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: Context<'_, S>,
    ) {
        let Some(span) = ctx.span(id) else { return };
        let mut ext = span.extensions_mut();
        match ext.get_mut::<SpanTags>() {
            Some(tags) => values.record(tags),
            None => {
                let mut tags = SpanTags::default();
                values.record(&mut tags);
                if !tags.0.is_empty() {
                    ext.insert(tags);
                }
            }
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if *event.metadata().level() != tracing::Level::ERROR {
            return;
        }
        #[allow(deprecated)] // the converter is the supported way to build the event
        let mut sentry_event = sentry::integrations::tracing::event_from_event::<S>(event, None);
        if let Some(scope) = ctx.event_scope(event) {
            // Outermost first, so inner spans override.
            for span in scope.from_root() {
                if let Some(tags) = span.extensions().get::<SpanTags>() {
                    // Empty values (e.g. no tenant) are left out, as Sentry wants.
                    for (k, v) in tags.0.iter().filter(|(_, v)| !v.is_empty()) {
                        sentry_event.tags.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        sentry::capture_event(sentry_event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_scrubbed() {
        crate::secret::register_for_scrubbing("tok-0123456789");
        let mut event = sentry::protocol::Event {
            message: Some("auth with tok-0123456789 failed".into()),
            ..Default::default()
        };
        event.tags.insert("token".into(), "tok-0123456789".into());
        event.user = Some(sentry::protocol::User {
            email: Some("a@b.c".into()),
            ..Default::default()
        });
        let clean = scrub_event(event);
        assert_eq!(clean.message.as_deref(), Some("auth with *** failed"));
        assert_eq!(clean.tags.get("token").map(String::as_str), Some("***"));
        assert!(clean.user.is_none());
    }
}
