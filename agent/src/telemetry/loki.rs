//! Loki push API (protobuf): the `logproto` messages (hand-written prost
//! structs with Loki's field numbers, no protoc) and the grouping of log
//! entries into streams. Compression and sending live in `ship`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `logproto.PushRequest` (field 2, `format`, is internal and left empty).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRequest {
    #[prost(message, repeated, tag = "1")]
    pub streams: Vec<StreamAdapter>,
}

/// `logproto.StreamAdapter`: a stream's selector text and its entries
/// (field 3, `hash`, is internal and never set).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamAdapter {
    #[prost(string, tag = "1")]
    pub labels: String,
    #[prost(message, repeated, tag = "2")]
    pub entries: Vec<EntryAdapter>,
}

/// `logproto.EntryAdapter` (field 4, `parsed`, is for query answers only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntryAdapter {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<Timestamp>,
    #[prost(string, tag = "2")]
    pub line: String,
    #[prost(message, repeated, tag = "3")]
    pub structured_metadata: Vec<LabelPairAdapter>,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// 0..=999_999_999, also for times before the epoch.
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelPairAdapter {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// One log line, as the agent produces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Stream labels: keep them low-cardinality (`app`, `env`, `host`, `source`).
    pub labels: BTreeMap<String, String>,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    pub line: String,
    /// Structured metadata: the high-cardinality ids (`deployment`, `command`).
    pub metadata: Vec<(String, String)>,
}

impl Timestamp {
    pub fn from_unix_ns(ns: i64) -> Self {
        const NS: i64 = 1_000_000_000;
        Self {
            seconds: ns.div_euclid(NS),
            // rem_euclid is in 0..NS, which fits an i32.
            nanos: i32::try_from(ns.rem_euclid(NS)).unwrap_or(0),
        }
    }
}

/// The LogQL selector text of a label set, e.g. `{app="web", env="prod"}`:
/// names in sorted order, values quoted with `\`, `"` and newlines escaped.
pub fn selector(labels: &BTreeMap<String, String>) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
    out
}

/// One `PushRequest` for `entries`: one stream per label set, streams in
/// order of first appearance, entries in the order given within each.
pub fn encode(entries: &[LogEntry]) -> PushRequest {
    let mut streams: Vec<StreamAdapter> = Vec::new();
    let mut index: BTreeMap<&BTreeMap<String, String>, usize> = BTreeMap::new();
    for e in entries {
        let entry = EntryAdapter {
            timestamp: Some(Timestamp::from_unix_ns(e.timestamp_ns)),
            line: e.line.clone(),
            structured_metadata: e
                .metadata
                .iter()
                .map(|(name, value)| LabelPairAdapter {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        };
        let i = *index.entry(&e.labels).or_insert_with(|| {
            streams.push(StreamAdapter {
                labels: selector(&e.labels),
                entries: Vec::new(),
            });
            streams.len() - 1
        });
        streams[i].entries.push(entry);
    }
    PushRequest { streams }
}
