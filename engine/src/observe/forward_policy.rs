//! Foreign forward chains that drop by policy: in kernel mode with nftables, portald's own
//! table cannot let its translated traffic past them, so it reports them.
//!
//! Kernel behaviour: every base chain on a hook sees the packet, and a drop in any of them is
//! final; an accept only ends the chain it is in. Docker's filter FORWARD (policy DROP,
//! through iptables-nft) is such a chain. The iptables backend has its own jump in that very
//! chain (`PORTAL-FORWARD`); the nftables backend writes nothing outside `ip portald`.

use crate::diagnostics::{Diagnostic, Severity};
use serde_json::Value;

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
                 there, and portald writes nothing outside its own table (use the iptables \
                 backend, or accept `ct status dnat` traffic in that firewall)"
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
}
