//! The required-keys deploy gate through the real `FleetService` of an in-process coordinator
//! (`run` on 127.0.0.1:0): the keys an app spec requires (recorded in the store with
//! `set_required_keys`, as `app apply` does) must have values before a deploy is accepted.

// A test: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::fleet_service_client::FleetServiceClient;
use flotilla_server::pki::{self, DataDir};
use flotilla_server::store::Store;
use flotilla_server::{ServeConfig, run};
use flotilla_shared::{AppName, ConfigKey, EnvName};
use tonic::transport::Channel;

fn authed<T>(token: &str, msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

fn deploy(env: &str) -> pb::CreateDeploymentRequest {
    pb::CreateDeploymentRequest {
        app: "web".into(),
        env: env.into(),
        image: "acme/web:1".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn deploy_is_refused_until_required_keys_are_set() {
    flotilla_shared::tls::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let data = DataDir::new(dir.path().join("server"));
    pki::init(&data, &[]).unwrap();
    {
        let store = Store::open(&data.state()).unwrap();
        let required: BTreeSet<ConfigKey> = ["DATABASE_URL", "SECRET_KEY_BASE"]
            .into_iter()
            .map(|k| ConfigKey::parse(k).unwrap())
            .collect();
        let app = AppName::parse("web").unwrap();
        store
            .set_required_keys(&app, &EnvName::parse("production").unwrap(), &required)
            .unwrap();
        store.db_flush_blocking().unwrap();
    }
    let token = std::fs::read_to_string(data.admin_token()).unwrap();
    let token = token.trim();
    let ca = std::fs::read(data.ca_cert()).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(ServeConfig::new(data.clone()), listener, async move {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(flotilla_shared::tls::client_config(&ca, "127.0.0.1", None))
        .unwrap()
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let mut client = FleetServiceClient::new(channel);

    // Both keys missing: refused, naming them.
    let err = client
        .create_deployment(authed(token, deploy("production")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert_eq!(
        err.message(),
        "cannot deploy web to production: required config keys missing: DATABASE_URL, SECRET_KEY_BASE (set them with `flotilla config set web --env production KEY=VALUE`, add --secret for secrets)"
    );
    // The keys the list shows as missing.
    let list = client
        .list_config(authed(
            token,
            pb::ListConfigRequest {
                app: "web".into(),
                env: "production".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.missing, vec!["DATABASE_URL", "SECRET_KEY_BASE"]);

    // A secret counts as present; staging values do not count for production.
    let set = |env: &str, key: &str, secret: bool| {
        authed(
            token,
            pb::SetConfigRequest {
                app: "web".into(),
                env: env.into(),
                values: vec![pb::ConfigValue {
                    key: key.into(),
                    value: "v4lue-of-the-test".into(),
                    secret,
                }],
            },
        )
    };
    client
        .set_config(set("production", "SECRET_KEY_BASE", true))
        .await
        .unwrap();
    client
        .set_config(set("staging", "DATABASE_URL", false))
        .await
        .unwrap();
    let err = client
        .create_deployment(authed(token, deploy("production")))
        .await
        .unwrap_err();
    assert!(
        err.message().ends_with("required config keys missing: DATABASE_URL (set them with `flotilla config set web --env production KEY=VALUE`, add --secret for secrets)"),
        "{err:?}"
    );

    // All set: the gate lets it through (and it fails later, for want of hosts).
    client
        .set_config(set("production", "DATABASE_URL", false))
        .await
        .unwrap();
    let err = client
        .create_deployment(authed(token, deploy("production")))
        .await
        .unwrap_err();
    assert!(!err.message().contains("required config keys"), "{err:?}");
    // Staging has no required keys recorded.
    let err = client
        .create_deployment(authed(token, deploy("staging")))
        .await
        .unwrap_err();
    assert!(!err.message().contains("required config keys"), "{err:?}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
