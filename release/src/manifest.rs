//! The manifest a device trusts: format, Ed25519 signature, freshness.
//!
//! The relay signs the exact bytes of the manifest's JSON (`payload`, base64)
//! and names the key (`key_id`); a device verifies those bytes against the
//! public keys it was built with, then parses them. Nothing outside the
//! payload is acted on, so every field a device uses is covered by the
//! signature, and no JSON canonicalization is needed.
//!
//! Freshness: `sequence` only grows per dataset + channel (the relay bumps it
//! on every publish, rollout change and deprecation), so a device refuses a
//! manifest older than one it accepted (a rollback attack); `expires_at`
//! stops a device from accepting a stale manifest (a freeze attack). Expiry
//! never disables a release a device already runs.

use crate::model::TimestampMs;
use crate::version::Version;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::ToSchema;

pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ManifestArtifact {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// Absolute URL, or a path on the relay that served the manifest.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Manifest {
    pub format: u32,
    pub release_id: String,
    pub dataset: String,
    pub channel: String,
    #[schema(value_type = String)]
    pub version: Version,
    pub notes: String,
    #[schema(value_type = String)]
    pub min_app_version: Version,
    /// This release is mandatory: devices may not keep an older one.
    pub mandatory: bool,
    /// The lowest version a device on this channel may keep (the newest
    /// mandatory release offered to it), if any.
    #[schema(value_type = Option<String>)]
    pub channel_min_version: Option<Version>,
    /// Set when the release is deprecated: devices roll forward or back.
    pub deprecated: Option<String>,
    /// Grows with every change on the dataset + channel.
    pub sequence: u64,
    pub issued_at: TimestampMs,
    pub expires_at: TimestampMs,
    pub artifacts: Vec<ManifestArtifact>,
    /// Signed as the answer to `latest`: the release the channel offers this
    /// device now. A named release's manifest says false, so it cannot be
    /// replayed as an answer to `latest` to move a device back.
    #[serde(default)]
    pub latest: bool,
    /// The channel was rolled back (a newer release was deprecated), so a
    /// device running a newer release may move back to this one. Without
    /// it a device never activates a release older than its active one.
    #[serde(default)]
    pub downgrade_allowed: bool,
}

/// What goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SignedManifest {
    pub key_id: String,
    /// Base64 of the manifest's JSON bytes, exactly as signed.
    pub payload: String,
    /// Base64 Ed25519 signature over the payload bytes.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is malformed: {0}")]
    Malformed(String),
    #[error("manifest is signed by key `{0}`, which this device does not trust")]
    UnknownKey(String),
    #[error("manifest signature is invalid")]
    BadSignature,
    #[error("manifest format {0} is not supported")]
    UnsupportedFormat(u32),
    #[error("manifest sequence {got} is older than {accepted}, already accepted (rollback refused)")]
    Rollback { accepted: u64, got: u64 },
    #[error("manifest expired at {expires_at} (now {now}); not accepting a stale manifest")]
    Expired { expires_at: TimestampMs, now: TimestampMs },
}

/// Signs manifests (the relay).
pub struct ManifestSigner {
    key_id: String,
    key: SigningKey,
}

impl ManifestSigner {
    pub fn new(key_id: impl Into<String>, seed: [u8; 32]) -> ManifestSigner {
        ManifestSigner { key_id: key_id.into(), key: SigningKey::from_bytes(&seed) }
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn sign(&self, manifest: &Manifest) -> SignedManifest {
        // Serializing a struct of plain fields cannot fail.
        let bytes = serde_json::to_vec(manifest).unwrap_or_default();
        let signature = self.key.sign(&bytes);
        SignedManifest {
            key_id: self.key_id.clone(),
            payload: STANDARD.encode(&bytes),
            signature: STANDARD.encode(signature.to_bytes()),
        }
    }
}

/// The public keys a device is built with. Trusting several at once is how
/// an operator rotates the signing key without stranding devices.
#[derive(Clone, Default)]
pub struct TrustedKeys {
    keys: HashMap<String, VerifyingKey>,
}

impl TrustedKeys {
    pub fn new() -> TrustedKeys {
        TrustedKeys::default()
    }

    pub fn trust(&mut self, key_id: impl Into<String>, public_key: [u8; 32]) -> Result<(), ManifestError> {
        let key = VerifyingKey::from_bytes(&public_key).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        self.keys.insert(key_id.into(), key);
        Ok(())
    }

