//! The relay server as a separate process for the simulator's live mode and
//! its tests (which cannot name the `relay` package's binary): the same
//! server code, the development token key, `--listen` and `--data-dir`.
//! `simulator live --relay target/release/relay` runs the real binary.

use std::io::Write;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let listen = value("--listen").unwrap_or_else(|| "127.0.0.1:0".into()).parse()?;
    let data = value("--data-dir").ok_or("usage: sim-relay --listen ADDR --data-dir DIR")?;
    let relay = relay::start(relay::Config::local(data.into(), listen)).await?;
    let mut out = std::io::stdout();
    writeln!(out, "relay listening on {} (sync at {})", relay.http_url(), relay.ws_url())?;
    out.flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
