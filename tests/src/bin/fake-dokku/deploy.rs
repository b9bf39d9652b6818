//! Deploys: `git:from-image`, `ps:rebuild|restart|start|stop` and the release-and-deploy tail they share; the deploy
//! lock; the failure injection chosen by image name (`missing`, `unhealthy`, `hang`) or, per host, by the list in
//! `$DOKKU_ROOT/.standin/fail-images` (`git:from-image`) and `.standin/fail-restarts` (restarts); the `ps:report`
//! and `git:report` flags. The app's git repository is reduced to one property: the image at the deploy branch's head.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::args::{self, Spec};
use crate::out::{CmdResult, Failure};
use crate::report::{self, Flags};
use crate::store::{self, Store};
use crate::{Ctx, apps, domains, util};

/// Property plugins (directories under `.fake-dokku/apps/<app>/properties/`).
const GIT: &str = "git";
const PS: &str = "ps";
/// The image committed at the head of the deploy branch: what `ps:rebuild` builds, and what "No changes
/// detected" compares with.
const HEAD_IMAGE: &str = "head-image";

/// How long a `hang` deploy waits for the release file unless `FAKE_DOKKU_HANG_TIMEOUT_SECS` says otherwise, so a
/// forgotten test does not leave a process behind for ever.
const DEFAULT_HANG_TIMEOUT: Duration = Duration::from_secs(600);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

const FROM_IMAGE: Spec = Spec {
    command: "git:from-image",
    switches: &["--force"],
    options: &["--build-dir"],
};
const REBUILD: Spec = Spec {
    command: "ps:rebuild",
    switches: &["--all"],
    options: &["--parallel"],
};
const RESTART: Spec = Spec {
    command: "ps:restart",
    switches: &["--all"],
    options: &["--parallel"],
};
const START: Spec = Spec {
    command: "ps:start",
    switches: &["--all"],
    options: &["--parallel"],
};
const STOP: Spec = Spec {
    command: "ps:stop",
    switches: &["--all"],
    options: &["--parallel"],
};

/// Failure injection, chosen by substrings of the image reference and, for `git:from-image`, by the host's
/// fail list (documented in `--help`).
#[derive(Debug, PartialEq, Eq)]
pub struct Injection {
    pub missing: bool,
    pub unhealthy: bool,
    pub hang: bool,
}

impl Injection {
    pub fn for_image(image: &str) -> Self {
        Self {
            missing: image.contains("missing"),
            unhealthy: image.contains("unhealthy"),
            hang: image.contains("hang"),
        }
    }

    /// For `git:from-image` on a host whose fail list is `fail_images`: an image listed there (exactly) fails its
    /// checks as an `unhealthy` one does.
    pub fn for_deploy(image: &str, fail_images: &[String]) -> Self {
        let mut injection = Self::for_image(image);
        injection.unhealthy |= fail_images.iter().any(|listed| listed == image);
        injection
    }
}

/// The exclusive `flock` a deploy holds on `.deploy.lock` for its whole run. Dropping it deletes the file, as
/// Dokku does at the end of a deploy, and the kernel drops the lock if the process dies.
struct DeployLock {
    path: PathBuf,
    file: File,
}

impl DeployLock {
    fn acquire(store: &Store, app: &str) -> Result<Self, Failure> {
        let path = store.lock_path(app);
        store::create_parent(&path)?;
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|err| Failure::io(format!("open {}", path.display()), err))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    return Err(Failure::msgs(
                        1,
                        [
                            format!("{app} currently has a deploy lock in place. Exiting..."),
                            "Run 'apps:unlock' to release the existing deploy lock".to_string(),
                        ],
                    ));
                }
                Err(TryLockError::Error(err)) => {
                    return Err(Failure::io(format!("lock {}", path.display()), err));
                }
            }
            // The previous holder may have deleted the file between our open and our lock; then we hold a lock
            // on a file nobody else can see, so take the one at the path instead.
            if same_file(&file, &path) {
                return Ok(Self { path, file });
            }
        }
    }
}

