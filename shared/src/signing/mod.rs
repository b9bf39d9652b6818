//! Signed command envelopes (DESIGN.md §2): the coordinator signs the exact
//! protobuf bytes of a `CommandEnvelope` with ed25519; the agent verifies those
//! bytes against a key it pinned at join time, then checks target host, expiry,
//! clock skew, size and replay before anything runs.
//!
//! This module is pure: no I/O. The agent supplies the replay check (its spool).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use flotilla_proto::v1 as pb;
use prost::Message;

use crate::appspec::DesiredState;
use crate::health::HealthCheck;
use crate::names::{AppName, ConfigKey, HostId, ImageRef, NameError};
use crate::secret::Secret;

#[cfg(test)]
mod tests;

/// Largest envelope an agent accepts. Deploys are a few hundred bytes; a
/// converge command carries a desired state and secret values (bounded below).
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// Largest serialised desired state in a converge command.
pub const MAX_DESIRED_BYTES: usize = 32 * 1024;
/// Most secret values in one converge command.
pub const MAX_SECRETS: usize = 256;
/// Largest secret value (a PEM key fits).
pub const MAX_SECRET_BYTES: usize = 8 * 1024;

/// Identifies a verification key: hex of the first 8 bytes of SHA-256(public key).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(String);

impl KeyId {
    pub fn of(key: &VerifyingKey) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        Self(hex::encode(&digest.as_ref()[..8]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not an ed25519 PKCS#8 PEM private key: {0}")]
    Pkcs8(String),
    #[error("cannot read random bytes from the operating system")]
    Random,
    #[error("invalid ed25519 public key")]
    PublicKey,
}

/// The coordinator's command-signing key. Its `Debug` never prints the key.
pub struct CommandSigner {
    key: SigningKey,
    key_id: KeyId,
}

impl fmt::Debug for CommandSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl CommandSigner {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        use ring::rand::SecureRandom;
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::Random)?;
        let signer = Self::from_key(SigningKey::from_bytes(&seed));
        seed.fill(0);
        Ok(signer)
    }

    /// Reads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), e.g. from
    /// `openssl genpkey -algorithm ed25519`.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Pkcs8(e.to_string()))?;
        Ok(Self::from_key(key))
    }

    /// The key as PKCS#8 PEM; the caller writes it to a 0600 file.
    pub fn to_pkcs8_pem(&self) -> Result<String, KeyError> {
        let pem = self
            .key
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| KeyError::Pkcs8(e.to_string()))?;
        Ok(pem.as_str().to_owned())
    }

    fn from_key(key: SigningKey) -> Self {
        let key_id = KeyId::of(&key.verifying_key());
        Self { key, key_id }
    }

    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Encodes `envelope` once and signs exactly those bytes.
    pub fn sign(&self, envelope: &pb::CommandEnvelope) -> pb::SignedCommand {
        let bytes = envelope.encode_to_vec();
        let signature: Signature = self.key.sign(&bytes);
        pb::SignedCommand {
            envelope: bytes,
            signature: signature.to_bytes().to_vec(),
            key_id: self.key_id.0.clone(),
        }
    }
}

/// The set of command-verification keys an agent trusts, by key id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys(BTreeMap<KeyId, VerifyingKey>);

impl TrustedKeys {
    /// Adds a raw 32-byte public key; its id is computed here, never taken from the peer.
    pub fn insert_raw(&mut self, public_key: &[u8]) -> Result<KeyId, KeyError> {
        let bytes: [u8; 32] = public_key.try_into().map_err(|_| KeyError::PublicKey)?;
        let key = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::PublicKey)?;
        let id = KeyId::of(&key);
        self.0.insert(id.clone(), key);
        Ok(id)
    }

    pub fn insert(&mut self, key: VerifyingKey) -> KeyId {
        let id = KeyId::of(&key);
        self.0.insert(id.clone(), key);
        id
    }

    pub fn get(&self, id: &str) -> Option<&VerifyingKey> {
        self.0.get(&KeyId(id.to_owned()))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&KeyId, &VerifyingKey)> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a command asks the agent to do, with validated arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `dokku git:from-image APP IMAGE` (the app is created first when
    /// missing), then the HTTP health gate when there is one.
    Deploy {
        app: AppName,
        image: ImageRef,
        health: Option<HealthCheck>,
    },
    /// Redeploy the exact image of release number `release`.
    Rollback {
        app: AppName,
        image: ImageRef,
        release: u64,
    },
    /// A no-op the agent answers at once (round-trip measurement).
    Ping,
    /// Converge `app` to `desired` (docs/apps.md). `secrets` holds the
    /// values of `desired.secret_keys` (only those keys; `Debug` prints
    /// `***`); with `dry_run` nothing is changed, only reported.
    Converge {
        app: AppName,
        desired: Box<DesiredState>,
        secrets: BTreeMap<ConfigKey, Secret>,
        dry_run: bool,
    },
}

