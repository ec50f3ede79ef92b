//! `relay` — run the sync relay and release registry, print a development
//! device token, or generate a key.

use clap::{Parser, Subcommand};
use relay::config::{self, Config};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(version, about = "Progress sync relay and dataset release registry")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where the relay keeps its database and artifacts.
    #[arg(long, env = "RELAY_DATA_DIR", default_value = "./data/relay")]
    data_dir: PathBuf,
    /// Keep documents, sync states, the release registry and the audit log
    /// in PostgreSQL (a libpq URL; loopback or Unix socket hosts only for
    /// now), shared by several relays, instead of SQLite under the data
    /// directory. Share `--artifact-dir` between them too.
    #[arg(long, env = "RELAY_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Where artifact files live (default: `artifacts` under the data
    /// directory). Relays sharing a database share this directory too (a
    /// shared mount), so any relay serves any release.
    #[arg(long, env = "RELAY_ARTIFACT_DIR")]
    artifact_dir: Option<PathBuf>,
    /// Documents loaded from storage at once at most; more wait their turn
    /// (a reconnect storm costs latency, not memory).
    #[arg(long, env = "RELAY_MAX_CONCURRENT_DOC_LOADS", default_value_t = 8)]
    max_concurrent_doc_loads: usize,
    /// Address to listen on.
    #[arg(long, env = "RELAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Trusted device-token public keys as KID=BASE64 (repeatable or comma-separated).
    /// Without any, the embedded development key is trusted (never in production).
    #[arg(long = "token-key", env = "RELAY_TOKEN_KEYS", value_delimiter = ',')]
    token_keys: Vec<String>,
    /// Admin tokens as NAME=TOKEN (repeatable or comma-separated); NAME goes in the audit log.
    /// Without any, a development token is generated into the data directory and printed.
    #[arg(long = "admin-token", env = "RELAY_ADMIN_TOKENS", value_delimiter = ',', hide_env_values = true)]
    admin_tokens: Vec<String>,
    /// Manifest signing key as KID=BASE64_SEED (32 bytes; see `relay keygen`).
    /// Without it, a development key is generated into the data directory.
    #[arg(long = "manifest-key", env = "RELAY_MANIFEST_KEY", hide_env_values = true)]
    manifest_key: Option<String>,
    /// How long devices may accept a manifest after it is issued.
    #[arg(long, env = "RELAY_MANIFEST_TTL_HOURS", default_value_t = 168)]
    manifest_ttl_hours: u64,
    /// Allow development credentials (embedded token key, generated admin
    /// token) on a non-loopback address. Without it the relay refuses to start.
    #[arg(long, env = "RELAY_DEV")]
    dev: bool,
    /// Serve TLS with this PEM certificate chain (needs --tls-key).
    #[arg(long, env = "RELAY_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "RELAY_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Largest artifact an upload may bring (e.g. 4GiB, 500MB, or bytes).
    #[arg(long, env = "RELAY_MAX_ARTIFACT_BYTES", default_value = "4GiB", value_parser = release::names::parse_bytes)]
    max_artifact_bytes: u64,
    /// Largest release (all its artifacts together).
    #[arg(long, env = "RELAY_MAX_RELEASE_BYTES", default_value = "16GiB", value_parser = release::names::parse_bytes)]
    max_release_bytes: u64,
    /// On SIGTERM or Ctrl-C: how long downloads in flight may finish before
    /// they are cut (WebSockets are closed at once with 1001).
    #[arg(long, env = "RELAY_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    shutdown_timeout_secs: u64,
    /// Log lines as `text` (colours only on a terminal) or `json` (one object a line, for collectors).
    #[arg(long, env = "RELAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stdout().is_terminal()).init(),
    }
}

/// SIGTERM (systemd, Docker, Kubernetes) and Ctrl-C, listened for from the
/// start: a signal that arrives while the relay is still starting is
/// handled like any other, never the default "die at once".
struct StopSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> std::io::Result<StopSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(StopSignals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
        }
        #[cfg(not(unix))]
        Ok(StopSignals {})
    }

    /// Resolves on the first stop signal; names it.
    async fn wait(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Print a device token signed with the embedded development key.
    DevToken {
        #[arg(long)]
        user: String,
        #[arg(long)]
        device: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 30 * 24 * 3600)]
        ttl: u64,
    },
    /// Copy the data directory (database and the artifacts it references) to
    /// DEST, consistently, while a relay may be running on it.
    Backup {
        /// A new (or empty) directory for the copy.
        dest: PathBuf,
    },
    /// Put a backup made by `relay backup` into the (empty) data directory.
    /// The restored storage gets a new identity, so devices re-offer what
    /// they hold and nothing acknowledged after the backup is lost.
    Restore {
        /// The directory `relay backup` wrote.
        backup: PathBuf,
    },
    /// Generate an Ed25519 key: prints the seed (keep secret) and the public key.
    Keygen {
        /// The key id to print with it.
        #[arg(long, default_value = "key-1")]
        kid: String,
    },
}

fn dev_admin_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join("dev-admin-token");
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(t.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)?;
            let token = hex::encode(rand::random::<[u8; 24]>());
            config::write_private(&path, token.as_bytes())?;
            println!("generated a development admin token (in {}): {token}", path.display());
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

