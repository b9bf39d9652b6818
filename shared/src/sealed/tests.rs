use std::os::unix::fs::PermissionsExt;

use super::*;

const PLAIN: &str = "sk_live_very-secret-value";

fn ring(lines: &[&str]) -> Keyring {
    Keyring::parse(&lines.join("\n"), "test").unwrap()
}

fn line(id: &str) -> String {
    Keyring::generate_line(id).unwrap()
}

fn aad() -> String {
    secret_aad(
        &AppName::parse("web").unwrap(),
        &EnvName::parse("production").unwrap(),
        &ConfigKey::parse("STRIPE_API_KEY").unwrap(),
    )
}

#[test]
fn round_trip_bytes_and_string() {
    let k = ring(&[&line("k1")]);
    let sealed = k.seal(PLAIN.as_bytes(), aad().as_bytes()).unwrap();
    assert_eq!(sealed.key_id().as_str(), "k1");
    assert_eq!(sealed.ciphertext().len(), PLAIN.len() + TAG_LEN);
    assert_eq!(k.open(&sealed, aad().as_bytes()).unwrap(), PLAIN.as_bytes());
    let from_bytes = Sealed::from_bytes(&sealed.to_bytes()).unwrap();
    assert_eq!(from_bytes, sealed);
    let text = sealed.encode();
    assert!(text.starts_with("fs1."));
    assert!(!text.contains(PLAIN));
    let decoded = Sealed::decode(&text).unwrap();
    assert_eq!(
        k.open_secret(&decoded, aad().as_bytes()).unwrap().expose(),
        PLAIN
    );
    // Fresh nonce each time.
    let again = k.seal(PLAIN.as_bytes(), aad().as_bytes()).unwrap();
    assert_ne!(again.nonce(), sealed.nonce());
    assert_ne!(again.ciphertext(), sealed.ciphertext());
}

#[test]
fn encoding_is_stable() {
    let sealed = Sealed {
        key_id: KeyId::parse("k1").unwrap(),
        nonce: [7; NONCE_LEN],
        ciphertext: vec![9; TAG_LEN + 1],
    };
    let bytes = sealed.to_bytes();
    assert_eq!(&bytes[..4], &[1, 2, b'k', b'1']);
    assert_eq!(&bytes[4..28], &[7; 24]);
    assert_eq!(bytes.len(), 4 + 24 + 17);
    assert_eq!(
        sealed.encode(),
        format!("fs1.{}", URL_SAFE_NO_PAD.encode(&bytes))
    );
}

#[test]
fn wrong_place_fails() {
    let k = ring(&[&line("k1")]);
    let sealed = k.seal(PLAIN.as_bytes(), aad().as_bytes()).unwrap();
    let other = secret_aad(
        &AppName::parse("web").unwrap(),
        &EnvName::parse("staging").unwrap(),
        &ConfigKey::parse("STRIPE_API_KEY").unwrap(),
    );
    let err = k.open(&sealed, other.as_bytes()).unwrap_err();
    assert_eq!(
        err,
        SealError::Open {
            key_id: "k1".into()
        }
    );
    assert!(err.to_string().contains("belongs to another place"));
}

#[test]
fn tampering_fails() {
    let k = ring(&[&line("k1")]);
    let sealed = k.seal(PLAIN.as_bytes(), aad().as_bytes()).unwrap();
    let mut bytes = sealed.to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let tampered = Sealed::from_bytes(&bytes).unwrap();
    assert!(matches!(
        k.open(&tampered, aad().as_bytes()),
        Err(SealError::Open { .. })
    ));
    let mut bytes = sealed.to_bytes();
    bytes[10] ^= 0x80; // in the nonce
    let tampered = Sealed::from_bytes(&bytes).unwrap();
    assert!(k.open(&tampered, aad().as_bytes()).is_err());
    // Malformed encodings.
    assert_eq!(
        Sealed::from_bytes(&[]).unwrap_err(),
        SealError::Malformed("empty")
    );
    assert_eq!(
        Sealed::from_bytes(&[2, 0]).unwrap_err(),
        SealError::Version(2)
    );
    assert_eq!(
        Sealed::from_bytes(&sealed.to_bytes()[..30]).unwrap_err(),
        SealError::Malformed("too short")
    );
    assert!(Sealed::decode("xyz").is_err());
    assert!(Sealed::decode("fs1.!!!").is_err());
}

