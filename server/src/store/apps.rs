//! App specs in sled: the last spec applied per app (`app_specs`, keyed by
//! app name), as the TOML text the coordinator parsed and checked. A spec
//! names secret keys, never secret values.

use flotilla_shared::AppName;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, decode, encode};

/// The spec of an app as last applied.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppSpecRecord {
    pub app: AppName,
    /// The file as given (TOML).
    pub spec_toml: String,
    /// The file name it was given under (labels error positions).
    pub file_name: String,
    /// The environment the apply was for, who applied it and when.
    pub env: String,
    pub applied_by: String,
    pub applied_at_ms: i64,
    /// The converge deployment it started.
    pub deployment_id: String,
}

impl Store {
    /// Replaces the stored spec of `record.app`, durably.
    pub async fn put_app_spec(&self, record: &AppSpecRecord) -> Result<(), StoreError> {
        self.app_specs
            .insert(record.app.as_str().as_bytes(), encode(record)?)?;
        self.flush().await
    }

    /// The spec last applied for `app`, if any.
    pub fn app_spec(&self, app: &AppName) -> Result<Option<AppSpecRecord>, StoreError> {
        self.app_specs
            .get(app.as_str().as_bytes())?
            .map(|v| decode("app_specs", &v))
            .transpose()
    }
}
