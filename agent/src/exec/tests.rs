//! The executor against a scripted stand-in (a test fixture; the agent itself
//! never uses a shell): argument vectors, line order, exit-code handling.

use std::os::unix::fs::PermissionsExt as _;

use super::*;

/// A fake `dokku` whose behaviour for each subcommand is a shell snippet; the
/// app `shop` does not exist yet. Every invocation's argv is appended to
/// `calls`, one argument per line.
fn fixture(dir: &std::path::Path, git_from_image: &str, report: &str) -> Dokku {
    fixture_with(
        dir,
        "echo ' !     App shop does not exist' >&2; exit 20",
        git_from_image,
        report,
    )
}

/// `fixture`, with the `apps:exists` behaviour given too.
fn fixture_with(dir: &std::path::Path, exists: &str, git_from_image: &str, report: &str) -> Dokku {
    let calls = dir.join("calls");
    let script = format!(
        r#"#!/bin/sh
for a in "$@"; do printf '%s\n' "$a" >> '{calls}'; done
printf -- '--\n' >> '{calls}'
case "$1" in
  apps:exists) {exists} ;;
  apps:create) echo "-----> Creating $2..." ;;
  git:from-image) {git_from_image} ;;
  apps:report) {report} ;;
  domains:report) cat '{domains}' 2>/dev/null ;;
esac
"#,
        calls = calls.display(),
        domains = dir.join("domains").display(),
    );
    let bin = dir.join("dokku");
    std::fs::write(&bin, script).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    dokku(bin)
}

fn dokku(bin: impl Into<std::path::PathBuf>) -> Dokku {
    Dokku {
        bin: bin.into(),
        host_id: HostId::parse("web-1").unwrap(),
        env: EnvName::parse("prod").unwrap(),
    }
}

fn calls(dir: &std::path::Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(dir.join("calls"))
        .unwrap()
        .split("--\n")
        .filter(|c| !c.is_empty())
        .map(|c| c.lines().map(str::to_owned).collect())
        .collect()
}

#[derive(Default)]
struct Lines(Vec<(pb::Stream, String)>);

impl LineSink for Lines {
    fn line(&mut self, stream: pb::Stream, line: String) {
        self.0.push((stream, line));
    }
}

fn deploy(image: &str) -> Action {
    Action::Deploy {
        app: AppName::parse("shop").unwrap(),
        image: ImageRef::parse(image).unwrap(),
        health: None,
    }
}

/// Runs a deploy of `image` to `shop` to the end, collecting every line.
async fn run_deploy(dokku: &Dokku, image: &str) -> (pb::CommandResult, Lines) {
    let mut lines = Lines::default();
    let result = dokku
        .execute(&deploy(image), &mut lines, &CancellationToken::new())
        .await;
    (result, lines)
}

#[tokio::test]
async fn creates_a_missing_app_then_deploys_with_exact_arguments_and_line_order() {
    let dir = tempfile::tempdir().unwrap();
    let dokku = fixture(
        dir.path(),
        "echo '-----> one'; echo ' !     two' >&2; echo '-----> three'; echo ' !     four' >&2",
        "echo acme/shop:1",
    );
    let (result, lines) = run_deploy(&dokku, "acme/shop:1").await;
    assert_eq!(
        result.outcome,
        i32::from(pb::Outcome::Succeeded),
        "{result:?}"
    );
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(result.deployed_image, "acme/shop:1");
    // The app had to be created: there was nothing deployed before.
    assert_eq!(result.previous_image, "");
    assert_eq!(
        calls(dir.path()),
        [
            vec!["apps:exists", "shop"],
            vec!["apps:create", "shop"],
            vec!["git:from-image", "shop", "acme/shop:1"],
            vec!["apps:report", "shop", "--app-deploy-source-metadata"],
        ]
    );
    let dokku_lines: Vec<_> = lines
        .0
        .iter()
        .filter(|(s, _)| *s != pb::Stream::Agent)
        .map(|(s, l)| (*s, l.as_str()))
        .collect();
    assert_eq!(
        dokku_lines,
        [
            (pb::Stream::Stderr, " !     App shop does not exist"),
            (pb::Stream::Stdout, "-----> Creating shop..."),
            (pb::Stream::Stdout, "-----> one"),
            (pb::Stream::Stderr, " !     two"),
            (pb::Stream::Stdout, "-----> three"),
            (pb::Stream::Stderr, " !     four"),
        ]
    );
    assert!(lines.0.iter().any(|(s, l)| *s == pb::Stream::Agent && l == "$ dokku git:from-image shop acme/shop:1"));
}

