//! Deploy, redeploy, rollback and a failing deploy across two hosts.

use crate::{deploy_start, host_error};
use crate::{deploy_wait, fleet, rollback_wait};

#[test]
fn deploy_then_rollback_returns_every_host_to_the_previous_release() {
    let f = fleet(2);
    let s = &f.server;

    let (ok, v1) = deploy_wait(s, "shop", "registry.example.com/shop:1.0.0");
    assert!(ok, "{v1}");
    assert_eq!(v1["state"], "succeeded");
    assert_eq!(v1["kind"], "deploy");
    let (ok, v2) = deploy_wait(s, "shop", "registry.example.com/shop:2.0.0");
    assert!(ok, "{v2}");
    for host in &f.hosts {
        assert_eq!(
            host.deployed_image("shop").unwrap(),
            "registry.example.com/shop:2.0.0"
        );
    }

    let (ok, rb) = rollback_wait(s, "shop", &[]);
    assert!(ok, "{rb}");
    assert_eq!(rb["kind"], "rollback");
    assert_eq!(rb["state"], "succeeded");
    assert_eq!(rb["image"], "registry.example.com/shop:1.0.0");
    assert_eq!(rb["target_release"], 1);
    for (host, status) in f.hosts.iter().zip(rb["hosts"].as_array().unwrap()) {
        assert_eq!(
            host.deployed_image("shop").unwrap(),
            "registry.example.com/shop:1.0.0"
        );
        assert_eq!(status["host_id"], host.host_id);
        assert_eq!(status["state"], "succeeded");
        assert_eq!(status["exit_code"], 0);
        assert_eq!(status["image"], "registry.example.com/shop:1.0.0");
    }

    // History: v1, v2, then the rollback as v3 (pointing at v1's image).
    let releases = s.json(&["releases", "shop", "--env", "prod"]).unwrap();
    let images: Vec<&str> = releases
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["image"].as_str().unwrap())
        .collect();
    assert_eq!(
        images,
        [
            "registry.example.com/shop:1.0.0",
            "registry.example.com/shop:2.0.0",
            "registry.example.com/shop:1.0.0"
        ]
    );

    // Rolling back again returns to 2.0.0; an explicit --to works too.
    let out = s
        .cli(&["rollback", "shop", "--env", "prod", "--to", "2", "--wait"])
        .unwrap();
    assert!(out.status.success(), "{}", flotilla_tests::text(&out));
    for host in &f.hosts {
        assert_eq!(
            host.deployed_image("shop").unwrap(),
            "registry.example.com/shop:2.0.0"
        );
    }
    let deployments = s.json(&["deployments", "--app", "shop"]).unwrap();
    assert_eq!(deployments.as_array().unwrap().len(), 4);
}

#[test]
fn same_image_again_is_already_at_that_release() {
    let f = fleet(1);
    let (ok, _) = deploy_wait(&f.server, "api", "acme/api:7");
    assert!(ok);
    // Dokku exits 1 with "No changes detected": the agent treats it as success.
    let (ok, again) = deploy_wait(&f.server, "api", "acme/api:7");
    assert!(ok, "{again}");
    assert_eq!(again["hosts"][0]["state"], "succeeded");
    assert_eq!(again["hosts"][0]["exit_code"], 1);
    assert_eq!(
        f.hosts[0]
            .invocations(&["git:from-image", "api", "acme/api:7"])
            .unwrap(),
        2
    );
    let log = f
        .server
        .cli(&["logs", again["id"].as_str().unwrap()])
        .unwrap();
    let log = flotilla_tests::text(&log);
    assert!(log.contains("No changes detected"), "{log}");
    assert!(log.contains("already at acme/api:7"), "{log}");
    // No duplicate release for a no-op deploy.
    let releases = f
        .server
        .json(&["releases", "api", "--env", "prod"])
        .unwrap();
    assert_eq!(releases.as_array().unwrap().len(), 1);
}

#[test]
fn unhealthy_deploy_fails_shows_dokku_output_and_keeps_the_old_release() {
    let f = fleet(2);
    let s = &f.server;
    let (ok, _) = deploy_wait(s, "blog", "acme/blog:1");
    assert!(ok);

    let (ok, status) = deploy_wait(s, "blog", "acme/blog:2-unhealthy");
    assert!(!ok, "deploy --wait must exit non-zero on failure");
    // Dokku's checks failed, so the host never changed: nothing to roll back,
    // and the fleet is at the old release.
    assert_eq!(status["state"], "rolled_back", "{status}");
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("no host had changed"),
        "{status}"
    );
    let hosts = status["hosts"].as_array().unwrap();
    assert_eq!(hosts[0]["state"], "failed");
    assert_eq!(hosts[0]["exit_code"], 1);
    let error = hosts[0]["error"].as_str().unwrap();
    assert!(
        error.contains("Could not start due to 1 failed checks"),
        "{error}"
    );
    // Stops at the first failure: the second host was never touched.
    assert_eq!(hosts[1]["state"], "skipped");
    assert_eq!(
        f.hosts[1]
            .invocations(&["git:from-image", "blog", "acme/blog:2-unhealthy"])
            .unwrap(),
        0
    );

    // The Dokku output is in `flotilla logs`, in order.
    let out = s.cli(&["logs", status["id"].as_str().unwrap()]).unwrap();
    let log = String::from_utf8(out.stdout).unwrap();
    let checks = log.find("Running healthcheck").expect(&log);
    let failed = log
        .find("Could not start due to 1 failed checks")
        .expect(&log);
    assert!(checks < failed, "{log}");
    assert!(log.lines().all(|l| l.starts_with("[web-1] ")), "{log}");

    // The old release keeps serving everywhere.
    for host in &f.hosts {
        assert_eq!(host.deployed_image("blog").unwrap(), "acme/blog:1");
    }
    // A failed pull fails too, with Dokku's message.
    let (ok, status) = deploy_wait(s, "blog", "acme/missing:3");
    assert!(!ok);
    assert!(
        host_error(&status, 0).contains("Failed to pull image"),
        "{status}"
    );
    // The failed attempts did not become releases.
    let releases = s.json(&["releases", "blog", "--env", "prod"]).unwrap();
    assert_eq!(releases.as_array().unwrap().len(), 1);
}