impl Drop for DeployLock {
    fn drop(&mut self) {
        // Only delete the file if it is still ours (`apps:unlock` may have removed it and a new deploy made another).
        if same_file(&self.file, &self.path) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(held), Ok(named)) => held.dev() == named.dev() && held.ino() == named.ino(),
        _ => false,
    }
}

/// Whether the app has a deployed release (`ps:report --deployed`).
pub fn is_deployed(store: &Store, app: &str) -> Result<bool, Failure> {
    Ok(store.property(app, PS, "deployed")?.as_deref() == Some("true"))
}

/// The image of the deployed release, if there is one.
fn current_image(store: &Store, app: &str) -> Result<Option<String>, Failure> {
    if !is_deployed(store, app)? {
        return Ok(None);
    }
    store.property(app, PS, "image")
}

/// A 40-hex fake commit sha for the commit `FROM <image>`.
pub fn fake_sha(image: &str) -> String {
    util::fake_hex(&format!("commit FROM {image}"), 40)
}

/// `git:from-image [--build-dir DIR] [--force] <app> <image> [<git-name> <git-email>]` (dokku.md §3).
pub fn from_image(ctx: &Ctx, args: &[String]) -> CmdResult {
    let parsed = args::parse(&FROM_IMAGE, args, ctx.app.as_deref())?;
    let app = ctx.require_app(parsed.positionals.first())?;
    let image = match parsed.positionals.get(1) {
        Some(image) if !image.is_empty() => image.clone(),
        _ => return Err(Failure::msg(1, "Please specify a docker image")),
    };
    if let Some(dir) = parsed.value("--build-dir")
        && !Path::new(dir).is_dir()
    {
        return Err(Failure::msg(
            1,
            format!("Invalid build directory specified: {dir}"),
        ));
    }
    let (store, out) = (&ctx.store, &ctx.out);
    let _lock = DeployLock::acquire(store, &app)?;
    // Read at every deploy, so a test can change it between deploys.
    let injection = Injection::for_deploy(&image, &store.fail_images()?);

    out.step("Generating build context");
    if parsed.has("--force") || !store.image_on_host(&image) {
        out.step("Pulling image");
        if injection.missing {
            return Err(Failure::msg(1, format!("Failed to pull image: {image}")));
        }
        let (repo, tag) = util::split_image_ref(&image);
        out.line(&format!("{tag}: Pulling from {repo}"));
        out.line(&format!("Digest: sha256:{}", util::fake_hex(&image, 64)));
        out.line(&format!("Status: Downloaded newer image for {image}"));
        out.line(&image);
        store.add_image(&image)?;
    } else {
        out.step("Image exists on host, skipping pull");
    }

    out.step("Updating git repository with specified build context");
    let previous_head = store.property(&app, GIT, HEAD_IMAGE)?;
    if previous_head.as_deref() == Some(image.as_str()) {
        return Err(Failure::msgs(
            1,
            [
                "No changes detected, skipping git commit".to_string(),
                "Call 'ps:rebuild' on app to rebuild the app from existing source".to_string(),
            ],
        ));
    }
    // Written before deploying, so it names a failed image too.
    store.set_property(&app, GIT, "source-image", &image)?;
    commit(store, &app, Some(&image))?;

    build(ctx, &app, &image);
    if let Err(failure) = release_and_deploy(ctx, &app, &image, true, &injection) {
        // Like Dokku (#5538): a failed deploy resets the deploy branch, so the same image can be retried.
        commit(store, &app, previous_head.as_deref())?;
        return Err(failure);
    }
    Ok(())
}

/// Moves the deploy branch head to `image` (`None`: no commits).
fn commit(store: &Store, app: &str, image: Option<&str>) -> CmdResult {
    match image {
        Some(image) => {
            store.set_property(app, GIT, HEAD_IMAGE, image)?;
            store.set_property(app, GIT, "last-updated-at", &util::now().0.to_string())
        }
        None => store.delete_property(app, GIT, HEAD_IMAGE),
    }
}

