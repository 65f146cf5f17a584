//! The workspace's layering, checked from its manifests: the server carries no load
//! generator or benchmark (they are `courier-sim` and `courier-bench`), and the simulator
//! knows courier only through its HTTP API (it does not link the server's crate).

use std::path::Path;

/// The crate names listed under `[dependencies]` in the manifest at `path` (relative to the
/// server's crate).
fn dependencies(path: &str) -> Vec<String> {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .expect("manifest");
    manifest
        .lines()
        .skip_while(|line| line.trim() != "[dependencies]")
        .skip(1)
        .take_while(|line| !line.trim_start().starts_with('['))
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            line.split('=').next().map(|name| name.trim().to_owned())
        })
        .collect()
}

#[test]
fn the_server_carries_no_load_generator_and_the_simulator_no_server() {
    let server = dependencies("Cargo.toml");
    assert!(server.contains(&"axum".to_owned()), "{server:?}");
    for generator in ["courier-sim", "courier-bench", "hdrhistogram", "httparse"] {
        assert!(
            !server.iter().any(|name| name == generator),
            "the server depends on {generator}: {server:?}"
        );
    }
    assert!(
        !Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/bench")
            .exists(),
        "benchmarks live in crates/courier-bench"
    );
    let simulator = dependencies("crates/courier-sim/Cargo.toml");
    assert!(simulator.contains(&"reqwest".to_owned()), "{simulator:?}");
    assert!(
        !simulator.iter().any(|name| name == "courier"),
        "the simulator must reach courier over HTTP only: {simulator:?}"
    );
    let bench = dependencies("crates/courier-bench/Cargo.toml");
    assert!(
        bench.contains(&"courier".to_owned()) && bench.contains(&"courier-sim".to_owned()),
        "{bench:?}"
    );
}
