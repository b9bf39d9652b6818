//! Sentry from both daemons: a local HTTP server is the ingest (DSN
//! `http://publickey@127.0.0.1:PORT/42`); a failing deploy must produce
//! tagged error events, and no secret may appear in anything sent.

use std::time::{Duration, Instant};

use flotilla_tests::{Host, HttpStub, Server};

const ENVELOPE_PATH: &str = "/api/42/envelope/";
const HOOK_SECRET: &str = "whsec-e2e-webhook-signing-secret";

/// The `event` payloads of every envelope received so far.
fn events(stub: &HttpStub) -> Vec<serde_json::Value> {
    items(stub, "event")
}

/// The payloads of every envelope item of type `kind` received so far.
fn items(stub: &HttpStub, kind: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for r in stub
        .requests()
        .iter()
        .filter(|r| r.path.starts_with(ENVELOPE_PATH))
    {
        // Envelope: header line, then (item header line, payload line)*.
        let mut lines = r.body.split('\n');
        let _header = lines.next();
        while let Some(item) = lines.next() {
            if item.is_empty() {
                continue;
            }
            let item: serde_json::Value = serde_json::from_str(item).unwrap_or_default();
            let payload = lines.next().unwrap_or_default();
            if item["type"] == kind {
                out.push(serde_json::from_str(payload).unwrap());
            }
        }
    }
    out
}

