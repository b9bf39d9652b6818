//! Trust: join tokens, signing keys, API roles, client certificates, revocation.

use flotilla_tests::{Host, Server, text};

use crate::{deploy_start, host_error};
use crate::{deploy_wait, fleet};

#[test]
fn join_tokens_are_single_use_and_host_ids_unique() {
    let f = fleet(1);
    let s = &f.server;
    let token = s.join_token().unwrap();
    let (_, out) = Host::join_with(f.root.path(), s, &token, "web-2", "prod").unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let (_, out) = Host::join_with(f.root.path(), s, &token, "web-3", "prod").unwrap();
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains("join token was already used by host web-2"),
        "{msg}"
    );

    let fresh = s.join_token().unwrap();
    let (_, out) = Host::join_with(f.root.path(), s, &fresh, "web-1", "prod").unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("host id web-1 is already registered"),
        "{}",
        text(&out)
    );
    // That refusal did not burn the token.
    let (_, out) = Host::join_with(f.root.path(), s, &fresh, "web-4", "prod").unwrap();
    assert!(out.status.success(), "{}", text(&out));

    let (_, out) = Host::join_with(f.root.path(), s, "fltjoin1.nonsense", "web-5", "prod").unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not a Flotilla join token"),
        "{}",
        text(&out)
    );

    let hosts = s.json(&["hosts"]).unwrap();
    let ids: Vec<&str> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["web-1", "web-2", "web-4"]);
    let web1 = &hosts[0];
    assert_eq!(web1["connected"], true);
    assert_eq!(web1["env"], "prod");
    assert!(
        web1["last_seen"].is_string()
            && web1["agent_version"].is_string()
            && web1["labels"].is_object()
    );
    assert_eq!(hosts[1]["connected"], false);
}

#[test]
fn a_coordinator_with_another_signing_key_cannot_make_an_agent_run_anything() {
    let mut f = fleet(1);
    let (ok, _) = deploy_wait(&f.server, "shop", "acme/shop:1");
    assert!(ok);

    // Restart the coordinator (same CA and TLS) with a key the agent never pinned.
    let rogue = f.root.path().join("rogue.key");
    let signer = flotilla_shared::signing::CommandSigner::generate().unwrap();
    std::fs::write(&rogue, signer.to_pkcs8_pem().unwrap()).unwrap();
    f.restart_server(&["--signing-key", rogue.to_str().unwrap()]);

    let (ok, status) = deploy_wait(&f.server, "shop", "acme/shop:2");
    assert!(!ok);
    let error = host_error(&status, 0);
    assert!(
        error.contains("refused by the agent: unknown signing key"),
        "{error}"
    );
    f.agents[0].log.wait_for("command refused").unwrap();
    assert_eq!(
        f.hosts[0]
            .invocations(&["git:from-image", "shop", "acme/shop:2"])
            .unwrap(),
        0
    );
    assert_eq!(f.hosts[0].deployed_image("shop").unwrap(), "acme/shop:1");
}

