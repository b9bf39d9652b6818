//! Output in Dokku's line shapes (`-----> `, `=====> ` and 7-space values on stdout, ` !     ` on stderr), one
//! flushed line at a time so a reader can stream a deploy; and `Failure`, the error that carries an exit code.

use std::cell::RefCell;
use std::fmt::Display;
use std::io::Write;

/// Writes lines the way Dokku's `log.go` / `functions` helpers do.
pub struct Out {
    /// `--quiet` before the command: hides `=====>` headers, never values or errors.
    pub quiet: bool,
    /// Unit tests: stdout and stderr lines are collected here (in order) instead of printed.
    capture: Option<RefCell<Vec<String>>>,
}

impl Out {
    /// Output to stdout and stderr.
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            capture: None,
        }
    }

    /// Output collected for `take` (unit tests).
    #[cfg(test)]
    pub fn capturing(quiet: bool) -> Self {
        Self {
            quiet,
            capture: Some(RefCell::new(Vec::new())),
        }
    }

    /// The lines collected so far (stderr ones start with ` !     `), emptying the buffer.
    #[cfg(test)]
    pub fn take(&self) -> Vec<String> {
        self.capture
            .as_ref()
            .map(|lines| std::mem::take(&mut *lines.borrow_mut()))
            .unwrap_or_default()
    }

    /// A raw line on stdout (values, docker output, single-flag report answers).
    pub fn line(&self, text: &str) {
        match &self.capture {
            Some(lines) => lines.borrow_mut().push(text.to_string()),
            None => emit(&mut std::io::stdout().lock(), text),
        }
    }

    /// `-----> text` (`dokku_log_info1`).
    pub fn step(&self, text: &str) {
        self.line(&format!("-----> {text}"));
    }

    /// `=====> text` (`dokku_log_info2`), hidden by `--quiet`.
    pub fn header(&self, text: &str) {
        if !self.quiet {
            self.line(&format!("=====> {text}"));
        }
    }

    /// `       text` (`dokku_log_verbose`).
    pub fn info(&self, text: &str) {
        self.line(&format!("       {text}"));
    }

    /// ` !     text` on stderr (`dokku_log_warn`), for warnings that do not end the command.
    pub fn warn(&self, text: &str) {
        let line = format!(" !     {text}");
        match &self.capture {
            Some(lines) => lines.borrow_mut().push(line),
            None => emit(&mut std::io::stderr().lock(), &line),
        }
    }

    /// A failure's lines, on stderr (for failures that do not end the command, e.g. one app of `--all`).
    pub fn failure(&self, failure: &Failure) {
        match &self.capture {
            Some(lines) => lines.borrow_mut().extend(failure.lines.iter().cloned()),
            None => failure.print(),
        }
    }
}

/// Writes one line and flushes it. Write errors (the reader went away) are ignored on purpose: a deploy whose
/// caller died runs to its end, as it does on a real host, so tests can look at the state it leaves.
fn emit(writer: &mut impl Write, line: &str) {
    let _ = writeln!(writer, "{line}");
    let _ = writer.flush();
}

/// A command that ends with a non-zero exit code, and the stderr lines that `main` prints for it.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    lines: Vec<String>,
}

impl Failure {
    /// ` !     text`, then exit with `code`.
    pub fn msg(code: i32, text: impl Display) -> Self {
        Self::msgs(code, [text.to_string()])
    }

    /// Several ` !     ` lines, then exit with `code`.
    pub fn msgs(code: i32, texts: impl IntoIterator<Item = String>) -> Self {
        let lines = texts
            .into_iter()
            .map(|text| format!(" !     {text}"))
            .collect();
        Self { code, lines }
    }

    /// Lines printed as they are (pflag's usage errors).
    pub fn raw(code: i32, lines: Vec<String>) -> Self {
        Self { code, lines }
    }

    /// Exit with `code` and print nothing more (what mattered was printed already).
    pub fn silent(code: i32) -> Self {
        Self {
            code,
            lines: Vec::new(),
        }
    }

    /// A failure of the fake itself (its state directory), not of the Dokku command it plays.
    pub fn io(action: impl Display, err: impl Display) -> Self {
        Self::msg(1, format!("fake-dokku: {action}: {err}"))
    }

    #[cfg(test)]
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// Prints the failure's lines to stderr.
    pub fn print(&self) {
        let mut stderr = std::io::stderr().lock();
        for line in &self.lines {
            emit(&mut stderr, line);
        }
    }
}

/// What every command returns: `Ok` is exit 0.
pub type CmdResult = Result<(), Failure>;
