//! Property tests of the pure pipeline over random service sets: apply(plan) reaches intent,
//! plans do not depend on file order, edges point forward, VIPs survive with the lock.

use engine::allocate::Lock;
use engine::config::Config;
use engine::listeners::{Listener, ListenerKey};
use engine::load::{parse_file, ParsedFile, SourceFile};
use engine::observe::Observed;
use engine::pipeline::{run, Outcome};
use engine::plan::render::plan_text;
use engine::plan::{graph, Step};
use planners::{apply_changes, Action, Change, Dialect, Iptables, Live, NatState, Scaffold};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write;

const NAMESPACES: &[&str] = &["default", "prod"];
const NAMES: &[&str] = &["a", "b", "api", "db", "web", "cache"];
const PORTS: &[u16] = &[53, 80, 443, 8080, 9000];

/// One generated service, with the pods or Endpoints that serve it.
#[derive(Debug, Clone)]
struct Svc {
    /// (port, udp, target offset)
    ports: Vec<(u16, bool, u16)>,
    explicit_vip: bool,
    affinity: bool,
    /// Served through an Endpoints object instead of selected pods.
    endpoints_object: bool,
    /// (last octet, ready)
    backends: Vec<(u8, bool)>,
}

fn svc() -> impl Strategy<Value = Svc> {
    (
        prop::collection::btree_map((prop::sample::select(PORTS), any::<bool>()), 0u16..3, 1..4),
        prop::bool::weighted(0.3),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((1u8..250, prop::bool::weighted(0.8)), 0..4),
    )
        .prop_map(
            |(ports, explicit_vip, affinity, endpoints_object, backends)| Svc {
                ports: ports.into_iter().map(|((p, u), t)| (p, u, t)).collect(),
                explicit_vip,
                affinity,
                endpoints_object,
                backends,
            },
        )
}

type Set = BTreeMap<(usize, usize), Svc>;

fn set(max: usize) -> impl Strategy<Value = Set> {
    prop::collection::btree_map((0..NAMESPACES.len(), 0..NAMES.len()), svc(), 0..max)
}

/// Renders a set as files; `prefix` sets names apart, `vip_base` the third octet of explicit
/// clusterIPs (distinct per set so two sets never ask for the same address).
fn render(set: &Set, prefix: &str, vip_base: u8) -> Vec<SourceFile> {
    let mut files = Vec::new();
    for ((ns, name), s) in set {
        // From the key, not the position: a service keeps its address when others go.
        let i = ns * NAMES.len() + name + 1;
        let (ns, name) = (NAMESPACES[*ns], format!("{prefix}{}", NAMES[*name]));
        let multi = s.ports.len() > 1;
        let mut text = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n"
        );
        if !s.endpoints_object {
            let _ = writeln!(text, "  selector:\n    app: {name}");
        }
        if s.explicit_vip {
            let _ = writeln!(text, "  clusterIP: 10.11.{vip_base}.{i}");
        }
        if s.affinity {
            text.push_str("  sessionAffinity: ClientIP\n");
        }
        text.push_str("  ports:\n");
        for (j, (port, udp, offset)) in s.ports.iter().enumerate() {
            let proto = if *udp { "UDP" } else { "TCP" };
            let _ = write!(text, "    - port: {port}\n      protocol: {proto}\n");
            let _ = writeln!(text, "      targetPort: {}", port + offset);
            if multi {
                let _ = writeln!(text, "      name: p{j}");
            }
        }
        files.push(SourceFile {
            path: format!("{ns}/{name}.yaml"),
            text,
        });
        let mut backends = String::new();
        if s.endpoints_object {
            let _ = write!(
                backends,
                "apiVersion: v1\nkind: Endpoints\nmetadata:\n  name: {name}\n  namespace: {ns}\nsubsets:\n  - addresses: []\n    notReadyAddresses: []\n    ports:\n"
            );
            for (j, (port, udp, offset)) in s.ports.iter().enumerate() {
                let proto = if *udp { "UDP" } else { "TCP" };
                let _ = writeln!(
                    backends,
                    "      - port: {}\n        protocol: {proto}",
                    port + offset
                );
                if multi {
                    let _ = writeln!(backends, "        name: p{j}");
                }
            }
            let ready: Vec<String> = s
                .backends
                .iter()
                .filter(|b| b.1)
                .map(|b| format!("{{ip: 10.244.{i}.{}}}", b.0))
                .collect();
            let not_ready: Vec<String> = s
                .backends
                .iter()
                .filter(|b| !b.1)
                .map(|b| format!("{{ip: 10.244.{i}.{}}}", b.0))
                .collect();
            backends = backends
                .replacen(
                    "addresses: []",
                    &format!("addresses: [{}]", ready.join(", ")),
                    1,
                )
                .replacen(
                    "notReadyAddresses: []",
                    &format!("notReadyAddresses: [{}]", not_ready.join(", ")),
                    1,
                );
        } else {
            for (k, (octet, ready)) in s.backends.iter().enumerate() {
                let _ = write!(
                    backends,
                    "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}-{k}\n  namespace: {ns}\n  labels: {{app: {name}}}\nstatus:\n  podIP: 10.244.{i}.{octet}\n  conditions: [{{type: Ready, status: \"{}\"}}]\n",
                    if *ready { "True" } else { "False" }
                );
            }
        }
        if !backends.is_empty() {
            files.push(SourceFile {
                path: format!("{ns}/{name}-backends.yaml"),
                text: backends,
            });
        }
    }
    files
}

