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
        out: Out::capturing(true),
        app: None,
        force: false,
        global_flags: Vec::new(),
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

/// Runs one command line against the state in `root` the way `main` does (leading global flags, then dispatch),
/// and returns the exit code and every output line in order (stderr lines start with ` !     `).
fn dokku(root: &std::path::Path, argv: &[&str]) -> (i32, Vec<String>) {
    use crate::{Ctx, dispatch, out::Out, store::Store};
    let argv = strings(argv);
    let (globals, rest) = strip_globals(&argv);
    let rest = rest.to_vec();
    let quiet = globals.quiet;
    let ctx = Ctx::new(Store::at(root), Out::capturing(quiet), globals, &argv);
    let result = dispatch(&ctx, &rest[0], &rest[1..]);
    let mut lines = ctx.out.take();
    match result {
        Ok(()) => (0, lines),
        Err(failure) => {
            lines.extend(failure.lines().iter().cloned());
            (failure.code, lines)
        }
    }
}

/// `dokku` that must exit 0; returns the lines.
fn ok(root: &std::path::Path, argv: &[&str]) -> Vec<String> {
    let (code, lines) = dokku(root, argv);
    assert_eq!(code, 0, "{argv:?} failed: {lines:#?}");
    lines
}

/// A state directory with global domain `example.com` and the app `web` (deployed if `deployed`).
fn host_with_web(deployed: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    ok(dir.path(), &["domains:set-global", "example.com"]);
    ok(dir.path(), &["apps:create", "web"]);
    if deployed {
        ok(dir.path(), &["git:from-image", "web", "acme/web:1"]);
    }
    dir
}

