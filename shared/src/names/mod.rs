//! Validated names ("parse, don't validate"): every value that reaches a `dokku`
//! argument vector or a certificate is one of these types, built by a checked
//! constructor. The rules follow Dokku's own (see `../shared/dokku.md`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

#[cfg(test)]
mod tests;

/// Why a name was rejected. The message quotes the offending input (names are
/// never secret) so that an operator can see what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{kind} is empty")]
    Empty { kind: &'static str },
    #[error("{kind} {value:?} is longer than {max} characters")]
    TooLong {
        kind: &'static str,
        value: String,
        max: usize,
    },
    #[error("{kind} {value:?} is invalid: {rule}")]
    Invalid {
        kind: &'static str,
        value: String,
        rule: &'static str,
    },
}

fn check_len(kind: &'static str, value: &str, max: usize) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if value.len() > max {
        return Err(NameError::TooLong {
            kind,
            value: value.chars().take(max).collect::<String>() + "…",
            max,
        });
    }
    Ok(())
}

fn invalid(kind: &'static str, value: &str, rule: &'static str) -> NameError {
    NameError::Invalid {
        kind,
        value: value.to_owned(),
        rule,
    }
}

/// Defines a string newtype with `as_str`, `Display`, `FromStr`, serde as a
/// string, and a `parse` constructor that runs the given check.
macro_rules! name_type {
    ($(#[$meta:meta])* $name:ident, $check:path) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Checks `value` and wraps it.
            pub fn parse(value: impl Into<String>) -> Result<Self, NameError> {
                let value = value.into();
                $check(&value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// A Dokku app name: `^[a-z0-9][a-z0-9.-]*$` (Dokku's rule), at most 100 characters.
    AppName,
    check_app_name
);
name_type!(
    /// A host id: one DNS label (`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`, at most 63
    /// characters). It is the agent certificate's SAN, so it must be a valid DNS name.
    HostId,
    check_dns_label_host
);
name_type!(
    /// An environment name (`staging`, `production`, `eu-1`): one DNS label.
    EnvName,
    check_dns_label_env
);
name_type!(
    /// A container image reference, `[registry[:port]/]path[:tag][@algo:hex]`, as
    /// Docker's reference grammar defines it. Never starts with `-`, so it cannot
    /// be mistaken for a flag.
    ImageRef,
    check_image_ref
);
name_type!(
    /// A domain as Dokku accepts it: lowercase, `^[a-z0-9.*-]*[a-z0-9*-]$`, not
    /// starting with `-` or `.`, at most 253 characters.
    Domain,
    check_domain
);

name_type!(
    /// A tenant of a multi-tenant app (`acme` in `{tenant}.example.com`): one DNS label.
    TenantName,
    check_dns_label_tenant
);
name_type!(
    /// A Dokku postgres/redis service name: `^[A-Za-z0-9_-]+$` (the plugins' rule), at most 64
    /// characters.
    ServiceName,
    check_service_name
);
name_type!(
    /// An app config (environment variable) name: `^[A-Za-z_][A-Za-z0-9_]*$` (Dokku's
    /// `config:set` rule), at most 255 characters. Reserved keys are still valid names; see
    /// [`ConfigKey::reserved_reason`].
    ConfigKey,
    check_config_key
);
name_type!(
    /// A service link alias (`-a ALIAS` of `postgres:link`): `^[A-Z][A-Z0-9_]*$`, at most 64
    /// characters; the link sets `<ALIAS>_URL`.
    LinkAlias,
    check_link_alias
);
name_type!(
    /// An e-mail address as Let's Encrypt needs it: `local@domain`, no whitespace or control
    /// characters, a domain with at least one dot, at most 254 characters.
    EmailAddress,
    check_email
);

impl ConfigKey {
    /// Why Flotilla refuses to manage this key, if it does: Dokku owns `DOKKU_*`, `GIT_REV`
    /// (set by git deploys) and `NO_VHOST` (set by the domains plugin).
    pub fn reserved_reason(&self) -> Option<&'static str> {
        reserved_config_key(&self.0)
    }
}

/// See [`ConfigKey::reserved_reason`]; takes a raw key so that keys read from a host can be
/// classified without parsing them.
pub fn reserved_config_key(key: &str) -> Option<&'static str> {
    if key.starts_with("DOKKU_") {
        Some("Dokku manages DOKKU_* variables")
    } else if key == "GIT_REV" {
        Some("Dokku sets GIT_REV on git deploys")
    } else if key == "NO_VHOST" {
        Some("the domains plugin manages NO_VHOST")
    } else {
        None
    }
}

fn check_dns_label_tenant(value: &str) -> Result<(), NameError> {
    check_dns_label("tenant", value)
}

fn check_service_name(value: &str) -> Result<(), NameError> {
    const KIND: &str = "service name";
    check_len(KIND, value, 64)?;
    if value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        && !value.starts_with('-')
    {
        Ok(())
    } else {
        Err(invalid(
            KIND,
            value,
            "must be letters, digits, '_' and '-' (not starting with '-')",
        ))
    }
}

fn check_config_key(value: &str) -> Result<(), NameError> {
    const KIND: &str = "config key";
    check_len(KIND, value, 255)?;
    let bytes = value.as_bytes();
    let first_ok = bytes[0].is_ascii_alphabetic() || bytes[0] == b'_';
    if first_ok
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_')
    {
        Ok(())
    } else {
        Err(invalid(
            KIND,
            value,
            "must match [A-Za-z_][A-Za-z0-9_]* (an environment variable name)",
        ))
    }
}

fn check_link_alias(value: &str) -> Result<(), NameError> {
    const KIND: &str = "link alias";
    check_len(KIND, value, 64)?;
    let bytes = value.as_bytes();
    if bytes[0].is_ascii_uppercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
    {
        Ok(())
    } else {
        Err(invalid(
            KIND,
            value,
            "must be uppercase letters, digits and '_', starting with a letter",
        ))
    }
}

fn check_email(value: &str) -> Result<(), NameError> {
    const KIND: &str = "e-mail address";
    check_len(KIND, value, 254)?;
    let bad = || {
        Err(invalid(
            KIND,
            value,
            "must look like name@example.com (no spaces, a domain with a dot)",
        ))
    };
    let Some((local, domain)) = value.rsplit_once('@') else {
        return bad();
    };
    let local_ok = !local.is_empty()
        && !local.starts_with('-')
        && local
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '@' && c != '"');
    let domain_ok = domain.contains('.')
        && domain.split('.').all(|label| {
            let lb = label.as_bytes();
            !lb.is_empty()
                && lb[0].is_ascii_alphanumeric()
                && lb[lb.len() - 1].is_ascii_alphanumeric()
                && lb.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        });
    if local_ok && domain_ok { Ok(()) } else { bad() }
}

const APP_MAX: usize = 100;

fn check_app_name(value: &str) -> Result<(), NameError> {
    const KIND: &str = "app name";
    check_len(KIND, value, APP_MAX)?;
    let bytes = value.as_bytes();
    let first_ok = bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit();
    let rest_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-');
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(invalid(
            KIND,
            value,
            "must begin with a lowercase letter or digit and contain only lowercase letters, digits, dots and hyphens",
        ))
    }
}

