//! Bridges on which a pod cannot reach its own service in kernel mode: `br_netfilter` on
//! and bridge ports with hairpin mode off (read from `/proc` and `/sys`, reported, never
//! changed).
//!
//! Kernel behaviour (net/bridge/br_netfilter_hooks.c): with `bridge-nf-call-iptables` on (or
//! the bridge's own `nf_call_iptables`), a frame entering a bridge port goes through the IP
//! PREROUTING hooks while it is still being bridged. When a DNAT there sends it to an address
//! routed out the same bridge ("bridged DNAT"), the bridge forwards it to the endpoint's
//! port, and refuses to send it back out the port it came in on unless that port has
//! hairpin mode (net/bridge/br_forward.c `should_deliver`). A pod picked as the endpoint of
//! its own connection is such a case; the frame is dropped before any POSTROUTING rule, so
//! no rule of portald's can rescue it.

use crate::compile::ServiceView;
use crate::diagnostics::{Diagnostic, Severity};
use planners::Net;
use std::collections::BTreeSet;
use std::path::Path;

/// What portald needs to know about one bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    pub name: String,
    /// The bridge's own `nf_call_iptables` option.
    pub nf_call_iptables: bool,
    /// Networks routed straight out of the bridge (no gateway).
    pub networks: Vec<Net>,
    /// Its ports with hairpin mode off, sorted.
    pub hairpin_off: Vec<String>,
}

/// Whether `br_netfilter` runs the IP hooks for bridged frames in this namespace
/// (`/proc/sys/net/bridge/bridge-nf-call-iptables`; absent when the module is not loaded).
pub fn call_iptables() -> bool {
    std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
        .is_ok_and(|v| v.trim() == "1")
}

/// The bridges of this namespace (`/sys/class/net/*/bridge`), with the networks
/// `/proc/net/route` routes out of each. Unreadable entries are skipped.
pub fn read_bridges() -> Vec<Bridge> {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    let attached = super::routes::parse_attached(&routes);
    let Ok(entries) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    let flag = |path: &Path| std::fs::read_to_string(path).is_ok_and(|v| v.trim() == "1");
    let mut bridges: Vec<Bridge> = entries
        .flatten()
        .filter(|e| e.path().join("bridge").is_dir())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let dir = e.path();
            let mut hairpin_off: Vec<String> = std::fs::read_dir(dir.join("brif"))
                .into_iter()
                .flatten()
                .flatten()
                .filter(|port| !flag(&port.path().join("hairpin_mode")))
                .map(|port| port.file_name().to_string_lossy().into_owned())
                .collect();
            hairpin_off.sort();
            Bridge {
                networks: attached
                    .iter()
                    .filter(|(iface, _)| *iface == name)
                    .map(|(_, net)| *net)
                    .collect(),
                nf_call_iptables: flag(&dir.join("bridge/nf_call_iptables")),
                hairpin_off,
                name,
            }
        })
        .collect();
    bridges.sort_by(|a, b| a.name.cmp(&b.name));
    bridges
}

/// Ports listed by name in a message, at most this many.
const PORTS_SHOWN: usize = 8;

/// One warning per service with an endpoint on a bridge where a pod cannot reach itself
/// through a VIP: `br_netfilter` on (in the namespace, `call_iptables`, or on the bridge)
/// and some port with hairpin mode off. Which port an endpoint sits behind is not known
/// before traffic has taught the bridge its address, so every such port is named.
pub fn hairpin_warnings(
    call_iptables: bool,
    bridges: &[Bridge],
    services: &[ServiceView],
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for service in services {
        for bridge in bridges {
            if !(call_iptables || bridge.nf_call_iptables) || bridge.hairpin_off.is_empty() {
                continue;
            }
            let endpoints: BTreeSet<String> = service
                .ports
                .iter()
                .flat_map(|p| &p.endpoints)
                .map(|e| *e.0.ip())
                .filter(|ip| bridge.networks.iter().any(|n| n.contains(*ip)))
                .map(|ip| ip.to_string())
                .collect();
            if endpoints.is_empty() {
                continue;
            }
            let mut ports: Vec<String> = bridge
                .hairpin_off
                .iter()
                .take(PORTS_SHOWN)
                .map(|p| format!("`{p}`"))
                .collect();
            if bridge.hairpin_off.len() > PORTS_SHOWN {
                ports.push(format!(
                    "and {} more",
                    bridge.hairpin_off.len() - PORTS_SHOWN
                ));
            }
            out.push(Diagnostic {
                file: service.source.file.clone(),
                line: service.source.line,
                severity: Severity::Warning,
                object: Some(format!("Service `{}`", service.name)),
                field: None,
                message: format!(
                    "endpoint(s) {} sit on bridge `{}`, where br_netfilter is on and port(s) {} \
                     have hairpin mode off: in kernel mode a pod there gets no answer when it is \
                     picked as the endpoint of its own connection to this service (turn hairpin \
                     mode on for its port, or use userspace mode)",
                    endpoints.into_iter().collect::<Vec<_>>().join(", "),
                    bridge.name,
                    ports.join(", ")
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::PortView;
    use crate::model::{Endpoint, ServiceType, SourceRef, TargetPort};
    use planners::Protocol;

    fn service(endpoints: &[&str]) -> ServiceView {
        ServiceView {
            name: "default/web".into(),
            source: SourceRef {
                file: "web.yaml".into(),
                line: Some(1),
            },
            service_type: ServiceType::ClusterIP,
            vip: None,
            headless: false,
            affinity_seconds: None,
            external_ips: Vec::new(),
            ports: vec![PortView {
                name: None,
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(80),
                proxy_port: None,
                endpoints: endpoints
                    .iter()
                    .map(|e| Endpoint(e.parse().unwrap()))
                    .collect(),
                notes: Vec::new(),
            }],
        }
    }

    fn br0(hairpin_off: &[&str]) -> Bridge {
        Bridge {
            name: "br0".into(),
            nf_call_iptables: false,
            networks: vec!["10.244.1.0/24".parse().unwrap()],
            hairpin_off: hairpin_off.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn an_endpoint_on_a_filtered_bridge_with_a_port_without_hairpin_is_reported() {
        let warnings = hairpin_warnings(
            true,
            &[br0(&["vh0", "vh1"])],
            &[service(&["10.244.1.2:80", "10.244.2.9:80"])],
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let message = &warnings[0].message;
        assert!(message.contains("10.244.1.2"), "{message}");
        assert!(!message.contains("10.244.2.9"), "{message}");
        assert!(message.contains("`br0`") && message.contains("`vh0`, `vh1`"));
    }

    #[test]
    fn nothing_is_reported_with_br_netfilter_off_or_hairpin_on_everywhere() {
        let services = [service(&["10.244.1.2:80"])];
        assert!(hairpin_warnings(false, &[br0(&["vh0"])], &services).is_empty());
        assert!(hairpin_warnings(true, &[br0(&[])], &services).is_empty());
        let mut own = br0(&["vh0"]);
        own.nf_call_iptables = true;
        assert_eq!(hairpin_warnings(false, &[own], &services).len(), 1);
        let elsewhere = [service(&["192.0.2.1:80"])];
        assert!(hairpin_warnings(true, &[br0(&["vh0"])], &elsewhere).is_empty());
    }
}
