//! The instant, in-memory Dokku of `flotilla-agent simulate`: each simulated
//! host's apps and their images live in a map. A deploy or rollback succeeds
//! at once, unless its image is on the fail list, which fails it the way
//! fake-dokku fails an "unhealthy" image. Runs no process and no HTTP check.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use flotilla_proto::v1 as pb;
use flotilla_shared::signing::Action;
use flotilla_shared::{AppName, ImageRef};
use tokio_util::sync::CancellationToken;

use super::{Executor, LineSink, failed, interrupted, succeeded};

#[cfg(test)]
mod tests;

/// The error line of a deploy whose checks fail (as fake-dokku and Dokku print it).
const CHECKS_FAILED: &str = "Could not start due to 1 failed checks (web.1)";

/// Images whose deploys fail: a file with one image reference a line (blank
/// lines and `#` comments ignored), the format of fake-dokku's
/// `.standin/fail-images`. Shared by every simulated host and read at every
/// deploy (like fake-dokku), so a test can change it while the simulation
/// runs; a file that went missing lists nothing.
pub struct FailImages {
    path: Option<PathBuf>,
}

impl FailImages {
    /// No image fails.
    pub fn none() -> Self {
        Self { path: None }
    }

    /// The list in `path`, which must be readable now.
    pub fn from_file(path: PathBuf) -> std::io::Result<Self> {
        std::fs::read_to_string(&path)?;
        Ok(Self { path: Some(path) })
    }

    /// Whether a deploy of `image` fails now.
    pub fn contains(&self, image: &str) -> bool {
        self.path.as_ref().is_some_and(|path| {
            std::fs::read_to_string(path).is_ok_and(|text| parse_image_list(&text).contains(image))
        })
    }
}

/// One image reference a line; blank lines and `#` comments are ignored.
pub fn parse_image_list(text: &str) -> HashSet<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or_default().trim())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// One simulated host's Dokku.
pub struct MemoryDokku {
    apps: Mutex<HashMap<AppName, ImageRef>>,
    fail_images: Arc<FailImages>,
}

impl MemoryDokku {
    pub fn new(fail_images: Arc<FailImages>) -> Self {
        Self {
            apps: Mutex::new(HashMap::new()),
            fail_images,
        }
    }

    /// The image `app` runs, if it was ever deployed.
    pub fn image_of(&self, app: &AppName) -> Option<ImageRef> {
        self.apps.lock().ok()?.get(app).cloned()
    }

    fn run(
        &self,
        action: &Action,
        sink: &mut (dyn LineSink + Send),
        cancel: &CancellationToken,
    ) -> pb::CommandResult {
        if let Action::Converge { app, .. } = action {
            // Simulated hosts run deploys only: a converge would need a model
            // of domains, services, certificates and config (docs/apps.md).
            sink.line(
                pb::Stream::Agent,
                format!("converge of {app} is not simulated"),
            );
            return failed(
                None,
                "converge is not simulated: `flotilla-agent simulate` runs deploys and rollbacks only"
                    .into(),
            );
        }
        let Some((app, image, health)) = action.install() else {
            return succeeded(None);
        };
        if cancel.is_cancelled() {
            return interrupted();
        }
        sink.line(
            pb::Stream::Agent,
            format!("$ dokku git:from-image {app} {image}"),
        );
        let Ok(mut apps) = self.apps.lock() else {
            return failed(None, "simulated dokku: state lock poisoned".into());
        };
        let previous = apps.get(app).map(ToString::to_string).unwrap_or_default();
        if self.fail_images.contains(image.as_str()) {
            sink.line(pb::Stream::Stderr, format!(" !     {CHECKS_FAILED}"));
            let mut result = failed(
                Some(1),
                format!("dokku git:from-image exited with 1: {CHECKS_FAILED}"),
            );
            result.deployed_image.clone_from(&previous);
            result.previous_image = previous;
            return result;
        }
        apps.insert(app.clone(), image.clone());
        drop(apps);
        sink.line(pb::Stream::Stdout, "=====> Application deployed".into());
        if let Some(check) = health {
            sink.line(
                pb::Stream::Agent,
                format!(
                    "health: skipped in simulation (GET {}{})",
                    super::health::redact(&check.url_template),
                    check.path
                ),
            );
        }
        let mut result = succeeded(Some(0));
        result.deployed_image = image.to_string();
        result.previous_image = previous;
        result
    }
}

impl Executor for MemoryDokku {
    fn execute(
        &self,
        action: &Action,
        sink: &mut (dyn LineSink + Send),
        cancel: &CancellationToken,
    ) -> impl Future<Output = pb::CommandResult> + Send {
        std::future::ready(self.run(action, sink, cancel))
    }
}
