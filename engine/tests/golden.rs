//! Golden tests: every `fixtures/<case>/` through the pure pipeline, compared with the raw
//! artifacts in `golden/<case>/`; `UPDATE_GOLDEN=1` rewrites them (refused when `CI` is set).

mod common;

use common::{case_names, golden_dir, Case};
use engine::compile::ServiceView;
use engine::diagnostics::{render, Diagnostic, ReportFormat};
use engine::pipeline::Outcome;
use engine::plan::render::{plan_text, services_table};
use engine::plan::Step;
use planners::{Change, Comment, Dialect, Iptables, Nftables};
use similar::TextDiff;
use std::collections::BTreeSet;

/// The cases the suite promises; deleting one of them must fail, not pass quietly.
const REQUIRED_CASES: &[&str] = &[
    "seed-apache",
    "multi-port-named-targets",
    "udp",
    "headless",
    "explicit-cluster-ip",
    "endpoint-slices",
    "pod-endpoint-rules",
    "change-against-live",
    "busy-foreign-dump",
    "lock-honoured",
    "invalid-malformed-yaml",
    "invalid-malformed-json",
    "invalid-missing-name",
    "invalid-missing-port",
    "invalid-port-out-of-range",
    "invalid-duplicate-service",
    "invalid-duplicate-port-names",
    "invalid-cluster-ip-outside-cidr",
    "invalid-cluster-ip-taken",
    "invalid-protocol",
    "invalid-hostile-strings",
    "refused-endpoint-addresses",
    "readiness-probes",
];

/// The artifact files of a case, in a fixed order.
const ARTIFACTS: &[&str] = &[
    "model.json",
    "ruleset.iptables",
    "ruleset.nft",
    "plan.txt",
    "batch.iptables",
    "batch.nft",
    "diagnostics.txt",
    "lock.json",
    "kernel-ruleset.iptables",
    "kernel-ruleset.nft",
    "kernel-plan.txt",
    "kernel-batch.iptables",
    "kernel-batch.nft",
];

/// Whether to rewrite the golden files: `UPDATE_GOLDEN` set (and not `0`), never in CI.
fn update_mode(update: Option<&str>, ci: Option<&str>) -> Result<bool, String> {
    let update = update.is_some_and(|v| !v.is_empty() && v != "0");
    match (update, ci.is_some()) {
        (true, true) => Err(
            "UPDATE_GOLDEN is refused when CI is set: golden files are reviewed, not rewritten by CI"
                .into(),
        ),
        (update, _) => Ok(update),
    }
}

fn plan_file(outcome: &Outcome) -> String {
    format!(
        "{}\n{}",
        services_table(&outcome.intent.services),
        plan_text(&outcome.plan)
    )
}

/// What the pipeline makes of a case, as the golden files hold it.
fn artifacts(case: &Case) -> Vec<(&'static str, String)> {
    let iptables = case.run_iptables();
    let nftables = case.run_nftables();
    let kernel_iptables = case.run_kernel(engine::config::Backend::Iptables);
    let kernel_nftables = case.run_kernel(engine::config::Backend::Nftables);
    let mut model =
        serde_json::to_string_pretty(&iptables.intent.services).expect("model serializes");
    model.push('\n');
    let out = vec![
        ("model.json", model),
        (
            "ruleset.iptables",
            Iptables.render_state(&iptables.intent.nat),
        ),
        ("ruleset.nft", Nftables.render_state(&iptables.intent.nat)),
        ("plan.txt", plan_file(&iptables)),
        ("batch.iptables", iptables.plan.batch.clone()),
        ("batch.nft", nftables.plan.batch.clone()),
        (
            "diagnostics.txt",
            render(&iptables.diagnostics, ReportFormat::Text),
        ),
        ("lock.json", iptables.allocation.lock.render()),
        (
            "kernel-ruleset.iptables",
            Iptables.render_state(&kernel_iptables.intent.nat),
        ),
        (
            "kernel-ruleset.nft",
            Nftables.render_state(&kernel_iptables.intent.nat),
        ),
        ("kernel-plan.txt", plan_file(&kernel_iptables)),
        ("kernel-batch.iptables", kernel_iptables.plan.batch.clone()),
        ("kernel-batch.nft", kernel_nftables.plan.batch.clone()),
    ];
    debug_assert_eq!(
        out.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        ARTIFACTS.to_vec()
    );
    out
}

