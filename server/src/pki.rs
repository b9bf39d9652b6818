//! The coordinator's small CA: creates the data directory (`init`), issues
//! agent client certificates from CSRs at join time, and loads the TLS and
//! signing material for `serve`.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use flotilla_shared::HostId;
use flotilla_shared::signing::CommandSigner;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use crate::store::{ApiToken, Role, Store};

/// How long an agent certificate is valid.
pub const AGENT_CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);

/// Paths inside a coordinator data directory.
#[derive(Debug, Clone)]
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self(root.into())
    }
    pub fn root(&self) -> &Path {
        &self.0
    }
    /// The CA certificate; agents and the CLI trust it (`--ca-cert`).
    pub fn ca_cert(&self) -> PathBuf {
        self.0.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.0.join("ca.key")
    }
    /// The server certificate chain (leaf, then CA).
    pub fn server_cert(&self) -> PathBuf {
        self.0.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.0.join("server.key")
    }
    /// The ed25519 command-signing key (PKCS#8 PEM).
    pub fn signing_key(&self) -> PathBuf {
        self.0.join("signing.key")
    }
    pub fn admin_token(&self) -> PathBuf {
        self.0.join("admin.token")
    }
    pub fn state(&self) -> PathBuf {
        self.0.join("state")
    }
    /// The keyring app secrets are sealed with (docs/secrets.md); never in `state`.
    pub fn secrets_key(&self) -> PathBuf {
        crate::appconfig::default_key_file(&self.0)
    }
}

/// Writes `contents` to a new file with `mode`; never overwrites.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

/// A new file only its owner can read (keys, tokens).
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_new(path, contents, 0o600)
}

fn write_public(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    write_new(path, contents, 0o644)
}

fn read(path: &Path) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("read {}", path.display()))
}

fn in_the_future(after: Duration) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + after
}

fn random_serial() -> anyhow::Result<rcgen::SerialNumber> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("cannot read random bytes"))?;
    bytes[0] &= 0x7f; // positive
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

/// What `init` created, for the operator.
#[derive(Debug)]
pub struct InitOutput {
    pub admin_token_path: PathBuf,
    pub ca_fingerprint: String,
}

/// Creates a data directory: CA, server certificate (SANs: `server_names`,
/// `localhost`, `127.0.0.1`, `::1`), command-signing key, secrets key (`secrets.key`, 0600),
/// admin token (hashed in the store, the secret in `admin.token`, mode 0600). Refuses an
/// initialised directory.
pub fn init(dir: &DataDir, server_names: &[String]) -> anyhow::Result<InitOutput> {
    for existing in [
        dir.ca_cert(),
        dir.signing_key(),
        dir.admin_token(),
        dir.state(),
        dir.secrets_key(),
    ] {
        if existing.exists() {
            bail!(
                "{} is already initialised ({} exists); refusing to overwrite it",
                dir.root().display(),
                existing.display()
            );
        }
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.root())
        .with_context(|| format!("create {}", dir.root().display()))?;

    // 1. The CA.
    let ca_key = KeyPair::generate().context("generate CA key")?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Flotilla CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = time::OffsetDateTime::now_utc() - Duration::from_secs(3600);
    ca_params.not_after = in_the_future(Duration::from_secs(10 * 365 * 24 * 3600));
    ca_params.serial_number = Some(random_serial()?);
    let ca_cert = ca_params.self_signed(&ca_key).context("self-sign CA")?;
    let issuer = Issuer::new(ca_params, ca_key);

    // 2. The server certificate.
    for name in server_names {
        let is_ip = name.parse::<std::net::IpAddr>().is_ok();
        let is_dns = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !is_ip && !is_dns {
            bail!("--server-name {name:?} is neither a DNS name nor an IP address");
        }
    }
    let mut names: Vec<String> = server_names.to_vec();
    for default in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == default) {
            names.push(default.to_owned());
        }
    }
    let server_key = KeyPair::generate().context("generate server key")?;
    let mut server_params =
        CertificateParams::new(names).context("server names must be DNS names or IP addresses")?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "flotilla-server");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.not_before = time::OffsetDateTime::now_utc() - Duration::from_secs(3600);
    server_params.not_after = in_the_future(Duration::from_secs(5 * 365 * 24 * 3600));
    server_params.serial_number = Some(random_serial()?);
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .context("sign server certificate")?;

    // 3. Command-signing key and admin token.
    let signer = CommandSigner::generate()?;
    let admin_token = flotilla_shared::token::random_secret()?;
    let admin_token = format!("flt_{admin_token}");

    write_public(&dir.ca_cert(), ca_cert.pem().as_bytes())?;
    write_private(&dir.ca_key(), issuer.key().serialize_pem().as_bytes())?;
    let chain = format!("{}{}", server_cert.pem(), ca_cert.pem());
    write_public(&dir.server_cert(), chain.as_bytes())?;
    write_private(&dir.server_key(), server_key.serialize_pem().as_bytes())?;
    write_private(&dir.signing_key(), signer.to_pkcs8_pem()?.as_bytes())?;
    generate_secrets_key(&dir.secrets_key())?;

    let store = Store::open(&dir.state()).context("create store")?;
    store.put_api_token(
        &flotilla_shared::token::hash_secret(&admin_token),
        &ApiToken {
            name: "admin".into(),
            role: Role::Admin,
            created_at_ms: flotilla_shared::time::now_ms(),
            created_by: "init".into(),
            apps: Vec::new(),
            envs: Vec::new(),
            team: None,
        },
    )?;
    store.db_flush_blocking()?;
    write_private(&dir.admin_token(), format!("{admin_token}\n").as_bytes())?;

    Ok(InitOutput {
        admin_token_path: dir.admin_token(),
        ca_fingerprint: flotilla_shared::tls::fingerprint(ca_cert.der()),
    })
}

