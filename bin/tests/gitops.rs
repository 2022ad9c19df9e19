//! The CI side of GitOps without kernel access: `check --strict`, "did you mean", errors in
//! the user's terms, repository-relative GitHub annotations, versioned JSON and its schemas.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::scratch::Scratch;

fn portald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portald"))
        .args(args)
        .output()
        .expect("the portald binary runs")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("portald exited, not killed")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const MISSPELT_FIELD: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  clusterIP: 10.11.0.9\n  ports:\n  - port: 80\n    targetport: 8080\n";

#[test]
fn an_unknown_field_suggests_the_known_one_and_fails_only_under_strict() {
    let dir = Scratch::new("field");
    dir.write("web.yaml", MISSPELT_FIELD);
    let lenient = portald(&["check", &dir.arg()]);
    let report = text(&lenient.stdout);
    assert_eq!(code(&lenient), 0, "{report}");
    assert!(
        report.contains(
            "web.yaml:9: warning: Service `default/web`: `spec.ports[0].targetport`: unknown field; ignored (did you mean `targetPort`?)"
        ),
        "{report}"
    );
    let strict = portald(&["check", "--strict", &dir.arg()]);
    assert_eq!(code(&strict), 1, "{}", text(&strict.stdout));
    assert!(
        text(&strict.stdout).contains("(--strict: warnings are fatal)"),
        "{}",
        text(&strict.stdout)
    );
}

#[test]
fn a_served_kind_in_the_wrong_case_is_a_warning_naming_the_kind_meant() {
    let dir = Scratch::new("kind");
    dir.write(
        "web.yaml",
        "apiVersion: v1\nkind: service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n",
    );
    dir.write(
        "node.yaml",
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: n1\n",
    );
    let out = portald(&["check", "--strict", "--format", "json", &dir.arg()]);
    assert_eq!(code(&out), 1, "{}", text(&out.stdout));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check json");
    let diagnostics = report["diagnostics"].as_array().expect("diagnostics");
    let kind = diagnostics
        .iter()
        .find(|d| d["file"] == "web.yaml")
        .expect("a diagnostic on web.yaml");
    assert_eq!(kind["severity"], "warning", "{kind}");
    assert_eq!(kind["line"], 2, "{kind}");
    assert!(
        kind["message"]
            .as_str()
            .unwrap()
            .contains("did you mean `Service`?"),
        "{kind}"
    );
    // Another kind, however close in letters, stays a note.
    let node = diagnostics
        .iter()
        .find(|d| d["file"] == "node.yaml")
        .expect("a diagnostic on node.yaml");
    assert_eq!(node["severity"], "note", "{node}");
}

#[test]
fn a_type_error_is_told_in_the_terms_of_the_file_and_a_tab_in_indentation_by_its_line() {
    let dir = Scratch::new("terms");
    dir.write(
        "port.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: \"abc\"\n",
    );
    dir.write(
        "tab.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: tab\nspec:\n\tports:\n  - port: 80\n",
    );
    let out = portald(&["check", &dir.arg()]);
    let report = text(&out.stdout);
    assert_eq!(code(&out), 1, "{report}");
    assert!(
        report.contains(
            "port.yaml:7: error: Service `default/web`: `spec.ports[0].port`: expected a whole number, found the string \"abc\""
        ),
        "{report}"
    );
    assert!(!report.contains("i64"), "{report}");
    assert!(
        report.contains("tab.yaml:6: error: malformed YAML: a tab in indentation"),
        "{report}"
    );
}

