//! The real agent's telemetry: host metrics into a real Prometheus (labels,
//! values, and samples taken while Prometheus was down), deploy output into a
//! Loki receiver that decodes independently (Python).

use std::time::{Duration, Instant};

use flotilla_tests::loki::LokiReceiver;
use flotilla_tests::prometheus::Prometheus;
use flotilla_tests::{Host, Server, WAIT};
use serde_json::Value;

use crate::deploy_wait;

/// A coordinator and one joined (not started) agent `web-1` in `prod`.
fn one_host() -> (tempfile::TempDir, Server, Host) {
    let root = tempfile::tempdir().unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    let listen = format!("127.0.0.1:{}", flotilla_tests::free_port().unwrap());
    let server = Server::start(&data_dir, &listen, &[]).unwrap();
    let host = Host::join(root.path(), &server, "web-1", "prod").unwrap();
    (root, server, host)
}

/// Polls `f` (bounded by `WAIT`) until it returns `Some`.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `web-1`'s newest sample as the coordinator has it.
fn coordinator_sample(server: &Server) -> Option<Value> {
    let hosts = server.json(&["hosts"]).ok()?;
    let m = hosts.as_array()?.first()?["metrics"].clone();
    (!m.is_null()).then_some(m)
}

fn labels(series: &Value) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = series["metric"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    out.sort();
    out
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = items
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    out.sort();
    out
}

