//! The committed Kotlin and Swift sources are the ones the library
//! generates now: an export changed without `bash ffi/generate.sh` fails
//! here, before an app links against a binding that no longer matches.

use std::path::{Path, PathBuf};
use std::process::Command;

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn committed_bindings_match_the_library() {
    let ffi = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("temp dir");
    let status = Command::new("bash")
        .arg(ffi.join("generate.sh"))
        .arg(out.path())
        .env("CARGO", env!("CARGO"))
        .status()
        .expect("bash runs");
    assert!(status.success(), "ffi/generate.sh failed");

    let generated = files_under(out.path());
    assert!(generated.len() >= 4, "generator wrote {generated:?}");
    for rel in generated {
        let fresh = std::fs::read(out.path().join(&rel)).expect("generated file");
        let committed = std::fs::read(ffi.join(&rel)).unwrap_or_default();
        assert!(
            fresh == committed,
            "ffi/{} differs from what the library generates: run `bash ffi/generate.sh` and commit",
            rel.display()
        );
    }
}
