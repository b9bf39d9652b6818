//! The state machine driven directly: agents are played by calling
//! `on_report` with the results a real agent would send.

use flotilla_shared::Labels;

use super::*;
use crate::store::{BatchSize, Host, JoinOutcome, JoinTokenRecord};

struct Fleet {
    engine: Engine,
    store: Store,
    _dir: tempfile::TempDir,
}

fn app() -> AppName {
    AppName::parse("shop").unwrap()
}

fn env() -> EnvName {
    EnvName::parse("prod").unwrap()
}

fn image(tag: &str) -> ImageRef {
    ImageRef::parse(format!("acme/shop:{tag}")).unwrap()
}

/// A store with `hosts` (id and labels) joined in `prod`.
fn fleet(hosts: &[(&str, &[&str])]) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .put_join_token(
            "t",
            &JoinTokenRecord {
                expires_at_ms: i64::MAX,
                created_by: "test".into(),
                used_by: None,
                used_at_ms: 0,
                max_uses: 1000,
                uses: 0,
            },
        )
        .unwrap();
    for (id, labels) in hosts {
        let host = Host {
            host_id: HostId::parse(*id).unwrap(),
            env: env(),
            labels: Labels::from_pairs(labels.iter().copied()).unwrap(),
            agent_version: "test".into(),
            joined_at_ms: 1,
            last_seen_ms: 0,
            revoked: false,
            cert_not_after_ms: 0,
        };
        assert!(matches!(
            store.join_host("t", &host, 1).unwrap(),
            JoinOutcome::Joined
        ));
    }
    let engine = Engine::new(
        store.clone(),
        CommandSigner::generate().unwrap(),
        Arc::new(Sessions::default()),
        Duration::from_secs(600),
    );
    Fleet {
        engine,
        store,
        _dir: dir,
    }
}

fn hosts(n: usize) -> Vec<(String, Vec<String>)> {
    (1..=n)
        .map(|i| (format!("h{i}"), vec![format!("slot={i}")]))
        .collect()
}

fn fleet_of(n: usize) -> Fleet {
    let hosts = hosts(n);
    let refs: Vec<(&str, Vec<&str>)> = hosts
        .iter()
        .map(|(h, l)| (h.as_str(), l.iter().map(String::as_str).collect()))
        .collect();
    let refs: Vec<(&str, &[&str])> = refs.iter().map(|(h, l)| (*h, l.as_slice())).collect();
    fleet(&refs)
}

fn strategy(batch: &str) -> Strategy {
    Strategy {
        batch: BatchSize::parse(batch).unwrap(),
        ..Strategy::default()
    }
}

impl Fleet {
    async fn deploy(&self, tag: &str, strategy: Strategy) -> Result<Deployment, RolloutError> {
        self.deploy_queued(tag, strategy, false).await
    }

    async fn deploy_queued(
        &self,
        tag: &str,
        strategy: Strategy,
        queue: bool,
    ) -> Result<Deployment, RolloutError> {
        self.engine
            .start(NewDeployment {
                app: app(),
                env: env(),
                kind: DeploymentKind::Deploy,
                image: image(tag),
                created_by: "test".into(),
                target_release: 0,
                strategy,
                queue,
                override_freeze: false,
                team: None,
            })
            .await
    }

    fn get(&self, id: &str) -> Deployment {
        self.store.deployment(id).unwrap().unwrap()
    }

    /// Host ids with a command in flight, in order.
    fn running(&self, id: &str) -> Vec<String> {
        self.get(id)
            .hosts
            .iter()
            .filter(|h| h.state.in_flight())
            .map(|h| h.host_id.to_string())
            .collect()
    }

