use clap::Parser as _;

use super::*;

#[derive(clap::Parser)]
struct Flags {
    #[command(flatten)]
    strategy: StrategyArgs,
}

/// Parses deploy's rollout flags as clap would, then builds the strategy.
fn strategy(args: &[&str]) -> Result<pb::Strategy, String> {
    let flags = Flags::try_parse_from(std::iter::once("deploy").chain(args.iter().copied()))
        .map_err(|e| e.to_string())?;
    flags.strategy.to_proto()
}

fn check_batch(input: &str, expected: Option<Batch>) {
    assert_eq!(parse_batch(input).ok(), expected, "{input:?}");
}

#[test]
fn batch_is_a_count_or_a_share() {
    check_batch("1", Some(Batch::Hosts(1)));
    check_batch("12", Some(Batch::Hosts(12)));
    check_batch(" 3 ", Some(Batch::Hosts(3)));
    check_batch("25%", Some(Batch::Percent(25)));
    check_batch("100%", Some(Batch::Percent(100)));
    check_batch("1%", Some(Batch::Percent(1)));
    for bad in [
        "0",
        "0%",
        "101%",
        "-1",
        "1.5",
        "%",
        "",
        "a",
        "25 %%",
        "4294967296",
    ] {
        check_batch(bad, None);
    }
    assert_eq!(Batch::Percent(25).to_string(), "25%");
    assert_eq!(Batch::Hosts(3).to_string(), "3");
}

#[test]
fn selector_is_label_pairs() {
    let labels = parse_selector("region=eu, tier=web").unwrap();
    let map: Vec<(&String, &String)> = labels.iter().collect();
    assert_eq!(
        map,
        [
            (&"region".to_owned(), &"eu".to_owned()),
            (&"tier".to_owned(), &"web".to_owned())
        ]
    );
    assert!(
        parse_selector("canary=").is_ok(),
        "empty values are labels too"
    );
    for bad in [
        "",
        ",",
        "region",
        "=eu",
        "re gion=eu",
        "a=1,a=2",
        "region=e/u",
    ] {
        assert!(parse_selector(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn defaults_send_one_host_per_batch_and_leave_auto_rollback_unset() {
    let s = strategy(&[]).unwrap();
    assert_eq!(
        s,
        pb::Strategy {
            batch: "1".into(),
            canary: 0,
            canary_manual: false,
            pause_ms: 0,
            max_failures: 0,
            hosts: Default::default(),
            auto_rollback: None,
            health: None,
        }
    );
}

#[test]
fn every_rollout_flag_reaches_the_strategy() {
    let s = strategy(&[
        "--batch",
        "25%",
        "--canary",
        "2",
        "--canary-manual",
        "--pause",
        "1m30s",
        "--max-failures",
        "3",
        "--hosts",
        "region=eu,tier=web",
        "--no-auto-rollback",
    ])
    .unwrap();
    assert_eq!(s.batch, "25%");
    assert_eq!(s.canary, 2);
    assert!(s.canary_manual);
    assert_eq!(s.pause_ms, 90_000);
    assert_eq!(s.max_failures, 3);
    assert_eq!(s.hosts.len(), 2);
    assert_eq!(s.hosts["region"], "eu");
    assert_eq!(s.auto_rollback, Some(false));
    assert_eq!(s.health, None);
}

#[test]
fn health_gate_needs_a_path_and_takes_the_documented_defaults() {
    let s = strategy(&["--health-path", "/health"]).unwrap();
    assert_eq!(
        s.health,
        Some(pb::HealthGate {
            path: "/health".into(),
            url_template: String::new(),
            expect: "2xx".into(),
            healthy_deadline_ms: 60_000,
            interval_ms: 1_000,
            min_healthy_ms: 0,
            timeout_ms: 5_000,
        })
    );
    let s = strategy(&[
        "--health-path",
        "/up",
        "--health-url",
        "https://{domain}",
        "--health-expect",
        "200,301-302",
        "--healthy-deadline",
        "2m",
        "--health-interval",
        "500ms",
        "--min-healthy-time",
        "10s",
        "--health-timeout",
        "2s",
    ])
    .unwrap();
    let h = s.health.unwrap();
    assert_eq!(h.url_template, "https://{domain}");
    assert_eq!(h.expect, "200,301-302");
    assert_eq!(
        (
            h.healthy_deadline_ms,
            h.interval_ms,
            h.min_healthy_ms,
            h.timeout_ms
        ),
        (120_000, 500, 10_000, 2_000)
    );

    // Any health flag without --health-path is a usage error.
    for args in [
        &["--health-url", "http://{host}:5000"][..],
        &["--health-expect", "200"],
        &["--healthy-deadline", "10s"],
    ] {
        let err = strategy(args).unwrap_err();
        assert!(err.contains("--health-path"), "{args:?}: {err}");
    }
}

#[test]
fn bad_values_are_refused_before_anything_is_sent() {
    for (args, needle) in [
        (&["--batch", "0"][..], "number of hosts"),
        (&["--batch", "150%"], "1% to 100%"),
        (&["--pause", "soon"], "e.g. 30s"),
        (&["--hosts", "region"], "key=value"),
        (&["--canary-manual"], "--canary"),
        (&["--health-path", "health"], "must start with /"),
        (
            &["--health-path", "/", "--health-url", "127.0.0.1:5000"],
            "http://",
        ),
        (
            &["--health-path", "/", "--health-url", "http://{port}"],
            "placeholders",
        ),
        (
            &["--health-path", "/", "--health-expect", "2yy"],
            "expected status",
        ),
        (
            &["--health-path", "/", "--health-interval", "0s"],
            "longer than 0",
        ),
        (
            &["--health-path", "/", "--healthy-deadline", "2h"],
            "at most 1h",
        ),
        (
            &[
                "--health-path",
                "/",
                "--healthy-deadline",
                "10s",
                "--min-healthy-time",
                "10s",
            ],
            "shorter than --healthy-deadline",
        ),
    ] {
        let err = strategy(args).unwrap_err();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
