use std::collections::BTreeSet;

use super::*;

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    (dir, store)
}

fn app(s: &str) -> AppName {
    AppName::parse(s).unwrap()
}

fn env(s: &str) -> EnvName {
    EnvName::parse(s).unwrap()
}

fn key(s: &str) -> ConfigKey {
    ConfigKey::parse(s).unwrap()
}

fn plain(v: &str) -> ConfigEntry {
    ConfigEntry {
        value: StoredValue::Plain(v.into()),
        updated_at_ms: 7,
        updated_by: "ci".into(),
    }
}

fn sealed(v: &str) -> ConfigEntry {
    ConfigEntry {
        value: StoredValue::Sealed(v.into()),
        updated_at_ms: 8,
        updated_by: "admin".into(),
    }
}

/// `(key, value)` pairs of a listing, for short assertions.
fn listing(store: &Store, a: &str, e: &str) -> Vec<(String, StoredValue)> {
    store
        .config(&app(a), &env(e))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.value))
        .collect()
}

#[test]
fn set_list_get_unset() {
    let (_dir, store) = open();
    let (web, prod) = (app("web"), env("production"));
    store
        .set_config(
            &web,
            &prod,
            &[
                (key("PORT"), plain("5000")),
                (key("API_KEY"), sealed("fs1.x")),
            ],
        )
        .unwrap();
    assert_eq!(
        listing(&store, "web", "production"),
        vec![
            ("API_KEY".into(), StoredValue::Sealed("fs1.x".into())),
            ("PORT".into(), StoredValue::Plain("5000".into())),
        ]
    );
    let got = store.config_entry(&web, &prod, &key("PORT")).unwrap();
    assert_eq!(got, Some(plain("5000")));
    assert!(!got.unwrap().value.is_secret());
    assert_eq!(store.config_entry(&web, &prod, &key("NOPE")).unwrap(), None);

    // Replacing keeps one entry per key.
    store
        .set_config(&web, &prod, &[(key("PORT"), plain("6000"))])
        .unwrap();
    assert_eq!(
        store.config_entry(&web, &prod, &key("PORT")).unwrap(),
        Some(plain("6000"))
    );

    let removed = store
        .unset_config(&web, &prod, &[key("PORT"), key("MISSING")])
        .unwrap();
    assert_eq!(removed, vec![key("PORT")]);
    assert_eq!(
        listing(&store, "web", "production"),
        vec![("API_KEY".into(), StoredValue::Sealed("fs1.x".into()))]
    );
}

#[test]
fn environments_and_apps_are_separate() {
    let (_dir, store) = open();
    store
        .set_config(&app("web"), &env("staging"), &[(key("A"), plain("s"))])
        .unwrap();
    store
        .set_config(&app("web"), &env("production"), &[(key("A"), plain("p"))])
        .unwrap();
    // A prefix of another app's name must not leak into its listing.
    store
        .set_config(&app("web2"), &env("staging"), &[(key("A"), plain("w2"))])
        .unwrap();
    store
        .set_config(&app("web"), &env("stag"), &[(key("A"), plain("st"))])
        .unwrap();
    assert_eq!(
        listing(&store, "web", "staging"),
        vec![("A".into(), StoredValue::Plain("s".into()))]
    );
    assert_eq!(
        listing(&store, "web", "production"),
        vec![("A".into(), StoredValue::Plain("p".into()))]
    );
    store
        .unset_config(&app("web"), &env("staging"), &[key("A")])
        .unwrap();
    assert!(listing(&store, "web", "staging").is_empty());
    assert_eq!(listing(&store, "web", "production").len(), 1);
    assert_eq!(listing(&store, "web2", "staging").len(), 1);
    assert_eq!(store.config_all().unwrap().len(), 3);
}

#[test]
fn replace_only_if_unchanged() {
    let (_dir, store) = open();
    let (web, prod, k) = (app("web"), env("production"), key("TOKEN"));
    store
        .set_config(&web, &prod, &[(k.clone(), sealed("fs1.old"))])
        .unwrap();
    assert!(
        store
            .replace_config_entry(&web, &prod, &k, &sealed("fs1.old"), &sealed("fs1.new"))
            .unwrap()
    );
    // The value changed since it was read: the newer one stays.
    assert!(
        !store
            .replace_config_entry(&web, &prod, &k, &sealed("fs1.old"), &sealed("fs1.other"))
            .unwrap()
    );
    assert_eq!(
        store.config_entry(&web, &prod, &k).unwrap(),
        Some(sealed("fs1.new"))
    );
}

#[test]
fn required_keys_per_app_and_env() {
    let (_dir, store) = open();
    let (web, prod, staging) = (app("web"), env("production"), env("staging"));
    assert!(store.required_keys(&web, &prod).unwrap().is_empty());
    let keys: BTreeSet<ConfigKey> = [key("DATABASE_URL"), key("SECRET_KEY")].into();
    store.set_required_keys(&web, &prod, &keys).unwrap();
    assert_eq!(store.required_keys(&web, &prod).unwrap(), keys);
    assert!(store.required_keys(&web, &staging).unwrap().is_empty());
    store
        .set_required_keys(&web, &prod, &BTreeSet::new())
        .unwrap();
    assert!(store.required_keys(&web, &prod).unwrap().is_empty());
}

#[test]
fn survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    {
        let store = Store::open(&path).unwrap();
        store
            .set_config(&app("web"), &env("production"), &[(key("A"), plain("1"))])
            .unwrap();
        store.db_flush_blocking().unwrap();
    }
    let store = Store::open(&path).unwrap();
    assert_eq!(listing(&store, "web", "production").len(), 1);
}
