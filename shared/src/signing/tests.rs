use super::*;

const NOW: i64 = 1_800_000_000_000;

struct Case {
    name: &'static str,
    /// Mutates a valid envelope before signing.
    envelope: fn(&mut pb::CommandEnvelope),
    /// Mutates the signed command after signing.
    signed: fn(&mut pb::SignedCommand),
    sign_with_other_key: bool,
    already_seen: bool,
    expected: Option<RefusalReason>,
}

const fn case(name: &'static str, expected: Option<RefusalReason>) -> Case {
    Case {
        name,
        envelope: |_| {},
        signed: |_| {},
        sign_with_other_key: false,
        already_seen: false,
        expected,
    }
}

fn valid_envelope() -> pb::CommandEnvelope {
    pb::CommandEnvelope {
        command_id: "0190c5a2-0000-7000-8000-000000000001".into(),
        host_id: "web-1".into(),
        deployment_id: "d-1".into(),
        issued_at_ms: NOW - 1_000,
        expires_at_ms: NOW + 600_000,
        nonce: vec![7; 16],
        action: Some(
            Action::Deploy {
                health: None,
                app: AppName::parse("web").unwrap(),
                image: ImageRef::parse("nginx:1.27").unwrap(),
            }
            .to_proto(),
        ),
    }
}

#[test]
fn verification_refuses_every_bad_case() {
    use RefusalReason::*;
    let cases = [
        case("valid command", None),
        Case {
            signed: |s| s.signature[0] ^= 1,
            ..case("flipped signature bit", Some(BadSignature))
        },
        Case {
            signed: |s| s.envelope[3] ^= 1,
            ..case("tampered envelope", Some(BadSignature))
        },
        Case {
            signed: |s| s.signature.truncate(10),
            ..case("short signature", Some(BadSignature))
        },
        Case {
            sign_with_other_key: true,
            signed: |_| {},
            ..case("signed by an untrusted key", Some(UnknownKey))
        },
        Case {
            signed: |s| s.key_id = "0000000000000000".into(),
            ..case("unknown key id", Some(UnknownKey))
        },
        Case {
            envelope: |e| e.host_id = "web-2".into(),
            ..case("other host", Some(WrongHost))
        },
        Case {
            envelope: |e| e.expires_at_ms = NOW - 1,
            ..case("expired", Some(Expired))
        },
        Case {
            envelope: |e| e.expires_at_ms = NOW,
            ..case("expires exactly now", Some(Expired))
        },
        Case {
            envelope: |e| {
                e.issued_at_ms = NOW + 61_000;
                e.expires_at_ms = NOW + 600_000;
            },
            ..case("issued beyond the clock skew", Some(FromTheFuture))
        },
        Case {
            envelope: |e| {
                e.issued_at_ms = NOW + 59_000;
            },
            ..case("issued within the clock skew", None)
        },
        Case {
            envelope: |e| e.expires_at_ms = e.issued_at_ms + 25 * 3600 * 1000,
            ..case("lifetime too long", Some(Malformed))
        },
        Case {
            already_seen: true,
            ..case("replayed command id", Some(Replayed))
        },
        Case {
            already_seen: true,
            envelope: |e| e.expires_at_ms = NOW - 1,
            ..case("replayed after expiry is still a replay", Some(Replayed))
        },
        Case {
            envelope: |e| e.nonce = vec![0; MAX_ENVELOPE_BYTES],
            ..case("oversized envelope", Some(Oversized))
        },
        Case {
            envelope: |e| e.action = None,
            ..case("no action", Some(Malformed))
        },
        Case {
            envelope: |e| {
                e.action = Some(pb::Action {
                    kind: Some(pb::action::Kind::Deploy(pb::DeployAction {
                        app: "web;rm -rf /".into(),
                        image: "nginx".into(),
                        health: None,
                    })),
                })
            },
            ..case("app name injection", Some(Malformed))
        },
        Case {
            envelope: |e| {
                e.action = Some(pb::Action {
                    kind: Some(pb::action::Kind::Deploy(pb::DeployAction {
                        app: "web".into(),
                        image: "--build-dir=/etc".into(),
                        health: None,
                    })),
                })
            },
            ..case("image flag injection", Some(Malformed))
        },
        Case {
            envelope: |e| {
                e.action = Some(pb::Action {
                    kind: Some(pb::action::Kind::Deploy(pb::DeployAction {
                        app: "web".into(),
                        image: "nginx".into(),
                        health: Some(pb::HealthCheck {
                            url_template: "file:///etc/passwd".into(),
                            ..Default::default()
                        }),
                    })),
                })
            },
            ..case("health check with a non-HTTP URL", Some(Malformed))
        },
        Case {
            envelope: |e| e.command_id = String::new(),
            ..case("empty command id", Some(Malformed))
        },
        Case {
            signed: |s| {
                // A valid signature over bytes that are not an envelope.
                s.envelope = vec![0xff, 0xff, 0xff];
            },
            ..case(
                "garbage envelope (signature no longer matches)",
                Some(BadSignature),
            )
        },
    ];

    let signer = CommandSigner::generate().unwrap();
    let other = CommandSigner::generate().unwrap();
    let mut keys = TrustedKeys::default();
    keys.insert(signer.verifying_key());
    let host = HostId::parse("web-1").unwrap();

    for c in cases {
        let mut envelope = valid_envelope();
        (c.envelope)(&mut envelope);
        let mut signed = if c.sign_with_other_key {
            other.sign(&envelope)
        } else {
            signer.sign(&envelope)
        };
        (c.signed)(&mut signed);
        let seen = |_: &str| c.already_seen;
        let result = verify(&signed, &keys, &host, NOW, VerifyPolicy::default(), &seen);
        match (c.expected, result) {
            (None, Ok(cmd)) => assert_eq!(cmd.command_id, envelope.command_id, "{}", c.name),
            (Some(want), Err(refusal)) => {
                assert_eq!(refusal.reason, want, "{}: {refusal}", c.name)
            }
            (want, got) => panic!("{}: expected {want:?}, got {got:?}", c.name),
        }
    }
}

