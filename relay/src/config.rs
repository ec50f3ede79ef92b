//! Relay configuration, with embedded defaults for a local run.

use crate::limits::Limits;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use protocol::{TokenIssuer, TokenVerifier};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Key id of the embedded development token key.
pub const DEV_KEY_ID: &str = "dev";

#[derive(Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Public keys device tokens may be signed with.
    pub token_verifier: TokenVerifier,
    pub limits: Limits,
}

impl Config {
    /// A config for a local run or a test: dev token key, default limits.
    pub fn local(data_dir: PathBuf, listen: SocketAddr) -> Config {
        let mut token_verifier = TokenVerifier::new();
        let _ = token_verifier.trust(DEV_KEY_ID, dev_issuer().public_key());
        Config { data_dir, listen, token_verifier, limits: Limits::default() }
    }
}

/// The embedded development issuer. Its private key is public knowledge:
/// a relay that trusts it accepts anyone, so production configs name their
/// own keys (`--token-key`) and the relay logs a warning when it is in use.
pub fn dev_issuer() -> TokenIssuer {
    TokenIssuer::new(DEV_KEY_ID, dev_seed())
}

/// Parses `KID=BASE64_PUBLIC_KEY`.
pub fn parse_public_key(spec: &str) -> Result<(String, [u8; 32]), String> {
    let (kid, b64) = spec.split_once('=').ok_or_else(|| format!("`{spec}` is not KID=BASE64"))?;
    let bytes = STANDARD.decode(b64.trim()).map_err(|e| format!("key `{kid}`: {e}"))?;
    let key: [u8; 32] = bytes.try_into().map_err(|_| format!("key `{kid}` must be 32 bytes"))?;
    Ok((kid.to_owned(), key))
}

/// A fixed seed: the dev key must be the same on every machine so that
/// `relay dev-token` and a relay started with defaults agree.
fn dev_seed() -> [u8; 32] {
    *b"progress-relay-dev-key-not-prod!"
}
