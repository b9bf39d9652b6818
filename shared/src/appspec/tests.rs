use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::names::{ConfigKey, Domain, EnvName, ServiceName};
use crate::secret::Secret;

const EXAMPLE: &str = include_str!("../../../docs/examples/web.toml");

fn parse_ok(text: &str) -> AppSpec {
    match AppSpec::parse("web.toml", text) {
        Ok(spec) => spec,
        Err(e) => panic!("expected a valid spec, got:\n{e}"),
    }
}

/// Parses `text`, expects it to fail, and returns the rendered errors (one per line).
fn errors(text: &str) -> Vec<String> {
    match AppSpec::parse("web.toml", text) {
        Ok(spec) => panic!("expected errors, parsed {spec:?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// Expects exactly one error, rendered as `expected`.
fn check_error(text: &str, expected: &str) {
    assert_eq!(errors(text), vec![expected.to_owned()], "for:\n{text}");
}

fn env(name: &str) -> EnvName {
    EnvName::parse(name).unwrap()
}

fn key(k: &str) -> ConfigKey {
    ConfigKey::parse(k).unwrap()
}

#[test]
fn the_example_spec_parses() {
    let spec = parse_ok(EXAMPLE);
    assert_eq!(spec.app.as_str(), "web");
    assert_eq!(
        spec.envs.keys().map(EnvName::as_str).collect::<Vec<_>>(),
        ["production", "staging"]
    );
    let prod = &spec.envs[&env("production")];
    assert_eq!(prod.tenants.len(), 3);
    assert_eq!(prod.expanded_domains().len(), 2 + 3 + 3);
    assert_eq!(
        prod.services
            .iter()
            .map(|s| s.variable.as_str())
            .collect::<Vec<_>>(),
        ["DATABASE_URL", "ANALYTICS_DATABASE_URL", "REDIS_URL"]
    );
    assert!(prod.secret_keys.contains(&key("SENTRY_DSN")));
    assert_eq!(prod.config[&key("WEB_CONCURRENCY")], "4");
    assert_eq!(
        prod.letsencrypt.as_ref().map(|l| l.email.as_str()),
        Some("ops@example.com")
    );
    // Every required key is covered by config, a link, or a secret once stored.
    assert_eq!(
        missing_required(prod, []),
        ["SECRET_KEY_BASE", "STRIPE_API_KEY"]
    );
    assert!(missing_required(prod, ["SECRET_KEY_BASE", "STRIPE_API_KEY"]).is_empty());
}

#[test]
fn tenant_patterns_expand_sorted() {
    let spec = parse_ok(EXAMPLE);
    let staging = spec.desired(&env("staging")).unwrap();
    assert_eq!(
        staging
            .domains
            .iter()
            .map(Domain::as_str)
            .collect::<Vec<_>>(),
        [
            "acme.staging.example.com",
            "globex.staging.example.com",
            "staging.example.com"
        ]
    );
    let prod = spec.desired(&env("production")).unwrap();
    assert!(
        prod.domains
            .iter()
            .any(|d| d.as_str() == "api-initech.example.com")
    );
    assert!(prod.domains.windows(2).all(|w| w[0] < w[1]));
    assert!(spec.desired(&env("dev")).is_none());
}

#[test]
fn desired_state_is_deterministic_and_serialisable() {
    let spec = parse_ok(EXAMPLE);
    let a = spec.desired(&env("production")).unwrap();
    let json = serde_json::to_string(&a).unwrap();
    let again =
        serde_json::to_string(&parse_ok(EXAMPLE).desired(&env("production")).unwrap()).unwrap();
    assert_eq!(json, again);
    let back: DesiredState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, a);
    // Secrets by key only.
    assert!(json.contains("\"SECRET_KEY_BASE\""));
    assert!(json.contains("\"secret_keys\""));
}

#[test]
fn error_points_at_the_bad_domain() {
    check_error(
        r#"app = "web"

[env.production]
domains = ["example.com", "www.example.com", "*.*.example.com"]
"#,
        r#"web.toml:4:46: env.production.domains[2]: "*.*.example.com" is not a valid domain: only one leading wildcard label is allowed"#,
    );
}

#[test]
fn domain_rules() {
    let one = |d: &str| {
        let text = format!("app = \"web\"\n[env.staging]\ndomains = [{d:?}]\n");
        errors(&text).join("\n")
    };
    for (domain, reason) in [
        ("a.*.example.com", "'*' may only be the whole first label"),
        ("*.com", "a wildcard must cover a subdomain"),
        ("example", "at least two labels"),
        ("Example.com", "domains are lowercase"),
        ("a..example.com", "empty label"),
        ("-a.example.com", "must not start or end with '-'"),
        ("a_b.example.com", "character '_' is not allowed"),
        (
            "{tenant}.{tenant}.example.com",
            "the only placeholder is {tenant}, used once",
        ),
        ("{customer}.example.com", "the only placeholder is {tenant}"),
        ("{tenant}.*.example.com", "cannot also be a wildcard"),
    ] {
        let got = one(domain);
        assert!(got.contains(reason), "{domain}: {got}");
        assert!(
            got.starts_with("web.toml:3:12: env.staging.domains[0]: "),
            "{got}"
        );
    }
    let long = format!("{}.example.com", "a".repeat(64));
    assert!(one(&long).contains("longer than 63 characters"));
}

#[test]
fn tenant_rules() {
    check_error(
        "app = \"web\"\n[env.staging]\ndomains = [\"{tenant}.example.com\"]\n",
        r#"web.toml:3:12: env.staging.domains[0]: "{tenant}.example.com" uses {tenant} but env.staging.tenants lists no tenants"#,
    );
    check_error(
        "app = \"web\"\n[env.staging]\ndomains = [\"example.com\"]\ntenants = [\"acme\"]\n",
        "web.toml:4:11: env.staging.tenants: tenants are listed but no domain uses {tenant}",
    );
    check_error(
        "app = \"web\"\n[env.staging]\ndomains = [\"{tenant}.example.com\"]\ntenants = [\"acme\", \"Big Co\"]\n",
        r#"web.toml:4:20: env.staging.tenants[1]: tenant "Big Co" is invalid: must be lowercase letters, digits and inner hyphens (one DNS label)"#,
    );
    check_error(
        "app = \"web\"\n[env.staging]\ndomains = [\"{tenant}.example.com\"]\ntenants = [\"acme\", \"acme\"]\n",
        r#"web.toml:4:20: env.staging.tenants[1]: "acme" is listed twice"#,
    );
}

#[test]
fn duplicates_after_expansion_are_errors() {
    check_error(
        "app = \"web\"\n[env.staging]\ndomains = [\"acme.example.com\", \"{tenant}.example.com\"]\ntenants = [\"acme\", \"globex\"]\n",
        r#"web.toml:3:32: env.staging.domains[1]: "acme.example.com" for tenant "acme" is already listed at env.staging.domains[0]"#,
    );
    check_error(
        "app = \"web\"\n[env.staging]\ndomains = [\"a.example.com\", \"a.example.com\"]\n",
        r#"web.toml:3:29: env.staging.domains[1]: "a.example.com" is already listed at env.staging.domains[0]"#,
    );
}

#[test]
fn letsencrypt_rules() {
    check_error(
        "app = \"web\"\n[env.staging]\ndomains = [\"a.example.com\"]\n[env.staging.letsencrypt]\nenabled = true\n",
        "web.toml:4:1: env.staging.letsencrypt: enabled Let's Encrypt needs an `email` (the plugin refuses to request a certificate without one)",
    );
    let got = errors(
        "app = \"web\"\n[env.staging]\ndomains = [\"a.example.com\", \"*.example.com\"]\n[env.staging.letsencrypt]\nemail = \"ops@example.com\"\n",
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("web.toml:4:1: env.staging.letsencrypt: Let's Encrypt (HTTP-01, the plugin's default) cannot issue a certificate for the wildcard \"*.example.com\" at env.staging.domains[1]"),
        "{got:?}"
    );
    // Disabled: the wildcard is fine, and Let's Encrypt is not managed.
    let spec = parse_ok(
        "app = \"web\"\n[env.staging]\ndomains = [\"*.example.com\"]\n[env.staging.letsencrypt]\nenabled = false\nemail = \"ops@example.com\"\n",
    );
    assert!(spec.envs[&env("staging")].letsencrypt.is_none());
    assert!(spec.envs[&env("staging")].domains[0].is_wildcard());
    check_error(
        "app = \"web\"\n[env.staging]\n[env.staging.letsencrypt]\nemail = \"ops@example.com\"\n",
        "web.toml:3:1: env.staging.letsencrypt: Let's Encrypt needs the domains to certify: set env.staging.domains",
    );
    assert_eq!(
        errors(
            "app = \"web\"\n[env.staging]\ndomains = [\"a.example.com\"]\n[env.staging.letsencrypt]\nemail = \"ops\"\nauto_renew = \"yes\"\n"
        ),
        [
            r#"web.toml:5:9: env.staging.letsencrypt.email: e-mail address "ops" is invalid: must look like name@example.com (no spaces, a domain with a dot)"#,
            "web.toml:6:14: env.staging.letsencrypt.auto_renew: expected true or false, found string",
        ]
    );
    check_error(
        "app = \"web\"\n[env.staging]\ndomains = [\"a.example.com\"]\n[env.staging.letsencrypt]\nemail = \"ops@example.com\"\nauto_renew = \"yes\"\n",
        "web.toml:6:14: env.staging.letsencrypt.auto_renew: expected true or false, found string",
    );
    let spec = parse_ok(
        "app = \"web\"\n[env.staging]\ndomains = [\"a.example.com\"]\n[env.staging.letsencrypt]\nemail = \"ops@example.com\"\n",
    );
    let le = spec.envs[&env("staging")].letsencrypt.clone().unwrap();
    assert!(le.auto_renew, "auto_renew defaults to true");
}

#[test]
fn service_rules() {
    let base = "app = \"web\"\n[env.staging]\n";
    check_error(
        &format!("{base}[[env.staging.services]]\nkind = \"mysql\"\nname = \"db\"\n"),
        r#"web.toml:4:8: env.staging.services[0].kind: unknown service kind "mysql" (expected "postgres" or "redis")"#,
    );
    check_error(
        &format!("{base}[[env.staging.services]]\nkind = \"postgres\"\nname = \"my.db\"\n"),
        r#"web.toml:5:8: env.staging.services[0].name: service name "my.db" is invalid: must be letters, digits, '_' and '-' (not starting with '-')"#,
    );
    let second = errors(&format!(
        "{base}[[env.staging.services]]\nkind = \"postgres\"\nname = \"db1\"\n[[env.staging.services]]\nkind = \"postgres\"\nname = \"db2\"\n"
    ));
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(
        second[0].starts_with("web.toml:6:1: env.staging.services[1]: DATABASE_URL is already set by env.staging.services[0]; a second postgres link without an alias makes the plugin pick DOKKU_POSTGRES_<COLOR>_URL"),
        "{second:?}"
    );
    check_error(
        &format!(
            "{base}[[env.staging.services]]\nkind = \"redis\"\nname = \"c\"\n[[env.staging.services]]\nkind = \"redis\"\nname = \"c\"\nalias = \"OTHER\"\n"
        ),
        r#"web.toml:6:1: env.staging.services[1]: redis service "c" is already linked at env.staging.services[0]"#,
    );
    check_error(
        &format!(
            "{base}[[env.staging.services]]\nkind = \"redis\"\nname = \"c\"\nalias = \"cache\"\n"
        ),
        r#"web.toml:6:9: env.staging.services[0].alias: link alias "cache" is invalid: must be uppercase letters, digits and '_', starting with a letter"#,
    );
    check_error(
        &format!(
            "{base}[[env.staging.services]]\nkind = \"redis\"\nname = \"c\"\nalias = \"DOKKU_X\"\n"
        ),
        "web.toml:6:9: env.staging.services[0].alias: the link would set DOKKU_X_URL, which is reserved: Dokku manages DOKKU_* variables",
    );
    // Same service name in two kinds is fine; an alias gives the variable.
    let spec = parse_ok(&format!(
        "{base}[[env.staging.services]]\nkind = \"postgres\"\nname = \"x\"\n[[env.staging.services]]\nkind = \"redis\"\nname = \"x\"\nalias = \"CACHE\"\n"
    ));
    let links = &spec.envs[&env("staging")].services;
    assert_eq!(links[1].variable.as_str(), "CACHE_URL");
    assert_eq!(links[1].name, ServiceName::parse("x").unwrap());
}

#[test]
fn config_rules() {
    let base = "app = \"web\"\n[env.staging]\nsecret_keys = [\"API_KEY\"]\n[[env.staging.services]]\nkind = \"postgres\"\nname = \"db\"\n[env.staging.config]\n";
    check_error(
        &format!("{base}API_KEY = \"hunter2\"\n"),
        "web.toml:8:11: env.staging.config.API_KEY: API_KEY is listed in secret_keys, so its value must not be in the file; store it with `flotilla config set APP --env ENV --secret API_KEY=…`",
    );
    check_error(
        &format!("{base}DOKKU_APP_TYPE = \"x\"\n"),
        "web.toml:8:1: env.staging.config.DOKKU_APP_TYPE: DOKKU_APP_TYPE is reserved: Dokku manages DOKKU_* variables",
    );
    check_error(
        &format!("{base}GIT_REV = \"x\"\n"),
        "web.toml:8:1: env.staging.config.GIT_REV: GIT_REV is reserved: Dokku sets GIT_REV on git deploys",
    );
    check_error(
        &format!("{base}\"1-BAD\" = \"x\"\n"),
        r#"web.toml:8:1: env.staging.config.1-BAD: config key "1-BAD" is invalid: must match [A-Za-z_][A-Za-z0-9_]* (an environment variable name)"#,
    );
    check_error(
        &format!("{base}\"A B\" = \"x\"\n"),
        r#"web.toml:8:1: env.staging.config."A B": config key "A B" is invalid: must match [A-Za-z_][A-Za-z0-9_]* (an environment variable name)"#,
    );
    check_error(
        &format!("{base}DATABASE_URL = \"postgres://elsewhere\"\n"),
        "web.toml:8:1: env.staging.config.DATABASE_URL: DATABASE_URL is set by the link of env.staging.services[0]",
    );
    check_error(
        &format!("{base}WORKERS = 4\n"),
        "web.toml:8:11: env.staging.config.WORKERS: expected a string, found integer (quote numbers and booleans)",
    );
    check_error(
        "app = \"web\"\n[env.staging]\nsecret_keys = [\"DOKKU_SECRET\"]\n",
        "web.toml:3:16: env.staging.secret_keys[0]: DOKKU_SECRET is reserved: Dokku manages DOKKU_* variables",
    );
}

#[test]
fn structure_errors() {
    check_error(
        "app = \"Web\"\n[env.staging]\n",
        r#"web.toml:1:7: app: app name "Web" is invalid: must begin with a lowercase letter or digit and contain only lowercase letters, digits, dots and hyphens"#,
    );
    check_error(
        "[env.staging]\n",
        "web.toml:1:1: missing key `app` (the Dokku app name)",
    );
    check_error(
        "app = \"web\"\n",
        "web.toml:1:1: missing `[env.<name>]` tables (e.g. [env.staging])",
    );
    check_error(
        "app = \"web\"\n[env.Prod]\n",
        r#"web.toml:2:6: env.Prod: environment "Prod" is invalid: must be lowercase letters, digits and inner hyphens (one DNS label)"#,
    );
    check_error(
        "app = \"web\"\n[env.staging]\ndomain = [\"a.example.com\"]\n",
        "web.toml:3:1: env.staging.domain: unknown key (expected one of: domains, tenants, letsencrypt, services, config, secret_keys, required_keys)",
    );
    check_error(
        "app = \"web\"\nname = \"x\"\n[env.staging]\n",
        "web.toml:2:1: name: unknown key (expected one of: app, env)",
    );
    let bad = errors("app = \"web\"\n[env.staging\n");
    assert_eq!(bad.len(), 1);
    assert!(bad[0].starts_with("web.toml:2:"), "{bad:?}");
    assert!(bad[0].contains("invalid TOML"), "{bad:?}");
}

#[test]
fn all_errors_are_reported_in_file_order() {
    let got = errors(
        "app = \"web\"\n[env.staging]\ndomains = [\"*.*.example.com\", \"ok.example.com\", \"Bad.example.com\"]\nrequired_keys = [\"A\", \"A\"]\n",
    );
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got[0].starts_with("web.toml:3:12: env.staging.domains[0]"));
    assert!(got[1].starts_with("web.toml:3:49: env.staging.domains[2]"));
    assert!(got[2].starts_with("web.toml:4:23: env.staging.required_keys[1]"));
}

#[test]
fn column_counts_characters() {
    // "é" is two bytes but one column.
    let got = errors("app = \"web\" # café\n[env.staging]\ndomains = [ \"é.example.com\"]\n");
    assert!(got[0].starts_with("web.toml:3:13: "), "{got:?}");
}

#[test]
fn missing_required_counts_config_links_and_store() {
    let spec = parse_ok(
        "app = \"web\"\n[env.staging]\nsecret_keys = [\"S\"]\nrequired_keys = [\"A\", \"S\", \"DATABASE_URL\", \"B\"]\n[[env.staging.services]]\nkind = \"postgres\"\nname = \"db\"\n[env.staging.config]\nA = \"1\"\n",
    );
    let e = &spec.envs[&env("staging")];
    assert_eq!(missing_required(e, []), ["B", "S"]);
    assert_eq!(missing_required(e, ["S"]), ["B"]);
    assert!(missing_required(e, ["S", "B", "UNRELATED"]).is_empty());
}

// ---- diff ----

fn desired() -> DesiredState {
    parse_ok(EXAMPLE).desired(&env("staging")).unwrap()
}

fn secrets() -> BTreeMap<ConfigKey, Secret> {
    BTreeMap::from([
        (key("SECRET_KEY_BASE"), Secret::new("s3cr3t-base")),
        (key("STRIPE_API_KEY"), Secret::new("sk_live_abc")),
    ])
}

/// The host after every change of a full diff ran.
fn converged() -> CurrentState {
    let d = desired();
    let mut config: BTreeMap<String, String> = d
        .config
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    for (k, v) in secrets() {
        config.insert(k.to_string(), v.expose().to_owned());
    }
    config.insert(
        "DATABASE_URL".into(),
        "postgres://postgres:pw@dokku-postgres-web-staging-db:5432/web_staging_db".into(),
    );
    config.insert(
        "REDIS_URL".into(),
        "redis://:pw@dokku-redis-web-staging-cache:6379".into(),
    );
    config.insert("DOKKU_APP_RESTORE".into(), "1".into());
    config.insert("GIT_REV".into(), "abc".into());
    CurrentState {
        app_exists: true,
        domains: d.domains.iter().map(|x| x.to_string()).collect(),
        letsencrypt: CurrentLetsEncrypt {
            active: true,
            email: Some("ops@example.com".into()),
            auto_renew: true,
            certificate_hosts: Some(d.domains.iter().map(|x| x.to_string()).collect()),
        },
        services: d
            .services
            .iter()
            .map(|s| CurrentService {
                kind: s.kind,
                name: s.name.clone(),
                exists: true,
                linked: true,
            })
            .collect(),
        config,
    }
}

#[test]
fn diff_from_nothing_is_ordered() {
    let changes = diff(&desired(), &secrets(), &CurrentState::default());
    let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "create app",
            "create postgres service web-staging-db",
            "create redis service web-staging-cache",
            "link postgres service web-staging-db (sets DATABASE_URL)",
            "link redis service web-staging-cache (sets REDIS_URL)",
            "set LOG_LEVEL=\"debug\"",
            "set RAILS_ENV=\"staging\"",
            "set SECRET_KEY_BASE=*** (secret)",
            "set STRIPE_API_KEY=*** (secret)",
            "set TENANT_HOST_SUFFIX=\".staging.example.com\"",
            "add domain acme.staging.example.com",
            "add domain globex.staging.example.com",
            "add domain staging.example.com",
            "set Let's Encrypt email ops@example.com",
            "enable Let's Encrypt",
            "add the Let's Encrypt auto-renew cron job",
        ]
    );
    assert!(needs_restart(&changes));
}

