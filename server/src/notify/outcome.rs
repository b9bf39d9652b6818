//! The result of one delivery attempt, for every kind of channel, and how an
//! HTTP answer or error maps to it. Descriptions never contain a URL or a
//! secret: they are logged, stored and returned by `notify test`.

use std::time::Duration;

/// What one attempt achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Accepted (2xx, SMTP 250): never send again.
    Delivered(String),
    /// Worth another try (429, 5xx, transport errors, SMTP 4xx); `after` is
    /// the receiver's `Retry-After`.
    Retry {
        detail: String,
        after: Option<Duration>,
        status: Option<u16>,
    },
    /// Refused for good (other 4xx, SMTP 5xx): drop it.
    Permanent { detail: String, status: Option<u16> },
}

impl Outcome {
    pub fn detail(&self) -> &str {
        match self {
            Self::Delivered(d)
            | Self::Retry { detail: d, .. }
            | Self::Permanent { detail: d, .. } => d,
        }
    }

    /// Replaces every occurrence of `secrets` in the description with `***`.
    pub fn scrubbed(self, secrets: &[&str]) -> Self {
        let clean = |d: String| scrub(d, secrets);
        match self {
            Self::Delivered(d) => Self::Delivered(clean(d)),
            Self::Retry {
                detail,
                after,
                status,
            } => Self::Retry {
                detail: clean(detail),
                after,
                status,
            },
            Self::Permanent { detail, status } => Self::Permanent {
                detail: clean(detail),
                status,
            },
        }
    }
}

pub fn scrub(mut text: String, secrets: &[&str]) -> String {
    for secret in secrets {
        if !secret.is_empty() && text.contains(secret) {
            text = text.replace(secret, "***");
        }
    }
    text
}

/// Longest `Retry-After` honoured; a receiver asking for more gets retried
/// after this anyway (and the give-up bound still applies).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Maps an HTTP answer: 2xx delivered; 429 and 5xx retried (honouring
/// `Retry-After` in seconds); anything else refused for good.
pub async fn from_response(response: reqwest::Response) -> Outcome {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(flotilla_shared::backoff::parse_retry_after)
        .map(|d| d.min(MAX_RETRY_AFTER));
    // A short excerpt of the body: Slack explains refusals there
    // (`invalid_payload`, `channel_not_found`).
    let body = match tokio::time::timeout(Duration::from_secs(2), response.text()).await {
        Ok(Ok(text)) => excerpt(&text),
        _ => String::new(),
    };
    let code = status.as_u16();
    let detail = if body.is_empty() {
        format!("HTTP {code}")
    } else {
        format!("HTTP {code}: {body}")
    };
    if status.is_success() {
        Outcome::Delivered(detail)
    } else if code == 429 || status.is_server_error() {
        Outcome::Retry {
            detail,
            after: retry_after,
            status: Some(code),
        }
    } else {
        Outcome::Permanent {
            detail,
            status: Some(code),
        }
    }
}

/// A transport error (connect, TLS, timeout): retried.
pub fn from_error(error: reqwest::Error) -> Outcome {
    Outcome::Retry {
        detail: describe(&error.without_url()),
        after: None,
        status: None,
    }
}

/// The informative part of a reqwest error, without its URL.
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".into();
    }
    let mut parts = vec![error.to_string()];
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        let text = inner.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = inner.source();
    }
    parts.join(": ")
}

/// The first 200 printable characters on one line.
fn excerpt(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    one_line.trim().to_owned()
}
