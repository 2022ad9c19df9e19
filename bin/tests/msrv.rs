//! The minimum Rust version the workspace states is true of its locked dependencies: none of
//! them asks for a newer compiler than `rust-version` in Cargo.toml says.

use std::process::Command;

fn version(text: &str) -> Vec<u32> {
    let mut parts: Vec<u32> = text
        .split('.')
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("`{text}` is not a version"))
        })
        .collect();
    parts.resize(3, 0);
    parts
}

#[test]
fn the_stated_rust_version_covers_every_locked_dependency() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = metadata["packages"].as_array().expect("a package list");
    let ours = packages
        .iter()
        .find(|p| p["name"] == "portald")
        .and_then(|p| p["rust_version"].as_str())
        .expect("portald states a rust-version");
    let stated = version(ours);
    let mut newer = Vec::new();
    for package in packages {
        if let Some(needed) = package["rust_version"].as_str() {
            if version(needed) > stated {
                newer.push(format!(
                    "{} {} needs {needed}",
                    package["name"], package["version"]
                ));
            }
        }
    }
    assert!(
        newer.is_empty(),
        "rust-version = {ours} is not true: {}",
        newer.join(", ")
    );
    assert!(
        packages.len() > 20,
        "too few packages: the check would prove nothing"
    );
}
