//! The Flagsmith gate against the fake Flagsmith: live answers, the cache,
//! the default, and the key kept out of every reason and log line.

use serde_json::json;

use super::fake::{Answer, FakeFlagsmith, closed_api_url, flag};
use super::*;

const FLAG: &str = "deploys_enabled";
/// Short, so the slow-answer test is quick; the test only depends on the
/// client giving up, not on how long that takes.
const TIMEOUT: &str = "300ms";

struct Setup {
    per_app: bool,
    when_unreachable: &'static str,
    key: &'static str,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            per_app: false,
            when_unreachable: "fail-closed",
            key: KEY,
        }
    }
}

fn gates(store: &Store, api_url: &str, setup: Setup) -> Gates {
    let config: GatesConfig = serde_json::from_value(json!({
        "flagsmith": {
            "api_url": api_url,
            "timeout": TIMEOUT,
            "cache_max_age": "1h",
            "environments": {
                "production": {
                    "environment_key_env": KEY_VAR,
                    "flag": FLAG,
                    "per_app": setup.per_app,
                    "when_unreachable": setup.when_unreachable,
                }
            }
        }
    }))
    .unwrap();
    let key = setup.key;
    let resolved = config
        .resolve_with(|name| (name == KEY_VAR).then(|| key.to_owned()))
        .unwrap();
    Gates::new(store.clone(), resolved)
}

/// The gate's decision for app `web` in `production`; asserts it exists and
/// does not leak the key.
async fn decide(gates: &Gates) -> GateDecision {
    let d = gates
        .flagsmith(&app("web"), &env("production"), Some("payments"))
        .await
        .expect("production has a Flagsmith gate");
    assert_eq!(d.gate, Gate::Flagsmith);
    assert!(!d.reason.contains(KEY), "key in reason: {}", d.reason);
    d
}

fn cached(store: &Store, app_name: Option<&str>) -> Option<CachedFlag> {
    let app = app_name.map(app);
    store.gate_cache(&env("production"), app.as_ref()).unwrap()
}

/// Caches an answer `age_ms` old, as a live answer would have.
fn put_cached(store: &Store, enabled: bool, age_ms: i64) {
    let answer = CachedFlag {
        flag: FLAG.to_owned(),
        enabled,
        at_ms: flotilla_shared::time::now_ms() - age_ms,
    };
    store
        .put_gate_cache(&env("production"), None, &answer)
        .unwrap();
}

const MINUTE_MS: i64 = 60_000;

#[tokio::test]
async fn gates_flagsmith_enabled_flag_allows_and_is_cached() {
    let t = temp_store();
    let server = FakeFlagsmith::start(Answer::Flags(json!([
        flag("other_flag", false),
        flag(FLAG, true)
    ])))
    .await;
    let gates = gates(&t.store, &server.api_url, Setup::default());

    let d = decide(&gates).await;
    assert!(d.allowed);
    assert_eq!(d.source, Source::Live);
    assert_eq!(
        d.reason,
        "flag deploys_enabled is enabled in Flagsmith (live)"
    );

    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].method, "GET");
    assert_eq!(received[0].path, "/api/v1/flags/");
    assert_eq!(received[0].key.as_deref(), Some(KEY));

    let c = cached(&t.store, None).expect("live answer cached");
    assert!(c.enabled);
    assert_eq!(c.flag, FLAG);
    assert_eq!(c.at_ms, d.at_ms);
}

#[tokio::test]
async fn gates_flagsmith_disabled_flag_blocks() {
    let t = temp_store();
    let server = FakeFlagsmith::start(Answer::Flags(json!([flag(FLAG, false)]))).await;
    let gates = gates(&t.store, &server.api_url, Setup::default());

    let d = decide(&gates).await;
    assert!(!d.allowed);
    assert_eq!(d.source, Source::Live);
    assert_eq!(
        d.reason,
        "flag deploys_enabled is disabled in Flagsmith (live)"
    );
    assert!(!cached(&t.store, None).unwrap().enabled);
}

#[tokio::test]
async fn gates_flagsmith_missing_flag_counts_as_disabled() {
    let t = temp_store();
    let server = FakeFlagsmith::start(Answer::Flags(json!([flag("other_flag", true)]))).await;
    let gates = gates(&t.store, &server.api_url, Setup::default());

    let d = decide(&gates).await;
    assert!(!d.allowed);
    assert_eq!(d.source, Source::Live);
    assert!(
        d.reason.contains("deploys_enabled is missing") && d.reason.contains("disabled"),
        "{}",
        d.reason
    );
    assert!(!cached(&t.store, None).unwrap().enabled);
}