#[test]
fn converged_host_needs_nothing() {
    let changes = diff(&desired(), &secrets(), &converged());
    assert!(changes.is_empty(), "{changes:?}");
    assert!(!needs_restart(&changes));
}

#[test]
fn a_certificate_missing_a_domain_is_reissued_even_when_the_domains_are_in_place() {
    let mut host = converged();
    // An earlier re-issue failed: the certificate still lacks one domain.
    let first = desired().domains[0].to_string();
    host.letsencrypt
        .certificate_hosts
        .as_mut()
        .unwrap()
        .remove(&first);
    assert_eq!(
        diff(&desired(), &secrets(), &host),
        [Change::EnableLetsEncrypt { force: true }]
    );
    // Not read (None): no opinion, nothing to do.
    host.letsencrypt.certificate_hosts = None;
    assert!(diff(&desired(), &secrets(), &host).is_empty());
}

#[test]
fn drift_is_corrected() {
    let mut host = converged();
    host.config.insert("LOG_LEVEL".into(), "trace".into());
    host.config.insert("LEFTOVER".into(), "1".into());
    host.config.insert("STRIPE_API_KEY".into(), "sk_old".into());
    host.config.insert(
        "DOKKU_POSTGRES_AQUA_URL".into(),
        "postgres://postgres:pw@dokku-postgres-other:5432/other".into(),
    );
    host.config.insert(
        "HANDMADE_DB_URL".into(),
        "postgres://postgres:pw@dokku-postgres-hand:5432/hand".into(),
    );
    host.domains.insert("web.dokku.example.net".into());
    host.domains.remove("globex.staging.example.com");
    let changes = diff(&desired(), &secrets(), &host);
    let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "unset LEFTOVER",
            "set LOG_LEVEL=\"debug\"",
            "set STRIPE_API_KEY=*** (secret)",
            "add domain globex.staging.example.com",
            "remove domain web.dokku.example.net",
            "re-issue the Let's Encrypt certificate for the new domains",
        ]
    );
    assert!(needs_restart(&changes));
}