fn parse(files: &[SourceFile]) -> Vec<ParsedFile> {
    files.iter().map(parse_file).collect()
}

fn go(files: &[ParsedFile], lock: &Lock, observed: &Observed) -> Outcome {
    run(files, lock, observed, &Config::default(), true)
}

/// Kernel mode, on a host whose attached network holds every generated pod.
fn kernel_config() -> Config {
    Config {
        mode: engine::config::Mode::Kernel,
        local_networks: vec!["10.244.0.0/16".parse().expect("valid network")],
        ..Config::default()
    }
}

fn live(nat: NatState, listeners: BTreeMap<ListenerKey, Listener>) -> Observed {
    Observed {
        live: Live {
            owned: nat,
            ..Live::default()
        },
        listeners,
        ..Observed::default()
    }
}

fn clean(outcome: &Outcome) -> Result<(), TestCaseError> {
    prop_assert!(
        !outcome.has_errors(),
        "generated input must be valid: {:?}",
        outcome.diagnostics
    );
    Ok(())
}

/// The intent of a second, unrelated set: a realistic "other" live state.
fn other_live(b: &Set) -> Observed {
    let outcome = go(
        &parse(&render(b, "", 150)),
        &Lock::default(),
        &Observed::default(),
    );
    live(outcome.intent.nat, outcome.intent.listeners)
}

