//! Host metrics reach the coordinator: `flotilla hosts` (table and JSON) and
//! `flotilla hosts top`.

use std::time::{Duration, Instant};

use flotilla_tests::{Host, Server, WAIT};

use crate::deploy_wait;

/// Polls `flotilla hosts --output json` (bounded by `WAIT`) until `done`
/// accepts the host's entry; returns it.
fn wait_for_host(
    server: &Server,
    host_id: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let list = server.json(&["hosts"]).unwrap();
        let entry = list
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host_id"] == host_id)
            .cloned()
            .unwrap();
        if done(&entry) {
            return entry;
        }
        assert!(Instant::now() < deadline, "timed out; last entry: {entry}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn hosts_show_each_agents_newest_sample_and_its_releases() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    let listen = format!("127.0.0.1:{}", flotilla_tests::free_port().unwrap());
    let server = Server::start(&data_dir, &listen, &[]).unwrap();
    let host = Host::join(root.path(), &server, "web-1", "prod").unwrap();
    let _agent = host.start_with(&["--metrics-interval", "1s"]).unwrap();

    let entry = wait_for_host(&server, "web-1", |h| !h["metrics"].is_null());
    let m = &entry["metrics"];
    let cpu = m["cpu_usage_ratio"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&cpu), "{m}");
    assert!(m["memory_total_bytes"].as_u64().unwrap() > 0, "{m}");
    assert!(m["memory_used_bytes"].as_u64().unwrap() <= m["memory_total_bytes"].as_u64().unwrap());
    let disks = m["disks"].as_array().unwrap();
    assert!(!disks.is_empty(), "no filesystem in {m}");
    for d in disks {
        assert!(d["total_bytes"].as_u64().unwrap() > 0, "{d}");
        assert!(d["used_bytes"].as_u64().unwrap() <= d["total_bytes"].as_u64().unwrap());
    }
    assert!(m["uptime_seconds"].as_u64().unwrap() > 0);
    assert!(m["processes"].as_u64().unwrap() > 0);
    assert_eq!(m["apps"], serde_json::json!([]));

    // A deploy shows up as the app's release in a later sample.
    let (ok, status) = deploy_wait(&server, "shop", "registry.example.com/shop:1.0.0");
    assert!(ok, "{status}");
    let entry = wait_for_host(&server, "web-1", |h| {
        h["metrics"]["apps"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
    });
    assert_eq!(
        entry["metrics"]["apps"],
        serde_json::json!([{ "app": "shop", "image": "registry.example.com/shop:1.0.0" }])
    );

    // The table has the figures; `top` refreshes it the asked number of times.
    let out = server.cli(&["hosts"]).unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("HOST"), "{text}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[..3], ["web-1", "prod", "connected"], "{text}");
    assert!(row[3].ends_with('%') && row[4].ends_with('%'), "{text}");
    let out = server
        .cli(&["hosts", "top", "--interval", "200ms", "--count", "2"])
        .unwrap();
    assert!(out.status.success(), "{}", flotilla_tests::text(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.matches("flotilla hosts top").count(), 2, "{text}");
    assert_eq!(text.matches("\nweb-1 ").count(), 2, "{text}");
}

/// An app destroyed on the host outside Flotilla leaves the host's sample
/// (and so its release series) at the next check.
#[test]
fn an_app_destroyed_outside_flotilla_is_forgotten() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    let listen = format!("127.0.0.1:{}", flotilla_tests::free_port().unwrap());
    let server = Server::start(&data_dir, &listen, &[]).unwrap();
    let host = Host::join(root.path(), &server, "web-1", "prod").unwrap();
    let _agent = host
        .start_with(&["--metrics-interval", "1s", "--cert-check-interval", "1s"])
        .unwrap();
    let (ok, status) = deploy_wait(&server, "shop", "registry.example.com/shop:1.0.0");
    assert!(ok, "{status}");
    wait_for_host(&server, "web-1", |h| {
        h["metrics"]["apps"]
            .as_array()
            .is_some_and(|a| a.len() == 1)
    });
    let out = host.dokku(&["apps:destroy", "shop", "--force"]).unwrap();
    assert!(out.status.success(), "{}", flotilla_tests::text(&out));
    let entry = wait_for_host(&server, "web-1", |h| {
        h["metrics"]["apps"]
            .as_array()
            .is_some_and(|a| a.is_empty())
    });
    assert_eq!(entry["metrics"]["apps"], serde_json::json!([]));
}
