//! Secret values encrypted at rest: XChaCha20-Poly1305 under a [`Keyring`] read from a key file
//! (`/etc/flotilla/secrets.key`, mode 0600) or `FLOTILLA_SECRETS_KEY`, never from sled. A
//! [`Sealed`] value is bound by its AAD to its place (`app/env/KEY`). Storage is the caller's.
//!
//! Key file format: one key per line, `<key-id> <base64 of 32 bytes>`; the first line is the
//! current key (new seals), the others only open older values. Blank lines and `#` comments
//! are ignored. Rotation is described in `docs/secrets.md`.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};

use crate::names::{AppName, ConfigKey, EnvName};
use crate::secret::Secret;

#[cfg(test)]
mod tests;

/// The environment variable a keyring may come from (same format as the file).
pub const SECRETS_KEY_ENV: &str = "FLOTILLA_SECRETS_KEY";
/// The default key file.
pub const DEFAULT_KEY_FILE: &str = "/etc/flotilla/secrets.key";

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
const KEY_ID_MAX: usize = 64;
/// Prefix of the string encoding, so a stored value says what it is.
const STRING_PREFIX: &str = "fs1.";

/// A key id: 1–64 characters of `[A-Za-z0-9._-]` (e.g. `2026-08`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    pub fn parse(value: &str) -> Option<Self> {
        let ok = !value.is_empty()
            && value.len() <= KEY_ID_MAX
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        ok.then(|| Self(value.to_owned()))
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

/// Loading or creating a keyring. Never contains key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("read key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key file {path} is accessible by group or others (mode {mode:04o}); secrets keys must be private: run `chmod 600 {path}`"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{origin} holds no key (expected lines `<key-id> <base64 of 32 bytes>`)")]
    Empty { origin: String },
    #[error("{origin} line {line}: {reason}")]
    Line {
        origin: String,
        line: usize,
        reason: String,
    },
    #[error("{origin} line {line}: key id {id:?} is used twice")]
    DuplicateId {
        origin: String,
        line: usize,
        id: String,
    },
    #[error("key id {0:?} is invalid: use 1-64 letters, digits, '.', '_' or '-'")]
    BadKeyId(String),
    #[error("key file {0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    #[error("write key file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no secrets key: set {SECRETS_KEY_ENV} or create {0} (flotilla-server init)")]
    Missing(PathBuf),
    #[error("the system random number generator failed")]
    Random,
}

/// Sealing or opening a value. Never contains the plaintext or key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error(
        "sealed with key {key_id:?}, which the keyring does not hold (it holds: {known}); put that key back in the key file to open it"
    )]
    UnknownKey { key_id: String, known: String },
    #[error(
        "cannot open a value sealed with key {key_id:?}: it was tampered with, or belongs to another place than the one asked for"
    )]
    Open { key_id: String },
    #[error("encryption failed")]
    Encrypt,
    #[error("the system random number generator failed")]
    Random,
    #[error("malformed sealed value: {0}")]
    Malformed(&'static str),
    #[error("sealed value has version {0}; this build reads version {VERSION}")]
    Version(u8),
    #[error("the opened value is not UTF-8")]
    NotUtf8,
}

