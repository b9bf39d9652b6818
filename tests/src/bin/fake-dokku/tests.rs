//! Unit tests for the pure parts: name and host rules, argument parsing, report rendering, the `ENV` format.

use crate::report::{self, Mode, Request};
use crate::util::{self, Env};
use crate::{args, config, domains, strip_globals};

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

#[test]
fn app_names() {
    for name in ["web", "0app", "my-app.v2", "a"] {
        assert!(util::is_valid_app_name(name), "{name} should be valid");
    }
    for name in ["", "Web", "-web", ".web", "we_b", "web/x", "web:1", "wéb"] {
        assert!(!util::is_valid_app_name(name), "{name} should be invalid");
    }
}

#[test]
fn hosts() {
    for host in [
        "example.com",
        "*.example.com",
        "_",
        "EXAMPLE.com",
        "a",
        "x-1.y",
    ] {
        assert!(util::is_valid_host(host), "{host} should be valid");
    }
    for host in [
        "",
        "example.com.",
        "exa mple.com",
        "ex_ample.com",
        "ex/ample",
    ] {
        assert!(!util::is_valid_host(host), "{host} should be invalid");
    }
}

#[test]
fn env_keys() {
    assert!(util::is_valid_env_key("DATABASE_URL"));
    assert!(util::is_valid_env_key("_x1"));
    assert!(!util::is_valid_env_key("1X"));
    assert!(!util::is_valid_env_key("A-B"));
    assert!(!util::is_valid_env_key(""));
}

#[test]
fn global_flags_only_leading() {
    let argv = strings(&[
        "--quiet",
        "--trace",
        "--app",
        "web",
        "--unknown",
        "apps:report",
        "--quiet",
    ]);
    let (globals, rest) = strip_globals(&argv);
    assert!(globals.quiet);
    assert!(!globals.force);
    assert_eq!(globals.app.as_deref(), Some("web"));
    assert_eq!(rest, strings(&["apps:report", "--quiet"]).as_slice());

    let argv = strings(&["--help"]);
    assert_eq!(strip_globals(&argv).1, argv.as_slice());
    assert!(strip_globals(&[]).1.is_empty());
}

#[test]
fn subcommand_flags() {
    const SPEC: args::Spec = args::Spec {
        command: "x:y",
        switches: &["--force", "-t"],
        options: &["--build-dir", "-n"],
    };
    let parsed = args::parse(
        &SPEC,
        &strings(&["app", "--force", "-n", "5", "--build-dir=/tmp", "img"]),
        Some("first"),
    )
    .unwrap();
    assert_eq!(parsed.positionals, strings(&["first", "app", "img"]));
    assert!(parsed.has("--force"));
    assert!(!parsed.has("-t"));
    assert_eq!(parsed.value("-n"), Some("5"));
    assert_eq!(parsed.value("--build-dir"), Some("/tmp"));

    let failure = args::parse(&SPEC, &strings(&["app", "--quiet"]), None).unwrap_err();
    assert_eq!(failure.code, 2);
    assert_eq!(failure.lines()[0], "unknown flag: --quiet");
    assert_eq!(failure.lines()[1], "Usage of x:y:");
    assert_eq!(
        args::parse(&SPEC, &strings(&["--build-dir"]), None)
            .unwrap_err()
            .code,
        2
    );
}

#[test]
fn report_rows_are_sorted_and_padded() {
    let flags = report::flags([
        ("--app-locked", "false".to_string()),
        ("--app-deploy-source", "docker-image".to_string()),
        ("--app-deploy-source-metadata", "nginx:1".to_string()),
    ]);
    assert_eq!(
        report::render_rows(&flags),
        [
            "App deploy source:             docker-image",
            "App deploy source metadata:    nginx:1",
            "App locked:                    false",
        ]
    );
    // A flag longer than 31 characters (here 39) widens the key column; `.` becomes a space.
    let flags = report::flags([
        ("--status-web.1", "running (CID: 0123456789a)".to_string()),
        ("--a-very-long-flag-name-beyond-31-chars", "x".to_string()),
    ]);
    let rows = report::render_rows(&flags);
    assert_eq!(
        rows[0],
        format!("{:<39}x", "A very long flag name beyond 31 chars:")
    );
    assert_eq!(
        rows[1],
        format!("{:<39}running (CID: 0123456789a)", "Status web 1:")
    );
}

