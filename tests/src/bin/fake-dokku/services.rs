//! `postgres:*` and `redis:*` (dokku.md §8, plugins `dokku-postgres` and `dokku-redis`): services under
//! `.fake-dokku/services/<plugin>/<service>/` (`PASSWORD`, `LINKS`), and links that set the service URL in the
//! app's config (`DATABASE_URL`/`REDIS_URL`, or `DOKKU_<PLUGIN>_<COLOR>_URL` once that name is taken) and restart
//! the app unless `--no-restart` is anywhere on the command line. No container runs.

use crate::args::{self, Parsed, Spec};
use crate::out::{CmdResult, Failure};
use crate::report::{self, Flags};
use crate::store::{Scope, Store};
use crate::util::Env;
use crate::{Ctx, apps, config, deploy, util};

/// What differs between the two plugins.
pub struct Service {
    /// `postgres`: the command prefix and the state directory.
    pub plugin: &'static str,
    /// `Postgres`: in messages.
    pub title: &'static str,
    /// `DATABASE`: the default alias (the variable is `<alias>_URL`).
    pub default_alias: &'static str,
    /// `DOKKU_POSTGRES`: the prefix of the alternative aliases.
    pub alt_alias: &'static str,
    /// `postgres:17.5`: what `info --version` prints.
    pub image_version: &'static str,
}

pub const POSTGRES: Service = Service {
    plugin: "postgres",
    title: "Postgres",
    default_alias: "DATABASE",
    alt_alias: "DOKKU_POSTGRES",
    image_version: "postgres:17.5",
};

pub const REDIS: Service = Service {
    plugin: "redis",
    title: "Redis",
    default_alias: "REDIS",
    alt_alias: "DOKKU_REDIS",
    image_version: "redis:7.4.2",
};

/// The colours of the alternative aliases, in the plugins' order. The real plugins pick one at random among the
/// unused ones; the fake takes the first unused, so tests are repeatable (the agent must read the name from config).
pub const COLORS: [&str; 16] = [
    "AQUA", "BLACK", "BLUE", "FUCHSIA", "GRAY", "GREEN", "LIME", "MAROON", "NAVY", "OLIVE",
    "PURPLE", "RED", "SILVER", "TEAL", "WHITE", "YELLOW",
];

/// `info`'s key column (`printf "%-20s %-25s"` in the plugins).
const INFO_KEY_WIDTH: usize = 20;
const CREATE_OPTIONS: &[&str] = &[
    "-i",
    "--image",
    "-I",
    "--image-version",
    "-p",
    "--password",
    "-r",
    "--root-password",
    "-c",
    "--config-options",
    "-m",
    "--memory",
    "-s",
    "--shm-size",
];
const LINK_SWITCHES: &[&str] = &["--no-restart"];
const LINK_OPTIONS: &[&str] = &["-a", "--alias", "-q", "--querystring"];

impl Service {
    fn spec(&self, switches: &'static [&'static str], options: &'static [&'static str]) -> Spec {
        Spec {
            command: self.plugin,
            switches,
            options,
        }
    }

    fn missing(&self, service: &str) -> Failure {
        Failure::msg(
            1,
            format!("{} service {service} does not exist", self.title),
        )
    }

    fn exists(&self, store: &Store, service: &str) -> bool {
        is_valid_name(service) && store.service_dir(self.plugin, service).is_dir()
    }

    /// The service argument: missing or invalid exits 1, unknown exits 1 with `<Title> service <s> does not exist`.
    fn require(&self, store: &Store, arg: Option<&String>) -> Result<String, Failure> {
        let service = arg.map_or("", String::as_str);
        if service.is_empty() {
            return Err(Failure::msg(
                1,
                "Please specify a valid name for the service",
            ));
        }
        if !self.exists(store, service) {
            return Err(self.missing(service));
        }
        Ok(service.to_string())
    }

    /// The URL the plugin puts in the linked app's config.
    pub fn url(&self, service: &str, password: &str) -> String {
        let host = format!("dokku-{}-{}", self.plugin, service.replace(['.', '_'], "-"));
        if self.plugin == "postgres" {
            let database = service.replace(['.', '-'], "_");
            format!("postgres://postgres:{password}@{host}:5432/{database}")
        } else {
            format!("redis://:{password}@{host}:6379")
        }
    }

    fn service_url(&self, store: &Store, service: &str) -> Result<String, Failure> {
        let password = store
            .service_file(self.plugin, service, "PASSWORD")?
            .unwrap_or_default();
        Ok(self.url(service, &password))
    }

    fn links(&self, store: &Store, service: &str) -> Result<Vec<String>, Failure> {
        Ok(store
            .service_file(self.plugin, service, "LINKS")?
            .unwrap_or_default()
            .lines()
            .filter(|line| !line.is_empty())
            .map(String::from)
            .collect())
    }

    fn set_links(&self, store: &Store, service: &str, links: &[String]) -> CmdResult {
        store.set_service_file(self.plugin, service, "LINKS", &links.join("\n"))
    }
}

