//! The admin CLI against a real relay: the whole lifecycle, and refusals.

use serde_json::Value;
use std::process::Output;

const TOKEN: &str = "cli-test-token-0123456789";

async fn cli(url: &str, token: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay-admin"));
    cmd.arg("--url").arg(url).arg("--token").arg(token).args(args);
    cmd.output().await.expect("relay-admin runs")
}

/// A relay on loopback whose admin token is `TOKEN`; `max_artifact` caps uploads.
async fn relay_with(
    dir: &std::path::Path,
    max_artifact: Option<u64>,
    tls: Option<&integration_tests::tls::TestPki>,
) -> relay::RunningRelay {
    let mut config = relay::Config::local(dir.join("relay"), "127.0.0.1:0".parse().expect("addr"));
    config.admin_tokens = vec![relay::release::admin::AdminToken { name: "alice".into(), token: TOKEN.into() }];
    if let Some(max) = max_artifact {
        config.release_limits.max_artifact_bytes = max;
    }
    config.tls = tls.map(|pki| pki.server_config());
    relay::start(config).await.expect("relay")
}

/// `relay-admin create` of vocab-en/stable `version`; returns the id.
async fn create(url: &str, version: &str, min_app: &str) -> String {
    let args = [
        "--json",
        "create",
        "--dataset",
        "vocab-en",
        "--channel",
        "stable",
        "--version",
        version,
        "--min-app-version",
        min_app,
        "--notes",
        "first",
    ];
    let created = json(&cli(url, TOKEN, &args).await);
    created["id"].as_str().expect("id").to_owned()
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("json output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_drives_a_release_with_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay_with(dir.path(), None, None).await;
    let url = relay.http_url();

    let file = dir.path().join("words.db");
    std::fs::write(&file, vec![42u8; 200_000]).expect("file");

    json(&cli(&url, TOKEN, &["--json", "dataset", "vocab-en", "--require", "words.db"]).await);
    let id = create(&url, "1.0.0", "2.0.0").await;

    // An empty draft does not validate: exit code 1, findings on stderr.
    let out = cli(&url, TOKEN, &["validate", &id]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("has-artifacts"));
    let out = cli(&url, TOKEN, &["publish", &id]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("409") && stderr.contains("required-artifacts"), "{stderr}");

    let attached = json(&cli(&url, TOKEN, &["--json", "attach", &id, file.to_str().expect("utf8 path")]).await);
    assert_eq!(attached["artifacts"][0]["size"], 200_000);
    let out = cli(&url, TOKEN, &["validate", &id]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let published = json(&cli(&url, TOKEN, &["--json", "publish", &id, "--rollout", "10"]).await);
    assert_eq!((published["state"].as_str(), published["rollout_percent"].as_u64()), (Some("published"), Some(10)));
    json(&cli(&url, TOKEN, &["--json", "rollout", &id, "100"]).await);

    // Human-readable output.
    let out = cli(&url, TOKEN, &["list", "--dataset", "vocab-en"]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&id) && table.contains("published") && table.contains("100%"), "{table}");
    let out = cli(&url, TOKEN, &["show", &id]).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("words.db"));

    let deprecated = json(&cli(&url, TOKEN, &["--json", "deprecate", &id, "--reason", "typo in data"]).await);
    assert_eq!(deprecated["state"], "deprecated");

    let audit = json(&cli(&url, TOKEN, &["--json", "audit", "--target", &id]).await);
    let actions: Vec<&str> =
        audit["entries"].as_array().expect("entries").iter().filter_map(|e| e["action"].as_str()).collect();
    for a in ["artifact.upload", "release.publish", "release.rollout", "release.deprecate"] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    assert!(audit["entries"].as_array().expect("entries").iter().any(|e| e["actor"] == "alice"));

    // A wrong token is refused, and says so.
    let out = cli(&url, "not-the-token-at-all", &["list"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
    relay.shutdown().await;
}

/// An https:// relay with a private CA: the CLI trusts it with --ca-cert,
/// and without it says the certificate is the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_https_with_a_pinned_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = integration_tests::tls::TestPki::new();
    let relay = relay_with(dir.path(), None, Some(&pki)).await;
    let url = relay.http_url().replace("127.0.0.1", "localhost");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("ca file");

    let listed = json(&cli(&url, TOKEN, &["--ca-cert", ca.to_str().expect("utf-8"), "--json", "list"]).await);
    assert!(listed["releases"].is_array(), "{listed}");

    let out = cli(&url, TOKEN, &["--json", "list"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(stderr.contains("certificate"), "{stderr}");
    relay.shutdown().await;
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// What an operator types wrong, and what the CLI says back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_typos_get_sentences_that_say_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = relay_with(dir.path(), Some(1 << 20), None).await;
    let url = relay.http_url();
    let id = create(&url, "1.0.0", "1.0.0").await;

    // A refused large upload reads the relay's answer, every time (not "cannot reach the relay").
    let big = dir.path().join("big.db");
    std::fs::write(&big, vec![7u8; 64 << 20]).expect("file");
    for _ in 0..3 {
        let out = cli(&url, TOKEN, &["attach", &id, big.to_str().expect("utf-8")]).await;
        assert!(!out.status.success());
        let e = stderr(&out);
        assert!(e.contains("413") && e.contains("1.0 MiB") && !e.contains("cannot reach"), "{e}");
    }
    let out = cli(&url, "wrong-token-0123456789", &["attach", &id, big.to_str().expect("utf-8")]).await;
    let e = stderr(&out);
    assert!(e.contains("403") && e.contains("--admin-token") && e.contains("dev-admin-token"), "{e}");

    // Inputs that are wrong say which input.
    let out = cli(url.trim_start_matches("http://"), TOKEN, &["list"]).await;
    assert!(stderr(&out).contains("is not a URL; write it with its scheme"), "{}", stderr(&out));
    let out = cli(&url, &format!("{TOKEN}\n"), &["--json", "list"]).await;
    assert!(out.status.success(), "a trailing newline is trimmed: {}", stderr(&out));
    let out = cli(&url, "two words", &["list"]).await;
    assert!(stderr(&out).contains("spaces or control characters"), "{}", stderr(&out));
    let out = cli(&url, TOKEN, &["rollout", &id, "300"]).await;
    assert!(stderr(&out).contains("between 0 and 100"), "{}", stderr(&out));

    // Names with `/` or `..` are one path segment: the relay answers with a JSON reason.
    let out = cli(&url, TOKEN, &["--json", "show", "../releases"]).await;
    assert!(!out.status.success());
    let body: Value = serde_json::from_slice(&out.stderr).expect("the relay's JSON reason");
    assert_eq!(body["error"], "not_found", "{body}");

    // `relay-admin list | head`: the reader goes away; no panic.
    for n in 0..40 {
        let v = format!("1.{}.0", n + 1);
        cli(
            &url,
            TOKEN,
            &["create", "--dataset", "vocab-en", "--channel", "stable", "--version", &v, "--min-app-version", "1.0.0"],
        )
        .await;
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_relay-admin"))
        .args(["--url", &url, "--token", TOKEN, "list"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    drop(child.stdout.take()); // the reader closes at once
    let out = child.wait_with_output().expect("exits");
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    relay.shutdown().await;
}
