//! The Flagsmith gate: one async request to Flagsmith's flags API (or, per
//! app, its identities API), its answer cached in the store, and the fallback
//! to that cache or to the configured default when Flagsmith cannot answer.
//! The environment key goes into one request header and nowhere else.

use std::time::Duration;

use flotilla_shared::{AppName, EnvName};
use serde::{Deserialize, Serialize};

use super::config::{FlagsmithGate, ResolvedFlagsmith};
use super::{CachedFlag, Gate, GateDecision, Source};
use crate::store::Store;

/// Flagsmith's flag lists are small; anything bigger is not an answer.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// One element of `GET flags/` (and of `flags` in an identities answer);
/// only the fields the gate reads.
#[derive(Deserialize)]
struct FlagState {
    feature: Feature,
    enabled: bool,
}

#[derive(Deserialize)]
struct Feature {
    name: String,
}

#[derive(Deserialize)]
struct IdentityAnswer {
    flags: Vec<FlagState>,
}

#[derive(Serialize)]
struct IdentityRequest<'a> {
    identifier: &'a str,
    traits: Vec<Trait<'a>>,
}

#[derive(Serialize)]
struct Trait<'a> {
    trait_key: &'a str,
    trait_value: &'a str,
}

/// Why Flagsmith gave no usable answer; `Display` is the phrase inside
/// "Flagsmith unreachable (…)".
#[derive(Debug, thiserror::Error)]
enum Unreachable {
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("{0}")]
    Connect(String),
    #[error("HTTP {0}{1}")]
    Status(u16, &'static str),
    #[error("answer larger than {} bytes", MAX_BODY_BYTES)]
    TooLarge,
    #[error("malformed answer: {0}")]
    Malformed(String),
}

pub(super) async fn decide(
    store: &Store,
    flagsmith: &ResolvedFlagsmith,
    gate: &FlagsmithGate,
    app: &AppName,
    env: &EnvName,
    team: Option<&str>,
) -> GateDecision {
    let scope = gate.per_app.then_some(app);
    let for_app = if gate.per_app {
        format!(" for {app}")
    } else {
        String::new()
    };
    let answer = ask(flagsmith, gate, app, env, team).await;
    let at_ms = flotilla_shared::time::now_ms();
    match answer {
        Ok(state) => {
            let enabled = state == Some(true);
            let cached = CachedFlag {
                flag: gate.flag.clone(),
                enabled,
                at_ms,
            };
            if let Err(e) = store.put_gate_cache(env, scope, &cached) {
                tracing::warn!(%env, %app, gate = "flagsmith", "failed to cache the Flagsmith answer: {e}");
            }
            let flag = &gate.flag;
            let reason = match state {
                Some(true) => format!("flag {flag} is enabled{for_app} in Flagsmith (live)"),
                Some(false) => format!("flag {flag} is disabled{for_app} in Flagsmith (live)"),
                None => format!(
                    "flag {flag} is missing from Flagsmith's answer{for_app}, so it counts as disabled (live)"
                ),
            };
            decision(enabled, Source::Live, reason, at_ms)
        }
        Err(why) => {
            // Text from the network (error sources) could in theory echo the
            // key back; scrub it before it is logged or recorded.
            let why = scrub(&why.to_string(), gate.key.expose());
            tracing::warn!(%env, %app, gate = "flagsmith", reason = %why, "flagsmith unreachable");
            fall_back(store, flagsmith, gate, env, scope, &why, at_ms)
        }
    }
}

/// The decision when Flagsmith did not answer: a fresh cached answer, else
/// the configured default.
fn fall_back(
    store: &Store,
    flagsmith: &ResolvedFlagsmith,
    gate: &FlagsmithGate,
    env: &EnvName,
    scope: Option<&AppName>,
    why: &str,
    at_ms: i64,
) -> GateDecision {
    let default = gate.when_unreachable;
    let verdict = if default.allows() {
        "deploys proceed"
    } else {
        "deploys are blocked"
    };
    let max_age = flagsmith.cache_max_age;
    let cached = match store.gate_cache(env, scope) {
        Ok(cached) => cached.filter(|c| c.flag == gate.flag),
        Err(e) => {
            tracing::warn!(%env, gate = "flagsmith", "failed to read the cached Flagsmith answer: {e}");
            return decision(
                default.allows(),
                Source::Default,
                format!(
                    "Flagsmith unreachable ({why}) and the cached answer could not be read; {}: {verdict}",
                    default.as_str()
                ),
                at_ms,
            );
        }
    };
    let Some(cached) = cached else {
        return decision(
            default.allows(),
            Source::Default,
            format!(
                "Flagsmith unreachable ({why}) and no answer is cached; {}: {verdict}",
                default.as_str()
            ),
            at_ms,
        );
    };
    // A cache entry from the future (clock stepped back) counts as fresh.
    let age = Duration::from_millis(u64::try_from(at_ms - cached.at_ms).unwrap_or(0));
    let state = if cached.enabled {
        "enabled"
    } else {
        "disabled"
    };
    if age < max_age {
        decision(
            cached.enabled,
            Source::Cache,
            format!(
                "Flagsmith unreachable ({why}); using the answer cached {} ago: {state}",
                short_age(age)
            ),
            at_ms,
        )
    } else {
        decision(
            default.allows(),
            Source::Default,
            format!(
                "Flagsmith unreachable ({why}) and the cached answer is {} old (more than {}); {}: {verdict}",
                short_age(age),
                short_age(max_age),
                default.as_str()
            ),
            at_ms,
        )
    }
}