/// `^[A-Za-z0-9_-]+$`
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The variable a link sets, given the app's config: `<ALIAS>_URL` (alias upper-cased, `-` → `_`; default
/// `DATABASE`/`REDIS`), or, if that is taken, `<alt>_<COLOR>_URL` for the first unused colour.
pub fn link_variable(service: &Service, alias: Option<&str>, env: &Env) -> String {
    let alias = alias
        .unwrap_or(service.default_alias)
        .to_uppercase()
        .replace('-', "_");
    let wanted = format!("{alias}_URL");
    if !env.contains_key(&wanted) {
        return wanted;
    }
    COLORS
        .iter()
        .map(|color| format!("{}_{color}_URL", service.alt_alias))
        .find(|name| !env.contains_key(name))
        .unwrap_or_else(|| format!("{}_{}_URL", service.alt_alias, COLORS[0]))
}

/// The app's config variables that hold this service's URL (with or without a query string).
fn linked_variables(env: &Env, url: &str) -> Vec<String> {
    let with_query = format!("{url}?");
    env.iter()
        .filter(|(_, value)| *value == url || value.starts_with(&with_query))
        .map(|(key, _)| key.clone())
        .collect()
}

/// `--no-restart` in the subcommand's flags or anywhere on the line (the plugins read `DOKKU_GLOBAL_FLAGS`).
fn no_restart(ctx: &Ctx, parsed: &Parsed) -> bool {
    parsed.has("--no-restart") || ctx.global_flags.iter().any(|flag| flag == "--no-restart")
}

pub fn create(ctx: &Ctx, service: &Service, args: &[String]) -> CmdResult {
    let parsed = args::parse(&service.spec(&[], CREATE_OPTIONS), args, None)?;
    let name = parsed.positionals.first().map_or("", String::as_str);
    if name.is_empty() {
        return Err(Failure::msg(
            1,
            "Please specify a valid name for the service",
        ));
    }
    if !is_valid_name(name) {
        return Err(Failure::msg(
            1,
            "Please specify a valid name for the service. Valid characters are: [A-Za-z0-9_-]+",
        ));
    }
    if service.exists(&ctx.store, name) {
        return Err(Failure::msg(
            1,
            format!("{} service {name} already exists", service.title),
        ));
    }
    let (secs, nanos) = util::now();
    let password = match parsed.value("--password").or(parsed.value("-p")) {
        Some(password) => password.to_string(),
        None => util::fake_hex(
            &format!(
                "{} {name} {secs}.{nanos} {}",
                service.plugin,
                std::process::id()
            ),
            32,
        ),
    };
    ctx.store
        .set_service_file(service.plugin, name, "PASSWORD", &password)?;
    ctx.store.set_service_file(
        service.plugin,
        name,
        "ID",
        &util::fake_hex(&format!("{name} {secs}.{nanos}"), 64),
    )?;
    ctx.store
        .set_service_file(service.plugin, name, "LINKS", "")?;
    ctx.out.info("Waiting for container to be ready");
    if service.plugin == "postgres" {
        ctx.out.info("Creating container database");
        ctx.out.info("Securing connection to database");
    }
    ctx.out
        .header(&format!("{} container created: {name}", service.title));
    Ok(())
}