#[test]
fn report_json_has_both_key_styles() {
    let flags = report::flags([
        ("--app-deploy-source", "docker-image".to_string()),
        ("--app-locked", String::new()),
    ]);
    assert_eq!(
        report::render_json("app", &flags),
        r#"{"app-deploy-source":"docker-image","app-locked":"","deploy-source":"docker-image","locked":""}"#
    );
    let flags = report::flags([("--deployed", "true".to_string())]);
    assert_eq!(report::render_json("ps", &flags), r#"{"deployed":"true"}"#);
}

#[test]
fn report_arguments() {
    let request = report::parse_request("apps", &strings(&["web", "--app-locked"])).unwrap();
    assert_eq!(
        request,
        Request {
            positionals: strings(&["web"]),
            mode: Mode::Single("--app-locked".into())
        }
    );
    let request = report::parse_request("apps", &strings(&["web", "--format", "json"])).unwrap();
    assert_eq!(request.mode, Mode::Json);
    assert_eq!(
        report::parse_request("apps", &strings(&["web"]))
            .unwrap()
            .mode,
        Mode::Text
    );

    let failure = report::parse_request(
        "apps",
        &strings(&["web", "--format", "json", "--app-locked"]),
    )
    .unwrap_err();
    assert_eq!(
        failure.lines(),
        [" !     --format flag cannot be specified when specifying an info flag"]
    );
    let failure = report::parse_request("apps", &strings(&["web", "--a", "--b"])).unwrap_err();
    assert_eq!(
        failure.lines(),
        [" !     apps:report command allows only a single flag"]
    );
    let failure = report::invalid_flag(&report::flags([
        ("--b", String::new()),
        ("--a", String::new()),
    ]));
    assert_eq!(
        failure.lines(),
        [" !     Invalid flag passed, valid flags: --a, --b"]
    );
}

#[test]
fn env_file_round_trip() {
    let env: Env = [
        ("A", "plain"),
        ("QUOTE", "it's \"quoted\""),
        ("MULTI", "line one\nline two"),
        ("EMPTY", ""),
        ("SPACES", "  a b  "),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value.to_string()))
    .collect();
    let text = util::render_env_file(&env);
    assert!(text.contains("export QUOTE='it'\\''s \"quoted\"'\n"));
    assert_eq!(util::parse_env_file(&text), env);
    // Bare and double-quoted values, as other tools write them.
    let parsed = util::parse_env_file("export X=1\nY=\"a \\\"b\\\"\"\n\nexport\n");
    assert_eq!(parsed.get("X").map(String::as_str), Some("1"));
    assert_eq!(parsed.get("Y").map(String::as_str), Some("a \"b\""));
    assert_eq!(parsed.len(), 2);
}

