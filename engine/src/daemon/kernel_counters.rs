//! Per-service-port packet and byte counters read from the kernel's own rule counters
//! (`iptables-save -c`), at each scrape; the iptables backend only, in both modes.
//!
//! The portal rules in `PORTAL-CONTAINER` (traffic from other namespaces) and `PORTAL-HOST`
//! (the node's own) carry the service port as their comment. They sit in the nat table,
//! which the kernel traverses only for the first packet of a connection (later packets
//! follow conntrack), so the packets counted are new connections (UDP: new flows), and the
//! bytes those first packets. kube-proxy's iptables mode offers the same counters through
//! `iptables-save -c`, not as metrics.

use crate::exec::Exec;
use planners::iptables::tokenize::split_words;
use planners::Invocation;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Which path a portal rule serves: `container` or `host`.
const PATHS: [(&str, &str); 2] = [("PORTAL-CONTAINER", "container"), ("PORTAL-HOST", "host")];

/// Packets and bytes per (service port, path), from an `iptables-save -c -t nat` dump.
/// Lines without counters, of other chains, or without a comment are skipped; a service
/// port with several rules in one chain (none today) would be summed.
pub fn portal_counters(dump: &str) -> BTreeMap<(String, &'static str), (u64, u64)> {
    let mut out = BTreeMap::new();
    for line in dump.lines() {
        let Some((counters, rule)) = line.strip_prefix('[').and_then(|l| l.split_once("] ")) else {
            continue;
        };
        let Some((packets, bytes)) = counters.split_once(':') else {
            continue;
        };
        let (Ok(packets), Ok(bytes)) = (packets.parse::<u64>(), bytes.parse::<u64>()) else {
            continue;
        };
        let Ok(words) = split_words(rule) else {
            continue;
        };
        let chain = match words.as_slice() {
            [append, chain, ..] if append == "-A" => chain.as_str(),
            _ => continue,
        };
        let Some((_, path)) = PATHS.iter().find(|(name, _)| *name == chain) else {
            continue;
        };
        let comment = words
            .windows(2)
            .find(|w| w[0] == "--comment")
            .map(|w| w[1].clone());
        if let Some(comment) = comment {
            let entry: &mut (u64, u64) = out.entry((comment, *path)).or_default();
            entry.0 += packets;
            entry.1 += bytes;
        }
    }
    out
}

/// Reads the counters at each scrape, while the daemon uses the iptables backend (the
/// nftables ruleset has no `counter` statements to read).
pub struct KernelCounters {
    pub exec: Arc<dyn Exec>,
    /// The daemon's status, whose `backend` follows a live switch.
    pub status: Arc<Mutex<super::control::Status>>,
}

impl std::fmt::Debug for KernelCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelCounters")
    }
}

impl Collector for KernelCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let backend = match self.status.lock() {
            Ok(status) => status.backend.clone(),
            Err(poisoned) => poisoned.into_inner().backend.clone(),
        };
        if backend != crate::config::Backend::Iptables.to_string() {
            return Ok(());
        }
        let save = Invocation::new("iptables-save", &["-c", "-t", "nat"]);
        let counters = match self.exec.run(&save, None) {
            Ok(out) => portal_counters(&out.stdout),
            Err(e) => {
                // A scrape without these series says enough; the log says why.
                tracing::warn!(error = %e, "cannot read the kernel's rule counters");
                return Ok(());
            }
        };
        for (name, help, pick) in [
            (
                "portald_kernel_rule_packets",
                "Packets counted by the kernel on a portal's NAT rule: new connections (UDP flows), per service port and path (container, host)",
                (|v: &(u64, u64)| v.0) as fn(&(u64, u64)) -> u64,
            ),
            (
                "portald_kernel_rule_bytes",
                "Bytes counted by the kernel on a portal's NAT rule: the first packet of each connection, per service port and path",
                |v: &(u64, u64)| v.1,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for ((service_port, path), value) in &counters {
                let labels = [("service_port", service_port.as_str()), ("path", path)];
                ConstCounter::new(pick(value)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portal_rule_counters_are_read_per_service_port_and_path() {
        let dump = r#"# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [12:720]
:PORTAL-CONTAINER - [0:0]
[5:300] -A PREROUTING -m comment --comment "portald:container-portals" -j PORTAL-CONTAINER
[3:180] -A PORTAL-CONTAINER -d 10.11.0.1/32 -p tcp -m comment --comment "default/apache-service:12345" -m tcp --dport 12345 -j PORTAL-C-0A0B0001-TCP-12345
[7:420] -A PORTAL-HOST -d 10.11.0.1/32 -p tcp -m comment --comment default/apache-service:12345 -m tcp --dport 12345 -j REDIRECT --to-ports 20000
[1:60] -A PORTAL-C-0A0B0001-TCP-12345 -p tcp -j DNAT --to-destination 10.244.1.2:80
[9:9] -A DOCKER -m comment --comment "default/apache-service:12345" -j RETURN
COMMIT
"#;
        let counters = portal_counters(dump);
        let service = "default/apache-service:12345".to_string();
        assert_eq!(
            counters,
            BTreeMap::from([
                ((service.clone(), "container"), (3, 180)),
                ((service, "host"), (7, 420)),
            ])
        );
    }
}