#[test]
fn github_annotations_name_files_from_the_repository_top_or_the_path_prefix() {
    let repo = Scratch::new("repo");
    std::fs::create_dir_all(repo.path().join(".git")).expect(".git");
    repo.write("deploy/services/web.yaml", MISSPELT_FIELD);
    let dir = repo.path().join("deploy/services").display().to_string();
    let out = portald(&["check", "--format", "github", &dir]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(
        report.starts_with("::warning file=deploy/services/web.yaml,line=9::"),
        "{report}"
    );
    let out = portald(&[
        "check",
        "--format",
        "github",
        "--path-prefix",
        "infra/prod/",
        &dir,
    ]);
    let report = text(&out.stdout);
    assert!(
        report.starts_with("::warning file=infra/prod/web.yaml,line=9::"),
        "{report}"
    );
    // A lock kept elsewhere in the repository is named from the top too.
    repo.write(
        "ci/portald.lock",
        r#"{"format_version": 1, "portal_cidr": "10.11.0.0/16", "vips": {"default/gone": "10.11.0.50"}}"#,
    );
    let lock = repo.path().join("ci/portald.lock").display().to_string();
    let out = portald(&[
        "check", "--locked", "--lock", &lock, "--format", "github", &dir,
    ]);
    assert_eq!(code(&out), 1, "{}", text(&out.stderr));
    let report = text(&out.stdout);
    assert!(
        report.contains("::error file=ci/portald.lock::"),
        "{report}"
    );
    // The text report keeps paths relative to the services directory.
    let out = portald(&["check", &dir]);
    assert!(text(&out.stdout).starts_with("web.yaml:9: warning:"));
}

/// A stand-in for the daemon: answers one request on a control socket with `status`.
fn fake_daemon(
    socket: &Path,
    status: engine::daemon::control::Status,
) -> std::thread::JoinHandle<String> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::os::unix::net::UnixListener::bind(socket).expect("socket bound");
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("one client");
        let mut request = String::new();
        BufReader::new(&stream)
            .read_line(&mut request)
            .expect("a request");
        let response = engine::daemon::control::Response {
            ok: true,
            status: Some(Box::new(status)),
            ..Default::default()
        };
        let mut line = serde_json::to_string(&response).expect("response");
        line.push('\n');
        (&stream).write_all(line.as_bytes()).expect("answer sent");
        request
    })
}