fn unified(expected: &str, actual: &str, name: &str) -> String {
    TextDiff::from_lines(expected, actual)
        .unified_diff()
        .context_radius(3)
        .header(&format!("golden/{name}"), &format!("actual/{name}"))
        .to_string()
}

#[test]
fn golden_files_match_every_fixture_case() {
    let update = update_mode(
        std::env::var("UPDATE_GOLDEN").ok().as_deref(),
        std::env::var("CI").ok().as_deref(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cases = case_names();
    let mut mismatches = Vec::new();
    let mut rewritten = Vec::new();
    for name in &cases {
        let case = Case::load(name);
        let dir = golden_dir().join(name);
        for (file, actual) in artifacts(&case) {
            let path = dir.join(file);
            let expected = std::fs::read_to_string(&path).ok();
            if expected.as_deref() == Some(actual.as_str()) {
                continue;
            }
            if update {
                std::fs::create_dir_all(&dir).expect("golden dir is writable");
                std::fs::write(&path, &actual).expect("golden file is writable");
                rewritten.push(format!("{name}/{file}"));
                continue;
            }
            mismatches.push(match expected {
                None => format!(
                    "golden/{name}/{file} is missing (run with UPDATE_GOLDEN=1 to create it)"
                ),
                Some(expected) => unified(&expected, &actual, &format!("{name}/{file}")),
            });
        }
        // A golden file the pipeline no longer produces is stale.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let file = entry.file_name().to_string_lossy().into_owned();
                if !ARTIFACTS.contains(&file.as_str()) {
                    mismatches.push(format!(
                        "golden/{name}/{file} is not an artifact of any test"
                    ));
                }
            }
        }
    }
    // A golden case without its fixture is stale too (`golden/planners` belongs to planners/).
    for entry in std::fs::read_dir(golden_dir())
        .expect("golden/ is readable")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != "planners" && !cases.contains(&name) {
            mismatches.push(format!("golden/{name} has no fixtures/{name}"));
        }
    }
    if !rewritten.is_empty() {
        eprintln!("rewrote {} golden file(s):", rewritten.len());
        for r in &rewritten {
            eprintln!("  golden/{r}");
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} golden mismatch(es):\n\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn update_golden_is_refused_when_ci_is_set() {
    assert_eq!(update_mode(None, None), Ok(false));
    assert_eq!(update_mode(Some("1"), None), Ok(true));
    assert_eq!(update_mode(Some("0"), None), Ok(false));
    assert_eq!(update_mode(None, Some("true")), Ok(false));
    assert!(update_mode(Some("1"), Some("true")).is_err());
    assert!(update_mode(Some("1"), Some("")).is_err());
}

#[test]
fn every_promised_case_has_a_fixture_and_golden_files() {
    let cases = case_names();
    for required in REQUIRED_CASES {
        assert!(
            cases.iter().any(|c| c == required),
            "fixtures/{required}/services is missing"
        );
        for file in ARTIFACTS {
            let path = golden_dir().join(required).join(file);
            assert!(path.is_file(), "{} is missing", path.display());
        }
    }
}

fn service<'a>(outcome: &'a Outcome, name: &str) -> &'a ServiceView {
    outcome
        .intent
        .services
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| {
            panic!(
                "service `{name}` is not in the model; it has {:?}",
                outcome
                    .intent
                    .services
                    .iter()
                    .map(|s| &s.name)
                    .collect::<Vec<_>>()
            )
        })
}

