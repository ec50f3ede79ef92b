//! `docs/openapi.json` is what the code generates (D-008).
//! Regenerate: `UPDATE_OPENAPI=1 cargo test -p relay --test openapi`.

use std::path::PathBuf;

#[test]
fn committed_spec_matches_the_code() {
    let generated = relay::openapi::spec().to_pretty_json().expect("spec serializes") + "\n";
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).expect("write docs/openapi.json");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is out of date: run `UPDATE_OPENAPI=1 cargo test -p relay --test openapi` and commit it"
    );
    // Every admin and public route is described.
    for route in
        ["/admin/releases", "/admin/releases/{id}/publish", "/admin/audit", "/v1/releases/{id}/artifacts/{name}"]
    {
        assert!(generated.contains(&format!("\"{route}\"")), "{route} missing");
    }
}
