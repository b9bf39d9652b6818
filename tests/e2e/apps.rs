//! `flotilla app diff|apply` (issue 6): real coordinator, agents and CLI on
//! fake-dokku. Validation before anything is sent, convergence of domains
//! (tenant subdomains, a wildcard), services and links, config, Let's
//! Encrypt; idempotence (a second apply runs no mutating dokku command and
//! no restart), drift on one host, the `config:set` trap (always
//! `--no-restart`, a failed final restart fails the host).

use std::path::{Path, PathBuf};

use flotilla_tests::{Host, Server, text};

use crate::{deploy_wait, fleet};

const SPEC: &str = r#"# web, declared
app = "web"

[env.prod]
domains = ["web.example.com", "{tenant}.example.com"]
tenants = ["acme", "globex"]
secret_keys = ["SECRET_KEY_BASE"]
required_keys = ["DATABASE_URL"]

[env.prod.letsencrypt]
enabled = true
email = "ops@example.com"
auto_renew = true

[[env.prod.services]]
kind = "postgres"
name = "web-db"

[[env.prod.services]]
kind = "redis"
name = "web-cache"

[env.prod.config]
RAILS_ENV = "production"
LOG_LEVEL = "info"
"#;

/// Every dokku command that changes something, as the agent would call it.
const MUTATING: &[&[&str]] = &[
    &["apps:create"],
    &["postgres:create"],
    &["redis:create"],
    &["postgres:link"],
    &["redis:link"],
    &["config:set"],
    &["config:unset"],
    &["domains:add"],
    &["domains:remove"],
    &["domains:set"],
    &["letsencrypt:set"],
    &["letsencrypt:enable"],
    &["letsencrypt:cron-job", "--add"],
    &["ps:restart"],
];

fn mutations(host: &Host) -> usize {
    MUTATING
        .iter()
        .map(|prefix| host.invocations(prefix).unwrap())
        .sum()
}

