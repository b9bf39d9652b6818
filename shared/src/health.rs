//! The HTTP health gate a deploy command carries: parsed once, by the
//! coordinator when the deployment is created and by the agent when it
//! verifies the command, so neither side acts on a malformed check.

use std::fmt;
use std::time::Duration;

use flotilla_proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::NameError;

/// Placeholders a URL template may use.
pub const PLACEHOLDERS: [&str; 4] = ["{app}", "{env}", "{host}", "{domain}"];

/// Accepted HTTP statuses: inclusive ranges, e.g. `2xx` or `200,301-302`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StatusSet {
    text: String,
    ranges: Vec<(u16, u16)>,
}

impl StatusSet {
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let bad = |rule| NameError::Invalid {
            kind: "expected status",
            value: text.to_owned(),
            rule,
        };
        let text = text.trim();
        let text = if text.is_empty() { "2xx" } else { text };
        let mut ranges = Vec::new();
        for part in text.split(',').map(str::trim) {
            let range = if let Some(class) = part.strip_suffix("xx") {
                let class: u16 = class
                    .parse()
                    .map_err(|_| bad("use codes (200), ranges (200-299) or classes (2xx)"))?;
                (class * 100, class * 100 + 99)
            } else if let Some((lo, hi)) = part.split_once('-') {
                let lo: u16 = lo.trim().parse().map_err(|_| bad("a range is LOW-HIGH"))?;
                let hi: u16 = hi.trim().parse().map_err(|_| bad("a range is LOW-HIGH"))?;
                (lo, hi)
            } else {
                let code: u16 = part
                    .parse()
                    .map_err(|_| bad("use codes (200), ranges (200-299) or classes (2xx)"))?;
                (code, code)
            };
            if range.0 < 100 || range.1 > 599 || range.0 > range.1 {
                return Err(bad("statuses are 100 to 599, ranges low to high"));
            }
            ranges.push(range);
        }
        Ok(Self {
            text: text.to_owned(),
            ranges,
        })
    }

    pub fn contains(&self, status: u16) -> bool {
        self.ranges
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&status))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<String> for StatusSet {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<StatusSet> for String {
    fn from(s: StatusSet) -> Self {
        s.text
    }
}

/// A validated health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// `http(s)://…` with only the known placeholders.
    pub url_template: String,
    /// Starts with `/`.
    pub path: String,
    pub expect: StatusSet,
    /// Give up (the host failed) when not healthy for `min_healthy` by then.
    #[serde(with = "millis")]
    pub deadline: Duration,
    #[serde(with = "millis")]
    pub interval: Duration,
    /// Must stay healthy this long, without one failed probe.
    #[serde(with = "millis")]
    pub min_healthy: Duration,
    /// Per request.
    #[serde(with = "millis")]
    pub timeout: Duration,
}

pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest deadline accepted (a command must end in reasonable time).
pub const MAX_DEADLINE: Duration = Duration::from_secs(3600);

impl HealthCheck {
    /// Checks every field; zero durations take the defaults.
    pub fn new(
        url_template: &str,
        path: &str,
        expect: &str,
        deadline: Duration,
        interval: Duration,
        min_healthy: Duration,
        timeout: Duration,
    ) -> Result<Self, NameError> {
        let url_template = url_template.trim().trim_end_matches('/').to_owned();
        check_template(&url_template)?;
        let path = if path.is_empty() { "/" } else { path };
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(NameError::Invalid {
                kind: "health path",
                value: path.to_owned(),
                rule: "starts with / and has no spaces",
            });
        }
        let or = |d: Duration, default| if d.is_zero() { default } else { d };
        let check = Self {
            url_template,
            path: path.to_owned(),
            expect: StatusSet::parse(expect)?,
            deadline: or(deadline, DEFAULT_DEADLINE),
            interval: or(interval, DEFAULT_INTERVAL),
            min_healthy,
            timeout: or(timeout, DEFAULT_TIMEOUT),
        };
        if check.deadline > MAX_DEADLINE || check.min_healthy >= check.deadline {
            return Err(NameError::Invalid {
                kind: "healthy deadline",
                value: humanish(check.deadline),
                rule: "at most 1h, and longer than the minimum healthy time",
            });
        }
        Ok(check)
    }

    /// The URL to probe, with placeholders replaced.
    pub fn url(&self, app: &str, env: &str, host: &str, domain: Option<&str>) -> String {
        let mut url = self
            .url_template
            .replace("{app}", app)
            .replace("{env}", env)
            .replace("{host}", host);
        if let Some(domain) = domain {
            url = url.replace("{domain}", domain);
        }
        url.push_str(&self.path);
        url
    }

    pub fn needs_domain(&self) -> bool {
        self.url_template.contains("{domain}")
    }

    pub fn to_proto(&self) -> pb::HealthCheck {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        pb::HealthCheck {
            url_template: self.url_template.clone(),
            path: self.path.clone(),
            expect: self.expect.to_string(),
            deadline_ms: ms(self.deadline),
            interval_ms: ms(self.interval),
            min_healthy_ms: ms(self.min_healthy),
            timeout_ms: ms(self.timeout),
        }
    }

    pub fn from_proto(p: &pb::HealthCheck) -> Result<Self, NameError> {
        Self::new(
            &p.url_template,
            &p.path,
            &p.expect,
            Duration::from_millis(p.deadline_ms),
            Duration::from_millis(p.interval_ms),
            Duration::from_millis(p.min_healthy_ms),
            Duration::from_millis(p.timeout_ms),
        )
    }
}

