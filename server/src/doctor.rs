//! `flotilla doctor`: what is wrong with the fleet now. Checks, each
//! reporting problems as findings:
//! - **agents**: hosts (not revoked) whose agent has no session;
//! - **certificates**: from each connected host's newest sample, an app
//!   certificate (`certs:report`) or a certificate the local proxy serves
//!   (TLS handshake per domain) that expires within the window, or a
//!   handshake that fails for an app that has a certificate;
//! - **services**: a Postgres or Redis service the last applied spec links
//!   to an app that, on a host, does not exist or is not linked;
//! - **endpoints**: the outside services the coordinator talks to (Flagsmith,
//!   Grafana, Sentry) answer HTTP at all (any status counts as reachable).

use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_shared::EnvName;
use flotilla_shared::time::{format_ms, now_ms};

use crate::Coordinator;
use crate::store::StoreError;

/// One probe, connection included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// An outside service to probe: a name for people and the URL to GET.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub name: String,
    pub url: String,
}

fn finding(
    check: &str,
    subject: impl Into<String>,
    message: impl Into<String>,
) -> pb::DoctorFinding {
    pb::DoctorFinding {
        check: check.to_owned(),
        subject: subject.into(),
        message: message.into(),
    }
}

/// Runs every check for the hosts `visible` accepts (the caller's scope and
/// the asked environment). `window`: how close to expiry a certificate is a problem.
pub async fn run(
    c: &Coordinator,
    visible: impl Fn(&EnvName) -> bool,
    window: Duration,
) -> Result<pb::DoctorResponse, StoreError> {
    let mut checked = Vec::new();
    let mut findings = Vec::new();
    let now = now_ms();
    let horizon = now.saturating_add(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));

    let hosts: Vec<_> = c
        .store
        .hosts()?
        .into_iter()
        .filter(|h| !h.revoked && visible(&h.env))
        .collect();
    let mut offline = 0;
    let mut apps_checked = 0;
    for h in &hosts {
        if !c.sessions.is_connected(&h.host_id) {
            offline += 1;
            let since = if h.last_seen_ms > 0 {
                format!("last seen {}", format_ms(h.last_seen_ms))
            } else {
                "never connected".to_owned()
            };
            findings.push(finding(
                "agents",
                h.host_id.to_string(),
                format!("the agent is offline ({since})"),
            ));
            continue;
        }
        let Some(sample) = c.sessions.host_metrics(&h.host_id) else {
            continue;
        };
        for app in &sample.apps {
            if app.checked_at_ms == 0 {
                continue;
            }
            apps_checked += 1;
            let subject = format!("{} on {}", app.app, h.host_id);
            for service in &app.services {
                let problem = if !service.exists {
                    Some("does not exist")
                } else if !service.linked {
                    Some("is not linked")
                } else {
                    None
                };
                if let Some(problem) = problem {
                    findings.push(finding(
                        "services",
                        subject.clone(),
                        format!(
                            "the {} service {} {problem}, but the applied spec links it (`flotilla app apply` repairs it)",
                            service.kind, service.name
                        ),
                    ));
                }
            }
            if app.cert_expires_at_ms > 0 && app.cert_expires_at_ms <= horizon {
                findings.push(finding(
                    "certificates",
                    subject.clone(),
                    expiry_text("the certificate", app.cert_expires_at_ms, now),
                ));
            }
            if app.cert_expires_at_ms == 0 {
                // No certificate: plain HTTP is the app's choice.
                continue;
            }
            for tls in &app.tls {
                if !tls.error.is_empty() {
                    findings.push(finding(
                        "certificates",
                        subject.clone(),
                        format!(
                            "{}: the TLS handshake through the host's proxy failed: {}",
                            tls.domain, tls.error
                        ),
                    ));
                } else if tls.expires_at_ms <= horizon {
                    findings.push(finding(
                        "certificates",
                        subject.clone(),
                        expiry_text(
                            &format!("{}: the served certificate", tls.domain),
                            tls.expires_at_ms,
                            now,
                        ),
                    ));
                }
            }
        }
    }
    checked.push(format!("agents: {} hosts, {offline} offline", hosts.len()));
    checked.push(format!(
        "certificates and services: {apps_checked} apps on connected hosts, window {} days",
        window.as_secs() / 86_400
    ));

    let mut probes = tokio::task::JoinSet::new();
    for endpoint in c.doctor_endpoints.iter().cloned() {
        probes.spawn(async move {
            let result = probe(&endpoint.url).await;
            (endpoint, result)
        });
    }
    let mut reachable = 0;
    let mut n_endpoints = 0;
    while let Some(joined) = probes.join_next().await {
        let Ok((endpoint, result)) = joined else {
            continue;
        };
        n_endpoints += 1;
        match result {
            Ok(()) => reachable += 1,
            Err(e) => findings.push(finding(
                "endpoints",
                endpoint.name,
                format!("{} is unreachable: {e}", endpoint.url),
            )),
        }
    }
    checked.push(format!(
        "endpoints: {n_endpoints} configured, {reachable} reachable"
    ));
    findings.sort_by(|a, b| (&a.check, &a.subject).cmp(&(&b.check, &b.subject)));
    Ok(pb::DoctorResponse { checked, findings })
}

fn expiry_text(what: &str, expires_ms: i64, now: i64) -> String {
    if expires_ms <= now {
        format!("{what} expired on {}", format_ms(expires_ms))
    } else {
        let days = (expires_ms - now) / 86_400_000;
        format!("{what} expires in {days} days ({})", format_ms(expires_ms))
    }
}

/// Any HTTP answer means reachable; a connection error or timeout does not.
async fn probe(url: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    match client.get(url).send().await {
        Ok(_) => Ok(()),
        Err(e) if e.is_timeout() => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        Err(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            Err(text)
        }
    }
}
