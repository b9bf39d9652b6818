//! Grafana annotations through a real coordinator and agent, against
//! `HttpStub` standing in for Grafana's HTTP API.

use flotilla_tests::{Host, HttpStub, Server, StubRequest};

const TOKEN: &str = "glsa_e2e-grafana-service-account-token";

fn json(r: &StubRequest) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body))
}

fn tags(r: &StubRequest) -> Vec<String> {
    json(r)["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn grafana_annotates_deployments_and_rollbacks() {
    let grafana = HttpStub::start().unwrap();
    grafana.respond(
        "/api/annotations",
        200,
        r#"{"id":17,"message":"Annotation added"}"#,
    );
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[grafana]\nurl = \"{}/\"\ntoken_env = \"E2E_GRAFANA_TOKEN\"\ndashboard_uid = \"fleet\"\ntags = [\"team:platform\"]\n",
            grafana.url()
        ),
    )
    .unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    let config_arg = config.to_str().unwrap();
    let server = Server::start_with_env(
        &data_dir,
        "127.0.0.1:0",
        &["--config", config_arg],
        &[("E2E_GRAFANA_TOKEN", TOKEN)],
    )
    .unwrap();
    let host = Host::join(root.path(), &server, "web-1", "prod").unwrap();
    let _agent = host.start().unwrap();

    // A deploy: a point at its start, PATCHed into a region with the outcome.
    let (ok, d1) = crate::deploy_wait(&server, "shop", "registry.example.com/shop:1.0.0");
    assert!(ok, "{d1}");
    let requests = grafana.wait_for_requests(2).unwrap();
    let (start, end) = (&requests[0], &requests[1]);
    assert_eq!(
        (start.method.as_str(), start.path.as_str()),
        ("POST", "/api/annotations")
    );
    assert_eq!(
        start.header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let body = json(start);
    assert_eq!(body["dashboardUID"], "fleet");
    assert!(
        body["time"].as_i64().unwrap() > 0 && body.get("timeEnd").is_none(),
        "{body}"
    );
    assert_eq!(
        tags(start),
        [
            "flotilla",
            "app:shop",
            "env:prod",
            "kind:deploy",
            "team:platform"
        ]
    );
    let id = d1["id"].as_str().unwrap();
    assert!(body["text"].as_str().unwrap().contains(id), "{body}");

    assert_eq!(
        (end.method.as_str(), end.path.as_str()),
        ("PATCH", "/api/annotations/17")
    );
    let body = json(end);
    assert!(
        body["timeEnd"].as_i64().unwrap() >= body["time"].as_i64().unwrap(),
        "{body}"
    );
    assert_eq!(
        tags(end),
        [
            "flotilla",
            "app:shop",
            "env:prod",
            "kind:deploy",
            "outcome:succeeded",
            "team:platform"
        ]
    );

    // A second release, then a rollback to the first: its own annotation.
    grafana.respond(
        "/api/annotations",
        200,
        r#"{"id":18,"message":"Annotation added"}"#,
    );
    let (ok, d2) = crate::deploy_wait(&server, "shop", "registry.example.com/shop:2.0.0");
    assert!(ok, "{d2}");
    let requests = grafana.wait_for_requests(4).unwrap();
    assert_eq!(requests[3].path, "/api/annotations/18");
    grafana.respond(
        "/api/annotations",
        200,
        r#"{"id":19,"message":"Annotation added"}"#,
    );
    let (ok, rb) = crate::rollback_wait(&server, "shop", &[]);
    assert!(ok, "{rb}");
    let requests = grafana.wait_for_requests(6).unwrap();
    assert_eq!(requests[4].method, "POST");
    assert!(tags(&requests[4]).contains(&"kind:rollback".to_owned()));
    assert_eq!(
        (requests[5].method.as_str(), requests[5].path.as_str()),
        ("PATCH", "/api/annotations/19")
    );
    let end_tags = tags(&requests[5]);
    assert!(
        end_tags.contains(&"kind:rollback".to_owned())
            && end_tags.contains(&"outcome:succeeded".to_owned()),
        "{end_tags:?}"
    );
    // The token went only into the Authorization header.
    assert!(requests.iter().all(|r| !r.body.contains(TOKEN)));
}