/// The docker build of the one-line Dockerfile `FROM <image>`.
fn build(ctx: &Ctx, app: &str, image: &str) {
    let out = &ctx.out;
    out.step("Cleaning up...");
    out.step(&format!("Building {app} from Dockerfile"));
    out.line("#0 building with \"default\" instance using docker driver");
    out.line("#1 [internal] load build definition from Dockerfile");
    out.line("#1 transferring dockerfile: 112B done");
    out.line(&format!("#2 [1/1] FROM {image}"));
    out.line("#3 exporting to image");
    out.line(&format!("#3 naming to docker.io/dokku/{app}:latest done"));
}

/// Waits until the release file exists, then deletes it: one file lets one waiting deploy go on.
fn wait_for_release(ctx: &Ctx) -> CmdResult {
    let release = ctx.store.release_path();
    ctx.out
        .step(&format!("(fake-dokku) waiting for {}", release.display()));
    let timeout = std::env::var("FAKE_DOKKU_HANG_TIMEOUT_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map_or(DEFAULT_HANG_TIMEOUT, Duration::from_secs);
    let deadline = Instant::now() + timeout;
    loop {
        match fs::remove_file(&release) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == ErrorKind::NotFound => {}
            Err(err) => return Err(Failure::io(format!("remove {}", release.display()), err)),
        }
        if Instant::now() >= deadline {
            let secs = timeout.as_secs();
            return Err(Failure::msg(
                1,
                format!(
                    "(fake-dokku) gave up waiting for {} after {secs}s",
                    release.display()
                ),
            ));
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Release, start a new web container, run its checks, switch traffic: the shared end of every deploy. On success
/// the release is recorded (and, with `record_source`, `deploy-source=docker-image` and its metadata); on failure
/// nothing about the deployed release changes.
fn release_and_deploy(
    ctx: &Ctx,
    app: &str,
    image: &str,
    record_source: bool,
    injection: &Injection,
) -> CmdResult {
    if injection.hang {
        wait_for_release(ctx)?;
    }
    let (store, out) = (&ctx.store, &ctx.out);
    out.step(&format!("Releasing {app}..."));
    out.step("Checking for predeploy task");
    out.info("No predeploy task found, skipping");
    out.step("Checking for release task");
    out.info("No release task found, skipping");
    out.step(&format!(
        "Deploying {app} via the docker-local scheduler..."
    ));
    out.step("Deploying web (count=1)");
    out.info("Attempting pre-flight checks (web.1)");

    let (secs, nanos) = util::now();
    let container_id = util::fake_hex(
        &format!("{app} {image} {secs}.{nanos} {}", std::process::id()),
        64,
    );
    let short_id = container_id.get(..11).unwrap_or(&container_id);
    if injection.unhealthy {
        out.info("Running healthcheck name='ready' attempts=3 path='/health' retries=2 timeout=5 type='path' wait=5 (web.1)");
        out.info("Failure in name='ready': unexpected http status 503 from GET /health after 3 attempts (web.1)");
        out.line(&container_id);
        out.header(&format!("Start of {app} container output (web.1)"));
        out.line(&format!(
            "(fake-dokku) container {short_id} started from {image}"
        ));
        out.line("Listening on 0.0.0.0:5000");
        out.line("GET /health 503 Service Unavailable: not ready");
        out.header(&format!("End of {app} container output (web.1)"));
        return Err(Failure::msg(
            1,
            "Could not start due to 1 failed checks (web.1)",
        ));
    }
    out.info("Running healthcheck name='default' type='uptime' uptime=10 (web.1)");
    out.info("Healthcheck succeeded name='default' (web.1)");

    store.set_property(app, PS, "container-id", &container_id)?;
    store.set_property(app, PS, "image", image)?;
    store.set_property(app, PS, "deployed", "true")?;
    store.set_property(app, PS, "running", "true")?;
    if record_source {
        store.set_property(app, apps::PLUGIN, "deploy-source", "docker-image")?;
        store.set_property(app, apps::PLUGIN, "deploy-source-metadata", image)?;
    }
    let stamp = util::rfc3339(secs, nanos);
    store.append_log(
        app,
        &[
            format!("{stamp} app[web.1]: (fake-dokku) container {short_id} started from {image}"),
            format!("{stamp} app[web.1]: Listening on 0.0.0.0:5000"),
        ],
    )?;

    out.step("Running post-deploy");
    let vhosts = domains::served_vhosts(store, app)?;
    domains::print_proxy_rebuild(out, &vhosts);
    out.step("Checking for postdeploy task");
    out.info("No postdeploy task found, skipping");
    out.step("Shutting down old containers in 60 seconds");
    out.header("Application deployed:");
    for vhost in &vhosts {
        out.info(&format!("http://{vhost}"));
    }
    Ok(())
}

/// Runs `one` for the app argument, or for every app with `--all`.
fn each_app(
    ctx: &Ctx,
    spec: &Spec,
    args: &[String],
    one: fn(&Ctx, &str) -> CmdResult,
) -> CmdResult {
    let parsed = args::parse(spec, args, ctx.app.as_deref())?;
    if !parsed.has("--all") {
        let app = ctx.require_app(parsed.positionals.first())?;
        return one(ctx, &app);
    }
    let apps = ctx.store.apps()?;
    if apps.is_empty() {
        ctx.out.warn("You haven't deployed any applications yet");
    }
    let mut code = 0;
    for app in apps {
        if let Err(failure) = one(ctx, &app) {
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

pub fn rebuild(ctx: &Ctx, args: &[String]) -> CmdResult {
    each_app(ctx, &REBUILD, args, rebuild_one)
}

fn rebuild_one(ctx: &Ctx, app: &str) -> CmdResult {
    let Some(image) = ctx.store.property(app, GIT, HEAD_IMAGE)? else {
        ctx.out.step(
            "WARNING: Cannot build from 'master' as there are no commits stored at that branch.",
        );
        return Err(Failure::silent(1));
    };
    let _lock = DeployLock::acquire(&ctx.store, app)?;
    build(ctx, app, &image);
    let injection = restart_injection(&ctx.store, app, &image)?;
    release_and_deploy(ctx, app, &image, true, &injection)
}

/// The injection for a restart of `app` from `image` (`ps:restart`, `ps:start`, `ps:rebuild`, and the restarts
/// after `config:set`/`config:unset` and service links): by the image's name, and, per host, by the apps listed in
/// `$DOKKU_ROOT/.standin/fail-restarts` (read at every restart), whose restarts fail their checks.
fn restart_injection(store: &Store, app: &str, image: &str) -> Result<Injection, Failure> {
    let mut injection = Injection::for_image(image);
    injection.unhealthy |= store
        .standin_list(FAIL_RESTARTS)?
        .iter()
        .any(|listed| listed == app);
    Ok(injection)
}

/// `.standin/fail-restarts`: apps whose restarts fail their checks on this host.
pub const FAIL_RESTARTS: &str = "fail-restarts";

pub fn restart(ctx: &Ctx, args: &[String]) -> CmdResult {
    each_app(ctx, &RESTART, args, restart_app)
}

/// `ps:restart <app>`: redeploys the current image; an app never deployed only gets a warning (exit 0). Also what
/// the service plugins run after a link without `--no-restart`.
pub fn restart_app(ctx: &Ctx, app: &str) -> CmdResult {
    let Some(image) = current_image(&ctx.store, app)? else {
        ctx.out.warn(&format!("App {app} has not been deployed"));
        return Ok(());
    };
    let _lock = DeployLock::acquire(&ctx.store, app)?;
    let injection = restart_injection(&ctx.store, app, &image)?;
    let result = release_and_deploy(ctx, app, &image, false, &injection);
    record_restart(&ctx.store, app, result.is_ok())?;
    result
}

/// `.fake-dokku/restarts.jsonl`: one `["<app>","ok"|"failed"]` line per restart of a deployed app, whatever ran it
/// (`ps:restart`, or the restart inside `config:set`/`config:unset` and service links), so tests can count them.
pub const RESTARTS_LOG: &str = "restarts.jsonl";

fn record_restart(store: &Store, app: &str, ok: bool) -> CmdResult {
    let line = serde_json::to_string(&[app, if ok { "ok" } else { "failed" }])
        .map_err(|err| Failure::io("encode restart", err))?;
    store.append_fake_log(RESTARTS_LOG, &line)
}

/// The restart after `config:set`/`config:unset` on a deployed app: its failure is only a warning (dokku.md §9).
pub fn restart_after_config(ctx: &Ctx, app: &str) -> CmdResult {
    let Some(image) = current_image(&ctx.store, app)? else {
        return Ok(());
    };
    ctx.out.step(&format!("Restarting app {app}"));
    let result = DeployLock::acquire(&ctx.store, app).and_then(|_lock| {
        let injection = restart_injection(&ctx.store, app, &image)?;
        let result = release_and_deploy(ctx, app, &image, false, &injection);
        record_restart(&ctx.store, app, result.is_ok())?;
        result
    });
    if let Err(failure) = result {
        ctx.out.failure(&failure);
        ctx.out.warn(&format!(
            "Failure while restarting app: exit status {}",
            failure.code
        ));
    }
    Ok(())
}

pub fn start(ctx: &Ctx, args: &[String]) -> CmdResult {
    each_app(ctx, &START, args, start_one)
}

fn start_one(ctx: &Ctx, app: &str) -> CmdResult {
    let Some(image) = current_image(&ctx.store, app)? else {
        ctx.out.warn(&format!("App {app} has not been deployed"));
        return Ok(());
    };
    if ctx.store.property(app, PS, "running")?.as_deref() == Some("true") {
        ctx.out.warn(&format!("App {app} already running"));
        return Ok(());
    }
    ctx.out.step(&format!("Starting {app}"));
    let _lock = DeployLock::acquire(&ctx.store, app)?;
    let injection = restart_injection(&ctx.store, app, &image)?;
    release_and_deploy(ctx, app, &image, false, &injection)
}

pub fn stop(ctx: &Ctx, args: &[String]) -> CmdResult {
    each_app(ctx, &STOP, args, stop_one)
}

fn stop_one(ctx: &Ctx, app: &str) -> CmdResult {
    if !is_deployed(&ctx.store, app)? {
        ctx.out.warn(&format!("App {app} has not been deployed"));
        return Ok(());
    }
    ctx.out.step(&format!("Stopping {app}"));
    ctx.store.set_property(app, PS, "running", "false")?;
    let (secs, nanos) = util::now();
    let stamp = util::rfc3339(secs, nanos);
    ctx.store.append_log(
        app,
        &[format!(
            "{stamp} app[web.1]: (fake-dokku) container stopped"
        )],
    )
}

/// `ps:report` flags; `--status-web.1` exists only once the app was deployed.
pub fn ps_report_flags(store: &Store, app: &str) -> Result<Flags, Failure> {
    let deployed = is_deployed(store, app)?;
    let running = deployed && store.property(app, PS, "running")?.as_deref() == Some("true");
    let mut flags = report::flags([
        ("--deployed", deployed.to_string()),
        ("--processes", if deployed { "1" } else { "0" }.to_string()),
        ("--ps-can-scale", "true".to_string()),
        ("--ps-restart-policy", "on-failure:10".to_string()),
        ("--restore", "true".to_string()),
        ("--running", running.to_string()),
    ]);
    if deployed {
        let container_id = store.property(app, PS, "container-id")?.unwrap_or_default();
        let short_id = container_id.get(..11).unwrap_or(&container_id);
        let status = if running { "running" } else { "exited" };
        flags.insert(
            "--status-web.1".to_string(),
            format!("{status} (CID: {short_id})"),
        );
    }
    Ok(flags)
}

/// `git:report` flags.
pub fn git_report_flags(store: &Store, app: &str) -> Result<Flags, Failure> {
    let head = store.property(app, GIT, HEAD_IMAGE)?;
    Ok(report::flags([
        ("--git-deploy-branch", "master".to_string()),
        ("--git-global-deploy-branch", "master".to_string()),
        ("--git-keep-git-dir", "false".to_string()),
        (
            "--git-last-updated-at",
            store
                .property(app, GIT, "last-updated-at")?
                .unwrap_or_default(),
        ),
        ("--git-rev-env-var", "GIT_REV".to_string()),
        (
            "--git-sha",
            head.as_deref().map(fake_sha).unwrap_or_default(),
        ),
        (
            "--git-source-image",
            store
                .property(app, GIT, "source-image")?
                .unwrap_or_default(),
        ),
    ]))
}
