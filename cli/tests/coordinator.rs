//! The real `flotilla` binary against a scripted stand-in for the
//! coordinator's `FleetService` (TLS on loopback): what CI sees from
//! `--wait` (event lines, log lines, GitHub Actions output, exit codes),
//! resumption after a broken event stream, refusals and unknown ids.

// A test harness: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::pin::Pin;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::fleet_service_server::{FleetService, FleetServiceServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

const TOKEN: &str = "flt_test";
/// 2026-12-23T12:00:00Z
const T0: i64 = 1_798_027_200_000;

type Stream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

/// What the stand-in answers.
#[derive(Clone, Default)]
struct Script {
    /// `CreateDeployment`'s answer.
    create: Option<Result<pb::Deployment, Status>>,
    /// `GetDeployment` once every event has been sent (before: `running`).
    last: pb::Deployment,
    events: Vec<pb::DeploymentEvent>,
    /// The first watch breaks (as in a coordinator restart) after this many events…
    break_after: Option<usize>,
    /// …and the next attempt finds the coordinator still down.
    unavailable_once: bool,
    logs: Vec<pb::DeploymentLogLine>,
    ping: Option<pb::PingResponse>,
    /// Between two events (0 in tests; for looking at the live view by hand).
    delay: Duration,
}

#[derive(Default)]
struct Seen {
    watch_after_seq: Vec<u64>,
    sent: usize,
    create: Vec<pb::CreateDeploymentRequest>,
}

#[derive(Clone)]
struct Fake {
    script: Arc<Script>,
    seen: Arc<Mutex<Seen>>,
}

impl Fake {
    fn auth<T>(req: &Request<T>) -> Result<(), Status> {
        match req.metadata().get("authorization").map(|v| v.to_str()) {
            Some(Ok(v)) if v == format!("Bearer {TOKEN}") => Ok(()),
            _ => Err(Status::unauthenticated("unknown API token")),
        }
    }

    fn snapshot(&self) -> pb::Deployment {
        let sent = self.seen.lock().unwrap().sent;
        if sent >= self.script.events.len() {
            self.script.last.clone()
        } else {
            let state = self.script.events[..sent]
                .iter()
                .rev()
                .find(|e| e.host_id.is_empty() && !e.state.is_empty())
                .map_or("running", |e| e.state.as_str());
            pb::Deployment {
                state: state.into(),
                ..self.script.last.clone()
            }
        }
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this test"))
}

#[tonic::async_trait]
impl FleetService for Fake {
    async fn doctor(
        &self,
        _: Request<pb::DoctorRequest>,
    ) -> Result<Response<pb::DoctorResponse>, Status> {
        unimplemented()
    }

    type StreamLogsStream = Stream<pb::DeploymentLogLine>;
    type WatchDeploymentStream = Stream<pb::DeploymentEvent>;

    async fn create_deployment(
        &self,
        req: Request<pb::CreateDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        Self::auth(&req)?;
        self.seen.lock().unwrap().create.push(req.into_inner());
        self.script
            .create
            .clone()
            .expect("script has a create answer")
            .map(Response::new)
    }

    async fn get_deployment(
        &self,
        req: Request<pb::GetDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        Self::auth(&req)?;
        if req.get_ref().id != self.script.last.id {
            return Err(Status::not_found(format!(
                "no deployment {}",
                req.get_ref().id
            )));
        }
        Ok(Response::new(self.snapshot()))
    }