#[test]
fn status_json_is_versioned_and_names_each_problem_with_its_file_and_line() {
    use engine::diagnostics::{Diagnostic, Severity};
    let dir = Scratch::new("status");
    let socket = dir.path().join("portald.sock");
    let problem = Diagnostic {
        file: "web.yaml".into(),
        line: Some(7),
        severity: Severity::Error,
        object: Some("Service `default/web`".into()),
        field: Some("spec.ports[0].port".into()),
        message: "expected a whole number, found the string \"abc\"".into(),
    };
    let status = engine::daemon::control::Status {
        pid: 42,
        diagnostics: vec![problem],
        ..Default::default()
    };
    let daemon = fake_daemon(&socket, status);
    let out = portald(&[
        "status",
        "--json",
        "--control-socket",
        &socket.display().to_string(),
    ]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(daemon.join().expect("fake daemon").contains("status"));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(report["format_version"], 1, "{report:#}");
    assert_eq!(report["pid"], 42, "{report:#}");
    assert_eq!(report["diagnostics"][0]["file"], "web.yaml", "{report:#}");
    assert_eq!(report["diagnostics"][0]["line"], 7, "{report:#}");
}

/// The schemas committed under `docs/schema/`, one per versioned output.
const SCHEMAS: [&str; 5] = ["plan", "check", "status", "snapshot", "lock"];

#[test]
fn the_committed_json_schemas_are_what_the_binary_generates() {
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schema");
    let update = std::env::var_os("UPDATE_SCHEMA").is_some();
    let mut stale = Vec::new();
    for name in SCHEMAS {
        let out = portald(&["schema", name]);
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        let schema: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(
            schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{name}"
        );
        assert!(
            schema["properties"]["format_version"].is_object(),
            "{name}: no format_version"
        );
        let file = docs.join(format!("{name}.schema.json"));
        if update {
            std::fs::write(&file, &out.stdout).expect("schema written");
        } else if std::fs::read(&file).ok().as_deref() != Some(&out.stdout[..]) {
            stale.push(file.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "differ from `portald schema` (UPDATE_SCHEMA=1 rewrites them): {stale:?}"
    );
}

/// Validates `document` against `docs/schema/NAME.schema.json` with python3-jsonschema
/// (installed by scripts/setup.sh): an independent reading of the schema.
fn assert_valid(name: &str, document: &[u8]) {
    let schema = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../docs/schema/{name}.schema.json"));
    let dir = Scratch::new("validate");
    let doc = dir.path().join("doc.json");
    std::fs::write(&doc, document).expect("document written");
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, jsonschema\n\
             schema = json.load(open(sys.argv[1]))\n\
             jsonschema.Draft202012Validator.check_schema(schema)\n\
             jsonschema.validate(json.load(open(sys.argv[2])), schema, cls=jsonschema.Draft202012Validator)",
        ])
        .arg(&schema)
        .arg(&doc)
        .output()
        .expect("python3 runs (scripts/setup.sh installs it with python3-jsonschema)");
    assert!(
        out.status.success(),
        "{name} output is not valid against {}:\n{}",
        schema.display(),
        text(&out.stderr)
    );
}

#[test]
fn every_versioned_output_is_valid_against_its_committed_schema() {
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
    let work = Scratch::new("outputs");
    let state = work.path().join("state.json").display().to_string();
    let check = portald(&[
        "check",
        "--format",
        "json",
        &fixtures
            .join("invalid-hostile-strings/services")
            .display()
            .to_string(),
    ]);
    assert_valid("check", &check.stdout);
    for (case, mode) in [
        ("seed-apache", "userspace"),
        ("multi-port-named-targets", "userspace"),
        ("endpoint-slices", "kernel"),
    ] {
        let services = fixtures.join(case).join("services");
        let plan = portald(&[
            "plan",
            &services.display().to_string(),
            "--no-live",
            "--json",
            "--mode",
            mode,
            "--state-file",
            &state,
        ]);
        assert_eq!(code(&plan), 0, "{}", text(&plan.stderr));
        assert_valid("plan", &plan.stdout);
    }
    let dir = Scratch::new("lock");
    dir.write("web.yaml", MISSPELT_FIELD);
    let lock = portald(&["lock", &dir.arg(), "--state-file", &state]);
    assert_eq!(code(&lock), 0, "{}", text(&lock.stderr));
    let written = std::fs::read(dir.path().join("portald.lock")).expect("lock written");
    assert_valid("lock", &written);

    let socket = work.path().join("portald.sock");
    let daemon = fake_daemon(&socket, status_with_everything());
    let status = portald(&[
        "status",
        "--json",
        "--control-socket",
        &socket.display().to_string(),
    ]);
    daemon.join().expect("fake daemon");
    assert_eq!(code(&status), 0, "{}", text(&status.stderr));
    assert_valid("status", &status.stdout);
}

/// A status with a listener, a failed reconcile, a problem and a held service, so that
/// more than the empty shape is checked.
fn status_with_everything() -> engine::daemon::control::Status {
    use engine::daemon::control::{ListenerView, ReconcileResult, Status};
    use engine::diagnostics::{Diagnostic, Severity};
    Status {
        pid: 7,
        dir: "/srv/services".into(),
        backend: "iptables".into(),
        mode: "userspace".into(),
        reconciles: 3,
        listeners: vec![ListenerView {
            protocol: planners::Protocol::Tcp,
            port: 20000,
            name: "default/web:80".into(),
            endpoints: vec!["10.244.1.2:8080".into()],
            affinity_seconds: Some(10800),
            active: 1,
            accepted: 5,
            per_endpoint: [("10.244.1.2:8080".to_string(), 5)].into(),
            failures: 0,
            rejected: 0,
        }],
        last_reconcile: Some(ReconcileResult {
            at: 1,
            ok: false,
            error: Some("iptables-restore: line 3 failed".into()),
            trigger: "resync".into(),
            ..Default::default()
        }),
        diagnostics: vec![Diagnostic {
            file: "web.yaml".into(),
            line: Some(9),
            severity: Severity::Warning,
            object: None,
            field: Some("spec.ports[0].targetport".into()),
            message: "unknown field; ignored".into(),
        }],
        held: vec!["default/late".into()],
        ..Default::default()
    }
}