#[test]
fn host_metrics_reach_a_real_prometheus_and_outage_samples_arrive_later() {
    let mut prom = Prometheus::start().unwrap();
    let (_root, server, host) = one_host();
    let _agent = host
        .start_with(&[
            "--metrics-interval",
            "1s",
            "--remote-write-url",
            &prom.write_url(),
        ])
        .unwrap();

    // The series arrive with exactly their labels and the coordinator's values.
    let memory = eventually("memory total in Prometheus", || {
        prom.query(r#"flotilla_host_memory_total_bytes{host="web-1"}"#)
            .ok()
            .filter(|r| !r.is_empty())
    });
    assert_eq!(memory.len(), 1, "{memory:?}");
    assert_eq!(
        labels(&memory[0]),
        pairs(&[
            ("__name__", "flotilla_host_memory_total_bytes"),
            ("env", "prod"),
            ("host", "web-1")
        ])
    );
    let sample = eventually("a sample on the coordinator", || {
        coordinator_sample(&server)
    });
    let value: f64 = memory[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert_eq!(value, sample["memory_total_bytes"].as_f64().unwrap());
    // A filesystem the agent reports (`/` on this machine; any, in a container).
    let root_disk = sample["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["mount_point"] == "/")
        .or_else(|| sample["disks"].as_array().unwrap().first())
        .unwrap_or_else(|| panic!("no filesystem in {sample}"));
    let mount = root_disk["mount_point"].as_str().unwrap();
    let disk = prom
        .query(&format!(
            r#"flotilla_host_disk_total_bytes{{host="web-1", mountpoint="{mount}"}}"#
        ))
        .unwrap();
    assert_eq!(disk.len(), 1, "{disk:?}");
    assert_eq!(
        labels(&disk[0]),
        pairs(&[
            ("__name__", "flotilla_host_disk_total_bytes"),
            ("device", root_disk["device"].as_str().unwrap()),
            ("env", "prod"),
            ("fstype", root_disk["filesystem"].as_str().unwrap()),
            ("host", "web-1"),
            ("mountpoint", mount),
        ])
    );
    let cpu = prom
        .query(r#"flotilla_host_cpu_usage_ratio{host="web-1", env="prod"}"#)
        .unwrap();
    let cpu: f64 = cpu[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!((0.0..=1.0).contains(&cpu), "{cpu}");

    // Outage: samples taken while Prometheus is down wait in the agent's
    // buffer and arrive with their own timestamps once it is back.
    prom.stop().unwrap();
    let down_at_ms = flotilla_shared::time::now_ms();
    // Samples taken during the outage (as the coordinator sees them).
    let last_down_sample_ms = eventually("samples during the outage", || {
        let at = coordinator_sample(&server)?["at"].as_str()?.to_owned();
        let at_ms = humantime::parse_rfc3339(&at)
            .ok()?
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_millis() as i64;
        // (`at` has whole seconds: +4 s leaves at least three samples inside.)
        (at_ms > down_at_ms + 4_000).then_some(at_ms)
    });
    prom.start_again().unwrap();
    let in_outage = eventually("outage samples in Prometheus", || {
        let result = prom
            .query(r#"flotilla_host_uptime_seconds{host="web-1"}[2m]"#)
            .ok()?;
        let times: Vec<i64> = result.first()?["values"]
            .as_array()?
            .iter()
            .map(|v| (v[0].as_f64().unwrap_or(0.0) * 1000.0).round() as i64)
            .filter(|t| *t > down_at_ms && *t <= last_down_sample_ms)
            .collect();
        (times.len() >= 3).then_some(times)
    });
    assert!(in_outage.windows(2).all(|w| w[0] < w[1]), "{in_outage:?}");
}

#[test]
fn deploy_output_reaches_loki_with_low_cardinality_streams_and_ids_as_metadata() {
    let loki = LokiReceiver::start().unwrap();
    let (_root, server, host) = one_host();
    let _agent = host.start_with(&["--loki-url", &loki.push_url()]).unwrap();
    let (ok, status) = deploy_wait(&server, "shop", "registry.example.com/shop:1.0.0");
    assert!(ok, "{status}");
    let id = status["id"].as_str().unwrap().to_owned();

    // What the coordinator stored for the deployment, in order.
    let out = server.cli(&["logs", &id, "--output", "json"]).unwrap();
    let stored: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(stored.len() >= 2, "{stored:?}");

    let want_selector = r#"{app="shop", env="prod", host="web-1", source="deploy"}"#;
    let entries = |requests: &[Value]| -> Vec<Value> {
        requests
            .iter()
            .filter(|r| r["status"] == 204)
            .flat_map(|r| r["streams"].as_array().cloned().unwrap_or_default())
            .filter(|s| s["labels"] == want_selector)
            .flat_map(|s| s["entries"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let requests = loki
        .wait_for(|requests| entries(requests).len() >= stored.len())
        .unwrap();
    let got = entries(&requests);
    assert_eq!(got.len(), stored.len(), "{got:#?}");
    let mut last_ts = 0i64;
    for (entry, line) in got.iter().zip(&stored) {
        assert_eq!(entry["line"], line["line"]);
        let meta: std::collections::BTreeMap<String, String> = entry["metadata"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
            .collect();
        assert_eq!(meta["deployment"], id);
        assert_eq!(meta["seq"], line["seq"].to_string());
        assert_eq!(meta["action"], "deploy");
        assert!(!meta["command"].is_empty());
        let ts = entry["ts_ns"].as_i64().unwrap();
        assert!(ts >= last_ts, "timestamps go back: {got:#?}");
        last_ts = ts;
    }
    // No stream label carries an id.
    for r in &requests {
        for s in r["streams"].as_array().into_iter().flatten() {
            let labels = s["labels"].as_str().unwrap();
            assert!(!labels.contains(&id), "{labels}");
        }
    }
}

/// The agent's own secrets (telemetry passwords, Sentry DSN, any variable a
/// `*_env` key names) never reach `dokku` or its plugins.
#[test]
fn dokku_never_inherits_the_agents_secrets() {
    let (root, server, host) = one_host();
    let config = root.path().join("agent.toml");
    std::fs::write(
        &config,
        // Port 9 on loopback: nothing listens; the pipeline just retries.
        "[loki]\nurl = \"http://127.0.0.1:9/loki/api/v1/push\"\nusername = \"1\"\npassword_env = \"MY_LOKI_TOKEN\"\n",
    )
    .unwrap();
    let _agent = host
        .start_with_env(
            &["--config", config.to_str().unwrap()],
            &[
                ("MY_LOKI_TOKEN", "loki-token-value"),
                ("FLOTILLA_REMOTE_WRITE_PASSWORD", "rw-password-value"),
                ("SENTRY_ENVIRONMENT", "e2e"),
                ("UNRELATED_SETTING", "kept"),
            ],
        )
        .unwrap();
    let (ok, status) = deploy_wait(&server, "shop", "registry.example.com/shop:1.0.0");
    assert!(ok, "{status}");
    let environments = host.dokku_environments().unwrap();
    assert!(!environments.is_empty());
    for names in &environments {
        assert!(names.iter().any(|n| n == "DOKKU_ROOT"), "{names:?}");
        assert!(names.iter().any(|n| n == "UNRELATED_SETTING"), "{names:?}");
        for name in names {
            assert!(
                !name.starts_with("FLOTILLA_")
                    && !name.starts_with("SENTRY_")
                    && name != "MY_LOKI_TOKEN",
                "dokku inherited {name}"
            );
        }
    }
}