    async fn watch_deployment(
        &self,
        req: Request<pb::WatchDeploymentRequest>,
    ) -> Result<Response<Self::WatchDeploymentStream>, Status> {
        Self::auth(&req)?;
        let after = req.get_ref().after_seq;
        let attempt = {
            let mut seen = self.seen.lock().unwrap();
            seen.watch_after_seq.push(after);
            seen.watch_after_seq.len()
        };
        if attempt == 2 && self.script.unavailable_once {
            return Err(Status::unavailable("coordinator starting"));
        }
        let events: Vec<_> = self
            .script
            .events
            .iter()
            .filter(|e| e.seq > after)
            .cloned()
            .collect();
        let break_after = self.script.break_after.filter(|_| attempt == 1);
        let (tx, rx) = mpsc::channel(4);
        let (seen, delay) = (self.seen.clone(), self.script.delay);
        tokio::spawn(async move {
            for (i, ev) in events.into_iter().enumerate() {
                if break_after == Some(i) {
                    let _ = tx
                        .send(Err(Status::unavailable("coordinator shutting down")))
                        .await;
                    return;
                }
                tokio::time::sleep(delay).await;
                let seq = ev.seq;
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
                let mut seen = seen.lock().unwrap();
                seen.sent = seen.sent.max(usize::try_from(seq).unwrap());
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stream_logs(
        &self,
        req: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        Self::auth(&req)?;
        let (tx, rx) = mpsc::channel(4);
        let fake = self.clone();
        tokio::spawn(async move {
            for line in fake.script.logs.clone() {
                tokio::time::sleep(fake.script.delay).await;
                if tx.send(Ok(line)).await.is_err() {
                    return;
                }
            }
            // Like the coordinator: the stream ends when the deployment does.
            while !matches!(
                fake.snapshot().state.as_str(),
                "succeeded" | "failed" | "rolled_back" | "cancelled"
            ) {
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn ping(
        &self,
        req: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        Self::auth(&req)?;
        Ok(Response::new(
            self.script.ping.clone().expect("a ping answer"),
        ))
    }

    async fn list_hosts(
        &self,
        _: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        unimplemented()
    }
    async fn revoke_host(
        &self,
        _: Request<pb::RevokeHostRequest>,
    ) -> Result<Response<pb::RevokeHostResponse>, Status> {
        unimplemented()
    }
    async fn create_rollback(
        &self,
        _: Request<pb::CreateRollbackRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        unimplemented()
    }
    async fn list_deployments(
        &self,
        _: Request<pb::ListDeploymentsRequest>,
    ) -> Result<Response<pb::ListDeploymentsResponse>, Status> {
        unimplemented()
    }
    async fn list_releases(
        &self,
        _: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        unimplemented()
    }
    async fn create_join_token(
        &self,
        _: Request<pb::CreateJoinTokenRequest>,
    ) -> Result<Response<pb::CreateJoinTokenResponse>, Status> {
        unimplemented()
    }
    async fn create_api_token(
        &self,
        _: Request<pb::CreateApiTokenRequest>,
    ) -> Result<Response<pb::CreateApiTokenResponse>, Status> {
        unimplemented()
    }
    async fn list_audit(
        &self,
        _: Request<pb::ListAuditRequest>,
    ) -> Result<Response<pb::ListAuditResponse>, Status> {
        unimplemented()
    }
    async fn list_api_tokens(
        &self,
        _: Request<pb::ListApiTokensRequest>,
    ) -> Result<Response<pb::ListApiTokensResponse>, Status> {
        unimplemented()
    }
    async fn revoke_api_token(
        &self,
        _: Request<pb::RevokeApiTokenRequest>,
    ) -> Result<Response<pb::RevokeApiTokenResponse>, Status> {
        unimplemented()
    }
    async fn cancel_deployment(
        &self,
        _: Request<pb::CancelDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        unimplemented()
    }
    async fn promote_deployment(
        &self,
        _: Request<pb::PromoteDeploymentRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        unimplemented()
    }
    async fn set_app_settings(
        &self,
        _: Request<pb::SetAppSettingsRequest>,
    ) -> Result<Response<pb::AppSettings>, Status> {
        unimplemented()
    }
    async fn get_app_settings(
        &self,
        _: Request<pb::GetAppSettingsRequest>,
    ) -> Result<Response<pb::AppSettings>, Status> {
        unimplemented()
    }

    async fn set_config(
        &self,
        _: Request<pb::SetConfigRequest>,
    ) -> Result<Response<pb::SetConfigResponse>, Status> {
        unimplemented()
    }

    async fn unset_config(
        &self,
        _: Request<pb::UnsetConfigRequest>,
    ) -> Result<Response<pb::UnsetConfigResponse>, Status> {
        unimplemented()
    }

    async fn list_config(
        &self,
        _: Request<pb::ListConfigRequest>,
    ) -> Result<Response<pb::ListConfigResponse>, Status> {
        unimplemented()
    }

    async fn get_config(
        &self,
        _: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::ConfigEntry>, Status> {
        unimplemented()
    }

    async fn reseal_config(
        &self,
        _: Request<pb::ResealConfigRequest>,
    ) -> Result<Response<pb::ResealConfigResponse>, Status> {
        unimplemented()
    }

    async fn create_freeze(
        &self,
        _: Request<pb::CreateFreezeRequest>,
    ) -> Result<Response<pb::Freeze>, Status> {
        unimplemented()
    }

    async fn list_freezes(
        &self,
        _: Request<pb::ListFreezesRequest>,
    ) -> Result<Response<pb::ListFreezesResponse>, Status> {
        unimplemented()
    }

    async fn delete_freeze(
        &self,
        _: Request<pb::DeleteFreezeRequest>,
    ) -> Result<Response<pb::DeleteFreezeResponse>, Status> {
        unimplemented()
    }

    async fn test_notification(
        &self,
        _: Request<pb::TestNotificationRequest>,
    ) -> Result<Response<pb::TestNotificationResponse>, Status> {
        unimplemented()
    }

    async fn apply_app(
        &self,
        _: Request<pb::ApplyAppRequest>,
    ) -> Result<Response<pb::Deployment>, Status> {
        unimplemented()
    }
}

/// A stand-in coordinator on 127.0.0.1 with a throwaway certificate.
struct Coordinator {
    url: String,
    dir: tempfile::TempDir,
    seen: Arc<Mutex<Seen>>,
    _runtime: tokio::runtime::Runtime,
}

impl Coordinator {
    fn start(script: Script) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.cert.pem()).unwrap();
        let identity =
            tonic::transport::Identity::from_pem(cert.cert.pem(), cert.signing_key.serialize_pem());
        let seen = Arc::new(Mutex::new(Seen::default()));
        let fake = Fake {
            script: Arc::new(script),
            seen: seen.clone(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        runtime.spawn(async move {
            tonic::transport::Server::builder()
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .unwrap()
                .add_service(FleetServiceServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self {
            url,
            dir,
            seen,
            _runtime: runtime,
        }
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
        cmd.env("FLOTILLA_SERVER", &self.url)
            .env("FLOTILLA_CA_CERT", self.dir.path().join("ca.pem"))
            .env("FLOTILLA_TOKEN", TOKEN)
            .env_remove("FLOTILLA_TOKEN_FILE")
            .env_remove("GITHUB_ACTIONS")
            .args(args);
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        run(self.cli(args))
    }
}

/// Runs a command to its end (bounded: a hang fails the test).
fn run(mut cmd: Command) -> Output {
    cmd.stdin(std::process::Stdio::null());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(cmd.output());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("flotilla finishes within 60 s")
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ev(
    seq: u64,
    kind: &str,
    host: &str,
    batch: u32,
    state: &str,
    message: &str,
) -> pb::DeploymentEvent {
    pb::DeploymentEvent {
        seq,
        at_ms: T0 + i64::try_from(seq).unwrap() * 1_000,
        deployment_id: "d1".into(),
        kind: kind.into(),
        host_id: host.into(),
        batch,
        state: state.into(),
        message: message.into(),
    }
}

fn host(id: &str, batch: u32, state: &str, image: &str, error: &str) -> pb::HostDeployment {
    pb::HostDeployment {
        host_id: id.into(),
        state: state.into(),
        image: image.into(),
        image_before: "acme/shop:1".into(),
        batch,
        error: error.into(),
        ..Default::default()
    }
}

fn deployment(state: &str, hosts: Vec<pb::HostDeployment>) -> pb::Deployment {
    pb::Deployment {
        id: "d1".into(),
        app: "shop".into(),
        env: "prod".into(),
        kind: "deploy".into(),
        state: state.into(),
        image: "acme/shop:2".into(),
        batches: 2,
        hosts,
        ..Default::default()
    }
}

fn log(host: &str, seq: u64, line: &str) -> pb::DeploymentLogLine {
    pb::DeploymentLogLine {
        host_id: host.into(),
        seq,
        stream: "stdout".into(),
        line: line.into(),
        at_ms: T0,
    }
}

/// Two hosts in two batches; web-2 fails its health gate, web-1 is rolled back.
fn rolled_back_script() -> Script {
    let pending = vec![
        host("web-1", 0, "pending", "", ""),
        host("web-2", 1, "pending", "", ""),
    ];
    Script {
        create: Some(Ok(deployment("running", pending))),
        last: pb::Deployment {
            error: "web-2 failed; rolled back".into(),
            current_batch: 1,
            failures: 1,
            ..deployment(
                "rolled_back",
                vec![
                    host("web-1", 0, "rolled_back", "acme/shop:1", ""),
                    host("web-2", 1, "failed", "acme/shop:1", "health gate: 503"),
                ],
            )
        },
        events: vec![
            ev(
                1,
                "created",
                "",
                0,
                "running",
                "deploy acme/shop:2 to 2 host(s) of prod in 2 batch(es)",
            ),
            ev(2, "batch_started", "", 0, "running", "batch 1/2: web-1"),
            ev(
                3,
                "host_dispatched",
                "web-1",
                0,
                "running",
                "deploy acme/shop:2",
            ),
            ev(
                4,
                "host_accepted",
                "web-1",
                0,
                "running",
                "the agent accepted the command",
            ),
            ev(
                5,
                "host_finished",
                "web-1",
                0,
                "succeeded",
                "now at acme/shop:2",
            ),
            ev(6, "batch_started", "", 1, "running", "batch 2/2: web-2"),
            ev(
                7,
                "host_dispatched",
                "web-2",
                1,
                "running",
                "deploy acme/shop:2",
            ),
            ev(8, "host_finished", "web-2", 1, "failed", "health gate: 503"),
            ev(
                9,
                "rollback_started",
                "",
                1,
                "rolling_back",
                "rolling back 1 host(s): web-2 failed",
            ),
            ev(
                10,
                "host_rollback_dispatched",
                "web-1",
                0,
                "rolling_back",
                "rollback acme/shop:1",
            ),
            ev(11, "host_rollback_finished", "web-1", 0, "rolled_back", ""),
            ev(
                12,
                "finished",
                "",
                1,
                "rolled_back",
                "rolled_back: web-2 failed; rolled back",
            ),
        ],
        break_after: Some(5),
        unavailable_once: true,
        logs: vec![
            log("web-1", 1, "-----> Deploying shop"),
            log("web-2", 1, "-----> Deploying shop"),
            log("web-2", 2, "::set-output name=x::from dokku"),
        ],
        ..Script::default()
    }
}

#[test]
fn wait_in_ci_prints_each_event_once_across_a_broken_stream_and_exits_4_on_rollback() {
    let c = Coordinator::start(rolled_back_script());
    let out = c.run(&[
        "deploy",
        "shop",
        "--image",
        "acme/shop:2",
        "--env",
        "prod",
        "--batch",
        "50%",
        "--no-auto-rollback",
        "--wait",
    ]);
    let (text, err) = (stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(4), "{text}\n{err}");
    assert_eq!(text.lines().next(), Some("d1"), "{text}");
    for line in [
        "[12:00:01] deploy of shop → acme/shop:2 in prod created",
        "[12:00:02] batch 1/2 started: web-1",
        "[12:00:05] web-1 succeeded (2.0s): now at acme/shop:2",
        "[12:00:08] web-2 failed (1.0s): health gate: 503",
        "[12:00:10] web-1 rolling back to acme/shop:1",
        "[12:00:12] deploy rolled_back: web-2 failed; rolled back",
        "[web-2] -----> Deploying shop",
        "deployment d1: deploy shop → acme/shop:2 in prod: rolled_back (batch 2/2, 1 failure)",
        "  reason: web-2 failed; rolled back",
        "  HOST   BATCH  STATE        BEFORE       AFTER        DURATION  ERROR",
        "  web-2  2      failed       acme/shop:1  acme/shop:1  -         health gate: 503",
    ] {
        assert!(text.contains(line), "no {line:?} in\n{text}");
    }
    for once in ["web-1 succeeded", "web-2 failed (", "batch 2/2 started"] {
        assert_eq!(text.matches(once).count(), 1, "{once:?} in\n{text}");
    }
    assert!(err.contains("event stream interrupted"), "{err}");
    let seen = c.seen.lock().unwrap();
    // Resumed after the last event shown, through one refused reconnection.
    assert_eq!(seen.watch_after_seq, [0, 5, 5]);
    let strategy = seen.create[0].strategy.clone().unwrap();
    assert_eq!(strategy.batch, "50%");
    assert_eq!(strategy.auto_rollback, Some(false));
}

#[test]
fn wait_under_github_actions_groups_output_and_annotates_failures() {
    let c = Coordinator::start(rolled_back_script());
    let summary = c.dir.path().join("summary.md");
    let mut cmd = c.cli(&[
        "deploy",
        "shop",
        "--image",
        "acme/shop:2",
        "--env",
        "prod",
        "--wait",
    ]);
    cmd.env("GITHUB_ACTIONS", "true")
        .env("GITHUB_STEP_SUMMARY", &summary);
    let out = run(cmd);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(text.contains("::group::Dokku output on web-2"), "{text}");
    // A dokku line that looks like a workflow command is printed while commands are off.
    let stop = text.find("::stop-commands::").expect(&text);
    let fake = text.find("[web-2] ::set-output").expect(&text);
    assert!(stop < fake, "{text}");
    assert!(
        text.contains("::error title=deploy of shop failed on web-2::health gate: 503"),
        "{text}"
    );
    assert!(
        text.contains(
            "::error title=deploy of shop in prod was rolled back::web-2 failed; rolled back"
        ),
        "{text}"
    );
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(
        md.contains("❌ Flotilla deploy: `shop` → `acme/shop:2` in `prod`: rolled_back"),
        "{md}"
    );
    assert!(
        md.contains("| web-2 | failed |  | acme/shop:1 | acme/shop:1 | 2 |"),
        "{md}"
    );
}

#[test]
fn wait_with_json_output_prints_only_the_final_object_on_stdout() {
    let c = Coordinator::start(Script {
        break_after: None,
        unavailable_once: false,
        ..rolled_back_script()
    });
    let out = c.run(&[
        "deploy",
        "shop",
        "--image",
        "acme/shop:2",
        "--env",
        "prod",
        "--wait",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(4));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("stdout is one JSON object");
    assert_eq!(v["state"], "rolled_back");
    assert_eq!(v["hosts"][1]["state"], "failed");
    assert!(stderr(&out).contains("web-1 succeeded"), "{}", stderr(&out));
}

#[test]
fn canary_manual_wait_returns_once_the_canary_batch_is_done() {
    let mut d = deployment(
        "awaiting_promotion",
        vec![host("web-1", 0, "succeeded", "acme/shop:2", "")],
    );
    d.strategy = Some(pb::Strategy {
        canary: 1,
        canary_manual: true,
        ..Default::default()
    });
    let c = Coordinator::start(Script {
        create: Some(Ok(d.clone())),
        last: d,
        events: vec![
            ev(1, "created", "", 0, "running", ""),
            ev(
                2,
                "batch_started",
                "",
                0,
                "running",
                "batch 1/2 (canary): web-1",
            ),
            ev(
                3,
                "host_finished",
                "web-1",
                0,
                "succeeded",
                "now at acme/shop:2",
            ),
            ev(
                4,
                "awaiting_promotion",
                "",
                0,
                "awaiting_promotion",
                "canary batch done; continue with `flotilla promote d1`",
            ),
        ],
        ..Script::default()
    });
    let out = c.run(&[
        "deploy",
        "shop",
        "--image",
        "acme/shop:2",
        "--env",
        "prod",
        "--canary",
        "1",
        "--canary-manual",
        "--wait",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("[12:00:04] canary batch done; continue with `flotilla promote d1`"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("flotilla promote d1 --wait"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn refusals_exit_6_unknown_ids_and_bad_tokens_exit_1() {
    let c = Coordinator::start(Script {
        create: Some(Err(Status::failed_precondition(
            "deployment d0 of shop in prod is still in progress; pass --queue to wait for it",
        ))),
        last: deployment("running", vec![]),
        ..Script::default()
    });
    let out = c.run(&["deploy", "shop", "--image", "acme/shop:2", "--env", "prod"]);
    assert_eq!(out.status.code(), Some(6));
    assert!(
        stderr(&out).contains("error: refused: deployment d0 of shop in prod is still in progress"),
        "{}",
        stderr(&out)
    );
    let out = c.run(&["status", "d9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no deployment d9"),
        "{}",
        stderr(&out)
    );

    let mut cmd = c.cli(&["status", "d1"]);
    cmd.env("FLOTILLA_TOKEN", "flt_wrong");
    let out = run(cmd);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("authentication failed"),
        "{}",
        stderr(&out)
    );
    // Never echoed.
    assert!(!stderr(&out).contains("flt_wrong"));

    // A usage error costs no connection.
    let out = c.run(&[
        "deploy", "shop", "--image", "i", "--env", "prod", "--batch", "0%",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(c.seen.lock().unwrap().create.len() == 1);
}

#[test]
fn ping_exits_3_when_a_host_did_not_answer() {
    let c = Coordinator::start(Script {
        ping: Some(pb::PingResponse {
            hosts: vec![
                pb::HostPing {
                    host_id: "web-1".into(),
                    ok: true,
                    rtt_us: 2_500,
                    error: String::new(),
                },
                pb::HostPing {
                    host_id: "web-2".into(),
                    ok: false,
                    rtt_us: 0,
                    error: "no answer within 5s".into(),
                },
            ],
            total_us: 5_001_000,
        }),
        ..Script::default()
    });
    let out = c.run(&["ping", "--env", "prod", "--output", "json"]);
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], 1);
    assert_eq!(v["failed"], 1);
    assert_eq!(v["hosts"][0]["rtt_ms"], 2.5);
    let out = c.run(&["ping", "--env", "prod"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stdout(&out).contains("1/2 hosts answered in 5001.0 ms"),
        "{}",
        stdout(&out)
    );
}

/// Serves the rollback scenario slowly for a minute and prints how to point
/// the CLI at it, to look at the live view in a terminal:
/// `cargo test -p flotilla-cli --test coordinator -- --ignored --nocapture serve_slowly`
#[test]
#[ignore = "manual: look at the live view"]
fn serve_slowly() {
    let c = Coordinator::start(Script {
        delay: Duration::from_millis(700),
        break_after: None,
        unavailable_once: false,
        ..rolled_back_script()
    });
    std::fs::write(
        "/tmp/flotilla-fake.env",
        format!(
            "export FLOTILLA_SERVER={} FLOTILLA_CA_CERT={} FLOTILLA_TOKEN={TOKEN}\n",
            c.url,
            c.dir.path().join("ca.pem").display()
        ),
    )
    .unwrap();
    println!("source /tmp/flotilla-fake.env");
    std::thread::sleep(Duration::from_secs(60));
}
