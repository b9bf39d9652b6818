//! `apps:*`: create, exists, list, destroy, and the deploy lock file (`apps:lock`, `unlock`, `locked`), plus the
//! `apps:report` flags. Deploys themselves are in `deploy`.

use std::fs::OpenOptions;
use std::io::{BufRead, Write};

use crate::args::{self, Spec};
use crate::out::{CmdResult, Failure};
use crate::report::{self, Flags};
use crate::store::{self, Store};
use crate::{Ctx, domains, services, util};

/// Property plugin for app-level properties (`created-at`, `deploy-source`, `deploy-source-metadata`).
pub const PLUGIN: &str = "apps";

const CREATE: Spec = Spec {
    command: "apps:create",
    switches: &[],
    options: &[],
};
const EXISTS: Spec = Spec {
    command: "apps:exists",
    switches: &[],
    options: &[],
};
const LIST: Spec = Spec {
    command: "apps:list",
    switches: &[],
    options: &["--format"],
};
const DESTROY: Spec = Spec {
    command: "apps:destroy",
    switches: &["--force"],
    options: &[],
};
const LOCK: Spec = Spec {
    command: "apps:lock",
    switches: &[],
    options: &[],
};
const UNLOCK: Spec = Spec {
    command: "apps:unlock",
    switches: &[],
    options: &[],
};
const LOCKED: Spec = Spec {
    command: "apps:locked",
    switches: &[],
    options: &[],
};

pub fn create(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&CREATE, args, ctx.app.as_deref())?;
    let app = parsed.positionals.first().map(String::as_str).unwrap_or("");
    if app.is_empty() {
        return Err(Failure::msg(
            1,
            "Please specify an app to run the command on",
        ));
    }
    if !util::is_valid_app_name(app) {
        return Err(Failure::msg(1, util::APP_NAME_RULE));
    }
    if ctx.store.app_exists(app) {
        return Err(Failure::msg(1, "Name is already taken"));
    }
    ctx.out.step(&format!("Creating {app}..."));
    let dir = ctx.store.app_dir(app);
    store::create_parent(&dir)?;
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        // Another `apps:create` won the race.
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Failure::msg(1, "Name is already taken"));
        }
        Err(err) => return Err(Failure::io(format!("create {}", dir.display()), err)),
    }
    let (secs, _) = util::now();
    ctx.store
        .set_property(app, PLUGIN, "created-at", &secs.to_string())?;
    domains::setup_new_app(&ctx.store, app)
}

pub fn exists(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&EXISTS, args, ctx.app.as_deref())?;
    ctx.require_app(parsed.positionals.first()).map(drop)
}

pub fn list(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&LIST, args, None)?;
    let apps = ctx.store.apps()?;
    match parsed.value("--format").unwrap_or("stdout") {
        "json" => {
            let json =
                serde_json::to_string(&apps).map_err(|err| Failure::io("encode app list", err))?;
            ctx.out.line(&json);
        }
        "stdout" => {
            ctx.out.header("My Apps");
            if apps.is_empty() {
                ctx.out.warn("You haven't deployed any applications yet");
            }
            for app in &apps {
                ctx.out.line(app);
            }
        }
        other => {
            return Err(Failure::msg(
                1,
                format!("Invalid --format value specified: {other}"),
            ));
        }
    }
    Ok(())
}

pub fn destroy(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&DESTROY, args, ctx.app.as_deref())?;
    let app = ctx.require_app(parsed.positionals.first())?;
    if !(ctx.force || parsed.has("--force")) {
        confirm(
            ctx,
            &app,
            &format!("This command will destroy app {app} (including all add-ons)."),
        )?;
    }
    ctx.out
        .step(&format!("Destroying {app} (including all add-ons)"));
    // Services are unlinked; their data is kept.
    services::forget_app(&ctx.store, &app)?;
    ctx.store.remove_app(&app)
}

/// Dokku's destructive-action prompt: warnings (`what` says what goes) and `> ` on stderr, the name (`app`: an app
/// or a service) expected on stdin.
pub fn confirm(ctx: &Ctx, app: &str, what: &str) -> CmdResult {
    ctx.out.warn("WARNING: Potentially Destructive Action");
    ctx.out.warn(what);
    ctx.out.warn(&format!("To proceed, type \"{app}\""));
    let mut stderr = std::io::stderr().lock();
    let _ = write!(stderr, "\n> ");
    let _ = stderr.flush();
    drop(stderr);
    let mut answer = String::new();
    let read = std::io::stdin().lock().read_line(&mut answer);
    let _ = writeln!(std::io::stderr());
    match read {
        Ok(n) if n > 0 && answer.trim_end_matches(['\n', '\r']) == app => Ok(()),
        _ => Err(Failure::msg(
            1,
            format!("Confirmation did not match {app}. Aborted."),
        )),
    }
}

pub fn lock(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&LOCK, args, ctx.app.as_deref())?;
    let app = ctx.require_app(parsed.positionals.first())?;
    let path = ctx.store.lock_path(&app);
    store::create_parent(&path)?;
    // Like Dokku: the file is created but not flocked, so it does not block a deploy (which deletes it).
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|err| Failure::io(format!("create {}", path.display()), err))?;
    ctx.out.step("Deploy lock created");
    Ok(())
}

pub fn unlock(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&UNLOCK, args, ctx.app.as_deref())?;
    let app = ctx.require_app(parsed.positionals.first())?;
    ctx.out.warn("A deploy may be in progress.");
    ctx.out
        .warn("Removing the app lock will not stop in progress deploys.");
    match std::fs::remove_file(ctx.store.lock_path(&app)) {
        Ok(()) => {
            ctx.out.step("Deploy lock removed");
            Ok(())
        }
        Err(_) => Err(Failure::msg(1, "Unable to remove deploy lock")),
    }
}

pub fn locked(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&LOCKED, args, ctx.app.as_deref())?;
    let app = ctx.require_app(parsed.positionals.first())?;
    if ctx.store.lock_path(&app).exists() {
        ctx.out.line("Deploy lock exists");
        Ok(())
    } else {
        Err(Failure::msg(1, "Deploy lock does not exist"))
    }
}

/// `apps:report` flags.
pub fn report_flags(store: &Store, app: &str) -> Result<Flags, Failure> {
    let property = |key: &str| -> Result<String, Failure> {
        Ok(store.property(app, PLUGIN, key)?.unwrap_or_default())
    };
    let locked = store.lock_path(app).exists();
    Ok(report::flags([
        ("--app-created-at", property("created-at")?),
        ("--app-deploy-source", property("deploy-source")?),
        (
            "--app-deploy-source-metadata",
            property("deploy-source-metadata")?,
        ),
        ("--app-dir", store.app_dir(app).display().to_string()),
        ("--app-locked", locked.to_string()),
    ]))
}
