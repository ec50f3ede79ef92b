//! The relay binary fails closed: development credentials on an address
//! other machines can reach stop it before it touches anything.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn development_credentials_are_refused_off_loopback_and_nothing_is_touched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .env_remove("RELAY_TOKEN_KEYS")
        .env_remove("RELAY_ADMIN_TOKENS")
        .env_remove("RELAY_DEV")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("relay runs");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the relay started with development credentials on 0.0.0.0");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("read");
    assert!(!status.success());
    assert!(stderr.starts_with("relay: refusing to listen on 0.0.0.0:0"), "{stderr}");
    assert!(stderr.contains("--token-key") && stderr.contains("--admin-token") && stderr.contains("--dev"));
    assert!(!data.exists(), "nothing was created before refusing");
}
