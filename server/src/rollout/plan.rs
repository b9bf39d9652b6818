//! Which hosts a deployment goes to, and in which batches.

use flotilla_shared::HostId;

use crate::store::{Host, Strategy};

/// The hosts of `env` that are not revoked and carry every label of the
/// strategy's selector, sorted by host id.
pub fn select_hosts(
    hosts: Vec<Host>,
    env: &flotilla_shared::EnvName,
    strategy: &Strategy,
) -> Vec<HostId> {
    let mut selected: Vec<HostId> = hosts
        .into_iter()
        .filter(|h| &h.env == env && !h.revoked)
        .filter(|h| {
            strategy
                .hosts
                .iter()
                .all(|(k, v)| h.labels.as_map().get(k) == Some(v))
        })
        .map(|h| h.host_id)
        .collect();
    selected.sort();
    selected
}

/// The batch of each of `n` hosts (in order): the canary hosts first in a
/// batch of their own, then batches of the strategy's size. Returns the batch
/// numbers and the number of batches.
pub fn batches(n: usize, strategy: &Strategy) -> (Vec<u32>, u32) {
    let canary = (strategy.canary as usize).min(n);
    let size = strategy.batch.of(n);
    let mut out = Vec::with_capacity(n);
    let first = u32::from(canary > 0);
    for i in 0..n {
        let batch = if i < canary {
            0
        } else {
            first + u32::try_from((i - canary) / size).unwrap_or(u32::MAX)
        };
        out.push(batch);
    }
    let count = out.last().map_or(0, |b| b + 1);
    (out, count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BatchSize;

    fn strategy(batch: &str, canary: u32) -> Strategy {
        Strategy {
            batch: BatchSize::parse(batch).unwrap(),
            canary,
            ..Strategy::default()
        }
    }

    #[test]
    fn batch_sizes() {
        assert_eq!(batches(5, &strategy("1", 0)), (vec![0, 1, 2, 3, 4], 5));
        assert_eq!(batches(5, &strategy("2", 0)), (vec![0, 0, 1, 1, 2], 3));
        assert_eq!(batches(5, &strategy("10", 0)), (vec![0; 5], 1));
        // 40% of 5 is 2 hosts per batch; 1% rounds up to 1.
        assert_eq!(batches(5, &strategy("40%", 0)), (vec![0, 0, 1, 1, 2], 3));
        assert_eq!(batches(3, &strategy("1%", 0)), (vec![0, 1, 2], 3));
        assert_eq!(batches(4, &strategy("100%", 0)), (vec![0; 4], 1));
        assert_eq!(batches(0, &strategy("1", 0)), (vec![], 0));
    }

    #[test]
    fn canary_first() {
        assert_eq!(batches(5, &strategy("2", 1)), (vec![0, 1, 1, 2, 2], 3));
        // More canaries than hosts: everything is the canary batch.
        assert_eq!(batches(2, &strategy("1", 5)), (vec![0, 0], 1));
    }

    #[test]
    fn batch_syntax() {
        assert_eq!(BatchSize::parse(""), Some(BatchSize::Hosts(1)));
        assert_eq!(BatchSize::parse("25%"), Some(BatchSize::Percent(25)));
        for bad in ["0", "0%", "101%", "-1", "x", "1.5"] {
            assert_eq!(BatchSize::parse(bad), None, "{bad}");
        }
    }
}