/// Waits (bounded polling: the ingest has no other signal) for an event
/// whose message contains `needle`.
fn wait_event(stub: &HttpStub, needle: &str) -> serde_json::Value {
    let deadline = Instant::now() + flotilla_tests::WAIT;
    loop {
        if let Some(e) = events(stub)
            .into_iter()
            .find(|e| e.to_string().contains(needle))
        {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no Sentry event containing {needle:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sentry_events_from_a_failing_deploy_are_tagged_and_carry_no_secret() {
    let ingest = HttpStub::start().unwrap();
    ingest.respond(
        ENVELOPE_PATH,
        200,
        r#"{"id":"00000000000000000000000000000000"}"#,
    );
    let dsn = format!("http://publickey@127.0.0.1:{}/42", ingest.port);
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[notifications.channels.hook]\nkind = \"webhook\"\nurl = \"{}/hook\"\nsecret_env = \"E2E_HOOK_SECRET\"\n",
            ingest.url()
        ),
    )
    .unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    let server = Server::start_with_env(
        &data_dir,
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
        &[
            ("SENTRY_DSN", dsn.as_str()),
            ("SENTRY_ENVIRONMENT", "e2e"),
            ("SENTRY_TRACES_SAMPLE_RATE", "1.0"),
            ("E2E_HOOK_SECRET", HOOK_SECRET),
        ],
    )
    .unwrap();
    let join_token = server.join_token().unwrap();
    let (host, out) = Host::join_with(root.path(), &server, &join_token, "web-1", "prod").unwrap();
    assert!(out.status.success(), "{}", flotilla_tests::text(&out));
    let _agent = host
        .start_with(&["--sentry-dsn", &dsn, "--sentry-environment", "e2e"])
        .unwrap();
    let team_token = String::from_utf8(
        server
            .cli(&[
                "token", "create", "--role", "deployer", "--name", "ci", "--team", "payments",
            ])
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();

    let image = "registry.example.com/shop:broken";
    host.fail_images(&[image]).unwrap();
    let out = flotilla_tests::run(server.cli_as(
        &team_token,
        &[
            "deploy", "shop", "--image", image, "--env", "prod", "--wait", "--output", "json",
        ],
    ))
    .unwrap();
    assert!(!out.status.success(), "{}", flotilla_tests::text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let deployment = status["id"].as_str().unwrap();

    // The agent's event: its command failed.
    let agent_event = wait_event(&ingest, "command failed");
    // (`level` is left out when it is the default, `error`.)
    assert!(
        agent_event.get("level").is_none_or(|l| l == "error"),
        "{agent_event}"
    );
    assert!(
        agent_event["release"]
            .as_str()
            .unwrap()
            .starts_with("flotilla-agent@")
    );
    assert_eq!(agent_event["environment"], "e2e");
    let tags = &agent_event["tags"];
    assert_eq!(tags["host"], "web-1", "{agent_event}");
    assert_eq!(tags["app"], "shop");
    assert_eq!(tags["env"], "prod");
    assert_eq!(tags["deployment"], deployment);

    // The coordinator's event: the deployment failed, with the token's team.
    let server_event = wait_event(&ingest, "deployment failed");
    assert!(
        server_event["release"]
            .as_str()
            .unwrap()
            .starts_with("flotilla-server@")
    );
    assert_eq!(server_event["environment"], "e2e");
    let tags = &server_event["tags"];
    assert_eq!(tags["app"], "shop", "{server_event}");
    assert_eq!(tags["env"], "prod");
    assert_eq!(tags["deployment"], deployment);
    assert_eq!(tags["tenant"], "payments");
    assert_eq!(tags["host"], "web-1");

    // With a sample rate of 1, the coordinator's deployment span is a transaction.
    let deadline = Instant::now() + flotilla_tests::WAIT;
    while !items(&ingest, "transaction")
        .iter()
        .any(|t| t["transaction"] == "deployment" && t["tags"]["tenant"] == "payments")
    {
        assert!(Instant::now() < deadline, "no deployment transaction");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Every request the ingest received: no secret, no request or user data.
    let join_secret = join_token.split('.').nth(1).unwrap().to_owned();
    let admin = server.admin_token();
    let secrets = [
        admin.as_str(),
        join_secret.as_str(),
        team_token.as_str(),
        HOOK_SECRET,
    ];
    let sent: Vec<_> = ingest
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with(ENVELOPE_PATH))
        .collect();
    assert!(!sent.is_empty());
    for r in &sent {
        for secret in secrets {
            assert!(
                !r.body.contains(secret),
                "a secret reached Sentry: {}",
                r.body
            );
            assert!(r.headers.iter().all(|(_, v)| !v.contains(secret)));
        }
    }
    for e in events(&ingest) {
        assert!(e.get("user").is_none() && e.get("request").is_none(), "{e}");
    }
}

#[test]
fn sentry_deploy_markers_after_a_successful_deploy() {
    const AUTH: &str = "sntrys_e2e-sentry-auth-token-value";
    let sentry = HttpStub::start().unwrap();
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[sentry]\nurl = \"{}\"\nauth_token_env = \"E2E_SENTRY_AUTH\"\norg = \"acme\"\n[sentry.projects]\nshop = \"shop-backend\"\n",
            sentry.url()
        ),
    )
    .unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    let server = Server::start_with_env(
        &data_dir,
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
        &[("E2E_SENTRY_AUTH", AUTH)],
    )
    .unwrap();
    let host = Host::join(root.path(), &server, "web-1", "prod").unwrap();
    let _agent = host.start().unwrap();

    // An app without a Sentry project is not marked; `shop` is.
    let (ok, other) = crate::deploy_wait(&server, "blog", "registry.example.com/blog:3");
    assert!(ok, "{other}");
    let (ok, status) = crate::deploy_wait(&server, "shop", "registry.example.com/shop:1.4.2");
    assert!(ok, "{status}");
    let requests = sentry.wait_for_requests(2).unwrap();
    let (release, deploy) = (&requests[0], &requests[1]);
    assert_eq!(
        (release.method.as_str(), release.path.as_str()),
        ("POST", "/api/0/organizations/acme/releases/")
    );
    assert_eq!(
        release.header("authorization"),
        Some(format!("Bearer {AUTH}").as_str())
    );
    let body: serde_json::Value = serde_json::from_str(&release.body).unwrap();
    assert_eq!(body["version"], "shop@1.4.2");
    assert_eq!(body["projects"], serde_json::json!(["shop-backend"]));
    assert_eq!(
        deploy.path,
        "/api/0/organizations/acme/releases/shop%401.4.2/deploys/"
    );
    let body: serde_json::Value = serde_json::from_str(&deploy.body).unwrap();
    assert_eq!(body["environment"], "prod");
    assert_eq!(body["projects"], serde_json::json!(["shop-backend"]));
    assert!(
        body["name"]
            .as_str()
            .unwrap()
            .contains(status["id"].as_str().unwrap())
    );
    assert!(
        body["dateFinished"].as_str().unwrap().ends_with('Z'),
        "{body}"
    );
    assert_eq!(sentry.requests().len(), 2);
}
