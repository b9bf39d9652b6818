//! `letsencrypt:*` (dokku.md §7, plugin `dokku-letsencrypt`): per-app and global properties (`email`, `server`,
//! `graceperiod`, `dns-provider`), `enable` issuing a fake certificate that `certs:report` shows, `disable`,
//! `active`, `cron-job`, `list`, `report`; and the plugin-version differences (`letsencrypt:set` from 0.20.0, the
//! "still valid" skip from 0.25.0), the version read from `$DOKKU_ROOT/.standin/letsencrypt-version`.

use crate::args::{self, Spec};
use crate::certs::{self, Cert};
use crate::out::{CmdResult, Failure};
use crate::report::{self, Flags, Layout};
use crate::store::{Scope, Store};
use crate::{Ctx, deploy, domains, util};

/// Property plugin.
const PLUGIN: &str = "letsencrypt";
/// The plugin version dokku.md describes; `.standin/letsencrypt-version` overrides it.
pub const DEFAULT_VERSION: &str = "0.25.1";
/// Keys `letsencrypt:set` accepts.
const KEYS: [&str; 4] = ["dns-provider", "email", "graceperiod", "server"];
/// The plugin's default grace period: renew 30 days before expiry.
const DEFAULT_GRACEPERIOD_SECS: u64 = 30 * 86_400;
/// Let's Encrypt certificates last 90 days.
const VALIDITY_SECS: u64 = 90 * 86_400;
/// Where the fake records every certificate request (one line: app and domains).
pub const REQUESTS_LOG: &str = "letsencrypt-requests";
/// Whether the auto-renew cron job is installed (fake state).
const CRON_FILE: &str = "letsencrypt-cron";

const SET: Spec = Spec {
    command: "letsencrypt:set",
    switches: &["--global"],
    options: &[],
};
const ENABLE: Spec = Spec {
    command: "letsencrypt:enable",
    switches: &["--force", "--all"],
    options: &[],
};
const DISABLE: Spec = no_flags("letsencrypt:disable");
const ACTIVE: Spec = no_flags("letsencrypt:active");
const LIST: Spec = no_flags("letsencrypt:list");

const fn no_flags(command: &'static str) -> Spec {
    Spec {
        command,
        switches: &[],
        options: &[],
    }
}
const CRON: Spec = Spec {
    command: "letsencrypt:cron-job",
    switches: &["--add", "--remove"],
    options: &[],
};

/// The simulated plugin version: `.standin/letsencrypt-version` (e.g. `0.24.0`), else `DEFAULT_VERSION`.
pub fn plugin_version(store: &Store) -> Result<(u64, u64, u64), Failure> {
    let text = store.standin("letsencrypt-version")?;
    Ok(util::version(
        text.as_deref()
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .unwrap_or(DEFAULT_VERSION),
    ))
}

/// Whether `letsencrypt:set` exists (plugin 0.20.0+); before, the command is unknown to Dokku.
pub fn has_set(store: &Store) -> Result<bool, Failure> {
    Ok(plugin_version(store)? >= (0, 20, 0))
}

/// The app's value of a property, else the global one.
fn computed(store: &Store, app: &str, key: &str) -> Result<Option<String>, Failure> {
    match store.property(app, PLUGIN, key)? {
        Some(value) => Ok(Some(value)),
        None => store.global_property(PLUGIN, key),
    }
}

/// The e-mail address: properties from 0.20.0, before that config `DOKKU_LETSENCRYPT_EMAIL` (app, then global).
fn email(store: &Store, app: &str) -> Result<Option<String>, Failure> {
    let email = if has_set(store)? {
        computed(store, app, "email")?
    } else {
        let key = "DOKKU_LETSENCRYPT_EMAIL";
        match store.env(&Scope::App(app.to_string()))?.get(key) {
            Some(value) => Some(value.clone()),
            None => store.env(&Scope::Global)?.get(key).cloned(),
        }
    };
    Ok(email.filter(|email| !email.is_empty()))
}

fn graceperiod(store: &Store, app: &str) -> Result<u64, Failure> {
    Ok(computed(store, app, "graceperiod")?
        .and_then(|value| value.parse().ok())
        .unwrap_or(DEFAULT_GRACEPERIOD_SECS))
}

/// The app's certificate if Let's Encrypt installed it.
fn active_cert(store: &Store, app: &str) -> Result<Option<Cert>, Failure> {
    Ok(certs::current(store, app)?.filter(|cert| cert.letsencrypt))
}

