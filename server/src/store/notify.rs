//! The notification outbox (`notify_outbox` tree): one record per (event,
//! channel) until it is delivered, refused or given up. What a record means
//! and when it is sent is `crate::notify`'s business; this file only keeps it.
//!
//! Keys: `r\0<id>` → the record; `d\0<channel>\0<next attempt ms, BE><id>` →
//! nothing (the per-channel due index, so the worker finds a channel's next
//! record without scanning the others). Both change in one transaction.
//! `s\0<kind>\0<host>` → the episode last notified for a fleet event (so an
//! offline agent is reported once, also across restarts).
//! `g\0<deployment id>` → the Grafana annotation id of the deployment (i64
//! BE; -1 once its final annotation was delivered).

use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;

use super::{Store, StoreError, decode, encode};

const TREE: &str = "notify_outbox";

/// One pending notification for one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotifyRecord {
    /// UUID v7: the delivery id receivers dedupe on.
    pub id: String,
    /// The configured channel name (never its URL or credentials).
    pub channel: String,
    /// The event, as JSON.
    pub event: serde_json::Value,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Not sent before this time.
    pub next_attempt_ms: i64,
    pub created_at_ms: i64,
    /// Why the last attempt failed (already free of secrets).
    #[serde(default)]
    pub last_error: String,
}

fn record_key(id: &str) -> Vec<u8> {
    let mut key = b"r\0".to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

fn due_prefix(channel: &str) -> Vec<u8> {
    let mut key = b"d\0".to_vec();
    key.extend_from_slice(channel.as_bytes());
    key.push(0);
    key
}

fn due_key(channel: &str, next_attempt_ms: i64, id: &str) -> Vec<u8> {
    let mut key = due_prefix(channel);
    key.extend_from_slice(&u64::try_from(next_attempt_ms).unwrap_or(0).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

fn grafana_key(deployment: &str) -> Vec<u8> {
    let mut key = b"g\0".to_vec();
    key.extend_from_slice(deployment.as_bytes());
    key
}

impl Store {
    /// The Grafana annotation id recorded for `deployment` (see `notify::grafana`).
    pub fn grafana_annotation(&self, deployment: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .notify_outbox
            .get(grafana_key(deployment))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes))
    }

    /// Records `id` for `deployment`; durable with the next flush.
    pub fn set_grafana_annotation(&self, deployment: &str, id: i64) -> Result<(), StoreError> {
        self.notify_outbox
            .insert(grafana_key(deployment), id.to_be_bytes().to_vec())?;
        Ok(())
    }

    /// Adds records to the outbox in one atomic batch. Durable with the next
    /// flush (sled also flushes on its own every 500 ms).
    pub fn notify_insert(&self, records: &[NotifyRecord]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for record in records {
            batch.insert(record_key(&record.id), encode(record)?);
            batch.insert(
                due_key(&record.channel, record.next_attempt_ms, &record.id),
                &[][..],
            );
        }
        self.notify_outbox.apply_batch(batch)?;
        Ok(())
    }

    /// The record of `channel` with the earliest next attempt (due or not).
    pub fn notify_next(&self, channel: &str) -> Result<Option<NotifyRecord>, StoreError> {
        let prefix = due_prefix(channel);
        // An index entry without its record cannot be written by this module;
        // should one exist anyway, it is removed (a bounded number of times).
        for _ in 0..100 {
            let Some(key) = self.notify_outbox.scan_prefix(&prefix).keys().next() else {
                return Ok(None);
            };
            let key = key?;
            let id = key.get(prefix.len() + 8..).unwrap_or_default();
            match self
                .notify_outbox
                .get(record_key(&String::from_utf8_lossy(id)))?
            {
                Some(bytes) => return decode(TREE, &bytes).map(Some),
                None => {
                    self.notify_outbox.remove(&key)?;
                }
            }
        }
        Ok(None)
    }

    /// Records a failed attempt: `attempts` and `last_error` are stored and
    /// the record moves to `next_attempt_ms`. `false` if the record is gone.
    pub fn notify_reschedule(
        &self,
        id: &str,
        attempts: u32,
        next_attempt_ms: i64,
        last_error: &str,
    ) -> Result<bool, StoreError> {
        let key = record_key(id);
        let done = self.notify_outbox.transaction(|tree| {
            let Some(bytes) = tree.get(&key)? else {
                return Ok(false);
            };
            let mut record: NotifyRecord =
                decode(TREE, &bytes).map_err(ConflictableTransactionError::Abort)?;
            tree.remove(due_key(&record.channel, record.next_attempt_ms, id))?;
            record.attempts = attempts;
            record.next_attempt_ms = next_attempt_ms;
            last_error.clone_into(&mut record.last_error);
            let bytes = encode(&record).map_err(ConflictableTransactionError::Abort)?;
            tree.insert(key.as_slice(), bytes)?;
            tree.insert(due_key(&record.channel, next_attempt_ms, id), &[][..])?;
            Ok(true)
        })?;
        Ok(done)
    }

    /// Removes a record (delivered, refused or given up); returns it if it
    /// was there.
    pub fn notify_remove(&self, id: &str) -> Result<Option<NotifyRecord>, StoreError> {
        let key = record_key(id);
        let removed = self.notify_outbox.transaction(|tree| {
            let Some(bytes) = tree.remove(key.as_slice())? else {
                return Ok(None);
            };
            let record: NotifyRecord =
                decode(TREE, &bytes).map_err(ConflictableTransactionError::Abort)?;
            tree.remove(due_key(&record.channel, record.next_attempt_ms, id))?;
            Ok(Some(record))
        })?;
        Ok(removed)
    }

    /// Every pending record, oldest first.
    pub fn notify_pending(&self) -> Result<Vec<NotifyRecord>, StoreError> {
        self.notify_outbox
            .scan_prefix(b"r\0")
            .values()
            .map(|v| decode(TREE, &v?))
            .collect()
    }
}

fn mark_key(kind: &str, subject: &str) -> Vec<u8> {
    let mut key = b"s\0".to_vec();
    key.extend_from_slice(kind.as_bytes());
    key.push(0);
    key.extend_from_slice(subject.as_bytes());
    key
}

impl Store {
    /// Whether `kind` was already notified for `subject` (a host) at episode
    /// `value` (e.g. the last-seen time it went quiet at).
    pub fn notify_marked(&self, kind: &str, subject: &str, value: i64) -> Result<bool, StoreError> {
        Ok(self.notify_outbox.get(mark_key(kind, subject))?.as_deref()
            == Some(&value.to_be_bytes()[..]))
    }

    /// Remembers that `kind` was notified for `subject` at episode `value`.
    pub fn notify_mark(&self, kind: &str, subject: &str, value: i64) -> Result<(), StoreError> {
        self.notify_outbox
            .insert(mark_key(kind, subject), &value.to_be_bytes()[..])?;
        Ok(())
    }
}
