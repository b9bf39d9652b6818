//! Deploy gates (freeze windows, Flagsmith) and notifications, against the
//! real coordinator, agents and local stand-ins for Flagsmith and receivers.

use flotilla_tests::{Host, HttpStub, Server, text};

use crate::{Fleet, deploy_with, host_states};

/// A coordinator started with `server.toml` = `config` (and `env`), one agent.
fn fleet_with_config(config: &str, env: &[(&str, &str)]) -> Fleet {
    fleet_of_with_config(1, config, env)
}

/// `n` agents (`web-1`…), the coordinator with `server.toml` = `config`.
fn fleet_of_with_config(n: usize, config: &str, env: &[(&str, &str)]) -> Fleet {
    let root = tempfile::tempdir().unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    let path = root.path().join("server.toml");
    std::fs::write(&path, config).unwrap();
    let listen = format!("127.0.0.1:{}", flotilla_tests::free_port().unwrap());
    let server = Server::start_with_env(
        &data_dir,
        &listen,
        &["--config", path.to_str().unwrap()],
        env,
    )
    .unwrap();
    let mut hosts = Vec::new();
    let mut agents = Vec::new();
    for i in 1..=n {
        let host = Host::join(root.path(), &server, &format!("web-{i}"), "prod").unwrap();
        agents.push(host.start().unwrap());
        hosts.push(host);
    }
    Fleet {
        agents,
        server,
        hosts,
        root,
    }
}

fn gate<'a>(status: &'a serde_json::Value, name: &str) -> Vec<&'a serde_json::Value> {
    status["gates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["gate"] == name)
        .collect()
}