impl Action {
    /// The app a deploy or rollback is about; `None` for a ping.
    pub fn app(&self) -> Option<&AppName> {
        match self {
            Self::Deploy { app, .. } | Self::Rollback { app, .. } | Self::Converge { app, .. } => {
                Some(app)
            }
            Self::Ping => None,
        }
    }

    /// The image a deploy or rollback installs; `None` for a ping or converge.
    pub fn image(&self) -> Option<&ImageRef> {
        match self {
            Self::Deploy { image, .. } | Self::Rollback { image, .. } => Some(image),
            Self::Ping | Self::Converge { .. } => None,
        }
    }

    /// What a deploy or rollback installs, with the health gate (deploys
    /// only); `None` for a ping.
    pub fn install(&self) -> Option<(&AppName, &ImageRef, Option<&HealthCheck>)> {
        match self {
            Self::Deploy { app, image, health } => Some((app, image, health.as_ref())),
            Self::Rollback { app, image, .. } => Some((app, image, None)),
            Self::Ping | Self::Converge { .. } => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Deploy { .. } => "deploy",
            Self::Rollback { .. } => "rollback",
            Self::Ping => "ping",
            Self::Converge { dry_run: false, .. } => "converge",
            Self::Converge { dry_run: true, .. } => "diff",
        }
    }

    /// The secret values this command carries (converge only): what the
    /// agent redacts from every line it reports.
    pub fn secret_values(&self) -> Vec<&str> {
        match self {
            Self::Converge { secrets, .. } => secrets.values().map(Secret::expose).collect(),
            _ => Vec::new(),
        }
    }

    pub fn to_proto(&self) -> pb::Action {
        let kind = match self {
            Self::Deploy { app, image, health } => pb::action::Kind::Deploy(pb::DeployAction {
                app: app.to_string(),
                image: image.to_string(),
                health: health.as_ref().map(HealthCheck::to_proto),
            }),
            Self::Rollback {
                app,
                image,
                release,
            } => pb::action::Kind::Rollback(pb::RollbackAction {
                app: app.to_string(),
                image: image.to_string(),
                release: *release,
            }),
            Self::Ping => pb::action::Kind::Ping(pb::PingAction {}),
            Self::Converge {
                app,
                desired,
                secrets,
                dry_run,
            } => pb::action::Kind::Converge(pb::ConvergeAction {
                app: app.to_string(),
                // Plain data with string keys: serialising cannot fail.
                desired: serde_json::to_vec(desired).unwrap_or_default(),
                secrets: secrets
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.expose().to_owned()))
                    .collect(),
                dry_run: *dry_run,
            }),
        };
        pb::Action { kind: Some(kind) }
    }

    fn from_proto(action: Option<pb::Action>) -> Result<Self, NameError> {
        match action.and_then(|a| a.kind) {
            Some(pb::action::Kind::Deploy(d)) => Ok(Self::Deploy {
                app: AppName::parse(d.app)?,
                image: ImageRef::parse(d.image)?,
                health: d.health.as_ref().map(HealthCheck::from_proto).transpose()?,
            }),
            Some(pb::action::Kind::Rollback(r)) => Ok(Self::Rollback {
                app: AppName::parse(r.app)?,
                image: ImageRef::parse(r.image)?,
                release: r.release,
            }),
            Some(pb::action::Kind::Ping(_)) => Ok(Self::Ping),
            Some(pb::action::Kind::Converge(c)) => converge_from_proto(c),
            None => Err(NameError::Empty { kind: "action" }),
        }
    }
}

