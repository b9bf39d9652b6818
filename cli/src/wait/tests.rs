use flotilla_proto::v1 as pb;

use super::plain::event_line;
use super::tracker::Tracker;
use super::tty::frame;

/// 2026-12-23T12:00:00Z
const T0: i64 = 1_798_027_200_000;

fn host(id: &str, batch: u32) -> pb::HostDeployment {
    pb::HostDeployment {
        host_id: id.into(),
        state: "pending".into(),
        batch,
        image_before: "acme/shop:1".into(),
        ..Default::default()
    }
}

fn deployment() -> pb::Deployment {
    pb::Deployment {
        id: "d1".into(),
        app: "shop".into(),
        env: "prod".into(),
        kind: "deploy".into(),
        state: "running".into(),
        image: "acme/shop:2".into(),
        strategy: Some(pb::Strategy {
            batch: "2".into(),
            canary: 1,
            pause_ms: 30_000,
            ..Default::default()
        }),
        batches: 2,
        hosts: vec![host("web-1", 0), host("web-2", 1), host("web-3", 1)],
        ..Default::default()
    }
}

fn ev(
    ms: i64,
    kind: &str,
    host: &str,
    batch: u32,
    state: &str,
    message: &str,
) -> pb::DeploymentEvent {
    pb::DeploymentEvent {
        seq: 0,
        at_ms: T0 + ms,
        deployment_id: "d1".into(),
        kind: kind.into(),
        host_id: host.into(),
        batch,
        state: state.into(),
        message: message.into(),
    }
}

/// Applies each event and renders it, as `--wait` does without a terminal.
fn check(d: pb::Deployment, events: &[pb::DeploymentEvent], expected: &[&str]) -> Tracker {
    let mut t = Tracker::new(d);
    let lines: Vec<String> = events
        .iter()
        .map(|e| {
            t.apply_event(e);
            event_line(&t, e)
        })
        .collect();
    assert_eq!(lines, expected);
    t
}

#[test]
fn plain_lines_for_a_canary_rollout_that_fails_and_rolls_back() {
    // Kinds, states and messages as the coordinator sends them.
    let t = check(
        deployment(),
        &[
            ev(
                0,
                "created",
                "",
                0,
                "running",
                "deploy acme/shop:2 to 3 host(s) of prod in 2 batch(es)",
            ),
            ev(
                1_000,
                "batch_started",
                "",
                0,
                "running",
                "batch 1/2 (canary): web-1",
            ),
            ev(
                1_000,
                "host_dispatched",
                "web-1",
                0,
                "running",
                "deploy acme/shop:2",
            ),
            ev(
                1_200,
                "host_accepted",
                "web-1",
                0,
                "running",
                "the agent accepted the command",
            ),
            ev(
                5_100,
                "host_finished",
                "web-1",
                0,
                "succeeded",
                "now at acme/shop:2",
            ),
            ev(
                5_100,
                "paused",
                "",
                0,
                "paused",
                "next batch at 2026-12-23T12:00:35Z",
            ),
            ev(
                35_100,
                "batch_started",
                "",
                1,
                "running",
                "batch 2/2: web-2, web-3",
            ),
            ev(
                35_200,
                "host_dispatched",
                "web-2",
                1,
                "running",
                "deploy acme/shop:2",
            ),
            ev(
                35_200,
                "host_dispatched",
                "web-3",
                1,
                "running",
                "deploy acme/shop:2",
            ),
            ev(
                39_300,
                "host_finished",
                "web-2",
                1,
                "failed",
                "health gate: 503 after 60s",
            ),
            ev(
                40_000,
                "host_finished",
                "web-3",
                1,
                "succeeded",
                "now at acme/shop:2",
            ),
            ev(
                40_000,
                "rollback_started",
                "",
                1,
                "rolling_back",
                "rolling back 2 host(s): web-2 failed",
            ),
            ev(
                40_100,
                "host_rollback_dispatched",
                "web-1",
                0,
                "rolling_back",
                "rollback acme/shop:1",
            ),
            ev(
                42_100,
                "host_rollback_finished",
                "web-1",
                0,
                "rolled_back",
                "",
            ),
            ev(
                42_500,
                "finished",
                "",
                1,
                "rolled_back",
                "rolled_back: web-2 failed",
            ),
        ],
        &[
            "[12:00:00] deploy of shop → acme/shop:2 in prod created",
            "[12:00:01] batch 1/2 (canary) started: web-1",
            "[12:00:01] web-1 deploying",
            "[12:00:01] web-1 running",
            "[12:00:05] web-1 succeeded (4.1s): now at acme/shop:2",
            "[12:00:05] paused; batch 2/2 starts at 12:00:35",
            "[12:00:35] batch 2/2 started: web-2, web-3",
            "[12:00:35] web-2 deploying",
            "[12:00:35] web-3 deploying",
            "[12:00:39] web-2 failed (4.1s): health gate: 503 after 60s",
            "[12:00:40] web-3 succeeded (4.8s): now at acme/shop:2",
            "[12:00:40] rolling back 2 host(s): web-2 failed",
            "[12:00:40] web-1 rolling back to acme/shop:1",
            "[12:00:42] web-1 rolled_back (2.0s)",
            "[12:00:42] deploy rolled_back: web-2 failed",
        ],
    );
    // The tracker followed along.
    assert_eq!(t.d.state, "rolled_back");
    assert_eq!(t.d.current_batch, 1);
    assert_eq!(t.failures(), 1);
    assert_eq!(t.host("web-2").unwrap().error, "health gate: 503 after 60s");
    assert_eq!(t.host("web-1").unwrap().state, "rolled_back");
}

