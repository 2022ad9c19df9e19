//! Tier 3: `--log-format json` writes typed fields: every line parses as JSON, lists are
//! arrays, counts and durations numbers; the events checked are a listener opening, the
//! steps of a plan, a dial that no endpoint answers, and a SIGHUP reload that changes
//! settings. Needs root, iproute2, iptables, nft, curl.

mod support;

use serde_json::Value;
use support::*;

/// `apache-service.json` exactly as in SEED.md: VIP 10.11.0.1, port 12345 → pods' 80.
const SEED_SERVICE: &str = include_str!("../../examples/seed/apache-service.json");

/// A pod that serves, and a pod at an address where nothing listens (its dials are
/// refused), each selected by a service of its own.
const PODS: &str = "apiVersion: v1
kind: Pod
metadata:
  name: apache-1
  labels: {name: apache}
status:
  podIP: 10.244.1.2
---
apiVersion: v1
kind: Pod
metadata:
  name: dead-1
  labels: {name: dead}
status:
  podIP: 10.244.1.3
";

const DEAD_SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: dead}
spec:
  clusterIP: 10.11.0.9
  selector: {name: dead}
  ports: [{port: 80}]
";

/// The daemon's JSON events: every line of its log must be one.
fn events(c: &Cluster) -> Vec<Value> {
    c.daemon_logs()
        .lines()
        .filter(|l| !l.starts_with("--- daemon"))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn message(event: &Value) -> &str {
    event["fields"]["message"].as_str().unwrap_or_default()
}

/// The first event whose message starts with `start`, polled until it is logged.
fn event(c: &Cluster, start: &str) -> Value {
    poll(&format!("a `{start}` event"), CONVERGE, || {
        events(c)
            .into_iter()
            .find(|e| message(e).starts_with(start))
            .ok_or_else(|| c.daemon_logs())
    })
}

/// Whether every item of a JSON value is a string: the shape of the list fields.
fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .collect()
}

#[test]
fn json_logs_give_lists_as_arrays_and_durations_as_numbers() {
    let mut c = Cluster::new("jsontyped");
    c.pod("pod1", POD1, &[("pod1", &[80], &[])]);
    // Nothing listens in the second pod: its connections are refused at once.
    c.client("pod2", POD2);
    c.write("apache-service.json", SEED_SERVICE);
    c.write("dead.yaml", DEAD_SERVICE);
    c.write("pods.yaml", PODS);
    let config = c.temp().join("config.yaml");
    std::fs::write(&config, "backend: iptables\n").unwrap();
    let config_arg = config.display().to_string();
    let pid = c.start_daemon_with_env(
        &["RUST_LOG=info,engine::daemon::reconciler=debug"],
        &["--config", &config_arg, "--log-format", "json"],
    );

    // A listener opening: its endpoints a list of addresses.
    let open = event(&c, "listener open");
    let endpoints = strings(&open["fields"]["endpoints"]);
    assert!(
        endpoints == ["10.244.1.2:80"] || endpoints == ["10.244.1.3:80"],
        "{open}"
    );
    // One event per plan step, the step its own field.
    let step = event(&c, "plan step");
    assert!(step["fields"]["step"].is_string(), "{step}");
    assert!(!step["fields"]["step"].as_str().unwrap().contains('\n'));
    let reconciled = event(&c, "reconciled");
    assert!(reconciled["fields"]["elapsed_ms"].is_u64(), "{reconciled}");

    // A dial no endpoint answers: what was tried is a list.
    let node = c.node();
    let reply = c.curl(&node, "http://10.11.0.9/", 5);
    assert!(!reply.ok(), "the dead service answered: {reply:?}");
    let failed = event(&c, "no endpoint answered");
    assert_eq!(
        strings(&failed["fields"]["tried"]),
        ["10.244.1.3:80"],
        "{failed}"
    );

    // A reload that changes settings: the names of those changed, a list.
    std::fs::write(&config, "backend: nftables\nallow_external_ips: true\n").unwrap();
    // SAFETY: the pid is the daemon this test started and still holds as a child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    let reload = event(&c, "reload: new settings taken");
    assert_eq!(
        strings(&reload["fields"]["changed"]),
        ["backend", "allow_external_ips"],
        "{reload}"
    );

    // No field anywhere (but the message, which is prose) is a Rust `Debug` text of a
    // duration, a list or a struct.
    for e in events(&c) {
        for (name, value) in e["fields"].as_object().into_iter().flatten() {
            let text = value.as_str().unwrap_or_default();
            assert!(
                name == "message"
                    || !(is_debug_duration(text) || text.starts_with('[') || text.contains(" { ")),
                "field `{name}` is a Debug text: {e}"
            );
        }
    }
}

/// `1.5s`, `250ms`, `12µs`: how `Debug` writes a `Duration`.
fn is_debug_duration(text: &str) -> bool {
    ["ns", "µs", "ms", "s"].iter().any(|unit| {
        text.strip_suffix(unit)
            .is_some_and(|n| !n.is_empty() && n.parse::<f64>().is_ok())
    })
}
