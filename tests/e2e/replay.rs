//! "Never run twice", from the agent's side: a stand-in coordinator (same
//! address, certificate and signing key as the real one) sends the agent the
//! same signed command twice, and again after the agent restarts.

use std::sync::mpsc;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use flotilla_shared::signing::{Action, CommandSigner};
use flotilla_shared::{AppName, ImageRef};
use tonic::{Request, Response, Status, Streaming};

use crate::fleet;

/// Serves a `StandIn` on the coordinator's address with its TLS identity
/// (from `data_dir`), on `rt`: the agents connect to it as to the real one.
/// Returns the server task and the reports the agents send.
pub(crate) fn serve_stand_in(
    rt: &tokio::runtime::Runtime,
    data_dir: &std::path::Path,
    addr: &str,
    commands: Vec<pb::SignedCommand>,
) -> (
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    mpsc::Receiver<pb::Report>,
) {
    flotilla_shared::tls::install_crypto_provider();
    let (reports_tx, reports) = mpsc::channel();
    let stand_in = StandIn {
        commands,
        reports: reports_tx,
    };
    let tls = flotilla_shared::tls::server_config(
        &std::fs::read(data_dir.join("server.pem")).unwrap(),
        &std::fs::read(data_dir.join("server.key")).unwrap(),
        &std::fs::read(data_dir.join("ca.pem")).unwrap(),
    );
    let listener = rt.block_on(tokio::net::TcpListener::bind(addr)).unwrap();
    let server = rt.spawn(
        tonic::transport::Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(AgentServiceServer::new(stand_in))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (server, reports)
}

/// Sends `commands` at the start of every session and forwards every report.
pub(crate) struct StandIn {
    pub(crate) commands: Vec<pb::SignedCommand>,
    pub(crate) reports: mpsc::Sender<pb::Report>,
}

#[tonic::async_trait]
impl AgentService for StandIn {
    async fn join(
        &self,
        _: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    async fn renew(
        &self,
        _: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        Err(Status::unimplemented("stand-in"))
    }

    type SessionStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::CoordinatorMessage, Status>>;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        for command in &self.commands {
            let msg = pb::CoordinatorMessage {
                msg: Some(pb::coordinator_message::Msg::Command(command.clone())),
            };
            tx.send(Ok(msg))
                .await
                .map_err(|_| Status::internal("closed"))?;
        }
        let reports = self.reports.clone();
        let mut inbound = req.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                if let Some(pb::agent_message::Msg::Report(report)) = msg.msg {
                    let ack = pb::CoordinatorMessage {
                        msg: Some(pb::coordinator_message::Msg::Ack(pb::ReportAck {
                            up_to: report.spool_seq,
                        })),
                    };
                    let _ = reports.send(report);
                    if tx.send(Ok(ack)).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}

#[derive(Default, Debug)]
struct Seen {
    accepted: usize,
    replayed: usize,
    results: Vec<pb::CommandResult>,
}

/// Collects reports (by spool sequence, so re-sent ones count once) until
/// `done` holds.
fn collect(rx: &mpsc::Receiver<pb::Report>, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    let mut seqs = std::collections::HashSet::new();
    while !done(seen) {
        let report = rx
            .recv_timeout(flotilla_tests::WAIT)
            .unwrap_or_else(|_| panic!("no more reports; so far {seen:?}"));
        if !seqs.insert(report.spool_seq) {
            continue;
        }
        match report.body {
            Some(pb::report::Body::Accepted(_)) => seen.accepted += 1,
            Some(pb::report::Body::Refused(r))
                if r.reason == i32::from(pb::RefusalReason::Replayed) =>
            {
                seen.replayed += 1
            }
            Some(pb::report::Body::Refused(r)) => panic!("unexpected refusal: {r:?}"),
            Some(pb::report::Body::Result(r)) => seen.results.push(r),
            _ => {}
        }
    }
}

#[test]
fn the_same_signed_command_never_runs_twice_even_across_an_agent_restart() {
    let mut f = fleet(1);
    let data_dir = f.server.data_dir.clone();
    let addr = f.server.addr.clone();
    f.server.proc.terminate().unwrap();

    // One command, signed with the coordinator's own key.
    let signer = CommandSigner::from_pkcs8_pem(
        &std::fs::read_to_string(data_dir.join("signing.key")).unwrap(),
    )
    .unwrap();
    let now = flotilla_shared::time::now_ms();
    let command = signer.sign(&pb::CommandEnvelope {
        command_id: "replay-test-1".into(),
        host_id: "web-1".into(),
        deployment_id: "d-replay".into(),
        issued_at_ms: now,
        expires_at_ms: now + 600_000,
        nonce: vec![1; 16],
        action: Some(
            Action::Deploy {
                app: AppName::parse("shop").unwrap(),
                image: ImageRef::parse("acme/shop:1").unwrap(),
                health: None,
            }
            .to_proto(),
        ),
    });

    let rt = tokio::runtime::Runtime::new().unwrap();
    let (server, reports) = serve_stand_in(&rt, &data_dir, &addr, vec![command.clone(), command]);

    // First session: the command arrives twice; it runs once, the copy is a replay.
    let mut seen = Seen::default();
    collect(&reports, &mut seen, |s| {
        !s.results.is_empty() && s.replayed >= 1
    });
    assert_eq!(seen.accepted, 1, "{seen:?}");
    assert_eq!(
        seen.results[0].outcome,
        i32::from(pb::Outcome::Succeeded),
        "{seen:?}"
    );

    // The agent restarts and gets both copies again: two replays, nothing runs.
    f.agents[0].terminate().unwrap();
    f.agents[0] = f.hosts[0].start().unwrap();
    let mut again = Seen::default();
    collect(&reports, &mut again, |s| s.replayed >= 2);
    // Each copy was refused as a replay; an acceptance would have been
    // reported before the second refusal (reports keep their order).
    assert_eq!(again.accepted, 0, "{again:?}");
    assert_eq!(
        f.hosts[0]
            .invocations(&["git:from-image", "shop", "acme/shop:1"])
            .unwrap(),
        1
    );

    // Its session streams never end on their own: stop it without draining.
    server.abort();
    rt.shutdown_timeout(Duration::from_secs(5));
}
