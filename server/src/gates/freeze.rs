//! Freeze windows: periods in which deploys to an environment are refused
//! (rollbacks never are). One-off (`from`..`until`) or weekly in UTC
//! (`sat 00:00-mon 06:00`). Storage is in `store/gates.rs`.

use std::fmt;

use flotilla_shared::EnvName;
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
const WEEK_MS: i64 = 7 * DAY_MS;
const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const FULL_DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// The longest one-off freeze: longer ones are almost certainly a typo, and a
/// forgotten one would block deploys for months.
pub const MAX_FREEZE_MS: i64 = 90 * DAY_MS;
/// The longest freeze reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// A freeze that could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreezeError {
    #[error(
        "invalid weekly window {text:?}: {reason} (expected e.g. \"sat 00:00-mon 06:00\", UTC)"
    )]
    Weekly { text: String, reason: String },
    #[error("a freeze must end after it starts")]
    EndsBeforeStart,
    #[error("a freeze may last at most 90 days (this one lasts {days} days)")]
    TooLong { days: i64 },
    #[error("this freeze already ended at {}", flotilla_shared::time::format_ms(*.until_ms))]
    AlreadyOver { until_ms: i64 },
    #[error("a freeze needs a reason")]
    EmptyReason,
    #[error("a freeze reason may have at most {MAX_REASON_CHARS} characters (this one has {0})")]
    ReasonTooLong(usize),
}

/// A deploy freeze for one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Freeze {
    /// UUID v7 (time-ordered).
    pub id: String,
    pub env: EnvName,
    pub window: Window,
    pub reason: String,
    pub created_by: String,
    pub created_at_ms: i64,
}

impl Freeze {
    /// A new freeze with a fresh id, checked: a one-off window must end after
    /// it starts, last at most 90 days and not be over already at `now_ms`;
    /// the reason must not be empty.
    pub fn new(
        env: EnvName,
        window: Window,
        reason: &str,
        created_by: &str,
        now_ms: i64,
    ) -> Result<Self, FreezeError> {
        if let Window::Once { from_ms, until_ms } = window {
            if until_ms <= from_ms {
                return Err(FreezeError::EndsBeforeStart);
            }
            if until_ms - from_ms > MAX_FREEZE_MS {
                return Err(FreezeError::TooLong {
                    days: (until_ms - from_ms + DAY_MS - 1) / DAY_MS,
                });
            }
            if until_ms <= now_ms {
                return Err(FreezeError::AlreadyOver { until_ms });
            }
        }
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(FreezeError::EmptyReason);
        }
        let n_chars = reason.chars().count();
        if n_chars > MAX_REASON_CHARS {
            return Err(FreezeError::ReasonTooLong(n_chars));
        }
        Ok(Self {
            id: uuid::Uuid::now_v7().to_string(),
            env,
            window,
            reason: reason.to_owned(),
            created_by: created_by.to_owned(),
            created_at_ms: now_ms,
        })
    }
}

/// When a freeze is in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    /// `[from_ms, until_ms)`.
    Once { from_ms: i64, until_ms: i64 },
    /// Every week, in UTC.
    Weekly(WeeklyWindow),
}

impl Window {
    pub fn contains(&self, at_ms: i64) -> bool {
        match self {
            Self::Once { from_ms, until_ms } => (*from_ms..*until_ms).contains(&at_ms),
            Self::Weekly(w) => w.contains(at_ms),
        }
    }

    /// When the occurrence containing `at_ms` ends; `None` if `at_ms` is
    /// outside the window.
    pub fn end_after(&self, at_ms: i64) -> Option<i64> {
        if !self.contains(at_ms) {
            return None;
        }
        match self {
            Self::Once { until_ms, .. } => Some(*until_ms),
            Self::Weekly(w) => Some(at_ms + (w.end_ms() - ms_of_week(at_ms)).rem_euclid(WEEK_MS)),
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Once { from_ms, until_ms } => write!(
                f,
                "from {} until {}",
                flotilla_shared::time::format_ms(*from_ms),
                flotilla_shared::time::format_ms(*until_ms)
            ),
            Self::Weekly(w) => write!(f, "weekly {w} UTC"),
        }
    }
}

/// A weekly window in UTC, `DAY HH:MM-DAY HH:MM` with days `mon`..`sun`;
/// the start is included, the end is not. It may wrap over the end of the
/// week (`fri 18:00-mon 06:00`). Serialized as that text.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WeeklyWindow {
    /// Minutes since Monday 00:00.
    start_min: u32,
    end_min: u32,
}