/// Checks a converge action: the app name, a desired state that parses and is
/// for that app, bounded sizes, secrets only for the desired state's secret
/// keys. Errors never quote a secret value.
fn converge_from_proto(c: pb::ConvergeAction) -> Result<Action, NameError> {
    let invalid = |kind: &'static str, value: String, rule: &'static str| NameError::Invalid {
        kind,
        value,
        rule,
    };
    let app = AppName::parse(c.app)?;
    if c.desired.len() > MAX_DESIRED_BYTES {
        return Err(invalid(
            "converge desired state",
            format!("{} bytes", c.desired.len()),
            "must be at most 32 KiB",
        ));
    }
    let desired: DesiredState = serde_json::from_slice(&c.desired).map_err(|_| {
        invalid(
            "converge desired state",
            format!("{} bytes", c.desired.len()),
            "must be the JSON of a desired state",
        )
    })?;
    if desired.app != app {
        return Err(invalid(
            "converge desired state",
            desired.app.to_string(),
            "must be for the command's app",
        ));
    }
    if c.secrets.len() > MAX_SECRETS {
        return Err(invalid(
            "converge secrets",
            format!("{} values", c.secrets.len()),
            "at most 256 per command",
        ));
    }
    let mut secrets = BTreeMap::new();
    for (key, value) in c.secrets {
        let key = ConfigKey::parse(key)?;
        if !desired.secret_keys.contains(&key) {
            return Err(invalid(
                "converge secret",
                key.to_string(),
                "is not a secret key of the desired state",
            ));
        }
        if value.len() > MAX_SECRET_BYTES || value.contains('\0') {
            return Err(invalid(
                "converge secret",
                key.to_string(),
                "value must be at most 8 KiB, without NUL",
            ));
        }
        secrets.insert(key, Secret::new(value));
    }
    Ok(Action::Converge {
        app,
        desired: Box::new(desired),
        secrets,
        dry_run: c.dry_run,
    })
}

/// A command whose signature, target, lifetime and arguments have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCommand {
    pub command_id: String,
    pub host_id: HostId,
    pub deployment_id: String,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    pub action: Action,
}

/// Why an agent refused a command. Each maps to a `RefusalReason` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    BadSignature,
    UnknownKey,
    WrongHost,
    Expired,
    FromTheFuture,
    Replayed,
    Oversized,
    Malformed,
}

impl RefusalReason {
    pub fn to_proto(self) -> pb::RefusalReason {
        match self {
            Self::BadSignature => pb::RefusalReason::BadSignature,
            Self::UnknownKey => pb::RefusalReason::UnknownKey,
            Self::WrongHost => pb::RefusalReason::WrongHost,
            Self::Expired => pb::RefusalReason::Expired,
            Self::FromTheFuture => pb::RefusalReason::FromTheFuture,
            Self::Replayed => pb::RefusalReason::Replayed,
            Self::Oversized => pb::RefusalReason::Oversized,
            Self::Malformed => pb::RefusalReason::Malformed,
        }
    }

    pub fn from_proto(reason: pb::RefusalReason) -> Option<Self> {
        Some(match reason {
            pb::RefusalReason::Unspecified => return None,
            pb::RefusalReason::BadSignature => Self::BadSignature,
            pb::RefusalReason::UnknownKey => Self::UnknownKey,
            pb::RefusalReason::WrongHost => Self::WrongHost,
            pb::RefusalReason::Expired => Self::Expired,
            pb::RefusalReason::FromTheFuture => Self::FromTheFuture,
            pb::RefusalReason::Replayed => Self::Replayed,
            pb::RefusalReason::Oversized => Self::Oversized,
            pb::RefusalReason::Malformed => Self::Malformed,
        })
    }

    /// Every reason, for metrics initialised at zero.
    pub const ALL: [Self; 8] = [
        Self::BadSignature,
        Self::UnknownKey,
        Self::WrongHost,
        Self::Expired,
        Self::FromTheFuture,
        Self::Replayed,
        Self::Oversized,
        Self::Malformed,
    ];

    /// A stable snake_case code (metric labels).
    pub fn code(self) -> &'static str {
        match self {
            Self::BadSignature => "bad_signature",
            Self::UnknownKey => "unknown_key",
            Self::WrongHost => "wrong_host",
            Self::Expired => "expired",
            Self::FromTheFuture => "from_the_future",
            Self::Replayed => "replayed",
            Self::Oversized => "oversized",
            Self::Malformed => "malformed",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadSignature => "bad signature",
            Self::UnknownKey => "unknown signing key",
            Self::WrongHost => "addressed to another host",
            Self::Expired => "expired",
            Self::FromTheFuture => "issued in the future",
            Self::Replayed => "already seen (replay)",
            Self::Oversized => "oversized",
            Self::Malformed => "malformed",
        }
    }
}