#[test]
fn garbage_signed_by_a_trusted_key_is_malformed() {
    let signer = CommandSigner::generate().unwrap();
    let mut keys = TrustedKeys::default();
    keys.insert(signer.verifying_key());
    let bytes = vec![0xff, 0xff, 0xff];
    let signed = pb::SignedCommand {
        signature: signer.key.sign(&bytes).to_bytes().to_vec(),
        envelope: bytes,
        key_id: signer.key_id().to_string(),
    };
    let host = HostId::parse("web-1").unwrap();
    let err = verify(&signed, &keys, &host, NOW, VerifyPolicy::default(), &|_| {
        false
    })
    .unwrap_err();
    assert_eq!(err.reason, RefusalReason::Malformed);
}

#[test]
fn replay_check_runs_only_after_the_signature_holds() {
    let signer = CommandSigner::generate().unwrap();
    let keys = TrustedKeys::default(); // trusts nothing
    let signed = signer.sign(&valid_envelope());
    let host = HostId::parse("web-1").unwrap();
    let asked = std::cell::Cell::new(false);
    let seen = |_: &str| {
        asked.set(true);
        false
    };
    let err = verify(&signed, &keys, &host, NOW, VerifyPolicy::default(), &seen).unwrap_err();
    assert_eq!(err.reason, RefusalReason::UnknownKey);
    assert!(!asked.get());
}

#[test]
fn pkcs8_pem_round_trips_and_reads_openssl_output() {
    let signer = CommandSigner::generate().unwrap();
    let pem = signer.to_pkcs8_pem().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let again = CommandSigner::from_pkcs8_pem(&pem).unwrap();
    assert_eq!(again.key_id(), signer.key_id());

    // `openssl genpkey -algorithm ed25519` output (PKCS#8 v1, no public key).
    let openssl = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
    let from_openssl = CommandSigner::from_pkcs8_pem(openssl).unwrap();
    // RFC 8410 §10.3 test vector: this private key's public key.
    assert_eq!(
        hex::encode(from_openssl.verifying_key().as_bytes()),
        "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1"
    );
    assert!(CommandSigner::from_pkcs8_pem("not a key").is_err());
    assert!(!format!("{signer:?}").contains(&pem));
}

#[test]
fn key_sets_need_a_signature_from_a_trusted_key() {
    let old = CommandSigner::generate().unwrap();
    let new = CommandSigner::generate().unwrap();
    let rogue = CommandSigner::generate().unwrap();
    let mut trusted = TrustedKeys::default();
    trusted.insert(old.verifying_key());

    // Rotation: the new set is signed by the new key and the old one.
    let update = sign_key_set(
        &[new.verifying_key(), old.verifying_key()],
        NOW,
        &[&new, &old],
    );
    let set = verify_key_set(&update, &trusted).unwrap();
    assert_eq!(set.issued_at_ms, NOW);
    assert!(set.keys.get(new.key_id().as_str()).is_some());
    assert!(set.keys.get(old.key_id().as_str()).is_some());

    // Signed only by keys the agent does not trust: refused.
    let update = sign_key_set(&[rogue.verifying_key()], NOW, &[&rogue, &new]);
    assert_eq!(
        verify_key_set(&update, &trusted).unwrap_err(),
        KeySetError::Untrusted
    );

    // A signature claiming a trusted key id but made by another key: refused.
    let mut update = sign_key_set(&[rogue.verifying_key()], NOW, &[&rogue]);
    update.signatures[0].key_id = old.key_id().to_string();
    assert_eq!(
        verify_key_set(&update, &trusted).unwrap_err(),
        KeySetError::Untrusted
    );

    // A command-style signature over the bare set bytes (no context): refused.
    let mut update = sign_key_set(&[new.verifying_key()], NOW, &[&old]);
    update.signatures[0].signature = old.key.sign(&update.key_set).to_bytes().to_vec();
    assert_eq!(
        verify_key_set(&update, &trusted).unwrap_err(),
        KeySetError::Untrusted
    );

    // Tampered set bytes: refused.
    let mut update = sign_key_set(&[new.verifying_key()], NOW, &[&old]);
    update.key_set.push(0);
    assert!(verify_key_set(&update, &trusted).is_err());
}