impl WeeklyWindow {
    /// Parses `sat 00:00-mon 06:00` (case-insensitive; full day names are
    /// accepted too). Start and end must differ.
    pub fn parse(text: &str) -> Result<Self, FreezeError> {
        let err = |reason: &str| FreezeError::Weekly {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (start, end) = text
            .split_once('-')
            .ok_or_else(|| err("missing '-' between start and end"))?;
        let start_min = parse_point(start).map_err(|r| err(&format!("start: {r}")))?;
        let end_min = parse_point(end).map_err(|r| err(&format!("end: {r}")))?;
        if start_min == end_min {
            return Err(err("start and end are the same"));
        }
        Ok(Self { start_min, end_min })
    }

    pub fn contains(&self, at_ms: i64) -> bool {
        let m = ms_of_week(at_ms);
        let (start, end) = (self.start_ms(), self.end_ms());
        if start < end {
            (start..end).contains(&m)
        } else {
            m >= start || m < end
        }
    }

    fn start_ms(&self) -> i64 {
        i64::from(self.start_min) * MINUTE_MS
    }

    fn end_ms(&self) -> i64 {
        i64::from(self.end_min) * MINUTE_MS
    }
}

/// Milliseconds since the Monday 00:00 UTC before `at_ms`.
fn ms_of_week(at_ms: i64) -> i64 {
    // 1970-01-01 was a Thursday: day 0 is weekday 3 counting from Monday.
    let weekday = (at_ms.div_euclid(DAY_MS) + 3).rem_euclid(7);
    weekday * DAY_MS + at_ms.rem_euclid(DAY_MS)
}

/// `sat 06:30` → minutes since Monday 00:00.
fn parse_point(text: &str) -> Result<u32, String> {
    let mut parts = text.split_whitespace();
    let (Some(day), Some(time), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("{:?} is not \"DAY HH:MM\"", text.trim()));
    };
    let day_lower = day.to_ascii_lowercase();
    let day_index = DAYS
        .iter()
        .position(|d| *d == day_lower)
        .or_else(|| FULL_DAYS.iter().position(|d| *d == day_lower))
        .ok_or_else(|| format!("unknown day {day:?} (use mon, tue, wed, thu, fri, sat, sun)"))?;
    let bad_time = || format!("{time:?} is not a time HH:MM between 00:00 and 23:59");
    let (h, m) = time.split_once(':').ok_or_else(bad_time)?;
    let digits = |s: &str, max_len: usize| {
        !s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit())
    };
    if !digits(h, 2) || !digits(m, 2) || m.len() != 2 {
        return Err(bad_time());
    }
    let (h, m): (u32, u32) = (
        h.parse().map_err(|_| bad_time())?,
        m.parse().map_err(|_| bad_time())?,
    );
    if h > 23 || m > 59 {
        return Err(bad_time());
    }
    let day_index = u32::try_from(day_index).map_err(|_| bad_time())?;
    Ok(day_index * 24 * 60 + h * 60 + m)
}

fn fmt_point(f: &mut fmt::Formatter<'_>, minutes: u32) -> fmt::Result {
    let day = DAYS
        .get((minutes / (24 * 60)) as usize)
        .copied()
        .unwrap_or("?");
    let rem = minutes % (24 * 60);
    write!(f, "{day} {:02}:{:02}", rem / 60, rem % 60)
}

impl fmt::Display for WeeklyWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_point(f, self.start_min)?;
        f.write_str("-")?;
        fmt_point(f, self.end_min)
    }
}

impl fmt::Debug for WeeklyWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WeeklyWindow({self})")
    }
}

impl std::str::FromStr for WeeklyWindow {
    type Err = FreezeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for WeeklyWindow {
    type Error = FreezeError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<WeeklyWindow> for String {
    fn from(w: WeeklyWindow) -> Self {
        w.to_string()
    }
}

/// The first freeze of `env` (oldest first) whose window contains `now_ms`.
pub fn active_freeze(
    store: &Store,
    env: &EnvName,
    now_ms: i64,
) -> Result<Option<Freeze>, StoreError> {
    Ok(store
        .freezes(Some(env))?
        .into_iter()
        .find(|f| f.window.contains(now_ms)))
}
