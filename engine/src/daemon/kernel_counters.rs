//! Per-service-port packet and byte counters read from the kernel's own counters at each
//! scrape, with either backend, in both modes: the same series for both, so a dashboard
//! works with either.
//!
//! iptables: the portal rules in `PORTAL-CONTAINER` (traffic from other namespaces) and
//! `PORTAL-HOST` (the node's own) carry the service port as their comment, and
//! `iptables-save -c` prints their counters. nftables: each portal is an element of a NAT
//! map of its path, declared with `counter`, its comment the service port; `nft -j list
//! table ip portald` prints the element counters. Both sit on nat hooks, which the kernel
//! traverses only for the first packet of a connection (later packets follow conntrack),
//! so the packets counted are new connections (UDP: new flows), and the bytes those first
//! packets. kube-proxy's iptables mode offers the same counters through `iptables-save -c`,
//! not as metrics.

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

/// Packets and bytes per (service port, path name).
pub type Counters = BTreeMap<(String, &'static str), (u64, u64)>;

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

/// Packets and bytes per (service port, path) from a `nft -j list table ip portald` dump.
///
/// # Errors
/// The parse's, when the dump is not libnftables JSON.
pub fn nft_portal_counters(dump: &str) -> Result<Counters, planners::ParseError> {
    Ok(planners::nftables::portal_counters(dump)?
        .into_iter()
        .map(|((service_port, path), value)| ((service_port, path.as_str()), value))
        .collect())
}

/// Reads the counters of the daemon's backend at each scrape.
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
        let counters = if backend == crate::config::Backend::Iptables.to_string() {
            let save = Invocation::new("iptables-save", &["-c", "-t", "nat"]);
            match self.exec.run(&save, None) {
                Ok(out) => portal_counters(&out.stdout),
                Err(e) => {
                    // A scrape without these series says enough; the log says why.
                    tracing::warn!(error = %e, "cannot read the kernel's rule counters");
                    return Ok(());
                }
            }
        } else if backend == crate::config::Backend::Nftables.to_string() {
            let list = planners::nftables::counters_command();
            match self.exec.run(&list, None) {
                Ok(out) => match nft_portal_counters(&out.stdout) {
                    Ok(counters) => counters,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the kernel's portal counters");
                        return Ok(());
                    }
                },
                // No table yet (nothing to serve): no series, and nothing to warn about.
                Err(crate::exec::ExecError::Failed { stderr, .. })
                    if stderr.contains("No such file or directory") =>
                {
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the kernel's portal counters");
                    return Ok(());
                }
            }
        } else {
            return Ok(());
        };
        for (name, help, pick) in [
            (
                "portald_kernel_rule_packets",
                "Packets counted by the kernel on a portal's NAT rule (nftables: map element): new connections (UDP flows), per service port and path (container, host)",
                (|v: &(u64, u64)| v.0) as fn(&(u64, u64)) -> u64,
            ),
            (
                "portald_kernel_rule_bytes",
                "Bytes counted by the kernel on a portal's NAT rule (nftables: map element): the first packet of each connection, per service port and path",
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
    use crate::exec::FakeExec;

    /// The exposition of a scrape with the given backend and kernel answer.
    fn scrape(backend: &str, command: &str, answer: Result<&str, &str>) -> String {
        let status = super::super::control::Status {
            backend: backend.to_string(),
            ..Default::default()
        };
        let counters = KernelCounters {
            exec: Arc::new(FakeExec::new().expect(command, answer)),
            status: Arc::new(Mutex::new(status)),
        };
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(counters));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn the_nftables_backend_exports_its_element_counters_under_the_iptables_names() {
        let dump = r#"{"nftables": [{"metainfo": {"json_schema_version": 1}},
            {"map": {"family": "ip", "name": "host_dnat", "table": "portald", "map": "ipv4_addr . inet_service",
             "type": ["ipv4_addr", "inet_proto", "inet_service"], "stmt": [{"counter": null}],
             "elem": [[{"elem": {"val": {"concat": ["10.11.0.1", "tcp", 12345]}, "comment": "default/apache-service:12345",
                        "counter": {"packets": 4, "bytes": 240}}}, {"concat": ["127.0.0.1", 20000]}]]}}]}"#;
        let text = scrape("nftables", "nft -j list table ip portald", Ok(dump));
        let labels = r#"{service_port="default/apache-service:12345",path="host"}"#;
        assert!(
            text.contains(&format!("portald_kernel_rule_packets_total{labels} 4\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("portald_kernel_rule_bytes_total{labels} 240\n")),
            "{text}"
        );
        // No table yet: no series, and no failure.
        let text = scrape(
            "nftables",
            "nft -j list table ip portald",
            Err("Error: No such file or directory\nlist table ip portald"),
        );
        assert!(!text.contains("portald_kernel_rule"), "{text}");
    }

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