#[test]
fn config_output() {
    let env: Env = [("A", "1"), ("LONG_KEY", "it's")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(config::pretty(&env), ["A:         1", "LONG_KEY:  it's"]);
    assert_eq!(
        config::render_export(&env, "exports").unwrap(),
        "export A='1'\nexport LONG_KEY='it'\\''s'"
    );
    assert_eq!(
        config::render_export(&env, "json").unwrap(),
        r#"{"A":"1","LONG_KEY":"it's"}"#
    );
    assert_eq!(
        config::render_export(&env, "shell").unwrap(),
        "A='1' LONG_KEY='it'\\''s'"
    );
    assert!(config::render_export(&env, "nope").is_none());
}

#[test]
fn base64() {
    assert_eq!(
        util::base64_decode("aGVsbG8gd29ybGQ=").as_deref(),
        Some("hello world")
    );
    assert_eq!(util::base64_decode("YQ").as_deref(), Some("a"));
    assert_eq!(util::base64_decode("").as_deref(), Some(""));
    assert_eq!(util::base64_decode("not base64!"), None);
}

#[test]
fn timestamps() {
    assert_eq!(util::rfc3339(0, 0), "1970-01-01T00:00:00.000000000Z");
    assert_eq!(
        util::rfc3339(1_700_000_000, 5),
        "2023-11-14T22:13:20.000000005Z"
    );
    assert_eq!(
        util::rfc3339(951_782_400, 0),
        "2000-02-29T00:00:00.000000000Z"
    );
}

#[test]
fn fake_hashes_are_stable() {
    let sha = crate::deploy::fake_sha("nginx:1");
    assert_eq!(sha.len(), 40);
    assert!(sha.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(sha, crate::deploy::fake_sha("nginx:1"));
    assert_ne!(sha, crate::deploy::fake_sha("nginx:2"));
}

#[test]
fn default_vhosts() {
    let globals = strings(&["example.com", "10.0.0.1", "other.org"]);
    assert_eq!(
        domains::default_vhosts(&globals, "web"),
        ["web.example.com", "web.other.org"]
    );
    assert_eq!(
        domains::default_vhosts(&globals, "www.site.io"),
        ["www.site.io"]
    );
    assert!(domains::default_vhosts(&[], "web").is_empty());
}

#[test]
fn image_refs() {
    assert_eq!(util::split_image_ref("nginx:1"), ("nginx", "1"));
    assert_eq!(util::split_image_ref("nginx"), ("nginx", "latest"));
    assert_eq!(
        util::split_image_ref("localhost:5000/app"),
        ("localhost:5000/app", "latest")
    );
    assert_eq!(
        util::split_image_ref("r.io/app@sha256:ab"),
        ("r.io/app", "sha256:ab")
    );
}

#[test]
fn fail_image_lists() {
    let text =
        "# images that fail on this host\n\nacme/shop:2\n  acme/shop:3  # flaky\n#acme/shop:4\n";
    assert_eq!(
        util::parse_image_list(text),
        strings(&["acme/shop:2", "acme/shop:3"])
    );
    assert!(util::parse_image_list("").is_empty());

    let list = strings(&["acme/shop:2"]);
    let listed = crate::deploy::Injection::for_deploy("acme/shop:2", &list);
    assert_eq!(
        listed,
        crate::deploy::Injection::for_image("acme/shop-unhealthy:2")
    );
    // Exact references only, not substrings; name rules still apply.
    assert!(!crate::deploy::Injection::for_deploy("acme/shop:20", &list).unhealthy);
    assert!(!crate::deploy::Injection::for_deploy("acme/shop", &list).unhealthy);
    assert!(crate::deploy::Injection::for_deploy("acme/shop:unhealthy", &[]).unhealthy);
}

/// A listed image fails `git:from-image` like an `unhealthy` one: exit 1, the checks' error, the old release kept,
/// the deploy branch reset; removing it from the list (read at every deploy) lets the same image deploy.
#[test]
fn listed_images_fail_their_checks_on_this_host_only() {
    use crate::store::Store;
    use crate::{Ctx, apps, deploy, out::Out};

    let host = |root: &std::path::Path| Ctx {
        store: Store::at(root),
        out: Out { quiet: true },
        app: None,
        force: false,
    };
    let metadata = |ctx: &Ctx| {
        ctx.store
            .property("shop", apps::PLUGIN, "deploy-source-metadata")
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let (one, two) = (host(&one), host(&two));
    for ctx in [&one, &two] {
        apps::create(ctx, &strings(&["shop"])).unwrap();
        deploy::from_image(ctx, &strings(&["shop", "acme/shop:1"])).unwrap();
    }
    let list = one.store.fail_images_path();
    std::fs::create_dir_all(list.parent().unwrap()).unwrap();
    std::fs::write(&list, "# fails here\nacme/shop:2\n").unwrap();

    let failure = deploy::from_image(&one, &strings(&["shop", "acme/shop:2"])).unwrap_err();
    assert_eq!(failure.code, 1);
    assert_eq!(
        failure.lines(),
        [" !     Could not start due to 1 failed checks (web.1)"]
    );
    let unhealthy =
        deploy::from_image(&two, &strings(&["shop", "acme/shop:2-unhealthy"])).unwrap_err();
    assert_eq!(
        (unhealthy.code, unhealthy.lines()),
        (failure.code, failure.lines())
    );
    assert_eq!(metadata(&one).as_deref(), Some("acme/shop:1"));
    assert_eq!(
        one.store
            .property("shop", "git", "source-image")
            .unwrap()
            .as_deref(),
        Some("acme/shop:2")
    );

    // The other host has no list: the same image deploys there.
    deploy::from_image(&two, &strings(&["shop", "acme/shop:2"])).unwrap();
    assert_eq!(metadata(&two).as_deref(), Some("acme/shop:2"));

    // The list is read at every deploy, and the failed deploy reset the branch: a retry really deploys.
    std::fs::write(&list, "\n").unwrap();
    deploy::from_image(&one, &strings(&["shop", "acme/shop:2"])).unwrap();
    assert_eq!(metadata(&one).as_deref(), Some("acme/shop:2"));
}
