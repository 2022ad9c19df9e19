//! Tier 3: `portald snapshot` of a userspace host records the daemon's listeners, so that
//! `plan --live SNAPSHOT --detailed-exitcode` on the unchanged directory says "no changes".

mod support;

use support::*;

#[test]
fn a_snapshot_of_an_unchanged_userspace_host_plans_no_changes() {
    let mut c = Cluster::new("snap");
    c.pod("pod1", POD1, &[("pod1", &[8080], &[])]);
    c.write(
        "web.yaml",
        &service_yaml("web", Some("10.11.0.100"), "web", "TCP", 80, 8080),
    );
    c.write("pods.yaml", &pods_yaml(&[("pod1", POD1, "web")]));
    c.start_daemon(&["--resync-seconds", "600"]);
    let proxy = proxy_port(&c.status(), "default/web", 80).expect("a proxy port");
    let dir = c.dir.display().to_string();
    let snapshot = c.temp().join("snapshot.json");
    let shown = snapshot.display().to_string();
    c.run_ok(
        &c.node(),
        PORTALD,
        &[
            "snapshot",
            "--out",
            &shown,
            "--control-socket",
            &c.socket.display().to_string(),
        ],
    );
    let taken: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&snapshot).expect("snapshot written"))
            .expect("snapshot JSON");
    let ports: Vec<&serde_json::Value> = taken["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| &l["listener_port"])
        .collect();
    assert_eq!(ports, [&serde_json::json!(proxy)], "{taken:#}");
    // The snapshot as written is what its committed schema describes.
    let schema = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/schema/snapshot.schema.json"
    );
    c.run_ok(
        &c.node(),
        "python3",
        &[
            "-c",
            "import json, sys, jsonschema\n\
             jsonschema.validate(json.load(open(sys.argv[2])), json.load(open(sys.argv[1])), cls=jsonschema.Draft202012Validator)",
            schema,
            &shown,
        ],
    );

    let plan = |live: &str| {
        let out = c.portald(&["plan", &dir, "--live", live, "--detailed-exitcode"]);
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, text) = plan(&shown);
    assert_eq!(
        code,
        Some(0),
        "an unchanged host has nothing to do:\n{text}"
    );

    // The same host captured without asking the daemon: its listener looks missing.
    let blind = c.temp().join("blind.json");
    let blind_shown = blind.display().to_string();
    let nowhere = c.temp().join("no-daemon.sock").display().to_string();
    c.run_ok(
        &c.node(),
        PORTALD,
        &[
            "snapshot",
            "--out",
            &blind_shown,
            "--control-socket",
            &nowhere,
        ],
    );
    let (code, text) = plan(&blind_shown);
    assert_eq!(
        code,
        Some(2),
        "without the listeners the plan opens one:\n{text}"
    );
}
