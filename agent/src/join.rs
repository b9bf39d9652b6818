//! `flotilla-agent join`: trust the coordinator on first contact through the
//! CA fingerprint in the join token, make a key pair, send a CSR with the
//! token, and store the certificate and command-verification keys.

use anyhow::{Context as _, bail};
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_service_client::AgentServiceClient;
use flotilla_shared::signing::TrustedKeys;
use flotilla_shared::tls;
use flotilla_shared::token::JoinToken;
use flotilla_shared::{EnvName, HostId, Labels};

use crate::identity::{
    AgentDir, AgentFile, check_issued, new_key_and_csr, write_file, write_identity,
    write_trusted_keys,
};

pub struct JoinOptions {
    pub server: String,
    pub token: JoinToken,
    pub host_id: HostId,
    pub env: EnvName,
    pub labels: Labels,
    pub dir: AgentDir,
}

pub async fn join(opts: JoinOptions) -> anyhow::Result<()> {
    if opts.dir.agent_file().exists() {
        bail!(
            "{} already holds a joined agent; use a new --data-dir or remove it first",
            opts.dir.root().display()
        );
    }
    let (addr, server_name) = tls::split_server_url(&opts.server)?;

    // 1. Find the CA the token pins. Nothing secret is sent on this connection.
    let chain = tls::probe_server_chain(&addr, &server_name).await?;
    let ca_der = chain
        .iter()
        .find(|c| tls::fingerprint(c) == opts.token.ca_fingerprint)
        .with_context(|| {
            format!(
                "the server at {} did not present the CA pinned by the join token \
                 (sha256 {}); check --server, or create a new token on the right coordinator",
                opts.server, opts.token.ca_fingerprint
            )
        })?;
    let ca_pem = tls::der_to_pem(ca_der);

    // 2. Our key pair and CSR.
    let (key, csr) = new_key_and_csr(&opts.host_id)?;

    // 3. The join call, over TLS verified against the pinned CA.
    let channel = tonic::transport::Channel::from_shared(opts.server.clone())
        .context("server URL")?
        .tls_config(tls::client_config(ca_pem.as_bytes(), &server_name, None))
        .context("TLS configuration")?
        .connect_timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .with_context(|| format!("connect to {}", opts.server))?;
    let response = AgentServiceClient::new(channel)
        .join(pb::JoinRequest {
            token: opts.token.secret.clone(),
            host_id: opts.host_id.to_string(),
            env: opts.env.to_string(),
            labels: opts.labels.as_map().clone().into_iter().collect(),
            csr_pem: csr,
            agent_version: env!("CARGO_PKG_VERSION").into(),
        })
        .await
        .map_err(|status| anyhow::anyhow!("the coordinator refused to join: {}", status.message()))?
        .into_inner();

    // 4. Check what came back before storing it.
    check_issued(&response.certificate_pem, &opts.host_id)?;
    let mut trusted = TrustedKeys::default();
    for key in &response.verification_keys {
        trusted
            .insert_raw(&key.public_key)
            .context("coordinator sent an invalid verification key")?;
    }
    if trusted.is_empty() {
        bail!("the coordinator sent no command-verification key");
    }

    opts.dir.create()?;
    write_identity(&opts.dir, &response.certificate_pem, &key.serialize_pem())?;
    write_file(&opts.dir.ca(), ca_pem.as_bytes(), 0o644)?;
    write_trusted_keys(&opts.dir, &trusted, 0)?;
    let file = AgentFile {
        server: opts.server,
        server_name,
        host_id: opts.host_id,
        env: opts.env,
        labels: opts.labels,
    };
    write_file(
        &opts.dir.agent_file(),
        &serde_json::to_vec_pretty(&file)?,
        0o644,
    )?;
    tracing::info!(host_id = %file.host_id, env = %file.env, "joined");
    Ok(())
}