    fn host_states(&self, id: &str) -> Vec<&'static str> {
        self.get(id)
            .hosts
            .iter()
            .map(|h| h.state.as_str())
            .collect()
    }

    /// The action signed for `host`'s command in flight, from the outbox.
    fn queued_action(&self, host: &str) -> Action {
        let host = HostId::parse(host).unwrap();
        let entry = self
            .store
            .outbox(&host)
            .unwrap()
            .pop()
            .expect("a queued command");
        let signed = pb::SignedCommand::decode(entry.signed.as_slice()).unwrap();
        let envelope = pb::CommandEnvelope::decode(signed.envelope.as_slice()).unwrap();
        match envelope.action.and_then(|a| a.kind).unwrap() {
            pb::action::Kind::Rollback(r) => Action::Rollback {
                app: AppName::parse(r.app).unwrap(),
                image: ImageRef::parse(r.image).unwrap(),
                release: r.release,
            },
            pb::action::Kind::Deploy(d) => Action::Deploy {
                app: AppName::parse(d.app).unwrap(),
                image: ImageRef::parse(d.image).unwrap(),
                health: None,
            },
            pb::action::Kind::Ping(_) => Action::Ping,
            pb::action::Kind::Converge(_) => panic!("a converge command in a deploy test"),
        }
    }

    /// `host` reports the end of its command in flight: `outcome`, running
    /// `after`, having run `before`.
    async fn report(&self, id: &str, host: &str, outcome: pb::Outcome, before: &str, after: &str) {
        let d = self.get(id);
        let h = d.hosts.iter().find(|h| h.host_id.as_str() == host).unwrap();
        let command_id = if h.state == HostState::RollingBack {
            h.rollback_command_id.clone()
        } else {
            h.command_id.clone()
        }
        .unwrap();
        let image = |tag: &str| {
            if tag.is_empty() {
                String::new()
            } else {
                image(tag).to_string()
            }
        };
        self.engine
            .on_report(
                &h.host_id,
                pb::Report {
                    spool_seq: 0,
                    command_id,
                    body: Some(pb::report::Body::Result(pb::CommandResult {
                        outcome: outcome.into(),
                        exit_code: Some(i32::from(outcome != pb::Outcome::Succeeded)),
                        error: if outcome == pb::Outcome::Succeeded {
                            String::new()
                        } else {
                            format!("{host} broke")
                        },
                        deployed_image: image(after),
                        previous_image: image(before),
                        changes: Vec::new(),
                    })),
                },
            )
            .await
            .unwrap();
    }

    async fn ok(&self, id: &str, host: &str, before: &str, after: &str) {
        self.report(id, host, pb::Outcome::Succeeded, before, after)
            .await;
    }

    fn events(&self, id: &str) -> Vec<String> {
        self.store
            .events_after(id, 0, 10_000)
            .unwrap()
            .into_iter()
            .map(|e| match e.host_id {
                Some(h) => format!("{} {h} {}", e.kind, e.state),
                None => format!("{} {}", e.kind, e.state),
            })
            .collect()
    }
}

#[tokio::test]
async fn batches_run_their_hosts_together_canary_first() {
    let f = fleet_of(5);
    let d = f
        .deploy(
            "2",
            Strategy {
                canary: 1,
                ..strategy("2")
            },
        )
        .await
        .unwrap();
    assert_eq!(d.batches, 3);
    assert_eq!(f.running(&d.id), ["h1"]);
    f.ok(&d.id, "h1", "1", "2").await;
    assert_eq!(f.running(&d.id), ["h2", "h3"]);
    f.ok(&d.id, "h3", "1", "2").await;
    // The batch waits for its last host.
    assert_eq!(f.running(&d.id), ["h2"]);
    f.ok(&d.id, "h2", "1", "2").await;
    assert_eq!(f.running(&d.id), ["h4", "h5"]);
    f.ok(&d.id, "h4", "1", "2").await;
    f.ok(&d.id, "h5", "1", "2").await;
    let d = f.get(&d.id);
    assert_eq!(d.state, State::Succeeded);
    assert_eq!(d.release, 1);
    assert_eq!(
        f.store.releases(&app(), &env()).unwrap()[0].image,
        image("2")
    );
    let batches: Vec<u32> = d.hosts.iter().map(|h| h.batch).collect();
    assert_eq!(batches, [0, 1, 1, 2, 2]);
    let events = f.events(&d.id);
    assert_eq!(events.first().unwrap(), "created running");
    assert_eq!(events.last().unwrap(), "finished succeeded");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("batch_started"))
            .count(),
        3
    );
}

#[tokio::test]
async fn percentage_batches_and_label_selector() {
    let f = fleet(&[
        ("eu-1", &["region=eu"]),
        ("eu-2", &["region=eu"]),
        ("us-1", &["region=us"]),
        ("eu-3", &["region=eu"]),
    ]);
    let mut s = strategy("50%");
    s.hosts.insert("region".into(), "eu".into());
    let d = f.deploy("2", s).await.unwrap();
    let ids: Vec<&str> = d.hosts.iter().map(|h| h.host_id.as_str()).collect();
    assert_eq!(ids, ["eu-1", "eu-2", "eu-3"]);
    // 50% of 3 hosts is 2 per batch.
    assert_eq!(d.batches, 2);
    assert_eq!(f.running(&d.id), ["eu-1", "eu-2"]);

    let mut none = strategy("1");
    none.hosts.insert("region".into(), "ap".into());
    let err = f.deploy("3", none).await.unwrap_err();
    assert!(matches!(err, RolloutError::NoMatchingHosts { .. }), "{err}");
}

#[tokio::test]
async fn manual_canary_waits_for_promotion() {
    let f = fleet_of(3);
    let d = f
        .deploy(
            "2",
            Strategy {
                canary: 1,
                canary_manual: true,
                batch: BatchSize::Hosts(2),
                ..Strategy::default()
            },
        )
        .await
        .unwrap();
    // Promoting before the canary is done is refused.
    assert!(matches!(
        f.engine.promote(&d.id, "op".into()).await,
        Err(RolloutError::WrongState { .. })
    ));
    f.ok(&d.id, "h1", "1", "2").await;
    assert_eq!(f.get(&d.id).state, State::AwaitingPromotion);
    assert!(f.running(&d.id).is_empty());
    let promoted = f.engine.promote(&d.id, "op".into()).await.unwrap();
    assert_eq!(promoted.state, State::Running);
    assert_eq!(f.running(&d.id), ["h2", "h3"]);
    f.ok(&d.id, "h2", "1", "2").await;
    f.ok(&d.id, "h3", "1", "2").await;
    assert_eq!(f.get(&d.id).state, State::Succeeded);
    assert!(f.events(&d.id).contains(&"promoted running".to_owned()));
}

