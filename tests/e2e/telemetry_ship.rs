//! The agent's telemetry shipping library against real receivers: Debian's
//! Prometheus 2.42 (remote write, an outage and catch-up with the original
//! timestamps) and the Python Loki receiver (exact streams, 429/500 retries
//! delivering exactly once, a 400 dropping one batch only).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_agent::spool::SpoolDb;
use flotilla_agent::telemetry::{
    Auth, Endpoint, LOGS_QUEUE, LogEntry, LogShipper, METRICS_QUEUE, MetricsShipper, Series,
    ShipConfig, ShipStats, StatsSnapshot,
};
use flotilla_shared::secret::Secret;
use flotilla_tests::WAIT;
use flotilla_tests::loki::LokiReceiver;
use flotilla_tests::prometheus::Prometheus;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn config(url: &str) -> ShipConfig {
    ShipConfig {
        batch_max_entries: 50,
        max_retry_time: Duration::from_secs(30),
        request_timeout: Duration::from_secs(5),
        ..ShipConfig::new(Endpoint {
            url: url.parse().unwrap(),
            auth: None,
            headers: Vec::new(),
        })
    }
}

/// A shipper's `run` on `rt`, stopped (and awaited) on drop.
struct Sender {
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    rt: tokio::runtime::Handle,
}

impl Sender {
    fn start<F>(rt: &tokio::runtime::Runtime, run: impl FnOnce(CancellationToken) -> F) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let cancel = CancellationToken::new();
        let task = rt.spawn(run(cancel.clone()));
        Self {
            cancel,
            task: Some(task),
            rt: rt.handle().clone(),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), task).await });
        }
    }
}

fn wait_stats(
    rt: &tokio::runtime::Runtime,
    stats: &ShipStats,
    what: &str,
    pred: impl FnMut(&StatsSnapshot) -> bool,
) -> StatsSnapshot {
    rt.block_on(stats.wait_until(WAIT, pred))
        .unwrap_or_else(|s| panic!("{what}: not reached within {WAIT:?}: {s:?}"))
}

fn sample(name: &str, host: &str, value: f64, ts: i64) -> Series {
    Series {
        name: name.into(),
        labels: vec![("host".into(), host.into()), ("env".into(), "prod".into())],
        value,
        timestamp_ms: ts,
    }
}

