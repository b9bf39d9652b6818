//! Email over SMTP (lettre, tokio, rustls with ring): the message for an event
//! (multipart plain text + HTML) and the send. A connection per message: mail
//! is rare, and no pool means no task to own.

use std::time::Duration;

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::config::{EmailTarget, SmtpTls};
use super::event::{Event, Logs};
use super::outcome::Outcome;

/// The transport for `target`: STARTTLS (required, not opportunistic),
/// implicit TLS, or plain (config allows it for loopback hosts only).
pub fn transport(
    target: &EmailTarget,
    timeout: Duration,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, lettre::transport::smtp::Error> {
    // lettre takes the process-wide provider (ring); install it if `main` has not.
    flotilla_shared::tls::install_crypto_provider();
    let builder = match target.tls {
        SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&target.host)?,
        SmtpTls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(&target.host)?,
        SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&target.host),
    };
    let mut builder = builder.port(target.port).timeout(Some(timeout));
    if let (Some(user), Some(password)) = (&target.username, &target.password) {
        builder = builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
    }
    Ok(builder.build())
}

/// Subject, plain-text body and HTML body for `event`.
pub fn render(event: &Event, public_url: Option<&str>) -> (String, String, String) {
    let summary = event.summary();
    let details = event.details();
    let width = details.iter().map(|(l, _)| l.len()).max().unwrap_or(0) + 1;

    let mut plain = format!("{summary}\n\n");
    for (label, value) in &details {
        plain.push_str(&format!("{:<width$} {value}\n", format!("{label}:")));
    }
    let mut html = format!(
        "<!DOCTYPE html>\n<html><body style=\"font-family: sans-serif\">\n<h2>{}</h2>\n<table>\n",
        escape(&summary)
    );
    for (label, value) in &details {
        html.push_str(&format!(
            "<tr><th align=\"left\" style=\"padding-right: 1em\">{}</th><td>{}</td></tr>\n",
            escape(label),
            escape(value)
        ));
    }
    html.push_str("</table>\n");
    if let Some(reason) = &event.reason {
        plain.push_str(&format!("\nReason:\n{reason}\n"));
        html.push_str(&format!("<h3>Reason</h3>\n<pre>{}</pre>\n", escape(reason)));
    }
    match event.logs(public_url) {
        Some(Logs::Link(url)) => {
            plain.push_str(&format!("\nLogs: {url}\n"));
            html.push_str(&format!("<p><a href=\"{}\">Logs</a></p>\n", escape(&url)));
        }
        Some(Logs::Command(cmd)) => {
            plain.push_str(&format!("\nLogs: {cmd}\n"));
            html.push_str(&format!("<p>Logs: <code>{}</code></p>\n", escape(&cmd)));
        }
        None => {}
    }
    html.push_str("</body></html>\n");
    (event.subject(), plain, html)
}

/// What `flotilla notify test` sends.
pub fn render_test(channel: &str) -> (String, String, String) {
    let text =
        format!("Flotilla test message for channel {channel}: notifications reach this address.");
    (
        format!("[flotilla] test message for channel {channel}"),
        format!("{text}\n"),
        format!(
            "<!DOCTYPE html>\n<html><body style=\"font-family: sans-serif\"><p>{}</p></body></html>\n",
            escape(&text)
        ),
    )
}

/// Builds and sends one message. Cancel-safe (nothing is recorded here).
pub async fn send(
    target: &EmailTarget,
    timeout: Duration,
    (subject, plain, html): (String, String, String),
) -> Outcome {
    let message = match message(&target.from, &target.to, subject, plain, html) {
        Ok(m) => m,
        Err(e) => {
            return Outcome::Permanent {
                detail: format!("cannot build the message: {e}"),
                status: None,
            };
        }
    };
    let transport = match transport(target, timeout) {
        Ok(t) => t,
        Err(e) => {
            return Outcome::Permanent {
                detail: format!("cannot set up SMTP: {e}"),
                status: None,
            };
        }
    };
    match transport.send(message).await {
        Ok(response) => Outcome::Delivered(format!("SMTP {}", response.code())),
        Err(e) => {
            let status = e.status().map(u16::from);
            let detail = describe(&e);
            if e.is_permanent() {
                Outcome::Permanent { detail, status }
            } else {
                Outcome::Retry {
                    detail,
                    after: None,
                    status,
                }
            }
        }
    }
}

fn message(
    from: &Mailbox,
    to: &[Mailbox],
    subject: String,
    plain: String,
    html: String,
) -> Result<Message, lettre::error::Error> {
    let mut builder = Message::builder().from(from.clone()).subject(subject);
    for recipient in to {
        builder = builder.to(recipient.clone());
    }
    builder.multipart(MultiPart::alternative_plain_html(plain, html))
}

fn describe(error: &lettre::transport::smtp::Error) -> String {
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

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