#[tokio::test]
async fn pause_between_batches_ends_on_the_timer() {
    let f = fleet_of(2);
    let d = f
        .deploy(
            "2",
            Strategy {
                pause_ms: 300,
                ..strategy("1")
            },
        )
        .await
        .unwrap();
    f.ok(&d.id, "h1", "1", "2").await;
    let paused = f.get(&d.id);
    assert_eq!(paused.state, State::Paused);
    assert!(f.running(&d.id).is_empty());
    // Before the pause ends, a tick changes nothing and says when to wake.
    let next = f.engine.tick().await.unwrap();
    assert_eq!(next, Some(paused.resume_at_ms));
    assert_eq!(f.get(&d.id).state, State::Paused);
    // Waiting for the clock is the behaviour under test here.
    let wait = u64::try_from(paused.resume_at_ms - now_ms()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait + 5)).await;
    assert_eq!(f.engine.tick().await.unwrap(), None);
    assert_eq!(f.running(&d.id), ["h2"]);
}

#[tokio::test]
async fn failures_within_the_budget_continue() {
    let f = fleet_of(3);
    let d = f
        .deploy(
            "2",
            Strategy {
                max_failures: 1,
                ..strategy("1")
            },
        )
        .await
        .unwrap();
    f.report(&d.id, "h1", pb::Outcome::Failed, "1", "1").await;
    assert_eq!(f.running(&d.id), ["h2"]);
    f.ok(&d.id, "h2", "1", "2").await;
    f.ok(&d.id, "h3", "1", "2").await;
    let d = f.get(&d.id);
    assert_eq!(d.state, State::Succeeded);
    assert_eq!(d.failures, 1);
    assert!(d.error.contains("1 host(s) failed"), "{}", d.error);
}

#[tokio::test]
async fn auto_rollback_returns_each_changed_host_to_its_own_image() {
    let f = fleet_of(4);
    let d = f.deploy("3", strategy("2")).await.unwrap();
    // Hosts ran different images before (drift): each goes back to its own.
    f.ok(&d.id, "h1", "1", "3").await;
    f.ok(&d.id, "h2", "2", "3").await;
    // Batch 2: h3 took the new image but failed its health gate; h4 is still running.
    f.report(&d.id, "h3", pb::Outcome::Failed, "2", "3").await;
    assert_eq!(f.get(&d.id).state, State::Running);
    assert_eq!(f.running(&d.id), ["h4"]);
    f.ok(&d.id, "h4", "1", "3").await;
    let rolling = f.get(&d.id);
    assert_eq!(rolling.state, State::RollingBack);
    assert_eq!(f.running(&d.id), ["h1", "h2", "h3", "h4"]);
    for (host, before) in [("h1", "1"), ("h2", "2"), ("h3", "2"), ("h4", "1")] {
        match f.queued_action(host) {
            Action::Rollback { image: to, .. } => assert_eq!(to, image(before), "{host}"),
            other => panic!("{host}: {other:?}"),
        }
    }
    for (host, before) in [("h1", "1"), ("h2", "2"), ("h3", "2")] {
        f.ok(&d.id, host, "3", before).await;
    }
    f.report(&d.id, "h4", pb::Outcome::Failed, "3", "3").await;
    let d = f.get(&d.id);
    // h4 still runs the new release: the deployment did not roll back.
    assert_eq!(d.state, State::Failed);
    assert_eq!(
        f.host_states(&d.id),
        [
            "rolled_back",
            "rolled_back",
            "rolled_back",
            "rollback_failed"
        ]
    );
    assert!(d.error.contains("h3: h3 broke"), "{}", d.error);
    assert!(d.error.contains("rollback FAILED on h4"), "{}", d.error);
    // No release: the deployment did not land.
    assert!(f.store.releases(&app(), &env()).unwrap().is_empty());
}

#[tokio::test]
async fn a_failure_that_changed_nothing_needs_no_rollback() {
    let f = fleet_of(3);
    let d = f.deploy("2", strategy("1")).await.unwrap();
    // Dokku's own checks failed: the old release kept running.
    f.report(&d.id, "h1", pb::Outcome::Failed, "1", "1").await;
    let d = f.get(&d.id);
    assert_eq!(d.state, State::RolledBack);
    assert_eq!(f.host_states(&d.id), ["failed", "skipped", "skipped"]);
    assert!(d.error.contains("no host had changed"), "{}", d.error);
}