    /// Checks the signature and returns the manifest it covers.
    pub fn verify(&self, signed: &SignedManifest) -> Result<Manifest, ManifestError> {
        let key = self.keys.get(&signed.key_id).ok_or_else(|| ManifestError::UnknownKey(signed.key_id.clone()))?;
        let payload = STANDARD.decode(&signed.payload).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        let sig = STANDARD.decode(&signed.signature).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        let sig = Signature::from_slice(&sig).map_err(|_| ManifestError::BadSignature)?;
        key.verify(&payload, &sig).map_err(|_| ManifestError::BadSignature)?;
        let manifest: Manifest =
            serde_json::from_slice(&payload).map_err(|e| ManifestError::Malformed(e.to_string()))?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(ManifestError::UnsupportedFormat(manifest.format));
        }
        Ok(manifest)
    }

    /// Signature, then freshness: not older than `accepted_sequence`, not expired at `now`.
    pub fn accept(
        &self,
        signed: &SignedManifest,
        accepted_sequence: Option<u64>,
        now: TimestampMs,
    ) -> Result<Manifest, ManifestError> {
        let manifest = self.verify(signed)?;
        if let Some(accepted) = accepted_sequence
            && manifest.sequence < accepted
        {
            return Err(ManifestError::Rollback { accepted, got: manifest.sequence });
        }
        if now >= manifest.expires_at {
            return Err(ManifestError::Expired { expires_at: manifest.expires_at, now });
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(sequence: u64, expires_at: TimestampMs) -> Manifest {
        Manifest {
            latest: true,
            downgrade_allowed: false,
            format: MANIFEST_FORMAT,
            release_id: "r1".into(),
            dataset: "vocab-en".into(),
            channel: "stable".into(),
            version: Version::new(1, 0, 0),
            notes: String::new(),
            min_app_version: Version::new(1, 0, 0),
            mandatory: false,
            channel_min_version: None,
            deprecated: None,
            sequence,
            issued_at: 0,
            expires_at,
            artifacts: vec![ManifestArtifact { name: "a".into(), size: 1, sha256: "00".into(), url: "/a".into() }],
        }
    }

    fn keys(signer: &ManifestSigner) -> TrustedKeys {
        let mut k = TrustedKeys::new();
        k.trust(signer.key_id(), signer.public_key()).unwrap();
        k
    }

    #[test]
    fn signed_manifest_verifies_and_freshness_is_enforced() {
        let signer = ManifestSigner::new("k1", [3; 32]);
        let trusted = keys(&signer);
        let signed = signer.sign(&manifest(5, 1000));
        assert_eq!(trusted.accept(&signed, Some(5), 10).unwrap().sequence, 5);
        assert_eq!(trusted.accept(&signed, Some(6), 10), Err(ManifestError::Rollback { accepted: 6, got: 5 }));
        assert_eq!(trusted.accept(&signed, None, 1000), Err(ManifestError::Expired { expires_at: 1000, now: 1000 }));
    }

    #[test]
    fn tampering_unknown_keys_and_garbage_are_refused() {
        let signer = ManifestSigner::new("k1", [3; 32]);
        let trusted = keys(&signer);
        let mut signed = signer.sign(&manifest(5, 1000));
        // Change one field in the payload, keep the signature.
        let mut m = manifest(5, 1000);
        m.artifacts[0].sha256 = "ff".into();
        signed.payload = STANDARD.encode(serde_json::to_vec(&m).unwrap());
        assert_eq!(trusted.verify(&signed), Err(ManifestError::BadSignature));

        let stranger = ManifestSigner::new("k2", [4; 32]);
        assert_eq!(trusted.verify(&stranger.sign(&manifest(5, 1000))), Err(ManifestError::UnknownKey("k2".into())));
        // Same key id, different key: a forgery.
        let forger = ManifestSigner::new("k1", [5; 32]);
        assert_eq!(trusted.verify(&forger.sign(&manifest(5, 1000))), Err(ManifestError::BadSignature));
        let junk = SignedManifest { key_id: "k1".into(), payload: "%%%".into(), signature: "".into() };
        assert!(matches!(trusted.verify(&junk), Err(ManifestError::Malformed(_))));
    }

    #[test]
    fn rotation_trusts_old_and_new_keys_at_once() {
        let old = ManifestSigner::new("2026-01", [1; 32]);
        let new = ManifestSigner::new("2026-07", [2; 32]);
        let mut trusted = keys(&old);
        trusted.trust(new.key_id(), new.public_key()).unwrap();
        assert!(trusted.verify(&old.sign(&manifest(1, 9))).is_ok());
        assert!(trusted.verify(&new.sign(&manifest(2, 9))).is_ok());
    }
}
