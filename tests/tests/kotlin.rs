//! The Kotlin binding's tests (`ffi/kotlin`, Maven and JUnit on a desktop
//! JVM) run as part of the workspace's test command: this builds the
//! engine's library, then runs Maven with JNA pointed at it and the real
//! relay binary for the tests to start.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/debug` (or `$CARGO_TARGET_DIR/debug`): this test runs from its `deps`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

#[test]
fn kotlin_binding_tests_pass_against_a_real_relay() {
    let built = Command::new(env!("CARGO"))
        .current_dir(workspace())
        .args(["build", "--locked", "--quiet", "-p", "progress-ffi"])
        .status()
        .expect("cargo runs");
    assert!(built.success(), "building the engine's library failed");

    let mvn = Command::new("mvn")
        .current_dir(workspace().join("ffi/kotlin"))
        .args(["-B", "--no-transfer-progress", "test"])
        .arg(format!("-Djna.library.path={}", profile_dir().display()))
        .arg(format!("-Dprogress.testRelay={}", env!("CARGO_BIN_EXE_test-relay")))
        .output();
    let out = match mvn {
        Ok(out) => out,
        Err(e) => panic!("Maven (mvn) with a JDK 17 is needed for the Kotlin tests ({e}); .ci/run installs them"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = stdout.lines().filter(|l| l.contains("Tests run:") || l.contains("FAIL")).collect();
    println!("{}", summary.join("\n"));
    assert!(out.status.success(), "Kotlin tests failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("Tests run:"), "Maven ran no tests:\n{stdout}");
}
