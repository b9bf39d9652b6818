//! `--wait`: follows a deployment to its end through `WatchDeployment`
//! (events, resumed with `after_seq`) and `StreamLogs` (lines), both
//! reconnecting through coordinator restarts, and renders them: a live view
//! on a terminal (`tty`), plain lines otherwise (`plain`). Returns the exit
//! code for the outcome (see `exit`).

mod plain;
mod tracker;
mod tty;

#[cfg(test)]
mod tests;

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_shared::time::now_ms;
use tokio::sync::mpsc;

use crate::Output;
use crate::client::{Client, RECONNECT_ATTEMPTS, RECONNECT_DELAY, explain, transient};
use crate::exit;
use crate::output::{self, outln};
use plain::Plain;
use tracker::Tracker;
use tty::Tty;

/// How long log lines may trail the deployment's end before we stop waiting for them.
const LOG_GRACE: Duration = Duration::from_secs(5);
/// Redraw rate of the live view (elapsed times, spinners).
const REDRAW: Duration = Duration::from_millis(200);

/// Where a follow ended.
enum End {
    /// The deployment reached a final state.
    Final(pb::Deployment),
    /// `deploy --canary-manual --wait`: the canary batch is done and the
    /// deployment waits for `flotilla promote`.
    AwaitingPromotion(pb::Deployment),
}

enum Update {
    Event(pb::DeploymentEvent),
    Log(pb::DeploymentLogLine),
    Note(String),
    End(Box<End>),
    Failed(anyhow::Error),
}

enum View {
    Plain(Plain),
    Tty(Tty),
}

/// Follows deployment `d` (as `CreateDeployment`, `CancelDeployment`, … returned
/// it) until it ends; prints the summary (and with `--output json` the final
/// object) and returns the exit code. `stop_at_promotion`: return (exit 0)
/// once the deployment awaits promotion instead of waiting for someone to
/// promote it.
pub async fn wait(
    client: &Client,
    out: Output,
    d: pb::Deployment,
    stop_at_promotion: bool,
) -> anyhow::Result<ExitCode> {
    let id = d.id.clone();
    // A terminal that cannot move the cursor gets plain lines too.
    let live = std::io::stderr().is_terminal() && std::env::var("TERM").as_deref() != Ok("dumb");
    let mut view = if out == Output::Text && live {
        View::Tty(Tty::new())
    } else {
        View::Plain(Plain::new(out))
    };
    let mut tracker = Tracker::new(d);

    let (tx, mut rx) = mpsc::unbounded_channel();
    let events = tokio::spawn(watch_events(
        client.clone(),
        id.clone(),
        stop_at_promotion,
        tx.clone(),
    ));
    let logs = tokio::spawn(follow_logs(client.clone(), id.clone(), tx));
    // Both tasks end on their own; these make sure they also end with us.
    let _events = AbortOnDrop(events);
    let logs = AbortOnDrop(logs);

    let mut redraw = tokio::time::interval(REDRAW);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut snapshot_client = client.clone();

    // 1. Events and log lines until the deployment ends.
    let end = loop {
        tokio::select! {
            update = rx.recv() => match update {
                Some(Update::Event(ev)) => {
                    if tracker.needs_snapshot(&ev)
                        && let Ok(fresh) = snapshot_client.deployment(&id).await
                    {
                        tracker.reseed(fresh);
                    }
                    tracker.apply_event(&ev);
                    match &mut view {
                        View::Plain(p) => p.event(&tracker, &ev),
                        View::Tty(t) => t.draw(&tracker),
                    }
                }
                Some(Update::Log(line)) => on_log(&mut tracker, &mut view, &line),
                Some(Update::Note(note)) => on_note(&mut view, &note),
                Some(Update::End(end)) => break *end,
                Some(Update::Failed(err)) => {
                    if let View::Tty(t) = &mut view {
                        t.abandon();
                    }
                    return Err(err);
                }
                None => anyhow::bail!("lost track of deployment {id}; see `flotilla status {id}`"),
            },
            _ = redraw.tick() => {
                if let View::Tty(t) = &mut view {
                    t.draw(&tracker);
                }
            }
            _ = &mut ctrl_c => {
                if let View::Tty(t) = &mut view {
                    t.abandon();
                }
                eprintln!(
                    "stopped watching; deployment {id} goes on (`flotilla status {id}`, `flotilla cancel {id}`)"
                );
                return Ok(exit::code(exit::INTERRUPTED));
            }
        }
    };

    // 2. Log lines that trail the end (bounded); the log stream ends by
    // itself once a deployment is final, not while it awaits promotion.
    let grace = match end {
        End::Final(_) => LOG_GRACE,
        End::AwaitingPromotion(_) => Duration::from_millis(500),
    };
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            update = rx.recv() => match update {
                Some(Update::Log(line)) => on_log(&mut tracker, &mut view, &line),
                Some(Update::Note(note)) => on_note(&mut view, &note),
                Some(_) => {}
                None => break,
            },
            _ = &mut deadline => break,
        }
    }
    drop(logs);

    // 3. The outcome.
    let (d, code) = match end {
        End::Final(d) => {
            let code = exit::for_state(&d.state);
            (d, code)
        }
        End::AwaitingPromotion(d) => (d, exit::SUCCESS),
    };
    tracker.reseed(d.clone());
    let now = now_ms();
    match &mut view {
        View::Plain(p) => p.finish(&d, now),
        View::Tty(t) => t.finish(&tracker, &d, now),
    }
    if d.state == "awaiting_promotion" {
        eprintln!(
            "the canary batch is done; go on with `flotilla promote {id} --wait`, or stop with `flotilla cancel {id} --rollback --wait`"
        );
    }
    if out == Output::Json {
        output::status(out, &d);
    }
    Ok(exit::code(code))
}

