//! The state directory `$DOKKU_ROOT`: Dokku-shaped files (`<app>/`, `<app>/ENV`, `<app>/VHOST`, `ENV`, `VHOST`)
//! plus fake-only state under `.fake-dokku/`. Every whole-file write is atomic (temp file + rename), so a
//! concurrent invocation never reads half a file. What the files mean is up to the command modules.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::out::Failure;
use crate::util::{self, Env};

/// Whose config or domains: the global ones or one app's.
pub enum Scope {
    Global,
    App(String),
}

pub struct Store {
    root: PathBuf,
}

impl Store {
    /// The store at `$DOKKU_ROOT`, which must be set.
    pub fn from_env() -> Result<Self, Failure> {
        match std::env::var_os("DOKKU_ROOT") {
            Some(root) if !root.is_empty() => Ok(Self {
                root: PathBuf::from(root),
            }),
            _ => Err(Failure::msg(
                1,
                "DOKKU_ROOT is not set (fake-dokku keeps its state there)",
            )),
        }
    }

    /// A store at `root` (tests; the binary reads `$DOKKU_ROOT`).
    #[cfg(test)]
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$DOKKU_ROOT/.standin/fail-images`: images whose deploys fail their checks on this host (see `--help`).
    pub fn fail_images_path(&self) -> PathBuf {
        self.root.join(".standin").join("fail-images")
    }

    /// The images listed in `fail_images_path()`, read afresh at every call; empty if there is no file.
    pub fn fail_images(&self) -> Result<Vec<String>, Failure> {
        let text = read_optional(&self.fail_images_path())?.unwrap_or_default();
        Ok(util::parse_image_list(&text))
    }

    /// `$DOKKU_ROOT/.standin/<name>`: an injection file tests write (see `--help`).
    pub fn standin_path(&self, name: &str) -> PathBuf {
        self.root.join(".standin").join(name)
    }

    /// An injection file's text, read afresh at every call; `None` if there is no file.
    pub fn standin(&self, name: &str) -> Result<Option<String>, Failure> {
        read_optional(&self.standin_path(name))
    }

    /// An injection file in the list format of `fail-images` (one entry a line, `#` comments); empty if absent.
    pub fn standin_list(&self, name: &str) -> Result<Vec<String>, Failure> {
        Ok(util::parse_image_list(
            &self.standin(name)?.unwrap_or_default(),
        ))
    }

    /// Removes an injection file once it has been used (seeded certificates).
    pub fn remove_standin(&self, name: &str) -> Result<(), Failure> {
        remove_optional(&self.standin_path(name))
    }

    /// `$DOKKU_ROOT/.fake-dokku`: state real Dokku keeps elsewhere (images, properties, logs) or not at all.
    pub fn fake_dir(&self) -> PathBuf {
        self.root.join(".fake-dokku")
    }

    /// `$DOKKU_ROOT/<app>`: the app exists iff this directory does.
    pub fn app_dir(&self, app: &str) -> PathBuf {
        self.root.join(app)
    }

    /// `$DOKKU_ROOT/.fake-dokku/apps/<app>`: lock file, log, properties.
    fn app_state_dir(&self, app: &str) -> PathBuf {
        self.fake_dir().join("apps").join(app)
    }

    /// The deploy lock (`apps:lock` creates it; deploys `flock` it).
    pub fn lock_path(&self, app: &str) -> PathBuf {
        self.app_state_dir(app).join(".deploy.lock")
    }

    /// Tests create this file to let one `hang` deploy go on.
    pub fn release_path(&self) -> PathBuf {
        self.fake_dir().join("release")
    }

    fn log_path(&self, app: &str) -> PathBuf {
        self.app_state_dir(app).join("app.log")
    }

    pub fn app_exists(&self, app: &str) -> bool {
        util::is_valid_app_name(app) && self.app_dir(app).is_dir()
    }