fn write_spec(f: &crate::Fleet, name: &str, text: &str) -> PathBuf {
    let path = f.root.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `flotilla app ARGS… --output json` → (exit code, deployment object).
fn app_json(s: &Server, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["app"];
    all.extend(args);
    all.extend(["--output", "json"]);
    let out = s.cli(&all).unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "flotilla app {args:?} printed no JSON ({e}): {}",
            text(&out)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn apply(s: &Server, spec: &Path) -> (i32, serde_json::Value) {
    app_json(
        s,
        &["apply", spec.to_str().unwrap(), "--env", "prod", "--wait"],
    )
}

fn diff(s: &Server, spec: &Path) -> (i32, serde_json::Value) {
    app_json(s, &["diff", spec.to_str().unwrap(), "--env", "prod"])
}

fn changes(v: &serde_json::Value, host: usize) -> Vec<String> {
    v["hosts"][host]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect()
}

fn dokku_out(host: &Host, args: &[&str]) -> String {
    let out = host.dokku(args).unwrap();
    assert!(out.status.success(), "dokku {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn invalid_specs_fail_locally_with_line_and_column_and_send_nothing() {
    let f = fleet(1);
    let s = &f.server;
    let bad = write_spec(
        &f,
        "bad.toml",
        "app = \"web\"\n\n[env.prod]\ndomains = [\"web.example.com\", \"{tenant}.example.com\"]\nservices = 3\n\n[env.prod.config]\n\"bad key\" = \"x\"\n",
    );
    for sub in ["diff", "apply"] {
        let out = s
            .cli(&["app", sub, bad.to_str().unwrap(), "--env", "prod"])
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{sub}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let located: Vec<&str> = stderr.lines().filter(|l| l.contains("bad.toml:")).collect();
        assert!(
            located.len() >= 2,
            "{sub}: every error with its position: {stderr}"
        );
        assert!(
            stderr.contains("bad.toml:5:"),
            "services = 3 is line 5: {stderr}"
        );
        assert!(
            stderr.contains("bad.toml:8:"),
            "the bad key is line 8: {stderr}"
        );
        assert!(stderr.contains("nothing was sent"), "{stderr}");
    }
    // An environment the spec does not have is refused the same way.
    let good = write_spec(&f, "web.toml", SPEC);
    let out = s
        .cli(&["app", "apply", good.to_str().unwrap(), "--env", "staging"])
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("no environment \"staging\""),
        "{}",
        text(&out)
    );

    let deployments = s.json(&["deployments"]).unwrap();
    assert_eq!(deployments.as_array().unwrap().len(), 0, "{deployments}");
    for probe in ["apps:exists", "config:export", "domains:report"] {
        assert_eq!(
            f.hosts[0].invocations(&[probe]).unwrap(),
            0,
            "no dokku {probe} ran"
        );
    }
}

#[test]
fn apply_converges_every_host_then_changes_nothing_and_repairs_drift_on_one_host() {
    let f = fleet(2);
    let s = &f.server;
    // Let's Encrypt needs a deployed app answering on port 80.
    let (ok, v) = deploy_wait(s, "web", "registry.example.com/web:1");
    assert!(ok, "{v}");
    let spec = write_spec(&f, "web.toml", SPEC);

    let deployed: Vec<usize> = f.hosts.iter().map(mutations).collect();
    let (code, before) = diff(s, &spec);
    assert_eq!(code, 0, "{before}");
    assert_eq!(before["kind"], "diff");
    assert!(changes(&before, 0).contains(&"add domain acme.example.com".to_owned()));
    assert_eq!(
        f.hosts.iter().map(mutations).collect::<Vec<_>>(),
        deployed,
        "a diff changes nothing"
    );

    let (code, applied) = apply(s, &spec);
    assert_eq!(code, 0, "{applied}");
    assert_eq!(applied["kind"], "converge");
    assert_eq!(applied["state"], "succeeded");
    for (i, host) in f.hosts.iter().enumerate() {
        let made = changes(&applied, i);
        assert!(
            made.iter()
                .any(|c| c.starts_with("link postgres service web-db")),
            "{made:?}"
        );
        let vhosts = dokku_out(host, &["domains:report", "web", "--domains-app-vhosts"]);
        let mut vhosts: Vec<&str> = vhosts.split_whitespace().collect();
        vhosts.sort_unstable();
        assert_eq!(
            vhosts,
            ["acme.example.com", "globex.example.com", "web.example.com"],
            "{}",
            host.host_id
        );
        assert!(
            host.dokku(&["postgres:exists", "web-db"])
                .unwrap()
                .status
                .success()
        );
        assert!(
            host.dokku(&["redis:exists", "web-cache"])
                .unwrap()
                .status
                .success()
        );
        assert!(
            host.dokku(&["postgres:linked", "web-db", "web"])
                .unwrap()
                .status
                .success()
        );
        assert!(
            host.dokku(&["redis:linked", "web-cache", "web"])
                .unwrap()
                .status
                .success()
        );
        let config: serde_json::Value = serde_json::from_str(&dokku_out(
            host,
            &["config:export", "web", "--format", "json"],
        ))
        .unwrap();
        assert_eq!(config["RAILS_ENV"], "production");
        assert_eq!(config["LOG_LEVEL"], "info");
        assert!(
            config["DATABASE_URL"]
                .as_str()
                .unwrap()
                .starts_with("postgres://")
        );
        assert!(
            config["REDIS_URL"]
                .as_str()
                .unwrap()
                .starts_with("redis://")
        );
        assert_eq!(dokku_out(host, &["letsencrypt:active", "web"]), "true");
        assert_eq!(
            dokku_out(host, &["letsencrypt:report", "web", "--letsencrypt-email"]),
            "ops@example.com"
        );
        // The config:set trap: never without --no-restart; one restart at the end.
        assert_eq!(
            host.invocations(&["config:set"]).unwrap(),
            host.invocations(&["config:set", "--no-restart"]).unwrap()
        );
        assert!(host.invocations(&["config:set"]).unwrap() > 0);
        assert_eq!(host.invocations(&["ps:restart", "web"]).unwrap(), 1);
    }

    // Idempotent: the same spec again runs no mutating command, no restart.
    let counts: Vec<(usize, usize)> = f
        .hosts
        .iter()
        .map(|h| (mutations(h), h.restarts("web").unwrap()))
        .collect();
    let (code, again) = apply(s, &spec);
    assert_eq!(code, 0, "{again}");
    for (i, host) in f.hosts.iter().enumerate() {
        assert!(changes(&again, i).is_empty(), "{again}");
        assert_eq!(
            (mutations(host), host.restarts("web").unwrap()),
            counts[i],
            "{}: the second apply changed something",
            host.host_id
        );
    }

    // Drift by hand on web-2 only: diff shows it there, apply repairs it.
    let web2 = &f.hosts[1];
    assert!(
        web2.dokku(&[
            "config:set",
            "--no-restart",
            "web",
            "LOG_LEVEL=debug",
            "STRAY=1"
        ])
        .unwrap()
        .status
        .success()
    );
    assert!(
        web2.dokku(&["domains:add", "web", "old.example.com"])
            .unwrap()
            .status
            .success()
    );
    let out = s
        .cli(&["app", "diff", spec.to_str().unwrap(), "--env", "prod"])
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "web-1: in sync",
            "web-2: re-issue the Let's Encrypt certificate for the new domains",
            "web-2: remove domain old.example.com",
            "web-2: set LOG_LEVEL=\"info\"",
            "web-2: unset STRAY",
        ],
        "{stdout}"
    );
    let (code, repaired) = apply(s, &spec);
    assert_eq!(code, 0, "{repaired}");
    assert!(changes(&repaired, 0).is_empty(), "{repaired}");
    assert_eq!(changes(&repaired, 1).len(), 4, "{repaired}");
    assert_eq!(dokku_out(web2, &["config:get", "web", "LOG_LEVEL"]), "info");
    assert!(
        !web2
            .dokku(&["config:get", "web", "STRAY"])
            .unwrap()
            .status
            .success()
    );
    let (code, after) = diff(s, &spec);
    assert_eq!(code, 0, "{after}");
    assert!(
        changes(&after, 0).is_empty() && changes(&after, 1).is_empty(),
        "{after}"
    );
    // Still never a config:set that restarts by itself.
    for host in &f.hosts {
        assert_eq!(
            host.invocations(&["config:set"]).unwrap(),
            host.invocations(&["config:set", "--no-restart"]).unwrap()
        );
    }
}

