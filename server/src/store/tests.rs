use super::*;

fn host(id: &str) -> Host {
    Host {
        host_id: HostId::parse(id).unwrap(),
        env: EnvName::parse("prod").unwrap(),
        labels: Labels::default(),
        agent_version: "test".into(),
        joined_at_ms: 1,
        last_seen_ms: 0,
        revoked: false,
        cert_not_after_ms: 0,
    }
}

fn join_token(expires_at_ms: i64) -> JoinTokenRecord {
    JoinTokenRecord {
        expires_at_ms,
        created_by: "test".into(),
        used_by: None,
        used_at_ms: 0,
        max_uses: 1,
        uses: 0,
    }
}

fn deployment(id: &str, state: State) -> Deployment {
    Deployment {
        id: id.into(),
        app: AppName::parse("shop").unwrap(),
        env: EnvName::parse("prod").unwrap(),
        kind: DeploymentKind::Deploy,
        image: ImageRef::parse("acme/shop:1").unwrap(),
        state,
        created_at_ms: 1,
        finished_at_ms: 0,
        created_by: "test".into(),
        hosts: Vec::new(),
        error: String::new(),
        target_release: 0,
        strategy: Strategy::default(),
        batches: 1,
        current_batch: 0,
        resume_at_ms: 0,
        failures: 0,
        promoted: false,
        cancel: None,
        release: 0,
        next_event: 0,
        new_events: Vec::new(),
        gates: Vec::new(),
        override_freeze: false,
        team: None,
        gate_pending: false,
        desired: None,
    }
}

fn inserted(store: &Store, id: &str, queue: bool) -> String {
    match store
        .insert_deployment(&mut deployment(id, State::Running), queue)
        .unwrap()
    {
        Inserted::Active => "active".into(),
        Inserted::Queued { behind } => format!("queued behind {behind}"),
        Inserted::Busy { active } => format!("busy with {active}"),
    }
}

#[test]
fn join_tokens_are_single_use_expire_and_host_ids_are_unique() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.put_join_token("t1", &join_token(100)).unwrap();
    store.put_join_token("t2", &join_token(100)).unwrap();
    store.put_join_token("old", &join_token(10)).unwrap();

    assert!(matches!(
        store.join_host("nope", &host("a"), 50).unwrap(),
        JoinOutcome::UnknownToken
    ));
    assert!(matches!(
        store.join_host("old", &host("a"), 50).unwrap(),
        JoinOutcome::Expired { at_ms: 10 }
    ));
    assert!(matches!(
        store.join_host("t1", &host("a"), 50).unwrap(),
        JoinOutcome::Joined
    ));
    match store.join_host("t1", &host("b"), 60).unwrap() {
        JoinOutcome::AlreadyUsed { by, at_ms } => {
            assert_eq!(by.unwrap().as_str(), "a");
            assert_eq!(at_ms, 50);
        }
        other => panic!("{other:?}"),
    }
    // A clash on the host id does not use up the token.
    assert!(matches!(
        store.join_host("t2", &host("a"), 60).unwrap(),
        JoinOutcome::HostExists
    ));
    assert!(matches!(
        store.join_host("t2", &host("b"), 60).unwrap(),
        JoinOutcome::Joined
    ));
    let ids: Vec<String> = store
        .hosts()
        .unwrap()
        .into_iter()
        .map(|h| h.host_id.to_string())
        .collect();
    assert_eq!(ids, ["a", "b"]);
}

#[test]
fn one_active_deployment_per_app_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let first = deployment("d1", State::Running);
    assert_eq!(inserted(&store, "d1", false), "active");
    assert_eq!(inserted(&store, "d2", false), "busy with d1");

    let mut done = first.clone();
    done.state = State::Succeeded;
    let release = Release {
        number: 1,
        app: done.app.clone(),
        env: done.env.clone(),
        image: done.image.clone(),
        deployment_id: done.id.clone(),
        kind: DeploymentKind::Deploy,
        created_at_ms: 2,
    };
    store
        .save_deployment(&mut done, Some(&release), &[])
        .unwrap();
    assert_eq!(store.active_deployment(&done.app, &done.env).unwrap(), None);
    assert_eq!(inserted(&store, "d2", false), "active");
    // Newest first.
    let ids: Vec<String> = store
        .deployments()
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["d2", "d1"]);
    let ids = |list: Vec<Deployment>| list.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(store.recent_deployments(1, |_| true).unwrap()), ["d2"]);
    assert_eq!(
        ids(store.recent_deployments(5, |d| d.id == "d1").unwrap()),
        ["d1"]
    );
    // Only the unfinished one is active.
    assert_eq!(ids(store.active_deployments().unwrap()), ["d2"]);
}

#[test]
fn releases_are_per_app_and_environment_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut n = 0;
    for (app, env, number) in [
        ("shop", "prod", 1),
        ("shop", "staging", 1),
        ("shop", "prod", 2),
        ("shopx", "prod", 1),
        ("shop", "prod", 300),
    ] {
        n += 1;
        let mut d = deployment(&format!("d{n}"), State::Succeeded);
        d.app = AppName::parse(app).unwrap();
        d.env = EnvName::parse(env).unwrap();
        let release = Release {
            number,
            app: d.app.clone(),
            env: d.env.clone(),
            image: ImageRef::parse(format!("acme/{app}:{number}")).unwrap(),
            deployment_id: d.id.clone(),
            kind: DeploymentKind::Deploy,
            created_at_ms: n,
        };
        store.save_deployment(&mut d, Some(&release), &[]).unwrap();
    }
    let prod: Vec<u64> = store
        .releases(
            &AppName::parse("shop").unwrap(),
            &EnvName::parse("prod").unwrap(),
        )
        .unwrap()
        .into_iter()
        .map(|r| r.number)
        .collect();
    assert_eq!(prod, [1, 2, 300]);
}