#[tokio::test]
async fn without_auto_rollback_hosts_stay_as_they_are() {
    let f = fleet_of(3);
    let d = f
        .deploy(
            "2",
            Strategy {
                auto_rollback: false,
                ..strategy("1")
            },
        )
        .await
        .unwrap();
    f.ok(&d.id, "h1", "1", "2").await;
    f.report(&d.id, "h2", pb::Outcome::Failed, "1", "2").await;
    let d = f.get(&d.id);
    assert_eq!(d.state, State::Failed);
    assert_eq!(f.host_states(&d.id), ["succeeded", "failed", "skipped"]);
    assert!(
        f.store
            .outbox(&HostId::parse("h1").unwrap())
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn an_interrupted_host_is_a_failure_and_rolled_back() {
    let f = fleet_of(2);
    f.store
        .set_host_image(&HostId::parse("h1").unwrap(), &app(), &image("1"))
        .unwrap();
    let d = f.deploy("2", strategy("1")).await.unwrap();
    // The agent restarted mid-command: no images reported.
    f.report(&d.id, "h1", pb::Outcome::Interrupted, "", "")
        .await;
    let rolling = f.get(&d.id);
    assert_eq!(rolling.state, State::RollingBack);
    // The image it had before comes from what the host last reported.
    assert!(matches!(f.queued_action("h1"), Action::Rollback { image: i, .. } if i == image("1")));
    f.ok(&d.id, "h1", "1", "1").await;
    let d = f.get(&d.id);
    assert_eq!(d.state, State::RolledBack);
    assert!(
        d.error.contains("interrupted") || d.error.contains("h1 broke"),
        "{}",
        d.error
    );
}

#[tokio::test]
async fn cancel_lets_running_hosts_finish_then_optionally_rolls_back() {
    let f = fleet_of(4);
    let d = f.deploy("2", strategy("2")).await.unwrap();
    f.ok(&d.id, "h1", "1", "2").await;
    let cancelled = f
        .engine
        .cancel(&d.id, "op".into(), false, false)
        .await
        .unwrap();
    // h2 is still running: the deployment waits for it.
    assert_eq!(cancelled.state, State::Running);
    assert!(
        f.engine
            .cancel(&d.id, "op".into(), true, false)
            .await
            .is_err()
    );
    f.ok(&d.id, "h2", "1", "2").await;
    let d1 = f.get(&d.id);
    assert_eq!(d1.state, State::Cancelled);
    assert_eq!(
        f.host_states(&d.id),
        ["succeeded", "succeeded", "skipped", "skipped"]
    );

    let d = f.deploy("3", strategy("2")).await.unwrap();
    f.ok(&d.id, "h1", "2", "3").await;
    f.engine
        .cancel(&d.id, "op".into(), true, false)
        .await
        .unwrap();
    f.ok(&d.id, "h2", "2", "3").await;
    assert_eq!(f.get(&d.id).state, State::RollingBack);
    f.ok(&d.id, "h1", "3", "2").await;
    f.ok(&d.id, "h2", "3", "2").await;
    let d = f.get(&d.id);
    assert_eq!(d.state, State::Cancelled);
    assert_eq!(
        f.host_states(&d.id),
        ["rolled_back", "rolled_back", "skipped", "skipped"]
    );
    assert!(matches!(
        f.engine.cancel(&d.id, "op".into(), false, false).await,
        Err(RolloutError::WrongState { .. })
    ));
}

#[tokio::test]
async fn one_active_deployment_per_app_and_env_others_refused_or_queued() {
    let f = fleet_of(1);
    let first = f.deploy("2", strategy("1")).await.unwrap();
    let err = f.deploy("3", strategy("1")).await.unwrap_err();
    assert!(
        matches!(&err, RolloutError::Busy { active, .. } if active == &first.id),
        "{err}"
    );
    assert!(err.to_string().contains("--queue"));
    let queued = f.deploy_queued("3", strategy("1"), true).await.unwrap();
    assert_eq!(queued.state, State::Queued);
    let cancelled_in_queue = f.deploy_queued("4", strategy("1"), true).await.unwrap();
    f.engine
        .cancel(&cancelled_in_queue.id, "op".into(), false, false)
        .await
        .unwrap();
    assert_eq!(f.get(&cancelled_in_queue.id).state, State::Cancelled);
    // Nothing was sent for the queued one yet.
    assert!(f.get(&queued.id).hosts[0].command_id.is_none());
    f.ok(&first.id, "h1", "1", "2").await;
    assert_eq!(f.get(&first.id).state, State::Succeeded);
    assert_eq!(f.get(&queued.id).state, State::Running);
    assert_eq!(f.running(&queued.id), ["h1"]);
    f.ok(&queued.id, "h1", "2", "3").await;
    assert_eq!(f.get(&queued.id).state, State::Succeeded);
    let releases: Vec<u64> = f
        .store
        .releases(&app(), &env())
        .unwrap()
        .iter()
        .map(|r| r.number)
        .collect();
    assert_eq!(releases, [1, 2]);
}

#[tokio::test]
async fn a_new_engine_resumes_from_the_store() {
    let f = fleet_of(2);
    let d = f.deploy("2", strategy("1")).await.unwrap();
    f.ok(&d.id, "h1", "1", "2").await;
    let command = f.get(&d.id).hosts[1].command_id.clone();
    // A coordinator restart: a new engine over the same store.
    let engine = Engine::new(
        f.store.clone(),
        CommandSigner::generate().unwrap(),
        Arc::new(Sessions::default()),
        Duration::from_secs(600),
    );
    assert_eq!(engine.resume().await.unwrap(), 1);
    let resumed = f.get(&d.id);
    // Nothing re-dispatched: the same command is still the one in flight.
    assert_eq!(resumed.hosts[1].command_id, command);
    assert_eq!(
        f.store.outbox(&HostId::parse("h2").unwrap()).unwrap().len(),
        1
    );
    let f = Fleet { engine, ..f };
    f.ok(&d.id, "h2", "1", "2").await;
    assert_eq!(f.get(&d.id).state, State::Succeeded);
}

#[tokio::test]
async fn duplicate_and_stale_reports_change_nothing() {
    let f = fleet_of(2);
    let d = f.deploy("2", strategy("1")).await.unwrap();
    let h1_command = f.get(&d.id).hosts[0].command_id.clone().unwrap();
    f.ok(&d.id, "h1", "1", "2").await;
    let before = f.get(&d.id);
    // The same result again (a re-sent report after a reconnect).
    f.engine
        .on_report(
            &HostId::parse("h1").unwrap(),
            pb::Report {
                spool_seq: 0,
                command_id: h1_command,
                body: Some(pb::report::Body::Result(pb::CommandResult {
                    outcome: pb::Outcome::Failed.into(),
                    ..Default::default()
                })),
            },
        )
        .await
        .unwrap();
    let after = f.get(&d.id);
    assert_eq!(after.failures, 0);
    assert_eq!(after.next_event, before.next_event);
    assert_eq!(f.host_states(&d.id), ["succeeded", "running"]);
}

#[tokio::test]
async fn a_plain_cancel_does_not_switch_off_a_rollback_the_failures_call_for() {
    let f = fleet_of(3);
    let d = f.deploy("2", strategy("3")).await.unwrap();
    f.ok(&d.id, "h1", "1", "2").await;
    f.report(&d.id, "h2", pb::Outcome::Failed, "1", "2").await;
    // Over budget; h3 still running. Now an operator cancels without --rollback.
    f.engine
        .cancel(&d.id, "op".into(), false, false)
        .await
        .unwrap();
    f.ok(&d.id, "h3", "1", "2").await;
    assert_eq!(f.get(&d.id).state, State::RollingBack);
    for host in ["h1", "h2", "h3"] {
        f.ok(&d.id, host, "2", "1").await;
    }
    let d = f.get(&d.id);
    assert_eq!(d.state, State::Cancelled);
    assert_eq!(f.host_states(&d.id), ["rolled_back"; 3]);
}

#[tokio::test]
async fn a_host_that_changed_but_cannot_go_back_fails_the_deployment() {
    let f = fleet_of(2);
    // A new app: the first host had nothing before.
    let d = f.deploy("1", strategy("1")).await.unwrap();
    f.ok(&d.id, "h1", "", "1").await;
    f.report(&d.id, "h2", pb::Outcome::Failed, "", "").await;
    let d = f.get(&d.id);
    assert_eq!(d.state, State::Failed);
    assert!(
        d.error.contains("h1 (the app had no earlier image"),
        "{}",
        d.error
    );
}

#[tokio::test]
async fn an_activated_queued_deployment_is_started_on_resume() {
    let f = fleet_of(1);
    let first = f.deploy("2", strategy("1")).await.unwrap();
    let queued = f.deploy_queued("3", strategy("1"), true).await.unwrap();
    // The coordinator stopped between making it active and starting it.
    let mut done = f.get(&first.id);
    done.state = State::Failed;
    f.store.save_deployment(&mut done, None, &[]).unwrap();
    assert_eq!(
        f.store.activate_next(&app(), &env()).unwrap().as_deref(),
        Some(queued.id.as_str())
    );
    assert_eq!(f.get(&queued.id).state, State::Queued);
    f.engine.resume().await.unwrap();
    assert_eq!(f.running(&queued.id), ["h1"]);
}

#[tokio::test]
async fn a_result_after_the_host_was_given_up_is_recorded_and_said() {
    let f = fleet_of(2);
    let d = f
        .deploy(
            "2",
            Strategy {
                auto_rollback: false,
                ..strategy("1")
            },
        )
        .await
        .unwrap();
    let command = f.get(&d.id).hosts[0].command_id.clone();
    // The agent was cut off; the host is given up on (as the expiry sweep or a revoke does).
    f.engine
        .fail_host(&HostId::parse("h1").unwrap(), "given up")
        .await
        .unwrap();
    assert_eq!(f.get(&d.id).state, State::Failed);
    // Then its result arrives after all.
    f.engine
        .on_report(
            &HostId::parse("h1").unwrap(),
            pb::Report {
                spool_seq: 0,
                command_id: command.unwrap(),
                body: Some(pb::report::Body::Result(pb::CommandResult {
                    outcome: pb::Outcome::Succeeded.into(),
                    deployed_image: image("2").to_string(),
                    previous_image: image("1").to_string(),
                    ..Default::default()
                })),
            },
        )
        .await
        .unwrap();
    let after = f.get(&d.id);
    assert_eq!(after.state, State::Failed);
    assert_eq!(after.hosts[0].image, Some(image("2")));
    assert!(
        after.hosts[0].error.contains("now runs acme/shop:2"),
        "{}",
        after.hosts[0].error
    );
    assert!(
        f.events(&d.id)
            .iter()
            .any(|e| e.starts_with("host_late_result h1"))
    );
}

#[tokio::test]
async fn a_freeze_that_begins_mid_rollout_blocks_the_next_batch() {
    let f = fleet_of(3);
    let d = f.deploy("2", strategy("1")).await.unwrap();
    f.ok(&d.id, "h1", "1", "2").await;
    let freeze = crate::gates::Freeze::new(
        env(),
        crate::gates::Window::Once {
            from_ms: now_ms() - 1000,
            until_ms: now_ms() + 3_600_000,
        },
        "incident 42",
        "sre",
        now_ms(),
    )
    .unwrap();
    f.store.put_freeze(&freeze).unwrap();
    f.ok(&d.id, "h2", "1", "2").await;
    let d = f.get(&d.id);
    assert_eq!(d.state, State::Blocked);
    assert!(d.error.contains("incident 42"), "{}", d.error);
    // A gate stops a rollout; it does not revert the hosts that took it.
    assert_eq!(f.host_states(&d.id), ["succeeded", "succeeded", "skipped"]);
    let last = d.gates.last().unwrap();
    assert_eq!(
        (last.gate.as_str(), last.allowed, last.batch),
        ("freeze", false, 2)
    );
    // Rollbacks are never frozen.
    f.store
        .set_host_image(&HostId::parse("h1").unwrap(), &app(), &image("2"))
        .unwrap();
    let rb = f
        .engine
        .start(NewDeployment {
            app: app(),
            env: env(),
            kind: DeploymentKind::Rollback,
            image: image("1"),
            created_by: "op".into(),
            target_release: 0,
            strategy: Strategy::default(),
            queue: false,
            override_freeze: false,
            team: None,
        })
        .await
        .unwrap();
    assert_eq!(rb.state, State::Running);
}

fn freeze_now(f: &Fleet, reason: &str) {
    let freeze = crate::gates::Freeze::new(
        env(),
        crate::gates::Window::Once {
            from_ms: now_ms() - 1000,
            until_ms: now_ms() + 3_600_000,
        },
        reason,
        "sre",
        now_ms(),
    )
    .unwrap();
    f.store.put_freeze(&freeze).unwrap();
}

#[tokio::test]
async fn a_queued_deployment_is_gated_again_when_its_turn_comes() {
    let f = fleet_of(1);
    let first = f.deploy("2", strategy("1")).await.unwrap();
    let queued = f.deploy_queued("3", strategy("1"), true).await.unwrap();
    freeze_now(&f, "change freeze");
    f.ok(&first.id, "h1", "1", "2").await;
    let d = f.get(&queued.id);
    assert_eq!(d.state, State::Blocked, "{}", d.error);
    assert!(d.hosts[0].command_id.is_none());
    let last = d.gates.last().unwrap();
    assert_eq!(
        (last.gate.as_str(), last.allowed, last.batch),
        ("freeze", false, 0)
    );
}

#[tokio::test]
async fn rollback_after_a_mid_rollout_block_returns_to_the_current_release() {
    let f = fleet_of(2);
    let v1 = f.deploy("1", strategy("2")).await.unwrap();
    f.ok(&v1.id, "h1", "", "1").await;
    f.ok(&v1.id, "h2", "", "1").await;
    let v2 = f.deploy("2", strategy("1")).await.unwrap();
    // A freeze begins while h1 deploys: the second batch is blocked.
    freeze_now(&f, "incident");
    f.ok(&v2.id, "h1", "1", "2").await;
    assert_eq!(f.get(&v2.id).state, State::Blocked);
    // "Undo the last change": back to the current release (v1), not before it,
    // and the freeze does not stop a rollback.
    let rb = f
        .engine
        .rollback(app(), env(), None, "op".into())
        .await
        .unwrap();
    assert_eq!(rb.image, image("1"));
    assert_eq!(rb.target_release, 1);
    assert_eq!(rb.state, State::Running);
}

#[tokio::test]
async fn cancel_force_stops_waiting_for_a_host_that_never_answers() {
    let f = fleet_of(3);
    let d = f.deploy("2", strategy("2")).await.unwrap();
    f.ok(&d.id, "h1", "1", "2").await;
    // h2 accepted its command and its machine died: a plain cancel waits for it.
    let waiting = f
        .engine
        .cancel(&d.id, "op".into(), false, false)
        .await
        .unwrap();
    assert_eq!(waiting.state, State::Running);
    let d = f
        .engine
        .cancel(&d.id, "op".into(), false, true)
        .await
        .unwrap();
    assert_eq!(d.state, State::Cancelled);
    assert_eq!(f.host_states(&d.id), ["succeeded", "failed", "skipped"]);
    assert!(
        d.hosts[1].error.contains("abandoned by op"),
        "{}",
        d.hosts[1].error
    );
    assert!(
        f.store
            .outbox(&HostId::parse("h2").unwrap())
            .unwrap()
            .is_empty()
    );
}

// ----- converge (app apply / diff) -----

const SPEC: &str = r#"
app = "shop"

[env.prod]
domains = ["shop.example.com"]
secret_keys = ["API_KEY"]

[env.prod.config]
MODE = "live"
"#;

fn desired() -> DesiredState {
    flotilla_shared::appspec::AppSpec::parse("shop.toml", SPEC)
        .unwrap()
        .desired(&env())
        .unwrap()
}

/// A fresh engine over `store` with a secrets keyring (a coordinator restart).
fn keyed_engine(store: &crate::store::Store) -> Engine {
    Engine::new(
        store.clone(),
        CommandSigner::generate().unwrap(),
        Arc::new(Sessions::default()),
        Duration::from_secs(600),
    )
    .with_keyring(Some(keyring()))
}

fn keyring() -> Arc<Keyring> {
    let line = Keyring::generate_line("k1").unwrap();
    Arc::new(Keyring::parse(&line, "test").unwrap())
}

const SECRET: &str = "sup3r-s3cret-converge-value";

impl Fleet {
    async fn converge(
        &self,
        kind: DeploymentKind,
        secrets: &[(&str, &str)],
    ) -> Result<Deployment, RolloutError> {
        self.engine
            .converge(
                NewDeployment {
                    app: app(),
                    env: env(),
                    kind,
                    image: ImageRef::parse("app-spec:0123456789ab").unwrap(),
                    created_by: "test".into(),
                    target_release: 0,
                    strategy: Strategy::default(),
                    queue: true,
                    override_freeze: false,
                    team: None,
                },
                Converge {
                    desired: desired(),
                    secrets: secrets
                        .iter()
                        .map(|(k, v)| (ConfigKey::parse(*k).unwrap(), Secret::new(*v)))
                        .collect(),
                },
            )
            .await
    }

    /// `host` reports its converge result.
    async fn converge_result(&self, id: &str, host: &str, ok: bool, changes: &[&str]) {
        let d = self.get(id);
        let h = d.hosts.iter().find(|h| h.host_id.as_str() == host).unwrap();
        self.engine
            .on_report(
                &h.host_id,
                pb::Report {
                    spool_seq: 0,
                    command_id: h.command_id.clone().unwrap(),
                    body: Some(pb::report::Body::Result(pb::CommandResult {
                        outcome: if ok {
                            pb::Outcome::Succeeded
                        } else {
                            pb::Outcome::Failed
                        }
                        .into(),
                        exit_code: Some(i32::from(!ok)),
                        error: if ok {
                            String::new()
                        } else {
                            "restart failed".into()
                        },
                        changes: changes.iter().map(|c| (*c).to_owned()).collect(),
                        ..Default::default()
                    })),
                },
            )
            .await
            .unwrap();
    }

    /// The signed command queued for `host`, opened by the engine.
    fn outbox_action(&self, host: &str) -> (Vec<u8>, pb::ConvergeAction) {
        let entry = self
            .store
            .outbox(&HostId::parse(host).unwrap())
            .unwrap()
            .pop()
            .expect("a queued command");
        let signed = self.engine.outbox_command(&entry).unwrap();
        let envelope = pb::CommandEnvelope::decode(signed.envelope.as_slice()).unwrap();
        match envelope.action.and_then(|a| a.kind).unwrap() {
            pb::action::Kind::Converge(c) => (entry.signed, c),
            other => panic!("not a converge: {other:?}"),
        }
    }
}

#[tokio::test]
async fn converge_goes_to_every_host_at_once_and_records_changes_not_releases() {
    let f = fleet_of(3);
    let d = f.converge(DeploymentKind::Converge, &[]).await.unwrap();
    assert_eq!(f.running(&d.id), ["h1", "h2", "h3"], "all hosts at once");
    let (_, action) = f.outbox_action("h2");
    assert_eq!(action.app, "shop");
    assert!(!action.dry_run);
    assert!(action.secrets.is_empty());
    let carried: DesiredState = serde_json::from_slice(&action.desired).unwrap();
    assert_eq!(carried, desired());

    f.converge_result(&d.id, "h1", true, &["add domain shop.example.com"])
        .await;
    f.converge_result(&d.id, "h2", true, &[]).await;
    f.converge_result(&d.id, "h3", true, &[]).await;
    let d = f.get(&d.id);
    assert_eq!(d.state, State::Succeeded, "{}", d.error);
    assert_eq!(d.kind.as_str(), "converge");
    assert_eq!(d.hosts[0].changes, ["add domain shop.example.com"]);
    assert!(d.hosts[1].changes.is_empty());
    assert!(
        f.store.releases(&app(), &env()).unwrap().is_empty(),
        "a converge is no release"
    );
    let events = f.store.events_after(&d.id, 0, 1000).unwrap();
    assert!(events.iter().any(
        |e| e.kind == "host_finished" && e.message == "changed 1: add domain shop.example.com"
    ));
    assert!(
        events
            .iter()
            .any(|e| e.kind == "host_finished" && e.message == "in sync")
    );
}

#[tokio::test]
async fn a_failed_host_fails_the_converge_while_the_others_still_converge() {
    let f = fleet_of(3);
    let d = f.converge(DeploymentKind::Converge, &[]).await.unwrap();
    f.converge_result(&d.id, "h1", false, &["set MODE=\"live\""])
        .await;
    assert_eq!(f.running(&d.id), ["h2", "h3"], "no failure budget stops it");
    f.converge_result(&d.id, "h2", true, &[]).await;
    f.converge_result(&d.id, "h3", true, &[]).await;
    let d = f.get(&d.id);
    assert_eq!(d.state, State::Failed);
    assert_eq!(d.error, "converge failed on h1");
    assert_eq!(
        d.hosts.iter().map(|h| h.state).collect::<Vec<_>>(),
        [
            HostState::Failed,
            HostState::Succeeded,
            HostState::Succeeded
        ],
        "nothing rolled back"
    );
}

#[tokio::test]
async fn a_diff_is_a_dry_run_converge() {
    let f = fleet_of(1);
    let d = f.converge(DeploymentKind::Diff, &[]).await.unwrap();
    let (_, action) = f.outbox_action("h1");
    assert!(action.dry_run);
    f.converge_result(&d.id, "h1", true, &["add domain shop.example.com"])
        .await;
    let d = f.get(&d.id);
    assert_eq!((d.state, d.kind.as_str()), (State::Succeeded, "diff"));
    let events = f.store.events_after(&d.id, 0, 1000).unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message == "would change 1: add domain shop.example.com")
    );
}

