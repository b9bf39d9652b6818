//! The coordinator killed with SIGKILL at many points of a rollout, then
//! restarted on the same data dir: every deployment reaches the right end
//! state, no host runs a command twice, and every log line arrives once, in
//! order. Plus an agent frozen (SIGSTOP) long enough for its session to drop.
//!
//! Each test is one kill point; the checks are shared (`check`).

use std::collections::HashMap;

use flotilla_tests::text;

use crate::{
    Fleet, deploy_start_with, deploy_with, fleet, fleet_with, wait_final, wait_for_log_line,
};

/// SIGKILL the coordinator and start it again on the same data dir.
fn crash(f: &mut Fleet) {
    f.server.proc.kill9();
    f.start_server_again(&[]);
}

/// Waits for the `n`th (from 1) coordinator log line containing `needle`.
fn server_saw(f: &Fleet, needle: &str, n: usize) {
    let mut from = 0;
    for _ in 0..n {
        from = f.server.proc.log.wait_for_from(needle, from).unwrap() + 1;
    }
}

/// Deploys `acme/app:1` everywhere at once (the starting point).
fn v1(f: &Fleet) {
    let (code, status) = deploy_with(&f.server, "app", "acme/app:1", &["--batch", "100%"]);
    assert_eq!(code, 0, "{status}");
}

