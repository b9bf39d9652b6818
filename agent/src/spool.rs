//! The agent's durable spool (sled): every command it accepted, with its state
//! and result, and the queue of reports (accepted, log lines, results,
//! refusals) not yet acknowledged by the coordinator. Only this module touches sled.
//!
//! An agent has its own database (`Spool::open`); `simulate` keeps many
//! agents' spools as trees of one shared database (`SpoolDb` +
//! `Spool::open_in`), where one flush serves every agent waiting for one.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_shared::HostId;
use flotilla_shared::signing::VerifiedCommand;
use flotilla_shared::time::now_ms;
use prost::Message as _;
use serde::{Deserialize, Serialize};

pub mod queue;

pub use queue::Queue;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool: {0}")]
    Sled(#[from] sled::Error),
    #[error("spool: corrupt record: {0}")]
    Corrupt(String),
    #[error("spool: flush task failed: {0}")]
    FlushTask(String),
}

impl From<sled::transaction::TransactionError<SpoolError>> for SpoolError {
    fn from(err: sled::transaction::TransactionError<SpoolError>) -> Self {
        match err {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => SpoolError::Sled(e),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandState {
    Accepted,
    Running,
    Finished,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandRecord {
    pub command_id: String,
    pub deployment_id: String,
    pub action: String,
    pub app: String,
    pub image: String,
    pub expires_at_ms: i64,
    pub accepted_at_ms: i64,
    pub state: CommandState,
    pub outcome: Option<String>,
}

/// How often `SpoolDb::open` tries a database whose lock is held (20 ms apart).
const LOCK_TRIES: u32 = 100;

/// A sled database holding one or more spools, with group flushing.
pub struct SpoolDb {
    db: sled::Db,
    /// Flush requests so far (a ticket per `flush` call).
    requested: AtomicU64,
    /// The highest ticket a completed flush covers; held while flushing.
    flushed: tokio::sync::Mutex<u64>,
    /// Flushes that reached sled.
    n_flushes: AtomicU64,
}

impl SpoolDb {
    /// A bounded FIFO queue in tree `name` of this database (see
    /// [`Queue`]); `simulate` passes a per-host name such as
    /// `web-1/telemetry/metrics`.
    pub fn queue(
        self: &std::sync::Arc<Self>,
        name: &str,
        max_bytes: u64,
    ) -> Result<Queue, SpoolError> {
        Queue::open(std::sync::Arc::clone(self), name, max_bytes)
    }

    /// Opens (or creates) a database at `path` with a page cache of
    /// `cache_bytes`; `flush_every` is sled's background flush (`None`: only
    /// the explicit flushes, which every durability point makes anyway).
    pub fn open(
        path: &Path,
        cache_bytes: u64,
        flush_every: Option<Duration>,
    ) -> Result<Self, SpoolError> {
        let flush_every_ms =
            flush_every.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(flush_every_ms);
        // sled releases its file lock when its IO threads let go of the
        // database, a moment after the last handle in this process is
        // dropped (a reopen in the same process: `simulate`, tests). Another
        // process holding it is a real error, reported after the wait.
        let mut tries = 0;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock") =>
                {
                    tries += 1;
                    if tries >= LOCK_TRIES {
                        return Err(sled::Error::Io(e).into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Self {
            db,
            requested: AtomicU64::new(0),
            flushed: tokio::sync::Mutex::new(0),
            n_flushes: AtomicU64::new(0),
        })
    }

    /// Makes every write made before the call durable. Concurrent callers
    /// share flushes (group commit): a caller whose writes a flush that
    /// started after them already covered returns without flushing again, so
    /// a thousand agents finishing together cost a few flushes, not a
    /// thousand (and not a thousand sled threads). Cancel-safe.
    pub async fn flush(&self) -> Result<(), SpoolError> {
        // Our writes happened before this ticket was drawn.
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self.flushed.lock().await;
        if *flushed >= ticket {
            return Ok(());
        }
        // Every ticket drawn so far was drawn after its writes, so the flush
        // below covers all of them.
        let covers = self.requested.load(Ordering::SeqCst);
        // Not sled's `flush_async`: its thread pool grows to 128 threads and
        // may still hold the database for a moment after answering. Here the
        // clone is dropped before the result arrives.
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
            .await
            .map_err(|e| SpoolError::FlushTask(e.to_string()))??;
        *flushed = covers;
        self.n_flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// How many flushes reached sled so far.
    pub fn n_flushes(&self) -> u64 {
        self.n_flushes.load(Ordering::Relaxed)
    }
}

/// One agent's spool: three trees in a `SpoolDb`.
pub struct Spool {
    db: std::sync::Arc<SpoolDb>,
    commands: sled::Tree,
    outgoing: sled::Tree,
    /// App name → the image the agent last deployed to it successfully.
    releases: sled::Tree,
    /// App name → the services (`kind name` lines) the last applied spec links to it.
    services: sled::Tree,
    /// Tree-name prefix of this spool (`<host_id>/` in a shared database).
    prefix: String,
    /// Makes "allocate sequence number + insert" atomic, so reports are
    /// inserted in sequence order and a cumulative ack never skips one.
    append: Mutex<()>,
}

fn decode_record(bytes: &[u8]) -> Result<CommandRecord, SpoolError> {
    serde_json::from_slice(bytes).map_err(|e| SpoolError::Corrupt(e.to_string()))
}

fn encode_record(record: &CommandRecord) -> Result<Vec<u8>, SpoolError> {
    serde_json::to_vec(record).map_err(|e| SpoolError::Corrupt(e.to_string()))
}

impl Spool {
    /// An agent's own spool database at `path` (trees `commands`, `outgoing`).
    pub fn open(path: &Path) -> Result<Self, SpoolError> {
        let db = SpoolDb::open(path, 8 * 1024 * 1024, Some(Duration::from_millis(500)))?;
        Self::with_trees(std::sync::Arc::new(db), "")
    }

    /// The spool of agent `host_id` inside a shared database (trees
    /// `<host_id>/commands`, `<host_id>/outgoing`; a host id has no `/`).
    pub fn open_in(db: &std::sync::Arc<SpoolDb>, host_id: &HostId) -> Result<Self, SpoolError> {
        Self::with_trees(std::sync::Arc::clone(db), &format!("{host_id}/"))
    }

    fn with_trees(db: std::sync::Arc<SpoolDb>, prefix: &str) -> Result<Self, SpoolError> {
        Ok(Self {
            commands: db.db.open_tree(format!("{prefix}commands"))?,
            outgoing: db.db.open_tree(format!("{prefix}outgoing"))?,
            releases: db.db.open_tree(format!("{prefix}releases"))?,
            services: db.db.open_tree(format!("{prefix}services"))?,
            prefix: prefix.to_owned(),
            db,
            append: Mutex::new(()),
        })
    }

    /// A bounded FIFO queue in this spool's database, in tree `name` under
    /// the spool's prefix (e.g. `telemetry/metrics`, or
    /// `web-1/telemetry/metrics` for a spool opened with `open_in`).
    pub fn queue(&self, name: &str, max_bytes: u64) -> Result<Queue, SpoolError> {
        self.db.queue(&format!("{}{name}", self.prefix), max_bytes)
    }

    /// Makes all writes durable (for a shared database: every spool's).
    /// Cancel-safe.
    pub async fn flush(&self) -> Result<(), SpoolError> {
        self.db.flush().await
    }

    /// Whether this command id was ever accepted here (the replay check).
    pub fn seen(&self, command_id: &str) -> bool {
        // On a read error, answer "seen": refusing is safe, running twice is not.
        self.commands.contains_key(command_id).unwrap_or(true)
    }

    pub fn command(&self, command_id: &str) -> Result<Option<CommandRecord>, SpoolError> {
        self.commands
            .get(command_id)?
            .map(|v| decode_record(&v))
            .transpose()
    }

    fn push(&self, command_id: &str, body: pb::report::Body) -> Result<u64, SpoolError> {
        let _guard = self
            .append
            .lock()
            .map_err(|_| SpoolError::Corrupt("poisoned".into()))?;
        // Unique and increasing across the database: per spool they are
        // increasing too, just not contiguous when spools share it.
        let seq = self.db.db.generate_id()?;
        let report = pb::Report {
            spool_seq: seq,
            command_id: command_id.to_owned(),
            body: Some(body),
        };
        self.outgoing
            .insert(seq.to_be_bytes(), report.encode_to_vec())?;
        Ok(seq)
    }

    /// Records `cmd` as accepted and queues the `Accepted` report, durably,
    /// before anything runs.
    pub async fn accept(&self, cmd: &VerifiedCommand) -> Result<(), SpoolError> {
        let record = CommandRecord {
            command_id: cmd.command_id.clone(),
            deployment_id: cmd.deployment_id.clone(),
            action: cmd.action.kind().into(),
            app: cmd
                .action
                .app()
                .map(ToString::to_string)
                .unwrap_or_default(),
            image: cmd
                .action
                .image()
                .map(ToString::to_string)
                .unwrap_or_default(),
            expires_at_ms: cmd.expires_at_ms,
            accepted_at_ms: now_ms(),
            state: CommandState::Accepted,
            outcome: None,
        };
        self.commands
            .insert(cmd.command_id.as_bytes(), encode_record(&record)?)?;
        self.push(&cmd.command_id, pb::report::Body::Accepted(pb::Accepted {}))?;
        self.flush().await
    }

    pub fn set_state(
        &self,
        command_id: &str,
        state: CommandState,
        outcome: Option<&str>,
    ) -> Result<(), SpoolError> {
        if let Some(mut record) = self.command(command_id)? {
            record.state = state;
            record.outcome = outcome.map(str::to_owned);
            self.commands
                .insert(command_id.as_bytes(), encode_record(&record)?)?;
        }
        Ok(())
    }

    /// Records that the command is about to run, durably: after a crash the
    /// agent must know dokku may have started.
    pub async fn mark_running(&self, command_id: &str) -> Result<(), SpoolError> {
        self.set_state(command_id, CommandState::Running, None)?;
        self.flush().await
    }

    pub fn push_log(&self, command_id: &str, line: pb::LogLine) -> Result<(), SpoolError> {
        self.push(command_id, pb::report::Body::Log(line))?;
        Ok(())
    }

    /// Queues the result, then records the command as finished, durably. In
    /// that order: a crash in between re-reports it as interrupted after the
    /// real result, which the coordinator ignores; the other order could lose it.
    pub async fn finish(
        &self,
        command_id: &str,
        result: pb::CommandResult,
    ) -> Result<(), SpoolError> {
        let outcome = pb::Outcome::try_from(result.outcome)
            .map(|o| o.as_str_name())
            .unwrap_or("OUTCOME_UNSPECIFIED");
        self.push(command_id, pb::report::Body::Result(result))?;
        self.flush().await?;
        self.set_state(command_id, CommandState::Finished, Some(outcome))?;
        self.flush().await
    }

    pub async fn push_refusal(
        &self,
        command_id: &str,
        refused: pb::Refused,
    ) -> Result<(), SpoolError> {
        self.push(command_id, pb::report::Body::Refused(refused))?;
        self.flush().await
    }

    /// Reports after `after` (exclusive), oldest first, at most `limit`.
    pub fn pending_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<pb::Report>, SpoolError> {
        let range = match after {
            Some(seq) => self.outgoing.range((
                std::ops::Bound::Excluded(seq.to_be_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => self.outgoing.range::<[u8; 8], _>(..),
        };
        range
            .take(limit)
            .map(|item| {
                let (_, v) = item?;
                pb::Report::decode(v.as_ref()).map_err(|e| SpoolError::Corrupt(e.to_string()))
            })
            .collect()
    }

    /// Number of reports not yet acknowledged.
    pub fn pending_len(&self) -> usize {
        self.outgoing.len()
    }

    /// Drops every report with sequence number <= `up_to`.
    pub fn ack(&self, up_to: u64) -> Result<usize, SpoolError> {
        let mut n = 0;
        for item in self.outgoing.range(..=up_to.to_be_bytes()) {
            let (k, _) = item?;
            self.outgoing.remove(k)?;
            n += 1;
        }
        Ok(n)
    }

    /// Records that `app` now runs `image` (after a successful deploy or
    /// rollback); durable with the next flush.
    pub fn set_release(&self, app: &str, image: &str) -> Result<(), SpoolError> {
        self.releases.insert(app.as_bytes(), image.as_bytes())?;
        Ok(())
    }

    /// Records the services (kind, name) a successfully applied spec links to
    /// `app`, for the periodic checks `flotilla doctor` reports.
    pub fn set_services(&self, app: &str, services: &[(String, String)]) -> Result<(), SpoolError> {
        let text: String = services
            .iter()
            .map(|(kind, name)| format!("{kind} {name}\n"))
            .collect();
        self.services.insert(app.as_bytes(), text.as_bytes())?;
        Ok(())
    }

    /// App → the services (kind, name) its last applied spec links.
    pub fn services(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Vec<(String, String)>>, SpoolError> {
        let mut out = std::collections::BTreeMap::new();
        for item in self.services.iter() {
            let (k, v) = item?;
            let list = String::from_utf8_lossy(&v)
                .lines()
                .filter_map(|l| l.split_once(' '))
                .map(|(kind, name)| (kind.to_owned(), name.to_owned()))
                .collect();
            out.insert(String::from_utf8_lossy(&k).into_owned(), list);
        }
        Ok(out)
    }

    /// Forgets `app` (destroyed on the host): its release and services.
    pub fn forget_app(&self, app: &str) -> Result<(), SpoolError> {
        self.releases.remove(app.as_bytes())?;
        self.services.remove(app.as_bytes())?;
        Ok(())
    }

    /// App → image, for every app this agent deployed.
    pub fn releases(&self) -> Result<std::collections::BTreeMap<String, String>, SpoolError> {
        let mut out = std::collections::BTreeMap::new();
        for item in self.releases.iter() {
            let (k, v) = item?;
            out.insert(
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            );
        }
        Ok(out)
    }

    /// Commands accepted but not finished: after a restart these were
    /// interrupted (or never started) and must not run again on their own.
    pub fn unfinished(&self) -> Result<Vec<CommandRecord>, SpoolError> {
        let mut out = Vec::new();
        for item in self.commands.iter() {
            let (_, v) = item?;
            let record = decode_record(&v)?;
            if record.state != CommandState::Finished {
                out.push(record);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use flotilla_shared::signing::Action;
    use flotilla_shared::{AppName, ImageRef};

    use super::*;

    fn command(id: &str) -> VerifiedCommand {
        VerifiedCommand {
            command_id: id.into(),
            host_id: HostId::parse("web-1").unwrap(),
            deployment_id: "d-1".into(),
            issued_at_ms: 1,
            expires_at_ms: 2,
            action: Action::Deploy {
                app: AppName::parse("shop").unwrap(),
                image: ImageRef::parse("acme/shop:1").unwrap(),
                health: None,
            },
        }
    }

    fn log(seq: u64) -> pb::LogLine {
        pb::LogLine {
            seq,
            stream: pb::Stream::Stdout.into(),
            line: format!("line {seq}"),
            at_ms: 0,
        }
    }

    fn kinds(reports: &[pb::Report]) -> Vec<&'static str> {
        reports
            .iter()
            .map(|r| match r.body {
                Some(pb::report::Body::Accepted(_)) => "accepted",
                Some(pb::report::Body::Log(_)) => "log",
                Some(pb::report::Body::Result(_)) => "result",
                Some(pb::report::Body::Refused(_)) => "refused",
                None => "none",
            })
            .collect()
    }

    #[tokio::test]
    async fn reports_stay_until_acked_and_commands_are_remembered_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path()).unwrap();
            assert!(!spool.seen("c-1"));
            spool.accept(&command("c-1")).await.unwrap();
            assert!(spool.seen("c-1"));
            spool.mark_running("c-1").await.unwrap();
            spool.push_log("c-1", log(0)).unwrap();
            spool.push_log("c-1", log(1)).unwrap();
            let all = spool.pending_after(None, 100).unwrap();
            assert_eq!(kinds(&all), ["accepted", "log", "log"]);
            let seqs: Vec<u64> = all.iter().map(|r| r.spool_seq).collect();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

            // A cumulative ack drops exactly the reports up to it.
            assert_eq!(spool.ack(seqs[1]).unwrap(), 2);
            assert_eq!(kinds(&spool.pending_after(None, 100).unwrap()), ["log"]);
            assert_eq!(
                kinds(&spool.pending_after(Some(seqs[2]), 100).unwrap()),
                Vec::<&str>::new()
            );
            spool.flush().await.unwrap();
        }
        // After a restart: the command is still seen, still unfinished, and
        // the unacknowledged report is still there.
        let spool = Spool::open(dir.path()).unwrap();
        assert!(spool.seen("c-1"));
        let unfinished = spool.unfinished().unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].state, CommandState::Running);
        assert_eq!(kinds(&spool.pending_after(None, 100).unwrap()), ["log"]);

        spool
            .finish(
                "c-1",
                pb::CommandResult {
                    outcome: pb::Outcome::Interrupted.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(spool.unfinished().unwrap().is_empty());
        assert_eq!(
            kinds(&spool.pending_after(None, 100).unwrap()),
            ["log", "result"]
        );
        // New sequence numbers keep growing after a restart.
        let after: Vec<u64> = spool
            .pending_after(None, 100)
            .unwrap()
            .iter()
            .map(|r| r.spool_seq)
            .collect();
        assert!(after[0] < after[1]);
    }
}

#[cfg(test)]
mod shared_tests {
    use std::sync::Arc;

    use flotilla_shared::signing::Action;
    use flotilla_shared::{AppName, ImageRef};

    use super::*;

    fn command(id: &str, host: &str) -> VerifiedCommand {
        VerifiedCommand {
            command_id: id.into(),
            host_id: HostId::parse(host).unwrap(),
            deployment_id: "d-1".into(),
            issued_at_ms: 1,
            expires_at_ms: 2,
            action: Action::Deploy {
                app: AppName::parse("shop").unwrap(),
                image: ImageRef::parse("acme/shop:1").unwrap(),
                health: None,
            },
        }
    }

    fn host(name: &str) -> HostId {
        HostId::parse(name).unwrap()
    }

    #[tokio::test]
    async fn spools_in_one_database_are_separate_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (one_seqs, two_seqs);
        {
            let db = Arc::new(SpoolDb::open(dir.path(), 1024 * 1024, None).unwrap());
            let one = Spool::open_in(&db, &host("sim-0001")).unwrap();
            let two = Spool::open_in(&db, &host("sim-0002")).unwrap();
            one.accept(&command("c-1", "sim-0001")).await.unwrap();
            two.accept(&command("c-2", "sim-0002")).await.unwrap();
            one.push_log(
                "c-1",
                pb::LogLine {
                    seq: 0,
                    ..Default::default()
                },
            )
            .unwrap();
            // Replay protection and reports are per agent.
            assert!(one.seen("c-1") && !one.seen("c-2"));
            assert!(two.seen("c-2") && !two.seen("c-1"));
            assert_eq!(one.pending_len(), 2);
            assert_eq!(two.pending_len(), 1);
            one_seqs = one
                .pending_after(None, 10)
                .unwrap()
                .iter()
                .map(|r| r.spool_seq)
                .collect::<Vec<_>>();
            two_seqs = two
                .pending_after(None, 10)
                .unwrap()
                .iter()
                .map(|r| r.spool_seq)
                .collect::<Vec<_>>();
            assert!(one_seqs.windows(2).all(|w| w[0] < w[1]));
            // An ack of one agent's reports leaves the other's alone, even
            // with a sequence number beyond them.
            assert_eq!(one.ack(u64::MAX).unwrap(), 2);
            assert_eq!(two.pending_len(), 1);
            one.push_log("c-1", pb::LogLine::default()).unwrap();
            one.flush().await.unwrap();
        }
        let db = Arc::new(SpoolDb::open(dir.path(), 1024 * 1024, None).unwrap());
        let one = Spool::open_in(&db, &host("sim-0001")).unwrap();
        let two = Spool::open_in(&db, &host("sim-0002")).unwrap();
        assert!(one.seen("c-1") && two.seen("c-2"));
        assert_eq!(one.pending_len(), 1);
        let after: Vec<u64> = one
            .pending_after(None, 10)
            .unwrap()
            .iter()
            .map(|r| r.spool_seq)
            .collect();
        assert!(after[0] > one_seqs[1], "sequence numbers keep growing");
        assert_eq!(
            two.pending_after(None, 10)
                .unwrap()
                .iter()
                .map(|r| r.spool_seq)
                .collect::<Vec<_>>(),
            two_seqs
        );
        assert_eq!(one.unfinished().unwrap().len(), 1);
        // A standalone spool uses the unprefixed trees and sees none of this.
        let own = tempfile::tempdir().unwrap();
        assert!(!Spool::open(own.path()).unwrap().seen("c-1"));
    }

    #[tokio::test]
    async fn concurrent_flushes_are_shared() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(SpoolDb::open(dir.path(), 1024 * 1024, None).unwrap());
        let spools: Vec<Arc<Spool>> = (1..=50)
            .map(|i| Arc::new(Spool::open_in(&db, &host(&format!("sim-{i:04}"))).unwrap()))
            .collect();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, spool) in spools.iter().enumerate() {
            let spool = Arc::clone(spool);
            let host_id = format!("sim-{:04}", i + 1);
            tasks.spawn(async move { spool.accept(&command(&format!("c-{i}"), &host_id)).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap().unwrap();
        }
        // 50 durable accepts (each flushes once), far fewer sled flushes.
        assert_eq!(db.requested.load(Ordering::SeqCst), 50);
        assert!(db.n_flushes() < 25, "{} flushes", db.n_flushes());
        drop(spools);
        drop(db);
        let db = Arc::new(SpoolDb::open(dir.path(), 1024 * 1024, None).unwrap());
        for i in 0..50 {
            let spool = Spool::open_in(&db, &host(&format!("sim-{:04}", i + 1))).unwrap();
            assert!(spool.seen(&format!("c-{i}")));
        }
    }
}
