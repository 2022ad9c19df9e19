//! Property test: every text renderer (check report, plan, services table, status) keeps one
//! record per line, no control character and bounded lines, on random hostile and huge input.

use super::status;
use engine::compile::{PortView, ServiceView};
use engine::config::{Backend, Mode};
use engine::daemon::control::{ListenerView, ReconcileResult, Status};
use engine::diagnostics::{render, Diagnostic, ReportFormat, Severity};
use engine::listeners::{Listener, ListenerKey};
use engine::model::{Endpoint, ProxyPort, ServiceType, SourceRef, TargetPort, Vip};
use engine::plan::render::{plan_text, services_table};
use engine::plan::{Plan, Step, Summary};
use planners::{Action, Change, Comment, NatState, Path, PortalKey, PortalRule, Protocol};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// What a line of any text output is kept under (`engine::escape::MAX_LINE`, written out so
/// that a looser bound there fails here).
const MAX_LINE: usize = 2048;

/// Characters a terminal or a CI log must never get raw: C0, DEL, C1, bidi overrides and
/// isolates, line and paragraph separators. Written out apart from `engine::escape`.
fn is_raw_control(c: char) -> bool {
    matches!(c, '\0'..='\x1f' | '\x7f'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}')
}

/// A character, often one that breaks lines, colours terminals, reorders text or is special
/// to GitHub workflow commands.
fn hostile_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        1 => Just('\n'),
        1 => Just('\r'),
        1 => Just('\x1b'),
        1 => Just('\x7f'),
        1 => Just('\u{85}'),
        1 => Just('\u{9b}'),
        1 => Just('\u{202e}'),
        1 => Just('\u{2066}'),
        1 => Just('\u{2028}'),
        1 => Just('%'),
        1 => Just(':'),
        1 => Just(','),
        1 => Just('\\'),
        2 => any::<char>(),
    ]
}

/// A short hostile string, or one repeated past the 65,535 a format width may be.
fn hostile() -> impl Strategy<Value = String> {
    let piece = || prop::collection::vec(hostile_char(), 0..24).prop_map(String::from_iter);
    prop_oneof![
        4 => piece(),
        1 => (piece(), 1..4_000usize).prop_map(|(p, n)| p.repeat(n)),
    ]
}

/// How many endpoints a port has: mostly few, sometimes past what a 65,535-wide cell holds.
fn endpoint_count() -> impl Strategy<Value = usize> {
    prop_oneof![4 => 0..12usize, 1 => 3_000..70_000usize]
}

fn endpoints(count: usize) -> Vec<Endpoint> {
    (0..count as u32)
        .map(|i| Endpoint(SocketAddrV4::new(Ipv4Addr::from(0x0a64_0000 + i), 8080)))
        .collect()
}

fn diagnostic() -> impl Strategy<Value = Diagnostic> {
    (
        hostile(),
        prop::option::of(0..1_000_000usize),
        prop::option::of(hostile()),
        prop::option::of(hostile()),
        hostile(),
    )
        .prop_map(|(file, line, object, field, message)| Diagnostic {
            file,
            line,
            severity: Severity::Error,
            object,
            field,
            message,
        })
}

fn service() -> impl Strategy<Value = ServiceView> {
    (hostile(), hostile(), hostile(), endpoint_count()).prop_map(|(name, file, port, count)| {
        ServiceView {
            name,
            source: SourceRef { file, line: None },
            service_type: ServiceType::ClusterIP,
            vip: Some(Vip(Ipv4Addr::new(10, 11, 0, 1))),
            headless: false,
            affinity_seconds: None,
            external_ips: Vec::new(),
            ports: vec![PortView {
                name: Some(port.clone()),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Name(port),
                proxy_port: Some(ProxyPort(30_000)),
                endpoints: endpoints(count),
                notes: Vec::new(),
            }],
        }
    })
}

