//! `fake-dokku`: the Dokku CLI stand-in that Flotilla's tests and local dev fleet run instead of `dokku`. It
//! reproduces the argument syntax, exit codes, output lines and state effects listed in `shared/dokku.md`, keeps
//! all state under `$DOKKU_ROOT`, and runs no containers. `fake-dokku --help` documents it, including the
//! failure injection (by image name, and per host by files under `$DOKKU_ROOT/.standin/`: `fail-images` (their
//! `git:from-image` fails its checks like an `unhealthy` one), `fail-restarts` (apps whose restarts fail),
//! `certs/<app>` (a seeded certificate with a chosen expiry), `letsencrypt-version` (the simulated plugin version,
//! default 0.25.1), `letsencrypt-fail`); this file owns the global flags and the command table.

mod apps;
mod args;
mod certs;
mod config;
mod deploy;
mod domains;
mod letsencrypt;
mod logs;
mod out;
mod report;
mod services;
mod store;
#[cfg(test)]
mod tests;
mod util;

use std::process::ExitCode;

use out::{CmdResult, Failure, Out};
use store::Store;

/// The version real Dokku would print; the facts in dokku.md are from this release.
const DOKKU_VERSION: &str = "0.38.27";

/// Everything a command needs.
pub struct Ctx {
    pub store: Store,
    pub out: Out,
    /// `--app X` before the command: the app for commands that take one.
    pub app: Option<String>,
    /// `--force` before the command: skips the `apps:destroy` confirmation.
    pub force: bool,
    /// Every `--…` argument anywhere on the line (Dokku's `DOKKU_GLOBAL_FLAGS`): the service plugins read
    /// `--no-restart` from here.
    pub global_flags: Vec<String>,
}

impl Ctx {
    /// The context of one invocation: `argv` is the whole command line, `globals` its leading flags.
    pub fn new(store: Store, out: Out, globals: Globals, argv: &[String]) -> Self {
        Self {
            store,
            out,
            app: globals.app,
            force: globals.force,
            global_flags: argv
                .iter()
                .filter(|arg| arg.starts_with("--"))
                .cloned()
                .collect(),
        }
    }

    /// The app argument, checked like Dokku's `VerifyAppName`: missing or invalid exits 1, unknown exits 20.
    pub fn require_app(&self, arg: Option<&String>) -> Result<String, Failure> {
        let app = arg.map_or("", String::as_str);
        if app.is_empty() {
            return Err(Failure::msg(
                1,
                "Please specify an app to run the command on",
            ));
        }
        if !util::is_valid_app_name(app) {
            return Err(Failure::msg(1, util::APP_NAME_RULE));
        }
        if !self.store.app_exists(app) {
            return Err(Failure::msg(20, format!("App {app} does not exist")));
        }
        Ok(app.to_string())
    }
}

/// The leading global flags (dokku.md §1).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Globals {
    pub quiet: bool,
    pub force: bool,
    pub app: Option<String>,
}

