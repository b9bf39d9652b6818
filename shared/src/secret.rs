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
use std::path::{Path, PathBuf};
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

/// Why a secret could not be read. Never contains the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("set only one of {0}")]
    Conflict(String),
    #[error("environment variable {0} is not set")]
    EnvUnset(String),
    #[error("cannot read {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the secret is empty")]
    Empty,
}

/// Reads a secret from at most one source: the environment variable named
/// `var` (looked up with `env`), the file `file`, or a `value` given directly
/// (e.g. from a `FLOTILLA_*` variable). Trimmed; `None` when no source is
/// set; an empty secret is an error. `names` lists the config keys for the
/// conflict message (e.g. "password_env, password_file").
pub fn read_one(
    names: &str,
    var: Option<&str>,
    file: Option<&Path>,
    value: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Secret>, SecretError> {
    let set =
        usize::from(var.is_some()) + usize::from(file.is_some()) + usize::from(value.is_some());
    if set > 1 {
        return Err(SecretError::Conflict(names.to_owned()));
    }
    let raw = if let Some(var) = var {
        env(var).ok_or_else(|| SecretError::EnvUnset(var.to_owned()))?
    } else if let Some(path) = file {
        std::fs::read_to_string(path).map_err(|source| SecretError::File {
            path: path.to_owned(),
            source,
        })?
    } else if let Some(value) = value {
        value
    } else {
        return Ok(None);
    };
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(Some(Secret::new(trimmed)))
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
    fn read_one_takes_exactly_one_source() {
        let env = |k: &str| (k == "PW").then(|| " s3cret\n".to_owned());
        let got = read_one("a, b", Some("PW"), None, None, &env)
            .unwrap()
            .unwrap();
        assert_eq!(got.expose(), "s3cret");
        assert!(read_one("a, b", None, None, None, &env).unwrap().is_none());
        let e = read_one("a, b", Some("PW"), None, Some("x".into()), &env).unwrap_err();
        assert_eq!(e.to_string(), "set only one of a, b");
        let e = read_one("a", Some("NOPE"), None, None, &env).unwrap_err();
        assert_eq!(e.to_string(), "environment variable NOPE is not set");
        let e = read_one("a", None, None, Some("  ".into()), &env).unwrap_err();
        assert!(matches!(e, SecretError::Empty));
        let dir = std::env::temp_dir().join(format!("flotilla-secret-{}", std::process::id()));
        std::fs::write(&dir, "from-file\n").unwrap();
        let got = read_one("a", None, Some(&dir), None, &env)
            .unwrap()
            .unwrap();
        assert_eq!(got.expose(), "from-file");
        let _ = std::fs::remove_file(&dir);
    }

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