fn converge_desired(app: &str) -> crate::appspec::DesiredState {
    let spec = format!(
        "app = \"{app}\"\n[env.prod]\ndomains = [\"{app}.example.com\"]\nsecret_keys = [\"API_KEY\"]\n"
    );
    crate::appspec::AppSpec::parse("t.toml", &spec)
        .unwrap()
        .desired(&crate::EnvName::parse("prod").unwrap())
        .unwrap()
}

fn verify_converge(action: pb::ConvergeAction) -> Result<VerifiedCommand, Refusal> {
    let signer = CommandSigner::generate().unwrap();
    let mut keys = TrustedKeys::default();
    keys.insert(signer.verifying_key());
    let mut envelope = valid_envelope();
    envelope.action = Some(pb::Action {
        kind: Some(pb::action::Kind::Converge(action)),
    });
    let signed = signer.sign(&envelope);
    verify(
        &signed,
        &keys,
        &HostId::parse("web-1").unwrap(),
        NOW,
        VerifyPolicy::default(),
        &|_| false,
    )
}

#[test]
fn converge_round_trips_and_never_debug_prints_a_secret() {
    let action = Action::Converge {
        app: AppName::parse("web").unwrap(),
        desired: Box::new(converge_desired("web")),
        secrets: [(
            crate::ConfigKey::parse("API_KEY").unwrap(),
            Secret::new("hunter2-value"),
        )]
        .into(),
        dry_run: true,
    };
    let pb::action::Kind::Converge(wire) = action.to_proto().kind.unwrap() else {
        panic!("not a converge");
    };
    let cmd = verify_converge(wire).unwrap();
    assert_eq!(cmd.action, action);
    assert_eq!(cmd.action.kind(), "diff");
    assert_eq!(cmd.action.secret_values(), ["hunter2-value"]);
    assert!(cmd.action.image().is_none() && cmd.action.install().is_none());
    let debug = format!("{cmd:?}");
    assert!(!debug.contains("hunter2-value"), "{debug}");
}

#[test]
fn converge_refuses_bad_desired_states_and_stray_secrets() {
    let good = || pb::ConvergeAction {
        app: "web".into(),
        desired: serde_json::to_vec(&converge_desired("web")).unwrap(),
        secrets: [("API_KEY".to_owned(), "hunter2-value".to_owned())].into(),
        dry_run: false,
    };
    assert!(verify_converge(good()).is_ok());
    type Mutate = fn(&mut pb::ConvergeAction);
    let cases: [(&str, Mutate); 7] = [
        ("bad app", |a| a.app = "web;ls".into()),
        ("desired for another app", |a| {
            a.desired = serde_json::to_vec(&converge_desired("other")).unwrap();
        }),
        ("desired not JSON", |a| a.desired = b"{nope".to_vec()),
        ("desired too big", |a| {
            a.desired = vec![b' '; MAX_DESIRED_BYTES + 1]
        }),
        ("secret for a key not declared secret", |a| {
            a.secrets.insert("OTHER".into(), "hunter2-value".into());
        }),
        ("secret key invalid", |a| {
            a.secrets.insert("1BAD KEY".into(), "x".into());
        }),
        ("secret value too big", |a| {
            a.secrets
                .insert("API_KEY".into(), "x".repeat(MAX_SECRET_BYTES + 1));
        }),
    ];
    for (name, mutate) in cases {
        let mut action = good();
        mutate(&mut action);
        let refusal = verify_converge(action).unwrap_err();
        assert_eq!(
            refusal.reason,
            RefusalReason::Malformed,
            "{name}: {refusal}"
        );
        assert!(
            !refusal.detail.contains("hunter2-value"),
            "{name}: {refusal}"
        );
    }
}
