use super::*;

fn check<T: FromStr<Err = NameError> + fmt::Debug>(input: &str, ok: bool) {
    let result = input.parse::<T>();
    assert_eq!(
        result.is_ok(),
        ok,
        "{input:?} for {}: {result:?}",
        std::any::type_name::<T>()
    );
}

#[test]
fn app_names_follow_dokku() {
    for good in ["web", "a", "0", "my-app", "my.app", "app-1.eu", "9lives"] {
        check::<AppName>(good, true);
    }
    for bad in [
        "",
        "-web",
        ".web",
        "Web",
        "web_app",
        "web app",
        "web;rm -rf /",
        "web$(id)",
        "web`id`",
        "web\nx",
        "wéb",
        "--force",
        "web/../x",
        "web&",
    ] {
        check::<AppName>(bad, false);
    }
    check::<AppName>(&"a".repeat(100), true);
    check::<AppName>(&"a".repeat(101), false);
}

#[test]
fn host_ids_and_envs_are_dns_labels() {
    for good in ["web-1", "h", "eu-west-1a", "0abc"] {
        check::<HostId>(good, true);
        check::<EnvName>(good, true);
    }
    for bad in [
        "",
        "-h",
        "h-",
        "H1",
        "h.1",
        "h_1",
        "h 1",
        "h;x",
        &"a".repeat(64),
    ] {
        check::<HostId>(bad, false);
        check::<EnvName>(bad, false);
    }
}

#[test]
fn image_refs_follow_the_docker_grammar() {
    for good in [
        "nginx",
        "nginx:1.27",
        "library/nginx:latest",
        "ghcr.io/acme/web:v1.2.3",
        "registry.example.com:5000/team/app:2024-01-01_abc",
        "localhost/app:1",
        "localhost:5000/app",
        "acme/my_app__x-y.z:tag",
        "nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "ghcr.io/acme/web:1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ] {
        check::<ImageRef>(good, true);
    }
    for bad in [
        "",
        "-nginx",
        "--force",
        "Nginx",
        "nginx:",
        "nginx:-1",
        "nginx;id",
        "nginx $(id)",
        "nginx:1 --build-dir /",
        "a//b",
        "/nginx",
        "nginx/",
        "nginx@sha256:xyz",
        "nginx@sha256",
        "ex ample.com/app",
        "example.com:port/app",
        "app.",
        "nginx\n",
    ] {
        check::<ImageRef>(bad, false);
    }
}

#[test]
fn domains_follow_dokku() {
    for good in ["example.com", "*.example.com", "a-b.c", "localhost"] {
        check::<Domain>(good, true);
    }
    for bad in [
        "",
        "Example.com",
        "-x.com",
        ".x.com",
        "x.com.",
        "a..b",
        "a b",
        "a_b.com",
        "x;y",
    ] {
        check::<Domain>(bad, false);
    }
}

#[test]
fn labels_are_checked() {
    assert!(Labels::from_pairs(["region=eu", "tier=web-1"]).is_ok());
    assert!(Labels::from_pairs(["region"]).is_err());
    assert!(Labels::from_pairs(["=eu"]).is_err());
    assert!(Labels::from_pairs(["re gion=eu"]).is_err());
    assert!(Labels::from_pairs(["region=e u"]).is_err());
    let labels = Labels::from_pairs(["b=2", "a=1"]).unwrap();
    let keys: Vec<_> = labels.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
}

#[test]
fn tenants_services_config_keys_aliases_emails() {
    for good in ["acme", "a1", "big-co"] {
        check::<TenantName>(good, true);
    }
    for bad in ["", "Acme", "-a", "a-", "a.b", "a_b", "{tenant}"] {
        check::<TenantName>(bad, false);
    }
    for good in ["web-db", "Web_DB", "db1", "_x"] {
        check::<ServiceName>(good, true);
    }
    for bad in ["", "-db", "db.1", "db 1", "db;x", &"a".repeat(65)] {
        check::<ServiceName>(bad, false);
    }
    for good in ["A", "_A", "a_b", "SECRET_KEY_BASE", "x1", "DOKKU_X"] {
        check::<ConfigKey>(good, true);
    }
    for bad in ["", "1A", "A-B", "A.B", "A B", "A=B", "\u{e9}"] {
        check::<ConfigKey>(bad, false);
    }
    assert!(
        ConfigKey::parse("DOKKU_LETSENCRYPT_EMAIL")
            .unwrap()
            .reserved_reason()
            .is_some()
    );
    assert!(
        ConfigKey::parse("GIT_REV")
            .unwrap()
            .reserved_reason()
            .is_some()
    );
    assert!(
        ConfigKey::parse("DATABASE_URL")
            .unwrap()
            .reserved_reason()
            .is_none()
    );
    for good in ["DATABASE", "BLUE_DB", "R2"] {
        check::<LinkAlias>(good, true);
    }
    for bad in ["", "db", "_DB", "2DB", "DB-1"] {
        check::<LinkAlias>(bad, false);
    }
    for good in ["ops@example.com", "a.b+c@mail.example.co.uk"] {
        check::<EmailAddress>(good, true);
    }
    for bad in [
        "",
        "ops",
        "ops@",
        "@example.com",
        "ops@localhost",
        "o ps@example.com",
        "ops@-x.com",
        "-x@example.com",
    ] {
        check::<EmailAddress>(bad, false);
    }
}
