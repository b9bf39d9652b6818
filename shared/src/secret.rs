//! A secret string (API keys, webhook URLs and secrets, passwords): `Debug`
//! and `Display` print `***`, so it cannot reach a log line, an error or an
//! API answer by accident. Only [`Secret::expose`] gives the value, at the
//! one place that sends it.
//!
//! Every `Secret` (and every value passed to [`register_for_scrubbing`]) is
//! also remembered process-wide, so [`scrub`] can replace it with `***` in
//! text that leaves the process another way (Sentry events).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Mutex;

use serde::{Deserialize, Deserializer};

#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value` and registers it for [`scrub`].
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        register_for_scrubbing(&value);
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Values shorter than this are not registered: replacing them would mangle
/// ordinary text, and a secret that short protects nothing anyway.
pub const MIN_SCRUB_LEN: usize = 6;
/// At most this many values are remembered (API tokens seen by a long-running
/// coordinator would otherwise grow the set without bound); later ones are
/// ignored.
const MAX_SCRUB_VALUES: usize = 4096;

static SCRUB: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Remembers `value` so [`scrub`] replaces it with `***`. Call it for every
/// secret the process learns outside a [`Secret`] (tokens read from files or
/// requests, passwords in URLs). Cheap; repeated values are stored once.
pub fn register_for_scrubbing(value: &str) {
    let value = value.trim();
    if value.len() < MIN_SCRUB_LEN {
        return;
    }
    if let Ok(mut set) = SCRUB.lock()
        && (set.len() < MAX_SCRUB_VALUES || set.contains(value))
    {
        set.insert(value.to_owned());
    }
}

/// `text` with every registered secret replaced by `***`; `None` if it
/// contains none (the common case, no allocation).
pub fn scrub(text: &str) -> Option<String> {
    let set = SCRUB.lock().ok()?;
    // Longest first, so a secret containing another is replaced whole.
    let mut found: Vec<&String> = set.iter().filter(|s| text.contains(s.as_str())).collect();
    if found.is_empty() {
        return None;
    }
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let mut out = text.to_owned();
    for s in found {
        out = out.replace(s.as_str(), "***");
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn scrubbed_from_text() {
        let s: Secret =
            serde_json::from_str("\"s3cr3t-from-config\"").unwrap_or_else(|_| Secret::new(""));
        register_for_scrubbing("fltjoin1.abcdef.0011");
        register_for_scrubbing("short");
        assert_eq!(
            scrub(&format!(
                "url?key={} join fltjoin1.abcdef.0011 short",
                s.expose()
            ))
            .as_deref(),
            Some("url?key=*** join *** short")
        );
        assert_eq!(scrub("nothing secret here"), None);
    }
}
