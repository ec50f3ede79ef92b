//! The relay as a separate process for crash tests and the Kotlin tests:
//! prints its address on the first line of stdout, then serves until
//! killed. `test-relay token USER DEVICE SECONDS` prints a device token
//! signed with the development key, valid for SECONDS (negative: already
//! expired).

use std::io::Write;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, user, device, seconds] = args.as_slice()
        && cmd == "token"
    {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
        let exp = now.saturating_add_signed(seconds.parse::<i64>()?);
        println!("{}", relay::config::dev_issuer().issue(user, device, exp)?);
        return Ok(());
    }
    let data_dir = args.first().ok_or("usage: test-relay DATA_DIR | test-relay token USER DEVICE SECONDS")?;
    let mut config = relay::Config::local(data_dir.into(), "127.0.0.1:0".parse()?);
    // Fixed credentials: this binary only ever runs in tests and benches.
    config.admin_tokens = vec![relay::release::admin::AdminToken {
        name: "test".into(),
        token: integration_tests::TEST_ADMIN_TOKEN.into(),
    }];
    let relay = relay::start(config).await?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", relay.ws_url())?;
    out.flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
