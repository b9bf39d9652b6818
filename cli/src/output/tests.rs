use std::collections::BTreeSet;

use serde_json::json;

use super::*;

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

fn check_keys(v: &Value, expected: &[&str]) {
    assert_eq!(
        keys(v),
        expected.iter().copied().collect::<BTreeSet<_>>(),
        "{v:#}"
    );
}

fn deployment() -> pb::Deployment {
    pb::Deployment {
        id: "d1".into(),
        app: "shop".into(),
        env: "prod".into(),
        kind: "deploy".into(),
        state: "rolled_back".into(),
        image: "acme/shop:3".into(),
        created_at_ms: 1_798_000_000_000,
        finished_at_ms: 1_798_000_060_000,
        created_by: "ci".into(),
        error: "web-2 failed its health gate".into(),
        strategy: Some(pb::Strategy {
            batch: "50%".into(),
            canary: 1,
            canary_manual: true,
            pause_ms: 30_000,
            max_failures: 0,
            hosts: [("region".to_owned(), "eu".to_owned())]
                .into_iter()
                .collect(),
            auto_rollback: None,
            health: Some(pb::HealthGate {
                path: "/health".into(),
                ..Default::default()
            }),
        }),
        current_batch: 1,
        batches: 3,
        resume_at_ms: 0,
        failures: 1,
        release: 0,
        hosts: vec![pb::HostDeployment {
            host_id: "web-1".into(),
            state: "rolled_back".into(),
            image: "acme/shop:2".into(),
            image_before: "acme/shop:2".into(),
            exit_code: Some(0),
            error: String::new(),
            command_id: "c1".into(),
            batch: 0,
            started_at_ms: 1_798_000_001_000,
            finished_at_ms: 1_798_000_005_100,
            rollback_command_id: "c2".into(),
            changes: Vec::new(),
        }],
        ..Default::default()
    }
}

#[test]
fn status_json_has_every_documented_field() {
    let v = deployment_json(&deployment());
    check_keys(
        &v,
        &[
            "id",
            "app",
            "env",
            "kind",
            "state",
            "image",
            "created_at",
            "finished_at",
            "created_by",
            "error",
            "target_release",
            "release",
            "strategy",
            "current_batch",
            "batches",
            "resume_at",
            "failures",
            "gates",
            "hosts",
        ],
    );
    check_keys(
        &v["strategy"],
        &[
            "batch",
            "canary",
            "canary_manual",
            "pause_ms",
            "max_failures",
            "hosts",
            "auto_rollback",
            "health",
        ],
    );
    check_keys(
        &v["strategy"]["health"],
        &[
            "path",
            "url_template",
            "expect",
            "healthy_deadline_ms",
            "interval_ms",
            "min_healthy_ms",
            "timeout_ms",
        ],
    );
    check_keys(
        &v["hosts"][0],
        &[
            "host_id",
            "batch",
            "state",
            "image_before",
            "image",
            "exit_code",
            "started_at",
            "finished_at",
            "started_at_ms",
            "finished_at_ms",
            "duration_ms",
            "error",
            "command_id",
            "rollback_command_id",
            "changes",
        ],
    );
}