#[test]
fn wildcard_domains_converge_and_a_failed_final_restart_fails_the_host() {
    let f = fleet(1);
    let s = &f.server;
    let (ok, v) = deploy_wait(s, "web", "registry.example.com/web:1");
    assert!(ok, "{v}");
    let spec = |level: &str| {
        format!(
            "app = \"web\"\n[env.prod]\ndomains = [\"web.example.com\", \"*.apps.example.com\"]\n\n[env.prod.config]\nLOG_LEVEL = \"{level}\"\n"
        )
    };
    let path = write_spec(&f, "web.toml", &spec("info"));
    let (code, applied) = apply(s, &path);
    assert_eq!(code, 0, "{applied}");
    let host = &f.hosts[0];
    let vhosts = dokku_out(host, &["domains:report", "web", "--domains-app-vhosts"]);
    let mut vhosts: Vec<&str> = vhosts.split_whitespace().collect();
    vhosts.sort_unstable();
    assert_eq!(vhosts, ["*.apps.example.com", "web.example.com"]);

    // The restart after a config change fails: config:set (with --no-restart)
    // exits 0, the agent's own ps:restart does not, and the host fails.
    host.fail_restarts(&["web"]).unwrap();
    std::fs::write(&path, spec("debug")).unwrap();
    let (code, failed) = apply(s, &path);
    assert_eq!(code, 3, "{failed}");
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["hosts"][0]["state"], "failed");
    let error = failed["hosts"][0]["error"].as_str().unwrap();
    assert!(error.contains("ps:restart"), "{error}");
    assert_eq!(changes(&failed, 0), ["set LOG_LEVEL=\"debug\""]);
    assert_eq!(
        host.invocations(&["config:set"]).unwrap(),
        host.invocations(&["config:set", "--no-restart"]).unwrap()
    );
}

