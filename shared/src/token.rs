//! Token formats: join tokens (carry a one-time secret and the CA pin) and the
//! hashing used to store every token secret. Secrets never appear in `Debug`.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const JOIN_PREFIX: &str = "fltjoin1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a Flotilla join token (expected {JOIN_PREFIX}.<secret>.<ca sha256>)")]
    JoinFormat,
    #[error("cannot read random bytes from the operating system")]
    Random,
}

/// 32 random bytes, URL-safe base64 without padding (43 characters),
/// registered for scrubbing (`secret::scrub`).
pub fn random_secret() -> Result<String, TokenError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TokenError::Random)?;
    let secret = URL_SAFE_NO_PAD.encode(bytes);
    // Every token this process makes is kept out of Sentry events.
    crate::secret::register_for_scrubbing(&secret);
    Ok(secret)
}

/// Hex SHA-256 of a token secret: what the stores keep. The secrets are 256-bit
/// random values, so a fast hash is enough (no password stretching needed).
pub fn hash_secret(secret: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
}

/// `fltjoin1.<secret>.<sha256 of the CA certificate>`, like kubeadm's token plus
/// `--discovery-token-ca-cert-hash` in one string.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    pub secret: String,
    pub ca_fingerprint: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("secret", &"[redacted]")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{JOIN_PREFIX}.{}.{}", self.secret, self.ca_fingerprint)
    }
}

impl FromStr for JoinToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('.');
        let (Some(prefix), Some(secret), Some(fp), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::JoinFormat);
        };
        let secret_ok = secret.len() == 43
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let fp_ok = fp.len() == 64 && fp.bytes().all(|b| b.is_ascii_hexdigit());
        if prefix != JOIN_PREFIX || !secret_ok || !fp_ok {
            return Err(TokenError::JoinFormat);
        }
        Ok(Self {
            secret: secret.to_owned(),
            ca_fingerprint: fp.to_ascii_lowercase(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_tokens_round_trip_and_hide_the_secret() {
        let token = JoinToken {
            secret: random_secret().unwrap(),
            ca_fingerprint: "ab".repeat(32),
        };
        let text = token.to_string();
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        assert!(!format!("{token:?}").contains(&token.secret));
        for bad in [
            "",
            "fltjoin1",
            "fltjoin2.aaa.bbb",
            &format!("fltjoin1.{}.{}", "a".repeat(43), "z".repeat(64)),
            &format!("fltjoin1.{}.{}.x", "a".repeat(43), "a".repeat(64)),
        ] {
            assert_eq!(
                bad.parse::<JoinToken>(),
                Err(TokenError::JoinFormat),
                "{bad}"
            );
        }
    }

    #[test]
    fn secrets_are_random_and_hashes_stable() {
        let a = random_secret().unwrap();
        assert_ne!(a, random_secret().unwrap());
        assert_eq!(a.len(), 43);
        assert_eq!(hash_secret(&a), hash_secret(&a));
        assert_ne!(hash_secret(&a), a);
    }
}
