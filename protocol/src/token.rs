//! Signed device tokens.
//!
//! A device proves who it is at the WebSocket upgrade with a token naming its
//! user and device, signed with Ed25519 by whoever issues accounts (in a
//! local run: the relay's own dev key). The relay holds only public keys, so
//! a compromised relay cannot mint tokens, and several keys can be trusted at
//! once while an issuer rotates its key.
//!
//! Text form: `v1.<base64url(claims JSON)>.<base64url(signature)>`; the
//! signature covers the exact claims bytes, and `kid` names the key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const PREFIX: &str = "v1";
/// A token longer than this is refused before any parsing work.
pub const MAX_TOKEN_LEN: usize = 2048;
/// User and device ids: short, printable, no separators that could confuse logs or keys.
const MAX_ID_LEN: usize = 128;

/// What a token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceClaims {
    /// The user the device belongs to; documents are isolated per user.
    #[serde(rename = "uid")]
    pub user_id: String,
    /// The device; sync state is kept per (device, document).
    #[serde(rename = "did")]
    pub device_id: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Id of the key that signed the token.
    pub kid: String,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token is signed by an unknown key `{0}`")]
    UnknownKey(String),
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token names an invalid user or device id")]
    BadClaims,
}

/// Signs tokens. Lives with the account service (or the relay in a dev run).
pub struct TokenIssuer {
    key_id: String,
    key: SigningKey,
}

impl TokenIssuer {
    pub fn new(key_id: impl Into<String>, seed: [u8; 32]) -> Self {
        Self { key_id: key_id.into(), key: SigningKey::from_bytes(&seed) }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Issues a token for `user_id`/`device_id` valid until `exp` (Unix seconds).
    pub fn issue(&self, user_id: &str, device_id: &str, exp: u64) -> Result<String, TokenError> {
        let claims = DeviceClaims {
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            exp,
            kid: self.key_id.clone(),
        };
        validate_claims(&claims)?;
        let body = serde_json::to_vec(&claims).map_err(|_| TokenError::Malformed)?;
        let signature = self.key.sign(&body);
        Ok(format!("{PREFIX}.{}.{}", URL_SAFE_NO_PAD.encode(&body), URL_SAFE_NO_PAD.encode(signature.to_bytes())))
    }
}

/// Verifies tokens against a set of trusted public keys.
#[derive(Clone, Default)]
pub struct TokenVerifier {
    keys: HashMap<String, VerifyingKey>,
}

impl TokenVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts `public_key` under `key_id`. Fails if the bytes are not a valid key.
    pub fn trust(&mut self, key_id: impl Into<String>, public_key: [u8; 32]) -> Result<(), TokenError> {
        let key = VerifyingKey::from_bytes(&public_key).map_err(|_| TokenError::Malformed)?;
        self.keys.insert(key_id.into(), key);
        Ok(())
    }

    /// Checks a token at time `now` (Unix seconds) and returns its claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<DeviceClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(PREFIX), Some(body), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let body = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| TokenError::Malformed)?;
        let sig = Signature::from_slice(&sig).map_err(|_| TokenError::Malformed)?;
        let claims: DeviceClaims = serde_json::from_slice(&body).map_err(|_| TokenError::Malformed)?;
        let key = self.keys.get(&claims.kid).ok_or_else(|| TokenError::UnknownKey(claims.kid.clone()))?;
        key.verify(&body, &sig).map_err(|_| TokenError::BadSignature)?;
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        validate_claims(&claims)?;
        Ok(claims)
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

fn validate_claims(claims: &DeviceClaims) -> Result<(), TokenError> {
    if valid_id(&claims.user_id) && valid_id(&claims.device_id) { Ok(()) } else { Err(TokenError::BadClaims) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (TokenIssuer, TokenVerifier) {
        let issuer = TokenIssuer::new("k1", [7u8; 32]);
        let mut verifier = TokenVerifier::new();
        verifier.trust("k1", issuer.public_key()).unwrap();
        (issuer, verifier)
    }

    #[test]
    fn issued_token_verifies() {
        let (issuer, verifier) = pair();
        let token = issuer.issue("alice", "phone", 100).unwrap();
        let claims = verifier.verify(&token, 50).unwrap();
        assert_eq!((claims.user_id.as_str(), claims.device_id.as_str()), ("alice", "phone"));
    }

    #[test]
    fn expired_tampered_and_foreign_tokens_are_refused() {
        let (issuer, verifier) = pair();
        let token = issuer.issue("alice", "phone", 100).unwrap();
        assert_eq!(verifier.verify(&token, 100), Err(TokenError::Expired));

        // Re-sign the same claims with another key under the same kid.
        let forger = TokenIssuer::new("k1", [8u8; 32]);
        let forged = forger.issue("alice", "phone", 100).unwrap();
        assert_eq!(verifier.verify(&forged, 50), Err(TokenError::BadSignature));

        // Swap the body for another user's, keep the signature.
        let other = issuer.issue("mallory", "phone", 100).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        let other_parts: Vec<&str> = other.split('.').collect();
        parts[1] = other_parts[1];
        assert_eq!(verifier.verify(&parts.join("."), 50), Err(TokenError::BadSignature));

        let stranger = TokenIssuer::new("k2", [9u8; 32]);
        let t = stranger.issue("alice", "phone", 100).unwrap();
        assert_eq!(verifier.verify(&t, 50), Err(TokenError::UnknownKey("k2".into())));

        for junk in ["", "v1", "v1..", "v2.a.b", "v1.!!!.###", &"x".repeat(5000)] {
            assert!(verifier.verify(junk, 50).is_err(), "{junk}");
        }
    }

    #[test]
    fn ids_with_separators_are_refused() {
        let (issuer, _) = pair();
        assert_eq!(issuer.issue("a/b", "d", 1), Err(TokenError::BadClaims));
        assert_eq!(issuer.issue("a", "", 1), Err(TokenError::BadClaims));
    }
}
