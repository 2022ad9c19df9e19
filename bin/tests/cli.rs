//! The `portald` command line without kernel access: help, `check` exit codes and report
//! formats, `plan --detailed-exitcode` against `--no-live` and `--live FILE`.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use support::scratch::Scratch;

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
            // Paths from the repository's top level, where the pull request shows them.
            line.starts_with(
                "::error file=fixtures/invalid-hostile-strings/services/hostile.yaml,line="
            ) || line.starts_with(
                "::error file=fixtures/invalid-hostile-strings/services/hostile.json,line="
            ),
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
    // 7 for the seed service and its NAT scaffold, 4 for the refusal chains and hooks, 3 for
    // the proxy guard's chain, hook and entry.
    assert!(text(&changes.stdout).contains("Plan: 14 to add, 0 to change, 0 to remove."));
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
    assert_eq!(plan["format_version"], 2);
    // What `apply` binds the plan to: the services as read, and the lock (none here).
    assert_eq!(plan["inputs"]["services"].as_str().map(str::len), Some(64));
    assert_eq!(plan["inputs"]["lock"], "none");
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

/// A file name that forges a GitHub workflow command on its own line, colours the terminal
/// red and reverses the text after it.
const HOSTILE_NAME: &str = "evil\n::error file=forged.yaml,line=1::forged\x1b[31m\u{202e}lmay.yaml";

/// Characters that must never reach a terminal or a CI log raw.
fn raw_control(line: &str) -> Option<char> {
    line.chars().find(|&c| {
        c.is_control()
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    })
}

fn hostile_dir() -> Scratch {
    let dir = Scratch::new("hostile");
    std::fs::write(
        dir.0.join(HOSTILE_NAME),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 99999\n",
    )
    .expect("hostile file written");
    std::fs::write(
        dir.0.join("good.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: good\nspec:\n  clusterIP: 10.11.0.9\n  ports:\n  - port: 80\n",
    )
    .expect("good file written");
    dir
}

#[test]
fn a_file_name_with_a_newline_an_escape_and_a_bidi_override_stays_one_escaped_record_in_every_check_format(
) {
    let dir = hostile_dir();
    let json = portald(&["check", "--format", "json", &dir.arg()]);
    assert_eq!(code(&json), 1, "{}", text(&json.stderr));
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("check json");
    let diagnostics = report["diagnostics"].as_array().expect("diagnostics");
    assert!(!diagnostics.is_empty());
    // JSON keeps the name whole: a program reading it gets the real file.
    for d in diagnostics {
        assert_eq!(d["file"].as_str(), Some(HOSTILE_NAME), "{d}");
    }

    let plain = portald(&["check", &dir.arg()]);
    assert_eq!(code(&plain), 1);
    let stdout = text(&plain.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), diagnostics.len() + 1, "{stdout}");
    for line in &lines[..diagnostics.len()] {
        assert_eq!(raw_control(line), None, "{line:?}");
        assert!(
            line.starts_with(
                "evil\\n::error file=forged.yaml,line=1::forged\\x1b[31m\\u{202e}lmay.yaml:7: error: "
            ),
            "{line:?}"
        );
    }

    let github = portald(&["check", "--format", "github", &dir.arg()]);
    assert_eq!(code(&github), 1);
    let stdout = text(&github.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), diagnostics.len(), "{stdout}");
    for line in lines {
        assert_eq!(raw_control(line), None, "{line:?}");
        // `:` and `,` escaped in the property: the command's file is the whole name.
        assert!(
            line.starts_with(
                "::error file=evil%0A%3A%3Aerror file=forged.yaml%2Cline=1%3A%3Aforged\\x1b[31m\\u{202e}lmay.yaml,line=7::"
            ),
            "{line:?}"
        );
    }
}

#[test]
fn plan_shows_a_hostile_file_name_escaped_on_one_line() {
    let dir = hostile_dir();
    let out = portald(&["plan", &dir.arg(), "--no-live"]);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(!stderr.is_empty());
    for line in stderr.lines().chain(text(&out.stdout).lines()) {
        assert_eq!(raw_control(line), None, "{line:?}");
        assert!(
            !line.starts_with("::"),
            "a forged workflow command: {line:?}"
        );
    }
    assert!(
        stderr.contains("evil\\n::error file=forged.yaml"),
        "{stderr}"
    );
    assert!(text(&out.stdout).contains("default/good"));
}

