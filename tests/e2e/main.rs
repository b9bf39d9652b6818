//! End-to-end tests: a real coordinator and agents as separate processes, each
//! agent with its own data dir and `DOKKU_ROOT` driving `fake-dokku`. Loopback only.
//!
//! Needs the workspace binaries: `cargo build --workspace` first (scripts/test does).

// The whole binary is test code: helpers panic on setup failures, like tests do.
#![allow(clippy::unwrap_used)]

mod deploy;
mod dev;
mod replay;
mod restart;
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
    let root = tempfile::tempdir().unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    // A port outside the ephemeral range, so a restart can bind it again.
    let listen = format!("127.0.0.1:{}", flotilla_tests::free_port().unwrap());
    let server = Server::start(&data_dir, &listen, &[]).unwrap();
    let mut hosts = Vec::new();
    let mut agents = Vec::new();
    for i in 1..=n {
        let host = Host::join(root.path(), &server, &format!("web-{i}"), "prod").unwrap();
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
    let out = server
        .cli(&[
            "deploy", app, "--image", image, "--env", "prod", "--wait", "--output", "json",
        ])
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "deploy printed no JSON ({e}): {}",
            flotilla_tests::text(&out)
        )
    });
    (out.status.success(), status)
}

/// `flotilla rollback APP --env prod [EXTRA…] --wait --output json` → (success, status object).
pub fn rollback_wait(server: &Server, app: &str, extra: &[&str]) -> (bool, serde_json::Value) {
    let mut args = vec!["rollback", app, "--env", "prod"];
    args.extend(extra);
    args.extend(["--wait", "--output", "json"]);
    let out = server.cli(&args).unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rollback printed no JSON ({e}): {}",
            flotilla_tests::text(&out)
        )
    });
    (out.status.success(), status)
}

/// `flotilla deploy APP --image IMAGE --env prod` without waiting → the deployment id.
pub fn deploy_start(server: &Server, app: &str, image: &str) -> String {
    let out = server
        .cli(&["deploy", app, "--image", image, "--env", "prod"])
        .unwrap();
    assert!(out.status.success(), "{}", flotilla_tests::text(&out));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned()
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