fn on_log(tracker: &mut Tracker, view: &mut View, line: &pb::DeploymentLogLine) {
    tracker.apply_log(line);
    match view {
        View::Plain(p) => p.log(line),
        // The live view shows each host's latest line on its next redraw.
        View::Tty(_) => {}
    }
}

fn on_note(view: &mut View, note: &str) {
    match view {
        View::Plain(p) => p.note(note),
        View::Tty(t) => t.note(note),
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends every event of deployment `id`, then how it ended.
async fn watch_events(
    mut client: Client,
    id: String,
    stop_at_promotion: bool,
    tx: mpsc::UnboundedSender<Update>,
) {
    let update = match follow_events(&mut client, &id, stop_at_promotion, &tx).await {
        Ok(end) => Update::End(Box::new(end)),
        Err(err) => Update::Failed(err),
    };
    let _ = tx.send(update);
}

/// Follows `WatchDeployment`, reopening it after the last event seen when it
/// breaks or ends early (a coordinator restart ends streams cleanly too), so
/// no event is shown twice or skipped. Gives up after `RECONNECT_ATTEMPTS`
/// reconnections in a row that brought nothing new, 1 s apart.
async fn follow_events(
    client: &mut Client,
    id: &str,
    stop_at_promotion: bool,
    tx: &mpsc::UnboundedSender<Update>,
) -> anyhow::Result<End> {
    let mut last_seq: Option<u64> = None;
    let mut idle_rounds = 0;
    loop {
        let mut progressed = false;
        let mut ended_cleanly = false;
        match client.watch(id, last_seq.unwrap_or(0)).await {
            Ok(mut stream) => loop {
                match stream.message().await {
                    Ok(Some(ev)) => {
                        if last_seq.is_some_and(|last| ev.seq <= last) {
                            continue; // already shown (a server that ignores after_seq)
                        }
                        last_seq = Some(ev.seq);
                        progressed = true;
                        let promotion = stop_at_promotion && ev.kind == "awaiting_promotion";
                        if tx.send(Update::Event(ev)).is_err() {
                            anyhow::bail!("stopped following");
                        }
                        // Events replay from the start: stop only if it still waits.
                        if promotion {
                            let d = client.deployment_retrying(id).await?;
                            if d.state == "awaiting_promotion" {
                                return Ok(End::AwaitingPromotion(d));
                            }
                        }
                    }
                    Ok(None) => {
                        ended_cleanly = true;
                        break;
                    }
                    Err(status) => {
                        let _ = tx.send(Update::Note(format!(
                            "event stream interrupted ({}); resuming",
                            status.message()
                        )));
                        break;
                    }
                }
            },
            Err(status) if transient(&status) => {}
            Err(status) => return Err(explain(status)),
        }
        let d = client.deployment_retrying(id).await?;
        // The stream ends after the last event of a final deployment; after a
        // break, reconnect first so the remaining events are shown.
        if ended_cleanly && exit::is_final(&d.state) {
            return Ok(End::Final(d));
        }
        if stop_at_promotion && d.state == "awaiting_promotion" {
            return Ok(End::AwaitingPromotion(d));
        }
        idle_rounds = if progressed { 0 } else { idle_rounds + 1 };
        if idle_rounds >= RECONNECT_ATTEMPTS {
            anyhow::bail!(
                "lost the event stream of deployment {id} ({RECONNECT_ATTEMPTS} reconnections brought nothing); it goes on: see `flotilla status {id}`"
            );
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// Sends every log line of deployment `id` until it ends. Best effort: the
/// outcome comes from the events, so a log stream that cannot be resumed is
/// only noted.
async fn follow_logs(mut client: Client, id: String, tx: mpsc::UnboundedSender<Update>) {
    let mut printed = 0;
    let mut idle_rounds = 0;
    loop {
        let before = printed;
        let result = client
            .stream_logs_noting(
                &id,
                true,
                printed,
                |line| {
                    let _ = tx.send(Update::Log(line.clone()));
                },
                |note| {
                    let _ = tx.send(Update::Note(note));
                },
            )
            .await;
        match result {
            Ok(n) => printed = n,
            Err(err) => {
                let _ = tx.send(Update::Note(format!("log stream lost: {err:#}")));
                return;
            }
        }
        // The stream ends when the deployment does; a coordinator restart
        // can end it early, and then it is followed again.
        match client.deployment_retrying(&id).await {
            Ok(d) if !exit::is_final(&d.state) => {}
            _ => return,
        }
        idle_rounds = if printed > before { 0 } else { idle_rounds + 1 };
        if idle_rounds >= RECONNECT_ATTEMPTS {
            return;
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// `deploy`/`rollback` without `--wait`, and `cancel`/`promote`: what was
/// started, and how to follow it.
pub fn print_started(out: Output, d: &pb::Deployment) {
    if out == Output::Json {
        return output::status(out, d);
    }
    outln!("{}", d.id);
    if d.state == "queued" {
        // The coordinator says behind which deployment ("queued behind deployment …").
        let why = match output::clean(&d.error) {
            e if e.starts_with("queued") => e,
            e if e.is_empty() => "queued behind another deployment".to_owned(),
            e => format!("queued: {e}"),
        };
        eprintln!(
            "{} of {} in {} is {why}; it starts when that one ends. Follow it with `flotilla status {}`",
            d.kind, d.app, d.env, d.id
        );
    } else {
        eprintln!(
            "{} of {} in {} started; follow it with `flotilla status {}` or `flotilla logs {} --follow`",
            d.kind, d.app, d.env, d.id, d.id
        );
    }
}
