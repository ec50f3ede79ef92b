//! The relay as a separate process for crash tests and the Kotlin tests:
//! prints its address on the first line of stdout, then serves until
//! killed. `test-relay token USER DEVICE SECONDS` prints a device token
//! signed with the development key, valid for SECONDS (negative: already
//! expired). `test-relay manifest-key` prints the public manifest key
//! devices trust. With `RELAY_DATABASE_URL` set, documents live in that
//! PostgreSQL database (and artifacts in `RELAY_ARTIFACT_DIR`);
//! `RELAY_MAX_CONCURRENT_DOC_LOADS` sets the load cap.

use std::io::Write;

/// Fixed manifest signing key: devices in tests trust its public half
/// (`test-relay manifest-key` prints it as `KEY_ID=BASE64`).
const MANIFEST_KEY_ID: &str = "test";
const MANIFEST_SEED: [u8; 32] = [7; 32];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Served as the relay binary is (benches measure this process): the
    // allocator's tunables first, before any thread exists.
    if args.len() == 1 && args[0] != "manifest-key" {
        relay::allocator::run_with_tunables();
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(args))
}

async fn run(args: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
    if let [cmd, user, device, seconds] = args.as_slice()
        && cmd == "token"
    {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let exp = now.saturating_add_signed(seconds.parse::<i64>()?);
        println!("{}", relay::config::dev_issuer().issue(user, device, exp)?);
        return Ok(());
    }
    if args.first().map(String::as_str) == Some("manifest-key") {
        use base64::Engine;
        let public = release::ManifestSigner::new(MANIFEST_KEY_ID, MANIFEST_SEED).public_key();
        println!("{MANIFEST_KEY_ID}={}", base64::engine::general_purpose::STANDARD.encode(public));
        return Ok(());
    }
    let data_dir = args.first().ok_or("usage: test-relay DATA_DIR | token USER DEVICE SECONDS | manifest-key")?;
    let mut config = relay::Config::local(data_dir.into(), "127.0.0.1:0".parse()?);
    // Fixed credentials: this binary only ever runs in tests and benches.
    config.admin_tokens = vec![relay::release::admin::AdminToken {
        name: "test".into(),
        token: integration_tests::TEST_ADMIN_TOKEN.into(),
    }];
    config.manifest_key = Some((MANIFEST_KEY_ID.into(), MANIFEST_SEED));
    // Documents in PostgreSQL when the test gives a database.
    config.database_url = std::env::var("RELAY_DATABASE_URL").ok();
    config.artifact_dir = std::env::var_os("RELAY_ARTIFACT_DIR").map(Into::into);
    if let Some(n) = std::env::var("RELAY_MAX_CONCURRENT_DOC_LOADS").ok().and_then(|v| v.parse().ok()) {
        config.limits.max_concurrent_doc_loads = n;
    }
    let relay = relay::start(config).await?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", relay.ws_url())?;
    out.flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
