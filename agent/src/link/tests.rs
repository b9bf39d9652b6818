//! What the session does with incoming commands: pings answered at once and
//! never recorded, deploys recorded and queued, refusals reported.

use flotilla_shared::signing::CommandSigner;
use flotilla_shared::{AppName, EnvName, HostId, ImageRef, Labels};

use super::*;
use crate::identity::AgentFile;

struct Fixture {
    ctx: Arc<Ctx>,
    signer: CommandSigner,
    work: mpsc::Receiver<VerifiedCommand>,
    work_tx: mpsc::Sender<VerifiedCommand>,
    session: mpsc::Receiver<pb::AgentMessage>,
    session_tx: mpsc::Sender<pb::AgentMessage>,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let signer = CommandSigner::generate().unwrap();
    let mut trusted = TrustedKeys::default();
    trusted.insert(signer.verifying_key());
    let identity = Identity {
        file: AgentFile {
            server: "https://127.0.0.1:1".into(),
            server_name: "127.0.0.1".into(),
            host_id: HostId::parse("web-1").unwrap(),
            env: EnvName::parse("prod").unwrap(),
            labels: Labels::default(),
        },
        identity_pem: Vec::new(),
        ca_pem: Vec::new(),
        trusted,
        keys_updated_at_ms: 0,
    };
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let config = crate::RunConfig::new(AgentDir::new(dir.path()));
    let ctx = Arc::new(Ctx::new(identity, spool, &config));
    let (work_tx, work) = mpsc::channel(4);
    let (session_tx, session) = mpsc::channel(4);
    Fixture {
        ctx,
        signer,
        work,
        work_tx,
        session,
        session_tx,
        _dir: dir,
    }
}

impl Fixture {
    fn sign(&self, command_id: &str, host: &str, action: Action) -> pb::SignedCommand {
        let now = now_ms();
        self.signer.sign(&pb::CommandEnvelope {
            command_id: command_id.into(),
            host_id: host.into(),
            deployment_id: "d-1".into(),
            issued_at_ms: now,
            expires_at_ms: now + 60_000,
            nonce: vec![7; 16],
            action: Some(action.to_proto()),
        })
    }

    async fn handle(&self, signed: &pb::SignedCommand) {
        handle_command(&self.ctx, &self.work_tx, &self.session_tx, signed)
            .await
            .unwrap();
    }

    fn spooled(&self) -> Vec<pb::Report> {
        self.ctx.spool.pending_after(None, 100).unwrap()
    }
}

#[tokio::test]
async fn a_verified_ping_is_answered_at_once_and_leaves_no_trace() {
    let mut f = fixture();
    let ping = f.sign("p-1", "web-1", Action::Ping);
    f.handle(&ping).await;
    let pong = f.session.try_recv().unwrap();
    assert_eq!(
        pong.msg,
        Some(pb::agent_message::Msg::Pong(pb::Pong {
            command_id: "p-1".into()
        }))
    );
    assert!(
        f.work.try_recv().is_err(),
        "a ping never reaches the worker"
    );
    assert!(f.spooled().is_empty(), "a ping is not spooled");
    assert!(!f.ctx.spool.seen("p-1"), "a ping is not remembered");
    // So the same ping again is answered again, not refused as a replay.
    f.handle(&ping).await;
    assert!(f.session.try_recv().is_ok());
    assert!(f.spooled().is_empty());
}

#[tokio::test]
async fn a_refused_ping_is_reported_like_any_refusal() {
    let mut f = fixture();
    let mut forged = f.sign("p-2", "web-1", Action::Ping);
    forged.signature[0] ^= 1;
    f.handle(&forged).await;
    let other_host = f.sign("p-3", "web-2", Action::Ping);
    f.handle(&other_host).await;
    assert!(f.session.try_recv().is_err(), "no pong for a refused ping");
    let reasons: Vec<_> = f
        .spooled()
        .into_iter()
        .map(|r| match r.body {
            Some(pb::report::Body::Refused(refused)) => (r.command_id, refused.reason()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("p-2".to_owned(), pb::RefusalReason::BadSignature),
            ("p-3".to_owned(), pb::RefusalReason::WrongHost),
        ]
    );
}

#[tokio::test]
async fn a_deploy_is_recorded_then_queued_and_never_answered_with_a_pong() {
    let mut f = fixture();
    let deploy = Action::Deploy {
        app: AppName::parse("shop").unwrap(),
        image: ImageRef::parse("acme/shop:1").unwrap(),
        health: None,
    };
    f.handle(&f.sign("c-1", "web-1", deploy.clone())).await;
    assert_eq!(f.work.try_recv().unwrap().action, deploy);
    assert!(f.session.try_recv().is_err());
    assert!(f.ctx.spool.seen("c-1"));
    assert!(matches!(
        f.spooled()[..],
        [pb::Report {
            body: Some(pb::report::Body::Accepted(_)),
            ..
        }]
    ));
}
