//! The in-memory Dokku: images recorded per host, the fail list, the lines.

use std::time::Duration;

use flotilla_shared::health::HealthCheck;

use super::*;

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

async fn run(
    dokku: &MemoryDokku,
    action: &Action,
) -> (pb::CommandResult, Vec<(pb::Stream, String)>) {
    let mut lines = Lines::default();
    let result = dokku
        .execute(action, &mut lines, &CancellationToken::new())
        .await;
    (result, lines.0)
}

fn images(result: &pb::CommandResult) -> (&str, &str) {
    (&result.previous_image, &result.deployed_image)
}

#[tokio::test]
async fn deploys_and_rollbacks_record_the_image_and_report_previous_and_deployed() {
    let dokku = MemoryDokku::new(Arc::new(FailImages::none()));
    let (result, lines) = run(&dokku, &deploy("acme/shop:1")).await;
    assert_eq!(result.outcome, i32::from(pb::Outcome::Succeeded));
    assert_eq!(result.exit_code, Some(0));
    assert_eq!(images(&result), ("", "acme/shop:1"));
    assert_eq!(
        lines,
        [
            (
                pb::Stream::Agent,
                "$ dokku git:from-image shop acme/shop:1".to_owned()
            ),
            (pb::Stream::Stdout, "=====> Application deployed".to_owned()),
        ]
    );
    let (result, _) = run(&dokku, &deploy("acme/shop:2")).await;
    assert_eq!(images(&result), ("acme/shop:1", "acme/shop:2"));
    let rollback = Action::Rollback {
        app: AppName::parse("shop").unwrap(),
        image: ImageRef::parse("acme/shop:1").unwrap(),
        release: 1,
    };
    let (result, _) = run(&dokku, &rollback).await;
    assert_eq!(result.outcome, i32::from(pb::Outcome::Succeeded));
    assert_eq!(images(&result), ("acme/shop:2", "acme/shop:1"));
    assert_eq!(
        dokku
            .image_of(&AppName::parse("shop").unwrap())
            .map(|i| i.to_string()),
        Some("acme/shop:1".to_owned())
    );
    // Hosts are separate.
    let other = MemoryDokku::new(Arc::new(FailImages::none()));
    assert_eq!(other.image_of(&AppName::parse("shop").unwrap()), None);
}

#[tokio::test]
async fn listed_images_fail_like_unhealthy_ones_and_the_old_image_stays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fail-images");
    std::fs::write(&path, "# bad builds\nacme/shop:2\n\n").unwrap();
    let fail = Arc::new(FailImages::from_file(path.clone()).unwrap());
    let dokku = MemoryDokku::new(Arc::clone(&fail));
    run(&dokku, &deploy("acme/shop:1")).await;
    let (result, lines) = run(&dokku, &deploy("acme/shop:2")).await;
    assert_eq!(result.outcome, i32::from(pb::Outcome::Failed));
    assert_eq!(result.exit_code, Some(1));
    assert_eq!(
        result.error,
        "dokku git:from-image exited with 1: Could not start due to 1 failed checks (web.1)"
    );
    assert_eq!(images(&result), ("acme/shop:1", "acme/shop:1"));
    assert_eq!(
        lines.last().unwrap(),
        &(
            pb::Stream::Stderr,
            " !     Could not start due to 1 failed checks (web.1)".to_owned()
        )
    );
    // A first deploy that fails leaves nothing deployed.
    let fresh = MemoryDokku::new(Arc::clone(&fail));
    let (result, _) = run(&fresh, &deploy("acme/shop:2")).await;
    assert_eq!(images(&result), ("", ""));

    // The list is read at every deploy.
    std::fs::write(&path, "acme/shop:3 # and this one\n").unwrap();
    assert!(!fail.contains("acme/shop:2"));
    assert!(fail.contains("acme/shop:3"));
    assert!(FailImages::from_file(dir.path().join("missing")).is_err());
}

#[tokio::test]
async fn health_checks_are_skipped_and_say_so() {
    let dokku = MemoryDokku::new(Arc::new(FailImages::none()));
    let check = HealthCheck::new(
        "https://{app}.example.com",
        "/health",
        "",
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
    )
    .unwrap();
    let action = Action::Deploy {
        app: AppName::parse("shop").unwrap(),
        image: ImageRef::parse("acme/shop:1").unwrap(),
        health: Some(check),
    };
    let (result, lines) = run(&dokku, &action).await;
    assert_eq!(result.outcome, i32::from(pb::Outcome::Succeeded));
    assert_eq!(
        lines.last().unwrap().1,
        "health: skipped in simulation (GET https://{app}.example.com/health)"
    );
}

#[tokio::test]
async fn cancelled_before_running_is_interrupted() {
    let dokku = MemoryDokku::new(Arc::new(FailImages::none()));
    let cancel = CancellationToken::new();
    cancel.cancel();
    let result = dokku
        .execute(&deploy("acme/shop:1"), &mut Lines::default(), &cancel)
        .await;
    assert_eq!(result.outcome, i32::from(pb::Outcome::Interrupted));
    assert_eq!(dokku.image_of(&AppName::parse("shop").unwrap()), None);
}
