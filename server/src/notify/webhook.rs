//! Generic signed webhooks: the event JSON, POSTed with
//! `X-Flotilla-Event`, `X-Flotilla-Delivery` (receivers dedupe on it) and
//! `X-Flotilla-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`
//! (Stripe's scheme; docs/notifications.md shows how to verify it).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::config::Secret;
use super::outcome::{self, Outcome};

pub const EVENT_HEADER: &str = "X-Flotilla-Event";
pub const DELIVERY_HEADER: &str = "X-Flotilla-Delivery";
pub const SIGNATURE_HEADER: &str = "X-Flotilla-Signature";

/// `t=<unix_secs>,v1=<hex HMAC-SHA256(secret, "<unix_secs>.<body>")>`.
pub fn signature(secret: &Secret, unix_secs: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail; an empty key is
    // refused when the config is resolved.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_secs},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// One signed POST of `body`. Cancel-safe (nothing is recorded here).
pub async fn send(
    http: &reqwest::Client,
    url: &str,
    secret: &Secret,
    event: &str,
    delivery_id: &str,
    body: Vec<u8>,
) -> Outcome {
    let now = flotilla_shared::time::now_ms() / 1000;
    let request = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(EVENT_HEADER, event)
        .header(DELIVERY_HEADER, delivery_id)
        .header(SIGNATURE_HEADER, signature(secret, now, &body))
        .body(body);
    match request.send().await {
        Ok(response) => outcome::from_response(response).await,
        Err(e) => outcome::from_error(e),
    }
}