fn listener(name: String, count: usize) -> Listener {
    Listener {
        name,
        vip: Vip(Ipv4Addr::new(10, 11, 0, 1)),
        service_port: 80,
        endpoints: endpoints(count),
        affinity_seconds: Some(10),
    }
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        hostile(),
        hostile(),
        hostile(),
        hostile(),
        endpoint_count(),
        endpoint_count(),
    )
        .prop_map(|(a, b, chain, text, old, new)| {
            let key = ListenerKey {
                protocol: Protocol::Tcp,
                port: ProxyPort(30_000),
            };
            let rule = PortalRule {
                key: PortalKey {
                    path: Path::Container,
                    vip: Ipv4Addr::new(10, 11, 0, 1),
                    protocol: Protocol::Tcp,
                    port: 80,
                },
                comment: Comment::new("default/web:http").expect("a valid comment"),
                action: Action::Balance {
                    endpoints: endpoints(new).into_iter().map(|e| e.0).collect(),
                    affinity_seconds: None,
                },
            };
            let steps = vec![
                Step::OpenListener {
                    key,
                    listener: listener(a.clone(), new),
                },
                Step::UpdateListener {
                    key,
                    old: listener(a.clone(), old),
                    new: listener(b.clone(), new),
                },
                Step::Kernel(Change::AddRule { rule: rule.clone() }),
                Step::Kernel(Change::ReplaceRule {
                    old: rule.clone(),
                    new: rule,
                }),
                Step::Kernel(Change::RemoveStray {
                    stray: planners::StrayRule { chain, text },
                }),
                Step::CloseListener {
                    key,
                    listener: listener(b, old),
                },
            ];
            let plan = Plan {
                format_version: 1,
                backend: Backend::Iptables,
                mode: Mode::Userspace,
                summary: Summary::default(),
                steps,
                batch: String::new(),
                held_back: 1,
                observed: NatState::default(),
                retire: None,
                flavour: None,
                companions: Vec::new(),
                inputs: None,
            };
            Plan {
                retire: Some(Box::new(plan.clone())),
                ..plan
            }
        })
}

fn status() -> impl Strategy<Value = Status> {
    (
        (hostile(), hostile(), hostile(), hostile(), hostile()),
        prop::collection::vec(service(), 0..3),
        prop::collection::vec(diagnostic(), 0..3),
        prop::collection::btree_map(hostile(), any::<u64>(), 0..20),
        endpoint_count(),
    )
        .prop_map(
            |((dir, mode, trigger, error, name), services, diagnostics, spread, count)| {
                let mut per_endpoint: BTreeMap<String, u64> = spread;
                per_endpoint.extend(endpoints(count).iter().map(|e| (e.to_string(), 1)));
                Status {
                    pid: 1,
                    dir,
                    backend: "iptables".into(),
                    mode,
                    reconciles: 3,
                    held: Default::default(),
                    endpoint_health: Default::default(),
                    services,
                    listeners: vec![ListenerView {
                        protocol: Protocol::Udp,
                        port: 30_001,
                        name,
                        endpoints: Vec::new(),
                        affinity_seconds: None,
                        active: 0,
                        accepted: 0,
                        per_endpoint,
                        failures: 0,
                        rejected: 0,
                    }],
                    open: Vec::new(),
                    last_reconcile: Some(ReconcileResult {
                        error: Some(error),
                        trigger,
                        ..ReconcileResult::default()
                    }),
                    diagnostics,
                }
            },
        )
}

/// Every line free of control characters and under [`MAX_LINE`]; returns the line count.
fn check_lines(what: &str, output: &str) -> Result<usize, TestCaseError> {
    let mut count = 0;
    for line in output.lines() {
        prop_assert!(
            !line.chars().any(is_raw_control),
            "{what}: a control character in {line:?}"
        );
        let width = line.chars().count();
        prop_assert!(width <= MAX_LINE, "{what}: a line of {width} characters");
        count += 1;
    }
    Ok(count)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn the_check_report_keeps_one_clean_bounded_line_per_diagnostic(
        diagnostics in prop::collection::vec(diagnostic(), 0..6)
    ) {
        let lines = check_lines("text", &render(&diagnostics, ReportFormat::Text))?;
        prop_assert_eq!(lines, diagnostics.len());
        let github = render(&diagnostics, ReportFormat::Github);
        prop_assert_eq!(check_lines("github", &github)?, diagnostics.len());
        for line in github.lines() {
            // The file property ends at the first `,` or `::`: nothing in the name can.
            let property = line.strip_prefix("::error file=").expect("an error command");
            let end = property.find([',', ':']).unwrap_or(property.len());
            prop_assert!(
                property[end..].starts_with(",line=") || property[end..].starts_with("::"),
                "{line:?}"
            );
        }
    }

    #[test]
    fn plan_text_and_the_services_table_stay_clean_and_bounded(
        plan in plan(),
        services in prop::collection::vec(service(), 0..4)
    ) {
        let table = services_table(&services);
        let rows: usize = services.iter().map(|s| s.ports.len().max(1)).sum();
        prop_assert_eq!(check_lines("table", &table)?, rows + 1);
        check_lines("plan", &plan_text(&plan))?;
    }

    #[test]
    fn status_text_stays_clean_and_bounded(status in status()) {
        check_lines("status", &status::render(&status))?;
    }
}