/// An existing app whose deployed image lives in `state`: `git:from-image`
/// runs `deploy` (a snippet that may change it), `apps:report` prints it.
fn existing_app(dir: &std::path::Path, deploy: &str) -> Dokku {
    let state = dir.join("state");
    std::fs::write(&state, "acme/shop:1\n").unwrap();
    let deploy = deploy.replace("STATE", &state.display().to_string());
    fixture_with(
        dir,
        "exit 0",
        &deploy,
        &format!("cat '{}'", state.display()),
    )
}

#[tokio::test]
async fn previous_image_is_read_before_deploying_an_existing_app() {
    let dir = tempfile::tempdir().unwrap();
    let dokku = existing_app(dir.path(), "echo '-----> deployed'; echo $3 > 'STATE'");
    let (result, _) = run_deploy(&dokku, "acme/shop:2").await;
    assert_eq!(
        result.outcome,
        i32::from(pb::Outcome::Succeeded),
        "{result:?}"
    );
    assert_eq!(result.previous_image, "acme/shop:1");
    assert_eq!(result.deployed_image, "acme/shop:2");
    assert_eq!(
        calls(dir.path()),
        [
            vec!["apps:exists", "shop"],
            vec!["apps:report", "shop", "--app-deploy-source-metadata"],
            vec!["git:from-image", "shop", "acme/shop:2"],
            vec!["apps:report", "shop", "--app-deploy-source-metadata"],
        ]
    );
}

#[tokio::test]
async fn previous_image_is_reported_for_failures_and_rollbacks() {
    let dir = tempfile::tempdir().unwrap();
    let dokku = existing_app(
        dir.path(),
        "echo ' !     Could not start due to 1 failed checks (web.1)' >&2; exit 1",
    );
    let (result, _) = run_deploy(&dokku, "acme/shop:2").await;
    assert_eq!(result.outcome, i32::from(pb::Outcome::Failed));
    assert_eq!(result.previous_image, "acme/shop:1");
    assert_eq!(result.deployed_image, "acme/shop:1");

    let dir = tempfile::tempdir().unwrap();
    let dokku = existing_app(dir.path(), "echo $3 > 'STATE'");
    let rollback = Action::Rollback {
        app: AppName::parse("shop").unwrap(),
        image: ImageRef::parse("acme/shop:0").unwrap(),
        release: 3,
    };
    let result = dokku
        .execute(&rollback, &mut Lines::default(), &CancellationToken::new())
        .await;
    assert_eq!(
        result.outcome,
        i32::from(pb::Outcome::Succeeded),
        "{result:?}"
    );
    assert_eq!(
        (
            result.previous_image.as_str(),
            result.deployed_image.as_str()
        ),
        ("acme/shop:1", "acme/shop:0")
    );
}

#[tokio::test]
async fn no_changes_for_the_deployed_image_is_success() {
    let dir = tempfile::tempdir().unwrap();
    let dokku = fixture(
        dir.path(),
        "echo ' !     No changes detected, skipping git commit' >&2; exit 1",
        "echo acme/shop:1",
    );
    let (result, lines) = run_deploy(&dokku, "acme/shop:1").await;
    assert_eq!(
        result.outcome,
        i32::from(pb::Outcome::Succeeded),
        "{result:?}"
    );
    assert_eq!(result.exit_code, Some(1));
    assert!(
        lines
            .0
            .iter()
            .any(|(_, l)| l.contains("already at acme/shop:1"))
    );
}

#[tokio::test]
async fn no_changes_for_another_image_and_other_failures_fail_with_dokkus_message() {
    let dir = tempfile::tempdir().unwrap();
    // Dokku says "no changes" but reports a different image: not a success.
    let dokku = fixture(
        dir.path(),
        "echo ' !     No changes detected, skipping git commit' >&2; exit 1",
        "echo acme/shop:0",
    );
    let (result, _) = run_deploy(&dokku, "acme/shop:1").await;
    assert_eq!(result.outcome, i32::from(pb::Outcome::Failed));

    let dir = tempfile::tempdir().unwrap();
    let dokku = fixture(
        dir.path(),
        "echo ' !     Could not start due to 1 failed checks (web.1)' >&2; exit 1",
        "echo acme/shop:0",
    );
    let (result, _) = run_deploy(&dokku, "acme/shop:1").await;
    assert_eq!(result.outcome, i32::from(pb::Outcome::Failed));
    assert_eq!(result.exit_code, Some(1));
    assert_eq!(
        result.error,
        "dokku git:from-image exited with 1: Could not start due to 1 failed checks (web.1)"
    );
    assert_eq!(result.deployed_image, "acme/shop:0");
}

/// Cancels the run as soon as dokku prints `needle` (an event, not a timer).
struct CancelOn {
    needle: &'static str,
    cancel: CancellationToken,
}

impl LineSink for CancelOn {
    fn line(&mut self, _: pb::Stream, line: String) {
        if line == self.needle {
            self.cancel.cancel();
        }
    }
}