/// A service whose one port has `count` endpoints, in JSON (quick to load).
fn many_endpoints(count: usize) -> Scratch {
    let dir = Scratch::new("endpoints");
    let addresses: Vec<serde_json::Value> = (0..count)
        .map(|i| {
            let (a, b) = (i / 250, i % 250 + 1);
            serde_json::json!({ "ip": format!("10.{}.{}.{b}", 100 + a / 256, a % 256) })
        })
        .collect();
    let list = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": { "name": "wide" },
                "spec": { "clusterIP": "10.11.0.7", "ports": [{ "port": 80 }] }
            },
            {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": { "name": "wide" },
                "subsets": [{ "addresses": addresses, "ports": [{ "port": 8080 }] }]
            }
        ]
    });
    std::fs::write(dir.0.join("wide.json"), list.to_string()).expect("wide.json written");
    dir
}

#[test]
fn plan_text_stays_readable_with_3_500_and_100_000_endpoints_and_the_json_keeps_them_all() {
    for count in [3_500, 100_000] {
        let dir = many_endpoints(count);
        let out = portald(&["plan", &dir.arg(), "--no-live"]);
        assert_eq!(code(&out), 0, "{count}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let widest = stdout.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(widest <= 2048, "{count}: a line of {widest} characters");
        let more = format!("... and {} more", count - 8);
        // The table row and the listener line each shorten the list.
        assert_eq!(stdout.matches(&more).count(), 2, "{count}: {stdout}");

        let json = portald(&["plan", &dir.arg(), "--no-live", "--json"]);
        assert_eq!(code(&json), 0);
        let plan: serde_json::Value = serde_json::from_slice(&json.stdout).expect("plan --json");
        let endpoints = plan["services"][0]["ports"][0]["endpoints"]
            .as_array()
            .expect("endpoints");
        assert_eq!(endpoints.len(), count);
    }
}

/// Runs `portald args` with its standard output read for one line only, then closed (as
/// `portald ... | head -1`), and returns its status and standard error.
fn with_stdout_closed_early(args: &[&str]) -> (std::process::ExitStatus, String) {
    use std::io::{BufRead, Read};
    let mut child = Command::new(env!("CARGO_BIN_EXE_portald"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the portald binary runs");
    let mut first = String::new();
    let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout piped"));
    reader.read_line(&mut first).expect("one line");
    assert!(
        !first.is_empty(),
        "`portald {}` printed nothing",
        args.join(" ")
    );
    drop(reader);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut stderr)
        .expect("stderr readable");
    (child.wait().expect("portald exits"), stderr)
}

#[test]
fn a_reader_that_goes_away_ends_every_printing_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    // Large outputs, so that the writes go on after the reader has gone.
    let scratch = Scratch::new("closed-stdout");
    for i in 0..300 {
        std::fs::write(
            scratch.0.join(format!("svc{i}.yaml")),
            format!("{{kind: Service, apiVersion: v1, metadata: {{name: svc{i}}}, spec: {{ports: [{{port: 80}}]}}}}\n"),
        )
        .expect("writes a service");
    }
    let dir = scratch.arg();
    for args in [
        vec!["plan", dir.as_str(), "--no-live"],
        vec!["plan", dir.as_str(), "--no-live", "--json"],
        vec!["plan", dir.as_str(), "--no-live", "--show-batch"],
        vec!["check", dir.as_str(), "--format", "json"],
        vec!["--help"],
    ] {
        let (status, stderr) = with_stdout_closed_early(&args);
        assert!(
            !stderr.contains("panicked"),
            "`portald {}` panicked: {stderr}",
            args.join(" ")
        );
        assert!(
            status.success() || status.signal() == Some(libc_sigpipe()),
            "`portald {}` ended with {status}: {stderr}",
            args.join(" ")
        );
    }
}

/// SIGPIPE's number on Linux.
fn libc_sigpipe() -> i32 {
    13
}

#[test]
fn the_manual_page_and_the_completions_cover_every_subcommand() {
    let commands = subcommands();
    let man = portald(&["man"]);
    assert_eq!(code(&man), 0, "{}", text(&man.stderr));
    let page = text(&man.stdout);
    assert!(page.contains(".TH portald 1"), "not a roff page: {page}");
    let bash = portald(&["completions", "bash"]);
    assert_eq!(code(&bash), 0, "{}", text(&bash.stderr));
    let script = text(&bash.stdout);
    for command in &commands {
        assert!(
            page.contains(command.as_str()),
            "the man page lacks `{command}`"
        );
        assert!(
            script.contains(command.as_str()),
            "bash completion lacks `{command}`"
        );
    }
    // The script is valid bash.
    let scratch = Scratch::new("completions");
    let path = scratch.0.join("portald.bash");
    std::fs::write(&path, &script).expect("writes the script");
    let checked = Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("bash runs");
    assert!(checked.status.success(), "{}", text(&checked.stderr));
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = portald(&["completions", shell]);
        assert_eq!(code(&out), 0, "{shell}: {}", text(&out.stderr));
        assert!(out.stdout.len() > 1000, "{shell}: a short script");
    }
}

