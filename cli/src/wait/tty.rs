//! `--wait` on a terminal: a live view on stderr (indicatif), a header line
//! and one line per host, redrawn in place. Log lines are not dumped; each
//! host shows its latest one, and the tails of failed hosts print at the end.

use flotilla_proto::v1 as pb;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::tracker::{Tracker, host_active, host_failed};
use crate::output::{self, batch_text, clean, duration_text, outln};

const SPINNER: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/// What the view shows at one moment, as plain text (so it can be tested).
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub header: String,
    pub rows: Vec<String>,
    /// Hosts that did not fit, counted by state.
    pub footer: Option<String>,
}

fn symbol(state: &str, tick: usize) -> char {
    match state {
        "succeeded" => '✓',
        "rolled_back" => '↺',
        "skipped" => '-',
        "pending" => '·',
        s if host_failed(s) => '✗',
        s if host_active(s) => SPINNER[tick % SPINNER.len()],
        _ => ' ',
    }
}

/// The view for `now_ms`, with at most `max_rows` host lines.
pub fn frame(t: &Tracker, now_ms: i64, max_rows: usize, tick: usize) -> Frame {
    let d = &t.d;
    let mut header = format!(
        "{} {} → {} in {}: {}",
        d.kind,
        d.app,
        clean(&d.image),
        d.env,
        d.state
    );
    let batch = batch_text(d.current_batch, d.batches, t.canary());
    if !batch.is_empty() {
        header.push_str(&format!(" · {batch}"));
    }
    match t.failures() {
        0 => {}
        1 => header.push_str(" · 1 failure"),
        n => header.push_str(&format!(" · {n} failures")),
    }
    if t.cancelling && !crate::exit::is_final(&d.state) {
        header.push_str(" · cancelling: running hosts finish first");
    }
    match d.state.as_str() {
        "queued" => {
            let why = if d.error.is_empty() {
                &t.last_message
            } else {
                &d.error
            };
            if !why.is_empty() {
                header.push_str(&format!(" · {}", clean(why)));
            }
        }
        "paused" if d.resume_at_ms > now_ms => header.push_str(&format!(
            " · next batch in {}",
            duration_text(d.resume_at_ms - now_ms)
        )),
        "awaiting_promotion" => {
            header.push_str(&format!(" · `flotilla promote {}` to go on", d.id));
        }
        _ => {}
    }

    // Which hosts get a line: all if they fit; otherwise the busy ones, then
    // the failed ones, then the rest in order — shown in deployment order.
    let n = d.hosts.len();
    let mut chosen: Vec<usize> = (0..n).collect();
    if n > max_rows {
        let rank = |h: &pb::HostDeployment| {
            if host_active(&h.state) {
                0
            } else if host_failed(&h.state) {
                1
            } else if h.state == "pending" || h.state == "succeeded" {
                3
            } else {
                2
            }
        };
        chosen.sort_by_key(|&i| (rank(&d.hosts[i]), i));
        chosen.truncate(max_rows);
        chosen.sort_unstable();
    }
    let width = chosen
        .iter()
        .map(|&i| d.hosts[i].host_id.chars().count())
        .max()
        .unwrap_or(0);
    let rows = chosen
        .iter()
        .map(|&i| {
            let h = &d.hosts[i];
            let batch = if d.batches > 0 {
                (h.batch + 1).to_string()
            } else {
                String::new()
            };
            let elapsed = if host_active(&h.state) {
                t.phase_ms(&h.host_id, now_ms)
            } else {
                output::host_duration_ms(h, 0)
            }
            .map(duration_text)
            .unwrap_or_default();
            let detail = if host_failed(&h.state) && !h.error.is_empty() {
                clean(&h.error)
            } else {
                t.live
                    .get(&h.host_id)
                    .map(|l| l.last_line.clone())
                    .unwrap_or_default()
            };
            format!(
                "{} {batch:>3}  {:<width$}  {:<15} {elapsed:>7}  {detail}",
                symbol(&h.state, tick),
                h.host_id,
                h.state,
            )
            .trim_end()
            .to_owned()
        })
        .collect();
    let footer = (n > chosen.len()).then(|| {
        let mut counts = std::collections::BTreeMap::<&str, usize>::new();
        for (i, h) in d.hosts.iter().enumerate() {
            if !chosen.contains(&i) {
                *counts.entry(h.state.as_str()).or_default() += 1;
            }
        }
        let parts: Vec<String> = counts.iter().map(|(s, c)| format!("{c} {s}")).collect();
        format!("  … {} more hosts: {}", n - chosen.len(), parts.join(", "))
    });
    Frame {
        header,
        rows,
        footer,
    }
}

pub struct Tty {
    multi: MultiProgress,
    header: ProgressBar,
    rows: Vec<ProgressBar>,
    footer: Option<ProgressBar>,
    max_rows: usize,
    tick: usize,
}

fn line_bar() -> ProgressBar {
    let style = ProgressStyle::with_template("{wide_msg}").expect("a valid constant template");
    ProgressBar::new(0).with_style(style)
}

impl Tty {
    pub fn new() -> Self {
        let multi = MultiProgress::new();
        let header = multi.add(line_bar());
        let (term_rows, _) = console::Term::stderr().size();
        Self {
            multi,
            header,
            rows: Vec::new(),
            footer: None,
            // Header, footer, and a line for the cursor.
            max_rows: usize::from(term_rows).saturating_sub(3).max(3),
            tick: 0,
        }
    }

    /// Redraws from the tracker (called on every update and a few times a second).
    pub fn draw(&mut self, t: &Tracker) {
        self.tick += 1;
        let f = frame(t, flotilla_shared::time::now_ms(), self.max_rows, self.tick);
        self.header.set_message(f.header);
        while self.rows.len() < f.rows.len() {
            let bar = match &self.footer {
                Some(footer) => self.multi.insert_before(footer, line_bar()),
                None => self.multi.add(line_bar()),
            };
            self.rows.push(bar);
        }
        for (bar, text) in self.rows.iter().zip(f.rows) {
            bar.set_message(text);
        }
        match (f.footer, &self.footer) {
            (Some(text), Some(bar)) => bar.set_message(text),
            (Some(text), None) => {
                let bar = self.multi.add(line_bar());
                bar.set_message(text);
                self.footer = Some(bar);
            }
            (None, Some(bar)) => bar.set_message(""),
            (None, None) => {}
        }
    }

    /// A message above the live view.
    pub fn note(&mut self, note: &str) {
        if self.multi.println(note).is_err() {
            eprintln!("{note}");
        }
    }

    fn clear(&mut self) {
        for bar in self.rows.iter().chain(&self.footer).chain([&self.header]) {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }

    /// Removes the live view, then prints the tails of failed hosts (stderr)
    /// and the summary table (stdout).
    pub fn finish(&mut self, t: &Tracker, d: &pb::Deployment, now_ms: i64) {
        self.clear();
        for h in d.hosts.iter().filter(|h| host_failed(&h.state)) {
            let Some(live) = t.live.get(&h.host_id).filter(|l| !l.tail.is_empty()) else {
                continue;
            };
            eprintln!(
                "── last {} lines from {} ({}) ──",
                live.tail.len(),
                h.host_id,
                h.state
            );
            for line in &live.tail {
                eprintln!("  {line}");
            }
        }
        for line in output::wait_summary(d, now_ms) {
            outln!("{line}");
        }
    }

    /// Ctrl-C: leave the terminal clean.
    pub fn abandon(&mut self) {
        self.clear();
    }
}