#[test]
fn api_tokens_have_roles() {
    let f = fleet(1);
    let s = &f.server;
    let token = |role: &str| {
        let out = s
            .cli(&[
                "token",
                "create",
                "--role",
                role,
                "--name",
                &format!("{role}-t"),
            ])
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let viewer = token("viewer");
    let deployer = token("deployer");

    let out = flotilla_tests::run(s.cli_as(&viewer, &["hosts"])).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = flotilla_tests::run(s.cli_as(
        &viewer,
        &["deploy", "app", "--image", "a/b:1", "--env", "prod"],
    ))
    .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out)
            .contains("permission denied: token \"viewer-t\" has role viewer; this needs deployer"),
        "{}",
        text(&out)
    );

    let out = flotilla_tests::run(s.cli_as(
        &deployer,
        &[
            "deploy", "app", "--image", "a/b:1", "--env", "prod", "--wait",
        ],
    ))
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out =
        flotilla_tests::run(s.cli_as(&deployer, &["token", "create", "--role", "admin"])).unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("this needs admin"), "{}", text(&out));

    // A scoped token deploys only its apps, in its environments.
    let out = s
        .cli(&[
            "token",
            "create",
            "--role",
            "deployer",
            "--name",
            "team-shop",
            "--apps",
            "shop",
            "--envs",
            "prod",
        ])
        .unwrap();
    let scoped = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = flotilla_tests::run(s.cli_as(
        &scoped,
        &[
            "deploy", "shop", "--image", "a/shop:1", "--env", "prod", "--wait",
        ],
    ))
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = flotilla_tests::run(s.cli_as(
        &scoped,
        &["deploy", "blog", "--image", "a/blog:1", "--env", "prod"],
    ))
    .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out)
            .contains("scoped to apps [shop] in environments [prod]; blog in prod is outside it"),
        "{}",
        text(&out)
    );
    // Scopes apply to reads too: an admin's blog deployment is invisible to it.
    assert!(deploy_wait(s, "blog", "a/blog:1").0);
    let blog = s.json(&["deployments", "--app", "blog"]).unwrap();
    let blog_id = blog[0]["id"].as_str().unwrap().to_owned();
    let out = flotilla_tests::run(s.cli_as(&scoped, &["status", &blog_id])).unwrap();
    assert!(
        text(&out).contains("blog in prod is outside it"),
        "{}",
        text(&out)
    );
    let out = flotilla_tests::run(s.cli_as(&scoped, &["deployments", "--output", "json"])).unwrap();
    let visible: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        visible
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["app"] == "shop"),
        "{visible}"
    );

    // Every mutating call is audited, refused attempts included.
    let audit = s.json(&["audit"]).unwrap();
    let rows: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {} {}",
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["outcome"].as_str().unwrap()
            )
        })
        .collect();
    let has = |needle: &str| rows.iter().any(|r| r.contains(needle));
    assert!(has("viewer-t deploy PermissionDenied"), "{rows:#?}");
    assert!(
        has("deployer-t create-api-token PermissionDenied"),
        "{rows:#?}"
    );
    assert!(has("deployer-t deploy ok"), "{rows:#?}");
    assert!(has("team-shop deploy PermissionDenied"), "{rows:#?}");
    assert!(has("admin create-api-token ok"), "{rows:#?}");
    assert!(
        !audit.to_string().contains(&deployer),
        "the audit log must not hold token secrets"
    );

    // Tokens can be listed (never their secrets) and revoked.
    let tokens = s.json(&["token", "list"]).unwrap();
    assert!(!tokens.to_string().contains(&viewer));
    let id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "viewer-t")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = s.cli(&["token", "revoke", &id]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let out = flotilla_tests::run(s.cli_as(&viewer, &["hosts"])).unwrap();
    assert!(
        text(&out).contains("authentication failed: invalid API token"),
        "{}",
        text(&out)
    );
    let admin_id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "admin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let out = s.cli(&["token", "revoke", &admin_id]).unwrap();
    assert!(text(&out).contains("last admin token"), "{}", text(&out));

    let out = flotilla_tests::run(s.cli_as("flt_wrong", &["hosts"])).unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("authentication failed: invalid API token"),
        "{}",
        text(&out)
    );

    // Bad input is refused with the rule, never reaching an agent.
    let out = s
        .cli(&[
            "deploy",
            "app;rm -rf /",
            "--image",
            "a/b:1",
            "--env",
            "prod",
        ])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("app name \"app;rm -rf /\" is invalid"),
        "{}",
        text(&out)
    );
    // A flag smuggled in as the image reaches the coordinator and is refused there.
    let out = s
        .cli(&["deploy", "app", "--image=--build-dir=/", "--env", "prod"])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("image reference \"--build-dir=/\" is invalid"),
        "{}",
        text(&out)
    );
}

#[test]
fn revoked_hosts_are_disconnected_and_refused() {
    let f = fleet(1);
    let s = &f.server;
    // A deploy in flight on the host when it is revoked fails (no result can come).
    let id = deploy_start(s, "x", "a/x:hang");
    f.agents[0].log.wait_for("command accepted").unwrap();
    let out = s.cli(&["revoke", "web-1"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    f.agents[0]
        .log
        .wait_for("host web-1 has been revoked")
        .unwrap();
    let status = s.json(&["status", &id]).unwrap();
    assert_eq!(status["state"], "failed", "{status}");
    assert!(host_error(&status, 0).contains("revoked"), "{status}");
    std::fs::write(f.hosts[0].dokku_root.join(".fake-dokku/release"), "").unwrap();
    let hosts = s.json(&["hosts"]).unwrap();
    assert_eq!(hosts[0]["revoked"], true);
    assert_eq!(hosts[0]["connected"], false);
    let out = s
        .cli(&["deploy", "x", "--image", "a/b:1", "--env", "prod"])
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out).contains("environment prod has no hosts"),
        "{}",
        text(&out)
    );
}