#[tokio::test]
async fn cancelling_kills_dokku_and_reports_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    // The deploy starts a child of its own (as dokku starts docker), then waits.
    let pids = dir.path().join("pids");
    let script = format!(
        "sleep 600 & echo $! > '{p}'; echo $$ >> '{p}'; echo started; wait",
        p = pids.display()
    );
    let dokku = fixture(dir.path(), &script, "echo x");
    let cancel = CancellationToken::new();
    let mut sink = CancelOn {
        needle: "started",
        cancel: cancel.clone(),
    };
    let action = deploy("acme/shop:1");
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        dokku.execute(&action, &mut sink, &cancel),
    )
    .await
    .expect("cancel must end the run");
    assert_eq!(
        result.outcome,
        i32::from(pb::Outcome::Interrupted),
        "{result:?}"
    );
    // dokku and what it started are gone (killed as a process group). SIGKILL
    // takes effect asynchronously, so allow it a bounded moment.
    for pid in std::fs::read_to_string(&pids).unwrap().split_whitespace() {
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|stat| !stat.contains(") Z "))
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while alive() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let survived = alive();
        if survived {
            let _ = std::process::Command::new("kill").arg(pid).status();
        }
        assert!(!survived, "process {pid} survived the cancel");
    }
}

#[tokio::test]
async fn a_missing_dokku_binary_is_a_clear_failure() {
    let dokku = dokku("/nonexistent/dokku");
    let (result, _) = run_deploy(&dokku, "acme/shop:1").await;
    assert_eq!(result.outcome, i32::from(pb::Outcome::Failed));
    assert!(
        result.error.contains("cannot start /nonexistent/dokku"),
        "{}",
        result.error
    );
}

#[tokio::test]
async fn a_process_left_holding_the_output_does_not_hang_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    // dokku exits at once, but leaves a background process with its stdout.
    let pid_file = dir.path().join("bg.pid");
    let script = format!(
        "echo deployed; sleep 600 & echo $! > '{}'; exit 0",
        pid_file.display()
    );
    let dokku = fixture(dir.path(), &script, "echo acme/shop:1");
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        dokku.execute(
            &deploy("acme/shop:1"),
            &mut Lines::default(),
            &CancellationToken::new(),
        ),
    )
    .await;
    // Clean up before asserting, so a failure leaks nothing.
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let _ = std::process::Command::new("kill").arg(pid.trim()).status();
    let result = result.expect("must not wait for the background process");
    assert_eq!(
        result.outcome,
        i32::from(pb::Outcome::Succeeded),
        "{result:?}"
    );
}

#[tokio::test]
async fn lines_are_split_and_huge_lines_cut_while_reading() {
    let mut input = b"one\r\nstep 1%\rstep 2%\r::stop-commands::x\n".to_vec();
    input.extend(vec![b'x'; MAX_LINE_BYTES * 3]);
    input.extend(b"\nlast without newline");
    let mut reader = LineReader::new(input.as_slice());
    assert_eq!(reader.next_line().await.unwrap().as_deref(), Some("one"));
    assert_eq!(
        reader.next_line().await.unwrap().as_deref(),
        Some("::stop-commands::x")
    );
    let huge = reader.next_line().await.unwrap().unwrap();
    assert_eq!(huge.len(), MAX_LINE_BYTES + " …[line truncated]".len());
    assert!(huge.ends_with("[line truncated]"));
    assert_eq!(
        reader.next_line().await.unwrap().as_deref(),
        Some("last without newline")
    );
    assert_eq!(reader.next_line().await.unwrap(), None);
}

fn deploy_checked(image: &str, url_template: &str, expect: &str, deadline_ms: u64) -> Action {
    let check = HealthCheck::new(
        url_template,
        "/health",
        expect,
        std::time::Duration::from_millis(deadline_ms),
        std::time::Duration::from_millis(10),
        std::time::Duration::ZERO,
        std::time::Duration::from_millis(500),
    )
    .unwrap();
    Action::Deploy {
        app: AppName::parse("shop").unwrap(),
        image: ImageRef::parse(image).unwrap(),
        health: Some(check),
    }
}

async fn execute(dokku: &Dokku, action: &Action) -> (pb::CommandResult, Vec<String>) {
    flotilla_shared::tls::install_crypto_provider();
    let mut lines = Lines::default();
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        dokku.execute(action, &mut lines, &CancellationToken::new()),
    )
    .await
    .expect("deploys end");
    let agent = lines
        .0
        .into_iter()
        .filter(|(s, _)| *s == pb::Stream::Agent)
        .map(|(_, l)| l)
        .collect();
    (result, agent)
}