/// Make before break, checked from the steps themselves (not from the graph).
fn check_make_before_break(steps: &[Step]) -> Result<(), TestCaseError> {
    let position = |pred: &dyn Fn(&Step) -> bool| steps.iter().position(pred);
    let target = |rule: &planners::PortalRule| match rule.action {
        Action::Redirect { to_port } => (rule.key.protocol, to_port),
        Action::DnatLocal { to } => (rule.key.protocol, to.port()),
        // Kernel mode sends to no listener; port 0 is never a listener's.
        Action::Balance { .. } | Action::Reject => (rule.key.protocol, 0),
    };
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Kernel(Change::AddRule { rule })
            | Step::Kernel(Change::ReplaceRule { new: rule, .. }) => {
                let (proto, port) = target(rule);
                if let Some(open) = position(
                    &|s| matches!(s, Step::OpenListener { key, .. } if key.protocol == proto && key.port.0 == port),
                ) {
                    prop_assert!(
                        open < i,
                        "listener {proto}/{port} opens after the rule sending to it"
                    );
                }
                let slot = rule.slot();
                if let Some(chain) = position(
                    &|s| matches!(s, Step::Kernel(Change::AddScaffold { scaffold: Scaffold::Chain(p) }) if *p == slot),
                ) {
                    prop_assert!(chain < i, "rule added before its chain");
                }
            }
            Step::Kernel(Change::RemoveRule { rule }) => {
                let (proto, port) = target(rule);
                if let Some(close) = position(
                    &|s| matches!(s, Step::CloseListener { key, .. } if key.protocol == proto && key.port.0 == port),
                ) {
                    prop_assert!(
                        i < close,
                        "listener {proto}/{port} closes before its rule goes"
                    );
                }
            }
            Step::Kernel(Change::AddScaffold {
                scaffold: Scaffold::Hook(p),
            }) => {
                if let Some(chain) = position(
                    &|s| matches!(s, Step::Kernel(Change::AddScaffold { scaffold: Scaffold::Chain(q) }) if q == p),
                ) {
                    prop_assert!(chain < i, "jump added before its chain");
                }
            }
            Step::Kernel(Change::RemoveScaffold {
                scaffold: Scaffold::Chain(p),
            }) => {
                if let Some(hook) = position(
                    &|s| matches!(s, Step::Kernel(Change::RemoveScaffold { scaffold: Scaffold::Hook(q) }) if q == p),
                ) {
                    prop_assert!(hook < i, "chain removed before the jump into it");
                }
            }
            _ => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn plan_against_the_state_after_apply_is_empty(a in set(6), b in set(6)) {
        let files = parse(&render(&a, "", 100));
        let first = go(&files, &Lock::default(), &Observed::default());
        clean(&first)?;
        let after = apply_changes(&NatState::default(), &first.plan.kernel_changes());
        prop_assert_eq!(&after, &first.intent.nat, "apply(plan(intent, empty), empty) == intent");
        let applied = live(after, first.intent.listeners.clone());
        for lock in [Lock::default(), first.allocation.lock.clone()] {
            let again = go(&files, &lock, &applied);
            prop_assert!(again.plan.is_empty(), "second plan is not empty:\n{}", plan_text(&again.plan));
            prop_assert_eq!(&again.intent, &first.intent);
        }

        // From a different live state: apply(diff(a, b), b) == a, exactly.
        let from = other_live(&b);
        let moved = go(&files, &Lock::default(), &from);
        clean(&moved)?;
        let after = apply_changes(&from.live.owned, &moved.plan.kernel_changes());
        prop_assert_eq!(&after, &moved.intent.nat, "apply(plan(intent, b), b) == intent");
        let settled = go(&files, &moved.allocation.lock, &live(after, moved.intent.listeners.clone()));
        prop_assert!(settled.plan.is_empty(), "plan after apply:\n{}", plan_text(&settled.plan));
    }

    #[test]
    fn plan_is_the_same_whatever_the_file_order(a in set(6), keys in prop::collection::vec(any::<u32>(), 40)) {
        let files = render(&a, "", 100);
        let mut order: Vec<usize> = (0..files.len()).collect();
        order.sort_by_key(|i| (keys[*i % keys.len()], *i));
        let shuffled: Vec<SourceFile> = order.iter().map(|i| files[*i].clone()).collect();
        let renamed: Vec<SourceFile> = order
            .iter()
            .enumerate()
            .map(|(n, i)| SourceFile {
                path: format!("moved/{n:02}-{}", files[*i].path.replace('/', "-")),
                text: files[*i].text.clone(),
            })
            .collect();
        let first = go(&parse(&files), &Lock::default(), &Observed::default());
        clean(&first)?;
        let plan_json = |o: &Outcome| serde_json::to_string(&o.plan).expect("plan serializes");
        let vips = |o: &Outcome| o.intent.services.iter().map(|s| (s.name.clone(), s.vip)).collect::<Vec<_>>();

        let reread = go(&parse(&shuffled), &Lock::default(), &Observed::default());
        prop_assert_eq!(plan_json(&reread), plan_json(&first), "read order changed the plan");
        prop_assert_eq!(&reread.intent, &first.intent);

        let moved = go(&parse(&renamed), &first.allocation.lock, &Observed::default());
        prop_assert_eq!(plan_json(&moved), plan_json(&first), "renamed files changed the plan");
        prop_assert_eq!(vips(&moved), vips(&first));
        prop_assert_eq!(&moved.allocation.lock, &first.allocation.lock);
    }

    #[test]
    fn every_plan_edge_points_forward(a in set(6), b in set(6), from_empty in any::<bool>()) {
        let files = parse(&render(&a, "", 100));
        let from = if from_empty { Observed::default() } else { other_live(&b) };
        let outcome = go(&files, &Lock::default(), &from);
        let steps = &outcome.plan.steps;
        let graph = graph::build(steps);
        for edge in graph.edge_indices() {
            let (s, t) = graph.edge_endpoints(edge).expect("edge has ends");
            let (s, t) = (graph[s], graph[t]);
            prop_assert!(s < t, "edge {s} -> {t} points backwards:\n{}", plan_text(&outcome.plan));
        }
        check_make_before_break(steps)?;
        // Phases: listeners open before the kernel batch and close after it.
        let phases: Vec<u8> = steps.iter().map(Step::phase).collect();
        prop_assert!(phases.windows(2).all(|w| w[0] <= w[1]), "phases out of order: {phases:?}");
    }

    #[test]
    fn vips_survive_adding_and_removing_other_services_with_the_lock(
        a in set(6),
        added in set(4),
        removed in prop::collection::vec(any::<bool>(), 12),
        applied_first in any::<bool>(),
    ) {
        let first = go(&parse(&render(&a, "", 100)), &Lock::default(), &Observed::default());
        clean(&first)?;
        let mut kept = Set::new();
        for (i, (k, s)) in a.iter().enumerate() {
            if !removed[i % removed.len()] {
                kept.insert(*k, s.clone());
            }
        }
        let mut files = render(&kept, "", 100);
        files.extend(render(&added, "n-", 200));
        let observed = if applied_first {
            live(first.intent.nat.clone(), first.intent.listeners.clone())
        } else {
            Observed::default()
        };
        let second = go(&parse(&files), &first.allocation.lock, &observed);
        clean(&second)?;
        let before: BTreeMap<_, _> = first.intent.services.iter().map(|s| (s.name.clone(), s)).collect();
        for now in &second.intent.services {
            let Some(then) = before.get(&now.name) else { continue };
            prop_assert_eq!(now.vip, then.vip, "{} moved", &now.name);
            let ports = |v: &engine::compile::ServiceView| v.ports.iter().map(|p| p.proxy_port).collect::<Vec<_>>();
            prop_assert_eq!(ports(now), ports(then), "{} proxy ports moved", &now.name);
        }
    }

    #[test]
    fn iptables_rendering_parses_back_to_the_same_state(a in set(6), b in set(6)) {
        let outcome = go(&parse(&render(&a, "", 100)), &Lock::default(), &Observed::default());
        let text = Iptables.render_state(&outcome.intent.nat);
        let parsed = Iptables.parse_live(&text).expect("rendered state parses");
        prop_assert!(parsed.stray.is_empty() && parsed.foreign.is_empty(), "{parsed:?}");
        prop_assert_eq!(&parsed.owned, &outcome.intent.nat);
        prop_assert!(engine::diff::diff_nat(&outcome.intent.nat, &parsed.owned).is_empty());
        // From another state read back from its own dump, the plan's changes land on intent.
        let from = other_live(&b);
        let dumped = Iptables.parse_live(&Iptables.render_state(&from.live.owned)).expect("parses");
        let observed = live(dumped.owned, from.listeners.clone());
        let moved = go(&parse(&render(&a, "", 100)), &Lock::default(), &observed);
        let after = apply_changes(&observed.live.owned, &moved.plan.kernel_changes());
        prop_assert_eq!(&after, &moved.intent.nat);
        if moved.plan.kernel_changes().is_empty() {
            prop_assert!(moved.plan.batch.is_empty());
        } else {
            prop_assert!((moved.plan.batch.starts_with("*nat\n") || moved.plan.batch.starts_with("*filter\n")) && moved.plan.batch.ends_with("COMMIT\n"));
        }
    }

    #[test]
    fn kernel_mode_converges_from_nothing_and_from_userspace_and_reads_back_in_both_dialects(
        a in set(6),
        b in set(6),
    ) {
        let files = parse(&render(&a, "", 100));
        let config = kernel_config();
        let first = run(&files, &Lock::default(), &Observed::default(), &config, true);
        clean(&first)?;
        prop_assert!(first.intent.listeners.is_empty(), "kernel mode opens no listener");
        let after = apply_changes(&NatState::default(), &first.plan.kernel_changes());
        prop_assert_eq!(&after, &first.intent.nat);
        let again = run(&files, &first.allocation.lock, &live(after, BTreeMap::new()), &config, true);
        prop_assert!(again.plan.is_empty(), "second plan:\n{}", plan_text(&again.plan));

        // A mode switch: from another set served in userspace mode.
        let from = other_live(&b);
        let moved = run(&files, &Lock::default(), &from, &config, true);
        clean(&moved)?;
        let after = apply_changes(&from.live.owned, &moved.plan.kernel_changes());
        prop_assert_eq!(&after, &moved.intent.nat);
        prop_assert!(moved.intent.listeners.is_empty());
        prop_assert!(
            moved.plan.steps.iter().all(|s| !matches!(s, Step::OpenListener { .. })),
            "kernel mode opened a listener"
        );
        check_make_before_break(&moved.plan.steps)?;

        // Both dialects read their own rendering back to the same state.
        let text = Iptables.render_state(&first.intent.nat);
        let parsed = Iptables.parse_live(&text).expect("iptables rendering parses");
        prop_assert!(parsed.stray.is_empty(), "{:?}", parsed.stray);
        prop_assert_eq!(&parsed.owned, &first.intent.nat);
        let json = planners::nftables::render_json(&first.intent.nat);
        let parsed = planners::Nftables.parse_live(&json).expect("nft rendering parses");
        prop_assert!(parsed.stray.is_empty(), "{:?}", parsed.stray);
        prop_assert_eq!(&parsed.owned, &first.intent.nat);
    }
}
