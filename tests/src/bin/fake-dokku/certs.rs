//! `certs:*` (dokku.md §7): the app's certificate (`<app>/tls/server.crt` and `server.key`, plus the facts the fake
//! reports in properties under `certs/`), `certs:add`, `certs:remove`, the `certs:report` flags, and certificates
//! seeded by tests through `$DOKKU_ROOT/.standin/certs/<app>`. Let's Encrypt is in `letsencrypt`.

use crate::args::{self, Spec};
use crate::out::{CmdResult, Failure};
use crate::report::{self, Flags};
use crate::store::{Scope, Store};
use crate::{Ctx, deploy, domains, util};

/// Property plugin for the certificate's facts.
const PLUGIN: &str = "certs";
/// The issuer of the certificates `letsencrypt:enable` installs (and the default of seeded Let's Encrypt ones).
pub const LETSENCRYPT_ISSUER: &str = "C = US, O = Let's Encrypt, CN = R11";
/// `--ssl-verified` of a certificate a CA signed.
pub const CA_VERIFIED: &str = "verified by a certificate authority";
/// How long a certificate added without fake facts lasts.
const DEFAULT_VALIDITY_SECS: u64 = 365 * 86_400;

const ADD: Spec = Spec {
    command: "certs:add",
    switches: &[],
    options: &[],
};
const REMOVE: Spec = Spec {
    command: "certs:remove",
    switches: &[],
    options: &[],
};

/// What `certs:report` shows about an installed certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cert {
    /// Unix seconds.
    pub starts_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
    pub hostnames: Vec<String>,
    pub issuer: String,
    /// `verified by a certificate authority` or `self signed`, as `openssl verify` is summarised.
    pub verified: String,
    /// Installed by `letsencrypt:enable` (what `letsencrypt:active` asks).
    pub letsencrypt: bool,
}

impl Cert {
    /// A self-signed certificate for `hostnames`, valid from now for a year.
    pub fn self_signed(hostnames: Vec<String>, app: &str) -> Self {
        let now = util::now().0;
        let subject = hostnames.first().map_or(app, String::as_str).to_string();
        Self {
            starts_at: now,
            expires_at: now + DEFAULT_VALIDITY_SECS,
            hostnames,
            issuer: format!("CN = {subject}"),
            verified: "self signed".to_string(),
            letsencrypt: false,
        }
    }

    /// Reads the seed format over `self`: `key=value` lines with the keys `expires-at` and `starts-at` (Unix
    /// seconds), `hostnames` (space-separated), `issuer`, `verified`, `letsencrypt` (`true`/`false`: then issuer
    /// and verified default to Let's Encrypt's); blank lines, `#` comments and other lines are ignored.
    pub fn read_record(&mut self, text: &str) -> Result<(), Failure> {
        let (mut issuer, mut verified) = (false, false);
        for line in text.lines().map(str::trim) {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let secs = || {
                value.parse::<u64>().map_err(|_| {
                    Failure::msg(
                        1,
                        format!("(fake-dokku) {key} must be Unix seconds: {value}"),
                    )
                })
            };
            match key {
                "expires-at" => self.expires_at = secs()?,
                "starts-at" => self.starts_at = secs()?,
                "hostnames" => {
                    self.hostnames = value.split_whitespace().map(String::from).collect();
                }
                "issuer" => {
                    self.issuer = value.to_string();
                    issuer = true;
                }
                "verified" => {
                    self.verified = value.to_string();
                    verified = true;
                }
                "letsencrypt" => self.letsencrypt = value == "true",
                _ => {}
            }
        }
        if self.letsencrypt {
            if !issuer {
                self.issuer = LETSENCRYPT_ISSUER.to_string();
            }
            if !verified {
                self.verified = CA_VERIFIED.to_string();
            }
        }
        Ok(())
    }
}

/// Installs `cert` as the app's certificate (replacing any), with `crt` and `key` as the files.
pub fn install(store: &Store, app: &str, cert: &Cert, crt: &[u8], key: &[u8]) -> CmdResult {
    store.write_tls(app, "server.crt", crt)?;
    store.write_tls(app, "server.key", key)?;
    store.set_property(app, PLUGIN, "starts-at", &cert.starts_at.to_string())?;
    store.set_property(app, PLUGIN, "hostnames", &cert.hostnames.join(" "))?;
    store.set_property(app, PLUGIN, "issuer", &cert.issuer)?;
    store.set_property(app, PLUGIN, "verified", &cert.verified)?;
    store.set_property(app, PLUGIN, "letsencrypt", &cert.letsencrypt.to_string())?;
    // Last: its presence is what makes the certificate exist.
    store.set_property(app, PLUGIN, "expires-at", &cert.expires_at.to_string())
}

