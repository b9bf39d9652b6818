//! `deploy/grafana/flotilla-fleet.json` is a valid dashboard whose queries use
//! only metric names the daemons really emit: the coordinator's and the
//! agent's `/metrics` (scraped from running processes) and the host series the
//! agent writes to Prometheus (read back from a real Prometheus).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use flotilla_tests::prometheus::{Prometheus, http_call};
use flotilla_tests::{Host, Server, WAIT, free_port};
use serde_json::Value;

use crate::ops::http_get;

/// Every `flotilla_*` word in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("flotilla_") {
        let word: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + word.len()..];
        out.insert(word);
    }
    out
}

/// The series names a `/metrics` page (OpenMetrics text) exposes, including
/// the suffixes its types add (`_total`, `_bucket`, `_sum`, `_count`).
fn exposed(page: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                out.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') {
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Every query text of the dashboard: panel targets and template variables.
fn queries(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            out.push(q.to_owned());
        }
        if let Some(d) = var["definition"].as_str() {
            out.push(d.to_owned());
        }
    }
    out
}

#[test]
fn the_grafana_dashboard_is_valid_and_uses_only_emitted_metric_names() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/grafana/flotilla-fleet.json"
    );
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();

    // The shape Grafana imports.
    assert_eq!(dashboard["uid"], "flotilla-fleet");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["datasource", "env", "host"]);
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().unwrap()), "duplicate id in {p}");
        for key in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][key].is_u64(), "gridPos.{key} in {p}");
        }
        if p["type"] != "row" {
            let targets = p["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{p}");
            for t in targets {
                assert!(t["refId"].is_string() && t["expr"].is_string(), "{t}");
                assert_eq!(t["datasource"]["uid"], "${datasource}");
            }
        }
    }
    // Deployments show as annotations (the coordinator tags them `flotilla`).
    let annotations = dashboard["annotations"]["list"].as_array().unwrap();
    assert!(
        annotations
            .iter()
            .any(|a| a["target"]["tags"] == serde_json::json!(["flotilla"]))
    );
    let used: BTreeSet<String> = queries(&dashboard)
        .iter()
        .flat_map(|q| names_in(q))
        .collect();

    // What the daemons emit: run them, let the agent push to Prometheus.
    let prom = Prometheus::start().unwrap();
    let root = tempfile::tempdir().unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let server_http = format!("127.0.0.1:{}", free_port().unwrap());
    let server = Server::start(&data_dir, &listen, &["--http-listen", &server_http]).unwrap();
    let host = Host::join(root.path(), &server, "web-1", "prod").unwrap();
    let agent_http = format!("127.0.0.1:{}", free_port().unwrap());
    let _agent = host
        .start_with(&[
            "--http-listen",
            &agent_http,
            "--metrics-interval",
            "1s",
            "--remote-write-url",
            &prom.write_url(),
        ])
        .unwrap();
    // One deployment, so the duration histogram has a series and the app's
    // release is in the host samples.
    let (ok, status) = crate::deploy_wait(&server, "shop", "registry.example.com/shop:1.0.0");
    assert!(ok, "{status}");
    let mut emitted = exposed(&http_get(&server_http, "/metrics").2);
    emitted.extend(exposed(&http_get(&agent_http, "/metrics").2));
    // Every host series name, once the first sample is in.
    let deadline = Instant::now() + WAIT;
    let host_names = loop {
        let (status, body) =
            http_call("GET", prom.port, "/api/v1/label/__name__/values", b"").unwrap();
        assert_eq!(status, 200, "{body}");
        let names: BTreeSet<String> = serde_json::from_str::<Value>(&body).unwrap()["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .filter(|n| n.starts_with("flotilla_host_"))
            .collect();
        if names.contains("flotilla_host_app_release_info") {
            break names;
        }
        assert!(Instant::now() < deadline, "no host series in Prometheus");
        std::thread::sleep(Duration::from_millis(200));
    };
    emitted.extend(host_names);

    let unknown: Vec<&String> = used.difference(&emitted).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries names nothing emits: {unknown:?}\nemitted: {emitted:#?}"
    );
    // And it covers each kind: host, coordinator, agent.
    for must in [
        "flotilla_host_cpu_usage_ratio",
        "flotilla_host_memory_used_bytes",
        "flotilla_host_disk_used_bytes",
        "flotilla_host_load1",
        "flotilla_deployments_total",
        "flotilla_agent_connected",
        "flotilla_agent_telemetry_queue_entries",
    ] {
        assert!(used.contains(must), "the dashboard does not show {must}");
    }
}
