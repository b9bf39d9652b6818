//! `ApplyApp` (`flotilla app apply|diff`, docs/apps.md): the coordinator
//! parses and checks the spec itself (never trusting the client), stores it,
//! builds the environment's desired state and starts a converge (or diff)
//! deployment: one signed converge command per host.

use std::collections::BTreeMap;

use flotilla_proto::v1 as pb;
use flotilla_shared::appspec::AppSpec;
use flotilla_shared::signing::MAX_DESIRED_BYTES;
use flotilla_shared::time::now_ms;
use flotilla_shared::{EnvName, ImageRef};
use tonic::{Request, Response, Status};

use super::{Api, arg, deployment_to_proto};
use crate::rollout::{Converge, NewDeployment};
use crate::store::{AppSpecRecord, DeploymentKind, Role, Strategy};

/// Largest spec file accepted.
const MAX_SPEC_BYTES: usize = 256 * 1024;

pub(super) async fn apply_app(
    api: &Api,
    req: Request<pb::ApplyAppRequest>,
) -> Result<Response<pb::Deployment>, Status> {
    let dry_run = req.get_ref().dry_run;
    let action = if dry_run { "app diff" } else { "app apply" };
    let caller = api.authorize(&req, Role::Deployer, action)?;
    let r = req.into_inner();
    // Only a label for error positions; kept short and on one line.
    let file_name: String = r
        .file_name
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .take(128)
        .collect();
    let file_name = if file_name.is_empty() {
        "spec.toml".to_owned()
    } else {
        file_name
    };
    let mut target = format!("{} ({file_name})", r.env);
    let result = async {
        if r.spec_toml.len() > MAX_SPEC_BYTES {
            return Err(Status::invalid_argument(format!(
                "{file_name}: the spec is {} bytes; the limit is {MAX_SPEC_BYTES}",
                r.spec_toml.len()
            )));
        }
        let spec = AppSpec::parse(&file_name, &r.spec_toml)
            .map_err(|errors| Status::invalid_argument(errors.to_string()))?;
        target = format!("{} {} ({file_name})", spec.app, r.env);
        let env = arg("environment", EnvName::parse(&r.env))?;
        caller.check_scope(&spec.app, &env)?;
        let Some(desired) = spec.desired(&env) else {
            let known: Vec<&str> = spec.envs.keys().map(EnvName::as_str).collect();
            return Err(Status::invalid_argument(format!(
                "{file_name}: has no environment {env:?} (it has: {})",
                known.join(", ")
            )));
        };
        let json = serde_json::to_vec(&desired).map_err(super::internal)?;
        if json.len() > MAX_DESIRED_BYTES {
            return Err(Status::invalid_argument(format!(
                "{file_name}: environment {env} expands to {} bytes of desired state; the limit is {MAX_DESIRED_BYTES}",
                json.len()
            )));
        }
        // TODO(merge): take the secret values (and stored plain values) from
        // `Coordinator::resolve_config(&spec.app, &env)` (the config & secrets
        // store); until then the plain values are the spec's `[config]` and no
        // secret is sent (hosts keep the values they have for secret keys).
        let secrets = BTreeMap::new();
        // Deployments name an image; a converge names the spec it applies.
        let digest = ring::digest::digest(&ring::digest::SHA256, &json);
        let image = ImageRef::parse(format!("app-spec:{}", hex::encode(&digest.as_ref()[..6])))
            .map_err(super::internal)?;
        let new = NewDeployment {
            app: spec.app.clone(),
            env: env.clone(),
            kind: if dry_run {
                DeploymentKind::Diff
            } else {
                DeploymentKind::Converge
            },
            image,
            created_by: caller.name.clone(),
            target_release: 0,
            strategy: Strategy::default(),
            queue: false,
            override_freeze: false,
            team: caller.token.team.clone(),
        };
        let d = api
            .coordinator
            .rollout
            .converge(new, Converge { desired, secrets })
            .await?;
        if !dry_run {
            api.coordinator
                .store
                .put_app_spec(&AppSpecRecord {
                    app: spec.app.clone(),
                    spec_toml: r.spec_toml.clone(),
                    file_name: file_name.clone(),
                    env: env.to_string(),
                    applied_by: caller.name.clone(),
                    applied_at_ms: now_ms(),
                    deployment_id: d.id.clone(),
                })
                .await?;
            // TODO(merge): the required-keys deploy gate, from the config store:
            // api.coordinator.store.set_required_keys(&spec.app, &env, &spec.envs[&env].required_keys)?;
        }
        Ok(d)
    }
    .await;
    api.audit(&caller, action, &target, &result);
    result.map(|d| Response::new(deployment_to_proto(&d)))
}
