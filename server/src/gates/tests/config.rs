//! `[gates]` validation: key sources, settings, and no key in any message.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::*;

fn example() -> Value {
    json!({
        "flagsmith": {
            "api_url": "https://edge.api.flagsmith.com/api/v1/",
            "timeout": "3s",
            "cache_max_age": "1h",
            "environments": {
                "production": {
                    "environment_key_env": KEY_VAR,
                    "flag": "deploys_enabled",
                    "per_app": true,
                    "when_unreachable": "fail-closed"
                }
            }
        }
    })
}

fn vars() -> HashMap<String, String> {
    HashMap::from([(KEY_VAR.to_owned(), KEY.to_owned())])
}

/// Resolves `value` with the variables `vars`.
fn resolve(value: Value, vars: &HashMap<String, String>) -> Result<ResolvedGates, ConfigError> {
    let config: GatesConfig = serde_json::from_value(value).unwrap();
    config.resolve_with(|name| vars.get(name).cloned())
}

/// `example()` with the production environment's table changed by `edit`.
fn with_env(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Value {
    let mut value = example();
    let production = value["flagsmith"]["environments"]["production"]
        .as_object_mut()
        .unwrap();
    edit(production);
    value
}

fn check_err(value: Value, vars: &HashMap<String, String>, expected: &str) {
    let err = resolve(value, vars).expect_err(expected);
    let text = err.to_string();
    assert_eq!(text, expected);
    assert!(!text.contains(KEY) && !format!("{err:?}").contains(KEY));
}

#[test]
fn gates_config_example_resolves() {
    let resolved = resolve(example(), &vars()).unwrap();
    let envs: Vec<_> = resolved.flagsmith_envs().map(EnvName::as_str).collect();
    assert_eq!(envs, ["production"]);
    let f = resolved.flagsmith.as_ref().unwrap();
    assert_eq!(f.api_url.as_str(), "https://edge.api.flagsmith.com/api/v1/");
    assert_eq!(f.timeout, std::time::Duration::from_secs(3));
    assert_eq!(f.cache_max_age, std::time::Duration::from_secs(3600));
    let gate = &f.environments[&env("production")];
    assert_eq!(gate.flag, "deploys_enabled");
    assert!(gate.per_app);
    assert_eq!(gate.when_unreachable, WhenUnreachable::FailClosed);
    assert_eq!(gate.key.expose(), KEY);
    assert!(!format!("{resolved:?}").contains(KEY), "{resolved:?}");
}

#[test]
fn gates_config_defaults_and_no_section() {
    let value = json!({"flagsmith": {"environments": {"production": {
        "environment_key_env": KEY_VAR, "flag": "deploys_enabled"
    }}}});
    let resolved = resolve(value, &vars()).unwrap();
    let f = resolved.flagsmith.as_ref().unwrap();
    assert_eq!(f.api_url.as_str(), DEFAULT_API_URL);
    assert_eq!(f.timeout, std::time::Duration::from_secs(3));
    let gate = &f.environments[&env("production")];
    assert!(!gate.per_app);
    assert_eq!(gate.when_unreachable, WhenUnreachable::FailClosed);

    let none = resolve(json!({}), &HashMap::new()).unwrap();
    assert_eq!(none.flagsmith_envs().count(), 0);
    assert_eq!(
        GatesConfig::default()
            .resolve_with(|_| None)
            .unwrap()
            .flagsmith_envs()
            .count(),
        0
    );
}

#[test]
fn gates_config_unknown_fields_are_refused() {
    let typo = with_env(|p| {
        p.insert("flagg".into(), json!("x"));
    });
    let err = serde_json::from_value::<GatesConfig>(typo).unwrap_err();
    assert!(err.to_string().contains("unknown field `flagg`"), "{err}");
    let err =
        serde_json::from_value::<GatesConfig>(json!({"flagsmith": {"api": "x"}})).unwrap_err();
    assert!(err.to_string().contains("unknown field `api`"), "{err}");
    let err = serde_json::from_value::<GatesConfig>(with_env(|p| {
        p.insert("when_unreachable".into(), json!("fail-sometimes"));
    }))
    .unwrap_err();
    assert!(err.to_string().contains("fail-sometimes"), "{err}");
    let err = serde_json::from_value::<GatesConfig>(json!({"flagsmith": {"timeout": "3 parsecs"}}))
        .unwrap_err();
    assert!(
        err.to_string().contains("invalid duration \"3 parsecs\""),
        "{err}"
    );
}

#[test]
fn gates_config_key_from_file_env_or_inline() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flagsmith.key");
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    let from_file = with_env(|p| {
        p.remove("environment_key_env");
        p.insert("environment_key_file".into(), json!(path));
    });
    let resolved = resolve(from_file, &HashMap::new()).unwrap();
    let gate = &resolved.flagsmith.as_ref().unwrap().environments[&env("production")];
    assert_eq!(gate.key.expose(), KEY, "trailing newline trimmed");

    let inline = with_env(|p| {
        p.remove("environment_key_env");
        p.insert("environment_key".into(), json!(KEY));
    });
    let config: GatesConfig = serde_json::from_value(inline).unwrap();
    assert!(!format!("{config:?}").contains(KEY), "{config:?}");
    let resolved = config.resolve_with(|_| None).unwrap();
    let gate = &resolved.flagsmith.as_ref().unwrap().environments[&env("production")];
    assert_eq!(gate.key.expose(), KEY);
}