fn write_standin(root: &std::path::Path, name: &str, text: &str) {
    let path = root.join(".standin").join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn domains_commands_and_single_flag_reports() {
    let dir = host_with_web(false);
    let root = dir.path();
    assert_eq!(
        ok(root, &["domains:report", "web", "--domains-app-vhosts"]),
        ["web.example.com"]
    );
    assert_eq!(
        ok(
            root,
            &[
                "domains:add",
                "web",
                "*.Tenants.example.com",
                "web.example.com"
            ]
        ),
        [
            "-----> Added *.tenants.example.com to web",
            "-----> Skipping: web.example.com already added to web"
        ]
    );
    assert_eq!(
        ok(root, &["domains:report", "web", "--domains-app-vhosts"]),
        ["web.example.com *.tenants.example.com"]
    );
    assert_eq!(
        ok(root, &["domains:report", "web", "--domains-global-vhosts"]),
        ["example.com"]
    );
    assert_eq!(
        ok(root, &["domains:report", "web", "--domains-app-enabled"]),
        ["true"]
    );
    assert_eq!(
        ok(
            root,
            &["domains:set", "web", "a.example.com", "b.example.com"]
        ),
        ["-----> Set a.example.com b.example.com for web"]
    );
    ok(root, &["domains:remove", "web", "a.example.com"]);
    assert_eq!(
        ok(root, &["domains:report", "web", "--domains-app-vhosts"]),
        ["b.example.com"]
    );
    ok(root, &["domains:clear", "web"]);
    assert_eq!(
        ok(root, &["domains:report", "web", "--domains-app-vhosts"]),
        [""]
    );
    // Global changes do not touch existing apps; reset does.
    ok(root, &["domains:add-global", "example.org"]);
    assert_eq!(
        ok(root, &["domains:report", "web", "--domains-app-vhosts"]),
        [""]
    );
    ok(root, &["domains:reset", "web"]);
    assert_eq!(
        ok(root, &["domains:report", "web", "--domains-app-vhosts"]),
        ["web.example.com web.example.org"]
    );
    assert_eq!(
        ok(
            root,
            &["domains:report", "--global", "--domains-global-vhosts"]
        ),
        ["example.com example.org"]
    );
    assert_eq!(
        ok(root, &["domains:report", "--global"]),
        [
            "=====> --global domains information",
            "       Domains global enabled:        true",
            "       Domains global vhosts:         example.com example.org"
        ]
    );
    assert_eq!(
        dokku(
            root,
            &["domains:report", "--global", "--domains-app-vhosts"]
        )
        .0,
        1
    );
    let text = ok(root, &["--quiet", "domains:report", "web"]);
    assert_eq!(
        text[1],
        "       Domains app vhosts:            web.example.com web.example.org"
    );

    assert_eq!(
        dokku(root, &["domains:add", "nope", "x.example.com"]),
        (20, strings(&[" !     App nope does not exist"]))
    );
    assert_eq!(
        dokku(root, &["domains:report", "nope", "--domains-app-vhosts"]).0,
        20
    );
    assert_eq!(
        dokku(root, &["domains:add", "web", "bad_host.example.com"]),
        (
            1,
            strings(&[" !     bad_host.example.com is invalid. exiting..."])
        )
    );
    let (code, lines) = dokku(root, &["domains:report", "web", "--domains-nope"]);
    assert_eq!(code, 1);
    assert!(
        lines[0].starts_with(" !     Invalid flag passed, valid flags: --domains-app-enabled, ")
    );
}

#[test]
fn certs_report_shows_a_seeded_expiry_then_removal() {
    let dir = host_with_web(false);
    let root = dir.path();
    assert_eq!(
        ok(root, &["certs:report", "web", "--ssl-enabled"]),
        ["false"]
    );
    assert_eq!(ok(root, &["certs:report", "web", "--ssl-expires-at"]), [""]);

    // 2027-02-26 13:17:52 UTC; a single-digit day is padded with a space, as openssl prints it.
    write_standin(
        root,
        "certs/web",
        "# seeded\nexpires-at=1803647872\nissuer=CN = test CA\n",
    );
    assert_eq!(
        ok(root, &["certs:report", "web", "--ssl-expires-at"]),
        ["Feb 26 13:17:52 2027 GMT"]
    );
    assert!(
        !root.join(".standin/certs/web").exists(),
        "the seed is installed once"
    );
    assert_eq!(
        ok(root, &["certs:report", "web", "--ssl-enabled"]),
        ["true"]
    );
    assert_eq!(
        ok(root, &["certs:report", "web", "--ssl-hostnames"]),
        ["web.example.com"]
    );
    assert_eq!(
        ok(root, &["certs:report", "web", "--ssl-issuer"]),
        ["CN = test CA"]
    );
    assert_eq!(ok(root, &["letsencrypt:active", "web"]), ["false"]);
    assert_eq!(
        util::openssl_date(1_772_323_200),
        "Mar  1 00:00:00 2026 GMT"
    );
    let text = ok(root, &["certs:report", "web"]);
    assert_eq!(text[0], "=====> web ssl information");
    assert_eq!(
        text[2],
        "       Ssl expires at:                Feb 26 13:17:52 2027 GMT"
    );

    assert_eq!(
        ok(root, &["certs:remove", "web"]),
        ["-----> Removing SSL endpoint from web"]
    );
    assert_eq!(
        ok(root, &["certs:report", "web", "--ssl-enabled"]),
        ["false"]
    );
    assert_eq!(
        dokku(root, &["certs:remove", "web"]),
        (
            1,
            strings(&[" !     An app-specific SSL endpoint is not defined"])
        )
    );
    assert_eq!(dokku(root, &["certs:report", "nope"]).0, 20);

    // certs:add: a CRT in the seed format gives the facts.
    let crt = root.join("server.crt");
    std::fs::write(
        &crt,
        "expires-at=0\nhostnames=a.example.com b.example.com\n",
    )
    .unwrap();
    let key = root.join("server.key");
    std::fs::write(&key, "key").unwrap();
    ok(
        root,
        &[
            "certs:add",
            "web",
            crt.to_str().unwrap(),
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(
        ok(root, &["certs:report", "web", "--ssl-expires-at"]),
        ["Jan  1 00:00:00 1970 GMT"]
    );
    assert_eq!(
        ok(root, &["certs:report", "web", "--ssl-hostnames"]),
        ["a.example.com b.example.com"]
    );
    assert_eq!(
        dokku(
            root,
            &[
                "certs:add",
                "web",
                "/nonexistent.crt",
                key.to_str().unwrap()
            ]
        ),
        (
            1,
            strings(&[" !     CRT file specified not found, please check file paths"])
        )
    );
}

fn requests(root: &std::path::Path) -> usize {
    std::fs::read_to_string(root.join(".fake-dokku/letsencrypt-requests"))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

#[test]
fn letsencrypt_enable_active_and_the_still_valid_skip() {
    let dir = host_with_web(false);
    let root = dir.path();
    assert_eq!(
        dokku(root, &["letsencrypt:active", "web"]),
        (0, strings(&["false"]))
    );
    assert_eq!(dokku(root, &["letsencrypt:active", "nope"]).0, 20);

    let (code, lines) = dokku(root, &["--quiet", "letsencrypt:enable", "web"]);
    assert_eq!(code, 1);
    assert_eq!(
        lines[0],
        " !     ERROR: Cannot request a certificate without an e-mail address!"
    );
    assert_eq!(requests(root), 0);
    assert_eq!(
        ok(
            root,
            &["letsencrypt:set", "web", "email", "ops@example.com"]
        ),
        ["=====> Setting email to ops@example.com"]
    );
    // Not deployed: the challenge fails.
    let (code, lines) = dokku(root, &["letsencrypt:enable", "web"]);
    assert_eq!(
        (code, lines.last().unwrap().as_str()),
        (1, " !     Failed to setup letsencrypt")
    );
    assert_eq!(requests(root), 1);

    ok(root, &["git:from-image", "web", "acme/web:1"]);
    let lines = ok(root, &["letsencrypt:enable", "web"]);
    assert_eq!(lines[0], "=====> Enabling letsencrypt for web");
    assert!(lines.contains(&"-----> Certificate retrieved successfully.".to_string()));
    assert_eq!(lines.last().unwrap(), "-----> Done");
    assert_eq!(requests(root), 2);
    assert_eq!(ok(root, &["letsencrypt:active", "web"]), ["true"]);
    assert_eq!(
        ok(root, &["certs:report", "web", "--ssl-enabled"]),
        ["true"]
    );
    assert_eq!(
        ok(root, &["certs:report", "web", "--ssl-verified"]),
        ["verified by a certificate authority"]
    );
    let expires: u64 = ok(
        root,
        &["letsencrypt:report", "web", "--letsencrypt-expiration"],
    )[0]
    .parse()
    .unwrap();
    assert!(expires > util::now().0 + 89 * 86_400);

    // 0.25.0+: still valid, no request.
    assert_eq!(
        ok(root, &["--quiet", "letsencrypt:enable", "web"]),
        ["-----> Certificate is still valid for web, skipping certificate request"]
    );
    assert_eq!(requests(root), 2);
    ok(root, &["letsencrypt:enable", "web", "--force"]);
    assert_eq!(requests(root), 3);
    // Inside the grace period (30 days by default): renewed.
    write_standin(
        root,
        "certs/web",
        &format!(
            "expires-at={}\nletsencrypt=true\n",
            util::now().0 + 10 * 86_400
        ),
    );
    assert_eq!(
        ok(root, &["certs:report", "web", "--ssl-issuer"]),
        ["C = US, O = Let's Encrypt, CN = R11"]
    );
    assert!(
        !ok(root, &["letsencrypt:enable", "web"])
            .iter()
            .any(|l| l.contains("still valid"))
    );
    assert_eq!(requests(root), 4);

    // Before 0.25.0 every enable asks Let's Encrypt.
    write_standin(root, "letsencrypt-version", "0.24.0\n");
    ok(root, &["letsencrypt:enable", "web"]);
    ok(root, &["letsencrypt:enable", "web"]);
    assert_eq!(requests(root), 6);

    // Before 0.20.0 there is no letsencrypt:set; the e-mail is config DOKKU_LETSENCRYPT_EMAIL.
    write_standin(root, "letsencrypt-version", "0.19.2\n");
    assert_eq!(
        dokku(root, &["letsencrypt:set", "web", "email", "x@example.com"]),
        (
            1,
            strings(&[
                " !     `letsencrypt:set` is not a dokku command.",
                " !     See `dokku help` for a list of available commands."
            ])
        )
    );
    assert_eq!(dokku(root, &["letsencrypt:enable", "web"]).0, 1);
    ok(
        root,
        &[
            "config:set",
            "--no-restart",
            "web",
            "DOKKU_LETSENCRYPT_EMAIL=x@example.com",
        ],
    );
    ok(root, &["letsencrypt:enable", "web"]);

    // Injected ACME failure.
    write_standin(root, "letsencrypt-version", "");
    write_standin(root, "letsencrypt-fail", "web\n");
    assert_eq!(dokku(root, &["letsencrypt:enable", "web", "--force"]).0, 1);

    assert_eq!(
        ok(root, &["letsencrypt:cron-job"]),
        ["=====> Auto-renew cron job is not enabled"]
    );
    assert_eq!(
        ok(root, &["letsencrypt:cron-job", "--add"]),
        ["-----> Added cron job to dokku's crontab."]
    );
    assert_eq!(
        ok(root, &["--quiet", "letsencrypt:cron-job"]),
        ["=====> Auto-renew cron job is enabled"]
    );
    let list = ok(root, &["letsencrypt:list"]);
    assert!(list[1].starts_with(&format!("{:<26}", "web")), "{list:?}");

    ok(root, &["letsencrypt:disable", "web"]);
    assert_eq!(ok(root, &["letsencrypt:active", "web"]), ["false"]);
    assert_eq!(
        ok(root, &["certs:report", "web", "--ssl-enabled"]),
        ["false"]
    );
}

#[test]
fn service_links_and_the_second_link_variable() {
    let dir = host_with_web(false);
    let root = dir.path();
    assert_eq!(
        ok(root, &["--quiet", "postgres:create", "main-db"])
            .last()
            .unwrap(),
        "       Securing connection to database"
    );
    assert_eq!(
        ok(root, &["postgres:create", "other"]).last().unwrap(),
        "=====> Postgres container created: other"
    );
    assert_eq!(
        dokku(root, &["postgres:create", "main-db"]),
        (
            1,
            strings(&[" !     Postgres service main-db already exists"])
        )
    );
    assert_eq!(dokku(root, &["postgres:create", "bad.name"]).0, 1);
    assert_eq!(
        dokku(root, &["postgres:exists", "main-db"]),
        (0, strings(&["-----> Service main-db exists"]))
    );
    assert_eq!(
        dokku(root, &["postgres:exists", "nope"]),
        (1, strings(&[" !     Postgres service nope does not exist"]))
    );
    assert_eq!(dokku(root, &["postgres:link", "main-db", "nope"]).0, 20);
    assert_eq!(dokku(root, &["postgres:link", "nope", "web"]).0, 1);

    let url = ok(root, &["postgres:info", "main-db", "--dsn"]).remove(0);
    let password = url
        .strip_prefix("postgres://postgres:")
        .and_then(|rest| rest.strip_suffix("@dokku-postgres-main-db:5432/main_db"))
        .unwrap_or_else(|| panic!("unexpected dsn {url}"));
    assert_eq!(password.len(), 32);
    assert_eq!(
        ok(root, &["postgres:link", "main-db", "web"]),
        [
            "-----> Setting config vars".to_string(),
            format!("       DATABASE_URL:  {url}"),
            " !     App web has not been deployed".to_string(),
        ]
    );
    assert_eq!(
        ok(root, &["config:get", "web", "DATABASE_URL"]),
        std::slice::from_ref(&url)
    );
    assert_eq!(
        dokku(root, &["postgres:link", "main-db", "web"]),
        (1, strings(&[" !     Already linked as DATABASE_URL"]))
    );
    // DATABASE_URL is taken: the second database gets a colour.
    ok(root, &["postgres:link", "other", "web", "--no-restart"]);
    let keys = ok(root, &["config:keys", "web"]);
    assert_eq!(keys, ["DATABASE_URL", "DOKKU_POSTGRES_AQUA_URL"]);
    assert_eq!(ok(root, &["postgres:links", "main-db"]), ["web"]);
    assert_eq!(dokku(root, &["postgres:linked", "main-db", "web"]).0, 0);
    ok(root, &["apps:create", "api"]);
    assert_eq!(dokku(root, &["postgres:linked", "main-db", "api"]).0, 1);
    // An alias names the variable; taken, it falls back to a colour too.
    ok(
        root,
        &["postgres:link", "main-db", "api", "-a", "reports-db"],
    );
    assert_eq!(ok(root, &["config:keys", "api"]), ["REPORTS_DB_URL"]);
    ok(
        root,
        &["postgres:link", "other", "api", "--alias", "REPORTS_DB"],
    );
    assert_eq!(
        ok(root, &["config:keys", "api"]),
        ["DOKKU_POSTGRES_AQUA_URL", "REPORTS_DB_URL"]
    );

    assert_eq!(
        dokku(root, &["postgres:destroy", "main-db", "-f"]),
        (1, strings(&[" !     Cannot delete linked service"]))
    );
    assert_eq!(
        ok(root, &["postgres:unlink", "main-db", "web", "--no-restart"]),
        ["-----> Unsetting DATABASE_URL"]
    );
    assert_eq!(
        dokku(root, &["postgres:unlink", "main-db", "web"]),
        (1, strings(&[" !     Not linked to app web"]))
    );
    ok(root, &["apps:destroy", "--force", "api"]);
    assert!(ok(root, &["postgres:links", "main-db"]).is_empty());
    ok(root, &["postgres:destroy", "main-db", "-f"]);
    assert_eq!(dokku(root, &["postgres:exists", "main-db"]).0, 1);

    ok(root, &["redis:create", "cache"]);
    let url = ok(root, &["redis:info", "cache", "--dsn"]).remove(0);
    assert!(
        url.starts_with("redis://:") && url.ends_with("@dokku-redis-cache:6379"),
        "{url}"
    );
    ok(root, &["redis:link", "cache", "web"]);
    assert_eq!(ok(root, &["config:get", "web", "REDIS_URL"]), [url]);
    ok(root, &["redis:create", "cache2"]);
    ok(root, &["redis:link", "cache2", "web"]);
    assert!(ok(root, &["config:keys", "web"]).contains(&"DOKKU_REDIS_AQUA_URL".to_string()));
    assert_eq!(
        dokku(root, &["redis:exists", "nope"]),
        (1, strings(&[" !     Redis service nope does not exist"]))
    );
}

fn n_restarts(root: &std::path::Path) -> usize {
    std::fs::read_to_string(root.join(".fake-dokku/restarts.jsonl"))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

#[test]
fn links_restart_a_deployed_app_unless_no_restart_is_anywhere() {
    let dir = host_with_web(true);
    let root = dir.path();
    ok(root, &["postgres:create", "db"]);
    ok(root, &["postgres:create", "db2"]);
    ok(root, &["postgres:create", "db3"]);
    let lines = ok(root, &["postgres:link", "db", "web"]);
    assert!(
        lines.contains(&"-----> Releasing web...".to_string()),
        "{lines:#?}"
    );
    assert_eq!(n_restarts(root), 1);
    ok(root, &["postgres:link", "db2", "web", "--no-restart"]);
    // The plugins read --no-restart from DOKKU_GLOBAL_FLAGS, so a leading one counts too.
    ok(root, &["--no-restart", "postgres:link", "db3", "web"]);
    assert_eq!(n_restarts(root), 1);
    // A failing restart fails the link command.
    write_standin(root, "fail-restarts", "web\n");
    let (code, _) = dokku(root, &["postgres:unlink", "db", "web"]);
    assert_eq!(code, 1);
    assert_eq!(n_restarts(root), 2);
}

#[test]
fn config_set_without_no_restart_exits_0_despite_a_failed_restart() {
    let dir = host_with_web(true);
    let root = dir.path();
    write_standin(root, "fail-restarts", "# every restart of web fails\nweb\n");
    let (code, lines) = dokku(root, &["config:set", "web", "A=1", "LONG_KEY=x y"]);
    assert_eq!(code, 0, "{lines:#?}");
    assert_eq!(
        &lines[..4],
        [
            "-----> Setting config vars",
            "       A:         1",
            "       LONG_KEY:  x y",
            "-----> Restarting app web"
        ]
    );
    assert!(lines.contains(&" !     Could not start due to 1 failed checks (web.1)".to_string()));
    assert_eq!(
        lines.last().unwrap(),
        " !     Failure while restarting app: exit status 1"
    );
    assert_eq!(n_restarts(root), 1);
    // The value is set nonetheless; with --no-restart nothing restarts, even for an unchanged value.
    assert_eq!(ok(root, &["config:get", "web", "A"]), ["1"]);
    assert_eq!(
        ok(root, &["config:set", "--no-restart", "web", "A=1"]),
        ["-----> Setting config vars", "       A:  1"]
    );
    assert_eq!(n_restarts(root), 1);
    // Without --no-restart, an unchanged value restarts too (Dokku does not diff).
    ok(root, &["config:set", "web", "A=1"]);
    assert_eq!(n_restarts(root), 2);
    // ps:restart reports the failure.
    assert_eq!(dokku(root, &["ps:restart", "web"]).0, 1);
    std::fs::write(root.join(".standin/fail-restarts"), "").unwrap();
    ok(root, &["ps:restart", "web"]);
    assert_eq!(n_restarts(root), 4);
    // config:unset restarts under the same rule.
    assert_eq!(
        ok(root, &["config:unset", "--no-restart", "web", "A", "B"]),
        [
            "-----> Unsetting A",
            "-----> Skipping B, it is not set in the environment"
        ]
    );
    assert_eq!(n_restarts(root), 4);

    assert_eq!(dokku(root, &["config:get", "web", "A"]), (1, Vec::new()));
    assert_eq!(
        dokku(root, &["config:set", "web", "1X=1"]),
        (1, strings(&[" !     Invalid key name: '1X'"]))
    );
    assert_eq!(
        dokku(root, &["config:set", "web", "NOPAIR"]),
        (1, strings(&[" !     Invalid env pair: NOPAIR"]))
    );
    assert_eq!(dokku(root, &["config:set", "nope", "A=1"]).0, 20);
    assert_eq!(dokku(root, &["config:set", "web", "--bogus", "A=1"]).0, 2);
}

#[test]
fn export_formats_escape_like_dokku() {
    let env: Env = [
        ("A_SPACE", "a b"),
        ("B_QUOTES", r#"it's "q""#),
        ("C_NEWLINE", "one\ntwo"),
        ("D_DOLLAR", "$HOME and `cmd` and !"),
        ("E_URL", "postgres://u:p@h/db?a=1&b=<2>"),
        ("F_NUM", "007"),
        ("G_BACKSLASH", r"a\b"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value.to_string()))
    .collect();
    let export = |format: &str| config::render_export(&env, format).unwrap();
    assert_eq!(
        export("exports"),
        [
            "export A_SPACE='a b'",
            r#"export B_QUOTES='it'\''s "q"'"#,
            "export C_NEWLINE='one\ntwo'",
            "export D_DOLLAR='$HOME and `cmd` and !'",
            "export E_URL='postgres://u:p@h/db?a=1&b=<2>'",
            "export F_NUM='007'",
            r"export G_BACKSLASH='a\b'",
        ]
        .join("\n")
    );
    assert_eq!(
        export("envfile"),
        [
            r#"A_SPACE="a b""#,
            r#"B_QUOTES="it's \"q\"""#,
            r#"C_NEWLINE="one\ntwo""#,
            r#"D_DOLLAR="\$HOME and \`cmd\` and \!""#,
            r#"E_URL="postgres://u:p@h/db?a=1&b=<2>""#,
            "F_NUM=7",
            r#"G_BACKSLASH="a\\b""#,
        ]
        .join("\n")
    );
    assert_eq!(
        export("json"),
        concat!(
            r#"{"A_SPACE":"a b","B_QUOTES":"it's \"q\"","C_NEWLINE":"one\ntwo","#,
            r#""D_DOLLAR":"$HOME and `cmd` and !","#,
            r#""E_URL":"postgres://u:p@h/db?a=1\u0026b=\u003c2\u003e","F_NUM":"007","G_BACKSLASH":"a\\b"}"#
        )
    );
    let parsed: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&export("json")).unwrap();
    assert_eq!(parsed, env);
    let list: Vec<std::collections::BTreeMap<String, String>> =
        serde_json::from_str(&export("json-list")).unwrap();
    assert_eq!(list[2]["name"], "C_NEWLINE");
    assert_eq!(list[2]["value"], "one\ntwo");
    assert!(export("json-list").starts_with(r#"[{"name":"A_SPACE","value":"a b"},"#));
    assert_eq!(
        export("shell").split(' ').take(3).collect::<Vec<_>>(),
        ["A_SPACE='a", "b'", r#"B_QUOTES='it'\''s"#]
    );
    assert!(
        export("docker-args").starts_with("--env=A_SPACE='a b' --env=B_QUOTES='it'\\''s \"q\"' ")
    );
    assert!(export("pretty").starts_with("A_SPACE:      a b\nB_QUOTES:     it's \"q\"\n"));

    // Empty environments, as Go prints them.
    let empty = Env::new();
    assert_eq!(config::render_export(&empty, "json").unwrap(), "{}");
    assert_eq!(config::render_export(&empty, "json-list").unwrap(), "null");
    assert_eq!(config::render_export(&empty, "exports").unwrap(), "");

    // godotenv sorts whole lines: `A1=` before `A=`.
    let env: Env = [("A", "x"), ("A1", "y")]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect();
    assert_eq!(
        config::render_export(&env, "envfile").unwrap(),
        "A1=\"y\"\nA=\"x\""
    );

    // Through the command: the app's ENV round-trips every value.
    let dir = host_with_web(false);
    let root = dir.path();
    ok(
        root,
        &["config:set", "--no-restart", "web", "Q=it's $x\nline2"],
    );
    assert_eq!(ok(root, &["config:get", "web", "Q"]), ["it's $x\nline2"]);
    assert_eq!(
        ok(root, &["config:export", "web", "--format", "json"]),
        [r#"{"Q":"it's $x\nline2"}"#]
    );
    assert_eq!(
        dokku(root, &["config:export", "web", "--format", "yaml"]).0,
        1
    );
}

#[test]
fn restarts_of_never_deployed_apps_warn_and_exit_0() {
    let dir = host_with_web(false);
    let root = dir.path();
    assert_eq!(
        ok(root, &["ps:restart", "web"]),
        [" !     App web has not been deployed"]
    );
    assert_eq!(n_restarts(root), 0);
    assert_eq!(dokku(root, &["ps:restart", "nope"]).0, 20);
}