#[test]
fn plain_lines_for_queue_promotion_cancel_and_unknown_events() {
    let queued = pb::Deployment {
        state: "queued".into(),
        error: "queued behind deployment d0".into(),
        ..deployment()
    };
    check(
        queued,
        &[
            ev(
                0,
                "created",
                "",
                0,
                "queued",
                "deploy acme/shop:2 to 3 host(s) of prod in 2 batch(es)",
            ),
            ev(
                1_000,
                "started",
                "",
                0,
                "running",
                "its turn came: the deployment before it ended",
            ),
            ev(
                2_000,
                "awaiting_promotion",
                "",
                0,
                "awaiting_promotion",
                "canary batch done; continue with `flotilla promote d1`",
            ),
            ev(3_000, "promoted", "", 0, "running", "promoted by ops"),
            ev(
                4_000,
                "cancel_requested",
                "",
                0,
                "running",
                "cancel requested by ops",
            ),
            ev(4_500, "host_finished", "web-3", 1, "skipped", "skipped"),
            ev(5_000, "host_drained", "web-9", 0, "draining", "new in v2"),
            ev(
                6_000,
                "finished",
                "",
                0,
                "cancelled",
                "cancelled: cancelled by ops",
            ),
            ev(7_000, "finished", "", 0, "succeeded", ""),
        ],
        &[
            "[12:00:00] deploy of shop → acme/shop:2 in prod created; queued behind deployment d0",
            "[12:00:01] started on 3 hosts in 2 batches: its turn came: the deployment before it ended",
            "[12:00:02] canary batch done; continue with `flotilla promote d1`",
            "[12:00:03] promoted by ops",
            "[12:00:04] cancel requested by ops",
            "[12:00:04] web-3 skipped",
            "[12:00:05] host_drained web-9 draining new in v2",
            "[12:00:06] deploy cancelled: cancelled by ops",
            "[12:00:07] deploy succeeded",
        ],
    );
}

#[test]
fn messages_from_the_network_stay_on_one_line() {
    check(
        deployment(),
        &[ev(
            0,
            "host_finished",
            "web-1",
            0,
            "failed",
            "line one\nline two\x1b[31m!",
        )],
        &["[12:00:00] web-1 failed: line one line two!"],
    );
}

#[test]
fn live_view_shows_header_and_one_line_per_host() {
    let mut t = Tracker::new(deployment());
    for e in [
        ev(0, "batch_started", "", 1, "running", ""),
        ev(0, "host_dispatched", "web-1", 0, "running", ""),
        ev(4_100, "host_finished", "web-1", 0, "succeeded", ""),
        ev(5_000, "host_dispatched", "web-2", 1, "running", ""),
    ] {
        t.apply_event(&e);
    }
    t.d.hosts[0].finished_at_ms = T0 + 4_100;
    t.d.hosts[0].started_at_ms = T0;
    t.apply_log(&pb::DeploymentLogLine {
        host_id: "web-2".into(),
        line: "-----> Pulling image\r".into(),
        ..Default::default()
    });
    let f = frame(&t, T0 + 7_000, 10, 0);
    assert_eq!(
        f.header,
        "deploy shop → acme/shop:2 in prod: running · batch 2/2"
    );
    assert_eq!(
        f.rows,
        [
            "✓   1  web-1  succeeded          4.1s",
            "⠋   2  web-2  running            2.0s  -----> Pulling image",
            "·   2  web-3  pending",
        ]
    );
    assert_eq!(f.footer, None);

    t.apply_event(&ev(
        6_000,
        "cancel_requested",
        "",
        1,
        "running",
        "cancel requested by ops",
    ));
    assert_eq!(
        frame(&t, T0 + 7_000, 10, 0).header,
        "deploy shop → acme/shop:2 in prod: running · batch 2/2 · cancelling: running hosts finish first"
    );

    // More hosts than lines: busy and failed hosts first, the rest counted.
    let f = frame(&t, T0 + 7_000, 1, 0);
    assert_eq!(f.rows.len(), 1);
    assert!(f.rows[0].contains("web-2"), "{:?}", f.rows);
    assert_eq!(
        f.footer.as_deref(),
        Some("  … 2 more hosts: 1 pending, 1 succeeded")
    );
}

#[test]
fn failed_hosts_keep_their_last_lines() {
    let mut t = Tracker::new(deployment());
    for i in 0..30 {
        t.apply_log(&pb::DeploymentLogLine {
            host_id: "web-1".into(),
            line: format!("line {i}"),
            ..Default::default()
        });
    }
    let live = &t.live["web-1"];
    assert_eq!(live.tail.len(), super::tracker::TAIL_LINES);
    assert_eq!(live.tail.front().map(String::as_str), Some("line 10"));
    assert_eq!(live.last_line, "line 29");
}