#[test]
fn domain_only_changes_need_no_restart() {
    let mut host = converged();
    host.domains.remove("staging.example.com");
    let mut d = desired();
    d.letsencrypt = None;
    let changes = diff(&d, &secrets(), &host);
    assert_eq!(
        changes,
        [Change::AddDomain(
            Domain::parse("staging.example.com").unwrap()
        )]
    );
    assert!(!needs_restart(&changes));
}

#[test]
fn unknown_secret_values_are_left_alone() {
    let mut host = converged();
    host.config.remove("STRIPE_API_KEY");
    let only_base = BTreeMap::from([(key("SECRET_KEY_BASE"), Secret::new("s3cr3t-base"))]);
    assert!(diff(&desired(), &only_base, &host).is_empty());
    // Present on the host but unknown here: not unset either.
    assert!(diff(&desired(), &only_base, &converged()).is_empty());
}

#[test]
fn services_created_and_linked_only_when_missing() {
    let mut host = converged();
    host.services[0].linked = false;
    host.services[1].exists = false;
    host.services[1].linked = false;
    let shown: Vec<String> = diff(&desired(), &secrets(), &host)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        shown,
        [
            "create redis service web-staging-cache",
            "link postgres service web-staging-db (sets DATABASE_URL)",
            "link redis service web-staging-cache (sets REDIS_URL)",
        ]
    );
}

