//! Prometheus remote write 1.0: the protobuf messages (hand-written prost
//! structs with the spec's field numbers, no protoc) and the encoding of
//! samples into one `WriteRequest`. Compression and sending live in `ship`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// `prometheus.WriteRequest` (field 2 is reserved; metadata, field 3, unused).
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// `prometheus.TimeSeries`: the full label set and its samples, oldest first.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// One sample of one series, as the sampler produces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// The metric name (`__name__`).
    pub name: String,
    /// Further labels (e.g. `host`, `env`); order does not matter.
    pub labels: Vec<(String, String)>,
    /// Queued as its bit pattern, so NaN stale markers (`0x7ff0000000000002`)
    /// reach the receiver unchanged.
    #[serde(with = "f64_bits")]
    pub value: f64,
    pub timestamp_ms: i64,
}

impl Series {
    /// The label set as sent: `__name__` plus `labels`, sorted by name (byte
    /// order), a repeated name kept once (the first: `__name__` wins over a
    /// label of that name), empty names and values dropped.
    pub fn wire_labels(&self) -> Vec<Label> {
        let mut out: Vec<Label> = Vec::with_capacity(self.labels.len() + 1);
        let all = std::iter::once(("__name__", self.name.as_str()))
            .chain(self.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        for (name, value) in all {
            if name.is_empty() || value.is_empty() || out.iter().any(|l| l.name == name) {
                continue;
            }
            out.push(Label {
                name: name.to_owned(),
                value: value.to_owned(),
            });
        }
        // Stable sort by bytes; names are unique now.
        out.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
        out
    }
}

/// The Prometheus stale marker: a NaN with this exact bit pattern, sent when
/// a series ends (e.g. an app was destroyed).
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

mod f64_bits {
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(value.to_bits())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        u64::deserialize(d).map(f64::from_bits)
    }
}

/// One `WriteRequest` for `series`: samples of the same label set share one
/// `TimeSeries`, in the order given (the queue order, which is the
/// sampler's time order); series appear in order of first appearance.
pub fn encode(series: &[Series]) -> WriteRequest {
    let mut index: HashMap<Vec<Label>, usize> = HashMap::new();
    let mut timeseries: Vec<TimeSeries> = Vec::new();
    for s in series {
        let labels = s.wire_labels();
        let sample = Sample {
            value: s.value,
            timestamp: s.timestamp_ms,
        };
        match index.get(&labels) {
            Some(&i) => timeseries[i].samples.push(sample),
            None => {
                index.insert(labels.clone(), timeseries.len());
                timeseries.push(TimeSeries {
                    labels,
                    samples: vec![sample],
                });
            }
        }
    }
    WriteRequest { timeseries }
}