#[test]
fn unknown_key_id_is_clear() {
    let old = ring(&[&line("2025-01")]);
    let sealed = old.seal(PLAIN.as_bytes(), aad().as_bytes()).unwrap();
    let new = ring(&[&line("2026-01"), &line("2025-06")]);
    let err = new.open(&sealed, aad().as_bytes()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "sealed with key \"2025-01\", which the keyring does not hold (it holds: 2026-01, 2025-06); put that key back in the key file to open it"
    );
    // A key with the same id but other bytes cannot open it either.
    let impostor = ring(&[&line("2025-01")]);
    assert!(matches!(
        impostor.open(&sealed, aad().as_bytes()),
        Err(SealError::Open { .. })
    ));
}

#[test]
fn rotation() {
    let old_line = line("k1");
    let before = ring(&[&old_line]);
    let sealed = before.seal(PLAIN.as_bytes(), aad().as_bytes()).unwrap();
    assert!(!before.needs_reseal(&sealed));

    let after = ring(&["# rotated", &line("k2"), "", &old_line]);
    assert_eq!(after.current_key_id().as_str(), "k2");
    assert_eq!(
        after.open(&sealed, aad().as_bytes()).unwrap(),
        PLAIN.as_bytes()
    );
    assert!(after.needs_reseal(&sealed));
    let fresh = after.seal(b"new", aad().as_bytes()).unwrap();
    assert_eq!(fresh.key_id().as_str(), "k2");
    assert!(!after.needs_reseal(&fresh));
    let resealed = after.reseal(&sealed, aad().as_bytes()).unwrap();
    assert_eq!(resealed.key_id().as_str(), "k2");
    assert!(!after.needs_reseal(&resealed));
    assert_eq!(
        after.open(&resealed, aad().as_bytes()).unwrap(),
        PLAIN.as_bytes()
    );
    // Once the old key is removed, only resealed values open.
    let new_line = line("k3");
    let rotated = ring(&[&new_line, &old_line]);
    let resealed = rotated.reseal(&sealed, aad().as_bytes()).unwrap();
    let old_removed = ring(&[&new_line]);
    assert_eq!(
        old_removed.open(&resealed, aad().as_bytes()).unwrap(),
        PLAIN.as_bytes()
    );
    assert!(matches!(
        old_removed.open(&sealed, aad().as_bytes()),
        Err(SealError::UnknownKey { .. })
    ));
}

fn parse_err(text: &str) -> String {
    Keyring::parse(text, "key file /k").unwrap_err().to_string()
}

#[test]
fn key_file_errors() {
    let good = line("k1");
    let b64 = good.split_once(' ').unwrap().1;
    assert_eq!(
        parse_err(""),
        "key file /k holds no key (expected lines `<key-id> <base64 of 32 bytes>`)"
    );
    assert_eq!(parse_err("# only a comment\n\n"), parse_err(""));
    assert_eq!(
        parse_err("k1 not*base64"),
        "key file /k line 1: the key is not valid base64"
    );
    assert_eq!(
        parse_err("k1 AAAA"),
        "key file /k line 1: the key is 3 bytes; it must be 32"
    );
    assert_eq!(
        parse_err(&format!("{good}\nk1 {b64}")),
        "key file /k line 2: key id \"k1\" is used twice"
    );
    assert_eq!(
        parse_err(&format!("k/1 {b64}")),
        "key file /k line 1: invalid key id: use 1-64 letters, digits, '.', '_' or '-'"
    );
    assert_eq!(
        parse_err(b64),
        "key file /k line 1: expected `<key-id> <base64 of 32 bytes>`"
    );
    assert_eq!(
        parse_err(&format!("k1 {b64} extra")),
        "key file /k line 1: expected `<key-id> <base64 of 32 bytes>`"
    );
    // No key material in any of them.
    for text in [
        format!("k1 {b64}x"),
        format!("{good}\nk1 {b64}"),
        format!("k1 {}", &b64[..20]),
    ] {
        let e = parse_err(&text);
        assert!(!e.contains(&b64[..16]), "{e}");
    }
}

