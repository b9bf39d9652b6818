//! Rollout strategies against real agents and the Dokku stand-in: batches,
//! canaries, the HTTP health gate, failure budgets, auto-rollback, the
//! per-app lock and queue, cancel, promote, label selectors and ping.

use flotilla_tests::{HealthServer, text};

use crate::{deploy_start_with, deploy_with, fleet, host_states, wait_final};

/// Images every host runs, in host order.
fn images(f: &crate::Fleet, app: &str) -> Vec<String> {
    f.hosts
        .iter()
        .map(|h| h.deployed_image(app).unwrap())
        .collect()
}

fn field<'a>(status: &'a serde_json::Value, i: usize, key: &str) -> &'a serde_json::Value {
    &status["hosts"][i][key]
}

#[test]
fn canary_then_batches_with_a_passing_health_gate() {
    let f = fleet(4);
    let s = &f.server;
    let health = HealthServer::start().unwrap();
    let out = s
        .cli(&[
            "app",
            "health-url",
            "shop",
            "--env",
            "prod",
            &health.template(),
        ])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let (code, status) = deploy_with(
        s,
        "shop",
        "acme/shop:1",
        &[
            "--canary",
            "1",
            "--batch",
            "2",
            "--health-path",
            "/health",
            "--health-interval",
            "100ms",
            "--min-healthy-time",
            "300ms",
        ],
    );
    assert_eq!(code, 0, "{status}");
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["batches"], 3);
    let batches: Vec<u64> = status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["batch"].as_u64().unwrap())
        .collect();
    assert_eq!(batches, [0, 1, 1, 2]);
    // A batch starts only after the one before it finished.
    let at = |i: usize, key: &str| field(&status, i, key).as_i64().unwrap();
    assert!(
        at(0, "finished_at_ms") <= at(1, "started_at_ms"),
        "{status}"
    );
    assert!(
        at(0, "finished_at_ms") <= at(2, "started_at_ms"),
        "{status}"
    );
    assert!(at(1, "finished_at_ms").max(at(2, "finished_at_ms")) <= at(3, "started_at_ms"));
    assert_eq!(images(&f, "shop"), ["acme/shop:1"; 4]);
    // Each agent probed its own URL, several times (min healthy time 300ms at 100ms).
    for host in &f.hosts {
        assert!(health.hits(&host.host_id) >= 3, "{}", host.host_id);
    }
    let log = String::from_utf8(
        s.cli(&["logs", status["id"].as_str().unwrap()])
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(log.contains("/web-3/health"), "{log}");
}

#[test]
fn a_failed_health_gate_rolls_back_every_changed_host_to_its_own_release() {
    let f = fleet(3);
    let s = &f.server;
    let (code, _) = deploy_with(s, "shop", "acme/shop:1", &["--batch", "100%"]);
    assert_eq!(code, 0);
    // web-1 drifted to another image before this rollout.
    let out = f.hosts[0]
        .dokku(&["git:from-image", "shop", "acme/shop:1-hotfix"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let health = HealthServer::start().unwrap();
    health.set("web-2", 503);
    let (code, status) = deploy_with(
        s,
        "shop",
        "acme/shop:2",
        &[
            "--health-url",
            &health.template(),
            "--health-path",
            "/health",
            "--healthy-deadline",
            "2s",
            "--health-interval",
            "100ms",
        ],
    );
    assert_eq!(code, 4, "rolled back exits 4: {status}");
    assert_eq!(status["state"], "rolled_back");
    assert_eq!(
        host_states(&status),
        ["rolled_back", "rolled_back", "skipped"]
    );
    let error = status["error"].as_str().unwrap();
    assert!(error.contains("web-2") && error.contains("503"), "{error}");
    assert_eq!(field(&status, 0, "image_before"), "acme/shop:1-hotfix");
    assert_eq!(field(&status, 1, "image_before"), "acme/shop:1");
    // Each host went back to what it ran before; web-3 was never touched.
    assert_eq!(
        images(&f, "shop"),
        ["acme/shop:1-hotfix", "acme/shop:1", "acme/shop:1"]
    );
    assert_eq!(
        f.hosts[2]
            .invocations(&["git:from-image", "shop", "acme/shop:2"])
            .unwrap(),
        0
    );
    // No release for a rolled-back deployment.
    let releases = s.json(&["releases", "shop", "--env", "prod"]).unwrap();
    assert_eq!(releases.as_array().unwrap().len(), 1);
}

#[test]
fn failures_within_max_failures_continue_and_without_auto_rollback_hosts_stay() {
    let f = fleet(3);
    let s = &f.server;
    assert_eq!(deploy_with(s, "api", "acme/api:1", &["--batch", "3"]).0, 0);
    f.hosts[1].fail_images(&["acme/api:2"]).unwrap();
    let (code, status) = deploy_with(s, "api", "acme/api:2", &["--max-failures", "1"]);
    assert_eq!(code, 0, "{status}");
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["failures"], 1);
    assert_eq!(host_states(&status), ["succeeded", "failed", "succeeded"]);
    assert_eq!(
        images(&f, "api"),
        ["acme/api:2", "acme/api:1", "acme/api:2"]
    );

    f.hosts[0].fail_images(&["acme/api:3"]).unwrap();
    let (code, status) = deploy_with(s, "api", "acme/api:3", &["--no-auto-rollback"]);
    assert_eq!(code, 3, "failed exits 3: {status}");
    assert_eq!(status["state"], "failed");
    assert_eq!(host_states(&status), ["failed", "skipped", "skipped"]);
    assert!(
        field(&status, 0, "error")
            .as_str()
            .unwrap()
            .contains("failed checks"),
        "{status}"
    );
}

#[test]
fn the_app_lock_refuses_or_queues_a_second_deployment() {
    let f = fleet(2);
    let s = &f.server;
    let first = deploy_start_with(s, "svc", "acme/svc:1-hang", &["--batch", "2"]);
    let out = s
        .cli(&["deploy", "svc", "--image", "acme/svc:2", "--env", "prod"])
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(6),
        "refused exits 6: {}",
        text(&out)
    );
    let msg = text(&out);
    assert!(msg.contains(&first) && msg.contains("--queue"), "{msg}");

    let queued = deploy_start_with(s, "svc", "acme/svc:2", &["--queue"]);
    assert_eq!(s.json(&["status", &queued]).unwrap()["state"], "queued");
    for host in &f.hosts {
        host.release_hang().unwrap();
    }
    assert_eq!(wait_final(s, &first)["state"], "succeeded");
    assert_eq!(wait_final(s, &queued)["state"], "succeeded");
    assert_eq!(images(&f, "svc"), ["acme/svc:2", "acme/svc:2"]);
    let releases = s.json(&["releases", "svc", "--env", "prod"]).unwrap();
    let order: Vec<&str> = releases
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["image"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["acme/svc:1-hang", "acme/svc:2"]);
}

