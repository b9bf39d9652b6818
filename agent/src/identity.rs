//! The agent's data directory: what `join` writes and `run` reads.
//!
//! `agent.json` (server URL, host id, env, labels), `identity.pem` (0600: the
//! TLS client certificate and its key in one file, so renewal replaces both
//! in one atomic rename), `ca.pem` (the pinned coordinator CA),
//! `trusted-keys.json` (command-verification keys), `spool/`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use flotilla_shared::signing::TrustedKeys;
use flotilla_shared::{EnvName, HostId, Labels};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// Coordinator URL, e.g. `https://flotilla.example.com:7443`.
    pub server: String,
    /// Name checked against the coordinator's certificate.
    pub server_name: String,
    pub host_id: HostId,
    pub env: EnvName,
    pub labels: Labels,
}

/// Paths inside an agent data directory.
#[derive(Debug, Clone)]
pub struct AgentDir(PathBuf);

impl AgentDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self(root.into())
    }
    pub fn root(&self) -> &Path {
        &self.0
    }
    pub fn agent_file(&self) -> PathBuf {
        self.0.join("agent.json")
    }
    /// Client certificate followed by its private key (PEM, mode 0600).
    pub fn identity(&self) -> PathBuf {
        self.0.join("identity.pem")
    }
    pub fn ca(&self) -> PathBuf {
        self.0.join("ca.pem")
    }
    pub fn trusted_keys(&self) -> PathBuf {
        self.0.join("trusted-keys.json")
    }
    pub fn spool(&self) -> PathBuf {
        self.0.join("spool")
    }

    pub fn create(&self) -> anyhow::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.0)
            .with_context(|| format!("create {}", self.0.display()))
    }
}

/// Everything `run` needs, loaded and checked.
pub struct Identity {
    pub file: AgentFile,
    /// Certificate and key PEM blocks (`identity.pem`).
    pub identity_pem: Vec<u8>,
    pub ca_pem: Vec<u8>,
    pub trusted: TrustedKeys,
    /// `issued_at` of the last key-set update applied (0: keys from join).
    pub keys_updated_at_ms: i64,
}

/// `trusted-keys.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustedKeysFile {
    /// `issued_at` of the coordinator's key set these came from (0 at join).
    updated_at_ms: i64,
    /// Key id → hex of the raw ed25519 public key.
    keys: BTreeMap<String, String>,
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("read {}", path.display()))
}

impl Identity {
    pub fn load(dir: &AgentDir) -> anyhow::Result<Self> {
        if !dir.agent_file().exists() {
            anyhow::bail!(
                "{} is not joined yet; run `flotilla-agent join` first",
                dir.root().display()
            );
        }
        let file: AgentFile = serde_json::from_slice(&read(&dir.agent_file())?)
            .with_context(|| format!("parse {}", dir.agent_file().display()))?;
        let stored: TrustedKeysFile = serde_json::from_slice(&read(&dir.trusted_keys())?)
            .with_context(|| format!("parse {}", dir.trusted_keys().display()))?;
        let mut trusted = TrustedKeys::default();
        for (id, public_hex) in &stored.keys {
            let raw = hex::decode(public_hex).with_context(|| format!("key {id} is not hex"))?;
            trusted
                .insert_raw(&raw)
                .with_context(|| format!("key {id}"))?;
        }
        if trusted.is_empty() {
            anyhow::bail!(
                "{} lists no command-verification keys",
                dir.trusted_keys().display()
            );
        }
        Ok(Self {
            file,
            identity_pem: read(&dir.identity())?,
            ca_pem: read(&dir.ca())?,
            trusted,
            keys_updated_at_ms: stored.updated_at_ms,
        })
    }
}

/// A fresh key pair and a PEM CSR for `host_id` (the coordinator uses only
/// the public key; names and lifetime are its own).
pub fn new_key_and_csr(host_id: &HostId) -> anyhow::Result<(rcgen::KeyPair, String)> {
    let key = rcgen::KeyPair::generate().context("generate agent key")?;
    let csr = rcgen::CertificateParams::new(vec![host_id.to_string()])
        .context("certificate parameters")?
        .serialize_request(&key)
        .context("make CSR")?
        .pem()
        .context("encode CSR")?;
    Ok((key, csr))
}

/// Checks that a certificate from the coordinator names `host_id`; returns
/// its expiry (ms since the epoch).
pub fn check_issued(certificate_pem: &str, host_id: &HostId) -> anyhow::Result<i64> {
    use flotilla_shared::tls;
    let certs = tls::pem_certificates(certificate_pem.as_bytes(), "certificate")?;
    let issued_for = tls::host_id_from_cert(&certs[0])?;
    if issued_for != *host_id {
        anyhow::bail!("the coordinator issued a certificate for {issued_for}, not {host_id}");
    }
    Ok(tls::not_after_ms(&certs[0])?)
}

/// Stores a client certificate and its key together, atomically.
pub fn write_identity(dir: &AgentDir, certificate_pem: &str, key_pem: &str) -> anyhow::Result<()> {
    let both = format!("{}\n{}", certificate_pem.trim_end(), key_pem);
    write_file(&dir.identity(), both.as_bytes(), 0o600)
}

/// Writes a new file atomically (temp file + rename) with `mode`.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))?;
    // Make the rename itself durable.
    if let Some(parent) = path.parent() {
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("sync {}", parent.display()))?;
    }
    Ok(())
}

/// Stores the trusted keys atomically.
pub fn write_trusted_keys(
    dir: &AgentDir,
    keys: &TrustedKeys,
    updated_at_ms: i64,
) -> anyhow::Result<()> {
    let file = TrustedKeysFile {
        updated_at_ms,
        keys: keys
            .iter()
            .map(|(id, key)| (id.to_string(), hex::encode(key.as_bytes())))
            .collect(),
    };
    write_file(
        &dir.trusted_keys(),
        &serde_json::to_vec_pretty(&file)?,
        0o644,
    )
}
