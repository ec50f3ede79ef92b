//! `relay` — run the sync relay, or print a development device token.

use clap::{Parser, Subcommand};
use relay::config::{self, Config};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "Progress sync relay")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Where the relay keeps its database.
    #[arg(long, env = "RELAY_DATA_DIR", default_value = "./data/relay")]
    data_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, env = "RELAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Trusted device-token public keys as KID=BASE64 (repeatable). Without
    /// any, the embedded development key is trusted (never do that in production).
    #[arg(long = "token-key", env = "RELAY_TOKEN_KEYS", value_delimiter = ',')]
    token_keys: Vec<String>,
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
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    if let Some(Command::DevToken { user, device, ttl }) = cli.command {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        println!("{}", config::dev_issuer().issue(&user, &device, now + ttl)?);
        return Ok(());
    }
    let mut config = Config::local(cli.data_dir, cli.listen);
    if cli.token_keys.is_empty() {
        tracing::warn!("no --token-key given: trusting the embedded DEVELOPMENT key; anyone can mint tokens");
    } else {
        config.token_verifier = protocol::TokenVerifier::new();
        for spec in &cli.token_keys {
            let (kid, key) = config::parse_public_key(spec)?;
            config.token_verifier.trust(kid, key)?;
        }
    }
    let relay = relay::start(config).await?;
    println!("relay listening on {} (sync at {})", relay.http_url(), relay.ws_url());
    tokio::signal::ctrl_c().await?;
    relay.shutdown().await;
    Ok(())
}
