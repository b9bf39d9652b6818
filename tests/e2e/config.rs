//! App config and secrets (docs/config.md) through the real CLI and coordinator: secrets show
//! as `***` everywhere but an admin's audited `--reveal`, never reach the sled files, the audit
//! log or the coordinator's log; staging and production are separate; roles and scopes; key
//! validation; no secrets key → secrets refused; key rotation and `config reseal`.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use flotilla_tests::{Server, text};

/// The secret values of these tests; none may show up where it should not.
const SECRET: &str = "sk_live_Zq8v3Ng7Wd2Lp5Hx";
const STDIN_SECRET: &str = "from-stdin-Tr4mK9cQ2bYe";
const STAGING_SECRET: &str = "staging-only-Vb6Jh1Rs0Pa";

fn start(root: &Path) -> Server {
    let data_dir = Server::init(root).unwrap();
    Server::start(&data_dir, "127.0.0.1:0", &[]).unwrap()
}

fn token(s: &Server, args: &[&str]) -> String {
    let mut all = vec!["token", "create"];
    all.extend(args);
    let out = s.cli(&all).unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Runs `flotilla ARGS` as `token` with `stdin` piped in (bounded by the harness's WAIT).
fn cli_stdin(s: &Server, token: &str, args: &[&str], stdin: &str) -> Output {
    let mut cmd: Command = s.cli_as(token, args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(flotilla_tests::WAIT).unwrap().unwrap()
}

/// Every output must be free of every secret.
/// `out` failed with exit `code` and says `needle`.
fn refused(out: &Output, code: i32, needle: &str) {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    assert!(text(out).contains(needle), "{}", text(out));
}

fn assert_clean(what: &str, output: &str) {
    for secret in [SECRET, STDIN_SECRET, STAGING_SECRET] {
        assert!(!output.contains(secret), "{what} shows a secret: {output}");
    }
}

#[test]
fn config_secrets_are_redacted_everywhere_but_an_admin_reveal() {
    let root = tempfile::tempdir().unwrap();
    let s = start(root.path());
    let admin = s.admin_token();
    let deployer = token(
        &s,
        &["--role", "deployer", "--name", "ci-web", "--apps", "web"],
    );
    let viewer = token(&s, &["--role", "viewer", "--name", "watcher"]);
    let other_team = token(
        &s,
        &["--role", "deployer", "--name", "ci-shop", "--apps", "shop"],
    );
    let outputs: std::cell::RefCell<Vec<(String, String)>> = std::cell::RefCell::default();
    let run = |token: &str, args: &[&str]| -> Output {
        let out = flotilla_tests::run(s.cli_as(token, args)).unwrap();
        outputs.borrow_mut().push((args.join(" "), text(&out)));
        out
    };

    // A deployer scoped to the app sets plain and secret values; one secret from stdin.
    let out = run(
        &deployer,
        &[
            "config",
            "set",
            "web",
            "--env",
            "production",
            "PORT=5000",
            "LOG_LEVEL=info",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let set_secret = format!("API_KEY={SECRET}");
    let out = run(
        &deployer,
        &[
            "config",
            "set",
            "web",
            "--env",
            "production",
            "--secret",
            &set_secret,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "set API_KEY (secret) for web in production"
    );
    let out = cli_stdin(
        &s,
        &deployer,
        &[
            "config",
            "set",
            "web",
            "--env",
            "production",
            "--secret",
            "DB_PASSWORD",
        ],
        &format!("{STDIN_SECRET}\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    outputs
        .borrow_mut()
        .push(("set from stdin".into(), text(&out)));
    let staging_secret = format!("API_KEY={STAGING_SECRET}");
    let out = run(
        &admin,
        &[
            "config",
            "set",
            "web",
            "--env",
            "staging",
            "--secret",
            &staging_secret,
        ],
    );
    assert!(out.status.success(), "{}", text(&out));

    // Listing: secrets are `***` for everyone, environments are separate.
    for who in [&admin, &deployer, &viewer] {
        let out = run(
            who,
            &[
                "config",
                "list",
                "web",
                "--env",
                "production",
                "--output",
                "json",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let entries: Vec<(String, bool, String)> = list["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["key"].as_str().unwrap().to_owned(),
                    e["secret"].as_bool().unwrap(),
                    e["value"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                ("API_KEY".into(), true, "***".into()),
                ("DB_PASSWORD".into(), true, "***".into()),
                ("LOG_LEVEL".into(), false, "info".into()),
                ("PORT".into(), false, "5000".into()),
            ]
        );
        assert_eq!(list["entries"][0]["updated_by"], "ci-web");
    }
    let out = run(
        &viewer,
        &[
            "config", "list", "web", "--env", "staging", "--output", "json",
        ],
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["entries"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["entries"][0]["value"], "***");
    let out = run(&viewer, &["config", "list", "web", "--env", "production"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("API_KEY"));

    // get: `***` without --reveal; --reveal is an admin's only.
    let out = run(
        &viewer,
        &["config", "get", "web", "--env", "production", "API_KEY"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "***");
    let out = run(
        &viewer,
        &["config", "get", "web", "--env", "production", "PORT"],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "5000");
    for who in [&deployer, &viewer] {
        let out = run(
            who,
            &[
                "config",
                "get",
                "web",
                "--env",
                "production",
                "API_KEY",
                "--reveal",
            ],
        );
        refused(&out, 1, "permission denied");
    }
    // The reveal's output is the one place a secret may appear: not kept in `outputs`.
    let reveal = |key: &str, env: &str| {
        let out = flotilla_tests::run(s.cli_as(
            &admin,
            &["config", "get", "web", "--env", env, key, "--reveal"],
        ))
        .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout)
            .unwrap()
            .trim_end_matches('\n')
            .to_owned()
    };
    assert_eq!(reveal("API_KEY", "production"), SECRET);
    assert_eq!(reveal("DB_PASSWORD", "production"), STDIN_SECRET);
    assert_eq!(reveal("API_KEY", "staging"), STAGING_SECRET);

    // Roles and scopes for changes.
    let out = run(
        &viewer,
        &["config", "set", "web", "--env", "production", "A=1"],
    );
    refused(&out, 1, "needs deployer");
    let out = run(
        &other_team,
        &["config", "set", "web", "--env", "production", "A=1"],
    );
    refused(&out, 1, "outside it");

    // Validation: reserved and invalid keys, with messages that say why.
    let out = run(
        &admin,
        &[
            "config",
            "set",
            "web",
            "--env",
            "production",
            "DOKKU_APP_TYPE=x",
        ],
    );
    refused(
        &out,
        1,
        "config key DOKKU_APP_TYPE is reserved (Dokku manages DOKKU_* variables)",
    );
    let bad_key = format!("1BAD={SECRET}");
    let out = run(
        &admin,
        &[
            "config",
            "set",
            "web",
            "--env",
            "production",
            "--secret",
            &bad_key,
        ],
    );
    refused(&out, 1, "\"1BAD\" is invalid");
    let out = run(
        &admin,
        &[
            "config",
            "set",
            "web",
            "--env",
            "production",
            &format!("={SECRET}"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let big = format!("BIG={}", "x".repeat(64 * 1024 + 1));
    let out = run(
        &admin,
        &["config", "set", "web", "--env", "production", &big],
    );
    assert!(
        text(&out).contains("the value of BIG is 65537 bytes"),
        "{}",
        text(&out)
    );
    let out = run(
        &admin,
        &["config", "get", "web", "--env", "production", "NOPE"],
    );
    assert!(
        text(&out).contains("web has no config key NOPE in production"),
        "{}",
        text(&out)
    );

    // Unset: staging keeps its value.
    let out = run(
        &deployer,
        &[
            "config",
            "unset",
            "web",
            "--env",
            "production",
            "API_KEY",
            "GONE",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("unset API_KEY for web in production"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("web had no value for GONE in production"),
        "{}",
        text(&out)
    );
    assert_eq!(reveal("API_KEY", "staging"), STAGING_SECRET);

    // The audit log has every change and reveal with key names, never a value.
    let out = run(&admin, &["audit", "--output", "json", "--limit", "100"]);
    let audit: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = audit.as_array().unwrap();
    let find = |action: &str, target: &str, outcome: &str| {
        entries.iter().any(|e| {
            e["action"] == action
                && e["target"].as_str().unwrap().contains(target)
                && e["outcome"].as_str().unwrap().starts_with(outcome)
        })
    };
    assert!(
        find("config-set", "web production API_KEY (secret)", "ok"),
        "{audit}"
    );
    assert!(
        find("config-set", "web production DB_PASSWORD (secret)", "ok"),
        "{audit}"
    );
    assert!(
        find("config-reveal", "web production API_KEY", "ok"),
        "{audit}"
    );
    assert!(find("config-reveal", "", "PermissionDenied"), "{audit}");
    assert!(
        find("config-unset", "web production API_KEY GONE", "ok"),
        "{audit}"
    );
    assert!(
        find(
            "config-set",
            "web production (invalid key) (secret)",
            "InvalidArgument"
        ),
        "{audit}"
    );

    // No CLI output but the reveals, no log line and no file of the data dir holds a secret.
    for (what, output) in outputs.borrow().iter() {
        assert_clean(what, output);
    }
    let data_dir = s.data_dir.clone();
    let mut s = s;
    s.proc.terminate().unwrap();
    for secret in [SECRET, STDIN_SECRET, STAGING_SECRET] {
        assert!(
            !s.proc.log.contains(secret),
            "the coordinator logged a secret"
        );
    }
    assert!(s.proc.log.contains("config value revealed"));
    for secret in [SECRET, STDIN_SECRET, STAGING_SECRET] {
        let found = flotilla_tests::files_containing(&data_dir, secret);
        assert!(found.is_empty(), "{found:?} hold a secret");
    }
    // The scan does read the store: plain config is in it as it is.
    assert!(!flotilla_tests::files_containing(&data_dir, "LOG_LEVEL").is_empty());
}

#[test]
fn config_secrets_need_a_secrets_key() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    assert!(data_dir.join("secrets.key").is_file());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(data_dir.join("secrets.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A data directory from before secrets existed.
    std::fs::remove_file(data_dir.join("secrets.key")).unwrap();
    let mut s = Server::start(&data_dir, "127.0.0.1:0", &[]).unwrap();
    assert!(s.proc.log.contains("no secrets key"));
    let out = s
        .cli(&["config", "set", "web", "--env", "production", "PORT=5000"])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let secret = format!("API_KEY={SECRET}");
    let out = s
        .cli(&[
            "config",
            "set",
            "web",
            "--env",
            "production",
            "--secret",
            &secret,
        ])
        .unwrap();
    refused(&out, 6, "flotilla-server secrets generate-key --data-dir");
    assert_clean("refused set", &text(&out));

    s.proc.terminate().unwrap();
    let out = flotilla_tests::run({
        let mut cmd = Command::new(flotilla_tests::bin("flotilla-server"));
        cmd.args(["secrets", "generate-key", "--data-dir"])
            .arg(&data_dir);
        cmd
    })
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    // It refuses to overwrite, as init does.
    let again = flotilla_tests::run({
        let mut cmd = Command::new(flotilla_tests::bin("flotilla-server"));
        cmd.args(["secrets", "generate-key", "--data-dir"])
            .arg(&data_dir);
        cmd
    })
    .unwrap();
    assert!(!again.status.success());
    assert!(
        text(&again).contains("refusing to overwrite"),
        "{}",
        text(&again)
    );

    let s = Server::start(&data_dir, "127.0.0.1:0", &[]).unwrap();
    let out = s
        .cli(&[
            "config",
            "set",
            "web",
            "--env",
            "production",
            "--secret",
            &secret,
        ])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn config_key_rotation_and_reseal() {
    let root = tempfile::tempdir().unwrap();
    let data_dir = Server::init(root.path()).unwrap();
    let key_file = data_dir.join("secrets.key");
    let s = Server::start(&data_dir, "127.0.0.1:0", &[]).unwrap();
    let secret = format!("API_KEY={SECRET}");
    let out = s
        .cli(&[
            "config",
            "set",
            "web",
            "--env",
            "production",
            "--secret",
            &secret,
        ])
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let sealed_with = |s: &Server| {
        let list = s
            .json(&["config", "list", "web", "--env", "production"])
            .unwrap();
        list["entries"][0]["sealed_with"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let old_id = sealed_with(&s);
    let mut s = s;
    s.proc.terminate().unwrap();

    // A new key first, the old one kept below it (docs/secrets.md).
    let out = flotilla_tests::run({
        let mut cmd = Command::new(flotilla_tests::bin("flotilla-server"));
        cmd.args(["secrets", "new-key", "--key-id", "rotated"]);
        cmd
    })
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let new_line = String::from_utf8(out.stdout).unwrap();
    let old = std::fs::read_to_string(&key_file).unwrap();
    std::fs::write(&key_file, format!("{new_line}{old}")).unwrap();

    let s = Server::start(&data_dir, "127.0.0.1:0", &[]).unwrap();
    let reveal = |s: &Server| {
        let out = s
            .cli(&[
                "config",
                "get",
                "web",
                "--env",
                "production",
                "API_KEY",
                "--reveal",
            ])
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(reveal(&s), SECRET);
    assert_eq!(sealed_with(&s), old_id);
    let out = s.json(&["config", "reseal"]).unwrap();
    assert_eq!(out["resealed"], 1, "{out}");
    assert_eq!(out["key_id"], "rotated");
    assert_eq!(sealed_with(&s), "rotated");
    let out = s.json(&["config", "reseal"]).unwrap();
    assert_eq!(
        (out["resealed"].as_u64(), out["current"].as_u64()),
        (Some(0), Some(1))
    );

    // The old key removed: the value still opens.
    let mut s = s;
    s.proc.terminate().unwrap();
    std::fs::write(&key_file, &new_line).unwrap();
    let s = Server::start(&data_dir, "127.0.0.1:0", &[]).unwrap();
    assert_eq!(reveal(&s), SECRET);
    assert!(!s.proc.log.contains(SECRET));
}