pub fn exists(ctx: &Ctx, service: &Service, args: &[String]) -> CmdResult {
    let parsed = args::parse(&service.spec(&[], &[]), args, None)?;
    let name = service.require(&ctx.store, parsed.positionals.first())?;
    ctx.out.step(&format!("Service {name} exists"));
    Ok(())
}

pub fn list(ctx: &Ctx, service: &Service, args: &[String]) -> CmdResult {
    args::parse(&service.spec(&[], &[]), args, None)?;
    let names = ctx.store.services(service.plugin)?;
    ctx.out.header(&format!("{} services", service.title));
    if names.is_empty() {
        ctx.out
            .warn(&format!("There are no {} services", service.title));
    }
    for name in names {
        ctx.out.line(&name);
    }
    Ok(())
}

/// The service and the app of `<service> <app>` commands, checked in the plugins' order (service first).
fn service_and_app(
    ctx: &Ctx,
    service: &Service,
    parsed: &Parsed,
) -> Result<(String, String), Failure> {
    let name = service.require(&ctx.store, parsed.positionals.first())?;
    let app = ctx.require_app(parsed.positionals.get(1))?;
    Ok((name, app))
}

pub fn link(ctx: &Ctx, service: &Service, args: &[String]) -> CmdResult {
    let parsed = args::parse(&service.spec(LINK_SWITCHES, LINK_OPTIONS), args, None)?;
    let (name, app) = service_and_app(ctx, service, &parsed)?;
    let scope = Scope::App(app.clone());
    let mut env = ctx.store.env(&scope)?;
    let url = service.service_url(&ctx.store, &name)?;
    if let Some(existing) = linked_variables(&env, &url).first() {
        return Err(Failure::msg(1, format!("Already linked as {existing}")));
    }
    let alias = parsed.value("--alias").or(parsed.value("-a"));
    let variable = link_variable(service, alias, &env);
    let value = match parsed.value("--querystring").or(parsed.value("-q")) {
        Some(query) if !query.is_empty() => format!("{url}?{query}"),
        _ => url,
    };
    let mut links = service.links(&ctx.store, &name)?;
    if !links.contains(&app) {
        links.push(app.clone());
        links.sort();
        service.set_links(&ctx.store, &name, &links)?;
    }
    let mut set = Env::new();
    set.insert(variable.clone(), value.clone());
    ctx.out.step("Setting config vars");
    for line in config::pretty(&set) {
        ctx.out.info(&line);
    }
    env.insert(variable, value);
    ctx.store.write_env(&scope, &env)?;
    if no_restart(ctx, &parsed) {
        return Ok(());
    }
    deploy::restart_app(ctx, &app)
}

pub fn unlink(ctx: &Ctx, service: &Service, args: &[String]) -> CmdResult {
    let parsed = args::parse(&service.spec(LINK_SWITCHES, &[]), args, None)?;
    let (name, app) = service_and_app(ctx, service, &parsed)?;
    let mut links = service.links(&ctx.store, &name)?;
    if !links.contains(&app) {
        return Err(Failure::msg(1, format!("Not linked to app {app}")));
    }
    links.retain(|linked| *linked != app);
    service.set_links(&ctx.store, &name, &links)?;
    let scope = Scope::App(app.clone());
    let mut env = ctx.store.env(&scope)?;
    let url = service.service_url(&ctx.store, &name)?;
    for variable in linked_variables(&env, &url) {
        ctx.out.step(&format!("Unsetting {variable}"));
        env.remove(&variable);
    }
    ctx.store.write_env(&scope, &env)?;
    if no_restart(ctx, &parsed) {
        return Ok(());
    }
    deploy::restart_app(ctx, &app)
}