#[tokio::test]
async fn gates_flagsmith_per_app_posts_identity_with_traits() {
    let t = temp_store();
    let server = FakeFlagsmith::start(Answer::Flags(json!([flag(FLAG, false)]))).await;
    let setup = Setup {
        per_app: true,
        ..Setup::default()
    };
    let gates = gates(&t.store, &server.api_url, setup);

    let d = decide(&gates).await;
    assert!(!d.allowed);
    assert_eq!(d.source, Source::Live);
    assert_eq!(
        d.reason,
        "flag deploys_enabled is disabled for web in Flagsmith (live)"
    );

    // Without a team, the trait is left out (Flagsmith deletes traits sent as null).
    server.answer(Answer::Flags(json!([flag(FLAG, true)])));
    let d = gates
        .flagsmith(&app("shop"), &env("production"), None)
        .await
        .unwrap();
    assert!(d.allowed, "{}", d.reason);

    let received = server.received();
    assert_eq!(received.len(), 2);
    for r in &received {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/api/v1/identities/");
        assert_eq!(r.key.as_deref(), Some(KEY));
    }
    assert_eq!(
        received[0].json(),
        json!({
            "identifier": "web",
            "traits": [
                {"trait_key": "env", "trait_value": "production"},
                {"trait_key": "team", "trait_value": "payments"}
            ]
        })
    );
    assert_eq!(
        received[1].json(),
        json!({
            "identifier": "shop",
            "traits": [{"trait_key": "env", "trait_value": "production"}]
        })
    );

    // Cached per app, not for the whole environment.
    assert!(!cached(&t.store, Some("web")).unwrap().enabled);
    assert!(cached(&t.store, Some("shop")).unwrap().enabled);
    assert_eq!(cached(&t.store, None), None);
}

#[tokio::test]
async fn gates_flagsmith_slow_answer_uses_fresh_cache() {
    let t = temp_store();
    let server = FakeFlagsmith::start(Answer::Flags(json!([flag(FLAG, true)]))).await;
    let gates = gates(&t.store, &server.api_url, Setup::default());
    assert_eq!(decide(&gates).await.source, Source::Live);

    server.answer(Answer::Hang);
    let (logs, _guard) = Logs::capture();
    let d = decide(&gates).await;
    assert!(d.allowed);
    assert_eq!(d.source, Source::Cache);
    // `0s` unless the machine is very slow: only the unit is fixed.
    assert!(
        d.reason
            .starts_with("Flagsmith unreachable (timed out after 300ms); using the answer cached ")
            && d.reason.ends_with("s ago: enabled"),
        "{}",
        d.reason
    );
    assert_eq!(
        server.received().len(),
        2,
        "the second request reached the server"
    );
    let logs = logs.text();
    assert!(
        logs.contains("flagsmith unreachable") && logs.contains("timed out"),
        "{logs}"
    );
    assert!(!logs.contains(KEY), "{logs}");
}

#[tokio::test]
async fn gates_flagsmith_down_uses_fresh_cache() {
    let t = temp_store();
    let mut server = FakeFlagsmith::start(Answer::Flags(json!([flag(FLAG, false)]))).await;
    let gates = gates(&t.store, &server.api_url, Setup::default());
    assert_eq!(decide(&gates).await.source, Source::Live);

    server.stop().await;
    let d = decide(&gates).await;
    assert!(!d.allowed, "the cached answer was: disabled");
    assert_eq!(d.source, Source::Cache);
    assert!(
        d.reason
            .starts_with("Flagsmith unreachable (connection refused); using the answer cached ")
            && d.reason.ends_with("s ago: disabled"),
        "{}",
        d.reason
    );
}

#[tokio::test]
async fn gates_flagsmith_down_with_stale_cache_uses_default() {
    for (mode, allowed, verdict) in [
        ("fail-closed", false, "deploys are blocked"),
        ("fail-open", true, "deploys proceed"),
    ] {
        let t = temp_store();
        let setup = Setup {
            when_unreachable: mode,
            ..Setup::default()
        };
        let gates = gates(&t.store, &closed_api_url(), setup);
        // The stale answer says the opposite of the default, so using it would show.
        put_cached(&t.store, !allowed, 2 * 60 * MINUTE_MS);

        let d = decide(&gates).await;
        assert_eq!(d.allowed, allowed, "{mode}: {}", d.reason);
        assert_eq!(d.source, Source::Default);
        assert_eq!(
            d.reason,
            format!(
                "Flagsmith unreachable (connection refused) and the cached answer is 2h old (more than 1h); {mode}: {verdict}"
            )
        );
    }
}