#[test]
fn generate_file_is_private_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.key");
    let k = Keyring::generate_file(&path, "2026-08").unwrap();
    assert_eq!(k.current_key_id().as_str(), "2026-08");
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let loaded = Keyring::from_file(&path).unwrap();
    let sealed = k.seal(PLAIN.as_bytes(), b"x").unwrap();
    assert_eq!(loaded.open(&sealed, b"x").unwrap(), PLAIN.as_bytes());
    let before = fs::read(&path).unwrap();
    let err = Keyring::generate_file(&path, "other").unwrap_err();
    assert!(matches!(err, KeyringError::Exists(_)), "{err}");
    assert!(err.to_string().contains("refusing to overwrite"));
    assert_eq!(fs::read(&path).unwrap(), before);
    assert!(matches!(
        Keyring::generate_file(&dir.path().join("x"), "bad id"),
        Err(KeyringError::BadKeyId(_))
    ));
}

#[test]
fn key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.key");
    fs::write(&path, format!("{}\n", line("k1"))).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660, 0o602] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let err = Keyring::from_file(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "key file {p} is accessible by group or others (mode {mode:04o}); secrets keys must be private: run `chmod 600 {p}`",
                p = path.display()
            )
        );
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    assert!(Keyring::from_file(&path).is_ok());
}

#[test]
fn load_prefers_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secrets.key");
    let env_line = line("from-env");
    let env = |k: &str| (k == SECRETS_KEY_ENV).then(|| env_line.clone());
    let k = Keyring::load(&path, &env).unwrap();
    assert_eq!(k.current_key_id().as_str(), "from-env");
    let none = |_: &str| None;
    let err = Keyring::load(&path, &none).unwrap_err();
    assert!(matches!(err, KeyringError::Missing(_)));
    assert!(err.to_string().contains("FLOTILLA_SECRETS_KEY"));
    Keyring::generate_file(&path, "from-file").unwrap();
    assert_eq!(
        Keyring::load(&path, &none)
            .unwrap()
            .current_key_id()
            .as_str(),
        "from-file"
    );
    let bad = |k: &str| (k == SECRETS_KEY_ENV).then(|| "x y".to_owned());
    assert_eq!(
        Keyring::load(&path, &bad).unwrap_err().to_string(),
        "FLOTILLA_SECRETS_KEY line 1: the key is not valid base64"
    );
}

#[test]
fn no_plaintext_or_key_in_debug_and_errors() {
    let l = line("k1");
    let b64 = l.split_once(' ').unwrap().1.to_owned();
    let k = ring(&[&l, &line("k0")]);
    let debug = format!("{k:?}");
    assert_eq!(
        debug,
        "Keyring { current: \"k1\", key_ids: [\"k1\", \"k0\"] }"
    );
    assert!(!debug.contains(&b64));
    let sealed = k.seal(PLAIN.as_bytes(), aad().as_bytes()).unwrap();
    let sealed_debug = format!("{sealed:?}");
    assert!(!sealed_debug.contains(PLAIN));
    assert!(sealed_debug.contains("k1"));
    let mut texts = vec![sealed_debug];
    for err in [
        k.open(&sealed, b"elsewhere").unwrap_err(),
        ring(&[&line("k2")])
            .open(&sealed, aad().as_bytes())
            .unwrap_err(),
    ] {
        texts.push(err.to_string());
        texts.push(format!("{err:?}"));
    }
    let secret = k.open_secret(&sealed, aad().as_bytes()).unwrap();
    texts.push(format!("{secret:?} {secret}"));
    for t in texts {
        assert!(!t.contains(PLAIN), "{t}");
        assert!(!t.contains(&b64), "{t}");
    }
}
