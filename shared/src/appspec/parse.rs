//! Reading `web.toml`: a walk over toml's spanned document tree, so that every error names the
//! key path and the line and column of the offending key or value. Every error found is kept.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::domain::{DomainSpec, parse_entry};
use super::{AppSpec, EnvSpec, LetsEncrypt, ServiceKind, ServiceLink};
use crate::names::{AppName, ConfigKey, EmailAddress, EnvName, LinkAlias, ServiceName, TenantName};

/// One problem in a spec, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The key path (`env.production.domains[2]`); empty for the document itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a spec, in file order; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            e.fmt(f)?;
        }
        Ok(())
    }
}

type Value<'i> = Spanned<DeValue<'i>>;

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<SpecError>,
}

impl Ctx<'_> {
    fn err(&mut self, span: Range<usize>, path: &str, message: impl Into<String>) {
        let start = span.start.min(self.text.len());
        let before = self.text.get(..start).unwrap_or("");
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        self.errors.push(SpecError {
            file: self.file.to_owned(),
            line,
            column,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    /// Reports keys of `table` not in `known`.
    fn unknown_keys(&mut self, table: &DeTable<'_>, path: &str, known: &[&str]) {
        for (key, _) in table.iter() {
            if !known.contains(&key.get_ref().as_ref()) {
                let p = join(path, key.get_ref());
                self.err(
                    key.span(),
                    &p,
                    format!("unknown key (expected one of: {})", known.join(", ")),
                );
            }
        }
    }

    fn string<'v>(&mut self, value: &'v Value<'_>, path: &str) -> Option<&'v str> {
        match value.get_ref().as_str() {
            Some(s) => Some(s),
            None => {
                self.err(
                    value.span(),
                    path,
                    format!(
                        "expected a string, found {} (quote numbers and booleans)",
                        value.get_ref().type_str()
                    ),
                );
                None
            }
        }
    }

    fn bool(&mut self, value: &Value<'_>, path: &str) -> Option<bool> {
        let b = value.get_ref().as_bool();
        if b.is_none() {
            self.err(
                value.span(),
                path,
                format!(
                    "expected true or false, found {}",
                    value.get_ref().type_str()
                ),
            );
        }
        b
    }

    fn table<'v, 'i>(&mut self, value: &'v Value<'i>, path: &str) -> Option<&'v DeTable<'i>> {
        let t = value.get_ref().as_table();
        if t.is_none() {
            self.err(
                value.span(),
                path,
                format!("expected a table, found {}", value.get_ref().type_str()),
            );
        }
        t
    }

    /// The strings of an array, each with its span and path; non-strings are reported.
    fn strings<'v>(
        &mut self,
        value: &'v Value<'_>,
        path: &str,
    ) -> Vec<(&'v str, Range<usize>, String)> {
        let Some(array) = value.get_ref().as_array() else {
            self.err(
                value.span(),
                path,
                format!(
                    "expected an array of strings, found {}",
                    value.get_ref().type_str()
                ),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in array.iter().enumerate() {
            let p = format!("{path}[{i}]");
            if let Some(s) = self.string(item, &p) {
                out.push((s, item.span(), p));
            }
        }
        out
    }

    /// An array of validated names, refusing duplicates.
    fn names<T: Ord + Clone>(
        &mut self,
        value: &Value<'_>,
        path: &str,
        parse: impl Fn(String) -> Result<T, crate::names::NameError>,
    ) -> Vec<(T, Range<usize>, String)> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (s, span, p) in self.strings(value, path) {
            match parse(s.to_owned()) {
                Ok(name) => {
                    if seen.insert(name.clone()) {
                        out.push((name, span, p));
                    } else {
                        self.err(span, &p, format!("{s:?} is listed twice"));
                    }
                }
                Err(e) => self.err(span, &p, e.to_string()),
            }
        }
        out
    }
}

/// `parent.key`, quoting keys that are not bare TOML keys.
fn join(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

fn get<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<&'t Value<'i>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

pub(super) fn parse(file: &str, text: &str) -> Result<AppSpec, SpecErrors> {
    let mut ctx = Ctx {
        file,
        text,
        errors: Vec::new(),
    };
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().to_owned();
            ctx.err(span, "", format!("invalid TOML: {message}"));
            return Err(SpecErrors(ctx.errors));
        }
    };
    let spec = document(&mut ctx, &root);
    match spec {
        Some(spec) if ctx.errors.is_empty() => Ok(spec),
        _ => {
            let mut errors = ctx.errors;
            errors.sort_by_key(|e| (e.line, e.column));
            Err(SpecErrors(errors))
        }
    }
}

fn document(ctx: &mut Ctx<'_>, root: &Spanned<DeTable<'_>>) -> Option<AppSpec> {
    let table = root.get_ref();
    ctx.unknown_keys(table, "", &["app", "env"]);
    let app = match get(table, "app") {
        Some(v) => ctx.string(v, "app").and_then(|s| match AppName::parse(s) {
            Ok(app) => Some(app),
            Err(e) => {
                ctx.err(v.span(), "app", e.to_string());
                None
            }
        }),
        None => {
            ctx.err(0..0, "", "missing key `app` (the Dokku app name)");
            None
        }
    };
    let mut envs = BTreeMap::new();
    match get(table, "env") {
        Some(v) => {
            if let Some(env_table) = ctx.table(v, "env") {
                if env_table.is_empty() {
                    ctx.err(v.span(), "env", "declare at least one environment");
                }
                for (key, value) in env_table.iter() {
                    let path = join("env", key.get_ref());
                    let name = match EnvName::parse(key.get_ref().as_ref()) {
                        Ok(name) => Some(name),
                        Err(e) => {
                            ctx.err(key.span(), &path, e.to_string());
                            None
                        }
                    };
                    let env = environment(ctx, value, &path);
                    if let (Some(name), Some(env)) = (name, env) {
                        envs.insert(name, env);
                    }
                }
            }
        }
        None => ctx.err(
            0..0,
            "",
            "missing `[env.<name>]` tables (e.g. [env.staging])",
        ),
    }
    Some(AppSpec { app: app?, envs })
}

const ENV_KEYS: &[&str] = &[
    "domains",
    "tenants",
    "letsencrypt",
    "services",
    "config",
    "secret_keys",
    "required_keys",
];

fn environment(ctx: &mut Ctx<'_>, value: &Value<'_>, path: &str) -> Option<EnvSpec> {
    let table = ctx.table(value, path)?;
    ctx.unknown_keys(table, path, ENV_KEYS);
    let mut env = EnvSpec::default();

    let tenants = match get(table, "tenants") {
        Some(v) => ctx.names(v, &join(path, "tenants"), TenantName::parse),
        None => Vec::new(),
    };
    env.tenants = tenants.iter().map(|(t, _, _)| t.clone()).collect();

    // Domains, expanded for the duplicate check: domain → path of the entry that gave it.
    let mut wildcard_at: Option<(String, String)> = None;
    let mut any_pattern = false;
    if let Some(v) = get(table, "domains") {
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (s, span, p) in ctx.strings(v, &join(path, "domains")) {
            let entry = match parse_entry(s) {
                Ok(entry) => entry,
                Err(reason) => {
                    ctx.err(span, &p, format!("{s:?} is not a valid domain: {reason}"));
                    continue;
                }
            };
            let expanded: Vec<(String, String)> = match &entry {
                DomainSpec::Tenant(pattern) => {
                    any_pattern = true;
                    if env.tenants.is_empty() {
                        ctx.err(
                            span.clone(),
                            &p,
                            format!(
                                "{s:?} uses {{tenant}} but {} lists no tenants",
                                join(path, "tenants")
                            ),
                        );
                    }
                    let mut out = Vec::new();
                    for tenant in &env.tenants {
                        match pattern.expand(tenant) {
                            Ok(d) => {
                                out.push((d.into_string(), format!(" for tenant \"{tenant}\"")))
                            }
                            Err(reason) => ctx.err(
                                span.clone(),
                                &p,
                                format!(
                                    "{s:?} is not a valid domain for tenant {tenant:?}: {reason}"
                                ),
                            ),
                        }
                    }
                    out
                }
                DomainSpec::Exact(d) | DomainSpec::Wildcard(d) => {
                    if entry.is_wildcard() && wildcard_at.is_none() {
                        wildcard_at = Some((d.as_str().to_owned(), p.clone()));
                    }
                    vec![(d.as_str().to_owned(), String::new())]
                }
            };
            let mut duplicate = false;
            for (domain, how) in expanded {
                if let Some(first) = seen.get(&domain) {
                    ctx.err(
                        span.clone(),
                        &p,
                        format!("{domain:?}{how} is already listed at {first}"),
                    );
                    duplicate = true;
                } else {
                    seen.insert(domain, p.clone());
                }
            }
            if !duplicate {
                env.domains.push(entry);
            }
        }
    }
    if !tenants.is_empty()
        && !any_pattern
        && let Some(v) = get(table, "tenants")
    {
        ctx.err(
            v.span(),
            &join(path, "tenants"),
            "tenants are listed but no domain uses {tenant}",
        );
    }

    if let Some(v) = get(table, "letsencrypt") {
        let le_path = join(path, "letsencrypt");
        env.letsencrypt = letsencrypt(ctx, v, &le_path);
        if env.letsencrypt.is_some() {
            if let Some((wildcard, at)) = &wildcard_at {
                ctx.err(
                    v.span(),
                    &le_path,
                    format!(
                        "Let's Encrypt (HTTP-01, the plugin's default) cannot issue a certificate for the wildcard {wildcard:?} at {at}; \
                         list the hosts (or a {{tenant}} pattern) instead of the wildcard, or set enabled = false"
                    ),
                );
            }
            if get(table, "domains").is_none() {
                ctx.err(
                    v.span(),
                    &le_path,
                    format!(
                        "Let's Encrypt needs the domains to certify: set {}",
                        join(path, "domains")
                    ),
                );
            }
        }
    }

    if let Some(v) = get(table, "services") {
        env.services = services(ctx, v, &join(path, "services"));
    }
    let link_vars: BTreeMap<ConfigKey, usize> = env
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.variable.clone(), i))
        .collect();

    let secret_keys = match get(table, "secret_keys") {
        Some(v) => ctx.names(v, &join(path, "secret_keys"), ConfigKey::parse),
        None => Vec::new(),
    };
    for (key, span, p) in &secret_keys {
        if let Some(reason) = key.reserved_reason() {
            ctx.err(span.clone(), p, format!("{key} is reserved: {reason}"));
        } else if let Some(i) = link_vars.get(key) {
            ctx.err(
                span.clone(),
                p,
                format!(
                    "{key} is set by the link of {}[{i}]",
                    join(path, "services")
                ),
            );
        }
    }
    env.secret_keys = secret_keys.into_iter().map(|(k, _, _)| k).collect();

    if let Some(v) = get(table, "config") {
        let config_path = join(path, "config");
        if let Some(config) = ctx.table(v, &config_path) {
            for (key, value) in config.iter() {
                let p = join(&config_path, key.get_ref());
                let key_name = match ConfigKey::parse(key.get_ref().as_ref()) {
                    Ok(k) => k,
                    Err(e) => {
                        ctx.err(key.span(), &p, e.to_string());
                        continue;
                    }
                };
                if let Some(reason) = key_name.reserved_reason() {
                    ctx.err(key.span(), &p, format!("{key_name} is reserved: {reason}"));
                    continue;
                }
                if env.secret_keys.contains(&key_name) {
                    ctx.err(
                        value.span(),
                        &p,
                        format!(
                            "{key_name} is listed in secret_keys, so its value must not be in the file; \
                             store it with `flotilla config set APP --env ENV --secret {key_name}=…`"
                        ),
                    );
                    continue;
                }
                if let Some(i) = link_vars.get(&key_name) {
                    ctx.err(
                        key.span(),
                        &p,
                        format!(
                            "{key_name} is set by the link of {}[{i}]",
                            join(path, "services")
                        ),
                    );
                    continue;
                }
                if let Some(s) = ctx.string(value, &p) {
                    env.config.insert(key_name, s.to_owned());
                }
            }
        }
    }

    if let Some(v) = get(table, "required_keys") {
        let required = ctx.names(v, &join(path, "required_keys"), ConfigKey::parse);
        env.required_keys = required.into_iter().map(|(k, _, _)| k).collect();
    }
    Some(env)
}

