//! Transactions and the pool: every transaction of ours starts through
//! `courier::store::begin`, which stays correct when its caller is cancelled mid-`BEGIN`
//! (sqlx 0.9.0's `Pool::begin` can hand the connection back inside an open transaction).

use std::path::Path;

/// Every Rust source file under `dir`, recursively.
fn sources(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_transaction_starts_through_the_cancel_safe_begin() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    let allowed = root.join("src/store/mod.rs");
    let offenders: Vec<String> = files
        .iter()
        .filter(|path| **path != allowed)
        .filter(|path| {
            std::fs::read_to_string(path)
                .expect("source")
                .contains(".begin()")
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        offenders.is_empty(),
        "start transactions with courier::store::begin, not .begin(): {offenders:?}"
    );
}
