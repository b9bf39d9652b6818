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