#[tokio::test]
async fn gates_flagsmith_down_without_cache_uses_default() {
    for (mode, allowed) in [("fail-closed", false), ("fail-open", true)] {
        let t = temp_store();
        let setup = Setup {
            when_unreachable: mode,
            ..Setup::default()
        };
        let gates = gates(&t.store, &closed_api_url(), setup);
        // An answer for a flag no longer configured is no answer.
        t.store
            .put_gate_cache(
                &env("production"),
                None,
                &CachedFlag {
                    flag: "old_flag".into(),
                    enabled: !allowed,
                    at_ms: flotilla_shared::time::now_ms(),
                },
            )
            .unwrap();

        let d = decide(&gates).await;
        assert_eq!(d.allowed, allowed, "{mode}: {}", d.reason);
        assert_eq!(d.source, Source::Default);
        assert!(
            d.reason.starts_with(
                "Flagsmith unreachable (connection refused) and no answer is cached; "
            ),
            "{}",
            d.reason
        );
    }
}

#[tokio::test]
async fn gates_flagsmith_malformed_answer_is_treated_as_down() {
    let answers = [
        (
            Answer::Raw(200, "<html>maintenance</html>".into()),
            "not valid JSON",
        ),
        // An object where a list belongs, echoing the key: the key must not
        // travel from the body into the reason.
        (
            Answer::Raw(200, json!({"detail": KEY}).to_string()),
            "not the JSON shape of a Flagsmith flag list",
        ),
        (
            Answer::Flags(json!([{"feature": {"id": 7}, "enabled": true}])),
            "not the JSON shape of a Flagsmith flag list",
        ),
        (Answer::Raw(200, "[{\"feature\":".into()), "JSON ends early"),
        (Answer::Raw(503, "unavailable".into()), "HTTP 503"),
    ];
    for (answer, what) in answers {
        let t = temp_store();
        let server = FakeFlagsmith::start(answer).await;
        let gates = gates(&t.store, &server.api_url, Setup::default());
        put_cached(&t.store, true, 4 * MINUTE_MS);

        let (logs, guard) = Logs::capture();
        let d = decide(&gates).await;
        drop(guard);
        assert!(d.allowed, "{}", d.reason);
        assert_eq!(d.source, Source::Cache);
        assert!(
            d.reason.starts_with("Flagsmith unreachable (")
                && d.reason.contains(what)
                && d.reason
                    .ends_with("; using the answer cached 4m ago: enabled"),
            "{}",
            d.reason
        );
        let logs = logs.text();
        assert!(logs.contains("WARN") && logs.contains(what), "{logs}");
        assert!(!logs.contains(KEY), "{logs}");
        // Nothing cached from a bad answer: the 4-minute-old entry is still there.
        assert!(cached(&t.store, None).unwrap().at_ms < d.at_ms - 3 * MINUTE_MS);
    }
}

#[tokio::test]
async fn gates_flagsmith_wrong_key_is_refused_and_treated_as_down() {
    let t = temp_store();
    let server = FakeFlagsmith::start(Answer::Flags(json!([flag(FLAG, true)]))).await;
    let setup = Setup {
        key: "ser.someOtherKey",
        ..Setup::default()
    };
    let gates = gates(&t.store, &server.api_url, setup);

    let d = decide(&gates).await;
    assert!(!d.allowed);
    assert_eq!(d.source, Source::Default);
    assert_eq!(
        d.reason,
        "Flagsmith unreachable (HTTP 401: check the environment key) and no answer is cached; fail-closed: deploys are blocked"
    );
    assert_eq!(
        server.received()[0].key.as_deref(),
        Some("ser.someOtherKey")
    );
    assert!(!d.reason.contains("someOtherKey"));
}

#[tokio::test]
async fn gates_flagsmith_only_configured_environments_have_a_gate() {
    let t = temp_store();
    let gates = gates(&t.store, &closed_api_url(), Setup::default());
    assert_eq!(
        gates.flagsmith(&app("web"), &env("staging"), None).await,
        None
    );
    let none = Gates::new(t.store.clone(), ResolvedGates::default());
    assert_eq!(
        none.flagsmith(&app("web"), &env("production"), None).await,
        None
    );
}

#[test]
fn gates_decisions_serialize_in_snake_case() {
    let d = GateDecision {
        gate: Gate::Flagsmith,
        allowed: false,
        source: Source::Default,
        reason: "r".into(),
        at_ms: 5,
    };
    let value = serde_json::to_value(&d).unwrap();
    assert_eq!(
        value,
        json!({"gate": "flagsmith", "allowed": false, "source": "default", "reason": "r", "at_ms": 5})
    );
    assert_eq!(serde_json::from_value::<GateDecision>(value).unwrap(), d);
    for s in [
        Source::Live,
        Source::Cache,
        Source::Default,
        Source::Window,
        Source::Override,
    ] {
        assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
    }
    assert_eq!(serde_json::to_value(Gate::Freeze).unwrap(), json!("freeze"));
}
