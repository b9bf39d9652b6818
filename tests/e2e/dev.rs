//! The README's run command: `flotilla-server dev` brings up a working fleet,
//! prints how to reach it, and cleans up on SIGTERM.

use std::io::BufRead as _;
use std::process::{Command, Stdio};

use flotilla_tests::{bin, run, text};

#[test]
fn dev_fleet_deploys_and_cleans_up() {
    let mut child = Command::new(bin("flotilla-server"))
        .args(["dev", "--agents", "2", "--listen", "127.0.0.1:0"])
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Keep its log for the failure message.
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let mut exports = std::collections::HashMap::new();
    let mut state_dir = None;
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(dir) = line.strip_prefix("State and logs: ") {
            state_dir = Some(std::path::PathBuf::from(dir));
        }
        if let Some((k, v)) = line
            .trim()
            .strip_prefix("export ")
            .and_then(|kv| kv.split_once('='))
        {
            exports.insert(k.to_owned(), v.to_owned());
        }
        if line.contains("Ctrl-C stops everything") {
            break;
        }
    }
    if exports.len() < 3 {
        let _ = child.wait();
        panic!(
            "dev printed no exports; its log:\n{}",
            log.join().unwrap_or_default()
        );
    }
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(bin("flotilla"));
        cmd.args(args).env_remove("FLOTILLA_TOKEN_FILE");
        for key in ["FLOTILLA_SERVER", "FLOTILLA_CA_CERT", "FLOTILLA_TOKEN"] {
            cmd.env(key, &exports[key]);
        }
        run(cmd).unwrap()
    };
    let out = cli(&[
        "deploy",
        "hello",
        "--image",
        "nginx:1.27",
        "--env",
        "dev",
        "--wait",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let first = stdout.lines().next().unwrap();
    assert_eq!(first.len(), 36, "the deployment id comes first: {stdout}");
    for host in ["dev-1", "dev-2"] {
        assert!(
            stdout.contains(&format!("[{host}] -----> Releasing hello...")),
            "{stdout}"
        );
    }
    let hosts: serde_json::Value =
        serde_json::from_slice(&cli(&["hosts", "--output", "json"]).stdout).unwrap();
    assert_eq!(hosts.as_array().unwrap().len(), 2, "{hosts}");

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let state_dir = state_dir.unwrap();
    assert!(
        !state_dir.exists(),
        "{} was left behind",
        state_dir.display()
    );
}
