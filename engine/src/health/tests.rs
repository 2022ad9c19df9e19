//! The targets a catalog defines and how verdicts change the endpoints the pipeline serves.

use super::*;
use crate::allocate::Lock;
use crate::config::Config;
use crate::load::{parse_file, SourceFile};
use crate::observe::Observed;

const PODS: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.11.0.10
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: web}]
---
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: web}}
spec:
  containers:
    - name: app
      ports: [{name: web, containerPort: 8080}, {name: admin, containerPort: 9090}]
      readinessProbe: {httpGet: {path: /healthz, port: admin}, periodSeconds: 1}
status: {podIP: 10.244.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: b, labels: {app: web}}
spec:
  containers:
    - ports: [{name: web, containerPort: 8080}]
      readinessProbe: {tcpSocket: {port: missing}}
status: {podIP: 10.244.0.6}
---
apiVersion: v1
kind: Service
metadata:
  name: db
  annotations: {portald.io/health-check: tcp}
spec:
  clusterIP: 10.11.0.11
  ports: [{port: 5432}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: db}
subsets:
  - addresses: [{ip: 10.244.1.1}, {ip: 10.244.1.2}]
    ports: [{port: 5432}]
";

fn catalog() -> Catalog {
    let file = parse_file(&SourceFile {
        path: "svc.yaml".into(),
        text: PODS.into(),
    });
    crate::catalog::assemble([&file]).catalog
}

fn endpoints(health: &Health, service: &str) -> Vec<String> {
    let files = vec![parse_file(&SourceFile {
        path: "svc.yaml".into(),
        text: PODS.into(),
    })];
    let outcome = crate::pipeline::run_with_health(
        &files,
        &Lock::default(),
        &Observed::default(),
        &Config::default(),
        false,
        health,
    );
    let view = outcome
        .intent
        .services
        .iter()
        .find(|s| s.name == service)
        .expect("service compiled");
    view.ports[0]
        .endpoints
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn targets_resolve_named_probe_ports_against_the_containers_ports() {
    let targets = targets(&catalog());
    let names: Vec<&str> = targets.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "health-check default/db 10.244.1.1:5432",
            "health-check default/db 10.244.1.2:5432",
            "readiness-probe default/a app",
            "readiness-probe default/b #0",
        ]
    );
    let a = &targets["readiness-probe default/a app"];
    assert_eq!(a.address, Ok("10.244.0.5:9090".parse().unwrap()));
    assert_eq!(a.rows[0].endpoint.to_string(), "10.244.0.5:8080");
    assert_eq!(a.rows[0].port, "http/TCP");
    let b = &targets["readiness-probe default/b #0"];
    assert_eq!(
        b.address,
        Err("the container declares no port named `missing`".into())
    );
}

#[test]
fn without_a_verdict_the_files_conditions_hold() {
    assert_eq!(
        endpoints(&Health::default(), "default/web"),
        ["10.244.0.5:8080", "10.244.0.6:8080"]
    );
    let targets = targets(&catalog());
    let unknown = overlay(targets.values().map(|t| (t, Verdict::Unknown)));
    assert!(unknown.is_empty());
}

#[test]
fn an_unhealthy_pod_leaves_the_endpoints_and_a_healthy_one_stays() {
    let targets = targets(&catalog());
    let health = overlay(targets.values().map(|t| {
        let verdict = if t.subject == Subject::Pod(ObjectKey::new("default", "a")) {
            Verdict::Unhealthy
        } else {
            Verdict::Healthy
        };
        (t, verdict)
    }));
    assert!(!health.pods[&ObjectKey::new("default", "a")]);
    assert_eq!(endpoints(&health, "default/web"), ["10.244.0.6:8080"]);
}

#[test]
fn a_failing_health_check_takes_an_endpoints_address_out() {
    let targets = targets(&catalog());
    let health = overlay(targets.values().map(|t| {
        let verdict = match &t.subject {
            Subject::Endpoint(_, e) if e.to_string() == "10.244.1.2:5432" => Verdict::Unhealthy,
            _ => Verdict::Unknown,
        };
        (t, verdict)
    }));
    assert_eq!(endpoints(&health, "default/db"), ["10.244.1.1:5432"]);
}

#[test]
fn the_rows_of_a_daemons_status_make_the_same_overlay_for_plan() {
    let row = |service: &str, endpoint: &str, check: &str, state: &str| EndpointHealthView {
        service: service.into(),
        port: "http/TCP".into(),
        endpoint: endpoint.into(),
        check: check.into(),
        state: state.into(),
        since: 0,
        reason: None,
        detail: String::new(),
    };
    let health = Health::from_views(&[
        row(
            "default/web",
            "10.244.0.5:8080",
            "readiness-probe",
            "unhealthy",
        ),
        row(
            "default/web",
            "10.244.0.6:8080",
            "outlier-detection",
            "ejected",
        ),
        row("default/db", "10.244.1.2:5432", "health-check", "unhealthy"),
        row("default/db", "10.244.1.1:5432", "health-check", "unknown"),
    ]);
    assert_eq!(endpoints(&health, "default/web"), ["10.244.0.6:8080"]);
    assert_eq!(endpoints(&health, "default/db"), ["10.244.1.1:5432"]);
}

#[test]
fn a_flip_changes_only_the_rules_of_the_affected_portal() {
    let files = vec![parse_file(&SourceFile {
        path: "svc.yaml".into(),
        text: PODS.into(),
    })];
    let config = Config {
        mode: crate::config::Mode::Kernel,
        ..Config::default()
    };
    let run = |observed: &Observed, health: &Health| {
        crate::pipeline::run_with_health(&files, &Lock::default(), observed, &config, false, health)
    };
    let before = run(&Observed::default(), &Health::default());
    let mut observed = Observed::default();
    observed.live.owned = before.intent.nat.clone();
    assert!(run(&observed, &Health::default()).plan.batch.is_empty());
    let mut health = Health::default();
    health.pods.insert(ObjectKey::new("default", "a"), false);
    let after = run(&observed, &health);
    let batch = &after.plan.batch;
    // Chains are named after the VIP: 10.11.0.10 (web) is 0A0B000A, 10.11.0.11 (db) 0A0B000B.
    assert!(batch.contains("PORTAL-C-0A0B000A-TCP-80"), "{batch}");
    assert!(!batch.contains("0A0B000B"), "{batch}");
    assert!(
        !batch.contains("--to-destination 10.244.0.5"),
        "pod a left: {batch}"
    );
}