#[test]
fn letsencrypt_email_and_cron() {
    let mut host = converged();
    host.letsencrypt.email = None;
    host.letsencrypt.auto_renew = false;
    let changes = diff(&desired(), &secrets(), &host);
    assert_eq!(
        changes,
        [
            Change::SetLetsEncryptEmail(
                crate::names::EmailAddress::parse("ops@example.com").unwrap()
            ),
            Change::AddLetsEncryptCron,
        ]
    );
    assert!(!needs_restart(&changes));
}

#[test]
fn secret_values_never_printed() {
    let changes = diff(&desired(), &secrets(), &CurrentState::default());
    let text = format!(
        "{changes:?} {}",
        changes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (_, v) in secrets() {
        assert!(!text.contains(v.expose()), "leaked a secret in {text}");
    }
    assert!(text.contains("SECRET_KEY_BASE=***"));
    let secret_set = changes
        .iter()
        .find(|c| matches!(c, Change::SetConfig { key, .. } if key.as_str() == "SECRET_KEY_BASE"))
        .unwrap();
    let Change::SetConfig { value, .. } = secret_set else {
        unreachable!()
    };
    assert!(value.is_secret());
    assert_eq!(value.expose(), "s3cr3t-base");
}

#[test]
fn empty_domains_are_not_managed() {
    let spec = parse_ok("app = \"web\"\n[env.staging]\n");
    let d = spec.desired(&env("staging")).unwrap();
    let host = CurrentState {
        app_exists: true,
        domains: BTreeSet::from(["web.host.example.net".to_owned()]),
        ..CurrentState::default()
    };
    assert!(diff(&d, &BTreeMap::new(), &host).is_empty());
}