/// Secret values travel only inside the signed command: a stand-in
/// coordinator (the real one's address, certificate and signing key) sends a
/// converge carrying one; the real agent sets it on fake-dokku (whose
/// `config:set` prints values), yet no reported log line, result, agent log
/// line or spool file holds it.
#[test]
fn secret_values_never_reach_reports_agent_logs_or_the_spool() {
    use flotilla_proto::v1 as pb;
    use flotilla_shared::signing::{Action, CommandSigner};

    const SECRET: &str = "zq-s3cret-value-9137";
    let mut f = fleet(1);
    let data_dir = f.server.data_dir.clone();
    let addr = f.server.addr.clone();
    f.server.proc.terminate().unwrap();

    let spec = flotilla_shared::appspec::AppSpec::parse(
        "web.toml",
        "app = \"web\"\n[env.prod]\nsecret_keys = [\"API_KEY\"]\n[env.prod.config]\nMODE = \"live\"\n",
    )
    .unwrap();
    let desired = spec
        .desired(&flotilla_shared::EnvName::parse("prod").unwrap())
        .unwrap();
    let signer = CommandSigner::from_pkcs8_pem(
        &std::fs::read_to_string(data_dir.join("signing.key")).unwrap(),
    )
    .unwrap();
    let now = flotilla_shared::time::now_ms();
    let command = signer.sign(&pb::CommandEnvelope {
        command_id: "converge-secret-1".into(),
        host_id: "web-1".into(),
        deployment_id: "d-converge".into(),
        issued_at_ms: now,
        expires_at_ms: now + 600_000,
        nonce: vec![2; 16],
        action: Some(
            Action::Converge {
                app: desired.app.clone(),
                desired: Box::new(desired),
                secrets: [(
                    flotilla_shared::ConfigKey::parse("API_KEY").unwrap(),
                    flotilla_shared::secret::Secret::new(SECRET),
                )]
                .into(),
                dry_run: false,
            }
            .to_proto(),
        ),
    });

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (server, reports) = crate::replay::serve_stand_in(&rt, &data_dir, &addr, vec![command]);

    let mut lines = Vec::new();
    let result = loop {
        let report = reports
            .recv_timeout(flotilla_tests::WAIT)
            .unwrap_or_else(|_| panic!("no result; lines so far: {lines:#?}"));
        match report.body {
            Some(pb::report::Body::Log(l)) => lines.push(l.line),
            Some(pb::report::Body::Result(r)) => break r,
            Some(pb::report::Body::Refused(r)) => panic!("refused: {r:?}"),
            _ => {}
        }
    };
    assert_eq!(
        result.outcome,
        i32::from(pb::Outcome::Succeeded),
        "{result:?}"
    );
    let host = &f.hosts[0];
    // It really was set, through argv, with --no-restart.
    assert_eq!(dokku_out(host, &["config:get", "web", "API_KEY"]), SECRET);
    assert_eq!(
        host.invocations(&["config:set", "--no-restart", "web"])
            .unwrap(),
        2,
        "API_KEY and MODE"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("API_KEY") && l.contains("***")),
        "dokku's `API_KEY: value` line arrives redacted: {lines:#?}"
    );
    assert!(
        result
            .changes
            .contains(&"set API_KEY=*** (secret)".to_owned())
    );
    for line in lines
        .iter()
        .chain(&result.changes)
        .chain(std::iter::once(&result.error))
    {
        assert!(!line.contains(SECRET), "reported: {line}");
    }
    // The agent's own log (stderr) and every file of its data dir (the spool).
    f.agents[0].terminate().unwrap();
    assert!(!f.agents[0].log.is_empty());
    assert!(
        !f.agents[0].log.contains(SECRET),
        "the agent logged the secret"
    );
    let found = flotilla_tests::files_containing(&host.agent_dir, SECRET);
    assert!(found.is_empty(), "{found:?} hold the secret");
    server.abort();
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
}