#[test]
fn status_json_values_are_the_servers_with_defaults_resolved() {
    let v = deployment_json(&deployment());
    assert_eq!(v["state"], "rolled_back");
    assert_eq!(v["error"], "web-2 failed its health gate");
    assert_eq!(v["release"], Value::Null);
    assert_eq!(v["resume_at"], Value::Null);
    assert_eq!(v["finished_at"], "2026-12-23T04:27:40Z");
    assert_eq!(
        v["strategy"],
        json!({
            "batch": "50%", "canary": 1, "canary_manual": true, "pause_ms": 30000,
            "max_failures": 0, "hosts": {"region": "eu"}, "auto_rollback": true,
            "health": {
                "path": "/health", "url_template": "", "expect": "2xx",
                "healthy_deadline_ms": 60000, "interval_ms": 1000, "min_healthy_ms": 0,
                "timeout_ms": 5000,
            },
        })
    );
    assert_eq!(
        v["hosts"][0],
        json!({
            "host_id": "web-1", "batch": 0, "state": "rolled_back",
            "image_before": "acme/shop:2", "image": "acme/shop:2", "changes": [], "exit_code": 0,
            "started_at": "2026-12-23T04:26:41Z", "finished_at": "2026-12-23T04:26:45Z",
            "started_at_ms": 1_798_000_001_000_i64, "finished_at_ms": 1_798_000_005_100_i64,
            "duration_ms": 4100, "error": "", "command_id": "c1", "rollback_command_id": "c2",
        })
    );
    // No strategy on the wire means the proto defaults.
    let bare = deployment_json(&pb::Deployment::default());
    assert_eq!(bare["strategy"]["batch"], "1");
    assert_eq!(bare["strategy"]["auto_rollback"], true);
    assert_eq!(bare["strategy"]["health"], Value::Null);
    let opted_out = pb::Deployment {
        strategy: Some(pb::Strategy {
            auto_rollback: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(
        deployment_json(&opted_out)["strategy"]["auto_rollback"],
        false
    );
}

#[test]
fn status_for_people_shows_strategy_progress_and_hosts() {
    let text = status_lines(&deployment(), 0).join("\n");
    for needle in [
        "deployment d1: deploy shop → acme/shop:3 in prod: rolled_back",
        "strategy: batches of 50%, canary 1 (promote manually), pause 30s, max failures 0, hosts region=eu, auto-rollback on",
        "health gate: GET (the app's health URL)/health expecting 2xx, healthy for 0s within 1m",
        "progress: batch 2/3, 1 failure",
        "reason: web-2 failed its health gate",
        "HOST   BATCH  STATE        EXIT  BEFORE       AFTER        STARTED   DURATION  ERROR",
        "web-1  1      rolled_back  0     acme/shop:2  acme/shop:2  04:26:41  4.1s",
        "web-1  deploy c1  rollback c2",
    ] {
        assert!(text.contains(needle), "no {needle:?} in\n{text}");
    }
}

#[test]
fn ping_json_shape() {
    let answer = pb::PingResponse {
        hosts: vec![
            pb::HostPing {
                host_id: "web-1".into(),
                ok: true,
                rtt_us: 1_250,
                error: String::new(),
            },
            pb::HostPing {
                host_id: "web-2".into(),
                ok: false,
                rtt_us: 0,
                error: "not connected".into(),
            },
        ],
        total_us: 5_000_500,
    };
    assert_eq!(
        ping_json(&answer),
        json!({
            "hosts": [
                {"host_id": "web-1", "ok": true, "rtt_ms": 1.25, "error": ""},
                {"host_id": "web-2", "ok": false, "rtt_ms": 0.0, "error": "not connected"},
            ],
            "total_ms": 5000.5,
            "ok": 1,
            "failed": 1,
        })
    );
    assert_eq!(
        ping_lines(&answer),
        [
            "HOST   OK   RTT ms  ERROR",
            "web-1  yes  1.25",
            "web-2  no   -       not connected",
            "1/2 hosts answered in 5000.5 ms",
        ]
    );
}

#[test]
fn helpers() {
    assert_eq!(duration_text(4_100), "4.1s");
    assert_eq!(duration_text(125_000), "2m05s");
    assert_eq!(duration_text(3_720_000), "1h02m");
    assert_eq!(clock(1_798_000_000_000), "04:26:40");
    assert_eq!(clean("\x1b[1;32m-----> ok\x1b[0m\r\n"), "-----> ok  ");
    assert_eq!(batch_text(0, 4, true), "batch 1/4 (canary)");
    assert_eq!(batch_text(2, 4, true), "batch 3/4");
    assert_eq!(batch_text(0, 0, false), "");
    assert_eq!(
        table(&[
            vec!["A".into(), "BB".into(), "C".into()],
            vec!["aaa".into(), "b".into(), String::new()],
        ]),
        ["A    BB  C", "aaa  b"]
    );
}
