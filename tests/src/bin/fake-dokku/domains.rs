//! `domains:*`: the global and per-app `VHOST` files, the host rule, the default vhost an app gets at creation
//! (`<app>.<global domain>`, or config `NO_VHOST=1`), and the `domains:report` flags.

use std::net::IpAddr;

use crate::args::{self, Spec};
use crate::out::{CmdResult, Failure, Out};
use crate::report::{self, Flags};
use crate::store::{Scope, Store};
use crate::{Ctx, deploy, util};

/// The vhosts an app gets from the global domains: `<app>.<domain>` for each non-IP global domain; an app name
/// with a dot is used as it is.
pub fn default_vhosts(globals: &[String], app: &str) -> Vec<String> {
    let mut vhosts: Vec<String> = Vec::new();
    for domain in globals
        .iter()
        .filter(|domain| domain.parse::<IpAddr>().is_err())
    {
        let vhost = if app.contains('.') {
            app.to_string()
        } else {
            format!("{app}.{domain}")
        };
        if !vhosts.contains(&vhost) {
            vhosts.push(vhost);
        }
    }
    vhosts
}

/// What `apps:create` does for domains: write the default vhosts, or set `NO_VHOST=1` without a global domain.
pub fn setup_new_app(store: &Store, app: &str) -> CmdResult {
    let scope = Scope::App(app.to_string());
    let vhosts = default_vhosts(&store.vhosts(&Scope::Global)?, app);
    if vhosts.is_empty() {
        let mut env = store.env(&scope)?;
        env.insert("NO_VHOST".to_string(), "1".to_string());
        store.write_env(&scope, &env)
    } else {
        store.set_vhosts(&scope, &vhosts)
    }
}

/// Whether the app serves its vhosts (config `NO_VHOST` is not `1`).
pub fn vhosts_enabled(store: &Store, app: &str) -> Result<bool, Failure> {
    let env = store.env(&Scope::App(app.to_string()))?;
    Ok(env.get("NO_VHOST").map(String::as_str) != Some("1"))
}

/// The vhosts an app answers on: none while vhosts are disabled.
pub fn served_vhosts(store: &Store, app: &str) -> Result<Vec<String>, Failure> {
    if vhosts_enabled(store, app)? {
        store.vhosts(&Scope::App(app.to_string()))
    } else {
        Ok(Vec::new())
    }
}

/// The nginx rebuild lines of a deploy or a domain change.
pub fn print_proxy_rebuild(out: &Out, vhosts: &[String]) {
    if vhosts.is_empty() {
        return;
    }
    for vhost in vhosts {
        out.step(&format!("Configuring {vhost}...(using built-in template)"));
    }
    out.step("Creating http nginx.conf");
    out.info("Reloading nginx");
}

/// Checks every domain against the host rule before anything changes; returns them lowercased, without repeats.
fn valid_domains(domains: &[String]) -> Result<Vec<String>, Failure> {
    if domains.is_empty() {
        return Err(Failure::msg(1, "Please specify a domain name"));
    }
    let mut valid: Vec<String> = Vec::new();
    for domain in domains {
        if !util::is_valid_host(domain) {
            return Err(Failure::msg(1, format!("{domain} is invalid. exiting...")));
        }
        let domain = domain.to_lowercase();
        if !valid.contains(&domain) {
            valid.push(domain);
        }
    }
    Ok(valid)
}

/// Parses `<app> d…` and returns the app and the rest.
fn app_args(
    ctx: &Ctx,
    command: &'static str,
    args: &[String],
) -> Result<(String, Vec<String>), Failure> {
    let spec = Spec {
        command,
        switches: &[],
        options: &[],
    };
    let parsed = args::parse(&spec, args, ctx.app.as_deref())?;
    let app = ctx.require_app(parsed.positionals.first())?;
    Ok((
        app,
        parsed.positionals.get(1..).unwrap_or_default().to_vec(),
    ))
}

/// Re-enables vhosts (drops `NO_VHOST`), then rebuilds the proxy of a deployed app.
fn after_app_change(ctx: &Ctx, app: &str, enable: bool) -> CmdResult {
    if enable {
        let scope = Scope::App(app.to_string());
        let mut env = ctx.store.env(&scope)?;
        if env.remove("NO_VHOST").is_some() {
            ctx.store.write_env(&scope, &env)?;
        }
    }
    if deploy::is_deployed(&ctx.store, app)? {
        print_proxy_rebuild(&ctx.out, &served_vhosts(&ctx.store, app)?);
    }
    Ok(())
}

pub fn add(ctx: &Ctx, args: &[String]) -> CmdResult {
    let (app, domains) = app_args(ctx, "domains:add", args)?;
    let domains = valid_domains(&domains)?;
    let scope = Scope::App(app.clone());
    let mut vhosts = ctx.store.vhosts(&scope)?;
    for domain in domains {
        if vhosts.contains(&domain) {
            ctx.out
                .step(&format!("Skipping: {domain} already added to {app}"));
        } else {
            ctx.out.step(&format!("Added {domain} to {app}"));
            vhosts.push(domain);
        }
    }
    ctx.store.set_vhosts(&scope, &vhosts)?;
    after_app_change(ctx, &app, true)
}

