//! `ApplyApp` (`flotilla app apply|diff`, docs/apps.md): the coordinator
//! parses and checks the spec itself (never trusting the client), stores it,
//! builds the environment's desired state and starts a converge (or diff)
//! deployment: one signed converge command per host.

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
        let Some(mut desired) = spec.desired(&env) else {
            let known: Vec<&str> = spec.envs.keys().map(EnvName::as_str).collect();
            return Err(Status::invalid_argument(format!(
                "{file_name}: has no environment {env:?} (it has: {})",
                known.join(", ")
            )));
        };
        // The config store's values for this app and environment
        // (`flotilla config set`) are part of the desired state: plain ones
        // override the spec's `[config]`, secret ones are sent as secrets.
        // Either way the agent then owns them (it does not unset them).
        // (A diff needs the values too: it compares them.)
        let (plain, secrets) = api
            .coordinator
            .resolve_config(&spec.app, &env)
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        for (key, value) in plain {
            if desired.secret_keys.contains(&key) {
                return Err(Status::failed_precondition(format!(
                    "{key} is a secret in {file_name} but its stored value is plain; set it again with `flotilla config set {} --env {env} --secret {key}`",
                    spec.app
                )));
            }
            desired.config.insert(key, value);
        }
        for key in secrets.keys() {
            desired.config.remove(key);
            desired.secret_keys.insert(key.clone());
        }
        let json = serde_json::to_vec(&desired).map_err(super::internal)?;
        if json.len() > MAX_DESIRED_BYTES {
            return Err(Status::invalid_argument(format!(
                "{file_name}: environment {env} expands to {} bytes of desired state; the limit is {MAX_DESIRED_BYTES}",
                json.len()
            )));
        }
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
            // The deploy gate: required keys the spec itself does not set
            // (neither its `[config]` nor a service link) must be in the
            // config store before a release may deploy to this environment.
            if let Some(env_spec) = spec.envs.get(&env) {
                let required: std::collections::BTreeSet<_> =
                    flotilla_shared::appspec::missing_required(env_spec, std::iter::empty())
                        .iter()
                        .filter_map(|k| flotilla_shared::names::ConfigKey::parse(k.as_str()).ok())
                        .collect();
                api.coordinator
                    .store
                    .set_required_keys(&spec.app, &env, &required)?;
            }
        }
        Ok(d)
    }
    .await;
    api.audit(&caller, action, &target, &result);
    result.map(|d| Response::new(deployment_to_proto(&d)))
}
