//! Tier 3, as root: `portald plan` against a real (fresh, empty) kernel in a network namespace
//! of its own, its batch applied with `iptables-restore`, then planned again.

use planners::{Dialect, Iptables};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace made for one test, deleted on drop (also when the test panics).
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        assert!(
            is_root(),
            "tier-3 tests need root (they create network namespaces); run them as root in CI"
        );
        let name = format!(
            "portald-t3-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap_or_else(|e| panic!("`ip` is needed for tier-3 tests (iproute2): {e}"));
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns { name }
    }

    /// Runs `program args` inside the namespace, with `stdin` fed in.
    fn exec(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program} in {}: {e}", self.name));
        let mut input = child.stdin.take().expect("stdin is piped");
        if let Some(text) = stdin {
            input
                .write_all(text.as_bytes())
                .expect("stdin accepts the batch");
        }
        drop(input);
        child.wait_with_output().expect("child finishes")
    }

    fn portald(&self, args: &[&str]) -> Output {
        self.exec(env!("CARGO_BIN_EXE_portald"), args, None)
    }

    fn restore(&self, batch: &str, test_only: bool) {
        let mut args = vec!["--noflush"];
        if test_only {
            args.push("--test");
        }
        let out = self.exec("iptables-restore", &args, Some(batch));
        assert!(
            out.status.success(),
            "iptables-restore {args:?} refused the batch: {}\n{batch}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn owned(&self) -> planners::NatState {
        let out = self.exec("iptables-save", &[], None);
        assert!(
            out.status.success(),
            "iptables-save: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Iptables
            .parse_live(&String::from_utf8_lossy(&out.stdout))
            .expect("the kernel's dump parses")
            .owned
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Whether we are root, read from `/proc/self/status` (no libc, no unsafe).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bin/ has a parent")
        .to_path_buf()
}

fn services(case: &str) -> String {
    root()
        .join("fixtures")
        .join(case)
        .join("services")
        .display()
        .to_string()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "plan --json printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn step_kinds(plan: &serde_json::Value) -> Vec<String> {
    plan["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["step"].as_str().expect("step kind").to_string())
        .collect()
}

#[test]
fn applied_plan_leaves_only_listener_opens_against_the_real_kernel() {
    for (case, listeners) in [
        ("seed-apache", 1),
        ("multi-port-named-targets", 4),
        ("udp", 2),
    ] {
        let ns = Netns::new();
        let dir = services(case);
        let first = ns.portald(&["plan", &dir, "--json"]);
        assert_eq!(
            first.status.code(),
            Some(0),
            "{case}: {}",
            String::from_utf8_lossy(&first.stderr)
        );
        let plan = json(&first);
        let batch = plan["batch"].as_str().expect("batch").to_string();
        // The refusal chains are declared first, in their own filter transaction.
        assert!(batch.starts_with("*filter\n"), "{case}: {batch}");
        ns.restore(&batch, true);
        ns.restore(&batch, false);

        let again = ns.portald(&["plan", &dir, "--json", "--detailed-exitcode"]);
        assert_eq!(
            again.status.code(),
            Some(2),
            "{case}: the listeners are not running, so changes remain"
        );
        let plan = json(&again);
        assert_eq!(
            step_kinds(&plan),
            vec!["open_listener".to_string(); listeners],
            "{case}: only listener opens remain"
        );
        assert_eq!(plan["batch"], "", "{case}: no kernel step");
        assert_eq!(plan["summary"]["add"], listeners);
        assert_eq!(plan["summary"]["remove"], 0);

        // What the kernel now holds is exactly the golden ruleset of the case.
        let golden =
            std::fs::read_to_string(root().join("golden").join(case).join("ruleset.iptables"))
                .expect("golden ruleset");
        assert_eq!(
            ns.owned(),
            Iptables.parse_live(&golden).expect("golden parses").owned,
            "{case}"
        );
    }
}

#[test]
fn golden_batches_apply_to_a_fresh_kernel_and_yield_the_golden_ruleset() {
    let golden = root().join("golden");
    let mut applied = 0;
    for entry in std::fs::read_dir(root().join("fixtures"))
        .expect("fixtures")
        .flatten()
    {
        let case = entry.file_name().to_string_lossy().into_owned();
        let fixture = entry.path();
        if !fixture.join("services").is_dir() || fixture.join("live.save").exists() {
            continue; // golden batches of live cases start from their live state
        }
        let batch = std::fs::read_to_string(golden.join(&case).join("batch.iptables"))
            .unwrap_or_else(|e| panic!("golden/{case}/batch.iptables: {e}"));
        let ruleset = std::fs::read_to_string(golden.join(&case).join("ruleset.iptables"))
            .unwrap_or_else(|e| panic!("golden/{case}/ruleset.iptables: {e}"));
        let ns = Netns::new();
        ns.restore(&batch, true);
        ns.restore(&batch, false);
        assert_eq!(
            ns.owned(),
            Iptables
                .parse_live(&ruleset)
                .expect("golden ruleset parses")
                .owned,
            "{case}: the kernel after the golden batch differs from the golden ruleset"
        );
        applied += 1;
    }
    assert!(applied >= 15, "only {applied} golden batches were applied");
}

#[test]
fn snapshot_taken_in_the_namespace_replays_with_plan_live() {
    let ns = Netns::new();
    let dir = services("seed-apache");
    let tmp = std::env::temp_dir().join(format!("portald-t3-snap-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let empty = tmp.join("empty.json");
    let applied = tmp.join("applied.json");

    let out = ns.portald(&["snapshot", "--out", &empty.display().to_string()]);
    assert!(
        out.status.success(),
        "snapshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snapshot: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&empty).expect("snapshot written"))
            .expect("JSON");
    assert_eq!(snapshot["format_version"], 1);
    assert_eq!(snapshot["backend"], "iptables");

    // Replayed outside the namespace: no kernel needed, same plan as in it.
    let offline = Command::new(env!("CARGO_BIN_EXE_portald"))
        .args([
            "plan",
            &dir,
            "--json",
            "--live",
            &empty.display().to_string(),
        ])
        .output()
        .expect("portald runs");
    let online = ns.portald(&["plan", &dir, "--json"]);
    let (offline, online) = (json(&offline), json(&online));
    assert_eq!(offline["steps"], online["steps"]);
    assert_eq!(offline["batch"], online["batch"]);

    ns.restore(online["batch"].as_str().expect("batch"), false);
    let out = ns.portald(&["snapshot", "--out", &applied.display().to_string()]);
    assert!(out.status.success());
    let replay = Command::new(env!("CARGO_BIN_EXE_portald"))
        .args([
            "plan",
            &dir,
            "--json",
            "--detailed-exitcode",
            "--live",
            &applied.display().to_string(),
        ])
        .output()
        .expect("portald runs");
    assert_eq!(replay.status.code(), Some(2));
    let plan = json(&replay);
    assert_eq!(step_kinds(&plan), ["open_listener"]);
    assert_eq!(plan["batch"], "");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn namespaces_are_removed_even_when_a_test_panics() {
    let name = std::panic::catch_unwind(|| {
        let ns = Netns::new();
        let name = ns.name.clone();
        panic!("{name}");
    })
    .expect_err("the closure panics");
    let name = name
        .downcast_ref::<String>()
        .expect("panic carries the name")
        .clone();
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip runs");
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&name),
        "{name} survived the panic"
    );
}