fn letsencrypt(ctx: &mut Ctx<'_>, value: &Value<'_>, path: &str) -> Option<LetsEncrypt> {
    let table = ctx.table(value, path)?;
    ctx.unknown_keys(table, path, &["enabled", "email", "auto_renew"]);
    // Each key is checked even when another is wrong, so every error is reported.
    let enabled = get(table, "enabled").map(|v| ctx.bool(v, &join(path, "enabled")));
    let auto_renew = get(table, "auto_renew").map(|v| ctx.bool(v, &join(path, "auto_renew")));
    let email = get(table, "email").map(|v| {
        let p = join(path, "email");
        ctx.string(v, &p)
            .and_then(|s| match EmailAddress::parse(s) {
                Ok(email) => Some(email),
                Err(e) => {
                    ctx.err(v.span(), &p, e.to_string());
                    None
                }
            })
    });
    let (Some(enabled), Some(auto_renew)) = (
        enabled.unwrap_or(Some(true)),
        auto_renew.unwrap_or(Some(true)),
    ) else {
        return None;
    };
    if email.as_ref().is_some_and(Option::is_none) {
        return None;
    }
    let email = email.flatten();
    if !enabled {
        return None;
    }
    let Some(email) = email else {
        ctx.err(
            value.span(),
            path,
            "enabled Let's Encrypt needs an `email` (the plugin refuses to request a certificate without one)",
        );
        return None;
    };
    Some(LetsEncrypt { email, auto_renew })
}