#[test]
fn gates_config_key_errors_name_the_setting() {
    let none = with_env(|p| {
        p.remove("environment_key_env");
    });
    check_err(
        none,
        &vars(),
        "gates.flagsmith.environments.production: set exactly one of environment_key_env, environment_key_file and environment_key",
    );
    let two = with_env(|p| {
        p.insert("environment_key".into(), json!(KEY));
    });
    check_err(
        two,
        &vars(),
        "gates.flagsmith.environments.production: set exactly one of environment_key_env, environment_key_file and environment_key",
    );
    check_err(
        example(),
        &HashMap::new(),
        "gates.flagsmith.environments.production.environment_key_env: environment variable FLOTILLA_FLAGSMITH_PRODUCTION_KEY is not set",
    );
    check_err(
        example(),
        &HashMap::from([(KEY_VAR.to_owned(), " \n".to_owned())]),
        "gates.flagsmith.environments.production.environment_key_env: the environment key is empty",
    );
    check_err(
        example(),
        &HashMap::from([(KEY_VAR.to_owned(), format!("{KEY}\u{7}x"))]),
        "gates.flagsmith.environments.production.environment_key_env: the environment key contains characters an HTTP header cannot carry",
    );
    let missing_file = with_env(|p| {
        p.remove("environment_key_env");
        p.insert(
            "environment_key_file".into(),
            json!("/nonexistent/flagsmith.key"),
        );
    });
    let err = resolve(missing_file, &vars()).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "gates.flagsmith.environments.production.environment_key_file: read /nonexistent/flagsmith.key: "
        ),
        "{err}"
    );
}

#[test]
fn gates_config_validates_settings() {
    let mut value = example();
    value["flagsmith"]["api_url"] = json!("https://flags.example.com/api/v1");
    let resolved = resolve(value, &vars()).unwrap();
    assert_eq!(
        resolved.flagsmith.as_ref().unwrap().api_url.as_str(),
        "https://flags.example.com/api/v1/",
        "a trailing slash is added, so `flags/` is appended"
    );

    for (url, reason) in [
        (
            "ftp://flags.example.com/api/v1/",
            "must be an http or https URL",
        ),
        (
            "https://user:pw@flags.example.com/api/v1/",
            "must not contain credentials (the environment key is sent as a header)",
        ),
        (
            "https://flags.example.com/api/v1/?x=1",
            "must not have a query or fragment",
        ),
    ] {
        let mut value = example();
        value["flagsmith"]["api_url"] = json!(url);
        check_err(
            value,
            &vars(),
            &format!("gates.flagsmith.api_url {url:?}: {reason}"),
        );
    }
    for (timeout, shown) in [("0s", "0s"), ("2m", "2m")] {
        let mut value = example();
        value["flagsmith"]["timeout"] = json!(timeout);
        check_err(
            value,
            &vars(),
            &format!("gates.flagsmith.timeout: must be more than 0s and at most 60s, not {shown}"),
        );
    }
    let mut value = example();
    let production = value["flagsmith"]["environments"]["production"].take();
    value["flagsmith"]["environments"] = json!({"Prod_1": production});
    let err = resolve(value, &vars()).unwrap_err().to_string();
    assert!(
        err.starts_with("gates.flagsmith.environments.Prod_1: invalid environment name"),
        "{err}"
    );
    check_err(
        with_env(|p| {
            p.insert("flag".into(), json!("  "));
        }),
        &vars(),
        "gates.flagsmith.environments.production.flag: must not be empty",
    );
}

#[test]
fn gates_secret_is_redacted() {
    let secret = Secret::new(KEY);
    assert_eq!(format!("{secret}"), "***");
    assert_eq!(format!("{secret:?}"), "***");
    assert_eq!(secret.expose(), KEY);
}