#[tokio::test]
async fn secret_values_are_sealed_in_the_outbox_and_never_reach_sled_in_the_clear() {
    let mut f = fleet_of(2);
    f.engine = keyed_engine(&f.store);
    let d = f
        .converge(DeploymentKind::Converge, &[("API_KEY", SECRET)])
        .await
        .unwrap();
    let (stored, action) = f.outbox_action("h1");
    assert!(stored.starts_with(SEALED_OUTBOX));
    assert_eq!(
        action.secrets.get("API_KEY").map(String::as_str),
        Some(SECRET)
    );
    f.store.flush().await.unwrap();
    // Every file of the sled database, byte for byte.
    let mut files = vec![f._dir.path().to_path_buf()];
    let mut scanned = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        scanned += bytes.len();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the secret in the clear",
            path.display()
        );
    }
    assert!(scanned > 0);
    // The engine forgot the values once the commands were signed.
    assert!(f.engine.converge_secrets.lock().unwrap().is_empty());
    assert!(f.get(&d.id).desired.is_some_and(|j| !j.contains(SECRET)));
}

#[tokio::test]
async fn secret_values_without_a_keyring_are_refused_before_anything_starts() {
    let f = fleet_of(1);
    let err = f
        .converge(DeploymentKind::Converge, &[("API_KEY", SECRET)])
        .await
        .unwrap_err();
    assert!(matches!(err, RolloutError::NoKeyring), "{err}");
    assert!(
        f.store
            .outbox(&HostId::parse("h1").unwrap())
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn cancelling_a_converge_with_rollback_rolls_no_image_back() {
    let f = fleet_of(2);
    let d = f.converge(DeploymentKind::Converge, &[]).await.unwrap();
    f.engine
        .cancel(&d.id, "test".into(), true, false)
        .await
        .unwrap();
    f.converge_result(&d.id, "h1", true, &[]).await;
    f.converge_result(&d.id, "h2", true, &[]).await;
    let d = f.get(&d.id);
    assert_eq!(d.state, State::Cancelled, "{}", d.error);
    assert!(d.hosts.iter().all(|h| h.rollback_command_id.is_none()));
}

/// A coordinator that died after recording a converge but before sending it
/// to a host has lost the secret values (they are never stored in the clear):
/// on resume that host fails with a clear message instead of receiving a
/// command without its secrets.
#[tokio::test]
async fn a_resumed_converge_whose_secrets_were_lost_fails_the_unsent_hosts() {
    let mut f = fleet_of(2);
    f.engine = keyed_engine(&f.store);
    let d = f
        .converge(DeploymentKind::Converge, &[("API_KEY", SECRET)])
        .await
        .unwrap();
    // As if h2's dispatch had not happened before the crash.
    let mut stored = f.get(&d.id);
    stored.hosts[1].state = HostState::Pending;
    stored.hosts[1].command_id = None;
    f.store.save_deployment(&mut stored, None, &[]).unwrap();
    let engine = keyed_engine(&f.store);
    engine.resume().await.unwrap();
    let resumed = f.get(&d.id);
    assert_eq!(resumed.hosts[1].state, HostState::Failed);
    assert!(
        resumed.hosts[1]
            .error
            .contains("secret values of this converge were lost"),
        "{}",
        resumed.hosts[1].error
    );
}
