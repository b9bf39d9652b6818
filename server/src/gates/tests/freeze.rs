//! Freeze windows: weekly parsing and containment (incl. wrap-around),
//! one-off windows, validation, storage and the freeze gate's decision.

use super::*;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

/// `y-m-d h:min` UTC as milliseconds (Howard Hinnant's days-from-civil).
fn at(y: i64, m: i64, d: i64, h: i64, min: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * DAY_MS + h * 3_600_000 + min * MINUTE_MS
}

fn weekly(text: &str) -> WeeklyWindow {
    WeeklyWindow::parse(text).unwrap()
}

#[test]
fn gates_freeze_test_clock_is_right() {
    assert_eq!(at(1970, 1, 1, 0, 0), 0);
    assert_eq!(
        flotilla_shared::time::format_ms(at(2026, 11, 27, 18, 30)),
        "2026-11-27T18:30:00Z"
    );
}

#[test]
fn gates_weekly_window_parses_and_displays_the_same_text() {
    for text in [
        "sat 00:00-mon 06:00",
        "fri 18:00-mon 06:00",
        "mon 09:00-mon 17:00",
        "sun 22:00-mon 02:00",
        "mon 17:00-mon 09:00",
    ] {
        assert_eq!(weekly(text).to_string(), text);
    }
    // Lenient input, canonical output.
    assert_eq!(
        weekly("  SAT 0:00 - Monday 06:00 ").to_string(),
        "sat 00:00-mon 06:00"
    );
    // Stored as the text.
    let w = weekly("fri 18:00-mon 06:00");
    let json = serde_json::to_string(&Window::Weekly(w)).unwrap();
    assert_eq!(json, r#"{"weekly":"fri 18:00-mon 06:00"}"#);
    assert_eq!(
        serde_json::from_str::<Window>(&json).unwrap(),
        Window::Weekly(w)
    );
    assert!(serde_json::from_str::<Window>(r#"{"weekly":"fri 18:00"}"#).is_err());
}

#[test]
fn gates_weekly_window_parse_errors_are_clear() {
    for (text, reason) in [
        ("", "missing '-' between start and end"),
        ("sat 00:00", "missing '-' between start and end"),
        ("sat-mon", "start: \"sat\" is not \"DAY HH:MM\""),
        (
            "xyz 00:00-mon 06:00",
            "start: unknown day \"xyz\" (use mon, tue, wed, thu, fri, sat, sun)",
        ),
        (
            "sat 24:00-mon 06:00",
            "start: \"24:00\" is not a time HH:MM between 00:00 and 23:59",
        ),
        (
            "sat 00:00-mon 06:60",
            "end: \"06:60\" is not a time HH:MM between 00:00 and 23:59",
        ),
        (
            "sat 00:0-mon 06:00",
            "start: \"00:0\" is not a time HH:MM between 00:00 and 23:59",
        ),
        (
            "sat +1:00-mon 06:00",
            "start: \"+1:00\" is not a time HH:MM between 00:00 and 23:59",
        ),
        (
            "sat 00:00-mon 06:00-tue 01:00",
            "end: \"mon 06:00-tue 01:00\" is not \"DAY HH:MM\"",
        ),
        ("sat 10:00-sat 10:00", "start and end are the same"),
    ] {
        let err = WeeklyWindow::parse(text).expect_err(text);
        assert_eq!(
            err,
            FreezeError::Weekly {
                text: text.to_owned(),
                reason: reason.to_owned()
            }
        );
        let shown = err.to_string();
        assert!(
            shown.starts_with(&format!("invalid weekly window {text:?}: {reason}"))
                && shown.ends_with("(expected e.g. \"sat 00:00-mon 06:00\", UTC)"),
            "{shown}"
        );
    }
}

#[test]
fn gates_weekly_window_wraps_over_the_weekend() {
    // 2026-11-27 is a Friday; 2026-11-30 a Monday.
    let w = weekly("fri 18:00-mon 06:00");
    let cases = [
        (at(2026, 11, 27, 17, 59), false),
        (at(2026, 11, 27, 18, 0), true),
        (at(2026, 11, 28, 12, 0), true),
        (at(2026, 11, 29, 23, 59), true),
        (at(2026, 11, 30, 5, 59), true),
        (at(2026, 11, 30, 6, 0), false),
        (at(2026, 12, 2, 12, 0), false),
        (at(2026, 12, 4, 18, 0), true),  // the next Friday
        (at(1969, 12, 27, 12, 0), true), // a Saturday before the epoch
    ];
    for (ms, inside) in cases {
        assert_eq!(
            w.contains(ms),
            inside,
            "{}",
            flotilla_shared::time::format_ms(ms)
        );
    }
    let window = Window::Weekly(w);
    assert_eq!(
        window.end_after(at(2026, 11, 28, 12, 0)),
        Some(at(2026, 11, 30, 6, 0))
    );
    assert_eq!(
        window.end_after(at(2026, 11, 27, 18, 0)),
        Some(at(2026, 11, 30, 6, 0))
    );
    assert_eq!(window.end_after(at(2026, 12, 2, 12, 0)), None);
    assert_eq!(window.to_string(), "weekly fri 18:00-mon 06:00 UTC");
}

#[test]
fn gates_weekly_window_within_a_week_and_across_sunday_midnight() {
    let office = weekly("mon 09:00-mon 17:00");
    assert!(!office.contains(at(2026, 11, 30, 8, 59)));
    assert!(office.contains(at(2026, 11, 30, 9, 0)));
    assert!(office.contains(at(2026, 11, 30, 16, 59)));
    assert!(!office.contains(at(2026, 11, 30, 17, 0)));
    assert!(!office.contains(at(2026, 12, 1, 10, 0)));

    let midnight = weekly("sun 22:00-mon 02:00");
    assert!(midnight.contains(at(2026, 11, 29, 23, 0)));
    assert!(midnight.contains(at(2026, 11, 30, 0, 0)));
    assert!(!midnight.contains(at(2026, 11, 30, 2, 0)));
    assert_eq!(
        Window::Weekly(midnight).end_after(at(2026, 11, 29, 22, 0)),
        Some(at(2026, 11, 30, 2, 0))
    );

    // Everything but Monday office hours.
    let inverse = weekly("mon 17:00-mon 09:00");
    assert!(inverse.contains(at(2026, 12, 1, 10, 0)));
    assert!(!inverse.contains(at(2026, 11, 30, 10, 0)));
}

#[test]
fn gates_one_off_window_contains_from_but_not_until() {
    let (from_ms, until_ms) = (at(2026, 12, 24, 0, 0), at(2026, 12, 27, 0, 0));
    let window = Window::Once { from_ms, until_ms };
    assert!(!window.contains(from_ms - 1));
    assert!(window.contains(from_ms));
    assert!(window.contains(until_ms - 1));
    assert!(!window.contains(until_ms));
    assert_eq!(window.end_after(from_ms), Some(until_ms));
    assert_eq!(window.end_after(until_ms), None);
    assert_eq!(
        window.to_string(),
        "from 2026-12-24T00:00:00Z until 2026-12-27T00:00:00Z"
    );
}

#[test]
fn gates_freeze_new_validates() {
    let now = at(2026, 11, 28, 12, 0);
    let prod = env("production");
    let once = |from_ms, until_ms| Window::Once { from_ms, until_ms };
    let new = |window, reason: &str| Freeze::new(prod.clone(), window, reason, "alice", now);

    let f = new(once(now, now + DAY_MS), "  black friday  ").unwrap();
    assert_eq!(f.reason, "black friday");
    assert_eq!(f.created_by, "alice");
    assert_eq!(f.created_at_ms, now);
    assert_eq!(uuid::Uuid::parse_str(&f.id).unwrap().get_version_num(), 7);
    assert_ne!(new(once(now, now + 1), "x").unwrap().id, f.id);
    // A window that started in the past but still runs is fine.
    assert!(new(once(now - DAY_MS, now + 1), "x").is_ok());
    assert!(new(once(now, now + 90 * DAY_MS), "x").is_ok());
    assert!(new(Window::Weekly(weekly("sat 00:00-mon 06:00")), "weekends").is_ok());

    for (window, reason, err) in [
        (once(now, now), "x", FreezeError::EndsBeforeStart),
        (once(now + 5, now), "x", FreezeError::EndsBeforeStart),
        (
            once(now, now + 90 * DAY_MS + 1),
            "x",
            FreezeError::TooLong { days: 91 },
        ),
        (
            once(now - 2 * DAY_MS, now - DAY_MS),
            "x",
            FreezeError::AlreadyOver {
                until_ms: now - DAY_MS,
            },
        ),
        (once(now, now + DAY_MS), " \n", FreezeError::EmptyReason),
        (
            Window::Weekly(weekly("sat 00:00-mon 06:00")),
            "",
            FreezeError::EmptyReason,
        ),
    ] {
        assert_eq!(new(window, reason).unwrap_err(), err);
    }
    assert_eq!(
        new(once(now, now + 1), &"é".repeat(MAX_REASON_CHARS + 1)).unwrap_err(),
        FreezeError::ReasonTooLong(MAX_REASON_CHARS + 1)
    );
    assert!(new(once(now, now + 1), &"é".repeat(MAX_REASON_CHARS)).is_ok());
    assert_eq!(
        FreezeError::AlreadyOver {
            until_ms: at(2026, 11, 27, 0, 0)
        }
        .to_string(),
        "this freeze already ended at 2026-11-27T00:00:00Z"
    );
}

#[test]
fn gates_freezes_round_trip_through_the_store() {
    let t = temp_store();
    let now = at(2026, 11, 28, 12, 0); // a Saturday
    let (prod, staging) = (env("production"), env("staging"));
    let holidays = Freeze::new(
        prod.clone(),
        Window::Once {
            from_ms: at(2026, 12, 24, 0, 0),
            until_ms: at(2026, 12, 27, 0, 0),
        },
        "holidays",
        "alice",
        now,
    )
    .unwrap();
    let weekends = Freeze::new(
        prod.clone(),
        Window::Weekly(weekly("fri 18:00-mon 06:00")),
        "no weekend deploys",
        "bob",
        now,
    )
    .unwrap();
    let staging_freeze = Freeze::new(
        staging.clone(),
        Window::Once {
            from_ms: now,
            until_ms: now + DAY_MS,
        },
        "load test",
        "carol",
        now,
    )
    .unwrap();
    for f in [&holidays, &weekends, &staging_freeze] {
        t.store.put_freeze(f).unwrap();
    }

    assert_eq!(
        t.store.freezes(None).unwrap(),
        [holidays.clone(), weekends.clone(), staging_freeze.clone()],
        "oldest first, records unchanged"
    );
    assert_eq!(
        t.store.freezes(Some(&prod)).unwrap(),
        [holidays.clone(), weekends.clone()]
    );
    assert_eq!(
        t.store.freezes(Some(&staging)).unwrap(),
        std::slice::from_ref(&staging_freeze)
    );

    // Saturday noon: the weekend window; Christmas Eve (a Thursday): the holidays.
    assert_eq!(
        active_freeze(&t.store, &prod, now).unwrap(),
        Some(weekends.clone())
    );
    assert_eq!(
        active_freeze(&t.store, &prod, at(2026, 12, 24, 12, 0)).unwrap(),
        Some(holidays.clone())
    );
    let wednesday = at(2026, 12, 2, 12, 0);
    assert_eq!(active_freeze(&t.store, &prod, wednesday).unwrap(), None);
    assert_eq!(active_freeze(&t.store, &env("dev"), now).unwrap(), None);

    assert!(t.store.delete_freeze(&weekends.id).unwrap());
    assert!(!t.store.delete_freeze(&weekends.id).unwrap());
    assert!(!t.store.delete_freeze("no-such-id").unwrap());
    assert_eq!(active_freeze(&t.store, &prod, now).unwrap(), None);
    assert_eq!(t.store.freezes(None).unwrap(), [holidays, staging_freeze]);
}

#[test]
fn gates_freeze_decisions() {
    let now = at(2026, 11, 28, 12, 0);
    let prod = env("production");
    let freeze = Freeze::new(
        prod.clone(),
        Window::Weekly(weekly("fri 18:00-mon 06:00")),
        "no weekend deploys",
        "bob",
        now,
    )
    .unwrap();

    let open = GateDecision::freeze(&prod, None, None, now);
    assert!(open.allowed);
    assert_eq!((open.gate, open.source), (Gate::Freeze, Source::Window));
    assert_eq!(open.reason, "no freeze window is active for production");

    let blocked = GateDecision::freeze(&prod, Some(&freeze), None, now);
    assert!(!blocked.allowed);
    assert_eq!(blocked.source, Source::Window);
    assert_eq!(
        blocked.reason,
        format!(
            "production is frozen until 2026-11-30T06:00:00Z (weekly fri 18:00-mon 06:00 UTC; freeze {} by bob): no weekend deploys",
            freeze.id
        )
    );

    let overridden = GateDecision::freeze(&prod, Some(&freeze), Some("admin-ann"), now);
    assert!(overridden.allowed);
    assert_eq!(overridden.source, Source::Override);
    assert_eq!(
        overridden.reason,
        format!(
            "freeze {} on production overridden by admin-ann (it says: no weekend deploys)",
            freeze.id
        )
    );
    assert_eq!(overridden.at_ms, now);
}
