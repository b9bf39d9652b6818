//! End-to-end tests: a real coordinator and agents as separate processes, each
//! agent with its own data dir and `DOKKU_ROOT` driving `fake-dokku`. Loopback only.
//!
//! Needs the workspace binaries: `cargo build --workspace` first (scripts/test does).

// The whole binary is test code: helpers panic on setup failures, like tests do.
#![allow(clippy::unwrap_used)]

mod apps;
mod config;
mod crash;
mod dashboard;
mod deploy;
mod dev;
mod doctor;
mod gates;
mod grafana;
mod hosts;
mod ops;
mod replay;
mod restart;
mod rollout;
mod sentry;
mod telemetry;
mod telemetry_ship;
mod trust;

use flotilla_tests::{Host, Proc, Server};

/// A coordinator plus `n` connected agents in env `prod`.
pub struct Fleet {
    // Fields drop in order: processes first, the directory they use last.
    pub agents: Vec<Proc>,
    pub server: Server,
    pub hosts: Vec<Host>,
    pub root: tempfile::TempDir,
}

pub fn fleet(n: usize) -> Fleet {
    fleet_with(n, &[])
}

/// A fleet whose coordinator runs with `server_args`; host `web-i` has the
/// label `slot=i`.
pub fn fleet_with(n: usize, server_args: &[&str]) -> Fleet {
    let root = tempfile::tempdir().unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    // A port outside the ephemeral range, so a restart can bind it again.
    let listen = format!("127.0.0.1:{}", flotilla_tests::free_port().unwrap());
    let server = Server::start(&data_dir, &listen, server_args).unwrap();
    let mut hosts = Vec::new();
    let mut agents = Vec::new();
    for i in 1..=n {
        let slot = format!("slot={i}");
        let host = Host::join_labeled(root.path(), &server, &format!("web-{i}"), "prod", &[&slot])
            .unwrap();
        agents.push(host.start().unwrap());
        hosts.push(host);
    }
    Fleet {
        root,
        server,
        hosts,
        agents,
    }
}

/// `flotilla deploy APP --image IMAGE --env prod --wait --output json` → (success, status object).
pub fn deploy_wait(server: &Server, app: &str, image: &str) -> (bool, serde_json::Value) {
    let (code, status) = deploy_with(server, app, image, &[]);
    (code == 0, status)
}

/// `flotilla deploy APP --image IMAGE --env prod EXTRA… --wait --output json`
/// → (exit code, status object).
pub fn deploy_with(
    server: &Server,
    app: &str,
    image: &str,
    extra: &[&str],
) -> (i32, serde_json::Value) {
    let mut args = vec!["deploy", app, "--image", image, "--env", "prod"];
    args.extend(extra);
    wait_json(server, args)
}

/// Runs `flotilla ARGS --wait --output json` → (exit code, status object).
fn wait_json(server: &Server, mut args: Vec<&str>) -> (i32, serde_json::Value) {
    args.extend(["--wait", "--output", "json"]);
    let out = server.cli(&args).unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "flotilla {} printed no JSON ({e}): {}",
            args[0],
            flotilla_tests::text(&out)
        )
    });
    (out.status.code().unwrap_or(-1), status)
}

/// `flotilla deploy … EXTRA` without waiting → the deployment id.
pub fn deploy_start_with(server: &Server, app: &str, image: &str, extra: &[&str]) -> String {
    let mut args = vec!["deploy", app, "--image", image, "--env", "prod"];
    args.extend(extra);
    let out = server.cli(&args).unwrap();
    assert!(out.status.success(), "{}", flotilla_tests::text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_owned()
}

/// Follows `flotilla logs ID --follow` until a line contains `needle` (or
/// the log ends, or `WAIT` passes).
pub fn wait_for_log_line(server: &Server, id: &str, needle: &str) {
    use std::io::BufRead as _;
    let mut cmd = server.cli_as(&server.admin_token(), &["logs", id, "--follow"]);
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let needle_owned = needle.to_owned();
    std::thread::spawn(move || {
        let found = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains(&needle_owned));
        let _ = tx.send(found);
    });
    let found = rx.recv_timeout(flotilla_tests::WAIT);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(found, Ok(true), "log of {id} never showed {needle:?}");
}

/// Waits (bounded) until deployment `id` is final; returns its status.
pub fn wait_final(server: &Server, id: &str) -> serde_json::Value {
    let out = server.cli(&["logs", id, "--follow"]).unwrap();
    assert!(out.status.success(), "{}", flotilla_tests::text(&out));
    let status = server.json(&["status", id]).unwrap();
    let state = status["state"].as_str().unwrap_or_default();
    assert!(
        ["succeeded", "failed", "rolled_back", "cancelled", "blocked"].contains(&state),
        "{status}"
    );
    status
}

/// The states of a status object's hosts, in order.
pub fn host_states(status: &serde_json::Value) -> Vec<String> {
    status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap().to_owned())
        .collect()
}

/// `flotilla rollback APP --env prod [EXTRA…] --wait --output json` → (success, status object).
pub fn rollback_wait(server: &Server, app: &str, extra: &[&str]) -> (bool, serde_json::Value) {
    let mut args = vec!["rollback", app, "--env", "prod"];
    args.extend(extra);
    let (code, status) = wait_json(server, args);
    (code == 0, status)
}

/// `flotilla deploy APP --image IMAGE --env prod` without waiting → the deployment id.
pub fn deploy_start(server: &Server, app: &str, image: &str) -> String {
    deploy_start_with(server, app, image, &[])
}

/// The error of host `i` in a status object.
pub fn host_error(status: &serde_json::Value, i: usize) -> &str {
    status["hosts"][i]["error"].as_str().unwrap()
}

impl Fleet {
    /// Stops the coordinator (SIGTERM), starts it again on the same address
    /// with `args`, and waits until agent 0 has a new session. Returns agent
    /// 0's log position from before the restart.
    pub fn restart_server(&mut self, args: &[&str]) -> usize {
        self.server.proc.terminate().unwrap();
        self.start_server_again(args)
    }

    /// Starts the (stopped) coordinator again on its address and waits for
    /// agent 0's new session; returns agent 0's log position from before.
    pub fn start_server_again(&mut self, args: &[&str]) -> usize {
        let before = self.agents[0].log.len();
        let addr = self.server.addr.clone();
        self.server = Server::start(&self.server.data_dir, &addr, args).unwrap();
        self.agents[0]
            .log
            .wait_for_from("session established", before)
            .unwrap();
        before
    }
}