/// `letsencrypt:set (<app>|--global) <key> [<value>]`: no value unsets.
pub fn set(ctx: &Ctx, args: &[String]) -> CmdResult {
    if !has_set(&ctx.store)? {
        return Err(crate::unknown_command("letsencrypt:set"));
    }
    let parsed = args::parse(&SET, args, ctx.app.as_deref())?;
    let global = parsed.has("--global");
    let mut rest = parsed.positionals.iter();
    let app = if global {
        None
    } else {
        Some(ctx.require_app(rest.next())?)
    };
    let Some(key) = rest.next() else {
        return Err(Failure::msg(1, "No key specified"));
    };
    if !KEYS.contains(&key.as_str()) {
        return Err(Failure::msg(
            1,
            format!(
                "Invalid key specified, valid keys include: {}",
                KEYS.join(", ")
            ),
        ));
    }
    let value = rest.cloned().collect::<Vec<_>>().join(" ");
    if value.is_empty() {
        ctx.out.header(&format!("Unsetting {key}"));
        match &app {
            Some(app) => ctx.store.delete_property(app, PLUGIN, key),
            None => ctx.store.delete_global_property(PLUGIN, key),
        }
    } else {
        ctx.out.header(&format!("Setting {key} to {value}"));
        match &app {
            Some(app) => ctx.store.set_property(app, PLUGIN, key, &value),
            None => ctx.store.set_global_property(PLUGIN, key, &value),
        }
    }
}

/// `letsencrypt:enable (<app> [--force] | --all)`.
pub fn enable(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&ENABLE, args, ctx.app.as_deref())?;
    let force = ctx.force || parsed.has("--force");
    if !parsed.has("--all") {
        let app = ctx.require_app(parsed.positionals.first())?;
        return enable_one(ctx, &app, force);
    }
    let mut code = 0;
    for app in ctx.store.apps()? {
        if let Err(failure) = enable_one(ctx, &app, force) {
            ctx.out.failure(&failure);
            code = failure.code;
        }
    }
    if code == 0 {
        Ok(())
    } else {
        Err(Failure::silent(code))
    }
}

fn enable_one(ctx: &Ctx, app: &str, force: bool) -> CmdResult {
    let (store, out) = (&ctx.store, &ctx.out);
    out.header(&format!("Enabling letsencrypt for {app}"));
    let domains = domains::served_vhosts(store, app)?;
    if domains.is_empty() {
        return Err(Failure::msg(1, format!("No domains detected for {app}")));
    }
    if email(store, app)?.is_none() {
        let how = if has_set(store)? {
            format!("  dokku letsencrypt:set {app} email <e-mail>")
        } else {
            format!("  dokku config:set --no-restart {app} DOKKU_LETSENCRYPT_EMAIL=<e-mail>")
        };
        return Err(Failure::msgs(
            1,
            [
                "ERROR: Cannot request a certificate without an e-mail address!".to_string(),
                "  please provide your e-mail address using".to_string(),
                how,
            ],
        ));
    }
    let now = util::now().0;
    if plugin_version(store)? >= (0, 25, 0)
        && !force
        && let Some(cert) = active_cert(store, app)?
        && cert.expires_at > now + graceperiod(store, app)?
    {
        out.step(&format!(
            "Certificate is still valid for {app}, skipping certificate request"
        ));
        return Ok(());
    }

    // Everything below asks Let's Encrypt: recorded so tests can count requests (rate limits).
    store.append_fake_log(REQUESTS_LOG, &format!("{app} {}", domains.join(" ")))?;
    out.step(&format!("Enabling ACME proxy for {app}..."));
    out.step(&format!(
        "Getting letsencrypt certificate for {app} via HTTP-01"
    ));
    for domain in &domains {
        out.info(&format!("- Domain '{domain}'"));
    }
    let reason = if !deploy::is_deployed(store, app)? {
        Some(format!(
            "(fake-dokku) {app} is not deployed: nothing answers the HTTP-01 challenge on port 80"
        ))
    } else if store
        .standin_list("letsencrypt-fail")?
        .iter()
        .any(|listed| listed == app)
    {
        Some(format!(
            "(fake-dokku) {app} is listed in .standin/letsencrypt-fail"
        ))
    } else {
        None
    };
    if let Some(reason) = reason {
        out.warn(&reason);
        out.step(&format!("Disabling ACME proxy for {app}..."));
        return Err(Failure::msg(1, "Failed to setup letsencrypt"));
    }
    out.step("Certificate retrieved successfully.");
    out.step("Installing let's encrypt certificates");
    let staging = computed(store, app, "server")?.as_deref() == Some("staging");
    let cert = Cert {
        starts_at: now,
        expires_at: now + VALIDITY_SECS,
        hostnames: domains.clone(),
        issuer: if staging {
            "C = US, O = (STAGING) Let's Encrypt, CN = (STAGING) Ersatz Edamame E1".to_string()
        } else {
            certs::LETSENCRYPT_ISSUER.to_string()
        },
        verified: if staging {
            "self signed"
        } else {
            "verified by a certificate authority"
        }
        .to_string(),
        letsencrypt: true,
    };
    let crt = format!(
        "# fake-dokku certificate issued by letsencrypt:enable\nexpires-at={}\nhostnames={}\n",
        cert.expires_at,
        domains.join(" ")
    );
    certs::install(store, app, &cert, crt.as_bytes(), b"(fake-dokku) key\n")?;
    domains::print_proxy_rebuild(out, &domains);
    out.step(&format!("Disabling ACME proxy for {app}..."));
    out.step("Done");
    Ok(())
}