fn endpoints(view: &ServiceView, port: usize) -> Vec<String> {
    view.ports[port]
        .endpoints
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn seed_apache_is_served_on_10_11_0_1_port_12345_through_a_proxy_port_to_the_pods_on_80() {
    let outcome = Case::load("seed-apache").run_iptables();
    assert!(outcome.diagnostics.is_empty(), "{:?}", outcome.diagnostics);
    let apache = service(&outcome, "default/apache-service");
    assert_eq!(
        apache.vip.map(|v| v.to_string()).as_deref(),
        Some("10.11.0.1")
    );
    assert_eq!(apache.ports.len(), 1);
    assert_eq!(apache.ports[0].port, 12345);
    let proxy = apache.ports[0].proxy_port.expect("a proxy port").0;
    assert_eq!(
        endpoints(apache, 0),
        ["10.244.1.2:80", "10.244.2.2:80"],
        "the pods labelled name=apache, on containerPort 80"
    );
    let batch = &outcome.plan.batch;
    assert!(
        batch.contains(&format!(
            "-A PORTAL-CONTAINER -d 10.11.0.1/32 -p tcp -m comment --comment \"default/apache-service:12345\" -m tcp --dport 12345 -j REDIRECT --to-ports {proxy}"
        )),
        "the seed's REDIRECT rule is in the batch:\n{batch}"
    );
    assert!(batch.contains(&format!("-j DNAT --to-destination 127.0.0.1:{proxy}")));
    assert!(plan_file(&outcome).contains("default/apache-service  10.11.0.1  12345/tcp"));
}

#[test]
fn multi_port_service_resolves_named_target_ports_through_each_pods_own_port_names() {
    let outcome = Case::load("multi-port-named-targets").run_iptables();
    assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
    let web = service(&outcome, "shop/web");
    // Ready pods of namespace `shop` only; each pod's own number for the name.
    assert_eq!(
        endpoints(web, 0),
        ["10.244.1.10:8080", "10.244.2.10:9080", "10.244.4.10:8080"]
    );
    assert_eq!(endpoints(web, 1), ["10.244.1.10:8443", "10.244.2.10:9443"]);
    assert!(
        web.ports[1].notes.iter().any(|n| n.contains("`tls`")),
        "web-4 declares no `tls` port: {:?}",
        web.ports[1].notes
    );
    let db = service(&outcome, "shop/db");
    assert_eq!(endpoints(db, 0), ["192.168.10.1:5432", "192.168.10.2:5432"]);
    assert_eq!(endpoints(db, 1), ["192.168.10.1:9187", "192.168.10.2:9187"]);
    let ports: BTreeSet<u16> = outcome
        .intent
        .services
        .iter()
        .flat_map(|s| &s.ports)
        .map(|p| p.proxy_port.expect("proxy port").0)
        .collect();
    assert_eq!(ports.len(), 4, "every service port has its own proxy port");
}

#[test]
fn endpoint_slices_use_ready_endpoints_and_fall_back_to_serving_terminating_ones() {
    let outcome = Case::load("endpoint-slices").run_iptables();
    assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
    assert_eq!(
        endpoints(service(&outcome, "prod/api"), 0),
        ["10.244.1.20:8080", "10.244.2.20:8080"],
        "ready endpoints only; the terminating one waits"
    );
    assert_eq!(
        endpoints(service(&outcome, "prod/draining"), 0),
        ["10.244.3.30:8443"],
        "nothing ready: serving+terminating endpoints are used, the non-serving one is not"
    );
    assert!(endpoints(service(&outcome, "prod/gone"), 0).is_empty());
}

#[test]
fn pods_are_endpoints_by_the_endpointslice_controllers_rules() {
    let outcome = Case::load("pod-endpoint-rules").run_iptables();
    assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
    assert_eq!(
        endpoints(service(&outcome, "default/web"), 0),
        ["10.244.1.12:8080"],
        "a finished Pod never serves, a terminating one waits, and the hand-written Endpoints \
         (192.0.2.50) of a Service with a selector is ignored"
    );
    assert_eq!(
        endpoints(service(&outcome, "default/dual"), 0),
        ["10.244.2.5:8080"],
        "the IPv4 address of a dual-stack Pod's podIPs"
    );
    assert_eq!(
        endpoints(service(&outcome, "default/draining"), 0),
        ["10.244.3.1:8080"],
        "nothing ready: terminating Pods still Ready serve, the one no longer Ready does not"
    );
    assert_eq!(
        endpoints(service(&outcome, "default/peers"), 0),
        ["10.244.4.1:7000"],
        "publishNotReadyAddresses: a not-ready Pod serves, a finished one does not"
    );
    assert_eq!(
        endpoints(service(&outcome, "default/mixed"), 0),
        ["10.244.6.1:8080", "10.244.6.100:8080"],
        "a custom controller's slice merges with the Pods; the EndpointSlice controller's is ignored"
    );
    assert!(endpoints(service(&outcome, "default/legacy"), 0).is_empty());
    assert_eq!(
        endpoints(service(&outcome, "default/for-portald"), 0),
        ["10.244.5.1:80"]
    );
    assert!(
        !outcome
            .intent
            .services
            .iter()
            .any(|s| s.name == "default/for-other"),
        "a Service meant for another proxy is left alone"
    );
    let said = |needle: &str| {
        outcome
            .diagnostics
            .iter()
            .any(|d| d.to_string().contains(needle))
    };
    assert!(said("web-endpoints.yaml:3: warning: Endpoints `default/web`: ignored: Service `default/web` (web.yaml:4) has a selector"));
    assert!(said(
        "slices.yaml:32: warning: EndpointSlice for `default/mixed`: ignored"
    ));
    assert!(said(
        "note: Endpoints `default/legacy`: `metadata.labels.service.kubernetes.io/headless`"
    ));
    assert!(said(
        "`spec.internalTrafficPolicy`: `Local` needs node-local endpoints"
    ));
    assert!(said("meant for the proxy `cilium`"));
}

#[test]
fn headless_service_gets_no_vip_and_no_rule() {
    let outcome = Case::load("headless").run_iptables();
    let view = service(&outcome, "default/cassandra");
    assert!(view.headless && view.vip.is_none());
    assert!(outcome.intent.nat.rules.is_empty());
    assert!(outcome.intent.listeners.is_empty());
}

#[test]
fn explicit_cluster_ips_are_kept_and_automatic_ones_go_around_them() {
    let outcome = Case::load("explicit-cluster-ip").run_iptables();
    assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
    let vip = |n: &str| service(&outcome, n).vip.map(|v| v.to_string());
    assert_eq!(vip("default/pinned").as_deref(), Some("10.11.0.1"));
    assert_eq!(vip("default/far").as_deref(), Some("10.11.200.7"));
    assert_eq!(vip("default/auto").as_deref(), Some("10.11.0.2"));
    assert_eq!(
        outcome.allocation.lock.vips.keys().collect::<Vec<_>>(),
        ["default/auto"],
        "explicit addresses live in the files, not in the lock"
    );
}

#[test]
fn lock_honoured_case_keeps_the_pinned_vips_and_proxy_ports() {
    let case = Case::load("lock-honoured");
    let outcome = case.run_iptables();
    assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
    for (name, ip) in &case.lock.vips {
        let view = service(&outcome, name);
        assert_eq!(view.vip.map(|v| v.0), Some(*ip), "{name}");
        let port = case.lock.proxy_ports[&format!("{name}:80/tcp")];
        assert_eq!(view.ports[0].proxy_port.map(|p| p.0), Some(port), "{name}");
    }
    // `d` is not in the lock: it takes the first address the lock left free.
    assert_eq!(
        service(&outcome, "default/d").vip.map(|v| v.to_string()),
        Some("10.11.0.2".into())
    );
}

#[test]
fn change_against_live_keeps_one_service_changes_one_removes_one_and_adds_one() {
    let outcome = Case::load("change-against-live").run_iptables();
    assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
    let changes = outcome.plan.kernel_changes();
    let comments = |pick: fn(&Change) -> Option<&planners::PortalRule>| -> BTreeSet<String> {
        changes
            .iter()
            .filter_map(pick)
            .map(|r| r.comment.to_string())
            .collect()
    };
    let added = comments(|c| match c {
        Change::AddRule { rule } => Some(rule),
        _ => None,
    });
    let replaced = comments(|c| match c {
        Change::ReplaceRule { new, .. } => Some(new),
        _ => None,
    });
    let removed = comments(|c| match c {
        Change::RemoveRule { rule } => Some(rule),
        _ => None,
    });
    assert_eq!(added, BTreeSet::from(["default/added:443".to_string()]));
    assert_eq!(
        replaced,
        BTreeSet::from(["default/modified:8080".to_string()])
    );
    assert_eq!(removed, BTreeSet::from(["default/gone:80".to_string()]));
    // Proxy guards are entries that follow the listeners; chains and hooks stay.
    assert!(
        !changes.iter().any(|c| match c {
            Change::AddScaffold { scaffold } | Change::RemoveScaffold { scaffold } =>
                !scaffold.is_entry(),
            _ => false,
        }),
        "the chains and hooks are already live"
    );
    let vip = |n: &str| service(&outcome, n).vip.map(|v| v.to_string());
    assert_eq!(
        vip("default/keep").as_deref(),
        Some("10.11.0.1"),
        "live VIP kept"
    );
    assert_eq!(vip("default/modified").as_deref(), Some("10.11.0.2"));
    assert_eq!(
        vip("default/added").as_deref(),
        Some("10.11.0.4"),
        "10.11.0.3 is still held by `gone` while its rules are live"
    );
    let keep = service(&outcome, "default/keep");
    assert_eq!(
        keep.ports[0].proxy_port.map(|p| p.0),
        Some(20000),
        "live proxy port kept"
    );
}

/// `true` when a batch line touches only portald's chains or its hook jumps.
fn touches_only_portald(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] | ["*nat"] | ["*filter"] | ["COMMIT"] => true,
        [decl, ..] if decl.starts_with(':') => decl.starts_with(":PORTAL-"),
        [op, chain, ..] if matches!(*op, "-A" | "-D" | "-I" | "-R" | "-F" | "-X" | "-N") => {
            if chain.starts_with("PORTAL-") {
                return true;
            }
            // A hook: inserted or deleted in a built-in chain, jumping into an owned chain.
            matches!(*chain, "PREROUTING" | "OUTPUT" | "INPUT" | "FORWARD")
                && matches!(*op, "-I" | "-D")
                && matches!(
                    words.as_slice(),
                    [
                        ..,
                        "-j",
                        "PORTAL-CONTAINER"
                            | "PORTAL-HOST"
                            | "PORTAL-PROXY-GUARD"
                            | "PORTAL-FORWARD"
                            | "PORTAL-CONTAINER-REJECT"
                            | "PORTAL-HOST-REJECT"
                    ]
                )
        }
        _ => false,
    }
}