fn services(ctx: &mut Ctx<'_>, value: &Value<'_>, path: &str) -> Vec<ServiceLink> {
    let Some(array) = value.get_ref().as_array() else {
        ctx.err(
            value.span(),
            path,
            format!(
                "expected an array of tables ([[…services]]), found {}",
                value.get_ref().type_str()
            ),
        );
        return Vec::new();
    };
    let mut out: Vec<ServiceLink> = Vec::new();
    for (i, item) in array.iter().enumerate() {
        let p = format!("{path}[{i}]");
        let Some(table) = ctx.table(item, &p) else {
            continue;
        };
        ctx.unknown_keys(table, &p, &["kind", "name", "alias"]);
        let kind = match get(table, "kind") {
            Some(v) => {
                match ctx.string(v, &join(&p, "kind")) {
                    Some("postgres") => Some(ServiceKind::Postgres),
                    Some("redis") => Some(ServiceKind::Redis),
                    Some(other) => {
                        ctx.err(
                        v.span(),
                        &join(&p, "kind"),
                        format!("unknown service kind {other:?} (expected \"postgres\" or \"redis\")"),
                    );
                        None
                    }
                    None => None,
                }
            }
            None => {
                ctx.err(
                    item.span(),
                    &p,
                    "missing `kind` (\"postgres\" or \"redis\")",
                );
                None
            }
        };
        let name = match get(table, "name") {
            Some(v) => {
                let np = join(&p, "name");
                ctx.string(v, &np)
                    .and_then(|s| match ServiceName::parse(s) {
                        Ok(n) => Some(n),
                        Err(e) => {
                            ctx.err(v.span(), &np, e.to_string());
                            None
                        }
                    })
            }
            None => {
                ctx.err(item.span(), &p, "missing `name` (the Dokku service name)");
                None
            }
        };
        let mut alias_ok = true;
        let alias = match get(table, "alias") {
            Some(v) => {
                let ap = join(&p, "alias");
                match ctx.string(v, &ap).map(str::to_owned).map(LinkAlias::parse) {
                    Some(Ok(a)) => Some((a, v.span())),
                    Some(Err(e)) => {
                        ctx.err(v.span(), &ap, e.to_string());
                        alias_ok = false;
                        None
                    }
                    None => {
                        alias_ok = false;
                        None
                    }
                }
            }
            None => None,
        };
        let (Some(kind), Some(name), true) = (kind, name, alias_ok) else {
            continue;
        };
        if let Some(j) = out.iter().position(|s| s.kind == kind && s.name == name) {
            ctx.err(
                item.span(),
                &p,
                format!("{kind} service \"{name}\" is already linked at {path}[{j}]"),
            );
            continue;
        }
        let alias_name = alias
            .as_ref()
            .map_or(kind.default_alias(), |(a, _)| a.as_str());
        let variable = match ConfigKey::parse(format!("{alias_name}_URL")) {
            Ok(v) => v,
            Err(e) => {
                ctx.err(item.span(), &p, e.to_string());
                continue;
            }
        };
        if let Some(reason) = variable.reserved_reason() {
            let span = alias.as_ref().map_or(item.span(), |(_, s)| s.clone());
            ctx.err(
                span,
                &join(&p, "alias"),
                format!("the link would set {variable}, which is reserved: {reason}"),
            );
            continue;
        }
        if let Some(j) = out.iter().position(|s| s.variable == variable) {
            let message = if alias.is_none() {
                format!(
                    "{variable} is already set by {path}[{j}]; a second {kind} link without an alias makes the plugin \
                     pick DOKKU_{}_<COLOR>_URL instead, so give this one an `alias` (it then sets <ALIAS>_URL)",
                    kind.plugin().to_ascii_uppercase()
                )
            } else {
                format!("{variable} is already set by {path}[{j}]; choose another alias")
            };
            let span = alias.as_ref().map_or(item.span(), |(_, s)| s.clone());
            ctx.err(span, &p, message);
            continue;
        }
        out.push(ServiceLink {
            kind,
            name,
            alias: alias.map(|(a, _)| a),
            variable,
        });
    }
    out
}