fn check_dns_label(kind: &'static str, value: &str) -> Result<(), NameError> {
    check_len(kind, value, 63)?;
    let bytes = value.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = alnum(&bytes[0])
        && alnum(&bytes[bytes.len() - 1])
        && bytes.iter().all(|b| alnum(b) || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            kind,
            value,
            "must be lowercase letters, digits and inner hyphens (one DNS label)",
        ))
    }
}

fn check_dns_label_host(value: &str) -> Result<(), NameError> {
    check_dns_label("host id", value)
}

fn check_dns_label_env(value: &str) -> Result<(), NameError> {
    check_dns_label("environment", value)
}

fn check_domain(value: &str) -> Result<(), NameError> {
    const KIND: &str = "domain";
    check_len(KIND, value, 253)?;
    let bytes = value.as_bytes();
    let body_ok = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'*' | b'-'));
    let first = bytes[0];
    let last = bytes[bytes.len() - 1];
    if body_ok && first != b'-' && first != b'.' && last != b'.' && !value.contains("..") {
        Ok(())
    } else {
        Err(invalid(
            KIND,
            value,
            "must be lowercase letters, digits, dots, hyphens or '*', and not start with '-' or '.'",
        ))
    }
}

const IMAGE_MAX: usize = 512;

/// Docker's reference grammar (distribution/reference), simplified only in that
/// registry hosts may not be IPv6 literals.
fn check_image_ref(value: &str) -> Result<(), NameError> {
    const KIND: &str = "image reference";
    check_len(KIND, value, IMAGE_MAX)?;
    let bad = |rule| Err(invalid(KIND, value, rule));

    let (name_tag, digest) = match value.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (value, None),
    };
    if let Some(digest) = digest {
        let Some((algo, hex)) = digest.split_once(':') else {
            return bad("digest must look like sha256:<hex>");
        };
        let algo_ok = !algo.is_empty()
            && algo.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'+' | b'.' | b'_' | b'-')
            });
        let hex_ok = hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if !algo_ok || !hex_ok {
            return bad("digest must look like sha256:<hex>");
        }
    }
    // The tag is after the last ':' that follows the last '/'.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        let tb = tag.as_bytes();
        let ok = !tb.is_empty()
            && tb.len() <= 128
            && (tb[0].is_ascii_alphanumeric() || tb[0] == b'_')
            && tb
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return bad("tag must be letters, digits, '_', '.' or '-' (at most 128)");
        }
    }
    let mut components: Vec<&str> = name.split('/').collect();
    if components.is_empty() || components.iter().any(|c| c.is_empty()) {
        return bad("name components must not be empty");
    }
    // A first component with '.', ':' or "localhost" is a registry host[:port].
    if components.len() > 1 {
        let first = components[0];
        if first.contains('.') || first.contains(':') || first == "localhost" {
            let (host, port) = match first.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (first, None),
            };
            let host_ok = !host.is_empty()
                && host.split('.').all(|label| {
                    let lb = label.as_bytes();
                    !lb.is_empty()
                        && lb[0].is_ascii_alphanumeric()
                        && lb[lb.len() - 1].is_ascii_alphanumeric()
                        && lb.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                });
            let port_ok = port.is_none_or(|p| {
                !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
            });
            if !host_ok || !port_ok {
                return bad("registry must be a host name with an optional :port");
            }
            components.remove(0);
        }
    }
    for component in components {
        if !path_component_ok(component) {
            return bad(
                "path components must be lowercase letters and digits, separated by '.', '_', '__' or '-'",
            );
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn path_component_ok(component: &str) -> bool {
    let b = component.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "."
            || sep == "_"
            || sep == "__"
            || (!sep.is_empty() && sep.bytes().all(|c| c == b'-'));
        if !ok {
            return false;
        }
    }
    true
}

/// Host labels (`region=eu`), keys and values restricted so they are safe in
/// logs, selectors and certificates.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// Parses `k=v` pairs; keys and values are `[A-Za-z0-9._-]`, keys 1–63, values 0–63 characters.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Self, NameError> {
        let mut map = BTreeMap::new();
        for pair in pairs {
            let Some((k, v)) = pair.split_once('=') else {
                return Err(invalid("label", pair, "must be key=value"));
            };
            map.insert(k.to_owned(), v.to_owned());
        }
        Self::try_from(map)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = NameError;
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, Self::Error> {
        let ok = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        };
        for (k, v) in &map {
            check_len("label key", k, 63)?;
            if !ok(k) {
                return Err(invalid(
                    "label key",
                    k,
                    "must be letters, digits, '.', '_' or '-'",
                ));
            }
            if v.len() > 63 || !ok(v) {
                return Err(invalid(
                    "label value",
                    v,
                    "must be at most 63 letters, digits, '.', '_' or '-'",
                ));
            }
        }
        Ok(Self(map))
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(labels: Labels) -> Self {
        labels.0
    }
}