/// Removes the app's certificate.
pub fn uninstall(store: &Store, app: &str) -> CmdResult {
    store.delete_property(app, PLUGIN, "expires-at")?;
    for key in [
        "starts-at",
        "hostnames",
        "issuer",
        "verified",
        "letsencrypt",
    ] {
        store.delete_property(app, PLUGIN, key)?;
    }
    store.remove_tls(app)
}

/// The seed file of an app: `.standin/certs/<app>`.
pub fn seed_name(app: &str) -> String {
    format!("certs/{app}")
}

/// The app's certificate, if it has one. A seeded certificate (`.standin/certs/<app>`) is installed first, as if
/// `certs:add` had run, and its file deleted, so later commands (`letsencrypt:enable`, `certs:remove`) can replace it.
pub fn current(store: &Store, app: &str) -> Result<Option<Cert>, Failure> {
    if let Some(text) = store.standin(&seed_name(app))? {
        let mut cert = Cert::self_signed(store.vhosts(&Scope::App(app.to_string()))?, app);
        cert.read_record(&text)?;
        install(
            store,
            app,
            &cert,
            text.as_bytes(),
            b"(fake-dokku) seeded key\n",
        )?;
        store.remove_standin(&seed_name(app))?;
    }
    let Some(expires_at) = store.property(app, PLUGIN, "expires-at")? else {
        return Ok(None);
    };
    let property = |key: &str| -> Result<String, Failure> {
        Ok(store.property(app, PLUGIN, key)?.unwrap_or_default())
    };
    Ok(Some(Cert {
        starts_at: property("starts-at")?.parse().unwrap_or(0),
        expires_at: expires_at.parse().unwrap_or(0),
        hostnames: property("hostnames")?
            .split_whitespace()
            .map(String::from)
            .collect(),
        issuer: property("issuer")?,
        verified: property("verified")?,
        letsencrypt: property("letsencrypt")? == "true",
    }))
}

/// Rebuilds the proxy of a deployed app after its certificate changed.
fn after_change(ctx: &Ctx, app: &str) -> CmdResult {
    if deploy::is_deployed(&ctx.store, app)? {
        domains::print_proxy_rebuild(&ctx.out, &domains::served_vhosts(&ctx.store, app)?);
    }
    Ok(())
}

/// `certs:add <app> CRT KEY`. The fake reads no X.509: a CRT file in the seed format (see `--help`) gives the facts,
/// any other CRT counts as self-signed for the app's domains, valid for a year from now.
pub fn add(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&ADD, args, ctx.app.as_deref())?;
    let app = ctx.require_app(parsed.positionals.first())?;
    let (Some(crt_path), Some(key_path)) = (parsed.positionals.get(1), parsed.positionals.get(2))
    else {
        return Err(Failure::msg(
            1,
            "(fake-dokku) certs:add needs CRT and KEY files; a tarball on stdin is not supported",
        ));
    };
    let crt = std::fs::read(crt_path)
        .map_err(|_| Failure::msg(1, "CRT file specified not found, please check file paths"))?;
    let key = std::fs::read(key_path)
        .map_err(|_| Failure::msg(1, "KEY file specified not found, please check file paths"))?;
    let mut cert = Cert::self_signed(ctx.store.vhosts(&Scope::App(app.clone()))?, &app);
    cert.read_record(&String::from_utf8_lossy(&crt))?;
    install(&ctx.store, &app, &cert, &crt, &key)?;
    after_change(ctx, &app)
}

/// `certs:remove <app>`.
pub fn remove(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&REMOVE, args, ctx.app.as_deref())?;
    let app = ctx.require_app(parsed.positionals.first())?;
    if current(&ctx.store, &app)?.is_none() {
        return Err(Failure::msg(
            1,
            "An app-specific SSL endpoint is not defined",
        ));
    }
    ctx.out.step(&format!("Removing SSL endpoint from {app}"));
    uninstall(&ctx.store, &app)?;
    after_change(ctx, &app)
}

/// `certs:report` flags: all empty but `--ssl-enabled false` without a certificate.
pub fn report_flags(store: &Store, app: &str) -> Result<Flags, Failure> {
    let cert = current(store, app)?;
    let field = |get: fn(&Cert) -> String| cert.as_ref().map(get).unwrap_or_default();
    Ok(report::flags([
        ("--ssl-enabled", cert.is_some().to_string()),
        (
            "--ssl-expires-at",
            field(|cert| util::openssl_date(cert.expires_at)),
        ),
        ("--ssl-hostnames", field(|cert| cert.hostnames.join(" "))),
        ("--ssl-issuer", field(|cert| cert.issuer.clone())),
        ("--ssl-verified", field(|cert| cert.verified.clone())),
    ]))
}
