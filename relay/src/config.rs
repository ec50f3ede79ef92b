//! Relay configuration, with embedded defaults for a local run.

use crate::limits::Limits;
use crate::release::admin::AdminToken;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use protocol::{TokenIssuer, TokenVerifier};
use release::rules::SizeLimits;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Key id of the embedded development token key.
pub const DEV_KEY_ID: &str = "dev";
/// File in the data directory holding a generated development manifest key.
const DEV_MANIFEST_KEY_FILE: &str = "dev-manifest-key";

#[derive(Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Public keys device tokens may be signed with.
    pub token_verifier: TokenVerifier,
    pub limits: Limits,
    /// Who may call the admin API; each token has a name for the audit log.
    pub admin_tokens: Vec<AdminToken>,
    /// (key id, Ed25519 seed) that signs manifests. `None`: a development key
    /// generated once and kept in the data directory.
    pub manifest_key: Option<(String, [u8; 32])>,
    pub release_limits: SizeLimits,
    /// How long a device may accept a manifest after it was issued.
    pub manifest_ttl: Duration,
    /// How often refused admin requests are written to the audit log, as one
    /// entry per source (they are counted in memory in between).
    pub refusal_audit_interval: Duration,
    /// Allow development credentials (the embedded token key, a generated
    /// admin token) on a non-loopback address. Never in production.
    pub dev: bool,
    /// Terminate TLS here (`--tls-cert`/`--tls-key`); `None`: plain HTTP
    /// (behind a TLS proxy, or on loopback).
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// Documents, sync states, the release registry and the audit log in
    /// PostgreSQL (`--database-url`), shared by several relays, instead of
    /// the SQLite file in `data_dir`. Artifact files: `artifact_dir`.
    pub database_url: Option<String>,
    /// Where artifact files live; `None`: `artifacts` under `data_dir`.
    /// Relays sharing a database share this directory (a shared mount).
    pub artifact_dir: Option<PathBuf>,
}

impl Config {
    /// A config for a local run or a test: dev token key, default limits,
    /// no admin token (set one), a generated dev manifest key.
    pub fn local(data_dir: PathBuf, listen: SocketAddr) -> Config {
        let mut token_verifier = TokenVerifier::new();
        let _ = token_verifier.trust(DEV_KEY_ID, dev_issuer().public_key());
        Config {
            data_dir,
            listen,
            token_verifier,
            limits: Limits::default(),
            admin_tokens: Vec::new(),
            manifest_key: None,
            release_limits: SizeLimits { max_artifact_bytes: 4 << 30, max_release_bytes: 16 << 30 },
            manifest_ttl: Duration::from_secs(7 * 24 * 3600),
            refusal_audit_interval: Duration::from_secs(60),
            dev: false,
            tls: None,
            database_url: None,
            artifact_dir: None,
        }
    }
}

/// The embedded development issuer. Its private key is public knowledge:
/// a relay that trusts it accepts anyone, so production configs name their
/// own keys (`--token-key`) and the relay logs a warning when it is in use.
pub fn dev_issuer() -> TokenIssuer {
    TokenIssuer::new(DEV_KEY_ID, dev_seed())
}

/// A fixed seed: the dev key must be the same on every machine so that
/// `relay dev-token` and a relay started with defaults agree.
fn dev_seed() -> [u8; 32] {
    *b"progress-relay-dev-key-not-prod!"
}

/// Refuses development credentials on an address other machines can reach.
///
/// The embedded token key's private half is in this repository, so a relay
/// trusting it accepts anyone; a generated admin token sits in a file next
/// to the data. Both are fine on loopback (the README's first command) and
/// fail closed anywhere else unless `dev` says the operator means it.
pub fn check_dev_credentials(
    listen: SocketAddr,
    dev_token_key: bool,
    generated_admin_token: bool,
    dev: bool,
) -> Result<(), String> {
    if dev || listen.ip().is_loopback() {
        return Ok(());
    }
    let mut missing = Vec::new();
    if dev_token_key {
        missing.push("--token-key (without it the embedded development key, whose private half is public, is trusted)");
    }
    if generated_admin_token {
        missing.push("--admin-token (without it a generated development admin token is used)");
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "refusing to listen on {listen} with development credentials; set {}, or pass --dev to run a development relay on a non-loopback address",
        missing.join(" and ")
    ))
}

/// Parses `KID=BASE64_32_BYTES` (a public key or a seed).
pub fn parse_key(spec: &str) -> Result<(String, [u8; 32]), String> {
    let (kid, b64) = spec.split_once('=').ok_or_else(|| format!("`{spec}` is not KID=BASE64"))?;
    let bytes = STANDARD.decode(b64.trim()).map_err(|e| format!("key `{kid}`: {e}"))?;
    let key: [u8; 32] = bytes.try_into().map_err(|_| format!("key `{kid}` must be 32 bytes"))?;
    Ok((kid.to_owned(), key))
}

/// Parses `NAME=TOKEN`.
pub fn parse_admin_token(spec: &str) -> Result<AdminToken, String> {
    let (name, token) = spec.split_once('=').ok_or_else(|| "admin tokens are NAME=TOKEN".to_string())?;
    if name.is_empty() || token.len() < 16 {
        return Err(format!("admin token `{name}` must have a name and at least 16 characters"));
    }
    Ok(AdminToken { name: name.to_owned(), token: token.to_owned() })
}

/// Loads the development manifest key from the data directory, creating
/// it on first use. Returns (key id, seed, whether it was just created).
pub fn dev_manifest_key(data_dir: &Path) -> std::io::Result<(String, [u8; 32], bool)> {
    let path = data_dir.join(DEV_MANIFEST_KEY_FILE);
    let (seed, created) = match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes =
                hex::decode(text.trim()).map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
            let seed: [u8; 32] = bytes
                .try_into()
                .map_err(|_| std::io::Error::other(format!("{}: expected 32 bytes", path.display())))?;
            (seed, false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed: [u8; 32] = rand::random();
            write_private(&path, hex::encode(seed).as_bytes())?;
            (seed, true)
        }
        Err(e) => return Err(e),
    };
    let public = release::ManifestSigner::new("", seed).public_key();
    Ok((format!("dev-{}", &hex::encode(public)[..8]), seed, created))
}

pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_credentials_only_on_loopback_unless_dev() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let v6_any: SocketAddr = "[::]:8080".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let local6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert!(check_dev_credentials(local, true, true, false).is_ok());
        assert!(check_dev_credentials(local6, true, true, false).is_ok());
        let err = check_dev_credentials(public, true, false, false).unwrap_err();
        assert!(err.contains("--token-key") && !err.contains("--admin-token"), "{err}");
        let err = check_dev_credentials(v6_any, false, true, false).unwrap_err();
        assert!(err.contains("--admin-token"), "{err}");
        assert!(check_dev_credentials(public, true, true, true).is_ok(), "--dev allows it");
        assert!(check_dev_credentials(public, false, false, false).is_ok(), "real credentials");
    }
}
