use super::*;

const SECRET: &str = "s3cr3t-value-that-must-not-leak";

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    (dir, store)
}

fn names() -> (AppName, EnvName, EnvName) {
    (
        AppName::parse("web").unwrap(),
        EnvName::parse("production").unwrap(),
        EnvName::parse("staging").unwrap(),
    )
}

fn key(s: &str) -> ConfigKey {
    ConfigKey::parse(s).unwrap()
}

fn keyring(lines: &[&str]) -> Keyring {
    Keyring::parse(&lines.join("\n"), "test").unwrap()
}

fn set(store: &Store, keyring: Option<&Keyring>, env: &EnvName, k: &str, v: &str, secret: bool) {
    let (app, _, _) = names();
    let k = key(k);
    let value = stored_value(keyring, &app, env, &k, v, secret).unwrap();
    let entry = ConfigEntry {
        value,
        updated_at_ms: 1,
        updated_by: "test".into(),
    };
    store.set_config(&app, env, &[(k, entry)]).unwrap();
}

#[test]
fn resolve_opens_secrets_and_keeps_them_out_of_sled() {
    let (dir, store) = open();
    let (app, prod, staging) = names();
    let ring = keyring(&[&Keyring::generate_line("k1").unwrap()]);
    set(&store, Some(&ring), &prod, "PORT", "5000", false);
    set(&store, Some(&ring), &prod, "API_KEY", SECRET, true);
    set(
        &store,
        Some(&ring),
        &staging,
        "API_KEY",
        "staging-value",
        true,
    );

    let (plain, secrets) = resolve_config(&store, Some(&ring), &app, &prod).unwrap();
    assert_eq!(plain.get(&key("PORT")).map(String::as_str), Some("5000"));
    assert_eq!(secrets[&key("API_KEY")].expose(), SECRET);
    assert_eq!(format!("{:?}", secrets), "{ConfigKey(\"API_KEY\"): ***}");
    let (_, staging_secrets) = resolve_config(&store, Some(&ring), &app, &staging).unwrap();
    assert_eq!(staging_secrets[&key("API_KEY")].expose(), "staging-value");

    // The plaintext is nowhere in the database files.
    store.db_flush_blocking().unwrap();
    drop(store);
    for file in walk(dir.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the secret",
            file.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn secrets_need_a_keyring_plain_values_do_not() {
    let (_dir, store) = open();
    let (app, prod, _) = names();
    set(&store, None, &prod, "PORT", "5000", false);
    let err = stored_value(None, &app, &prod, &key("API_KEY"), SECRET, true).unwrap_err();
    assert!(matches!(err, ConfigError::NoKeyring));
    assert!(err.to_string().contains("secrets generate-key"), "{err}");
    assert!(!err.to_string().contains(SECRET));
    let (plain, secrets) = resolve_config(&store, None, &app, &prod).unwrap();
    assert_eq!(plain.len(), 1);
    assert!(secrets.is_empty());
}

#[test]
fn a_secret_moved_to_another_place_does_not_open() {
    let (_dir, store) = open();
    let (app, prod, staging) = names();
    let ring = keyring(&[&Keyring::generate_line("k1").unwrap()]);
    let StoredValue::Sealed(text) =
        stored_value(Some(&ring), &app, &prod, &key("API_KEY"), SECRET, true).unwrap()
    else {
        panic!("not sealed");
    };
    let err = open_value(Some(&ring), &app, &staging, &key("API_KEY"), &text).unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("web/staging/API_KEY: cannot open"), "{msg}");
    assert!(!msg.contains(SECRET));
    drop(store);
}

#[test]
fn rotation_old_values_open_and_reseal_moves_them() {
    let (_dir, store) = open();
    let (app, prod, _) = names();
    let old_line = Keyring::generate_line("old").unwrap();
    let old = keyring(&[&old_line]);
    set(&store, Some(&old), &prod, "API_KEY", SECRET, true);
    set(&store, Some(&old), &prod, "PORT", "5000", false);

    // The new key first, the old one kept below it.
    let new_line = Keyring::generate_line("new").unwrap();
    let rotated = keyring(&[&new_line, &old_line]);
    let (_, secrets) = resolve_config(&store, Some(&rotated), &app, &prod).unwrap();
    assert_eq!(secrets[&key("API_KEY")].expose(), SECRET);
    let entry = store
        .config_entry(&app, &prod, &key("API_KEY"))
        .unwrap()
        .unwrap();
    assert_eq!(sealed_with(&entry.value).as_deref(), Some("old"));

    let report = reseal_all(&store, &rotated).unwrap();
    assert_eq!((report.resealed, report.current), (1, 0));
    assert!(report.failed.is_empty());
    let entry = store
        .config_entry(&app, &prod, &key("API_KEY"))
        .unwrap()
        .unwrap();
    assert_eq!(sealed_with(&entry.value).as_deref(), Some("new"));
    assert_eq!(entry.updated_by, "test");

    // Without the old key it still opens; a second reseal has nothing to do.
    let new_only = keyring(&[&new_line]);
    let (_, secrets) = resolve_config(&store, Some(&new_only), &app, &prod).unwrap();
    assert_eq!(secrets[&key("API_KEY")].expose(), SECRET);
    let report = reseal_all(&store, &new_only).unwrap();
    assert_eq!((report.resealed, report.current), (0, 1));

    // A value sealed with a key the keyring lost is reported, not changed.
    set(&store, Some(&old), &prod, "OTHER", SECRET, true);
    let report = reseal_all(&store, &new_only).unwrap();
    assert_eq!(report.failed.len(), 1);
    assert!(report.failed[0].starts_with("web/production/OTHER: sealed with key \"old\""));
    assert!(!report.failed[0].contains(SECRET));
    let err = resolve_config(&store, Some(&new_only), &app, &prod).unwrap_err();
    assert!(err.to_string().contains("OTHER"), "{err}");
}

#[test]
fn keys_and_values_are_checked_without_quoting_values() {
    assert!(check_key("DATABASE_URL").is_ok());
    let err = check_key("DOKKU_APP_TYPE").unwrap_err();
    assert_eq!(
        err,
        "config key DOKKU_APP_TYPE is reserved (Dokku manages DOKKU_* variables); Flotilla does not manage it"
    );
    assert!(check_key("GIT_REV").unwrap_err().contains("reserved"));
    assert!(check_key("1BAD").unwrap_err().contains("1BAD"));
    let k = key("BIG");
    let big = SECRET.repeat(MAX_VALUE_BYTES / SECRET.len() + 1);
    let err = check_value(&k, &big).unwrap_err();
    assert!(err.starts_with("the value of BIG is"), "{err}");
    assert!(!err.contains(SECRET));
    let err = check_value(&k, &format!("{SECRET}\0")).unwrap_err();
    assert!(!err.contains(SECRET));
    assert!(check_value(&k, "").is_ok());
}

#[test]
fn missing_required_keys_counts_plain_and_secret_values() {
    let (_dir, store) = open();
    let (app, prod, staging) = names();
    let ring = keyring(&[&Keyring::generate_line("k1").unwrap()]);
    let required: BTreeSet<ConfigKey> = [key("A"), key("B"), key("C")].into();
    store.set_required_keys(&app, &prod, &required).unwrap();
    assert_eq!(
        missing_required_keys(&store, &app, &prod, &required).unwrap(),
        vec!["A", "B", "C"]
    );
    set(&store, Some(&ring), &prod, "A", "1", false);
    set(&store, Some(&ring), &prod, "C", SECRET, true);
    // Staging values do not count for production.
    set(&store, Some(&ring), &staging, "B", "1", false);
    assert_eq!(
        missing_required_keys(&store, &app, &prod, &required).unwrap(),
        vec!["B"]
    );
    let refusal = deploy_refusal(&store, &app, &prod).unwrap().unwrap();
    assert!(
        refusal.starts_with("cannot deploy web to production: required config keys missing: B ("),
        "{refusal}"
    );
    assert_eq!(deploy_refusal(&store, &app, &staging).unwrap(), None);
}

#[test]
fn missing_key_file_is_no_keyring_but_a_public_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = default_key_file(dir.path());
    let no_env = |_: &str| None;
    assert!(load_keyring(&path, &no_env).unwrap().is_none());
    Keyring::generate_file(&path, "k1").unwrap();
    let ring = load_keyring(&path, &no_env).unwrap().unwrap();
    assert_eq!(ring.current_key_id().as_str(), "k1");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(load_keyring(&path, &no_env).is_err());
    let line = Keyring::generate_line("from-env").unwrap();
    let env = move |k: &str| (k == "FLOTILLA_SECRETS_KEY").then(|| line.clone());
    let ring = load_keyring(&path, &env).unwrap().unwrap();
    assert_eq!(ring.current_key_id().as_str(), "from-env");
}