/// `[[ts_seconds, "value"], …]` of the raw samples of `selector` in the last 10 minutes.
fn raw_samples(prom: &Prometheus, selector: &str) -> Vec<(i64, String)> {
    let result = prom.query(&format!("{selector}[10m]")).unwrap();
    assert!(result.len() <= 1, "{result:?}");
    result
        .first()
        .map(|series| {
            series["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    let ms = (v[0].as_f64().unwrap() * 1000.0).round() as i64;
                    (ms, v[1].as_str().unwrap().to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn telemetry_ship_prometheus_receives_samples_and_catches_up_after_an_outage() {
    let rt = runtime();
    let mut prom = Prometheus::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&prom.write_url());
    let open = |cfg: &ShipConfig| {
        let db = Arc::new(SpoolDb::open(dir.path(), 1 << 20, None).unwrap());
        let queue = db.queue(METRICS_QUEUE, cfg.buffer_max_bytes).unwrap();
        Arc::new(MetricsShipper::new(cfg.clone(), queue).unwrap())
    };

    // 1. Live: samples arrive with exactly their label sets and values.
    let t0 = flotilla_shared::time::now_ms() - 3_000;
    let shipper = open(&cfg);
    let sender = Sender::start(&rt, |c| Arc::clone(&shipper).run(c));
    shipper
        .push(&[
            sample("flotilla_e2e_cpu_ratio", "h1", 0.25, t0),
            sample("flotilla_e2e_mem_bytes", "h2", 1024.0, t0),
        ])
        .unwrap();
    wait_stats(&rt, &shipper.stats(), "first batch", |s| {
        s.sent_entries_total == 2
    });
    let cpu = prom.query("flotilla_e2e_cpu_ratio").unwrap();
    assert_eq!(cpu.len(), 1, "{cpu:?}");
    assert_eq!(
        cpu[0]["metric"],
        json!({"__name__": "flotilla_e2e_cpu_ratio", "env": "prod", "host": "h1"})
    );
    assert_eq!(cpu[0]["value"][1], "0.25");
    let mem = prom
        .query(r#"flotilla_e2e_mem_bytes{host="h2",env="prod"}"#)
        .unwrap();
    assert_eq!(mem.len(), 1, "{mem:?}");
    assert_eq!(mem[0]["value"][1], "1024");

    // 2. Outage: Prometheus stops; samples pushed meanwhile stay queued,
    //    across an agent restart too.
    prom.stop().unwrap();
    shipper
        .push(&[
            sample("flotilla_e2e_cpu_ratio", "h1", 0.5, t0 + 1_000),
            sample("flotilla_e2e_mem_bytes", "h2", 2048.0, t0 + 1_000),
        ])
        .unwrap();
    let s = wait_stats(&rt, &shipper.stats(), "a failed attempt", |s| {
        s.retries_total >= 1
    });
    assert_eq!((s.queued_entries, s.sent_entries_total), (2, 2));
    drop(sender);
    rt.block_on(shipper.flush()).unwrap();
    drop(shipper);

    let shipper = open(&cfg);
    assert_eq!(shipper.stats().snapshot().queued_entries, 2);
    shipper
        .push(&[sample("flotilla_e2e_cpu_ratio", "h1", 0.75, t0 + 2_000)])
        .unwrap();
    let _sender = Sender::start(&rt, |c| Arc::clone(&shipper).run(c));
    wait_stats(
        &rt,
        &shipper.stats(),
        "a failed attempt after restart",
        |s| s.retries_total >= 1,
    );
    assert_eq!(shipper.stats().snapshot().sent_entries_total, 0);

    // 3. Prometheus is back on the same port and data: everything arrives,
    //    with its original timestamp, and nothing is dropped.
    prom.start_again().unwrap();
    let s = wait_stats(&rt, &shipper.stats(), "catch-up", |s| {
        s.sent_entries_total == 3 && s.queued_entries == 0
    });
    assert_eq!(
        (
            s.dropped_overflow_total,
            s.dropped_rejected_total,
            s.dropped_retry_exhausted_total
        ),
        (0, 0, 0)
    );
    assert_eq!(
        raw_samples(&prom, r#"flotilla_e2e_cpu_ratio{host="h1",env="prod"}"#),
        [
            (t0, "0.25".to_owned()),
            (t0 + 1_000, "0.5".to_owned()),
            (t0 + 2_000, "0.75".to_owned())
        ]
    );
    assert_eq!(
        raw_samples(&prom, "flotilla_e2e_mem_bytes"),
        [(t0, "1024".to_owned()), (t0 + 1_000, "2048".to_owned())]
    );
    let count = prom
        .query("count_over_time(flotilla_e2e_cpu_ratio[10m])")
        .unwrap();
    assert_eq!(count[0]["value"][1], "3", "{count:?}");
}

fn log(labels: &[(&str, &str)], ts: i64, line: &str, meta: &[(&str, &str)]) -> LogEntry {
    LogEntry {
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        timestamp_ns: ts,
        line: line.into(),
        metadata: meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// One decoded entry: (timestamp ns, line, structured metadata).
type Entry = (i64, String, Vec<(String, String)>);

/// Streams of a record as `(selector, entries)`.
fn streams(record: &Value) -> Vec<(String, Vec<Entry>)> {
    record["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let entries = s["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let meta = e["metadata"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| {
                            (
                                p[0].as_str().unwrap().to_owned(),
                                p[1].as_str().unwrap().to_owned(),
                            )
                        })
                        .collect();
                    (
                        e["ts_ns"].as_i64().unwrap(),
                        e["line"].as_str().unwrap().to_owned(),
                        meta,
                    )
                })
                .collect();
            (s["labels"].as_str().unwrap().to_owned(), entries)
        })
        .collect()
}

fn lines_accepted(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .filter(|r| r["status"] == 204)
        .flat_map(|r| streams(r).into_iter().flat_map(|(_, e)| e))
        .map(|(_, line, _)| line)
        .collect()
}

#[test]
fn telemetry_ship_loki_receiver_gets_exact_streams_and_retries_exactly_once() {
    let rt = runtime();
    let loki = LokiReceiver::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&loki.push_url());
    cfg.endpoint.auth = Some(Auth::Basic {
        username: "1234".into(),
        password: Secret::new("s3cret"),
    });
    cfg.endpoint.headers = vec![("X-Scope-OrgID".into(), "fleet".into())];
    let db = Arc::new(SpoolDb::open(dir.path(), 1 << 20, None).unwrap());
    let queue = db.queue(LOGS_QUEUE, cfg.buffer_max_bytes).unwrap();
    let shipper = Arc::new(LogShipper::new(cfg, queue).unwrap());
    let stats = shipper.stats();
    let _sender = Sender::start(&rt, |c| Arc::clone(&shipper).run(c));

    // 1. Two interleaved streams: grouped, in order, exact.
    let web = [
        ("app", "web"),
        ("env", "prod"),
        ("host", "h1"),
        ("source", "deploy"),
    ];
    let api = [
        ("app", "api"),
        ("env", "prod"),
        ("host", "h1"),
        ("source", "dokku"),
    ];
    let t = 1_764_000_000_000_000_000_i64;
    let ids = [("deployment", "d-7"), ("command", "c-1")];
    shipper
        .push(&[
            log(&web, t + 1, "-----> Deploying web", &ids),
            log(&api, t + 2, "api \"quoted\" line", &[("command", "c-2")]),
            log(&web, t + 1_000_000_003, "=====> Application deployed", &ids),
            log(&web, t + 1_000_000_004, "no metadata", &[]),
        ])
        .unwrap();
    wait_stats(&rt, &stats, "first batch", |s| s.sent_entries_total == 4);
    let records = loki.requests().unwrap();
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r["path"], "/loki/api/v1/push");
    assert_eq!(r["status"], 204);
    assert_eq!(r["headers"]["content-type"], "application/x-protobuf");
    assert_eq!(r["headers"]["authorization"], "Basic MTIzNDpzM2NyZXQ=");
    assert_eq!(r["headers"]["x-scope-orgid"], "fleet");
    assert_eq!(
        r["headers"]["user-agent"],
        concat!("flotilla-agent/", env!("CARGO_PKG_VERSION"))
    );
    let owned = |m: &[(&str, &str)]| -> Vec<(String, String)> {
        m.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    assert_eq!(
        streams(r),
        [
            (
                r#"{app="web", env="prod", host="h1", source="deploy"}"#.to_owned(),
                vec![
                    (t + 1, "-----> Deploying web".to_owned(), owned(&ids)),
                    (
                        t + 1_000_000_003,
                        "=====> Application deployed".to_owned(),
                        owned(&ids)
                    ),
                    (t + 1_000_000_004, "no metadata".to_owned(), vec![]),
                ]
            ),
            (
                r#"{app="api", env="prod", host="h1", source="dokku"}"#.to_owned(),
                vec![(
                    t + 2,
                    "api \"quoted\" line".to_owned(),
                    owned(&[("command", "c-2")])
                )]
            ),
        ]
    );

    // 2. A 429 (Retry-After: 1) and two 500s: retried, then delivered once.
    loki.fail_next(429, 1, Some(1)).unwrap();
    loki.fail_next(500, 2, None).unwrap();
    shipper
        .push(&[
            log(&web, t + 2_000_000_000, "retried 1", &ids),
            log(&web, t + 2_000_000_001, "retried 2", &ids),
        ])
        .unwrap();
    let s = wait_stats(&rt, &stats, "retried batch", |s| s.sent_requests_total == 2);
    assert_eq!((s.retries_total, s.sent_entries_total), (3, 6));
    let records = loki.requests().unwrap();
    let statuses: Vec<&Value> = records.iter().map(|r| &r["status"]).collect();
    assert_eq!(
        statuses,
        [
            &json!(204),
            &json!(429),
            &json!(500),
            &json!(500),
            &json!(204)
        ]
    );
    for r in &records[1..] {
        assert_eq!(streams(r), streams(&records[4]), "the same batch each time");
    }
    let after_429 = records[2]["at"].as_f64().unwrap() - records[1]["at"].as_f64().unwrap();
    assert!(
        after_429 >= 0.95,
        "Retry-After: 1 not honoured: {after_429}s"
    );

    // 3. A 400 drops that batch (counted, not retried); later batches go through.
    loki.fail_next(400, 1, None).unwrap();
    shipper
        .push(&[log(&web, t + 3_000_000_000, "rejected", &[])])
        .unwrap();
    wait_stats(&rt, &stats, "rejected", |s| s.dropped_rejected_total == 1);
    shipper
        .push(&[log(&web, t + 4_000_000_000, "after the rejection", &[])])
        .unwrap();
    let s = wait_stats(&rt, &stats, "later batch", |s| s.sent_requests_total == 3);
    assert_eq!((s.retries_total, s.queued_entries), (3, 0));
    let records = loki.requests().unwrap();
    assert_eq!(records.len(), 7, "{records:#?}");
    assert_eq!(records[5]["status"], 400);
    assert_eq!(
        lines_accepted(&records),
        [
            "-----> Deploying web",
            "=====> Application deployed",
            "no metadata",
            "api \"quoted\" line",
            "retried 1",
            "retried 2",
            "after the rejection"
        ]
    );
}