/// Strips the leading `--…` arguments like the `dokku` script: `--quiet`, `--force` and `--app X` are read,
/// any other leading `--flag` is dropped; `--help` and `--version` are left as the command.
pub fn strip_globals(argv: &[String]) -> (Globals, &[String]) {
    let mut globals = Globals::default();
    let mut i = 0;
    while let Some(arg) = argv.get(i) {
        match arg.as_str() {
            "--help" | "--version" => break,
            "--quiet" => globals.quiet = true,
            "--force" => globals.force = true,
            "--app" => {
                globals.app = argv.get(i + 1).cloned();
                i += 1;
            }
            other if other.starts_with("--") => {}
            _ => break,
        }
        i += 1;
    }
    (globals, argv.get(i..).unwrap_or_default())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let code = run(&argv);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Runs one invocation and returns its exit code.
fn run(argv: &[String]) -> i32 {
    let (globals, rest) = strip_globals(argv);
    let command = rest.first().map_or("help", String::as_str);
    let args = rest.get(1..).unwrap_or_default();
    let out = Out::new(globals.quiet);
    let is_help = matches!(command, "help" | "--help" | "-h" | "version" | "--version");

    let store = match Store::from_env() {
        Ok(store) => Some(store),
        Err(_) if is_help => None,
        Err(failure) => return finish(Err(failure)),
    };
    if let Some(store) = &store
        && let Err(failure) = store.log_invocation(argv)
    {
        return finish(Err(failure));
    }
    if is_help {
        print_help_or_version(&out, command);
        return 0;
    }
    if let Some(code) = injected_exit_code() {
        return finish(Err(Failure::msg(
            code,
            format!("(fake-dokku) FAKE_DOKKU_EXIT_CODE={code}: failing {command}"),
        )));
    }
    let Some(store) = store else {
        return 1;
    };
    let ctx = Ctx::new(store, out, globals, argv);
    finish(dispatch(&ctx, command, args))
}

fn finish(result: CmdResult) -> i32 {
    match result {
        Ok(()) => 0,
        Err(failure) => {
            failure.print();
            failure.code
        }
    }
}

/// `FAKE_DOKKU_EXIT_CODE=N` (N ≠ 0): every command but help/version fails with N.
fn injected_exit_code() -> Option<i32> {
    let code: i32 = std::env::var("FAKE_DOKKU_EXIT_CODE")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (code != 0).then_some(code)
}

fn dispatch(ctx: &Ctx, command: &str, args: &[String]) -> CmdResult {
    match command {
        "apps:create" => apps::create(ctx, args),
        "apps:exists" => apps::exists(ctx, args),
        "apps:list" => apps::list(ctx, args),
        "apps:destroy" => apps::destroy(ctx, args),
        "apps:lock" => apps::lock(ctx, args),
        "apps:unlock" => apps::unlock(ctx, args),
        "apps:locked" => apps::locked(ctx, args),
        "apps:report" => report::run(ctx, args, "apps", "app", apps::report_flags),
        "git:from-image" => deploy::from_image(ctx, args),
        "git:report" => report::run(ctx, args, "git", "git", deploy::git_report_flags),
        "ps:rebuild" => deploy::rebuild(ctx, args),
        "ps:restart" => deploy::restart(ctx, args),
        "ps:start" => deploy::start(ctx, args),
        "ps:stop" => deploy::stop(ctx, args),
        "ps:report" => report::run(ctx, args, "ps", "ps", deploy::ps_report_flags),
        "config:set" => config::set(ctx, args),
        "config:unset" => config::unset(ctx, args),
        "config:get" => config::get(ctx, args),
        "config:show" => config::show(ctx, args),
        "config:keys" => config::keys(ctx, args),
        "config:export" => config::export(ctx, args),
        "domains:add" => domains::add(ctx, args),
        "domains:set" => domains::set(ctx, args),
        "domains:remove" => domains::remove(ctx, args),
        "domains:clear" => domains::clear(ctx, args),
        "domains:reset" => domains::reset(ctx, args),
        "domains:set-global" => domains::set_global(ctx, args),
        "domains:add-global" => domains::add_global(ctx, args),
        "domains:remove-global" => domains::remove_global(ctx, args),
        "domains:clear-global" => domains::clear_global(ctx, args),
        "domains:report" => report::run_with_global(
            ctx,
            args,
            "domains",
            "domains",
            domains::report_flags,
            domains::global_report_flags,
        ),
        "certs:add" => certs::add(ctx, args),
        "certs:remove" => certs::remove(ctx, args),
        "certs:report" => report::run(ctx, args, "certs", "ssl", certs::report_flags),
        "letsencrypt:set" => letsencrypt::set(ctx, args),
        "letsencrypt:enable" => letsencrypt::enable(ctx, args),
        "letsencrypt:disable" => letsencrypt::disable(ctx, args),
        "letsencrypt:active" => letsencrypt::active(ctx, args),
        "letsencrypt:cron-job" => letsencrypt::cron_job(ctx, args),
        "letsencrypt:list" => letsencrypt::list(ctx, args),
        "letsencrypt:report" => letsencrypt::report(ctx, args),
        "logs" => logs::logs(ctx, args),
        other => match other.split_once(':') {
            Some(("postgres", sub)) => service_command(ctx, &services::POSTGRES, sub, args),
            Some(("redis", sub)) => service_command(ctx, &services::REDIS, sub, args),
            _ => Err(unknown_command(other)),
        },
    }
}

/// `<plugin>:<sub>` of the postgres and redis plugins.
fn service_command(
    ctx: &Ctx,
    service: &services::Service,
    sub: &str,
    args: &[String],
) -> CmdResult {
    match sub {
        "create" => services::create(ctx, service, args),
        "exists" => services::exists(ctx, service, args),
        "list" => services::list(ctx, service, args),
        "link" => services::link(ctx, service, args),
        "unlink" => services::unlink(ctx, service, args),
        "linked" => services::linked(ctx, service, args),
        "links" => services::links(ctx, service, args),
        "info" => services::info(ctx, service, args),
        "destroy" => services::destroy(ctx, service, args),
        _ => Err(unknown_command(&format!("{}:{sub}", service.plugin))),
    }
}

/// What Dokku says for a command no plugin provides (exit 1).
pub fn unknown_command(command: &str) -> Failure {
    Failure::msgs(
        1,
        [
            format!("`{command}` is not a dokku command."),
            "See `dokku help` for a list of available commands.".to_string(),
        ],
    )
}

fn print_help_or_version(out: &Out, command: &str) {
    if matches!(command, "version" | "--version") {
        out.line(&format!("dokku version {DOKKU_VERSION}"));
        return;
    }
    for line in HELP.replace("{version}", DOKKU_VERSION).lines() {
        out.line(line);
    }
}

const HELP: &str = r#"fake-dokku: a stand-in for the Dokku CLI (it answers `dokku version {version}`), used by Flotilla's tests
and dev fleet. It reproduces Dokku's exit codes, output lines and state effects (see shared/dokku.md), keeps
all state under $DOKKU_ROOT, and runs, pulls and serves nothing.

Usage: dokku [--quiet] [--trace] [--force] [--app APP] COMMAND [ARGS...]

Global flags (only leading ones are read; other leading --flags are dropped):
    --quiet      hide `=====>` headers (values and errors are still printed)
    --trace      accepted, ignored
    --force      skip the apps:destroy confirmation
    --app APP    supply APP to commands that take an app

Commands:
    help, --help                               this text
    version                                    dokku version {version}
    apps:create <app>                          vhost <app>.<global domain>, or config NO_VHOST=1
    apps:exists <app>                          exit 0, or 20 if missing
    apps:list [--format json]
    apps:destroy [--force] <app>               without --force, type the app name on stdin
    apps:lock <app> | apps:unlock <app> | apps:locked <app>
    apps:report [<app>] [--flag | --format json]
    git:from-image [--build-dir DIR] [--force] <app> <image> [<git-name> <git-email>]
    git:report [<app>] [--flag | --format json]
    ps:rebuild (<app> | --all)                 rebuild the deploy branch head image
    ps:restart (<app> | --all) | ps:start (<app> | --all) | ps:stop (<app> | --all)
    ps:report [<app>] [--flag | --format json]
    config:set [--encoded] [--no-restart] (<app> | --global) KEY=VALUE...
    config:unset [--no-restart] (<app> | --global) KEY...
    config:get [--quoted] (<app> | --global) KEY         missing key: exit 1, no output
    config:show | config:keys [--merged] (<app> | --global)
    config:export [--format exports|envfile|json|json-list|shell|docker-args|pretty] [--merged] (<app> | --global)
    domains:add | domains:set | domains:remove <app> DOMAIN...
    domains:clear | domains:reset <app>
    domains:set-global | domains:add-global | domains:remove-global DOMAIN...
    domains:clear-global
    domains:report [<app> | --global] [--flag | --format json]
    logs <app> [-n|--num N] [-t|--tail] [-q|--quiet] [-p|--ps PROC]    --tail prints and exits
    certs:add <app> CRT KEY                    no X.509 parsing: a CRT in the seed format below gives the
                                               facts, any other is self-signed for the app's domains, 1 year
    certs:remove <app>                         none: ` !     An app-specific SSL endpoint is not defined`, exit 1
    certs:report [<app>] [--ssl-enabled|--ssl-expires-at|--ssl-hostnames|--ssl-issuer|--ssl-verified
                 | --format json]              expires-at as openssl prints it: `Feb 26 13:17:52 2027 GMT`
    letsencrypt:set (<app> | --global) email|server|graceperiod|dns-provider [VALUE]   (plugin 0.20.0+)
    letsencrypt:enable (<app> [--force] | --all)   needs domains, an e-mail and a deployed app; issues a
                                               90-day certificate (certs:report shows it); from plugin 0.25.0
                                               a valid one outside the grace period (30 days) is not renewed
                                               without --force (`Certificate is still valid ...`, exit 0)
    letsencrypt:disable <app> | letsencrypt:active <app> (true/false, exit 0) | letsencrypt:list
    letsencrypt:cron-job [--add | --remove]    | letsencrypt:report [<app>] [--flag | --format json]
    postgres:* | redis:*  create <svc> | exists <svc> (exit 0, or 1: ` !     Postgres service <svc> does not
                          exist`) | list | link <svc> <app> [-a|--alias A] [-q|--querystring Q] [--no-restart]
                          | unlink <svc> <app> [--no-restart] | linked <svc> <app> (exit 0/1) | links <svc>
                          | info <svc> [--dsn|--status|--version|...] | destroy <svc> [-f|--force]
                          A link sets DATABASE_URL / REDIS_URL (or <ALIAS>_URL), else the first unused
                          DOKKU_POSTGRES_<COLOR>_URL / DOKKU_REDIS_<COLOR>_URL (AQUA, BLACK, BLUE, ...; real
                          plugins pick a random unused colour), and restarts a deployed app unless
                          --no-restart is anywhere on the line (ps:restart's exit code is the link's).

Exit codes: 0 ok; 1 failure (also an unknown command); 20 app does not exist; 2 unknown --flag.

Failure injection, chosen by the image reference given to git:from-image (and by the app's current image
for ps:rebuild, ps:restart, ps:start and the restart after config:set/config:unset):
    contains "missing"    the pull fails: ` !     Failed to pull image: <image>` on stderr, exit 1, nothing
                          changes (git:from-image only; the other commands do not pull)
    contains "unhealthy"  pull and build succeed, then the zero-downtime checks fail: `Running healthcheck
                          name='ready' attempts=3 ...`, `Failure in name='ready': ...`, the container output
                          between `=====> Start of <app> container output (web.1)` and `=====> End of <app>
                          container output (web.1)`, then ` !     Could not start due to 1 failed checks (web.1)`;
                          exit 1. The previous release stays deployed (deploy-source-metadata unchanged), the
                          deploy branch is reset (retrying the same image deploys it again), and
                          git:report --git-source-image names the failed image.
    contains "hang"       after the pull and build lines, prints
                          `-----> (fake-dokku) waiting for $DOKKU_ROOT/.fake-dokku/release` and polls every 20 ms
                          until that file exists, deletes it (one file releases one waiting deploy) and goes on.
                          Gives up with exit 1 after $FAKE_DOKKU_HANG_TIMEOUT_SECS (default 600).
    The rules combine: "hang-unhealthy" waits, then fails its checks.
    $DOKKU_ROOT/.standin/fail-images (per host; read at every git:from-image): one image reference a line, blank
                          lines and `#` comments ignored. git:from-image of an image listed there (exact match)
                          fails its checks exactly like an "unhealthy" one: same lines, exit 1, the previous
                          release keeps running. ps:rebuild/restart/start are not affected by the list.
    $DOKKU_ROOT/.standin/fail-restarts (per host; read at every restart): app names, same list format. Every
                          restart of a listed app fails its checks like an "unhealthy" deploy: ps:restart,
                          ps:start, ps:rebuild exit 1; service links/unlinks exit 1; config:set/config:unset
                          without --no-restart only warn ` !     Failure while restarting app: exit status 1`
                          and exit 0, as Dokku does.
    $DOKKU_ROOT/.standin/certs/<app>: a certificate for <app>, installed (as by certs:add) by the next command
                          that looks at the app's certificate, then deleted. `key=value` lines: expires-at and
                          starts-at (Unix seconds), hostnames (space-separated; default: the app's domains),
                          issuer (default `CN = <first domain>`), verified (default `self signed`), letsencrypt
                          (true: issued by letsencrypt:enable, so letsencrypt:active says true).
    $DOKKU_ROOT/.standin/letsencrypt-version: the simulated dokku-letsencrypt version (default 0.25.1). Before
                          0.20.0 letsencrypt:set is unknown (exit 1) and the e-mail is config
                          DOKKU_LETSENCRYPT_EMAIL; before 0.25.0 every letsencrypt:enable asks Let's Encrypt.
    $DOKKU_ROOT/.standin/letsencrypt-fail: app names; letsencrypt:enable of a listed app fails
                          (` !     Failed to setup letsencrypt`, exit 1).
    FAKE_DOKKU_EXIT_CODE=N (N != 0): every command but help/version is logged, then fails with exit N.
    A deploy holds an exclusive flock on the app's .deploy.lock: a second deploy of the same app meanwhile
    prints ` !     <app> currently has a deploy lock in place. Exiting...` and exits 1. As in real Dokku,
    apps:lock only creates the file and does not block deploys.
    Output lines are flushed one by one; if the reader goes away, a deploy still runs to its end.

State under $DOKKU_ROOT (files are replaced atomically):
    VHOST, ENV                       global domains (one a line), global config
    <app>/                           one directory per app: the app exists iff it does
    <app>/ENV, <app>/VHOST           app config (export KEY='value' lines), app domains (one a line)
    .fake-dokku/invocations.jsonl    one JSON array of the arguments per invocation
    .fake-dokku/environment.jsonl    one JSON array of the environment variable names per invocation
    .fake-dokku/images/              images pulled once ("on the host")
    .fake-dokku/release              create it to release a "hang" deploy
    .standin/fail-images             images whose git:from-image fails its checks on this host (written by tests)
    .standin/fail-restarts, .standin/certs/<app>, .standin/letsencrypt-version, .standin/letsencrypt-fail
                                     the other injection files (above)
    .fake-dokku/restarts.jsonl       one ["<app>","ok"|"failed"] line per restart of a deployed app, whatever ran it
    .fake-dokku/letsencrypt-requests one "<app> <domains>" line per certificate request to "Let's Encrypt"
    .fake-dokku/letsencrypt-cron     exists while the auto-renew cron job is installed
    .fake-dokku/services/<plugin>/<svc>/   PASSWORD, ID, LINKS (linked apps, one a line): the service exists iff
                                     the directory does
    .fake-dokku/global/properties/<plugin>/<key>   global properties (letsencrypt:set --global)
    <app>/tls/server.crt, server.key the app's certificate files; its facts are properties/certs/*
    .fake-dokku/apps/<app>/          .deploy.lock, app.log (for logs), properties/<plugin>/<key>
                                     (apps: created-at, deploy-source, deploy-source-metadata; git: head-image,
                                     source-image, last-updated-at; ps: deployed, running, image, container-id)"#;
