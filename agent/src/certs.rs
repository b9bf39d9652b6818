//! Certificate facts per app, for `flotilla doctor`: what Dokku says
//! (`certs:report APP --ssl-expires-at`) and what the proxy really serves (a
//! TLS handshake to each of the app's domains through the local proxy, SNI =
//! the domain, nothing trusted: only the leaf's expiry is read), and whether
//! the services the last applied spec links exist and are linked. Gathered
//! every `--cert-check-interval` for the apps the agent deployed, and sent
//! with the host metrics sample. Apps that no longer exist on the host
//! (destroyed outside Flotilla) are forgotten.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use crate::exec::Dokku;

/// Most domains probed per app (a wildcard or tenant list can be long).
const MAX_DOMAINS: usize = 20;
/// All checks of one app.
const CHECK_TIMEOUT: Duration = Duration::from_secs(120);
/// One handshake, connection included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// App → its newest certificate facts (shared with the sampler).
pub type CertFacts = Arc<Mutex<BTreeMap<String, pb::AppRelease>>>;

/// Checks every app in `apps()` (app → services its spec links) now and
/// every `interval` until `cancel`.
/// `probe_addr` is where the proxy listens for HTTPS (127.0.0.1:443 on a
/// Dokku host).
pub async fn run(
    dokku: Dokku,
    probe_addr: String,
    interval: Duration,
    apps: impl Fn() -> BTreeMap<String, Vec<(String, String)>> + Send,
    forget: impl Fn(&str) + Send,
    facts: CertFacts,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for (app, services) in apps() {
            // An app destroyed outside Flotilla (`dokku apps:destroy`) is
            // forgotten: no more release series or facts for it.
            let args = ["apps:exists", app.as_str()];
            let exists = tokio::select! {
                () = cancel.cancelled() => return,
                exists = tokio::time::timeout(PROBE_TIMEOUT, dokku.query(&args, &cancel)) => exists,
            };
            if let Ok(Ok((exit, _))) = exists
                && exit.code == Some(crate::exec::EXIT_APP_MISSING)
            {
                tracing::info!(%app, "the app no longer exists on this host; forgetting it");
                forget(&app);
                if let Ok(mut facts) = facts.lock() {
                    facts.remove(&app);
                }
                continue;
            }
            // A hung dokku must not stop the checks for good (dropping the
            // check kills its dokku: kill_on_drop).
            let check = tokio::time::timeout(
                CHECK_TIMEOUT,
                check_app(&dokku, &probe_addr, &app, &services, &cancel),
            );
            let checked = tokio::select! {
                () = cancel.cancelled() => return,
                checked = check => match checked {
                    Ok(checked) => checked,
                    Err(_) => {
                        tracing::warn!(%app, "certificate and service checks took over {CHECK_TIMEOUT:?}; skipped");
                        continue;
                    }
                },
            };
            if let Ok(mut facts) = facts.lock() {
                facts.insert(app, checked);
            }
        }
    }
}

/// What a report command printed, if it exits 0.
async fn report(dokku: &Dokku, args: &[&str], cancel: &CancellationToken) -> Option<String> {
    match dokku.query(args, cancel).await {
        Ok((exit, lines)) if exit.code == Some(0) => Some(lines.join("\n").trim().to_owned()),
        Ok(_) | Err(_) => None,
    }
}

/// Whether `dokku ARGS` exits 0.
async fn succeeds(dokku: &Dokku, args: &[&str], cancel: &CancellationToken) -> bool {
    matches!(dokku.query(args, cancel).await, Ok((exit, _)) if exit.code == Some(0))
}

async fn check_app(
    dokku: &Dokku,
    probe_addr: &str,
    app: &str,
    services: &[(String, String)],
    cancel: &CancellationToken,
) -> pb::AppRelease {
    let mut states = Vec::new();
    for (kind, name) in services {
        // `<plugin>:exists` and `<plugin>:linked` exit 0 for yes (dokku.md §8).
        let exists = succeeds(dokku, &[&format!("{kind}:exists"), name], cancel).await;
        let linked =
            exists && succeeds(dokku, &[&format!("{kind}:linked"), name, app], cancel).await;
        states.push(pb::ServiceState {
            kind: kind.clone(),
            name: name.clone(),
            exists,
            linked,
        });
    }
    let expires = report(dokku, &["certs:report", app, "--ssl-expires-at"], cancel)
        .await
        .and_then(|text| parse_openssl_date(&text))
        .unwrap_or(0);
    let domains = report(
        dokku,
        &["domains:report", app, "--domains-app-vhosts"],
        cancel,
    )
    .await
    .unwrap_or_default();
    let mut tls = Vec::new();
    for domain in domains
        .split_whitespace()
        .filter(|d| !d.starts_with('*'))
        .take(MAX_DOMAINS)
    {
        let probe = tokio::time::timeout(
            PROBE_TIMEOUT,
            flotilla_shared::tls::probe_server_chain(probe_addr, domain),
        )
        .await;
        let (expires_at_ms, error) = match probe {
            Ok(Ok(chain)) => match chain.first().map(|c| flotilla_shared::tls::not_after_ms(c)) {
                Some(Ok(ms)) => (ms, String::new()),
                Some(Err(e)) => (0, format!("unreadable certificate: {e}")),
                None => (0, "no certificate presented".to_owned()),
            },
            Ok(Err(e)) => (0, e.to_string()),
            Err(_) => (0, format!("no TLS answer within {PROBE_TIMEOUT:?}")),
        };
        tls.push(pb::DomainTls {
            domain: domain.to_owned(),
            expires_at_ms,
            error,
        });
    }
    pb::AppRelease {
        app: app.to_owned(),
        cert_expires_at_ms: expires,
        tls,
        checked_at_ms: flotilla_shared::time::now_ms(),
        services: states,
        ..Default::default()
    }
}

/// `Feb 26 13:17:52 2027 GMT` (openssl's `notAfter` format, what
/// `certs:report --ssl-expires-at` prints) → ms since the Unix epoch.
pub fn parse_openssl_date(text: &str) -> Option<i64> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let mut parts = text.split_whitespace();
    let month_name = parts.next()?;
    let month = MONTHS.iter().position(|m| *m == month_name)? as i64 + 1;
    let day: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':').map(str::parse::<i64>);
    let (h, m, s) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    let year: i64 = parts.next()?.parse().ok()?;
    if parts.next() != Some("GMT") || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400) + h * 3600 + m * 60 + s) * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssl_dates() {
        assert_eq!(parse_openssl_date("Jan  1 00:00:00 1970 GMT"), Some(0));
        // 2027-02-26T13:17:52Z
        assert_eq!(
            parse_openssl_date("Feb 26 13:17:52 2027 GMT"),
            Some(1_803_647_872_000)
        );
        assert_eq!(
            flotilla_shared::time::format_ms(
                parse_openssl_date("Mar  1 12:00:00 2028 GMT").unwrap()
            ),
            "2028-03-01T12:00:00Z"
        );
        assert_eq!(parse_openssl_date(""), None);
        assert_eq!(parse_openssl_date("Foo 1 00:00:00 2027 GMT"), None);
        assert_eq!(parse_openssl_date("Feb 26 13:17:52 2027"), None);
    }
}
