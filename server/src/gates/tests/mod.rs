//! Gate tests: the Flagsmith gate against a fake Flagsmith on 127.0.0.1
//! (`fake`), `[gates]` config validation, freeze windows and their storage.

mod config;
mod fake;
mod flagsmith;
mod freeze;

use std::sync::{Arc, Mutex};

use flotilla_shared::{AppName, EnvName};

use super::*;

/// The Flagsmith environment key used throughout; no reason, error or log
/// line may ever contain it.
pub(super) const KEY: &str = "ser.gAtEsTeStKeY4711doNotLeak";
pub(super) const KEY_VAR: &str = "FLOTILLA_FLAGSMITH_PRODUCTION_KEY";

pub(super) fn env(name: &str) -> EnvName {
    EnvName::parse(name).unwrap()
}

pub(super) fn app(name: &str) -> AppName {
    AppName::parse(name).unwrap()
}

/// A store in a temporary directory (removed on drop).
pub(super) struct TempStore {
    pub store: Store,
    _dir: tempfile::TempDir,
}

pub(super) fn temp_store() -> TempStore {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("state")).unwrap();
    TempStore { store, _dir: dir }
}

/// Warn-level log lines written while the returned guard lives (on this
/// thread, which is the whole runtime of a `#[tokio::test]`).
pub(super) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buf);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .finish();
        (Self(buf), tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