    /// All apps, sorted.
    pub fn apps(&self) -> Result<Vec<String>, Failure> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(Failure::io(format!("list {}", self.root.display()), err)),
        };
        let mut apps = Vec::new();
        for entry in entries {
            let entry =
                entry.map_err(|err| Failure::io(format!("list {}", self.root.display()), err))?;
            if let Ok(name) = entry.file_name().into_string()
                && util::is_valid_app_name(&name)
                && entry.path().is_dir()
            {
                apps.push(name);
            }
        }
        apps.sort();
        Ok(apps)
    }

    /// Appends `argv` as one JSON array line to `.fake-dokku/invocations.jsonl`.
    pub fn log_invocation(&self, argv: &[String]) -> Result<(), Failure> {
        let mut line =
            serde_json::to_string(argv).map_err(|err| Failure::io("encode invocation", err))?;
        line.push('\n');
        append(&self.fake_dir().join("invocations.jsonl"), &line)?;
        // The names (never the values) of the variables this invocation
        // inherited, so tests can check what the agent passes to dokku.
        let mut names: Vec<String> = std::env::vars_os()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut line =
            serde_json::to_string(&names).map_err(|err| Failure::io("encode environment", err))?;
        line.push('\n');
        append(&self.fake_dir().join("environment.jsonl"), &line)
    }

    fn property_path(&self, app: &str, plugin: &str, key: &str) -> PathBuf {
        self.app_state_dir(app)
            .join("properties")
            .join(plugin)
            .join(key)
    }

    /// A property of an app (like Dokku's `/var/lib/dokku/config/<plugin>/<app>/<key>`); `None` if never set.
    pub fn property(&self, app: &str, plugin: &str, key: &str) -> Result<Option<String>, Failure> {
        let text = read_optional(&self.property_path(app, plugin, key))?;
        Ok(text.map(|text| text.strip_suffix('\n').unwrap_or(&text).to_string()))
    }

    pub fn set_property(
        &self,
        app: &str,
        plugin: &str,
        key: &str,
        value: &str,
    ) -> Result<(), Failure> {
        write_atomic(
            &self.property_path(app, plugin, key),
            format!("{value}\n").as_bytes(),
        )
    }

    pub fn delete_property(&self, app: &str, plugin: &str, key: &str) -> Result<(), Failure> {
        remove_optional(&self.property_path(app, plugin, key))
    }

    fn global_property_path(&self, plugin: &str, key: &str) -> PathBuf {
        self.fake_dir()
            .join("global")
            .join("properties")
            .join(plugin)
            .join(key)
    }

    /// A global property (`<plugin>:set --global key value`); `None` if never set.
    pub fn global_property(&self, plugin: &str, key: &str) -> Result<Option<String>, Failure> {
        let text = read_optional(&self.global_property_path(plugin, key))?;
        Ok(text.map(|text| text.strip_suffix('\n').unwrap_or(&text).to_string()))
    }

    pub fn set_global_property(&self, plugin: &str, key: &str, value: &str) -> Result<(), Failure> {
        write_atomic(
            &self.global_property_path(plugin, key),
            format!("{value}\n").as_bytes(),
        )
    }

    pub fn delete_global_property(&self, plugin: &str, key: &str) -> Result<(), Failure> {
        remove_optional(&self.global_property_path(plugin, key))
    }

    /// Appends one line to a fake-only log under `.fake-dokku/` (e.g. `letsencrypt-requests`).
    pub fn append_fake_log(&self, name: &str, line: &str) -> Result<(), Failure> {
        append(&self.fake_dir().join(name), &format!("{line}\n"))
    }

    /// `.fake-dokku/services/<plugin>/<service>`: a service exists iff this directory does (real Dokku:
    /// `/var/lib/dokku/services/<plugin>/<service>`).
    pub fn service_dir(&self, plugin: &str, service: &str) -> PathBuf {
        self.fake_dir().join("services").join(plugin).join(service)
    }

    /// All services of a plugin, sorted.
    pub fn services(&self, plugin: &str) -> Result<Vec<String>, Failure> {
        let dir = self.fake_dir().join("services").join(plugin);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(Failure::io(format!("list {}", dir.display()), err)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|err| Failure::io(format!("list {}", dir.display()), err))?;
            if let Ok(name) = entry.file_name().into_string()
                && !name.starts_with('.')
                && entry.path().is_dir()
            {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// A file of a service (`PASSWORD`, `LINKS`, `ID`), without its final newline; `None` if absent.
    pub fn service_file(
        &self,
        plugin: &str,
        service: &str,
        file: &str,
    ) -> Result<Option<String>, Failure> {
        let text = read_optional(&self.service_dir(plugin, service).join(file))?;
        Ok(text.map(|text| text.strip_suffix('\n').unwrap_or(&text).to_string()))
    }

    pub fn set_service_file(
        &self,
        plugin: &str,
        service: &str,
        file: &str,
        value: &str,
    ) -> Result<(), Failure> {
        let text = if value.is_empty() {
            String::new()
        } else {
            format!("{value}\n")
        };
        write_atomic(
            &self.service_dir(plugin, service).join(file),
            text.as_bytes(),
        )
    }

    pub fn remove_service(&self, plugin: &str, service: &str) -> Result<(), Failure> {
        let dir = self.service_dir(plugin, service);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
            Err(err) => Err(Failure::io(format!("remove {}", dir.display()), err)),
        }
    }

    /// `$DOKKU_ROOT/<app>/tls/<file>`, where Dokku keeps `server.crt` and `server.key`.
    pub fn tls_path(&self, app: &str, file: &str) -> PathBuf {
        self.app_dir(app).join("tls").join(file)
    }

    pub fn write_tls(&self, app: &str, file: &str, contents: &[u8]) -> Result<(), Failure> {
        write_atomic(&self.tls_path(app, file), contents)
    }

    pub fn remove_tls(&self, app: &str) -> Result<(), Failure> {
        let dir = self.app_dir(app).join("tls");
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
            Err(err) => Err(Failure::io(format!("remove {}", dir.display()), err)),
        }
    }

    fn image_path(&self, image: &str) -> PathBuf {
        let mut name = String::new();
        for byte in image.bytes() {
            if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
                name.push(char::from(byte));
            } else {
                let _ = write!(name, "%{byte:02X}");
            }
        }
        self.fake_dir().join("images").join(name)
    }

    /// Whether the image was pulled before (`docker image inspect` succeeds).
    pub fn image_on_host(&self, image: &str) -> bool {
        self.image_path(image).is_file()
    }

    pub fn add_image(&self, image: &str) -> Result<(), Failure> {
        write_atomic(&self.image_path(image), format!("{image}\n").as_bytes())
    }

    fn scoped(&self, scope: &Scope, file: &str) -> PathBuf {
        match scope {
            Scope::Global => self.root.join(file),
            Scope::App(app) => self.app_dir(app).join(file),
        }
    }

    /// Domains, one a line in `VHOST`; empty if there is no file.
    pub fn vhosts(&self, scope: &Scope) -> Result<Vec<String>, Failure> {
        let text = read_optional(&self.scoped(scope, "VHOST"))?.unwrap_or_default();
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(String::from)
            .collect())
    }

    pub fn set_vhosts(&self, scope: &Scope, hosts: &[String]) -> Result<(), Failure> {
        let text: String = hosts.iter().map(|host| format!("{host}\n")).collect();
        write_atomic(&self.scoped(scope, "VHOST"), text.as_bytes())
    }

    /// Config from `ENV`; empty if there is no file.
    pub fn env(&self, scope: &Scope) -> Result<Env, Failure> {
        let text = read_optional(&self.scoped(scope, "ENV"))?.unwrap_or_default();
        Ok(util::parse_env_file(&text))
    }

    pub fn write_env(&self, scope: &Scope, env: &Env) -> Result<(), Failure> {
        write_atomic(
            &self.scoped(scope, "ENV"),
            util::render_env_file(env).as_bytes(),
        )
    }

    /// Adds lines to the app's log (what `logs` shows).
    pub fn append_log(&self, app: &str, lines: &[String]) -> Result<(), Failure> {
        let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
        append(&self.log_path(app), &text)
    }

    pub fn read_log(&self, app: &str) -> Result<Vec<String>, Failure> {
        let text = read_optional(&self.log_path(app))?.unwrap_or_default();
        Ok(text.lines().map(String::from).collect())
    }

    /// Deletes the app directory and all fake state of the app.
    pub fn remove_app(&self, app: &str) -> Result<(), Failure> {
        for dir in [self.app_dir(app), self.app_state_dir(app)] {
            match fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(err) => return Err(Failure::io(format!("remove {}", dir.display()), err)),
            }
        }
        Ok(())
    }
}