#[test]
fn log_lines_are_idempotent_and_paged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let line = |host: &str, seq| LogLine {
        host_id: HostId::parse(host).unwrap(),
        seq,
        stream: "stdout".into(),
        line: format!("{host} {seq}"),
        at_ms: 0,
    };
    let cmd = |deployment: &str, host_index, rollback| CommandRef {
        deployment_id: deployment.into(),
        host_index,
        host_id: HostId::parse("h").unwrap(),
        rollback,
    };
    for seq in [2, 0, 1, 1] {
        store
            .put_log(&cmd("d1", 1, false), &line("b", seq))
            .unwrap();
    }
    // A host's rollback lines are kept apart from its deploy lines (same numbers).
    store.put_log(&cmd("d1", 0, true), &line("r", 0)).unwrap();
    for seq in 0..300 {
        store
            .put_log(&cmd("d1", 0, false), &line("a", seq))
            .unwrap();
    }
    store.put_log(&cmd("d10", 0, false), &line("z", 0)).unwrap();
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = store.logs_after("d1", cursor.as_deref(), 128).unwrap();
        if page.is_empty() {
            break;
        }
        all.extend(page.into_iter().map(|l| l.line));
        cursor = next;
    }
    // Arrival order, each (command, seq) once.
    let mut expected: Vec<String> = vec!["b 2".into(), "b 0".into(), "b 1".into(), "r 0".into()];
    expected.extend((0..300).map(|s| format!("a {s}")));
    assert_eq!(all, expected);
    // A follower at the end sees a line that arrives later, whatever its host.
    store
        .put_log(&cmd("d1", 0, false), &line("a", 300))
        .unwrap();
    let (page, _) = store.logs_after("d1", cursor.as_deref(), 128).unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].line, "a 300");
}

#[test]
fn reopening_right_after_drop_works() {
    // `init` then `serve` (the dev fleet) open the same store one after the
    // other in one process; sled may still hold its lock for a moment.
    let dir = tempfile::tempdir().unwrap();
    for i in 0..50 {
        let store = Store::open(dir.path()).unwrap();
        store
            .put_join_token(&format!("t{i}"), &join_token(1))
            .unwrap();
        store.db_flush_blocking().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert!(store.join_token("t49").unwrap().is_some());
}

#[test]
fn multi_use_join_tokens_count_their_uses() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut token = join_token(100);
    token.max_uses = 2;
    store.put_join_token("t", &token).unwrap();
    for id in ["a", "b"] {
        assert!(matches!(
            store.join_host("t", &host(id), 50).unwrap(),
            JoinOutcome::Joined
        ));
    }
    assert!(matches!(
        store.join_host("t", &host("c"), 50).unwrap(),
        JoinOutcome::AlreadyUsed { .. }
    ));
}

#[test]
fn queued_deployments_start_in_order_once_the_active_one_ends() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (app, env) = (
        AppName::parse("shop").unwrap(),
        EnvName::parse("prod").unwrap(),
    );
    assert_eq!(inserted(&store, "d1", true), "active");
    assert_eq!(inserted(&store, "d2", true), "queued behind d1");
    assert_eq!(inserted(&store, "d3", true), "queued behind d1");
    assert_eq!(
        store.deployment("d2").unwrap().unwrap().state,
        State::Queued
    );
    assert_eq!(store.queued_apps().unwrap(), [(app.clone(), env.clone())]);
    // d1 is still active: nothing starts.
    assert_eq!(store.activate_next(&app, &env).unwrap(), None);
    let mut d1 = store.deployment("d1").unwrap().unwrap();
    d1.state = State::Failed;
    store.save_deployment(&mut d1, None, &[]).unwrap();
    assert_eq!(
        store.activate_next(&app, &env).unwrap().as_deref(),
        Some("d2")
    );
    assert_eq!(
        store.active_deployment(&app, &env).unwrap().as_deref(),
        Some("d2")
    );
    assert_eq!(store.activate_next(&app, &env).unwrap(), None);
    // A queued deployment that ends (cancelled) leaves the queue.
    let mut d3 = store.deployment("d3").unwrap().unwrap();
    d3.state = State::Cancelled;
    store.save_deployment(&mut d3, None, &[]).unwrap();
    assert!(store.queued_apps().unwrap().is_empty());
}

#[test]
fn events_are_saved_with_the_deployment_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut d = deployment("d1", State::Running);
    d.event("created", None, "x");
    store.insert_deployment(&mut d, false).unwrap();
    assert!(d.new_events.is_empty());
    for n in 0..300 {
        d.event("tick", None, format!("{n}"));
    }
    store.save_deployment(&mut d, None, &[]).unwrap();
    let seqs: Vec<u64> = store
        .events_after("d1", 0, 1000)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=301).collect::<Vec<_>>());
    let after = store.events_after("d1", 299, 10).unwrap();
    assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [300, 301]);
    assert_eq!(after[1].message, "299");
}