/// Plugins before 0.25 ask Let's Encrypt on every `letsencrypt:enable`
/// (rate limits): the agent only enables when `letsencrypt:active` says no.
#[test]
fn lets_encrypt_before_plugin_0_25_is_enabled_once() {
    let f = fleet(1);
    let s = &f.server;
    let host = &f.hosts[0];
    let standin = host.dokku_root.join(".standin");
    std::fs::create_dir_all(&standin).unwrap();
    std::fs::write(standin.join("letsencrypt-version"), "0.24.0\n").unwrap();
    let (ok, v) = deploy_wait(s, "web", "registry.example.com/web:1");
    assert!(ok, "{v}");
    let path = write_spec(
        &f,
        "web.toml",
        "app = \"web\"\n[env.prod]\ndomains = [\"web.example.com\"]\n[env.prod.letsencrypt]\nemail = \"ops@example.com\"\nauto_renew = false\n",
    );
    for round in 0..2 {
        let (code, v) = apply(s, &path);
        assert_eq!(code, 0, "round {round}: {v}");
        assert_eq!(
            host.invocations(&["letsencrypt:enable"]).unwrap(),
            1,
            "round {round}"
        );
        assert_eq!(dokku_out(host, &["letsencrypt:active", "web"]), "true");
    }
}