/// The invariants after a crash: state, every host's image through the Dokku
/// stand-in, each command run exactly once (the agents' records and the
/// stand-in's invocations agree with the coordinator's), and each command's
/// log lines complete and in order.
fn check(f: &Fleet, id: &str, state: &str, images: &[&str]) {
    let s = &f.server;
    let status = wait_final(s, id);
    assert_eq!(status["state"], state, "{status}");
    for (i, host) in f.hosts.iter().enumerate() {
        assert_eq!(
            host.deployed_image("app").unwrap(),
            images[i],
            "{} {status}",
            host.host_id
        );
    }
    // Commands the coordinator sent for this deployment, per host.
    let mut sent: HashMap<String, Vec<String>> = HashMap::new();
    // How many of the host's git:from-image runs succeeded, from its final
    // state (in these scenarios a rolled-back host's deploy succeeded too).
    let mut succeeded: HashMap<String, usize> = HashMap::new();
    for h in status["hosts"].as_array().unwrap() {
        let host = h["host_id"].as_str().unwrap().to_owned();
        let n = match h["state"].as_str().unwrap() {
            "succeeded" => 1,
            "rolled_back" => 2,
            _ => 0,
        };
        succeeded.insert(host.clone(), n);
        for key in ["command_id", "rollback_command_id"] {
            if let Some(c) = h[key].as_str().filter(|c| !c.is_empty()) {
                sent.entry(host.clone()).or_default().push(c.to_owned());
            }
        }
    }
    for (i, host) in f.hosts.iter().enumerate() {
        let commands = sent.get(&host.host_id).cloned().unwrap_or_default();
        for c in &commands {
            let accepted = format!("command accepted command={c}");
            let finished = format!("command finished command={c}");
            let log = &f.agents[i].log;
            assert_eq!(
                count(log, &accepted),
                1,
                "{} accepted {c} once",
                host.host_id
            );
            assert!(log.contains(&finished), "{} ran {c}", host.host_id);
        }
        // Nothing else of this deployment was accepted there.
        assert_eq!(
            count_accepted(&f.agents[i].log, id),
            commands.len(),
            "{}",
            host.host_id
        );
        // git:from-image ran once per command (plus the initial v1 deploy).
        let runs = host.invocations(&["git:from-image", "app"]).unwrap();
        assert_eq!(
            runs,
            1 + commands.len(),
            "{} ran git:from-image {runs} times",
            host.host_id
        );
    }
    // Log lines: per host, one run of seq 0,1,2,… per command, nothing missing or doubled.
    let out = s.cli(&["logs", id, "--output", "json"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for host in &f.hosts {
        let seqs: Vec<u64> = lines
            .iter()
            .filter(|l| l["host_id"] == host.host_id.as_str())
            .map(|l| l["seq"].as_u64().unwrap())
            .collect();
        let runs = seqs.iter().filter(|&&s| s == 0).count();
        let expected = sent.get(&host.host_id).map_or(0, Vec::len);
        assert_eq!(runs, expected, "{}: {seqs:?}", host.host_id);
        // The tail of each command made it too: every git:from-image that
        // succeeded on the host ends with Dokku's "Application deployed".
        let deployed = lines
            .iter()
            .filter(|l| l["host_id"] == host.host_id.as_str())
            .filter(|l| {
                l["line"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("Application deployed")
            })
            .count();
        assert_eq!(deployed, succeeded[&host.host_id], "{}", host.host_id);
        for pair in seqs.windows(2) {
            assert!(
                pair[1] == pair[0] + 1 || pair[1] == 0,
                "{}: {seqs:?}",
                host.host_id
            );
        }
    }
}

fn count(log: &flotilla_tests::LogWatch, needle: &str) -> usize {
    log.count(needle)
}

/// Waits until agent `i` accepted a command of deployment `id`; its log position.
fn accepted(f: &Fleet, i: usize, id: &str) -> usize {
    f.agents[i]
        .log
        .wait_for(&format!("deployment={id}"))
        .unwrap()
}

/// Waits until agent `i` finished its command of deployment `id`.
fn finished(f: &Fleet, i: usize, id: &str) {
    let at = accepted(f, i, id);
    f.agents[i]
        .log
        .wait_for_from("command finished", at)
        .unwrap();
}

/// "command accepted" lines of the agent for deployment `id`.
fn count_accepted(log: &flotilla_tests::LogWatch, id: &str) -> usize {
    log.count_both("command accepted", &format!("deployment={id}"))
}

#[test]
fn kill_right_after_the_first_dispatch() {
    let mut f = fleet(3);
    v1(&f);
    let id = deploy_start_with(&f.server, "app", "acme/app:2", &[]);
    crash(&mut f);
    check(&f, &id, "succeeded", &["acme/app:2"; 3]);
}

#[test]
fn kill_mid_command_in_the_first_batch() {
    let mut f = fleet(3);
    v1(&f);
    f.hosts[1].release_hang().unwrap();
    f.hosts[2].release_hang().unwrap();
    let id = deploy_start_with(&f.server, "app", "acme/app:2-hang", &[]);
    wait_for_log_line(&f.server, &id, "(fake-dokku) waiting for");
    crash(&mut f);
    f.hosts[0].release_hang().unwrap();
    check(&f, &id, "succeeded", &["acme/app:2-hang"; 3]);
}

#[test]
fn kill_during_the_pause_between_batches() {
    let mut f = fleet(3);
    v1(&f);
    let id = deploy_start_with(&f.server, "app", "acme/app:2", &["--pause", "2s"]);
    server_saw(&f, "deployment paused between batches", 1);
    crash(&mut f);
    check(&f, &id, "succeeded", &["acme/app:2"; 3]);
    // The pause was kept across the restart.
    let status = f.server.json(&["status", &id]).unwrap();
    let at = |i: usize, key: &str| status["hosts"][i][key].as_i64().unwrap();
    assert!(
        at(1, "started_at_ms") >= at(0, "finished_at_ms") + 2000,
        "{status}"
    );
    assert!(
        at(2, "started_at_ms") >= at(1, "finished_at_ms") + 2000,
        "{status}"
    );
}

#[test]
fn kill_mid_command_in_the_second_batch() {
    let mut f = fleet(3);
    v1(&f);
    f.hosts[0].release_hang().unwrap();
    f.hosts[2].release_hang().unwrap();
    let id = deploy_start_with(&f.server, "app", "acme/app:2-hang", &[]);
    accepted(&f, 1, &id);
    crash(&mut f);
    f.hosts[1].release_hang().unwrap();
    check(&f, &id, "succeeded", &["acme/app:2-hang"; 3]);
}

#[test]
fn kill_while_awaiting_promotion() {
    let mut f = fleet(3);
    v1(&f);
    let id = deploy_start_with(
        &f.server,
        "app",
        "acme/app:2",
        &["--canary", "1", "--canary-manual", "--batch", "2"],
    );
    server_saw(&f, "awaiting promotion", 1);
    crash(&mut f);
    assert_eq!(
        f.server.json(&["status", &id]).unwrap()["state"],
        "awaiting_promotion"
    );
    let out = f.server.cli(&["promote", &id]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    check(&f, &id, "succeeded", &["acme/app:2"; 3]);
}

#[test]
fn kill_as_the_automatic_rollback_starts() {
    let mut f = fleet(3);
    v1(&f);
    f.hosts[1].fail_images(&["acme/app:2"]).unwrap();
    let id = deploy_start_with(&f.server, "app", "acme/app:2", &[]);
    server_saw(&f, "rolling back", 1);
    crash(&mut f);
    check(&f, &id, "rolled_back", &["acme/app:1"; 3]);
}

#[test]
fn kill_mid_rollback_command() {
    let mut f = fleet(3);
    // The release to return to hangs when redeployed.
    for host in &f.hosts {
        host.release_hang().unwrap();
    }
    let (code, status) = deploy_with(&f.server, "app", "acme/app:1-hang", &["--batch", "100%"]);
    assert_eq!(code, 0, "{status}");
    f.hosts[1].fail_images(&["acme/app:2"]).unwrap();
    let id = deploy_start_with(&f.server, "app", "acme/app:2", &[]);
    // web-1 took v2, web-2 failed: web-1's rollback to 1-hang blocks.
    wait_for_log_line(&f.server, &id, "(fake-dokku) waiting for");
    crash(&mut f);
    f.hosts[0].release_hang().unwrap();
    check(&f, &id, "rolled_back", &["acme/app:1-hang"; 3]);
}

#[test]
fn kill_with_a_deployment_queued() {
    let mut f = fleet(3);
    v1(&f);
    let first = deploy_start_with(&f.server, "app", "acme/app:2-hang", &["--batch", "3"]);
    let queued = deploy_start_with(&f.server, "app", "acme/app:3", &["--queue"]);
    server_saw(&f, "deployment queued", 1);
    crash(&mut f);
    for host in &f.hosts {
        host.release_hang().unwrap();
    }
    assert_eq!(wait_final(&f.server, &first)["state"], "succeeded");
    // Both deployments' commands count: check the second on its own terms.
    let status = wait_final(&f.server, &queued);
    assert_eq!(status["state"], "succeeded", "{status}");
    for host in &f.hosts {
        assert_eq!(host.deployed_image("app").unwrap(), "acme/app:3");
        assert_eq!(
            host.invocations(&["git:from-image", "app", "acme/app:3"])
                .unwrap(),
            1
        );
        assert_eq!(
            host.invocations(&["git:from-image", "app", "acme/app:2-hang"])
                .unwrap(),
            1
        );
    }
}

#[test]
fn kill_while_a_command_waits_in_the_outbox_for_an_offline_agent() {
    let mut f = fleet(3);
    v1(&f);
    f.agents[2].terminate().unwrap();
    let id = deploy_start_with(&f.server, "app", "acme/app:2", &["--batch", "3"]);
    finished(&f, 0, &id);
    finished(&f, 1, &id);
    crash(&mut f);
    f.agents[2] = f.hosts[2].start().unwrap();
    check(&f, &id, "succeeded", &["acme/app:2"; 3]);
}

#[test]
fn kill_after_a_cancel_was_requested() {
    let mut f = fleet(3);
    v1(&f);
    let id = deploy_start_with(&f.server, "app", "acme/app:2-hang", &[]);
    wait_for_log_line(&f.server, &id, "(fake-dokku) waiting for");
    let out = f.server.cli(&["cancel", &id, "--rollback"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    crash(&mut f);
    f.hosts[0].release_hang().unwrap();
    check(&f, &id, "cancelled", &["acme/app:1"; 3]);
}

#[test]
fn kill_after_every_host_result() {
    let mut f = fleet(3);
    v1(&f);
    let id = deploy_start_with(&f.server, "app", "acme/app:2-hang", &[]);
    for i in 0..3 {
        accepted(&f, i, &id);
        f.hosts[i].release_hang().unwrap();
        finished(&f, i, &id);
        // Kill once the coordinator recorded this host's result.
        let host = format!("host=web-{}", i + 1);
        let deployment = format!("deployment={id}");
        f.server
            .proc
            .log
            .wait_for_all(&["host finished", &deployment, &host], 0)
            .unwrap();
        crash(&mut f);
    }
    check(&f, &id, "succeeded", &["acme/app:2-hang"; 3]);
}

#[test]
fn kill_while_results_wait_in_the_agents_spools() {
    let mut f = fleet(3);
    v1(&f);
    let id = deploy_start_with(&f.server, "app", "acme/app:2-hang", &["--batch", "3"]);
    for i in 0..3 {
        accepted(&f, i, &id);
    }
    f.server.proc.kill9();
    for i in 0..3 {
        f.hosts[i].release_hang().unwrap();
        finished(&f, i, &id);
    }
    f.start_server_again(&[]);
    check(&f, &id, "succeeded", &["acme/app:2-hang"; 3]);
}

#[test]
fn an_agent_frozen_mid_deploy_reconnects_and_the_command_runs_once() {
    let f = fleet_with(2, &["--keepalive", "500ms"]);
    v1(&f);
    let id = deploy_start_with(&f.server, "app", "acme/app:2-hang", &["--batch", "2"]);
    accepted(&f, 0, &id);
    f.hosts[1].release_hang().unwrap();
    // Freeze the agent (its dokku keeps running in its own process group)
    // until the coordinator drops the silent session.
    let pid = f.agents[0].pid().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    server_saw(&f, "agent disconnected", 1);
    // Dokku finishes while the agent is frozen; its output waits in the pipe.
    f.hosts[0].release_hang().unwrap();
    let sent = std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    check(&f, &id, "succeeded", &["acme/app:2-hang"; 2]);
    let reconnects = f.agents[0].log.count("session established");
    assert!(
        reconnects >= 2,
        "the agent reconnected ({reconnects} sessions)"
    );
}

/// A network namespace joined to this one by a veth pair: the agent's "host",
/// whose link the test can take down. Removed on drop.
struct Netns {
    name: String,
    host_if: String,
    host_ip: String,
}

impl Netns {
    fn create() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = (std::process::id() % 10_000) * 10 + n % 10;
        let subnet = id % 250;
        let ns = Self {
            name: format!("flt{id}"),
            host_if: format!("flth{id}"),
            host_ip: format!("10.231.{subnet}.1"),
        };
        let ns_if = format!("fltn{id}");
        let ns_ip = format!("10.231.{subnet}.2/30");
        let host_cidr = format!("{}/30", ns.host_ip);
        ip(&["netns", "add", &ns.name]);
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]);
        ip(&["link", "set", &ns_if, "netns", &ns.name]);
        ip(&["addr", "add", &host_cidr, "dev", &ns.host_if]);
        ip(&["link", "set", &ns.host_if, "up"]);
        for args in [
            vec!["addr", "add", ns_ip.as_str(), "dev", ns_if.as_str()],
            vec!["link", "set", ns_if.as_str(), "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut all = vec!["netns", "exec", ns.name.as_str(), "ip"];
            all.extend(args);
            ip(&all);
        }
        ns
    }

    fn link(&self, up: bool) {
        ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it ours.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip {args:?}: {}", text(&out));
}

#[test]
fn an_agent_cut_off_by_its_network_link_completes_the_command_once() {
    let ns = Netns::create();
    let root = tempfile::tempdir().unwrap();
    let data_dir =
        flotilla_tests::Server::init_with(root.path(), &["--server-name", &ns.host_ip]).unwrap();
    let listen = format!("{}:{}", ns.host_ip, flotilla_tests::free_port().unwrap());
    let server =
        flotilla_tests::Server::start(&data_dir, &listen, &["--keepalive", "500ms"]).unwrap();
    let host = flotilla_tests::Host::join_in_netns(root.path(), &server, "web-1", "prod", &ns.name)
        .unwrap();
    let agent = host.start_with(&["--keepalive", "1s"]).unwrap();
    let f = Fleet {
        agents: vec![agent],
        server,
        hosts: vec![host],
        root,
    };
    v1(&f);
    let id = deploy_start_with(&f.server, "app", "acme/app:2-hang", &[]);
    accepted(&f, 0, &id);

    // Cut the link: the coordinator drops the silent session.
    ns.link(false);
    server_saw(&f, "agent disconnected", 1);
    // Dokku finishes while the host is unreachable; the result and the log
    // lines wait in the agent's spool.
    f.hosts[0].release_hang().unwrap();
    finished(&f, 0, &id);
    ns.link(true);
    check(&f, &id, "succeeded", &["acme/app:2-hang"]);
    assert!(f.agents[0].log.count("session established") >= 2);
}
