//! Client-certificate renewal: before the certificate gets close to expiry, the
//! agent makes a new key, has the coordinator sign it over the current mTLS
//! connection, and stores both in one atomic write. New connections use it.

use std::time::Duration;

use anyhow::Context as _;
use flotilla_proto::v1 as pb;
use flotilla_proto::v1::agent_service_client::AgentServiceClient;
use flotilla_shared::time::{format_ms, now_ms};
use flotilla_shared::tls;
use tonic::transport::Channel;

use crate::identity::{check_issued, new_key_and_csr, write_identity};
use crate::link::Ctx;

/// Milliseconds until the current certificate expires.
pub fn remaining_ms(identity_pem: &[u8]) -> anyhow::Result<i64> {
    let certs = tls::pem_certificates(identity_pem, "identity.pem")?;
    Ok(tls::not_after_ms(&certs[0])? - now_ms())
}

/// Renews the certificate if it expires within `renew_before`; returns whether it did.
pub async fn renew_if_due(
    ctx: &Ctx,
    channel: Channel,
    renew_before: Duration,
) -> anyhow::Result<bool> {
    let current = ctx
        .identity_pem
        .read()
        .map(|pem| pem.clone())
        .map_err(|_| anyhow::anyhow!("identity lock poisoned"))?;
    let before_ms = i64::try_from(renew_before.as_millis()).unwrap_or(i64::MAX);
    if remaining_ms(&current)? > before_ms {
        return Ok(false);
    }
    let host_id = &ctx.identity.file.host_id;
    let (key, csr) = new_key_and_csr(host_id)?;
    let response = AgentServiceClient::new(channel)
        .renew(pb::RenewRequest { csr_pem: csr })
        .await
        .map_err(|s| anyhow::anyhow!("coordinator refused renewal: {}", s.message()))?
        .into_inner();
    let not_after = check_issued(&response.certificate_pem, host_id)?;
    write_identity(&ctx.dir, &response.certificate_pem, &key.serialize_pem())?;
    let pem = std::fs::read(ctx.dir.identity()).context("re-read identity")?;
    if let Ok(mut identity) = ctx.identity_pem.write() {
        *identity = pem;
    }
    tracing::info!(expires = %format_ms(not_after), "client certificate renewed");
    Ok(true)
}
