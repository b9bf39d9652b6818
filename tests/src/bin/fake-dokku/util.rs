//! Pure helpers: Dokku's name rules, the `ENV` file format, shell quoting, base64, fake hashes and timestamps.
//! Nothing here touches the disk or prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// An environment: key → value, kept sorted like Dokku prints it.
pub type Env = BTreeMap<String, String>;

/// The message for a name that fails `is_valid_app_name` (dokku.md §2).
pub const APP_NAME_RULE: &str = "App name must begin with lowercase alphanumeric character, and may only contain lowercase alphanumerics, dots, and hyphens";

/// `^[a-z0-9][a-z0-9.-]*$`
pub fn is_valid_app_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
}

/// `^[a-zA-Z_][a-zA-Z0-9_]*$` (dokku.md §9).
pub fn is_valid_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The domains host rule (dokku.md §6): the lowercased host is `_` or matches `^[a-z0-9.*-]*[a-z0-9*-]$`.
pub fn is_valid_host(host: &str) -> bool {
    let host = host.to_lowercase();
    if host == "_" {
        return true;
    }
    let body_ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '*' | '-');
    match host.chars().last() {
        Some(last) => body_ok(last) && host.chars().all(|c| body_ok(c) || c == '.'),
        None => false,
    }
}

/// An image list file (`.standin/fail-images`): one image reference a line; blank lines and `#` comments (whole
/// lines or the rest of a line: image references never contain `#`) are ignored, surrounding spaces trimmed.
pub fn parse_image_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|line| !line.is_empty())
        .map(String::from)
        .collect()
}

/// `'v'`, with embedded single quotes written as `'\''`.
pub fn single_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// An `ENV` file as Dokku writes it: one `export KEY='value'` line per key, sorted.
pub fn render_env_file(env: &Env) -> String {
    env.iter().fold(String::new(), |mut text, (key, value)| {
        let _ = writeln!(text, "export {key}={}", single_quote(value));
        text
    })
}

/// Reads an `ENV` file: `[export ]KEY=value` entries whose values are shell words (single or double quoted, or
/// bare), so quoted values may span lines. Anything else is skipped.
pub fn parse_env_file(text: &str) -> Env {
    let mut env = Env::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return env;
        }
        let mut word = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            word.push(c);
        }
        if chars.next_if_eq(&'=').is_some() {
            let value = read_shell_word(&mut chars);
            env.insert(word, value);
        }
        // Otherwise `export`, or junk: skip the word.
    }
}

fn read_shell_word(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> String {
    let mut value = String::new();
    while let Some(&c) = chars.peek() {
        match c {
            '\'' => {
                chars.next();
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    value.push(c);
                }
            }
            '"' => {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => value.extend(chars.next()),
                        c => value.push(c),
                    }
                }
            }
            '\\' => {
                chars.next();
                value.extend(chars.next());
            }
            c if c.is_whitespace() => break,
            c => {
                value.push(c);
                chars.next();
            }
        }
    }
    value
}

/// Decodes standard base64 (padding optional), as `config:set --encoded` expects. `None` if it is not base64 or
/// not UTF-8.
pub fn base64_decode(text: &str) -> Option<String> {
    let text = text.trim_end_matches('=');
    if text.len() % 4 == 1 {
        return None;
    }
    let mut bytes = Vec::with_capacity(text.len() * 3 / 4);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let sextet = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push(((buffer >> bits) & 0xff) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    String::from_utf8(bytes).ok()
}

/// `len` lowercase hex digits derived from `seed` (FNV-1a plus a mixer, one round per 16 digits). Stable across
/// runs and Rust versions, so a fake git sha depends only on the image.
pub fn fake_hex(seed: &str, len: usize) -> String {
    let mut hex = String::with_capacity(len + 16);
    let mut round: u64 = 0;
    while hex.len() < len {
        let mut hash = 0xcbf2_9ce4_8422_2325_u64 ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for byte in seed.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        let _ = write!(hex, "{hash:016x}");
        round += 1;
    }
    hex.truncate(len);
    hex
}

/// Seconds and nanoseconds since the Unix epoch.
pub fn now() -> (u64, u32) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (since.as_secs(), since.subsec_nanos())
}

