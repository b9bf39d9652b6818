//! `flotilla doctor`: a healthy fleet exits 0; an offline agent, a
//! certificate about to expire (and one the proxy cannot serve) and an
//! unreachable Grafana are each reported, and the exit is non-zero.

use std::time::{Duration, Instant};

use flotilla_tests::{Host, Server, WAIT, free_port, text};
use serde_json::Value;

use crate::deploy_wait;

/// `flotilla doctor --output json` → (exit code, answer).
fn doctor(server: &Server) -> (i32, Value) {
    let out = server.cli(&["doctor", "--output", "json"]).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor printed no JSON ({e}): {}", text(&out)));
    (out.status.code().unwrap_or(-1), v)
}

fn findings(v: &Value, check: &str) -> Vec<String> {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == check)
        .map(|f| {
            format!(
                "{}: {}",
                f["subject"].as_str().unwrap(),
                f["message"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn doctor_is_quiet_on_a_healthy_fleet_and_names_every_problem_otherwise() {
    // Healthy: one connected agent, nothing configured outside.
    {
        let root = tempfile::tempdir().unwrap();
        let data_dir = Server::init(root.path()).unwrap();
        let listen = format!("127.0.0.1:{}", free_port().unwrap());
        let server = Server::start(&data_dir, &listen, &[]).unwrap();
        let host = Host::join(root.path(), &server, "web-1", "prod").unwrap();
        let _agent = host.start().unwrap();
        let (code, v) = doctor(&server);
        assert_eq!(code, 0, "{v}");
        assert_eq!(v["ok"], true);
        assert_eq!(v["findings"], serde_json::json!([]));
        let out = server.cli(&["doctor"]).unwrap();
        assert!(text(&out).contains("no problems found"), "{}", text(&out));
    }

    // Problems: Grafana configured on a port nobody listens on, web-2 never
    // started, web-1's app certificate expiring in 3 days, served by no proxy.
    let root = tempfile::tempdir().unwrap();
    let dead = free_port().unwrap();
    let config = root.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[grafana]\nurl = \"http://127.0.0.1:{dead}\"\ntoken_env = \"E2E_GRAFANA_TOKEN\"\n"
        ),
    )
    .unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let server = Server::start_with_env(
        &data_dir,
        &listen,
        &["--config", config.to_str().unwrap()],
        &[("E2E_GRAFANA_TOKEN", "glsa_doctor_test_token")],
    )
    .unwrap();
    let web1 = Host::join(root.path(), &server, "web-1", "prod").unwrap();
    // (In another environment, so the deploy to prod does not wait for it.)
    let _web2 = Host::join(root.path(), &server, "web-2", "staging").unwrap();
    let no_proxy = format!("127.0.0.1:{}", free_port().unwrap());
    let _agent = web1
        .start_with(&[
            "--metrics-interval",
            "1s",
            "--cert-check-interval",
            "1s",
            "--tls-probe-addr",
            &no_proxy,
        ])
        .unwrap();
    let (ok, status) = deploy_wait(&server, "shop", "registry.example.com/shop:1.0.0");
    assert!(ok, "{status}");
    let in_3_days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3 * 86_400
        + 3600;
    web1.seed_cert("shop", in_3_days, true).unwrap();
    let out = web1
        .dokku(&["domains:add", "shop", "shop.example.com"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // Certificate facts arrive with a later sample (bounded polling).
    let deadline = Instant::now() + WAIT;
    let v = loop {
        let (code, v) = doctor(&server);
        if findings(&v, "certificates").len() >= 2 {
            assert_eq!(code, 3, "{v}");
            break v;
        }
        assert!(Instant::now() < deadline, "no certificate findings: {v}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(v["ok"], false);
    assert_eq!(
        findings(&v, "agents"),
        ["web-2: the agent is offline (never connected)"]
    );
    let certs = findings(&v, "certificates");
    assert!(
        certs
            .iter()
            .any(|f| f.starts_with("shop on web-1: the certificate expires in 3 days")),
        "{certs:?}"
    );
    assert!(
        certs.iter().any(|f| f.starts_with(
            "shop on web-1: shop.example.com: the TLS handshake through the host's proxy failed"
        )),
        "{certs:?}"
    );
    let endpoints = findings(&v, "endpoints");
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    assert!(
        endpoints[0].starts_with(&format!(
            "grafana: http://127.0.0.1:{dead}/api/health is unreachable"
        )),
        "{endpoints:?}"
    );
    // The token never shows.
    assert!(!v.to_string().contains("glsa_doctor_test_token"));
    // Text output: one line per problem, exit 3.
    let out = server.cli(&["doctor"]).unwrap();
    assert_eq!(out.status.code(), Some(3));
    let t = text(&out);
    assert!(
        t.contains("problems:") && t.contains("[agents] web-2"),
        "{t}"
    );
}

#[test]
fn doctor_reports_a_service_the_applied_spec_links_but_a_host_lost() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let server = Server::start(&data_dir, &listen, &[]).unwrap();
    let host = Host::join(root.path(), &server, "web-1", "prod").unwrap();
    let _agent = host
        .start_with(&["--metrics-interval", "1s", "--cert-check-interval", "1s"])
        .unwrap();
    let spec = root.path().join("web.toml");
    std::fs::write(
        &spec,
        "app = \"web\"\n[env.prod]\n[[env.prod.services]]\nkind = \"postgres\"\nname = \"web-db\"\n",
    )
    .unwrap();
    let out = server
        .cli(&[
            "app",
            "apply",
            spec.to_str().unwrap(),
            "--env",
            "prod",
            "--wait",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // Linked as the spec says: no service finding (once the check has run).
    let deadline = Instant::now() + WAIT;
    loop {
        let hosts = server.json(&["hosts"]).unwrap();
        let checked = hosts[0]["metrics"]["apps"]
            .as_array()
            .is_some_and(|apps| apps.iter().any(|a| a["app"] == "web"));
        if checked {
            break;
        }
        assert!(Instant::now() < deadline, "no facts for web: {hosts}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, v) = doctor(&server);
    assert_eq!(findings(&v, "services"), Vec::<String>::new(), "{v}");
    assert_eq!(code, 0, "{v}");

    // Unlinked by hand: reported for that host, with the fix.
    let out = host.dokku(&["postgres:unlink", "web-db", "web"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + WAIT;
    let v = loop {
        let (code, v) = doctor(&server);
        if !findings(&v, "services").is_empty() {
            assert_eq!(code, 3);
            break v;
        }
        assert!(Instant::now() < deadline, "no service finding: {v}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(
        findings(&v, "services"),
        [
            "web on web-1: the postgres service web-db is not linked, but the applied spec links it (`flotilla app apply` repairs it)"
        ]
    );
}
