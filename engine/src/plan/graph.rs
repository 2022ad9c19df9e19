//! The plan as a dependency graph (make before break), linearized deterministically.

use super::Step;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::Direction;
use planners::{Action, Change, PortalRule, Protocol, Scaffold, Slot};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// Builds the dependency graph of `steps`: an edge `a → b` means `a` must come first.
pub fn build(steps: &[Step]) -> DiGraph<usize, ()> {
    let mut graph = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..steps.len()).map(|i| graph.add_node(i)).collect();
    let mut chain_add: BTreeMap<Slot, NodeIndex> = BTreeMap::new();
    let mut chain_remove: BTreeMap<Slot, NodeIndex> = BTreeMap::new();
    let mut hook_remove: BTreeMap<Slot, NodeIndex> = BTreeMap::new();
    let mut opens: BTreeMap<(Protocol, u16), NodeIndex> = BTreeMap::new();
    let mut closes: BTreeMap<(Protocol, u16), NodeIndex> = BTreeMap::new();
    // Removed rules by VIP, with the service they belonged to.
    let mut removed_at: BTreeMap<std::net::Ipv4Addr, Vec<(&str, NodeIndex)>> = BTreeMap::new();
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Kernel(Change::AddScaffold {
                scaffold: Scaffold::Chain(s),
            }) => {
                chain_add.insert(*s, nodes[i]);
            }
            Step::Kernel(Change::RemoveScaffold {
                scaffold: Scaffold::Chain(s),
            }) => {
                chain_remove.insert(*s, nodes[i]);
            }
            Step::Kernel(Change::RemoveScaffold {
                scaffold: Scaffold::Hook(s),
            }) => {
                hook_remove.insert(*s, nodes[i]);
            }
            Step::OpenListener { key, .. } => {
                opens.insert((key.protocol, key.port.0), nodes[i]);
            }
            Step::CloseListener { key, .. } => {
                closes.insert((key.protocol, key.port.0), nodes[i]);
            }
            Step::Kernel(Change::RemoveRule { rule }) => {
                removed_at
                    .entry(rule.key.vip)
                    .or_default()
                    .push((owner(rule), nodes[i]));
            }
            _ => {}
        }
    }
    // A VIP handed from a removed service to another one (the lock moved it): make before
    // break cannot hold across two services on one address, so the old service's rules go
    // first, in the same batch; no moment sends one service's traffic to the other.
    let handed_over = |rule: &PortalRule| -> Vec<NodeIndex> {
        removed_at
            .get(&rule.key.vip)
            .map(|list| {
                list.iter()
                    .filter(|(service, _)| *service != owner(rule))
                    .map(|(_, n)| *n)
                    .collect()
            })
            .unwrap_or_default()
    };
    // The local listener a userspace-mode rule sends traffic to.
    let target = |rule: &PortalRule| match rule.action {
        Action::Redirect { to_port } => Some((rule.key.protocol, to_port)),
        Action::DnatLocal { to } => Some((rule.key.protocol, to.port())),
        Action::Balance { .. } | Action::Reject => None,
    };
    for (i, step) in steps.iter().enumerate() {
        let me = nodes[i];
        let Step::Kernel(change) = step else { continue };
        let mut needs = |before: Option<&NodeIndex>| {
            if let Some(b) = before {
                graph.add_edge(*b, me, ());
            }
        };
        match change {
            // A chain exists before anything jumps to it or is put in it.
            Change::AddScaffold { scaffold } if !matches!(scaffold, Scaffold::Chain(_)) => {
                needs(chain_add.get(&scaffold.slot()))
            }
            Change::AddRule { rule } => {
                for old in handed_over(rule) {
                    needs(Some(&old));
                }
                needs(chain_add.get(&rule.slot()));
                // The listener is open before a rule sends traffic to it.
                needs(target(rule).and_then(|t| opens.get(&t)));
            }
            Change::ReplaceRule { old, new } => {
                for gone in handed_over(new) {
                    needs(Some(&gone));
                }
                needs(chain_add.get(&new.slot()));
                needs(target(new).and_then(|t| opens.get(&t)));
                if let Some(close) = target(old).and_then(|t| closes.get(&t)) {
                    graph.add_edge(me, *close, ());
                }
                if let Some(chain) = chain_remove.get(&old.slot()) {
                    graph.add_edge(me, *chain, ());
                }
            }
            Change::RemoveRule { rule } => {
                // The rule is gone before its listener closes, and before its chain goes.
                if let Some(close) = target(rule).and_then(|t| closes.get(&t)) {
                    graph.add_edge(me, *close, ());
                }
                if let Some(chain) = chain_remove.get(&rule.slot()) {
                    graph.add_edge(me, *chain, ());
                }
            }
            Change::RemoveScaffold {
                scaffold: Scaffold::Chain(s),
            } => {
                // No jump into a chain that is about to go.
                needs(hook_remove.get(s));
            }
            // An entry goes before its chain does. (A proxy port's guard comes and goes in
            // the kernel batch, between the listener phases.)
            Change::RemoveScaffold { scaffold } if scaffold.is_entry() => {
                if let Some(chain) = chain_remove.get(&scaffold.slot()) {
                    graph.add_edge(me, *chain, ());
                }
            }
            Change::RemoveStray { .. } => {
                for chain in chain_remove.values() {
                    graph.add_edge(me, *chain, ());
                }
            }
            _ => {}
        }
    }
    graph
}

