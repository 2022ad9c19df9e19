//! Foreign forward chains that drop by policy and that portald cannot let its translated
//! traffic through: in kernel mode with nftables, it reports them.
//!
//! Kernel behaviour: every base chain on a hook sees the packet, and a drop in any of them is
//! final; an accept only ends the chain it is in. Docker's filter FORWARD (policy DROP,
//! through iptables-nft) is such a chain. Where iptables manages the chain (iptables-nft's
//! `ip filter/FORWARD`, or legacy's FORWARD, which nft does not list), portald keeps its own
//! `PORTAL-FORWARD` chain and one jump in it, as its iptables backend does (see
//! [`super::companion`]): not reported. Any other (a firewalld-like `inet` table, a
//! hand-written `inet filter` chain) would need a rule in a foreign table: reported.

use super::companion::{Companion, Flavour};
use crate::diagnostics::{Diagnostic, Severity};
use serde_json::Value;

/// The forward chain, as [`dropping_forward_chains`] names it, in which iptables-nft keeps
/// its filter FORWARD.
pub const IPTABLES_NFT_FORWARD: &str = "ip filter/FORWARD";

/// `chains` without those portald lets its traffic through: iptables-nft's FORWARD when
/// iptables-nft was read (`companions`) and shows that very policy drop, so the companion
/// chain is planned there.
pub fn not_crossed(chains: &[String], companions: &[Companion]) -> Vec<String> {
    let crossed = companions
        .iter()
        .any(|c| c.flavour == Flavour::Nft && c.forward_drops);
    chains
        .iter()
        .filter(|c| !(crossed && c.as_str() == IPTABLES_NFT_FORWARD))
        .cloned()
        .collect()
}

/// `family table/chain` of every base chain on the forward hook, outside portald's table,
/// whose policy is drop, from an `nft -j list ruleset` dump (nothing if it does not parse).
pub fn dropping_forward_chains(dump: &str) -> Vec<String> {
    let Ok(root) = serde_json::from_str::<Value>(dump) else {
        return Vec::new();
    };
    let mut chains: Vec<String> = root["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item.get("chain"))
        .filter(|c| c["hook"] == "forward" && c["policy"] == "drop")
        .filter(|c| {
            !(c["family"] == planners::nftables::FAMILY && c["table"] == planners::nftables::TABLE)
        })
        .map(|c| {
            let text = |key: &str| c[key].as_str().unwrap_or("?").to_string();
            format!("{} {}/{}", text("family"), text("table"), text("name"))
        })
        .collect();
    chains.sort();
    chains.dedup();
    chains
}

/// One warning per such chain.
pub fn forward_drop_warnings(chains: &[String]) -> Vec<Diagnostic> {
    chains
        .iter()
        .map(|chain| Diagnostic {
            file: String::new(),
            line: None,
            severity: Severity::Warning,
            object: None,
            field: None,
            message: format!(
                "the foreign chain `{chain}` drops forwarded packets by policy: in kernel mode \
                 with nftables, traffic from other namespaces or hosts to the VIPs is dropped \
                 there. portald lets its translated traffic through forward chains that \
                 iptables manages (its own `PORTAL-FORWARD` chain and one jump), but it writes \
                 no rule into this foreign table: accept `ct status dnat` traffic in that \
                 firewall"
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_foreign_forward_chains_with_a_drop_policy_are_named() {
        let dump = r#"{"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "hook": "forward", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "ip", "table": "filter", "name": "INPUT", "hook": "input", "prio": 0, "policy": "drop"}},
            {"chain": {"family": "inet", "table": "fw", "name": "fwd", "hook": "forward", "prio": 0, "policy": "accept"}},
            {"chain": {"family": "ip", "table": "portald", "name": "forward", "hook": "forward", "prio": -10, "policy": "drop"}},
            {"chain": {"family": "ip", "table": "filter", "name": "DOCKER"}}
        ]}"#;
        assert_eq!(dropping_forward_chains(dump), ["ip filter/FORWARD"]);
        assert!(dropping_forward_chains("not json").is_empty());
        assert_eq!(
            forward_drop_warnings(&dropping_forward_chains(dump)).len(),
            1
        );
    }

    #[test]
    fn iptables_nft_forward_is_not_reported_once_its_companion_chain_is_planned() {
        let chains = vec![
            "inet firewalld/filter_FORWARD".to_string(),
            IPTABLES_NFT_FORWARD.to_string(),
        ];
        let beside = |flavour, forward_drops| Companion {
            flavour,
            live: Default::default(),
            forward_drops,
        };
        assert_eq!(not_crossed(&chains, &[]), chains);
        assert_eq!(
            not_crossed(&chains, &[beside(Flavour::Nft, false)]),
            chains,
            "iptables-nft does not see that drop: nothing is planned there"
        );
        assert_eq!(
            not_crossed(&chains, &[beside(Flavour::Legacy, true)]),
            chains
        );
        assert_eq!(
            not_crossed(&chains, &[beside(Flavour::Nft, true)]),
            ["inet firewalld/filter_FORWARD"]
        );
    }
}
