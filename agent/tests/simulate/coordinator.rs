//! A fake coordinator built from the generated `AgentService` server trait (as
//! linkerd tests its proxy against mock controllers): a throwaway CA, a
//! server certificate for 127.0.0.1, a multi-use join token, real mTLS
//! sessions. It records what agents send, acknowledges every report and lets
//! the test push signed commands to one host.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_service_server::{AgentService, AgentServiceServer};
use flotilla_shared::signing::{Action, CommandSigner};
use flotilla_shared::time::now_ms;
use flotilla_shared::token::JoinToken;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, IsCa, Issuer,
    KeyPair, SanType,
};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

/// What an agent did, in arrival order.
#[derive(Debug, Clone)]
pub enum Event {
    Joined(pb::JoinRequest),
    Connected(String),
    Report(String, pb::Report),
    Pong(String, String),
}

pub struct FakeCoordinator {
    pub url: String,
    pub token: String,
    pub signer: Arc<CommandSigner>,
    pub events: mpsc::UnboundedReceiver<Event>,
    sessions: Sessions,
    tasks: TaskTracker,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

type Sessions = Arc<Mutex<HashMap<String, mpsc::Sender<Result<pb::CoordinatorMessage, Status>>>>>;

struct Service {
    secret: String,
    uses_left: AtomicUsize,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    signer: Arc<CommandSigner>,
    events: mpsc::UnboundedSender<Event>,
    sessions: Sessions,
    /// The per-session readers.
    tasks: TaskTracker,
}

impl FakeCoordinator {
    /// Listens on 127.0.0.1 (a free port); the token allows `uses` joins.
    pub async fn start(uses: usize) -> Self {
        flotilla_shared::tls::install_crypto_provider();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Fake CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let chain = format!("{}{}", server_cert.pem(), ca_cert.pem());
        let secret = flotilla_shared::token::random_secret().unwrap();
        let token = JoinToken {
            secret: secret.clone(),
            ca_fingerprint: flotilla_shared::tls::fingerprint(ca_cert.der()),
        }
        .to_string();
        let signer = Arc::new(CommandSigner::generate().unwrap());
        let (events_tx, events) = mpsc::unbounded_channel();
        let sessions: Sessions = Arc::default();
        let tasks = TaskTracker::new();
        let service = Service {
            tasks: tasks.clone(),
            secret,
            uses_left: AtomicUsize::new(uses),
            issuer,
            ca_pem: ca_cert.pem(),
            signer: Arc::clone(&signer),
            events: events_tx,
            sessions: Arc::clone(&sessions),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let tls = flotilla_shared::tls::server_config(
            chain.as_bytes(),
            server_key.serialize_pem().as_bytes(),
            ca_cert.pem().as_bytes(),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .tls_config(tls)
                .unwrap()
                .add_service(AgentServiceServer::new(service))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await
                .unwrap();
        });
        Self {
            url,
            token,
            signer,
            events,
            sessions,
            tasks,
            stop: Some(stop),
            server,
        }
    }

    /// Signs `action` for `host` and sends it on the host's session.
    pub async fn send(&self, host: &str, command_id: &str, action: Action) -> pb::SignedCommand {
        let now = now_ms();
        let signed = self.signer.sign(&pb::CommandEnvelope {
            command_id: command_id.into(),
            host_id: host.into(),
            deployment_id: "d-1".into(),
            issued_at_ms: now,
            expires_at_ms: now + 60_000,
            nonce: command_id.as_bytes().to_vec(),
            action: Some(action.to_proto()),
        });
        self.resend(host, &signed).await;
        signed
    }

    /// Sends an already signed command again.
    pub async fn resend(&self, host: &str, signed: &pb::SignedCommand) {
        let tx = self.sessions.lock().unwrap().get(host).cloned();
        let msg = pb::CoordinatorMessage {
            msg: Some(pb::coordinator_message::Msg::Command(signed.clone())),
        };
        tx.expect("host has a session").send(Ok(msg)).await.unwrap();
    }

    /// The next event `pick` accepts (others are dropped), within 60 s.
    pub async fn next<T>(&mut self, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let event = self.events.recv().await.expect("coordinator running");
                if let Some(found) = pick(event) {
                    return found;
                }
            }
        })
        .await
        .expect("expected event within 60 s")
    }

    /// Stops the server (bounded) and ends every session.
    pub async fn stop(mut self) {
        self.sessions.lock().unwrap().clear();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(10), &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tasks.wait()).await;
    }
}

impl Drop for FakeCoordinator {
    fn drop(&mut self) {
        self.server.abort();
    }
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Service {
    async fn join(
        &self,
        req: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let req = req.into_inner();
        if req.token != self.secret
            || self
                .uses_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            return Err(Status::permission_denied("join token is not valid"));
        }
        let csr = CertificateSigningRequestParams::from_pem(&req.csr_pem)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::DnsName(req.host_id.clone().try_into().unwrap())];
        let cert = params.signed_by(&csr.public_key, &self.issuer).unwrap();
        let _ = self.events.send(Event::Joined(req));
        Ok(Response::new(pb::JoinResponse {
            certificate_pem: cert.pem(),
            ca_pem: self.ca_pem.clone(),
            verification_keys: vec![pb::VerificationKey {
                key_id: self.signer.key_id().to_string(),
                public_key: self.signer.verifying_key().as_bytes().to_vec(),
            }],
        }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        req: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("client certificate required"))?;
        let host = flotilla_shared::tls::host_id_from_cert(&certs[0])
            .map_err(|e| Status::unauthenticated(e.to_string()))?
            .to_string();
        let (tx, rx) = mpsc::channel(64);
        self.sessions
            .lock()
            .unwrap()
            .insert(host.clone(), tx.clone());
        let _ = self.events.send(Event::Connected(host.clone()));
        let mut inbound = req.into_inner();
        let events = self.events.clone();
        // Ends with the agent's stream; `stop` waits for it (bounded).
        self.tasks.spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                match msg.msg {
                    Some(pb::agent_message::Msg::Report(report)) => {
                        let ack = pb::CoordinatorMessage {
                            msg: Some(pb::coordinator_message::Msg::Ack(pb::ReportAck {
                                up_to: report.spool_seq,
                            })),
                        };
                        let _ = events.send(Event::Report(host.clone(), report));
                        if tx.send(Ok(ack)).await.is_err() {
                            return;
                        }
                    }
                    Some(pb::agent_message::Msg::Pong(pong)) => {
                        let _ = events.send(Event::Pong(host.clone(), pong.command_id));
                    }
                    _ => {}
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn renew(
        &self,
        _req: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        Err(Status::unimplemented("not in this fake"))
    }
}