/// Creates a secrets key file (mode 0600) with one fresh key named after the current month
/// (`2026-08`); refuses to overwrite one. For `init` and `secrets generate-key`.
pub fn generate_secrets_key(path: &Path) -> anyhow::Result<String> {
    let now = time::OffsetDateTime::now_utc();
    let key_id = format!("{}-{:02}", now.year(), u8::from(now.month()));
    flotilla_shared::sealed::Keyring::generate_file(path, &key_id)
        .with_context(|| format!("create secrets key {}", path.display()))?;
    Ok(key_id)
}

/// The CA, loaded for issuing agent certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
    pub fingerprint: String,
}

impl Ca {
    pub fn load(dir: &DataDir) -> anyhow::Result<Self> {
        let cert_pem = read(&dir.ca_cert())?;
        let key = KeyPair::from_pem(&read(&dir.ca_key())?).context("parse CA key")?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).context("parse CA certificate")?;
        let der = flotilla_shared::tls::pem_certificates(cert_pem.as_bytes(), "ca.pem")?;
        let fingerprint = flotilla_shared::tls::fingerprint(&der[0]);
        Ok(Self {
            issuer,
            cert_pem,
            fingerprint,
        })
    }

    /// Issues a client certificate for `host_id` using only the public key of
    /// the CSR: names, usages and lifetime are the coordinator's, not the agent's.
    pub fn issue_agent_cert(
        &self,
        csr_pem: &str,
        host_id: &HostId,
    ) -> anyhow::Result<(String, i64)> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).context("parse CSR")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, host_id.as_str());
        params.subject_alt_names = vec![SanType::DnsName(
            host_id.as_str().try_into().context("host id as DNS name")?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = time::OffsetDateTime::now_utc() - Duration::from_secs(300);
        params.not_after = in_the_future(AGENT_CERT_LIFETIME);
        params.serial_number = Some(random_serial()?);
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .context("sign agent certificate")?;
        let not_after_ms = params.not_after.unix_timestamp().saturating_mul(1000);
        Ok((cert.pem(), not_after_ms))
    }
}

/// TLS material for the listener.
pub struct ServerTls {
    pub chain_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub ca_pem: Vec<u8>,
}

impl ServerTls {
    pub fn load(dir: &DataDir) -> anyhow::Result<Self> {
        Ok(Self {
            chain_pem: read(&dir.server_cert())?.into_bytes(),
            key_pem: read(&dir.server_key())?.into_bytes(),
            ca_pem: read(&dir.ca_cert())?.into_bytes(),
        })
    }
}

/// Loads the command-signing key from `path`.
pub fn load_signer(path: &Path) -> anyhow::Result<CommandSigner> {
    let pem = read(path)?;
    CommandSigner::from_pkcs8_pem(&pem)
        .with_context(|| format!("load signing key {}", path.display()))
}