#[test]
fn cancel_lets_the_running_host_finish_and_with_rollback_reverts_it() {
    let f = fleet(3);
    let s = &f.server;
    assert_eq!(deploy_with(s, "web", "acme/web:1", &["--batch", "3"]).0, 0);
    let id = deploy_start_with(s, "web", "acme/web:2-hang", &[]);
    crate::wait_for_log_line(s, &id, "(fake-dokku) waiting for");
    let out = s.cli(&["cancel", &id, "--rollback"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // Still running: web-1 finishes first.
    assert_ne!(s.json(&["status", &id]).unwrap()["state"], "cancelled");
    f.hosts[0].release_hang().unwrap();
    let status = wait_final(s, &id);
    assert_eq!(status["state"], "cancelled", "{status}");
    assert_eq!(host_states(&status), ["rolled_back", "skipped", "skipped"]);
    assert_eq!(images(&f, "web"), ["acme/web:1"; 3]);
    let audit = s.json(&["audit"]).unwrap();
    assert!(audit.to_string().contains("cancel"), "{audit}");
}

#[test]
fn a_manual_canary_waits_for_promote() {
    let f = fleet(3);
    let s = &f.server;
    let id = deploy_start_with(
        s,
        "shop",
        "acme/shop:1",
        &["--canary", "1", "--canary-manual", "--batch", "2"],
    );
    f.server.proc.log.wait_for("awaiting promotion").unwrap();
    let status = s.json(&["status", &id]).unwrap();
    assert_eq!(status["state"], "awaiting_promotion");
    assert_eq!(host_states(&status), ["succeeded", "pending", "pending"]);
    assert_eq!(f.hosts[1].invocations(&["git:from-image"]).unwrap(), 0);
    let out = s.cli(&["promote", &id, "--wait"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(wait_final(s, &id)["state"], "succeeded");
    assert_eq!(images(&f, "shop"), ["acme/shop:1"; 3]);
}

#[test]
fn a_label_selector_limits_the_rollout_and_ping_reaches_every_agent() {
    let mut f = fleet(3);
    let s = &f.server;
    let (code, status) = deploy_with(s, "shop", "acme/shop:1", &["--hosts", "slot=2"]);
    assert_eq!(code, 0, "{status}");
    assert_eq!(status["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(field(&status, 0, "host_id"), "web-2");
    assert_eq!(f.hosts[0].invocations(&["git:from-image"]).unwrap(), 0);

    let out = s
        .cli(&[
            "deploy",
            "shop",
            "--image",
            "acme/shop:1",
            "--env",
            "prod",
            "--hosts",
            "slot=9",
        ])
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));

    let before: Vec<usize> = f
        .hosts
        .iter()
        .map(|h| h.invocations(&[]).unwrap())
        .collect();
    let ping = s.json(&["ping", "--env", "prod"]).unwrap();
    let hosts = ping["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 3, "{ping}");
    for h in hosts {
        assert!(
            h["ok"] == true && h["rtt_ms"].as_f64().unwrap() > 0.0,
            "{ping}"
        );
    }
    assert_eq!(ping["ok"], 3, "{ping}");
    assert!(ping["total_ms"].as_f64().unwrap() > 0.0);
    // A ping runs nothing on the hosts.
    let after: Vec<usize> = f
        .hosts
        .iter()
        .map(|h| h.invocations(&[]).unwrap())
        .collect();
    assert_eq!(before, after);
    // An agent that is down is reported, and the exit code says so.
    drop(f.agents.remove(2));
    let out = s
        .cli(&["ping", "--env", "prod", "--timeout", "2s"])
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains("web-3"), "{}", text(&out));
}

#[test]
fn twenty_simulated_agents_roll_out_in_percentage_batches_and_stop_at_a_failed_batch() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = flotilla_tests::Server::init(root.path()).unwrap();
    let s = flotilla_tests::Server::start(&data_dir, "127.0.0.1:0", &[]).unwrap();
    let fail = root.path().join("fail-images");
    std::fs::write(&fail, "acme/sim:3\n").unwrap();
    let _sim = flotilla_tests::Simulation::start(
        root.path(),
        &s,
        "sim",
        20,
        &["--fail-images", fail.to_str().unwrap()],
    )
    .unwrap();

    let ping = s.json(&["ping", "--env", "sim"]).unwrap();
    assert_eq!(ping["ok"], 20, "{ping}");

    let run = |image: &str, extra: &[&str]| {
        let mut args = vec!["deploy", "app", "--image", image, "--env", "sim"];
        args.extend(extra);
        args.extend(["--wait", "--output", "json"]);
        let out = s.cli(&args).unwrap();
        let status: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        (out.status.code(), status)
    };
    let (code, status) = run("acme/sim:1", &["--batch", "25%", "--canary", "2"]);
    assert_eq!(code, Some(0), "{status}");
    // 2 canaries, then 25% of 20 = 5 per batch: 5, 5, 5, 3.
    assert_eq!(status["batches"], 5, "{status}");
    let (code, status) = run("acme/sim:2", &["--batch", "50%"]);
    assert_eq!(code, Some(0), "{status}");
    // Every host fails acme/sim:3: the first batch fails, is not changed,
    // nothing else is touched.
    let (code, status) = run("acme/sim:3", &["--batch", "5"]);
    assert_eq!(code, Some(4), "{status}");
    let states = host_states(&status);
    assert_eq!(
        states.iter().filter(|s| *s == "failed").count(),
        5,
        "{status}"
    );
    assert_eq!(
        states.iter().filter(|s| *s == "skipped").count(),
        15,
        "{status}"
    );
    for h in status["hosts"].as_array().unwrap() {
        if h["state"] == "failed" {
            assert_eq!(h["image"], "acme/sim:2", "{h}");
            assert_eq!(h["image_before"], "acme/sim:2", "{h}");
        }
    }
    let releases = s.json(&["releases", "app", "--env", "sim"]).unwrap();
    assert_eq!(releases.as_array().unwrap().len(), 2);
}

#[test]
fn cancel_force_stops_waiting_for_an_agent_that_is_gone() {
    let mut f = fleet(2);
    let s = &f.server;
    assert_eq!(deploy_with(s, "web", "acme/web:1", &["--batch", "2"]).0, 0);
    f.hosts[1].release_hang().unwrap();
    let id = deploy_start_with(s, "web", "acme/web:2-hang", &["--batch", "2"]);
    crate::wait_for_log_line(s, &id, "(fake-dokku) waiting for");
    // web-1's machine dies with the command running; it does not come back.
    f.agents[0].kill9();
    let out = s.cli(&["cancel", &id]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(s.json(&["status", &id]).unwrap()["state"], "cancelled");
    let out = s.cli(&["cancel", &id, "--force", "--wait"]).unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    let status = s.json(&["status", &id]).unwrap();
    assert_eq!(status["state"], "cancelled", "{status}");
    assert_eq!(host_states(&status), ["failed", "succeeded"]);
    assert!(
        field(&status, 0, "error")
            .as_str()
            .unwrap()
            .contains("abandoned"),
        "{status}"
    );
    // Abandoning is not a failure of the release: no automatic rollback of web-2.
    assert_eq!(f.hosts[1].deployed_image("web").unwrap(), "acme/web:2-hang");
}