fn decision(allowed: bool, source: Source, reason: String, at_ms: i64) -> GateDecision {
    GateDecision {
        gate: Gate::Flagsmith,
        allowed,
        source,
        reason,
        at_ms,
    }
}

/// Asks Flagsmith; `Some(enabled)` for the flag, `None` if the answer does
/// not list it. Bounded by the configured timeout. Cancel-safe.
async fn ask(
    flagsmith: &ResolvedFlagsmith,
    gate: &FlagsmithGate,
    app: &AppName,
    env: &EnvName,
    team: Option<&str>,
) -> Result<Option<bool>, Unreachable> {
    let client = &flagsmith.client;
    let request = if gate.per_app {
        let mut traits = vec![Trait {
            trait_key: "env",
            trait_value: env.as_str(),
        }];
        if let Some(team) = team {
            traits.push(Trait {
                trait_key: "team",
                trait_value: team,
            });
        }
        client
            .post(endpoint(flagsmith, "identities/")?)
            .json(&IdentityRequest {
                identifier: app.as_str(),
                traits,
            })
    } else {
        client.get(endpoint(flagsmith, "flags/")?)
    }
    .header("X-Environment-Key", gate.key_header.clone());

    let exchange = async {
        let mut response = request
            .send()
            .await
            .map_err(|e| from_reqwest(&e, flagsmith.timeout))?;
        let status = response.status();
        if !status.is_success() {
            let hint = match status.as_u16() {
                401 | 403 => ": check the environment key",
                _ => "",
            };
            return Err(Unreachable::Status(status.as_u16(), hint));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| from_reqwest(&e, flagsmith.timeout))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(Unreachable::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    let body = tokio::time::timeout(flagsmith.timeout, exchange)
        .await
        .map_err(|_| Unreachable::Timeout(flagsmith.timeout))??;

    let flags = if gate.per_app {
        serde_json::from_slice::<IdentityAnswer>(&body).map(|a| a.flags)
    } else {
        serde_json::from_slice::<Vec<FlagState>>(&body)
    }
    .map_err(|e| Unreachable::Malformed(describe_json_error(&e)))?;
    Ok(flags
        .iter()
        .find(|f| f.feature.name == gate.flag)
        .map(|f| f.enabled))
}

fn endpoint(flagsmith: &ResolvedFlagsmith, path: &str) -> Result<reqwest::Url, Unreachable> {
    flagsmith
        .api_url
        .join(path)
        .map_err(|e| Unreachable::Connect(format!("cannot build the request URL: {e}")))
}

/// The JSON error's kind and position, without serde's quotes of the input
/// (which is network text).
fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "could not be read",
        Category::Syntax => "not valid JSON",
        Category::Data => "not the JSON shape of a Flagsmith flag list",
        Category::Eof => "JSON ends early",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

fn from_reqwest(e: &reqwest::Error, timeout: Duration) -> Unreachable {
    if e.is_timeout() {
        return Unreachable::Timeout(timeout);
    }
    // The innermost cause is the informative part (`connection refused`,
    // `invalid peer certificate: …`); reqwest's wrapper repeats the URL.
    let mut source: &(dyn std::error::Error + 'static) = e;
    while let Some(inner) = source.source() {
        source = inner;
    }
    if let Some(io) = source.downcast_ref::<std::io::Error>() {
        match io.kind() {
            std::io::ErrorKind::ConnectionRefused => {
                return Unreachable::Connect("connection refused".to_owned());
            }
            std::io::ErrorKind::TimedOut => return Unreachable::Timeout(timeout),
            _ => {}
        }
    }
    let text = source.to_string();
    if text.to_ascii_lowercase().contains("connection refused") {
        Unreachable::Connect("connection refused".to_owned())
    } else {
        Unreachable::Connect(text)
    }
}

/// `text` with every occurrence of `secret` replaced by `***`.
fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        text.to_owned()
    } else {
        text.replace(secret, "***")
    }
}

/// `42s`, `4m`, `3h`, `2d`: the largest whole unit, for reasons.
fn short_age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn gates_short_ages() {
        for (secs, want) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (245, "4m"),
            (3600, "1h"),
            (86_399, "23h"),
            (2 * 86_400, "2d"),
        ] {
            assert_eq!(short_age(Duration::from_secs(secs)), want, "{secs}s");
        }
    }

    #[test]
    fn gates_scrub_removes_every_occurrence() {
        assert_eq!(scrub("a KEY b KEY", "KEY"), "a *** b ***");
        assert_eq!(scrub("nothing", ""), "nothing");
    }
}