fn humanish(d: Duration) -> String {
    format!("{}s", d.as_secs())
}

/// A URL (or template) fit for logs, audit entries and API responses: user
/// information and the query string, where credentials hide, become `***`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("***{}", &authority[at..]),
        None => authority.to_owned(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let fragment = tail[q..].find('#').map_or("", |h| &tail[q + h..]);
            format!("{}?***{fragment}", &tail[..q])
        }
        None => tail.to_owned(),
    };
    format!("{scheme}{authority}{tail}")
}

/// A URL template: `http://` or `https://`, a non-empty authority, and braces
/// only in the known placeholders.
pub fn check_template(template: &str) -> Result<(), NameError> {
    let bad = |rule| NameError::Invalid {
        kind: "health URL template",
        value: template.to_owned(),
        rule,
    };
    let rest = template
        .strip_prefix("http://")
        .or_else(|| template.strip_prefix("https://"))
        .ok_or_else(|| bad("starts with http:// or https://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(bad("names a host after the scheme"));
    }
    let mut stripped = template.to_owned();
    for p in PLACEHOLDERS {
        stripped = stripped.replace(p, "");
    }
    if stripped.contains('{') || stripped.contains('}') {
        return Err(bad("placeholders are {app}, {env}, {host}, {domain}"));
    }
    if template
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad("has no spaces"));
    }
    Ok(())
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_sets() {
        let s = StatusSet::parse("2xx").unwrap();
        assert!(s.contains(200) && s.contains(299) && !s.contains(300) && !s.contains(199));
        let s = StatusSet::parse("200, 301-302").unwrap();
        assert!(s.contains(200) && s.contains(302) && !s.contains(201) && !s.contains(303));
        assert_eq!(StatusSet::parse("").unwrap().as_str(), "2xx");
        for bad in ["abc", "700", "302-301", "2yy", "20-"] {
            assert!(StatusSet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("https://user:pw@{domain}/health?token=s3cret#x"),
            "https://***@{domain}/health?***#x"
        );
        assert_eq!(
            redact_url("http://127.0.0.1:5000/{host}"),
            "http://127.0.0.1:5000/{host}"
        );
        assert_eq!(redact_url("http://a@b"), "http://***@b");
    }

    #[test]
    fn templates() {
        let check = HealthCheck::new(
            "http://127.0.0.1:5000/{host}/",
            "/health",
            "",
            Duration::ZERO,
            Duration::ZERO,
            Duration::from_secs(2),
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(
            check.url("shop", "prod", "web-1", None),
            "http://127.0.0.1:5000/web-1/health"
        );
        assert_eq!(check.deadline, DEFAULT_DEADLINE);
        assert_eq!(HealthCheck::from_proto(&check.to_proto()).unwrap(), check);
        let https = HealthCheck::new(
            "https://{domain}",
            "/",
            "200",
            Duration::from_secs(10),
            Duration::ZERO,
            Duration::ZERO,
            Duration::ZERO,
        )
        .unwrap();
        assert!(https.needs_domain());
        assert_eq!(
            https.url("shop", "prod", "h", Some("shop.example.com")),
            "https://shop.example.com/"
        );
        for bad in [
            "ftp://x",
            "http://",
            "http://{port}",
            "127.0.0.1:80",
            "http://a b",
        ] {
            assert!(check_template(bad).is_err(), "{bad}");
        }
        let too_long_min = HealthCheck::new(
            "http://x",
            "/",
            "",
            Duration::from_secs(5),
            Duration::ZERO,
            Duration::from_secs(5),
            Duration::ZERO,
        );
        assert!(too_long_min.is_err());
        assert!(
            HealthCheck::new(
                "http://x",
                "health",
                "",
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO,
                Duration::ZERO
            )
            .is_err()
        );
    }
}