fn main() {
    let cli = Cli::parse();
    // Serving: first, before any thread exists (this may start the process
    // again with the allocator's tunables; see `relay::allocator`).
    let tuning = cli.command.is_none().then(relay::allocator::run_with_tunables);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("relay: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    // Errors are printed as sentences (Display), not as `Debug` structures.
    if let Err(e) = runtime.block_on(run(cli, tuning)) {
        eprintln!("relay: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli, tuning: Option<relay::allocator::Tuning>) -> Result<(), Box<dyn std::error::Error>> {
    init_logging(cli.log_format);
    match tuning {
        // The relay runs, with glibc's defaults: worth an operator's look.
        Some(tuning @ relay::allocator::Tuning::Failed(_)) => tracing::warn!(%tuning, "allocator"),
        Some(tuning) => tracing::info!(%tuning, "allocator"),
        None => {}
    }
    let mut signals = StopSignals::install()?;
    match cli.command {
        Some(Command::DevToken { user, device, ttl }) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
            println!("{}", config::dev_issuer().issue(&user, &device, now + ttl)?);
            return Ok(());
        }
        Some(Command::Backup { .. } | Command::Restore { .. })
            if cli.database_url.is_some() || cli.artifact_dir.is_some() =>
        {
            return Err("`relay backup` and `relay restore` cover a data directory holding its own database and \
                        artifacts; with --database-url or --artifact-dir, back up PostgreSQL (pg_dump, base backups) \
                        and the artifact directory with their own tools"
                .into());
        }
        Some(Command::Backup { dest }) => {
            let copied = relay::backup::backup(&cli.data_dir, &dest)?;
            println!(
                "backed up {} to {} ({} artifact files, {} bytes)",
                cli.data_dir.display(),
                dest.display(),
                copied.artifacts,
                copied.artifact_bytes
            );
            return Ok(());
        }
        Some(Command::Restore { backup }) => {
            let copied = relay::backup::restore(&backup, &cli.data_dir)?;
            println!(
                "restored {} into {} ({} artifact files); the storage has a new identity, devices will re-offer their changes",
                backup.display(),
                cli.data_dir.display(),
                copied.artifacts
            );
            return Ok(());
        }
        Some(Command::Keygen { kid }) => {
            use base64::Engine;
            let seed: [u8; 32] = rand::random();
            let public = release::ManifestSigner::new(&kid, seed).public_key();
            let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
            println!("secret (for --manifest-key): {kid}={}", b64(&seed));
            println!("public (for devices / --token-key): {kid}={}", b64(&public));
            return Ok(());
        }
        None => {}
    }
    config::check_dev_credentials(cli.listen, cli.token_keys.is_empty(), cli.admin_tokens.is_empty(), cli.dev)?;
    let mut config = Config::local(cli.data_dir.clone(), cli.listen);
    config.dev = cli.dev;
    config.database_url = cli.database_url.clone();
    config.artifact_dir = cli.artifact_dir.clone();
    config.limits.max_concurrent_doc_loads = cli.max_concurrent_doc_loads.max(1);
    config.release_limits.max_artifact_bytes = cli.max_artifact_bytes;
    config.release_limits.max_release_bytes = cli.max_release_bytes;
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let server = tls_config::server_config(&read(cert)?, &read(key)?)
            .map_err(|e| format!("TLS certificate {} / key {}: {e}", cert.display(), key.display()))?;
        config.tls = Some(std::sync::Arc::new(server));
    }
    if cli.token_keys.is_empty() {
        tracing::warn!("no --token-key given: trusting the embedded DEVELOPMENT key; anyone can mint tokens");
    } else {
        config.token_verifier = protocol::TokenVerifier::new();
        for spec in &cli.token_keys {
            let (kid, key) = config::parse_key(spec)?;
            config.token_verifier.trust(kid, key)?;
        }
    }
    config.admin_tokens = if cli.admin_tokens.is_empty() {
        tracing::warn!("no --admin-token given: using a development admin token from the data directory");
        vec![relay::release::admin::AdminToken { name: "dev".into(), token: dev_admin_token(&cli.data_dir)? }]
    } else {
        cli.admin_tokens.iter().map(|s| config::parse_admin_token(s)).collect::<Result<_, _>>()?
    };
    config.manifest_key = Some(match &cli.manifest_key {
        Some(spec) => config::parse_key(spec)?,
        None => {
            std::fs::create_dir_all(&cli.data_dir)?;
            let (kid, seed, created) = config::dev_manifest_key(&cli.data_dir)?;
            if created {
                use base64::Engine;
                let public = release::ManifestSigner::new(&kid, seed).public_key();
                println!(
                    "generated a development manifest key; devices must trust {kid}={}",
                    base64::engine::general_purpose::STANDARD.encode(public)
                );
            }
            (kid, seed)
        }
    });
    config.manifest_ttl = std::time::Duration::from_secs(cli.manifest_ttl_hours * 3600);
    let relay = relay::start(config).await?;
    println!("relay listening on {} (sync at {})", relay.http_url(), relay.ws_url());
    let signal = signals.wait().await;
    tracing::info!(signal, "shutting down");
    let report = relay.shutdown_within(std::time::Duration::from_secs(cli.shutdown_timeout_secs)).await;
    println!(
        "relay stopped ({signal}): closed {} WebSocket connections, {} downloads in flight, cut {} and {}",
        report.websockets, report.downloads, report.cut_websockets, report.cut_downloads
    );
    Ok(())
}