#[test]
fn settings_come_from_flags_then_environment_then_the_config_file() {
    let scratch = Scratch::new("settings");
    let config = scratch.0.join("portald.yaml");
    std::fs::write(&config, "portal_cidr: 10.66.0.0/16\nresync_seconds: 9\n").expect("config");
    let seed = root().join("examples/seed").display().to_string();
    let vip_of = |out: &Output| {
        assert_eq!(code(out), 0, "{}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .find(|l| l.starts_with("default/apache-service"))
            .and_then(|l| l.split_whitespace().nth(1))
            .map(str::to_string)
            .expect("the service's row")
    };
    let run = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(env!("CARGO_BIN_EXE_portald"))
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("portald runs")
    };
    let config_arg = config.display().to_string();
    let file_only = run(&["plan", &seed, "--no-live", "--config", &config_arg], &[]);
    assert_eq!(vip_of(&file_only), "10.66.0.1");
    let env_over_file = run(
        &["plan", &seed, "--no-live"],
        &[
            ("PORTALD_CONFIG", config_arg.as_str()),
            ("PORTALD_PORTAL_CIDR", "10.77.0.0/16"),
        ],
    );
    assert_eq!(vip_of(&env_over_file), "10.77.0.1");
    let flag_over_env = run(
        &["plan", &seed, "--no-live", "--portal-cidr", "10.88.0.0/16"],
        &[
            ("PORTALD_CONFIG", config_arg.as_str()),
            ("PORTALD_PORTAL_CIDR", "10.77.0.0/16"),
        ],
    );
    assert_eq!(vip_of(&flag_over_env), "10.88.0.1");

    let shown = run(
        &["run", &seed, "--config", &config_arg, "--print-config"],
        &[("PORTALD_DEBOUNCE_MS", "50")],
    );
    assert_eq!(code(&shown), 0, "{}", text(&shown.stderr));
    let shown = text(&shown.stdout);
    for line in [
        "portal_cidr: \"10.66.0.0/16\"  # config file",
        "resync_seconds: \"9\"  # config file",
        "debounce_ms: \"50\"  # environment",
        "dir: ",
        "mode: \"userspace\"  # default",
    ] {
        assert!(shown.contains(line), "`{line}` missing from:\n{shown}");
    }

    std::fs::write(&config, "portal_cdir: 10.66.0.0/16\n").expect("config");
    let typo = run(&["plan", &seed, "--no-live", "--config", &config_arg], &[]);
    assert_eq!(code(&typo), 2);
    assert!(
        text(&typo.stderr).contains("unknown setting `portal_cdir` (did you mean `portal_cidr`?)"),
        "{}",
        text(&typo.stderr)
    );
}

#[test]
fn status_on_a_socket_the_user_may_not_use_reports_a_permission_problem_naming_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("perm");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // A listening socket as the daemon leaves it: root's, mode 0600.
    let socket = dir.0.join("portald.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let shown = socket.display().to_string();
    // The client as `nobody`: root would pass the permission check.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_portald"))
        .args(["status", "--control-socket", &shown])
        .output()
        .expect("setpriv (util-linux) runs; the test runs as root");
    let stderr = text(&out.stderr);
    assert_eq!(code(&out), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "this user may not connect to control socket `{shown}`"
        )) && stderr.contains("Permission denied"),
        "{stderr}"
    );
    assert!(!stderr.contains("no portald daemon is running"), "{stderr}");

    // With no socket at all, it is still "no daemon".
    let absent = dir.0.join("absent.sock").display().to_string();
    let out = portald(&["status", "--control-socket", &absent]);
    assert!(
        text(&out.stderr).contains("no portald daemon is running"),
        "{}",
        text(&out.stderr)
    );
}