/// `linked <service> <app>`: exit 0 if linked, 1 if not.
pub fn linked(ctx: &Ctx, service: &Service, args: &[String]) -> CmdResult {
    let parsed = args::parse(&service.spec(&[], &[]), args, None)?;
    let (name, app) = service_and_app(ctx, service, &parsed)?;
    if service.links(&ctx.store, &name)?.contains(&app) {
        ctx.out.step(&format!("Service {name} is linked to {app}"));
        Ok(())
    } else {
        Err(Failure::msg(
            1,
            format!("Service {name} is not linked to {app}"),
        ))
    }
}

/// `links <service>`: the linked apps, one a line.
pub fn links(ctx: &Ctx, service: &Service, args: &[String]) -> CmdResult {
    let parsed = args::parse(&service.spec(&[], &[]), args, None)?;
    let name = service.require(&ctx.store, parsed.positionals.first())?;
    for app in service.links(&ctx.store, &name)? {
        ctx.out.line(&app);
    }
    Ok(())
}

/// `info <service> [--flag]` (bash layout, `%-20s`).
pub fn info(ctx: &Ctx, service: &Service, args: &[String]) -> CmdResult {
    let mut request = report::parse_request(service.plugin, args)?;
    let name = service.require(&ctx.store, request.positionals.first())?;
    let flags = info_flags(&ctx.store, service, &name)?;
    match std::mem::replace(&mut request.mode, report::Mode::Text) {
        report::Mode::Single(flag) => match flags.get(&flag) {
            Some(value) => ctx.out.line(value),
            None => return Err(report::invalid_flag(&flags)),
        },
        report::Mode::Json => ctx.out.line(&report::render_json(service.plugin, &flags)),
        report::Mode::Text => {
            ctx.out
                .header(&format!("{name} {} service information", service.plugin));
            for row in report::render_bash_rows(&flags, INFO_KEY_WIDTH) {
                ctx.out.info(&row);
            }
        }
    }
    Ok(())
}

fn info_flags(store: &Store, service: &Service, name: &str) -> Result<Flags, Failure> {
    let root = format!("/var/lib/dokku/services/{}/{name}", service.plugin);
    Ok(report::flags([
        ("--config-dir", format!("{root}/config")),
        ("--data-dir", format!("{root}/data")),
        ("--dsn", service.service_url(store, name)?),
        ("--exposed-ports", "-".to_string()),
        (
            "--id",
            store
                .service_file(service.plugin, name, "ID")?
                .unwrap_or_default(),
        ),
        ("--internal-ip", "172.17.0.2".to_string()),
        ("--links", service.links(store, name)?.join(" ")),
        ("--service-root", root.clone()),
        ("--status", "running".to_string()),
        ("--version", service.image_version.to_string()),
    ]))
}

/// `destroy <service> [-f|--force]`: refuses while apps are linked; without force, asks for the name on stdin.
pub fn destroy(ctx: &Ctx, service: &Service, args: &[String]) -> CmdResult {
    let parsed = args::parse(&service.spec(&["-f", "--force"], &[]), args, None)?;
    let name = service.require(&ctx.store, parsed.positionals.first())?;
    if !service.links(&ctx.store, &name)?.is_empty() {
        return Err(Failure::msg(1, "Cannot delete linked service"));
    }
    if !(ctx.force || parsed.has("-f") || parsed.has("--force")) {
        apps::confirm(
            ctx,
            &name,
            &format!(
                "This command will destroy {name} {} service.",
                service.title
            ),
        )?;
    }
    ctx.out.header(&format!("Deleting {name}"));
    ctx.store.remove_service(service.plugin, &name)?;
    ctx.out
        .header(&format!("{} container deleted: {name}", service.title));
    Ok(())
}

/// What `apps:destroy` does to services: the app leaves every `LINKS` list (the services and their data stay).
pub fn forget_app(store: &Store, app: &str) -> CmdResult {
    for service in [&POSTGRES, &REDIS] {
        for name in store.services(service.plugin)? {
            let mut links = service.links(store, &name)?;
            if links.contains(&app.to_string()) {
                links.retain(|linked| linked != app);
                service.set_links(store, &name, &links)?;
            }
        }
    }
    Ok(())
}
