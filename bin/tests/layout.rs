//! The workspace's crates depend on each other one way: bin → engine → dataplane and
//! planners, the test bed only from the binary (its `demo`) and the tests, as README's
//! layout section says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What each crate of the workspace may depend on among the others, in any dependency
/// section (normal, dev, build): a new crate must be placed here before it builds.
const ALLOWED: [(&str, &[&str]); 5] = [
    ("portald", &["engine", "dataplane", "planners", "testbed"]),
    ("engine", &["dataplane", "planners"]),
    ("dataplane", &[]),
    ("planners", &[]),
    ("testbed", &[]),
];

/// Each workspace crate and the workspace crates it names as dependencies, in any section,
/// read from the manifests of the members that the workspace's Cargo.toml lists.
fn workspace_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bin/ has a parent");
    let manifest = |dir: &Path| -> toml::Table {
        let path = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading `{}`: {e}", path.display()));
        toml::from_str(&text).unwrap_or_else(|e| panic!("parsing `{}`: {e}", path.display()))
    };
    let members: Vec<toml::Table> = manifest(root)["workspace"]["members"]
        .as_array()
        .expect("a member list")
        .iter()
        .map(|m| manifest(&root.join(m.as_str().expect("a member path"))))
        .collect();
    let name = |m: &toml::Table| m["package"]["name"].as_str().expect("a name").to_string();
    let names: BTreeSet<String> = members.iter().map(name).collect();
    members
        .iter()
        .map(|m| {
            let deps = ["dependencies", "dev-dependencies", "build-dependencies"]
                .iter()
                .filter_map(|section| m.get(*section).and_then(toml::Value::as_table))
                .flat_map(|table| table.keys().cloned())
                .filter(|dep| names.contains(dep))
                .collect();
            (name(m), deps)
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