/// The issue's full run: a secret stored with `flotilla config set --secret`
/// reaches the app through `app apply`, the required-keys gate holds a deploy
/// until every required key is set, and neither secret appears in any output
/// of the run: CLI answers (JSON and text), the coordinator's and the agent's
/// logs, what the agent sent to Loki, the Sentry events of a failed converge,
/// or any file either daemon keeps.
#[test]
fn a_stored_secret_reaches_the_app_and_no_output_of_the_run() {
    const SECRET: &str = "k8-Sup3r-s3cret-api-key-4471";
    const SECRET2: &str = "db-pw-77-never-printed-XQ";
    let loki = flotilla_tests::loki::LokiReceiver::start().unwrap();
    let ingest = flotilla_tests::HttpStub::start().unwrap();
    ingest.respond(
        "/api/42/envelope/",
        200,
        r#"{"id":"00000000000000000000000000000000"}"#,
    );
    let dsn = format!("http://publickey@127.0.0.1:{}/42", ingest.port);
    let root = tempfile::tempdir().unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    let listen = format!("127.0.0.1:{}", flotilla_tests::free_port().unwrap());
    let mut server =
        Server::start_with_env(&data_dir, &listen, &[], &[("SENTRY_DSN", dsn.as_str())]).unwrap();
    let host = Host::join(root.path(), &server, "web-1", "prod").unwrap();
    let mut agent = host
        .start_with(&["--loki-url", &loki.push_url(), "--sentry-dsn", &dsn])
        .unwrap();
    let mut outputs: Vec<String> = Vec::new();
    let mut cli = |args: &[&str]| {
        let out = server.cli(args).unwrap();
        let all = text(&out);
        outputs.push(all.clone());
        (out.status.code().unwrap_or(-1), all)
    };

    let (code, out) = cli(&[
        "config",
        "set",
        "web",
        "--env",
        "prod",
        "--secret",
        &format!("API_KEY={SECRET}"),
    ]);
    assert_eq!(code, 0, "{out}");
    let spec = root.path().join("web.toml");
    std::fs::write(
        &spec,
        "app = \"web\"\n[env.prod]\nsecret_keys = [\"API_KEY\", \"DB_PASSWORD\"]\nrequired_keys = [\"API_KEY\", \"DB_PASSWORD\"]\n[[env.prod.services]]\nkind = \"postgres\"\nname = \"web-db\"\n[env.prod.config]\nMODE = \"live\"\n",
    )
    .unwrap();
    let spec = spec.to_str().unwrap();
    let (code, out) = cli(&[
        "app", "apply", spec, "--env", "prod", "--wait", "--output", "json",
    ]);
    assert_eq!(code, 0, "{out}");
    // It reached the app.
    assert_eq!(dokku_out(&host, &["config:get", "web", "API_KEY"]), SECRET);
    // The database link's password (the plugin prints the URL) is a secret too.
    let url = dokku_out(&host, &["config:get", "web", "DATABASE_URL"]);
    let db_password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(auth, _)| auth.split_once(':'))
        .map(|(_, pw)| pw.to_owned())
        .unwrap_or_else(|| panic!("no password in {url}"));
    assert!(db_password.len() >= 6, "{url}");
    // A forgotten --secret cannot turn a secret plain.
    let (code, out) = cli(&["config", "set", "web", "--env", "prod", "API_KEY=plain-now"]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("API_KEY is a secret"), "{out}");

    // The gate: DB_PASSWORD is required and not stored yet.
    let (code, out) = cli(&[
        "deploy",
        "web",
        "--image",
        "registry.example.com/web:1",
        "--env",
        "prod",
        "--wait",
    ]);
    assert_eq!(code, 6, "{out}");
    assert!(
        out.contains("required config keys missing: DB_PASSWORD"),
        "{out}"
    );
    let (code, out) = cli(&[
        "config",
        "set",
        "web",
        "--env",
        "prod",
        "--secret",
        &format!("DB_PASSWORD={SECRET2}"),
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cli(&["app", "apply", spec, "--env", "prod", "--wait"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        dokku_out(&host, &["config:get", "web", "DB_PASSWORD"]),
        SECRET2
    );
    let (code, out) = cli(&[
        "deploy",
        "web",
        "--image",
        "registry.example.com/web:1",
        "--env",
        "prod",
        "--wait",
        "--output",
        "json",
    ]);
    assert_eq!(code, 0, "{out}");

    // A converge that fails (its final restart does): error events go to
    // Sentry from both daemons, with the secrets in play.
    host.fail_restarts(&["web"]).unwrap();
    let maintenance = std::fs::read_to_string(spec)
        .unwrap()
        .replace("live", "maintenance");
    std::fs::write(spec, maintenance).unwrap();
    let (code, out) = cli(&["app", "apply", spec, "--env", "prod", "--wait"]);
    assert_eq!(code, 3, "{out}");

    // Everything a person or a pipeline reads.
    let deployments = server.json(&["deployments", "--app", "web"]).unwrap();
    for d in deployments.as_array().unwrap() {
        let id = d["id"].as_str().unwrap();
        cli(&["logs", id, "--output", "json"]);
        cli(&["logs", id]);
        cli(&["status", id, "--output", "json"]);
    }
    for args in [
        &["deployments", "--app", "web", "--output", "json"][..],
        &["config", "list", "web", "--env", "prod", "--output", "json"],
        &["config", "get", "web", "--env", "prod", "API_KEY"],
        &["audit", "--output", "json"],
        &["hosts", "--output", "json"],
        &["app", "diff", spec, "--env", "prod"],
    ] {
        cli(args);
    }
    // Positive control: an admin's reveal shows it (so the scans can find it).
    let (code, out) = cli(&[
        "config", "get", "web", "--env", "prod", "API_KEY", "--reveal",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(SECRET), "{out}");
    outputs.pop();

    server.proc.terminate().unwrap();
    agent.terminate().unwrap();
    // Both daemons reported the failure (flushed at exit at the latest).
    let envelopes: Vec<String> = ingest.requests().into_iter().map(|r| r.body).collect();
    assert!(
        envelopes.iter().any(|b| b.contains("command failed"))
            && envelopes.iter().any(|b| b.contains("deployment failed")),
        "no error events from both daemons: {envelopes:?}"
    );
    let loki_records = serde_json::to_string(&loki.requests().unwrap()).unwrap();
    assert!(
        loki_records.contains("config:set"),
        "Loki got the deploy output: {loki_records}"
    );
    for secret in [SECRET, SECRET2, db_password.as_str()] {
        for (i, out) in outputs.iter().enumerate() {
            assert!(
                !out.contains(secret),
                "CLI output {i} shows a secret: {out}"
            );
        }
        assert!(
            !server.proc.log.contains(secret),
            "the coordinator logged a secret"
        );
        assert!(!agent.log.contains(secret), "the agent logged a secret");
        assert!(!loki_records.contains(secret), "Loki got a secret");
        for body in &envelopes {
            assert!(!body.contains(secret), "Sentry got a secret: {body}");
        }
        for dir in [&data_dir, &host.agent_dir] {
            let found = flotilla_tests::files_containing(dir, secret);
            assert!(found.is_empty(), "{found:?} hold a secret");
        }
    }
}

/// `apps:create` on a host with a global domain gives the new app
/// `APP.GLOBAL` at once; the agent reads the state again after creating the
/// app, so the first apply already converges and the second changes nothing.
#[test]
fn a_new_app_on_a_host_with_a_global_domain_converges_in_one_apply() {
    let f = fleet(1);
    let s = &f.server;
    let host = &f.hosts[0];
    let out = host
        .dokku(&["domains:add-global", "apps.internal"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let spec = write_spec(
        &f,
        "fresh.toml",
        "app = \"fresh\"\n[env.prod]\ndomains = [\"fresh.example.com\"]\n",
    );
    let (code, first) = apply(s, &spec);
    assert_eq!(code, 0, "{first}");
    assert_eq!(
        dokku_out(host, &["domains:report", "fresh", "--domains-app-vhosts"]),
        "fresh.example.com"
    );
    let before = mutations(host);
    let (code, second) = apply(s, &spec);
    assert_eq!(code, 0, "{second}");
    assert!(changes(&second, 0).is_empty(), "{second}");
    assert_eq!(
        mutations(host),
        before,
        "the second apply changed something"
    );
}

/// A link whose variable is already taken would make the plugin pick another
/// variable (`DOKKU_POSTGRES_<COLOR>_URL`) while the app keeps the old value:
/// the agent refuses before linking and says what to do.
#[test]
fn a_link_whose_variable_is_taken_is_refused_before_linking() {
    let f = fleet(1);
    let host = &f.hosts[0];
    for args in [
        &["apps:create", "web"][..],
        &[
            "config:set",
            "--no-restart",
            "web",
            "DATABASE_URL=postgres://u:p@elsewhere:5432/db",
        ],
    ] {
        let out = host.dokku(args).unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    let spec = write_spec(
        &f,
        "linked.toml",
        "app = \"web\"\n[env.prod]\n[[env.prod.services]]\nkind = \"postgres\"\nname = \"web-db\"\n",
    );
    let (code, v) = apply(&f.server, &spec);
    assert_eq!(code, 3, "{v}");
    let error = v["hosts"][0]["error"].as_str().unwrap();
    assert!(
        error.starts_with(
            "DATABASE_URL is already set on web by something else than the postgres service web-db"
        ),
        "{error}"
    );
    assert_eq!(host.invocations(&["postgres:link"]).unwrap(), 0);
    assert_eq!(
        dokku_out(host, &["config:get", "web", "DATABASE_URL"]),
        "postgres://u:p@elsewhere:5432/db"
    );
}
