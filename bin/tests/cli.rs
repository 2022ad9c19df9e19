//! The `portald` command line without kernel access: help, `check` exit codes and report
//! formats, `plan --detailed-exitcode` against `--no-live` and `--live FILE`.

use std::path::PathBuf;
use std::process::{Command, Output};

fn portald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portald"))
        .args(args)
        .output()
        .expect("the portald binary runs")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bin/ has a parent")
        .to_path_buf()
}

fn services(case: &str) -> String {
    let dir = root().join("fixtures").join(case).join("services");
    assert!(dir.is_dir(), "{} is missing", dir.display());
    dir.display().to_string()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("portald exited, not killed")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Subcommand names from the `Commands:` section of `portald --help`.
fn subcommands() -> Vec<String> {
    let out = portald(&["--help"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let help = text(&out.stdout);
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn every_subcommand_answers_help() {
    let commands = subcommands();
    for required in ["check", "plan", "lock", "snapshot"] {
        assert!(
            commands.iter().any(|c| c == required),
            "`{required}` is not listed in --help: {commands:?}"
        );
    }
    for command in &commands {
        let out = portald(&[command, "--help"]);
        assert_eq!(
            code(&out),
            0,
            "`portald {command} --help` failed: {}",
            text(&out.stderr)
        );
        let help = text(&out.stdout);
        assert!(
            help.contains("Usage: portald") && help.contains(command.as_str()),
            "`portald {command} --help` prints no usage:\n{help}"
        );
    }
}

#[test]
fn check_exits_0_on_clean_input_and_1_on_errors() {
    let clean = portald(&["check", &services("seed-apache")]);
    assert_eq!(code(&clean), 0, "{}", text(&clean.stdout));
    assert!(text(&clean.stdout).contains("1 service(s) valid, 0 error(s)"));
    let bad = portald(&["check", &services("invalid-protocol")]);
    assert_eq!(code(&bad), 1);
    let report = text(&bad.stdout);
    assert!(
        report.contains("bad.yaml:9: error: Service `default/sctp`: `spec.ports[0].protocol`:"),
        "{report}"
    );
}

#[test]
fn check_json_report_is_versioned_and_lists_every_diagnostic_with_its_place() {
    let out = portald(&[
        "check",
        "--format",
        "json",
        &services("invalid-port-out-of-range"),
    ]);
    assert_eq!(code(&out), 1);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("check --format json prints JSON only");
    assert_eq!(report["format_version"], 1);
    assert_eq!(report["errors"], 2);
    assert_eq!(report["warnings"], 0);
    let diagnostics = report["diagnostics"]
        .as_array()
        .expect("a diagnostics array");
    assert_eq!(diagnostics.len(), 2);
    for d in diagnostics {
        assert_eq!(d["file"], "bad.yaml", "{d}");
        assert!(d["line"].as_u64().is_some(), "{d}");
        assert!(
            d["field"]
                .as_str()
                .is_some_and(|f| f.starts_with("spec.ports[")),
            "{d}"
        );
        assert_eq!(d["severity"], "error", "{d}");
        assert!(
            d["message"]
                .as_str()
                .is_some_and(|m| m.contains("out of range")),
            "{d}"
        );
    }
    let clean = portald(&["check", "--format", "json", &services("seed-apache")]);
    assert_eq!(code(&clean), 0);
    let report: serde_json::Value = serde_json::from_slice(&clean.stdout).expect("JSON");
    assert_eq!(report["errors"], 0);
}

#[test]
fn check_github_format_prints_one_workflow_command_per_diagnostic() {
    let out = portald(&[
        "check",
        "--format",
        "github",
        &services("invalid-hostile-strings"),
    ]);
    assert_eq!(code(&out), 1);
    let report = text(&out.stdout);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines.len(), 12, "{report}");
    for line in lines {
        assert!(
            line.starts_with("::error file=hostile.yaml,line=")
                || line.starts_with("::error file=hostile.json,line="),
            "{line}"
        );
        assert!(line.contains("::Service `"), "{line}");
    }
}

#[test]
fn plan_detailed_exitcode_is_0_without_changes_2_with_changes_1_on_errors() {
    let changes = portald(&[
        "plan",
        &services("seed-apache"),
        "--no-live",
        "--detailed-exitcode",
    ]);
    assert_eq!(code(&changes), 2, "{}", text(&changes.stderr));
    // 7 for the seed service and its NAT scaffold, 4 for the refusal chains and hooks.
    assert!(text(&changes.stdout).contains("Plan: 11 to add, 0 to change, 0 to remove."));
    let without = portald(&["plan", &services("seed-apache"), "--no-live"]);
    assert_eq!(code(&without), 0, "without the flag, changes exit 0");
    let errors = portald(&[
        "plan",
        &services("invalid-protocol"),
        "--no-live",
        "--detailed-exitcode",
    ]);
    assert_eq!(code(&errors), 1);
    // A headless service needs no listener: once its scaffold is live there is nothing to do.
    let live = root().join("golden/headless/ruleset.iptables");
    let none = portald(&[
        "plan",
        &services("headless"),
        "--live",
        &live.display().to_string(),
        "--detailed-exitcode",
    ]);
    assert_eq!(
        code(&none),
        0,
        "{}{}",
        text(&none.stdout),
        text(&none.stderr)
    );
    assert!(text(&none.stdout).contains("No changes"));
}

#[test]
fn plan_json_matches_the_golden_batch_of_its_case() {
    let out = portald(&[
        "plan",
        &services("multi-port-named-targets"),
        "--no-live",
        "--json",
    ]);
    assert_eq!(code(&out), 0);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan --json");
    assert_eq!(plan["format_version"], 1);
    let golden =
        std::fs::read_to_string(root().join("golden/multi-port-named-targets/batch.iptables"))
            .expect("golden batch");
    assert_eq!(plan["batch"].as_str(), Some(golden.as_str()));
}

#[test]
fn plan_in_kernel_mode_spreads_over_the_endpoints_in_both_dialects() {
    let dir = services("seed-apache");
    for (backend, spread) in [
        ("nftables", "numgen random mod 2 0 dnat ip to 10.244.1.2:80"),
        (
            "iptables",
            "-m statistic --mode random --probability 0.50000000000",
        ),
    ] {
        let out = portald(&[
            "plan",
            &dir,
            "--no-live",
            "--mode",
            "kernel",
            "--backend",
            backend,
            "--show-batch",
        ]);
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert!(stdout.contains("mode kernel"), "{stdout}");
        assert!(stdout.contains(spread), "{backend}: {stdout}");
        // No userspace hop: no listener is planned.
        assert!(!stdout.contains("listener"), "{backend}: {stdout}");
    }
}