#[test]
fn busy_foreign_dump_plan_touches_no_foreign_rule() {
    let case = Case::load("busy-foreign-dump");
    let outcome = case.run_iptables();
    assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
    let observed = case.observed_iptables();
    assert!(
        observed.live.foreign.len() > 20,
        "the dump holds kube-proxy's rules"
    );
    let batch = &outcome.plan.batch;
    assert!(!batch.is_empty());
    for line in batch.lines() {
        assert!(
            touches_only_portald(line),
            "batch line touches a foreign rule or chain: {line}\nbatch:\n{batch}"
        );
        assert!(
            !line.contains("KUBE-") && !line.contains("DOCKER"),
            "batch line names a foreign chain: {line}"
        );
    }
    // portald's own space is cleaned: the stale service and the hand-added rule go.
    assert!(batch.contains("-D PORTAL-CONTAINER -d 10.11.0.2/32"));
    assert!(outcome
        .plan
        .steps
        .iter()
        .any(|s| matches!(s, Step::Kernel(Change::RemoveStray { .. }))));
    assert!(batch.contains("--comment \"default/dns:53\""));
    assert!(
        !batch.contains("default/web:80"),
        "`web` is live and unchanged: its rules stay as they are:\n{batch}"
    );
}

#[test]
fn the_foreign_rule_filter_of_the_busy_test_can_fail() {
    assert!(!touches_only_portald(
        "-A KUBE-SERVICES -d 10.96.0.1/32 -j ACCEPT"
    ));
    assert!(!touches_only_portald("-I PREROUTING 1 -j KUBE-SERVICES"));
    assert!(!touches_only_portald("-A PREROUTING -j PORTAL-CONTAINER"));
    assert!(!touches_only_portald(":KUBE-SERVICES - [0:0]"));
    assert!(touches_only_portald(
        "-I PREROUTING 1 -m comment --comment \"portald:container-portals\" -j PORTAL-CONTAINER"
    ));
    assert!(touches_only_portald("-D PORTAL-HOST -p tcp -j ACCEPT"));
}

