//! The ops HTTP listeners (`--http-listen`) of both daemons, through real
//! processes: `/healthz`, `/readyz` (the agent's follows its session) and
//! `/metrics` values that move with deployments and reconnects.

use std::io::{Read as _, Write as _};
use std::time::{Duration, Instant};

use flotilla_tests::{Host, Server, free_port};

/// `GET path` on `addr` → (status code, content type, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

fn metrics(addr: &str) -> String {
    let (status, content_type, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    assert!(content_type.contains("openmetrics-text"), "{content_type}");
    body
}

fn assert_metrics(addr: &str, needles: &[&str]) {
    let text = metrics(addr);
    for needle in needles {
        assert!(
            text.lines().any(|l| l == *needle),
            "{needle:?} missing from {addr}/metrics:\n{text}"
        );
    }
}

/// Polls `addr/readyz` (bounded) until it answers `status`; the body.
fn wait_ready(addr: &str, status: u16) -> String {
    let deadline = Instant::now() + flotilla_tests::WAIT;
    loop {
        let (got, _, body) = http_get(addr, "/readyz");
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{addr}/readyz stayed {got} ({body:?}), wanted {status}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ops_endpoints_and_metrics_on_both_daemons() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    let listen = format!("127.0.0.1:{}", free_port().unwrap());
    let server_http = format!("127.0.0.1:{}", free_port().unwrap());
    let server_args = ["--http-listen", server_http.as_str()];
    let mut server = Server::start(&data_dir, &listen, &server_args).unwrap();

    assert_eq!(http_get(&server_http, "/healthz").0, 200);
    assert_eq!(http_get(&server_http, "/healthz").2, "ok\n");
    assert_eq!(http_get(&server_http, "/readyz").0, 200);
    assert_eq!(http_get(&server_http, "/nope").0, 404);
    assert_metrics(
        &server_http,
        &[
            "flotilla_agents_connected 0",
            "flotilla_agent_sessions_total 0",
        ],
    );

    let host = Host::join(root.path(), &server, "web-1", "prod").unwrap();
    let agent_http = format!("127.0.0.1:{}", free_port().unwrap());
    let mut agent = host.start_with(&["--http-listen", &agent_http]).unwrap();
    assert_eq!(http_get(&agent_http, "/healthz").0, 200);
    assert_eq!(wait_ready(&agent_http, 200), "ready\n");
    assert_metrics(
        &server_http,
        &[
            "flotilla_agents_connected 1",
            "flotilla_agent_sessions_total 1",
            "flotilla_agent_connected{host=\"web-1\",env=\"prod\"} 1",
        ],
    );

    // A deploy that succeeds, then one that fails on the host.
    let (ok, status) = crate::deploy_wait(&server, "shop", "registry.example.com/shop:1.0.0");
    assert!(ok, "{status}");
    host.fail_images(&["registry.example.com/shop:2.0.0"])
        .unwrap();
    let (ok, failed) = crate::deploy_wait(&server, "shop", "registry.example.com/shop:2.0.0");
    assert!(!ok, "{failed}");
    let failed_state = failed["state"].as_str().unwrap().to_owned();
    assert_metrics(
        &server_http,
        &[
            "flotilla_deployments_total{kind=\"deploy\",outcome=\"succeeded\"} 1",
            &format!("flotilla_deployments_total{{kind=\"deploy\",outcome=\"{failed_state}\"}} 1"),
            "flotilla_deployment_duration_seconds_count{kind=\"deploy\",outcome=\"succeeded\"} 1",
            "flotilla_commands_sent_total 2",
            "flotilla_commands_acknowledged_total 2",
        ],
    );
    assert_metrics(
        &agent_http,
        &[
            "flotilla_agent_coordinator_connected 1",
            "flotilla_agent_coordinator_sessions_total 1",
            "flotilla_agent_commands_total{outcome=\"succeeded\"} 1",
            "flotilla_agent_commands_total{outcome=\"failed\"} 1",
        ],
    );

    // The coordinator goes away: the agent is not ready; it comes back: ready
    // again, and the reconnect is counted.
    server.proc.terminate().unwrap();
    assert_eq!(
        wait_ready(&agent_http, 503),
        "not connected to the coordinator\n"
    );
    assert_metrics(&agent_http, &["flotilla_agent_coordinator_connected 0"]);
    let before = agent.log.len();
    server = Server::start(&data_dir, &listen, &server_args).unwrap();
    agent
        .log
        .wait_for_from("session established", before)
        .unwrap();
    wait_ready(&agent_http, 200);
    assert_metrics(
        &agent_http,
        &[
            "flotilla_agent_coordinator_connected 1",
            "flotilla_agent_coordinator_sessions_total 2",
        ],
    );
    assert_metrics(&server_http, &["flotilla_agent_sessions_total 1"]);

    // Both stop cleanly on SIGTERM, the listeners with them.
    assert!(agent.terminate().unwrap().success());
    assert!(server.proc.terminate().unwrap().success());
    assert!(std::net::TcpStream::connect(&agent_http).is_err());
    assert!(std::net::TcpStream::connect(&server_http).is_err());
}

#[test]
fn a_taken_ops_address_fails_the_start() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut cmd = std::process::Command::new(flotilla_tests::bin("flotilla-server"));
    cmd.arg("serve").arg("--data-dir").arg(&data_dir).args([
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        &addr,
    ]);
    let out = flotilla_tests::run(cmd).unwrap();
    assert!(!out.status.success());
    let text = flotilla_tests::text(&out);
    assert!(
        text.contains("--http-listen") && text.contains(&addr),
        "{text}"
    );
}