/// The service a rule belongs to: its comment up to the port (`ns/name:port`).
fn owner(rule: &PortalRule) -> &str {
    let comment = rule.comment.as_str();
    comment
        .split_once(':')
        .map_or(comment, |(service, _)| service)
}

/// Kahn's algorithm, always taking the ready step with the smallest (phase, sort key): the
/// same steps give the same order, whatever order they came in.
pub fn linearize(steps: &[Step], graph: &DiGraph<usize, ()>) -> Vec<usize> {
    let mut indegree: Vec<usize> = graph
        .node_indices()
        .map(|n| graph.neighbors_directed(n, Direction::Incoming).count())
        .collect();
    let keys: Vec<(u8, String)> = steps.iter().map(|s| (s.phase(), s.sort_key())).collect();
    let mut ready: BinaryHeap<Reverse<(&(u8, String), usize)>> = BinaryHeap::new();
    for n in graph.node_indices() {
        if indegree[n.index()] == 0 {
            ready.push(Reverse((&keys[n.index()], n.index())));
        }
    }
    let mut order = Vec::with_capacity(steps.len());
    while let Some(Reverse((_, i))) = ready.pop() {
        order.push(i);
        for next in graph.neighbors_directed(NodeIndex::new(i), Direction::Outgoing) {
            indegree[next.index()] -= 1;
            if indegree[next.index()] == 0 {
                ready.push(Reverse((&keys[next.index()], next.index())));
            }
        }
    }
    assert_eq!(order.len(), steps.len(), "plan graph has a cycle");
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use planners::{Comment, Path, PortalKey};

    fn rule(service: &str, port: u16) -> PortalRule {
        PortalRule {
            key: PortalKey {
                path: Path::Container,
                vip: "10.11.0.1".parse().unwrap(),
                protocol: Protocol::Tcp,
                port,
            },
            comment: Comment::new(format!("default/{service}:{port}")).unwrap(),
            action: Action::Reject,
        }
    }

    #[test]
    fn a_vip_handed_to_another_service_loses_the_old_rules_before_the_new_ones_come() {
        let steps = vec![
            Step::Kernel(Change::AddRule {
                rule: rule("new", 81),
            }),
            Step::Kernel(Change::ReplaceRule {
                old: rule("old", 80),
                new: rule("new", 80),
            }),
            Step::Kernel(Change::RemoveRule {
                rule: rule("old", 82),
            }),
        ];
        let graph = build(&steps);
        let n = NodeIndex::new;
        assert!(graph.contains_edge(n(2), n(0)), "remove before add");
        assert!(graph.contains_edge(n(2), n(1)), "remove before replace");
        let order = linearize(&steps, &graph);
        assert_eq!(order[0], 2);
    }

    #[test]
    fn one_services_own_rules_on_its_vip_keep_make_before_break() {
        let steps = vec![
            Step::Kernel(Change::AddRule {
                rule: rule("web", 81),
            }),
            Step::Kernel(Change::RemoveRule {
                rule: rule("web", 80),
            }),
        ];
        let graph = build(&steps);
        assert_eq!(graph.edge_count(), 0);
    }
}
