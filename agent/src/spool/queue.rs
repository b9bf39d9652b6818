//! A bounded, durable FIFO of opaque byte entries in one sled tree of the
//! spool database (used by telemetry shipping). It owns ordering, the byte
//! bound (oldest dropped first) and deletion after acknowledgement; what the
//! bytes mean is the caller's business.

use std::sync::{Arc, Mutex};

use super::{SpoolDb, SpoolError};

/// Bytes an entry counts for against the bound: its value plus its 8-byte key.
const KEY_BYTES: u64 = 8;

/// One queued entry: its sequence number (increasing, never reused while the
/// tree exists) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub value: Vec<u8>,
}

/// A FIFO in tree `name`, holding at most `max_bytes` (entries + keys). Keys
/// are big-endian sequence numbers, so sled's order is queue order.
pub struct Queue {
    db: Arc<SpoolDb>,
    tree: sled::Tree,
    max_bytes: u64,
    /// Serialises every change, so the counters match the tree.
    state: Mutex<State>,
    /// Entries dropped when the queue was opened with a smaller bound.
    dropped_at_open: u64,
}

struct State {
    next_seq: u64,
    n_entries: u64,
    n_bytes: u64,
}

fn seq_of(key: &[u8]) -> Result<u64, SpoolError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| SpoolError::Corrupt(format!("queue key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}

fn entry_bytes(value_len: usize) -> u64 {
    u64::try_from(value_len)
        .unwrap_or(u64::MAX)
        .saturating_add(KEY_BYTES)
}

impl Queue {
    /// Opens (or creates) the queue in tree `name`; counts what is already there.
    pub(super) fn open(db: Arc<SpoolDb>, name: &str, max_bytes: u64) -> Result<Self, SpoolError> {
        let tree = db.db.open_tree(name)?;
        let mut n_entries = 0;
        let mut n_bytes = 0u64;
        for item in tree.iter() {
            let (_, v) = item?;
            n_entries += 1;
            n_bytes = n_bytes.saturating_add(entry_bytes(v.len()));
        }
        let next_seq = match tree.last()? {
            Some((k, _)) => seq_of(&k)?.saturating_add(1),
            None => 0,
        };
        let queue = Self {
            db,
            tree,
            max_bytes,
            state: Mutex::new(State {
                next_seq,
                n_entries,
                n_bytes,
            }),
            dropped_at_open: 0,
        };
        // A smaller bound than last time applies at once.
        let mut queue = queue;
        queue.dropped_at_open = queue.trim()?;
        Ok(queue)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, SpoolError> {
        self.state
            .lock()
            .map_err(|_| SpoolError::Corrupt("queue lock poisoned".into()))
    }

    /// Appends `values` in order (one atomic sled batch), then drops the
    /// oldest entries while the queue is over its bound. Returns how many
    /// entries were dropped (possibly some of `values` themselves, if they
    /// alone exceed the bound). Not flushed: see [`Queue::flush`].
    pub fn push<I>(&self, values: I) -> Result<u64, SpoolError>
    where
        I: IntoIterator<Item = Vec<u8>>,
    {
        {
            let mut state = self.lock()?;
            let mut batch = sled::Batch::default();
            let mut seq = state.next_seq;
            let (mut n, mut bytes) = (0u64, 0u64);
            for value in values {
                bytes = bytes.saturating_add(entry_bytes(value.len()));
                batch.insert(&seq.to_be_bytes(), value);
                seq += 1;
                n += 1;
            }
            self.tree.apply_batch(batch)?;
            state.next_seq = seq;
            state.n_entries += n;
            state.n_bytes = state.n_bytes.saturating_add(bytes);
        }
        self.trim()
    }

    /// Drops the oldest entries until the queue fits its bound; returns how many.
    fn trim(&self) -> Result<u64, SpoolError> {
        let mut state = self.lock()?;
        let mut dropped = 0;
        // Bounded: each round removes one entry or stops.
        while state.n_bytes > self.max_bytes {
            let Some((_, v)) = self.tree.pop_min()? else {
                // The counters drifted (cannot happen while all changes go
                // through the lock); the tree is the truth.
                state.n_entries = 0;
                state.n_bytes = 0;
                break;
            };
            state.n_entries = state.n_entries.saturating_sub(1);
            state.n_bytes = state.n_bytes.saturating_sub(entry_bytes(v.len()));
            dropped += 1;
        }
        Ok(dropped)
    }

    /// The oldest `limit` entries, oldest first (they stay queued).
    pub fn peek(&self, limit: usize) -> Result<Vec<Entry>, SpoolError> {
        self.tree
            .iter()
            .take(limit)
            .map(|item| {
                let (k, v) = item?;
                Ok(Entry {
                    seq: seq_of(&k)?,
                    value: v.to_vec(),
                })
            })
            .collect()
    }

    /// The oldest entries, oldest first, at most `limit` of them and no more
    /// than `max_bytes` (counted as for the bound) — but always at least one
    /// when the queue is not empty. They stay queued.
    pub fn peek_bounded(&self, limit: usize, max_bytes: u64) -> Result<Vec<Entry>, SpoolError> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for item in self.tree.iter().take(limit) {
            let (k, v) = item?;
            bytes = bytes.saturating_add(entry_bytes(v.len()));
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(Entry {
                seq: seq_of(&k)?,
                value: v.to_vec(),
            });
        }
        Ok(out)
    }

    /// Deletes every entry with sequence number <= `up_to` (the batch just
    /// acknowledged; entries the bound already dropped are simply gone).
    /// Returns how many were deleted.
    pub fn ack(&self, up_to: u64) -> Result<u64, SpoolError> {
        let mut state = self.lock()?;
        let mut n = 0;
        for item in self.tree.range(..=up_to.to_be_bytes()) {
            let (k, _) = item?;
            if let Some(v) = self.tree.remove(&k)? {
                state.n_entries = state.n_entries.saturating_sub(1);
                state.n_bytes = state.n_bytes.saturating_sub(entry_bytes(v.len()));
                n += 1;
            }
        }
        Ok(n)
    }

    /// Entries the bound dropped when the queue was opened (counted by the
    /// shipper as overflow).
    pub fn dropped_at_open(&self) -> u64 {
        self.dropped_at_open
    }

    /// Entries queued.
    pub fn len(&self) -> u64 {
        self.lock().map(|s| s.n_entries).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes queued (values + keys), at most the bound after every push.
    pub fn bytes(&self) -> u64 {
        self.lock().map(|s| s.n_bytes).unwrap_or(0)
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Makes every change so far durable (group flush of the whole spool
    /// database). Cancel-safe.
    pub async fn flush(&self) -> Result<(), SpoolError> {
        self.db.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_db(dir: &std::path::Path) -> Arc<SpoolDb> {
        Arc::new(SpoolDb::open(dir, 1024 * 1024, None).unwrap())
    }

    fn values(entries: &[Entry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| String::from_utf8(e.value.clone()).unwrap())
            .collect()
    }

    fn items(names: &[&str]) -> Vec<Vec<u8>> {
        names.iter().map(|n| n.as_bytes().to_vec()).collect()
    }

    #[test]
    fn fifo_and_delete_after_ack() {
        let dir = tempfile::tempdir().unwrap();
        let q = open_db(dir.path())
            .queue("telemetry/metrics", 1 << 20)
            .unwrap();
        assert!(q.is_empty());
        assert_eq!(q.push(items(&["a", "b", "c"])).unwrap(), 0);
        assert_eq!(q.push(items(&["d"])).unwrap(), 0);
        assert_eq!(q.len(), 4);
        assert_eq!(q.bytes(), 4 * 9);
        let first = q.peek(2).unwrap();
        assert_eq!(values(&first), ["a", "b"]);
        // Peeking removes nothing; only an ack does.
        assert_eq!(values(&q.peek(10).unwrap()), ["a", "b", "c", "d"]);
        assert_eq!(q.ack(first[1].seq).unwrap(), 2);
        assert_eq!(values(&q.peek(10).unwrap()), ["c", "d"]);
        assert_eq!((q.len(), q.bytes()), (2, 18));
        // Acking again is harmless.
        assert_eq!(q.ack(first[1].seq).unwrap(), 0);
        // A byte budget: two entries of 9 bytes fit 20, a third does not;
        // a single entry is returned even when it alone is over the budget.
        q.push(items(&["e"])).unwrap();
        assert_eq!(values(&q.peek_bounded(10, 20).unwrap()), ["c", "d"]);
        assert_eq!(values(&q.peek_bounded(10, 1).unwrap()), ["c"]);
        assert_eq!(values(&q.peek_bounded(1, 100).unwrap()), ["c"]);
    }

    #[test]
    fn over_the_bound_the_oldest_go_first_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        // Room for three 1-byte entries (9 bytes each with the key).
        let q = open_db(dir.path()).queue("q", 27).unwrap();
        assert_eq!(q.push(items(&["1", "2", "3"])).unwrap(), 0);
        assert_eq!(q.push(items(&["4", "5"])).unwrap(), 2);
        assert_eq!(values(&q.peek(10).unwrap()), ["3", "4", "5"]);
        assert_eq!((q.len(), q.bytes()), (3, 27));
        // An entry larger than the whole bound cannot stay.
        assert_eq!(q.push(vec![vec![b'x'; 100]]).unwrap(), 4);
        assert!(q.is_empty());
        assert_eq!(q.push(items(&["6"])).unwrap(), 0);
        assert_eq!(values(&q.peek(10).unwrap()), ["6"]);
    }

    #[tokio::test]
    async fn survives_reopen_and_keeps_sequence_order() {
        let dir = tempfile::tempdir().unwrap();
        let last_seq;
        {
            let db = open_db(dir.path());
            let q = db.queue("telemetry/logs", 1 << 20).unwrap();
            q.push(items(&["a", "b", "c"])).unwrap();
            let head = q.peek(1).unwrap();
            q.ack(head[0].seq).unwrap();
            last_seq = q.peek(10).unwrap()[1].seq;
            q.flush().await.unwrap();
        }
        let db = open_db(dir.path());
        let q = db.queue("telemetry/logs", 1 << 20).unwrap();
        assert_eq!(values(&q.peek(10).unwrap()), ["b", "c"]);
        assert_eq!((q.len(), q.bytes()), (2, 18));
        q.push(items(&["d"])).unwrap();
        let all = q.peek(10).unwrap();
        assert_eq!(values(&all), ["b", "c", "d"]);
        assert!(all[2].seq > last_seq, "sequence numbers are not reused");
        // Reopening with a smaller bound trims the oldest at once.
        drop(q);
        let q = db.queue("telemetry/logs", 18).unwrap();
        assert_eq!(values(&q.peek(10).unwrap()), ["c", "d"]);
    }

    #[tokio::test]
    async fn a_spool_opens_its_queues_under_its_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        let host_a = flotilla_shared::HostId::parse("web-1").unwrap();
        let host_b = flotilla_shared::HostId::parse("web-2").unwrap();
        let a = crate::spool::Spool::open_in(&db, &host_a).unwrap();
        let b = crate::spool::Spool::open_in(&db, &host_b).unwrap();
        let qa = a.queue("telemetry/metrics", 1 << 20).unwrap();
        let qb = b.queue("telemetry/metrics", 1 << 20).unwrap();
        qa.push(items(&["from a"])).unwrap();
        qb.push(items(&["from b"])).unwrap();
        assert_eq!(values(&qa.peek(10).unwrap()), ["from a"]);
        assert_eq!(values(&qb.peek(10).unwrap()), ["from b"]);
    }
}