fn invalid_cases() -> Vec<String> {
    let cases: Vec<String> = case_names()
        .into_iter()
        .filter(|c| c.starts_with("invalid-"))
        .collect();
    assert!(cases.len() >= 11, "invalid cases: {cases:?}");
    cases
}

/// Syntax errors come from the parser, which knows a line but no field.
fn is_syntax_error(d: &Diagnostic) -> bool {
    d.message.starts_with("malformed ")
}

#[test]
fn every_invalid_case_names_file_line_and_field() {
    let mut problems = Vec::new();
    for name in invalid_cases() {
        let case = Case::load(&name);
        let outcome = case.run_iptables();
        let errors: Vec<&Diagnostic> = outcome
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .collect();
        if errors.is_empty() {
            problems.push(format!("{name}: no error reported"));
        }
        for d in errors {
            let file_exists = common::fixtures_dir()
                .join(&name)
                .join("services")
                .join(&d.file)
                .is_file();
            if !file_exists {
                problems.push(format!(
                    "{name}: `{}` is not a file of the case: {d}",
                    d.file
                ));
            }
            if d.line.is_none() {
                problems.push(format!("{name}: no line: {d}"));
            }
            if d.field.is_none() && !is_syntax_error(d) {
                problems.push(format!("{name}: no field: {d}"));
            }
            let text = d.to_string();
            if !text.starts_with(&format!("{}:{}: error: ", d.file, d.line.unwrap_or(0))) {
                problems.push(format!(
                    "{name}: text form does not lead with file:line: {text}"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn one_bad_file_never_hides_the_good_one() {
    for name in invalid_cases() {
        let outcome = Case::load(&name).run_iptables();
        assert!(outcome.has_errors(), "{name}: errors expected");
        assert!(
            !render(&outcome.diagnostics, ReportFormat::Text).is_empty(),
            "{name}: diagnostics.txt must not be empty"
        );
        let good = service(&outcome, "default/good");
        assert!(good.vip.is_some(), "{name}: the good service has a VIP");
        assert!(
            outcome
                .plan
                .batch
                .contains("--comment \"default/good:http\""),
            "{name}: the good service is planned:\n{}",
            outcome.plan.batch
        );
        assert!(
            !outcome
                .diagnostics
                .iter()
                .any(|d| d.is_error() && d.file == "good.yaml"),
            "{name}: good.yaml is blamed: {:?}",
            outcome.diagnostics
        );
    }
}

#[test]
fn hostile_strings_are_each_rejected_and_never_reach_a_rule() {
    let case = Case::load("invalid-hostile-strings");
    let iptables = case.run_iptables();
    let nftables = case.run_nftables();
    let errors: Vec<(String, String)> = iptables
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| (d.file.clone(), d.field.clone().unwrap_or_default()))
        .collect();
    let count = |file: &str, field: &str| {
        errors
            .iter()
            .filter(|(f, x)| f == file && x == field)
            .count()
    };
    // Six hostile names, one namespace, two port names, a target port, a protocol.
    assert_eq!(count("hostile.yaml", "metadata.name"), 6, "{errors:?}");
    assert_eq!(count("hostile.yaml", "metadata.namespace"), 1, "{errors:?}");
    assert_eq!(count("hostile.yaml", "spec.ports[0].name"), 1, "{errors:?}");
    assert_eq!(count("hostile.yaml", "spec.ports[1].name"), 1, "{errors:?}");
    assert_eq!(
        count("hostile.yaml", "spec.ports[1].targetPort"),
        1,
        "{errors:?}"
    );
    assert_eq!(
        count("hostile.yaml", "spec.ports[2].protocol"),
        1,
        "{errors:?}"
    );
    assert_eq!(count("hostile.json", "id"), 1, "{errors:?}");
    // Each hostile name is reported on its own line, not all on the first.
    let lines: BTreeSet<usize> = iptables
        .diagnostics
        .iter()
        .filter(|d| d.file == "hostile.yaml" && d.field.as_deref() == Some("metadata.name"))
        .filter_map(|d| d.line)
        .collect();
    assert_eq!(lines.len(), 6, "{:?}", iptables.diagnostics);
    // The services the hostile objects named are not in the model, and nothing leaks.
    assert_eq!(
        iptables
            .intent
            .services
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["default/good"]
    );
    let ruleset = Iptables.render_state(&iptables.intent.nat);
    for text in [&iptables.plan.batch, &ruleset] {
        assert!(!text.contains(';'), "`;` reached an iptables text:\n{text}");
    }
    for text in [
        iptables.plan.batch.as_str(),
        nftables.plan.batch.as_str(),
        &Iptables.render_state(&iptables.intent.nat),
        &Nftables.render_state(&iptables.intent.nat),
    ] {
        for bad in [
            "reboot", "$(", "`", "quote", "space", "newline", "drop", "-F", "id)",
        ] {
            assert!(
                !text.contains(bad),
                "`{bad}` reached a kernel text:\n{text}"
            );
        }
        for line in text.lines() {
            if let Some((_, rest)) = line.split_once("comment \"") {
                let comment = rest.split('"').next().unwrap_or_default();
                assert!(
                    Comment::new(comment).is_ok(),
                    "unsafe comment `{comment}` in: {line}"
                );
            }
        }
    }
}

#[test]
fn a_broken_file_keeps_what_it_defined_in_force() {
    // `bad.yaml` defined `default/broken`, whose rules are live; while the file is broken they
    // must stay (held back, not removed), and its VIP must not be given to anyone else.
    let case = Case::load("invalid-malformed-yaml");
    let live = "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:PORTAL-CONTAINER - [0:0]\n:PORTAL-HOST - [0:0]\n\
        -A PREROUTING -m comment --comment \"portald:container-portals\" -j PORTAL-CONTAINER\n\
        -A OUTPUT -m comment --comment \"portald:host-portals\" -j PORTAL-HOST\n\
        -A PORTAL-CONTAINER -d 10.11.0.1/32 -p tcp -m comment --comment \"default/broken:80\" -m tcp --dport 80 -j REDIRECT --to-ports 20000\n\
        -A PORTAL-HOST -d 10.11.0.1/32 -p tcp -m comment --comment \"default/broken:80\" -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:20000\n\
        COMMIT\n";
    let observed =
        engine::observe::from_file_text(engine::config::Backend::Iptables, live, "live").unwrap();
    let outcome = engine::pipeline::run(&case.files, &case.lock, &observed, &case.config, false);
    assert!(outcome.has_errors());
    assert_eq!(
        outcome.plan.summary.remove,
        0,
        "{}",
        plan_text(&outcome.plan)
    );
    assert_eq!(outcome.plan.held_back, 2, "{}", plan_text(&outcome.plan));
    assert!(plan_text(&outcome.plan).contains("2 removal(s) held back"));
    let good = service(&outcome, "default/good");
    assert_ne!(
        good.vip.map(|v| v.to_string()).as_deref(),
        Some("10.11.0.1"),
        "the broken service's VIP is not handed out"
    );
    assert_ne!(good.ports[0].proxy_port.map(|p| p.0), Some(20000));
}

#[test]
fn golden_batches_are_the_files_the_kernel_test_feeds_to_iptables_restore() {
    // The tier-3 test reads golden batches as they are: they must be complete restore files.
    for name in REQUIRED_CASES {
        let path = golden_dir().join(name).join("batch.iptables");
        let Ok(text) = std::fs::read_to_string(&path) else {
            panic!("{} is missing", path.display());
        };
        if text.is_empty() {
            continue;
        }
        assert!(
            text.starts_with("*nat\n") || text.starts_with("*filter\n"),
            "{}",
            path.display()
        );
        assert!(text.ends_with("COMMIT\n"), "{}", path.display());
    }
}
