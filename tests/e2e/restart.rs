//! Restarts: an agent killed mid-command, a coordinator killed mid-deployment.

use std::process::Stdio;

use crate::wait_for_log_line;

use crate::fleet;
use crate::{deploy_start, host_error};
use flotilla_tests::text;

#[test]
fn an_agent_killed_mid_command_reports_it_interrupted_and_never_reruns_anything() {
    // The interrupted host is a failure under the strategy: the rollout stops
    // and (auto-rollback) the host is returned to the image it had.
    let mut f = fleet(2);
    let s = &f.server;
    let out = s
        .cli(&[
            "deploy",
            "shop",
            "--image",
            "acme/shop:1",
            "--env",
            "prod",
            "--wait",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // A deploy that blocks inside dokku until released.
    let id = deploy_start(s, "shop", "acme/shop:2-hang");
    wait_for_log_line(s, &id, "(fake-dokku) waiting for");

    // kill -9 the agent and its dokku child (as systemd would), then restart it.
    f.agents[0].kill9();
    f.agents[0] = f.hosts[0].start().unwrap();
    f.agents[0]
        .log
        .wait_for("interrupted by a restart")
        .unwrap();
    let out = s.cli(&["logs", &id, "--follow"]).unwrap();
    assert!(out.status.success());

    let status = s.json(&["status", &id]).unwrap();
    assert_eq!(status["state"], "rolled_back", "{status}");
    let error = host_error(&status, 0);
    assert!(
        error.contains("interrupted") && error.contains("not re-run"),
        "{error}"
    );
    // Returned to the image it had (what it last reported), the rest untouched.
    assert_eq!(status["hosts"][0]["state"], "rolled_back", "{status}");
    assert_eq!(status["hosts"][1]["state"], "skipped", "{status}");
    assert_eq!(f.hosts[0].deployed_image("shop").unwrap(), "acme/shop:1");

    // Restart once more: still nothing re-runs.
    f.agents[0].terminate().unwrap();
    f.agents[0] = f.hosts[0].start().unwrap();
    let out = s
        .cli(&[
            "deploy",
            "shop",
            "--image",
            "acme/shop:3",
            "--env",
            "prod",
            "--wait",
        ])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let h = &f.hosts[0];
    // The first deploy and the rollback.
    assert_eq!(
        h.invocations(&["git:from-image", "shop", "acme/shop:1"])
            .unwrap(),
        2
    );
    assert_eq!(
        h.invocations(&["git:from-image", "shop", "acme/shop:2-hang"])
            .unwrap(),
        1
    );
    assert_eq!(
        h.invocations(&["git:from-image", "shop", "acme/shop:3"])
            .unwrap(),
        1
    );
    assert_eq!(h.deployed_image("shop").unwrap(), "acme/shop:3");
}

#[test]
fn a_coordinator_killed_mid_deployment_resumes_without_losing_or_repeating_anything() {
    let mut f = fleet(2);
    // web-2 runs the same image later: let it through without waiting.
    std::fs::write(f.hosts[1].dokku_root.join(".fake-dokku/release"), "").unwrap_or_else(|_| {
        std::fs::create_dir_all(f.hosts[1].dokku_root.join(".fake-dokku")).unwrap();
        std::fs::write(f.hosts[1].dokku_root.join(".fake-dokku/release"), "").unwrap();
    });
    let id = deploy_start(&f.server, "api", "acme/api:1-hang");
    wait_for_log_line(&f.server, &id, "(fake-dokku) waiting for");

    f.server.proc.kill9();
    // Let the deploy finish while the coordinator is down: the result and the
    // rest of the log wait in the agent's spool.
    std::fs::write(f.hosts[0].dokku_root.join(".fake-dokku/release"), "").unwrap();
    f.agents[0].log.wait_for("command finished").unwrap();

    f.start_server_again(&[]);
    let out = f
        .server
        .cli(&["logs", &id, "--follow", "--output", "json"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let status = f.server.json(&["status", &id]).unwrap();
    assert_eq!(status["state"], "succeeded", "{status}");
    for host in &f.hosts {
        assert_eq!(
            host.invocations(&["git:from-image", "api", "acme/api:1-hang"])
                .unwrap(),
            1
        );
        assert_eq!(host.deployed_image("api").unwrap(), "acme/api:1-hang");
    }
    // Every line once, in order, per host.
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for host in ["web-1", "web-2"] {
        let seqs: Vec<u64> = lines
            .iter()
            .filter(|l| l["host_id"] == host)
            .map(|l| l["seq"].as_u64().unwrap())
            .collect();
        assert!(!seqs.is_empty());
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "{host}");
    }
}

#[test]
fn deploy_wait_follows_a_deployment_through_a_coordinator_restart() {
    use std::io::BufRead as _;
    let mut f = fleet(1);
    let mut cmd = f.server.cli_as(
        &f.server.admin_token(),
        &[
            "deploy",
            "shop",
            "--image",
            "acme/shop:1-hang",
            "--env",
            "prod",
            "--wait",
        ],
    );
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Wait (bounded by the fake's own hang timeout) for dokku to block.
    assert!(
        lines
            .by_ref()
            .map_while(Result::ok)
            .any(|l| l.contains("(fake-dokku) waiting for"))
    );

    f.restart_server(&[]);
    std::fs::write(f.hosts[0].dokku_root.join(".fake-dokku/release"), "").unwrap();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{rest:#?}\n{stderr}");
    assert!(
        rest.iter().any(|l| l.contains("Application deployed")),
        "{rest:#?}"
    );
    assert!(rest.iter().any(|l| l.contains("succeeded")), "{rest:#?}");
}