#[tokio::test]
async fn a_healthy_deploy_succeeds_after_the_gate() {
    let server = health::tests::serve(&[503, 200]).await;
    let dir = tempfile::tempdir().unwrap();
    let dokku = existing_app(dir.path(), "echo $3 > 'STATE'");
    // `{host}` and `{env}` are this agent's; the server ignores the path.
    let template = format!("{}/{{env}}/{{host}}/{{app}}", server.url);
    let (result, lines) = execute(
        &dokku,
        &deploy_checked("acme/shop:2", &template, "2xx", 10_000),
    )
    .await;
    assert_eq!(
        result.outcome,
        i32::from(pb::Outcome::Succeeded),
        "{result:?}"
    );
    assert_eq!(
        (
            result.previous_image.as_str(),
            result.deployed_image.as_str()
        ),
        ("acme/shop:1", "acme/shop:2")
    );
    let url = format!("{}/prod/web-1/shop/health", server.url);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("health: GET {url} every"))),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("health: GET {url} → 200 (healthy "))),
        "{lines:?}"
    );
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_unhealthy_deploy_fails_with_the_verdict_and_the_new_image_reported() {
    let server = health::tests::serve(&[503]).await;
    let dir = tempfile::tempdir().unwrap();
    let dokku = existing_app(dir.path(), "echo $3 > 'STATE'");
    let (result, lines) = execute(
        &dokku,
        &deploy_checked("acme/shop:2", &server.url, "2xx", 200),
    )
    .await;
    let verdict = "health check failed after 200ms: last status 503 (expected 2xx)";
    assert_eq!(result.outcome, i32::from(pb::Outcome::Failed));
    assert_eq!(result.error, verdict);
    assert_eq!(result.exit_code, Some(0), "git:from-image's exit code");
    assert_eq!(
        (
            result.previous_image.as_str(),
            result.deployed_image.as_str()
        ),
        ("acme/shop:1", "acme/shop:2")
    );
    assert_eq!(lines.last().map(String::as_str), Some(verdict));
}

#[tokio::test]
async fn no_changes_still_runs_the_gate_and_a_failed_deploy_does_not() {
    let server = health::tests::serve(&[503]).await;
    let dir = tempfile::tempdir().unwrap();
    let dokku = existing_app(
        dir.path(),
        "echo ' !     No changes detected, skipping git commit' >&2; exit 1",
    );
    let (result, _) = execute(
        &dokku,
        &deploy_checked("acme/shop:1", &server.url, "2xx", 200),
    )
    .await;
    assert_eq!(result.outcome, i32::from(pb::Outcome::Failed));
    assert_eq!(result.exit_code, Some(1));
    assert!(
        result.error.starts_with("health check failed after 200ms"),
        "{}",
        result.error
    );

    let server = health::tests::serve(&[200]).await;
    let dir = tempfile::tempdir().unwrap();
    let dokku = existing_app(
        dir.path(),
        "echo ' !     Could not start due to 1 failed checks (web.1)' >&2; exit 1",
    );
    let (result, _) = execute(
        &dokku,
        &deploy_checked("acme/shop:2", &server.url, "2xx", 5_000),
    )
    .await;
    assert_eq!(
        result.error,
        "dokku git:from-image exited with 1: Could not start due to 1 failed checks (web.1)"
    );
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_domain_comes_from_dokku_and_its_absence_fails_the_check() {
    let server = health::tests::serve(&[200]).await;
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    let template = format!("http://{{domain}}:{port}");
    let dir = tempfile::tempdir().unwrap();
    let dokku = existing_app(dir.path(), "echo $3 > 'STATE'");
    std::fs::write(dir.path().join("domains"), "127.0.0.1 www.shop.example\n").unwrap();
    let (result, lines) = execute(
        &dokku,
        &deploy_checked("acme/shop:2", &template, "2xx", 5_000),
    )
    .await;
    assert_eq!(
        result.outcome,
        i32::from(pb::Outcome::Succeeded),
        "{result:?} {lines:?}"
    );
    assert!(calls(dir.path()).contains(&vec![
        "domains:report".to_owned(),
        "shop".to_owned(),
        "--domains-app-vhosts".to_owned()
    ]));

    std::fs::write(dir.path().join("domains"), "\n").unwrap();
    let (result, _) = execute(
        &dokku,
        &deploy_checked("acme/shop:3", &template, "2xx", 5_000),
    )
    .await;
    assert_eq!(result.outcome, i32::from(pb::Outcome::Failed));
    assert_eq!(
        result.error,
        format!(
            "health check failed: its URL http://{{domain}}:{port} needs {{domain}}, but `dokku domains:report shop --domains-app-vhosts` lists no domain"
        )
    );
    assert_eq!(result.deployed_image, "acme/shop:3");
}