/// `2026-08-01T12:00:00.000000000Z`, the timestamp docker puts in front of log lines.
pub fn rfc3339(secs: u64, nanos: u32) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Splits an image reference into (repository, tag or digest) the way docker names it in pull output.
pub fn split_image_ref(image: &str) -> (&str, &str) {
    if let Some((repo, digest)) = image.split_once('@') {
        return (repo, digest);
    }
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

/// (year, month, day, hour, minute, second) of a Unix time in UTC.
fn civil(secs: u64) -> (i64, i64, i64, u64, u64, u64) {
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    (year, month, day, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `Nov  8 13:12:33 2026 GMT`: how `openssl x509 -text` prints `Not After :` (the day padded with a space), which is
/// what `certs:report --ssl-expires-at` prints.
pub fn openssl_date(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (year, month, day, hour, minute, second) = civil(secs);
    let name = usize::try_from(month - 1)
        .ok()
        .and_then(|i| MONTHS.get(i))
        .copied()
        .unwrap_or("Jan");
    format!("{name} {day:>2} {hour:02}:{minute:02}:{second:02} {year} GMT")
}

/// `2026-11-28 13:12:33` (`letsencrypt:list`'s expiry column, UTC).
pub fn ymd_hms(secs: u64) -> String {
    let (year, month, day, hour, minute, second) = civil(secs);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}:{second:02}")
}

/// `89d, 23h, 59m, 59s` (`letsencrypt:list`'s time columns); negative spans print as `0d, 0h, 0m, 0s`.
pub fn span(secs: i64) -> String {
    let secs = u64::try_from(secs).unwrap_or(0);
    format!(
        "{}d, {}h, {}m, {}s",
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A JSON string the way Go's `encoding/json` writes it (Dokku's `config:export --format json` is `json.Marshal`):
/// `<`, `>`, `&`, U+2028 and U+2029 as `\u…` escapes, `\b \f \n \r \t` short, other control characters `\u00XX`.
pub fn go_json_string(value: &str) -> String {
    let mut text = String::with_capacity(value.len() + 2);
    text.push('"');
    for c in value.chars() {
        match c {
            '"' => text.push_str("\\\""),
            '\\' => text.push_str("\\\\"),
            '\n' => text.push_str("\\n"),
            '\r' => text.push_str("\\r"),
            '\t' => text.push_str("\\t"),
            '\u{8}' => text.push_str("\\b"),
            '\u{c}' => text.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(text, "\\u{:04x}", u32::from(c));
            }
            c if u32::from(c) < 0x20 => {
                let _ = write!(text, "\\u{:04x}", u32::from(c));
            }
            c => text.push(c),
        }
    }
    text.push('"');
    text
}

/// One `KEY=value` line as `godotenv.Marshal` writes it (Dokku's `config:export --format envfile`): a value Go's
/// `strconv.Atoi` accepts is printed as that integer (`007` → `7`, `+5` → `5`), anything else double-quoted with
/// `\ " ! $ `` ` escaped by a backslash and newline / carriage return as `\n` / `\r`.
pub fn godotenv_line(key: &str, value: &str) -> String {
    if let Some(number) = go_atoi(value) {
        return format!("{key}={number}");
    }
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\\' | '"' | '!' | '$' | '`' => {
                escaped.push('\\');
                escaped.push(c);
            }
            c => escaped.push(c),
        }
    }
    format!("{key}=\"{escaped}\"")
}

/// Go's `strconv.Atoi` on a 64-bit platform: an optional sign and ASCII digits only, within `i64`.
fn go_atoi(value: &str) -> Option<i64> {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.strip_prefix('+').unwrap_or(value).parse().ok()
}

/// `major.minor.patch` → comparable numbers; missing or non-numeric parts count as 0 (`0.25` = `0.25.0`).
pub fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text
        .trim()
        .trim_start_matches('v')
        .split('.')
        .map(|part| part.trim().parse().unwrap_or(0));
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}
