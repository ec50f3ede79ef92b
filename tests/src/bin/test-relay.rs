//! The relay as a separate process for crash tests: prints its address on
//! the first line of stdout, then serves until killed.

use std::io::Write;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let data_dir = std::env::args().nth(1).ok_or("usage: test-relay DATA_DIR")?;
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
