//! The workspace's crates depend on each other one way: bin → engine → dataplane and
//! planners, the test bed only from the binary (its `demo`) and the tests, as README's
//! layout section says.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// What each crate of the workspace may depend on among the others, in any dependency
/// section (normal, dev, build): a new crate must be placed here before it builds.
const ALLOWED: [(&str, &[&str]); 5] = [
    ("portald", &["engine", "dataplane", "planners", "testbed"]),
    ("engine", &["dataplane", "planners"]),
    ("dataplane", &[]),
    ("planners", &[]),
    ("testbed", &[]),
];

/// Each workspace crate and the workspace crates it names as dependencies, from
/// `cargo metadata` (the resolved manifests, as cargo itself reads them).
fn workspace_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--locked",
            "--offline",
        ])
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
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().expect("a package name").to_string())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .expect("a dependency list")
                .iter()
                .map(|d| d["name"].as_str().expect("a dependency name").to_string())
                .filter(|d| names.contains(d))
                .collect();
            (
                p["name"].as_str().expect("a package name").to_string(),
                deps,
            )
        })
        .collect()
}

#[test]
fn each_crate_depends_only_on_the_crates_below_it() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(name, deps)| (*name, deps.iter().copied().collect()))
        .collect();
    let actual = workspace_dependencies();
    let crates: BTreeSet<&str> = actual.keys().map(String::as_str).collect();
    assert_eq!(
        crates,
        allowed.keys().copied().collect(),
        "the workspace's crates are not the ones this test places"
    );
    let mut wrong = Vec::new();
    for (name, deps) in &actual {
        for dep in deps {
            if !allowed[name.as_str()].contains(dep.as_str()) {
                wrong.push(format!("`{name}` depends on `{dep}`"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies against the layout: {wrong:?}"
    );
}
