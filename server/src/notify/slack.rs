//! Slack incoming webhooks: the message for an event (Block Kit with a `text`
//! fallback) and the POST. Slack answers 200 `ok`; 429 and 5xx are retried.

use serde_json::{Value, json};

use super::config::Secret;
use super::event::{Event, Logs};
use super::outcome::{self, Outcome};

/// Slack's limits: header 150 characters, section text 3000, field 2000,
/// 10 fields per section.
const HEADER_MAX: usize = 150;
const TEXT_MAX: usize = 2900;
const FIELD_MAX: usize = 1900;

/// The message for `event`.
pub fn payload(event: &Event, public_url: Option<&str>) -> Value {
    let summary = event.summary();
    let mut blocks = vec![json!({
        "type": "header",
        "text": { "type": "plain_text", "text": truncate(&summary, HEADER_MAX), "emoji": false },
    })];
    let fields: Vec<Value> = event
        .details()
        .into_iter()
        .filter(|(label, _)| !matches!(*label, "Deployment" | "At"))
        .take(10)
        .map(|(label, value)| {
            json!({
                "type": "mrkdwn",
                "text": format!("*{label}*\n{}", truncate(&escape(&value), FIELD_MAX)),
            })
        })
        .collect();
    blocks.push(json!({ "type": "section", "fields": fields }));
    if let Some(reason) = &event.reason {
        blocks.push(json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": format!("*Reason*\n{}", truncate(&escape(reason), TEXT_MAX)) },
        }));
    }
    let mut context = Vec::new();
    match event.logs(public_url) {
        Some(Logs::Link(url)) => context.push(format!("<{url}|Logs>")),
        Some(Logs::Command(cmd)) => context.push(format!("Logs: `{cmd}`")),
        None => {}
    }
    if let Some(id) = &event.deployment_id {
        context.push(format!("deployment `{}`", escape(id)));
    }
    context.push(escape(&flotilla_shared::time::format_ms(event.at_ms)));
    blocks.push(json!({
        "type": "context",
        "elements": [{ "type": "mrkdwn", "text": context.join(" · ") }],
    }));
    let text = match &event.reason {
        Some(reason) => format!("{summary}: {}", truncate(reason, TEXT_MAX)),
        None => summary,
    };
    json!({ "text": text, "blocks": blocks })
}

/// The message `flotilla notify test` sends.
pub fn test_payload(channel: &str) -> Value {
    let text =
        format!("Flotilla test message for channel {channel}: notifications reach this channel.");
    json!({
        "text": text,
        "blocks": [{ "type": "section", "text": { "type": "mrkdwn", "text": escape(&text) } }],
    })
}

/// One POST. Cancel-safe (nothing is recorded here).
pub async fn send(http: &reqwest::Client, url: &Secret, body: &Value) -> Outcome {
    match http.post(url.expose()).json(body).send().await {
        Ok(response) => outcome::from_response(response).await,
        Err(e) => outcome::from_error(e),
    }
}

/// Slack's mrkdwn control characters.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}