pub fn set(ctx: &Ctx, args: &[String]) -> CmdResult {
    let (app, domains) = app_args(ctx, "domains:set", args)?;
    let domains = valid_domains(&domains)?;
    ctx.store.set_vhosts(&Scope::App(app.clone()), &domains)?;
    ctx.out
        .step(&format!("Set {} for {app}", domains.join(" ")));
    after_app_change(ctx, &app, true)
}

pub fn remove(ctx: &Ctx, args: &[String]) -> CmdResult {
    let (app, domains) = app_args(ctx, "domains:remove", args)?;
    let domains = valid_domains(&domains)?;
    let scope = Scope::App(app.clone());
    let mut vhosts = ctx.store.vhosts(&scope)?;
    for domain in domains {
        vhosts.retain(|vhost| *vhost != domain);
        ctx.out.step(&format!("Removed {domain} from {app}"));
    }
    ctx.store.set_vhosts(&scope, &vhosts)?;
    after_app_change(ctx, &app, false)
}

pub fn clear(ctx: &Ctx, args: &[String]) -> CmdResult {
    let (app, _) = app_args(ctx, "domains:clear", args)?;
    ctx.store.set_vhosts(&Scope::App(app.clone()), &[])?;
    ctx.out.step(&format!("Cleared domains in {app}"));
    after_app_change(ctx, &app, false)
}

pub fn reset(ctx: &Ctx, args: &[String]) -> CmdResult {
    let (app, _) = app_args(ctx, "domains:reset", args)?;
    let vhosts = default_vhosts(&ctx.store.vhosts(&Scope::Global)?, &app);
    ctx.store.set_vhosts(&Scope::App(app.clone()), &vhosts)?;
    ctx.out.step(&format!("Reset domains for {app}"));
    after_app_change(ctx, &app, !vhosts.is_empty())
}

fn global_args(command: &'static str, args: &[String]) -> Result<Vec<String>, Failure> {
    let spec = Spec {
        command,
        switches: &[],
        options: &[],
    };
    Ok(args::parse(&spec, args, None)?.positionals)
}

pub fn set_global(ctx: &Ctx, args: &[String]) -> CmdResult {
    let domains = valid_domains(&global_args("domains:set-global", args)?)?;
    ctx.store.set_vhosts(&Scope::Global, &domains)?;
    ctx.out.step(&format!("Set {}", domains.join(" ")));
    Ok(())
}

pub fn add_global(ctx: &Ctx, args: &[String]) -> CmdResult {
    let domains = valid_domains(&global_args("domains:add-global", args)?)?;
    let mut vhosts = ctx.store.vhosts(&Scope::Global)?;
    for domain in domains {
        if vhosts.contains(&domain) {
            ctx.out.step(&format!("Skipping: {domain} already added"));
        } else {
            ctx.out.step(&format!("Added {domain}"));
            vhosts.push(domain);
        }
    }
    ctx.store.set_vhosts(&Scope::Global, &vhosts)
}

pub fn remove_global(ctx: &Ctx, args: &[String]) -> CmdResult {
    let domains = valid_domains(&global_args("domains:remove-global", args)?)?;
    let mut vhosts = ctx.store.vhosts(&Scope::Global)?;
    for domain in domains {
        vhosts.retain(|vhost| *vhost != domain);
        ctx.out.step(&format!("Removed {domain}"));
    }
    ctx.store.set_vhosts(&Scope::Global, &vhosts)
}

pub fn clear_global(ctx: &Ctx, args: &[String]) -> CmdResult {
    global_args("domains:clear-global", args)?;
    ctx.store.set_vhosts(&Scope::Global, &[])?;
    ctx.out.step("Cleared global domains");
    Ok(())
}

/// `domains:report` flags.
pub fn report_flags(store: &Store, app: &str) -> Result<Flags, Failure> {
    let app_vhosts = store.vhosts(&Scope::App(app.to_string()))?;
    let mut flags = global_report_flags(store)?;
    flags.extend(report::flags([
        (
            "--domains-app-enabled",
            vhosts_enabled(store, app)?.to_string(),
        ),
        ("--domains-app-vhosts", app_vhosts.join(" ")),
    ]));
    Ok(flags)
}

/// `domains:report --global` flags.
pub fn global_report_flags(store: &Store) -> Result<Flags, Failure> {
    let global_vhosts = store.vhosts(&Scope::Global)?;
    Ok(report::flags([
        (
            "--domains-global-enabled",
            (!global_vhosts.is_empty()).to_string(),
        ),
        ("--domains-global-vhosts", global_vhosts.join(" ")),
    ]))
}