#[test]
fn a_freeze_window_blocks_deploys_not_rollbacks_and_an_admin_can_override() {
    let f = crate::fleet(1);
    let s = &f.server;
    assert_eq!(deploy_with(s, "shop", "acme/shop:1", &[]).0, 0);
    assert_eq!(deploy_with(s, "shop", "acme/shop:2", &[]).0, 0);
    let out = s
        .cli(&[
            "freeze",
            "create",
            "--env",
            "prod",
            "--from",
            "now",
            "--until",
            "1h",
            "--reason",
            "year-end freeze",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let list = s.json(&["freeze", "list"]).unwrap();
    let id = list[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(list[0]["reason"], "year-end freeze");

    let (code, status) = deploy_with(s, "shop", "acme/shop:3", &[]);
    assert_eq!(code, 6, "blocked exits 6: {status}");
    assert_eq!(status["state"], "blocked");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("year-end freeze"),
        "{status}"
    );
    assert_eq!(host_states(&status), ["skipped"]);
    assert_eq!(f.hosts[0].deployed_image("shop").unwrap(), "acme/shop:2");

    // Rollbacks are never frozen.
    let (ok, rb) = crate::rollback_wait(s, "shop", &[]);
    assert!(ok, "{rb}");
    assert_eq!(f.hosts[0].deployed_image("shop").unwrap(), "acme/shop:1");

    // A deployer cannot override; an admin can, and it is audited and recorded.
    let deployer = String::from_utf8(
        s.cli(&["token", "create", "--role", "deployer", "--name", "ci"])
            .unwrap()
            .stdout,
    )
    .unwrap();
    let out = flotilla_tests::run(s.cli_as(
        deployer.trim(),
        &[
            "deploy",
            "shop",
            "--image",
            "acme/shop:3",
            "--env",
            "prod",
            "--override-freeze",
        ],
    ))
    .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("admin"), "{}", text(&out));
    let (code, status) = deploy_with(s, "shop", "acme/shop:3", &["--override-freeze"]);
    assert_eq!(code, 0, "{status}");
    let freeze = gate(&status, "freeze");
    assert_eq!(freeze[0]["allowed"], true, "{status}");
    assert_eq!(freeze[0]["source"], "override", "{status}");
    let audit = s.json(&["audit"]).unwrap();
    let overridden = audit.as_array().unwrap().iter().any(|e| {
        e["action"] == "deploy"
            && e["outcome"] == "ok"
            && e["target"].as_str().unwrap().contains("override-freeze")
    });
    assert!(overridden, "{audit}");

    let out = s.cli(&["freeze", "delete", &id]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(deploy_with(s, "shop", "acme/shop:4", &[]).0, 0);
}

const FLAGS_ON: &str = r#"[{"feature":{"id":1,"name":"deploys_enabled","type":"STANDARD"},"enabled":true,"feature_state_value":null}]"#;
const FLAGS_OFF: &str = r#"[{"feature":{"id":1,"name":"deploys_enabled","type":"STANDARD"},"enabled":false,"feature_state_value":null}]"#;

#[test]
fn a_flagsmith_gate_live_then_cached_then_the_default() {
    let flagsmith = HttpStub::start().unwrap();
    let config = format!(
        r#"
[gates.flagsmith]
api_url = "{}/api/v1/"
timeout = "1s"
cache_max_age = "8s"
[gates.flagsmith.environments.prod]
environment_key_env = "TEST_FLAGSMITH_KEY"
flag = "deploys_enabled"
when_unreachable = "fail-closed"
"#,
        flagsmith.url()
    );
    let secret = "env-key-s3cret-1234";
    let f = fleet_with_config(&config, &[("TEST_FLAGSMITH_KEY", secret)]);
    let s = &f.server;

    flagsmith.respond("/api/v1/flags", 200, FLAGS_ON);
    let (code, status) = deploy_with(s, "shop", "acme/shop:1", &[]);
    assert_eq!(code, 0, "{status}");
    let g = gate(&status, "flagsmith");
    assert_eq!(
        (g[0]["allowed"].clone(), g[0]["source"].clone()),
        (true.into(), "live".into()),
        "{status}"
    );
    let request = &flagsmith.requests()[0];
    assert_eq!(request.header("x-environment-key"), Some(secret));

    flagsmith.respond("/api/v1/flags", 200, FLAGS_OFF);
    let (code, status) = deploy_with(s, "shop", "acme/shop:2", &[]);
    assert_eq!(code, 6, "{status}");
    assert_eq!(status["state"], "blocked");
    assert_eq!(gate(&status, "flagsmith")[0]["source"], "live");

    // Flagsmith breaks: the answer cached a moment ago (disabled) is used.
    flagsmith.respond("/api/v1/flags", 503, "down");
    let (code, status) = deploy_with(s, "shop", "acme/shop:2", &[]);
    assert_eq!(code, 6, "{status}");
    assert_eq!(gate(&status, "flagsmith")[0]["source"], "cache", "{status}");
    // Back on, then a malformed answer: the fresh cached "enabled" is used.
    flagsmith.respond("/api/v1/flags", 200, FLAGS_ON);
    assert_eq!(deploy_with(s, "shop", "acme/shop:2", &[]).0, 0);
    flagsmith.respond("/api/v1/flags", 200, "{not json");
    let (code, status) = deploy_with(s, "shop", "acme/shop:3", &[]);
    assert_eq!(code, 0, "{status}");
    assert_eq!(gate(&status, "flagsmith")[0]["source"], "cache", "{status}");
    // Once the cache is older than cache_max_age (8s): the configured default.
    // (Waiting for the clock is the behaviour under test.)
    std::thread::sleep(std::time::Duration::from_millis(8200));
    let (code, status) = deploy_with(s, "shop", "acme/shop:4", &[]);
    assert_eq!(code, 6, "{status}");
    assert_eq!(
        gate(&status, "flagsmith")[0]["source"],
        "default",
        "{status}"
    );
    // Rollbacks are never gated.
    let (ok, rb) = crate::rollback_wait(s, "shop", &[]);
    assert!(ok, "{rb}");
    // The key never shows.
    let all = s
        .json(&["deployments", "--limit", "50"])
        .unwrap()
        .to_string();
    assert!(!all.contains(secret));
    assert!(!f.server.proc.log.contains(secret));
}

#[test]
fn deployments_notify_a_signed_webhook() {
    let receiver = HttpStub::start().unwrap();
    let config = format!(
        r#"
[notifications.channels.hooks]
kind = "webhook"
url = "{}/hook"
secret_env = "TEST_WEBHOOK_SECRET"
environments = ["prod"]
events = ["deployment_succeeded", "deployment_rolled_back", "host_failed"]
"#,
        receiver.url()
    );
    let secret = "whsec-test-5678";
    let f = fleet_with_config(&config, &[("TEST_WEBHOOK_SECRET", secret)]);
    let s = &f.server;
    assert_eq!(deploy_with(s, "shop", "acme/shop:1", &[]).0, 0);
    let requests = receiver.wait_for_requests(1).unwrap();
    let hook = &requests[0];
    let body: serde_json::Value = serde_json::from_str(&hook.body).unwrap();
    assert_eq!(body["kind"], "deployment_succeeded", "{body}");
    assert_eq!(body["app"], "shop");
    // X-Flotilla-Signature: t=<ts>,v1=<hex hmac-sha256(secret, "<ts>.<body>")>
    let sig = hook.header("x-flotilla-signature").unwrap();
    let (t, v1) = sig.split_once(',').unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let v1 = v1.strip_prefix("v1=").unwrap();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let expected = ring::hmac::sign(&key, format!("{t}.{}", hook.body).as_bytes());
    assert_eq!(v1, hex::encode(expected.as_ref()));
    assert!(!hook.body.contains(secret));

    // A failing host and the rollback: two more events.
    let (code, _) = deploy_with(s, "shop", "acme/shop:2-unhealthy", &[]);
    assert_eq!(code, 4);
    let requests = receiver.wait_for_requests(3).unwrap();
    let kinds: Vec<String> = requests[1..]
        .iter()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(kinds.contains(&"host_failed".to_owned()), "{kinds:?}");
    assert!(
        kinds.contains(&"deployment_rolled_back".to_owned()),
        "{kinds:?}"
    );

    let out = s.cli(&["notify", "test", "--channel", "hooks"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    receiver.wait_for_requests(4).unwrap();
    assert!(!f.server.proc.log.contains(secret));
}

#[test]
fn a_flag_switched_off_mid_rollout_blocks_the_next_batch() {
    let flagsmith = HttpStub::start().unwrap();
    let config = format!(
        r#"
[gates.flagsmith]
api_url = "{}/api/v1/"
[gates.flagsmith.environments.prod]
environment_key_env = "TEST_FLAGSMITH_KEY"
flag = "deploys_enabled"
"#,
        flagsmith.url()
    );
    let f = fleet_of_with_config(2, &config, &[("TEST_FLAGSMITH_KEY", "k")]);
    let s = &f.server;
    flagsmith.respond("/api/v1/flags", 200, FLAGS_ON);
    assert_eq!(
        deploy_with(s, "shop", "acme/shop:1", &["--batch", "2"]).0,
        0
    );
    // v2 one host at a time: web-1 hangs until released; meanwhile the flag goes off.
    let id = crate::deploy_start_with(s, "shop", "acme/shop:2-hang", &[]);
    crate::wait_for_log_line(s, &id, "(fake-dokku) waiting for");
    flagsmith.respond("/api/v1/flags", 200, FLAGS_OFF);
    f.hosts[0].release_hang().unwrap();
    let status = crate::wait_final(s, &id);
    assert_eq!(status["state"], "blocked", "{status}");
    assert_eq!(host_states(&status), ["succeeded", "skipped"]);
    let g = gate(&status, "flagsmith");
    // Allowed before the start, refused before the second batch.
    assert_eq!(g.len(), 2, "{status}");
    assert_eq!(
        (g[0]["allowed"].clone(), g[0]["batch"].clone()),
        (true.into(), 0.into())
    );
    assert_eq!(
        (g[1]["allowed"].clone(), g[1]["batch"].clone()),
        (false.into(), 1.into())
    );
    assert_eq!(f.hosts[1].deployed_image("shop").unwrap(), "acme/shop:1");
}

#[test]
fn a_per_app_flag_is_asked_for_the_app_with_env_and_team_traits() {
    let flagsmith = HttpStub::start().unwrap();
    let config = format!(
        r#"
[gates.flagsmith]
api_url = "{}/api/v1/"
[gates.flagsmith.environments.prod]
environment_key_env = "TEST_FLAGSMITH_KEY"
flag = "deploys_enabled"
per_app = true
"#,
        flagsmith.url()
    );
    let f = fleet_with_config(&config, &[("TEST_FLAGSMITH_KEY", "k")]);
    let s = &f.server;
    flagsmith.respond(
        "/api/v1/identities",
        200,
        &format!(r#"{{"flags":{FLAGS_ON},"traits":[]}}"#),
    );
    let out = s
        .cli(&[
            "token",
            "create",
            "--role",
            "deployer",
            "--name",
            "ci-payments",
            "--team",
            "payments",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8(out.stdout).unwrap();
    let out = flotilla_tests::run(s.cli_as(
        token.trim(),
        &[
            "deploy",
            "shop",
            "--image",
            "acme/shop:1",
            "--env",
            "prod",
            "--wait",
        ],
    ))
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let request = flagsmith
        .requests()
        .into_iter()
        .find(|r| r.path.starts_with("/api/v1/identities"))
        .expect("an identities request");
    assert_eq!(request.method, "POST");
    let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
    assert_eq!(body["identifier"], "shop", "{body}");
    let traits = body["traits"].to_string();
    assert!(
        traits.contains(r#""trait_key":"env","trait_value":"prod""#),
        "{traits}"
    );
    assert!(
        traits.contains(r#""trait_key":"team","trait_value":"payments""#),
        "{traits}"
    );
}