#[test]
fn session_needs_a_client_certificate_from_the_coordinators_ca() {
    use flotilla_proto::v1 as pb;
    use flotilla_proto::v1::agent_service_client::AgentServiceClient;

    let f = fleet(0);
    let ca_pem = std::fs::read(f.server.data_dir.join("ca.pem")).unwrap();

    // A CA of our own, and a client certificate for a plausible host id.
    let other_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = rcgen::CertifiedIssuer::self_signed(ca_params, other_key).unwrap();
    let client_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["web-1".to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = params.signed_by(&client_key, &other_ca).unwrap();

    flotilla_shared::tls::install_crypto_provider();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let session = |identity: Option<(&[u8], &[u8])>| {
        rt.block_on(async {
            let tls = flotilla_shared::tls::client_config(&ca_pem, "localhost", identity);
            let channel = tonic::transport::Channel::from_shared(f.server.url())
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await;
            // Under TLS 1.3 a refused client certificate may surface at connect or at the first RPC.
            let channel = match channel {
                Ok(c) => c,
                Err(e) => return Err(format!("connect: {e:?}")),
            };
            let hello = pb::AgentMessage {
                msg: Some(pb::agent_message::Msg::Hello(pb::Hello::default())),
            };
            AgentServiceClient::new(channel)
                .session(tokio_stream::iter(vec![hello]))
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        })
    };

    let cert_pem = client_cert.pem();
    let key_pem = client_key.serialize_pem();
    let err = session(Some((cert_pem.as_bytes(), key_pem.as_bytes()))).unwrap_err();
    // Refused by rustls during the handshake (UnknownCA), so no RPC status
    // from the coordinator's code ever comes back.
    assert!(
        !err.contains("not registered")
            && !err.contains("Unauthenticated")
            && !err.contains("revoked"),
        "the handshake itself must refuse it, before any of our checks: {err}"
    );
    // At the TLS level: the coordinator answers that certificate with a fatal
    // alert (under TLS 1.3 the client sees it on its first read).
    let alert = rt.block_on(async {
        use rustls_pki_types::pem::PemObject as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&ca_pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        let chain = vec![client_cert.der().clone()];
        let key =
            rustls_pki_types::PrivateKeyDer::from_pem_slice(client_key.serialize_pem().as_bytes())
                .unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
        let tcp = tokio::net::TcpStream::connect(&f.server.addr)
            .await
            .unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = match tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
        {
            Ok(tls) => tls,
            Err(e) => return e.to_string(),
        };
        let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buf = [0u8; 64];
        match tls.read(&mut buf).await {
            Ok(n) => format!("read {n} bytes"),
            Err(e) => e.to_string(),
        }
    });
    assert!(alert.contains("UnknownCA"), "{alert}");

    let err = session(None).unwrap_err();
    assert!(
        err.contains("Unauthenticated") && err.contains("client certificate"),
        "{err}"
    );
}

#[test]
fn signing_keys_rotate_through_a_key_set_signed_by_the_old_key() {
    let mut f = fleet(1);
    let (ok, _) = deploy_wait(&f.server, "shop", "acme/shop:1");
    assert!(ok);
    let old_key = f.server.data_dir.join("signing.key");
    let new_key = f.root.path().join("new.key");
    let new = flotilla_shared::signing::CommandSigner::generate().unwrap();
    std::fs::write(&new_key, new.to_pkcs8_pem().unwrap()).unwrap();

    // Step 1: sign with the new key, vouched for by the old one.
    let before = f.restart_server(&[
        "--signing-key",
        new_key.to_str().unwrap(),
        "--previous-signing-key",
        old_key.to_str().unwrap(),
    ]);
    f.agents[0]
        .log
        .wait_for_from("command-verification keys updated", before)
        .unwrap();
    let (ok, status) = deploy_wait(&f.server, "shop", "acme/shop:2");
    assert!(ok, "{status}");
    let trusted = std::fs::read_to_string(f.hosts[0].agent_dir.join("trusted-keys.json")).unwrap();
    assert!(trusted.contains(new.key_id().as_str()), "{trusted}");

    // Step 2: drop the old key; agents now trust only the new one.
    let before = f.restart_server(&["--signing-key", new_key.to_str().unwrap()]);
    f.agents[0]
        .log
        .wait_for_from("command-verification keys updated", before)
        .unwrap();
    let (ok, _) = deploy_wait(&f.server, "shop", "acme/shop:3");
    assert!(ok);

    // The retired key no longer makes anything run.
    f.restart_server(&[]);
    let (ok, status) = deploy_wait(&f.server, "shop", "acme/shop:4");
    assert!(!ok);
    assert!(
        host_error(&status, 0).contains("unknown signing key"),
        "{status}"
    );
    assert_eq!(f.hosts[0].deployed_image("shop").unwrap(), "acme/shop:3");
}

#[test]
fn agents_renew_their_client_certificate_before_it_expires() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut f = fleet(1);
    let path = f.hosts[0].agent_dir.join("identity.pem");
    let before = std::fs::read_to_string(&path).unwrap();

    // Make the 90-day certificate "due" by asking for renewal 10 years ahead.
    f.agents[0].terminate().unwrap();
    f.agents[0] = f.hosts[0]
        .start_with(&["--renew-before", "3650days"])
        .unwrap();
    f.agents[0]
        .log
        .wait_for("client certificate renewed")
        .unwrap();
    let after = std::fs::read_to_string(&path).unwrap();
    assert_ne!(before, after);
    assert!(after.contains("BEGIN CERTIFICATE") && after.contains("PRIVATE KEY"));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The renewed identity is the one used from now on.
    f.agents[0].terminate().unwrap();
    f.agents[0] = f.hosts[0].start().unwrap();
    let (ok, _) = deploy_wait(&f.server, "shop", "acme/shop:1");
    assert!(ok);
    let audit = f.server.json(&["audit"]).unwrap().to_string();
    assert!(audit.contains("renew-certificate"), "{audit}");
}