/// A refusal with a human-readable detail (never contains key material).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("command refused: {}: {detail}", reason.as_str())]
pub struct Refusal {
    pub reason: RefusalReason,
    /// The command id when the envelope could be decoded, for reporting.
    pub command_id: Option<String>,
    pub detail: String,
}

/// Limits applied during verification.
#[derive(Debug, Clone, Copy)]
pub struct VerifyPolicy {
    /// How far in the future `issued_at` may be (clocks drift).
    pub max_clock_skew: Duration,
    /// Longest `expires_at - issued_at` accepted; bounds a leaked command's life.
    pub max_lifetime: Duration,
}

impl Default for VerifyPolicy {
    fn default() -> Self {
        Self {
            max_clock_skew: Duration::from_secs(60),
            max_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// Verifies `signed` for `host` at time `now_ms`. `seen` answers whether a
/// command id was already accepted on this host (the replay check); it is asked
/// only after the signature and target hold (forged ids never touch the store)
/// and before the time checks (a re-sent, since expired command that this
/// host accepted is reported as a replay, not as a new refusal).
pub fn verify(
    signed: &pb::SignedCommand,
    keys: &TrustedKeys,
    host: &HostId,
    now_ms: i64,
    policy: VerifyPolicy,
    seen: &dyn Fn(&str) -> bool,
) -> Result<VerifiedCommand, Refusal> {
    let refuse = |reason, command_id: Option<&str>, detail: String| Refusal {
        reason,
        command_id: command_id.map(str::to_owned),
        detail,
    };
    if signed.envelope.len() > MAX_ENVELOPE_BYTES {
        return Err(refuse(
            RefusalReason::Oversized,
            None,
            format!(
                "envelope is {} bytes, the limit is {MAX_ENVELOPE_BYTES}",
                signed.envelope.len()
            ),
        ));
    }
    let Some(key) = keys.get(&signed.key_id) else {
        let detail = format!(
            "key id {:?} is not one this agent trusts",
            signed.key_id.chars().take(64).collect::<String>()
        );
        return Err(refuse(RefusalReason::UnknownKey, None, detail));
    };
    let signature = <[u8; 64]>::try_from(signed.signature.as_slice())
        .map(|bytes| Signature::from_bytes(&bytes))
        .map_err(|_| {
            refuse(
                RefusalReason::BadSignature,
                None,
                format!("signature is {} bytes, not 64", signed.signature.len()),
            )
        })?;
    key.verify_strict(&signed.envelope, &signature)
        .map_err(|_| {
            refuse(
                RefusalReason::BadSignature,
                None,
                "signature does not match the envelope".into(),
            )
        })?;
    let envelope = pb::CommandEnvelope::decode(signed.envelope.as_slice()).map_err(|e| {
        refuse(
            RefusalReason::Malformed,
            None,
            format!("envelope does not decode: {e}"),
        )
    })?;
    let id = Some(envelope.command_id.as_str());
    if envelope.command_id.is_empty() || envelope.command_id.len() > 64 {
        return Err(refuse(
            RefusalReason::Malformed,
            None,
            "command id must be 1 to 64 characters".into(),
        ));
    }
    if envelope.host_id != host.as_str() {
        return Err(refuse(
            RefusalReason::WrongHost,
            id,
            format!("addressed to {:?}, this is {host}", envelope.host_id),
        ));
    }
    // Before the time checks: a re-sent command this host already accepted is
    // a replay (its result is on the way), even if it has expired since.
    if seen(&envelope.command_id) {
        return Err(refuse(
            RefusalReason::Replayed,
            id,
            "this command id was already accepted; it never runs twice".into(),
        ));
    }
    if now_ms >= envelope.expires_at_ms {
        return Err(refuse(
            RefusalReason::Expired,
            id,
            format!(
                "expired {} ago",
                humanize_ms(now_ms.saturating_sub(envelope.expires_at_ms))
            ),
        ));
    }
    let skew_ms = i64::try_from(policy.max_clock_skew.as_millis()).unwrap_or(i64::MAX);
    if envelope.issued_at_ms > now_ms.saturating_add(skew_ms) {
        return Err(refuse(
            RefusalReason::FromTheFuture,
            id,
            format!(
                "issued {} ahead of this host's clock (allowed skew {}s)",
                humanize_ms(envelope.issued_at_ms - now_ms),
                policy.max_clock_skew.as_secs()
            ),
        ));
    }
    let lifetime_ms = envelope.expires_at_ms.saturating_sub(envelope.issued_at_ms);
    let max_lifetime_ms = i64::try_from(policy.max_lifetime.as_millis()).unwrap_or(i64::MAX);
    if lifetime_ms > max_lifetime_ms || lifetime_ms <= 0 {
        return Err(refuse(
            RefusalReason::Malformed,
            id,
            format!(
                "lifetime of {} is outside (0, {}s]",
                humanize_ms(lifetime_ms),
                policy.max_lifetime.as_secs()
            ),
        ));
    }
    let action = Action::from_proto(envelope.action)
        .map_err(|e| refuse(RefusalReason::Malformed, id, format!("bad action: {e}")))?;
    Ok(VerifiedCommand {
        command_id: envelope.command_id,
        host_id: host.clone(),
        deployment_id: envelope.deployment_id,
        issued_at_ms: envelope.issued_at_ms,
        expires_at_ms: envelope.expires_at_ms,
        action,
    })
}

/// Why a key-set update was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    #[error("key set is signed by no key this agent trusts")]
    Untrusted,
    #[error("key set is malformed: {0}")]
    Malformed(String),
}

/// A verified key set: the keys and when the coordinator issued it.
#[derive(Debug, Clone)]
pub struct KeySet {
    pub keys: TrustedKeys,
    pub issued_at_ms: i64,
}

/// Builds a key-set update listing `keys` (the signing key first), signed by
/// every key in `signers`, so an agent that trusts any of them accepts it.
pub fn sign_key_set(
    keys: &[VerifyingKey],
    issued_at_ms: i64,
    signers: &[&CommandSigner],
) -> pb::KeySetUpdate {
    let key_set = pb::KeySet {
        public_keys: keys.iter().map(|k| k.as_bytes().to_vec()).collect(),
        issued_at_ms,
    }
    .encode_to_vec();
    let message = key_set_message(&key_set);
    let signatures = signers
        .iter()
        .map(|s| pb::KeySignature {
            key_id: s.key_id().to_string(),
            signature: s.key.sign(&message).to_bytes().to_vec(),
        })
        .collect();
    pb::KeySetUpdate {
        key_set,
        signatures,
    }
}

/// What a key-set signature covers: a context string, then the `KeySet` bytes,
/// so no key-set signature can ever pass as a command signature (whose message
/// is a bare `CommandEnvelope`) or the other way round.
fn key_set_message(key_set: &[u8]) -> Vec<u8> {
    const CONTEXT: &[u8] = b"flotilla key-set v1\0";
    [CONTEXT, key_set].concat()
}

/// Verifies a key-set update against the keys already trusted.
pub fn verify_key_set(
    update: &pb::KeySetUpdate,
    trusted: &TrustedKeys,
) -> Result<KeySet, KeySetError> {
    if update.key_set.len() > MAX_ENVELOPE_BYTES {
        return Err(KeySetError::Malformed("oversized".into()));
    }
    let message = key_set_message(&update.key_set);
    let signed_by_trusted = update.signatures.iter().any(|sig| {
        let Some(key) = trusted.get(&sig.key_id) else {
            return false;
        };
        <[u8; 64]>::try_from(sig.signature.as_slice())
            .map(|b| Signature::from_bytes(&b))
            .is_ok_and(|signature| key.verify_strict(&message, &signature).is_ok())
    });
    if !signed_by_trusted {
        return Err(KeySetError::Untrusted);
    }
    let set = pb::KeySet::decode(update.key_set.as_slice())
        .map_err(|e| KeySetError::Malformed(e.to_string()))?;
    let mut keys = TrustedKeys::default();
    for raw in &set.public_keys {
        keys.insert_raw(raw)
            .map_err(|e| KeySetError::Malformed(e.to_string()))?;
    }
    if keys.is_empty() {
        return Err(KeySetError::Malformed("no keys".into()));
    }
    Ok(KeySet {
        keys,
        issued_at_ms: set.issued_at_ms,
    })
}

fn humanize_ms(ms: i64) -> String {
    let secs = ms.max(0) / 1000;
    if secs >= 3600 {
        format!("{}h{}m", secs / 3600, (secs % 3600) / 60)
    } else if secs >= 60 {
        format!("{}m{}s", secs / 60, secs % 60)
    } else {
        format!("{}.{:03}s", secs, ms.max(0) % 1000)
    }
}