#[test]
fn one_active_deployment_per_app_and_environment() {
    let f = fleet(1);
    let s = &f.server;
    // `hang` makes fake-dokku wait for a release file, so the first deploy stays active.
    let first = deploy_start(s, "svc", "acme/svc:hang-1");
    f.agents[0].log.wait_for("command accepted").unwrap();

    let out = s
        .cli(&["deploy", "svc", "--image", "acme/svc:2", "--env", "prod"])
        .unwrap();
    assert!(!out.status.success());
    let msg = flotilla_tests::text(&out);
    assert!(
        msg.contains(&first) && msg.contains("still in progress"),
        "{msg}"
    );

    let release = f.hosts[0].dokku_root.join(".fake-dokku/release");
    std::fs::write(&release, "").unwrap();
    let out = s.cli(&["logs", &first, "--follow"]).unwrap();
    assert!(out.status.success());
    let status = s.json(&["status", &first]).unwrap();
    assert_eq!(status["state"], "succeeded", "{status}");
}

#[test]
fn under_github_actions_deploy_wait_writes_groups_annotations_and_a_summary() {
    let f = fleet(2);
    let s = &f.server;
    let (ok, _) = deploy_wait(s, "web", "acme/web:1");
    assert!(ok);
    let summary = f.root.path().join("step-summary.md");
    let mut cmd = s.cli_as(
        &s.admin_token(),
        &[
            "deploy",
            "web",
            "--image",
            "acme/web:2-unhealthy",
            "--env",
            "prod",
            "--wait",
        ],
    );
    cmd.env("GITHUB_ACTIONS", "true")
        .env("GITHUB_STEP_SUMMARY", &summary);
    let out = flotilla_tests::run(cmd).unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    // Workflow commands are off while dokku output streams, back on for ours.
    let at = |needle: &str| {
        stdout
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in {stdout}"))
    };
    let stop = at("::stop-commands::");
    let token = stdout[stop + "::stop-commands::".len()..]
        .lines()
        .next()
        .unwrap()
        .to_owned();
    assert!(token.len() >= 32, "{token}");
    let resume = at(&format!("::{token}::"));
    assert!(
        at("::group::") < stop && stop < at("[web-1] -----> ") && at("[web-1] -----> ") < resume,
        "{stdout}"
    );
    assert!(
        resume < at("::endgroup::") && at("::endgroup::") < at("::error title="),
        "{stdout}"
    );
    assert!(
        stdout.contains("::group::Dokku output on web-1"),
        "{stdout}"
    );
    assert!(stdout.contains("::endgroup::"), "{stdout}");
    assert!(
        stdout.contains("::error title=deploy of web failed on web-1::dokku git:from-image exited with 1: Could not start due to 1 failed checks (web.1)"),
        "{stdout}"
    );
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(
        md.contains("❌ Flotilla deploy: `web` → `acme/web:2-unhealthy` in `prod`: rolled_back"),
        "{md}"
    );
    assert!(md.contains("| web-1 | failed | 1 | acme/web:1 |"), "{md}");
    assert!(md.contains("| web-2 | skipped |"), "{md}");
}

#[test]
fn default_rollback_after_a_partial_failure_returns_every_host_to_the_current_release() {
    let f = fleet(2);
    let s = &f.server;
    assert!(deploy_wait(s, "shop", "acme/shop:1").0);
    assert!(deploy_wait(s, "shop", "acme/shop:2").0);

    // web-2 is busy with another deploy (its dokku deploy lock is held), so
    // v3 lands on web-1 only.
    let lock_path = f.hosts[1]
        .dokku_root
        .join(".fake-dokku/apps/shop/.deploy.lock");
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.try_lock().unwrap();
    let (code, status) = crate::deploy_with(s, "shop", "acme/shop:3", &["--no-auto-rollback"]);
    drop(lock);
    assert_eq!(code, 3, "{status}");
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["hosts"][0]["state"], "succeeded", "{status}");
    assert!(host_error(&status, 1).contains("deploy lock"), "{status}");
    assert_eq!(f.hosts[0].deployed_image("shop").unwrap(), "acme/shop:3");
    assert_eq!(f.hosts[1].deployed_image("shop").unwrap(), "acme/shop:2");

    // "Undo the last change": back to v2 everywhere, not two releases back.
    let (ok, rb) = rollback_wait(s, "shop", &[]);
    assert!(ok, "{rb}");
    assert_eq!(rb["image"], "acme/shop:2");
    assert_eq!(rb["target_release"], 2);
    for host in &f.hosts {
        assert_eq!(host.deployed_image("shop").unwrap(), "acme/shop:2");
    }
}