/// `letsencrypt:disable <app>`: removes the Let's Encrypt certificate, if there is one.
pub fn disable(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&DISABLE, args, ctx.app.as_deref())?;
    let app = ctx.require_app(parsed.positionals.first())?;
    ctx.out.step("Disabling letsencrypt for app");
    if active_cert(&ctx.store, &app)?.is_some() {
        ctx.out.step(&format!("Removing SSL endpoint from {app}"));
        certs::uninstall(&ctx.store, &app)?;
        if deploy::is_deployed(&ctx.store, &app)? {
            domains::print_proxy_rebuild(&ctx.out, &domains::served_vhosts(&ctx.store, &app)?);
        }
    }
    ctx.out.step("Done");
    Ok(())
}

/// `letsencrypt:active <app>`: `true` or `false`, exit 0.
pub fn active(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&ACTIVE, args, ctx.app.as_deref())?;
    let app = ctx.require_app(parsed.positionals.first())?;
    let active = active_cert(&ctx.store, &app)?.is_some();
    ctx.out.line(&active.to_string());
    Ok(())
}

/// `letsencrypt:cron-job [--add | --remove]`.
pub fn cron_job(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&CRON, args, None)?;
    let path = ctx.store.fake_dir().join(CRON_FILE);
    if parsed.has("--add") {
        crate::store::write_atomic(&path, b"enabled\n")?;
        ctx.out.step("Added cron job to dokku's crontab.");
    } else if parsed.has("--remove") {
        if let Err(err) = std::fs::remove_file(&path)
            && err.kind() != std::io::ErrorKind::NotFound
        {
            return Err(Failure::io(format!("remove {}", path.display()), err));
        }
        ctx.out.step("Removed cron job from dokku's crontab.");
    } else if path.exists() {
        ctx.out.line("=====> Auto-renew cron job is enabled");
    } else {
        ctx.out.line("=====> Auto-renew cron job is not enabled");
    }
    Ok(())
}

/// `letsencrypt:list`: apps with a Let's Encrypt certificate, soonest expiry first.
pub fn list(ctx: &Ctx, args: &[String]) -> CmdResult {
    args::parse(&LIST, args, None)?;
    ctx.out.step(
        "App name           Certificate Expiry        Time before expiry        Time before renewal",
    );
    let now = i64::try_from(util::now().0).unwrap_or(i64::MAX);
    let mut rows = Vec::new();
    for app in ctx.store.apps()? {
        if let Some(cert) = active_cert(&ctx.store, &app)? {
            let expires = i64::try_from(cert.expires_at).unwrap_or(i64::MAX);
            let grace = i64::try_from(graceperiod(&ctx.store, &app)?).unwrap_or(0);
            rows.push((cert.expires_at, app, expires - now, expires - grace - now));
        }
    }
    rows.sort();
    for (expires_at, app, to_expiry, to_renewal) in rows {
        ctx.out.line(&format!(
            "{app:<25} {:<25} {:<25} {:<25}",
            util::ymd_hms(expires_at),
            util::span(to_expiry),
            util::span(to_renewal)
        ));
    }
    Ok(())
}

/// `letsencrypt:report [<app>] [--flag | --format json]` (bash layout).
pub fn report(ctx: &Ctx, args: &[String]) -> CmdResult {
    report::run_with(
        ctx,
        args,
        "letsencrypt",
        "letsencrypt",
        report_flags,
        Layout::Bash(30),
    )
}

fn report_flags(store: &Store, app: &str) -> Result<Flags, Failure> {
    let app_value = |key: &str| -> Result<String, Failure> {
        Ok(store.property(app, PLUGIN, key)?.unwrap_or_default())
    };
    let global_value = |key: &str| -> Result<String, Failure> {
        Ok(store.global_property(PLUGIN, key)?.unwrap_or_default())
    };
    let cert = active_cert(store, app)?;
    let computed_server = computed(store, app, "server")?.unwrap_or_else(|| "default".to_string());
    Ok(report::flags([
        ("--letsencrypt-active", cert.is_some().to_string()),
        (
            "--letsencrypt-autorenew",
            store.fake_dir().join(CRON_FILE).exists().to_string(),
        ),
        (
            "--letsencrypt-computed-dns-provider",
            computed(store, app, "dns-provider")?.unwrap_or_default(),
        ),
        (
            "--letsencrypt-computed-email",
            email(store, app)?.unwrap_or_default(),
        ),
        (
            "--letsencrypt-computed-graceperiod",
            graceperiod(store, app)?.to_string(),
        ),
        ("--letsencrypt-computed-server", computed_server),
        ("--letsencrypt-dns-provider", app_value("dns-provider")?),
        ("--letsencrypt-email", app_value("email")?),
        (
            "--letsencrypt-expiration",
            cert.map(|cert| cert.expires_at.to_string())
                .unwrap_or_default(),
        ),
        (
            "--letsencrypt-global-dns-provider",
            global_value("dns-provider")?,
        ),
        ("--letsencrypt-global-email", global_value("email")?),
        (
            "--letsencrypt-global-graceperiod",
            global_value("graceperiod")?,
        ),
        ("--letsencrypt-global-server", global_value("server")?),
        ("--letsencrypt-graceperiod", app_value("graceperiod")?),
        ("--letsencrypt-server", app_value("server")?),
    ]))
}