#[test]
fn init_refuses_an_initialised_directory_and_serve_takes_an_openssl_key() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    for file in ["ca.pem", "signing.key", "admin.token"] {
        assert!(data_dir.join(file).is_file(), "{file}");
    }
    let mode = |f: &str| {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(data_dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("admin.token"), 0o600);
    assert_eq!(mode("signing.key"), 0o600);
    assert_eq!(mode("ca.key"), 0o600);
    let err = Server::init(root.path()).unwrap_err().to_string();
    assert!(
        err.contains("already initialised") && err.contains("refusing to overwrite"),
        "{err}"
    );

    // A key from `openssl genpkey -algorithm ed25519` is a valid signing key.
    let key = root.path().join("openssl.key");
    let status = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .status()
        .expect("openssl is needed for this test (apt-get install openssl)");
    assert!(status.success());
    let expected = flotilla_shared::signing::CommandSigner::from_pkcs8_pem(
        &std::fs::read_to_string(&key).unwrap(),
    )
    .unwrap();
    let server = Server::start(
        &data_dir,
        "127.0.0.1:0",
        &["--signing-key", key.to_str().unwrap()],
    )
    .unwrap();
    server
        .proc
        .log
        .wait_for(&format!("key_id={}", expected.key_id()))
        .unwrap();
}

#[test]
fn a_host_revoked_while_waiting_its_turn_fails_the_deployment_when_reached() {
    let f = fleet(2);
    let s = &f.server;
    let id = deploy_start(s, "shop", "acme/shop:1-hang");
    f.agents[0].log.wait_for("command accepted").unwrap();
    let out = s.cli(&["revoke", "web-2"]).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::write(f.hosts[0].dokku_root.join(".fake-dokku/release"), "").unwrap();
    let out = s.cli(&["logs", &id, "--follow"]).unwrap();
    assert!(out.status.success());
    let status = s.json(&["status", &id]).unwrap();
    assert_eq!(status["state"], "failed", "{status}");
    assert_eq!(status["hosts"][0]["state"], "succeeded", "{status}");
    assert_eq!(host_error(&status, 1), "the host was revoked");
}
