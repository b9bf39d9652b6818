//! Domain entries of a spec: exact (`app.example.com`), wildcard (`*.example.com`) and tenant
//! patterns (`{tenant}.example.com`). Stricter than Dokku's character rule: DNS label lengths,
//! no hyphen at a label's edge, `*` only as the whole first label, a dot somewhere.

use std::fmt;

use crate::names::{Domain, TenantName};

/// The placeholder a tenant pattern contains exactly once.
pub const TENANT_PLACEHOLDER: &str = "{tenant}";

/// One entry of `domains = [...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainSpec {
    Exact(Domain),
    /// Includes the leading `*.`.
    Wildcard(Domain),
    Tenant(TenantPattern),
}

impl DomainSpec {
    /// The domains this entry stands for (one, or one per tenant).
    pub fn expand(&self, tenants: &[TenantName]) -> Vec<Domain> {
        match self {
            Self::Exact(d) | Self::Wildcard(d) => vec![d.clone()],
            Self::Tenant(p) => tenants.iter().filter_map(|t| p.expand(t).ok()).collect(),
        }
    }

    pub fn is_wildcard(&self) -> bool {
        matches!(self, Self::Wildcard(_))
    }
}

impl fmt::Display for DomainSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(d) | Self::Wildcard(d) => f.write_str(d.as_str()),
            Self::Tenant(p) => p.fmt(f),
        }
    }
}

/// `prefix{tenant}suffix`, checked so that every tenant name gives a valid domain (up to the
/// total length, which [`TenantPattern::expand`] checks per tenant).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPattern {
    prefix: String,
    suffix: String,
}

impl TenantPattern {
    /// The domain for one tenant.
    pub fn expand(&self, tenant: &TenantName) -> Result<Domain, String> {
        let domain = format!("{}{}{}", self.prefix, tenant, self.suffix);
        check_host(&domain, false)?;
        Domain::parse(domain).map_err(|e| e.to_string())
    }
}

impl fmt::Display for TenantPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{TENANT_PLACEHOLDER}{}", self.prefix, self.suffix)
    }
}

/// Parses one entry; the error is the reason only (the caller adds the value and position).
pub fn parse_entry(value: &str) -> Result<DomainSpec, String> {
    if value.is_empty() {
        return Err("a domain must not be empty".into());
    }
    if let Some(c) = value.chars().find(|c| c.is_ascii_uppercase()) {
        return Err(format!("domains are lowercase (found {c:?})"));
    }
    if value.contains('{') || value.contains('}') {
        let n = value.matches(TENANT_PLACEHOLDER).count();
        let rest = value.replacen(TENANT_PLACEHOLDER, "", 1);
        if n != 1 || rest.contains('{') || rest.contains('}') {
            return Err(format!(
                "the only placeholder is {TENANT_PLACEHOLDER}, used once"
            ));
        }
        if value.contains('*') {
            return Err(format!(
                "a {TENANT_PLACEHOLDER} pattern cannot also be a wildcard"
            ));
        }
        let (prefix, suffix) = value.split_once(TENANT_PLACEHOLDER).unwrap_or((value, ""));
        // A probe tenant checks the shape; real tenants are checked again when expanded.
        check_host(&format!("{prefix}t{suffix}"), false)?;
        return Ok(DomainSpec::Tenant(TenantPattern {
            prefix: prefix.to_owned(),
            suffix: suffix.to_owned(),
        }));
    }
    let wildcard = value.starts_with("*.");
    check_host(value, wildcard)?;
    let domain = Domain::parse(value).map_err(|e| e.to_string())?;
    Ok(if wildcard {
        DomainSpec::Wildcard(domain)
    } else {
        DomainSpec::Exact(domain)
    })
}

/// DNS shape: labels of 1–63 characters `[a-z0-9-]` without an edge hyphen, at least two
/// labels (three for a wildcard, `*` being the first), at most 253 characters.
fn check_host(value: &str, wildcard: bool) -> Result<(), String> {
    if value.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    let body = if wildcard { &value[2..] } else { value };
    if body.contains('*') {
        return Err(if value.starts_with("*.") {
            "only one leading wildcard label is allowed".into()
        } else {
            "'*' may only be the whole first label, as in *.example.com".into()
        });
    }
    let labels: Vec<&str> = body.split('.').collect();
    if labels.len() < 2 {
        return Err(if wildcard {
            "a wildcard must cover a subdomain of a domain, as in *.example.com".into()
        } else {
            "a domain needs at least two labels, as in app.example.com".into()
        });
    }
    for label in labels {
        if label.is_empty() {
            return Err("empty label (two dots in a row, or a dot at an end)".into());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(format!("character {c:?} is not allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} must not start or end with '-'"));
        }
    }
    Ok(())
}