/// Creates `path`'s parent directories.
pub fn create_parent(path: &Path) -> Result<(), Failure> {
    match path.parent() {
        Some(parent) => fs::create_dir_all(parent)
            .map_err(|err| Failure::io(format!("create {}", parent.display()), err)),
        None => Ok(()),
    }
}

/// Replaces `path` with `contents` in one step: write a hidden temp file next to it, then rename.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), Failure> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    create_parent(path)?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    fs::write(&tmp, contents)
        .map_err(|err| Failure::io(format!("write {}", tmp.display()), err))?;
    fs::rename(&tmp, path).map_err(|err| {
        let _ = fs::remove_file(&tmp);
        Failure::io(
            format!("rename {} to {}", tmp.display(), path.display()),
            err,
        )
    })
}

/// Appends `text` with a single write (O_APPEND), so lines from concurrent invocations do not interleave.
fn append(path: &Path, text: &str) -> Result<(), Failure> {
    create_parent(path)?;
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| Failure::io(format!("open {}", path.display()), err))?;
    file.write_all(text.as_bytes())
        .map_err(|err| Failure::io(format!("append to {}", path.display()), err))
}

fn read_optional(path: &Path) -> Result<Option<String>, Failure> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(Failure::io(format!("read {}", path.display()), err)),
    }
}

fn remove_optional(path: &Path) -> Result<(), Failure> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        Err(err) => Err(Failure::io(format!("remove {}", path.display()), err)),
    }
}