/// The keys secrets are sealed with; the first is current. `Debug` prints key ids only.
pub struct Keyring {
    keys: Vec<(KeyId, XChaCha20Poly1305)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current_key_id().as_str())
            .field(
                "key_ids",
                &self.key_ids().map(KeyId::as_str).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// Parses the key file format; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, KeyringError> {
        let mut keys: Vec<(KeyId, XChaCha20Poly1305)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.trim();
            if content.is_empty() || content.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| KeyringError::Line {
                origin: origin.to_owned(),
                line,
                reason: reason.to_owned(),
            };
            let mut parts = content.split_whitespace();
            let (Some(id), Some(b64), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("expected `<key-id> <base64 of 32 bytes>`"));
            };
            let id = KeyId::parse(id)
                .ok_or_else(|| bad("invalid key id: use 1-64 letters, digits, '.', '_' or '-'"))?;
            // The decoded bytes and the base64 text are never put in an error.
            let bytes = STANDARD
                .decode(b64)
                .map_err(|_| bad("the key is not valid base64"))?;
            let array: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
                bad(&format!(
                    "the key is {} bytes; it must be {KEY_LEN}",
                    bytes.len()
                ))
            })?;
            if keys.iter().any(|(k, _)| *k == id) {
                return Err(KeyringError::DuplicateId {
                    origin: origin.to_owned(),
                    line,
                    id: id.0,
                });
            }
            keys.push((id, XChaCha20Poly1305::new(&Key::from(array))));
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty {
                origin: origin.to_owned(),
            });
        }
        Ok(Self { keys })
    }

    /// Reads a key file, refusing one that group or others may read or write (as ssh does).
    pub fn from_file(path: &Path) -> Result<Self, KeyringError> {
        check_private(path)?;
        let text = fs::read_to_string(path).map_err(|source| KeyringError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &format!("key file {}", path.display()))
    }

    /// The keyring from `FLOTILLA_SECRETS_KEY` when `env` has it, else from `path`.
    /// `env` is a lookup (`|k| std::env::var(k).ok()`), so tests need no `set_var`.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, KeyringError> {
        if let Some(value) = env(SECRETS_KEY_ENV) {
            return Self::parse(&value, SECRETS_KEY_ENV);
        }
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(KeyringError::Missing(path.to_owned()))
            }
            _ => Self::from_file(path),
        }
    }

    /// One key file line with a fresh random key: `<key-id> <base64>`, for rotation.
    pub fn generate_line(key_id: &str) -> Result<String, KeyringError> {
        let id = KeyId::parse(key_id).ok_or_else(|| KeyringError::BadKeyId(key_id.to_owned()))?;
        let key = Key::try_generate().map_err(|_| KeyringError::Random)?;
        Ok(format!("{id} {}", STANDARD.encode(key.as_slice())))
    }

    /// Creates a key file with one fresh key (mode 0600, refusing to overwrite anything) and
    /// returns its keyring. For `flotilla-server init`.
    pub fn generate_file(path: &Path, key_id: &str) -> Result<Self, KeyringError> {
        let line = Self::generate_line(key_id)?;
        let contents = format!(
            "# Flotilla secrets keys: `<key-id> <base64 of 32 bytes>`, the first is current.\n# Keep this file 0600 and back it up: sealed secrets cannot be opened without it.\n{line}\n"
        );
        let write_err = |source| KeyringError::Write {
            path: path.to_owned(),
            source,
        };
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyringError::Exists(path.to_owned())
            } else {
                write_err(e)
            }
        })?;
        file.write_all(contents.as_bytes()).map_err(write_err)?;
        file.sync_all().map_err(write_err)?;
        Self::parse(&contents, &format!("key file {}", path.display()))
    }

    pub fn current_key_id(&self) -> &KeyId {
        // `parse` refuses an empty keyring.
        &self.keys[0].0
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.iter().map(|(id, _)| id)
    }

    /// Encrypts `plaintext` under the current key with a fresh random nonce; `aad` is the
    /// value's place (see [`secret_aad`]) and must be given again to open it.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Sealed, SealError> {
        let (key_id, cipher) = &self.keys[0];
        let nonce = XNonce::try_generate().map_err(|_| SealError::Random)?;
        let full_aad = bound_aad(key_id, aad);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: &full_aad,
                },
            )
            .map_err(|_| SealError::Encrypt)?;
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(nonce.as_slice());
        Ok(Sealed {
            key_id: key_id.clone(),
            nonce: nonce_bytes,
            ciphertext,
        })
    }

    /// Decrypts `sealed`, which must have been sealed with the same `aad`.
    pub fn open(&self, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let cipher = self
            .keys
            .iter()
            .find(|(id, _)| *id == sealed.key_id)
            .map(|(_, c)| c)
            .ok_or_else(|| SealError::UnknownKey {
                key_id: sealed.key_id.0.clone(),
                known: self
                    .key_ids()
                    .map(KeyId::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let full_aad = bound_aad(&sealed.key_id, aad);
        cipher
            .decrypt(
                &XNonce::from(sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &full_aad,
                },
            )
            .map_err(|_| SealError::Open {
                key_id: sealed.key_id.0.clone(),
            })
    }

    /// [`Keyring::open`] for a text value (a config value), as a redacting [`Secret`].
    pub fn open_secret(&self, sealed: &Sealed, aad: &[u8]) -> Result<Secret, SealError> {
        let bytes = self.open(sealed, aad)?;
        String::from_utf8(bytes)
            .map(Secret::new)
            .map_err(|_| SealError::NotUtf8)
    }

    /// Whether `sealed` uses a key other than the current one (reseal it after a rotation).
    pub fn needs_reseal(&self, sealed: &Sealed) -> bool {
        sealed.key_id != *self.current_key_id()
    }

    /// Opens and seals again under the current key (same place).
    pub fn reseal(&self, sealed: &Sealed, aad: &[u8]) -> Result<Sealed, SealError> {
        let plaintext = self.open(sealed, aad)?;
        self.seal(&plaintext, aad)
    }
}

/// The AAD for an app config secret: `flotilla/config/<app>/<env>/<KEY>`. A value sealed for
/// one (app, environment, key) cannot be opened as another.
pub fn secret_aad(app: &AppName, env: &EnvName, key: &ConfigKey) -> String {
    format!("flotilla/config/{app}/{env}/{key}")
}

/// What the cipher authenticates: the format version, the key id and the caller's AAD, so the
/// header cannot be changed either.
fn bound_aad(key_id: &KeyId, aad: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + key_id.0.len() + aad.len());
    out.push(VERSION);
    out.push(key_id.0.len() as u8); // at most KEY_ID_MAX
    out.extend_from_slice(key_id.0.as_bytes());
    out.extend_from_slice(aad);
    out
}

/// An encrypted value: which key, the nonce, the ciphertext with its 16-byte tag.
///
/// Bytes: `[version=1][key id length][key id][nonce: 24][ciphertext + tag]`; as a string,
/// `fs1.` + base64url (no padding) of those bytes. `Debug` shows the key id and lengths only.
#[derive(Clone, PartialEq, Eq)]
pub struct Sealed {
    key_id: KeyId,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id.as_str())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

impl Sealed {
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let id = self.key_id.0.as_bytes();
        let mut out = Vec::with_capacity(2 + id.len() + NONCE_LEN + self.ciphertext.len());
        out.push(VERSION);
        out.push(id.len() as u8); // at most KEY_ID_MAX
        out.extend_from_slice(id);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let (&version, rest) = bytes.split_first().ok_or(SealError::Malformed("empty"))?;
        if version != VERSION {
            return Err(SealError::Version(version));
        }
        let (&id_len, rest) = rest
            .split_first()
            .ok_or(SealError::Malformed("truncated header"))?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_LEN + TAG_LEN {
            return Err(SealError::Malformed("too short"));
        }
        let (id, rest) = rest.split_at(id_len);
        let key_id = std::str::from_utf8(id)
            .ok()
            .and_then(KeyId::parse)
            .ok_or(SealError::Malformed("invalid key id"))?;
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let mut nonce_bytes = [0u8; NONCE_LEN];
        nonce_bytes.copy_from_slice(nonce);
        Ok(Self {
            key_id,
            nonce: nonce_bytes,
            ciphertext: ciphertext.to_vec(),
        })
    }

    /// The string encoding (`fs1.<base64url>`), for text stores and JSON.
    pub fn encode(&self) -> String {
        format!("{STRING_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.to_bytes()))
    }

    pub fn decode(text: &str) -> Result<Self, SealError> {
        let b64 = text
            .strip_prefix(STRING_PREFIX)
            .ok_or(SealError::Malformed("missing the fs1. prefix"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| SealError::Malformed("invalid base64"))?;
        Self::from_bytes(&bytes)
    }
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), KeyringError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::metadata(path).map_err(|source| KeyringError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyringError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), KeyringError> {
    Ok(())
}
