//! Compiles services, endpoints and allocations into the intended state: NAT rules plus the
//! set of proxy listeners.

use crate::allocate::{port_id, Allocation};
use crate::config::{Backend, Config, Mode};
use crate::diagnostics::{Diagnostic, Severity};
use crate::endpoints::EndpointIndex;
use crate::listeners::{listeners_as_list, Listener, ListenerKey};
use crate::model::*;
use planners::{
    Action, Comment, GuardedPort, Masquerade, NatState, Net, Path, PortalKey, PortalRule, Protocol,
    Scaffold, Slot,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

/// The normalized model of one service port, for output and golden files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PortView {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    pub proxy_port: Option<ProxyPort>,
    pub endpoints: Vec<Endpoint>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServiceView {
    pub name: String,
    pub source: SourceRef,
    #[serde(rename = "type")]
    pub service_type: ServiceType,
    pub vip: Option<Vip>,
    pub headless: bool,
    pub affinity_seconds: Option<u32>,
    pub external_ips: Vec<Ipv4Addr>,
    pub ports: Vec<PortView>,
}

/// The intended state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub nat: NatState,
    #[serde(with = "listeners_as_list")]
    pub listeners: BTreeMap<ListenerKey, Listener>,
    pub services: Vec<ServiceView>,
    /// Kernel mode: what portald wants in an iptables flavour beside its backend whose filter
    /// FORWARD drops by policy (see [`crate::observe::companion`]): the forward slot of the
    /// iptables dialect, its chain, its jump and one accept per portal range. Empty in
    /// userspace mode (nothing is forwarded). Not part of the golden model.
    #[serde(skip)]
    pub companion: NatState,
}

/// `ns/name:port` for a rule comment. Names were validated as DNS labels, so this only fails
/// for overlong names, which then get a hashed, still unique, comment.
pub fn portal_comment(key: &ObjectKey, port: &ServicePort) -> Comment {
    let text = format!("{key}:{}", port.label());
    Comment::new(text.clone()).unwrap_or_else(|_| {
        let hash = fnv1a(text.as_bytes());
        let keep: String = text.chars().take(planners::MAX_COMMENT_LEN - 9).collect();
        Comment::new(format!("{keep}.{hash:08x}")).expect("truncated comment is valid")
    })
}

fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// Compiles the catalog. Services without an allocation (an error was reported) are left out.
pub fn compile(
    catalog: &Catalog,
    allocation: &Allocation,
    config: &Config,
) -> (Intent, Vec<Diagnostic>) {
    let mut intent = Intent::default();
    let mut diagnostics = Vec::new();
    // portald's scaffold stays while portald manages the host; `cleanup` removes it.
    // Userspace mode refuses in the kernel too (see below). The forward accept only where it
    // can work: an accept in portald's own nft table does not stop another base chain
    // (Docker's iptables FORWARD policy) from dropping.
    let slots: &[Slot] = match (config.mode, config.backend) {
        (Mode::Userspace, _) => &[
            Slot::Container,
            Slot::Host,
            Slot::ContainerReject,
            Slot::HostReject,
            Slot::ProxyGuard,
        ],
        (Mode::Kernel, Backend::Iptables) => &[
            Slot::Container,
            Slot::Host,
            Slot::ContainerReject,
            Slot::HostReject,
            Slot::Masquerade,
            Slot::Forward,
        ],
        (Mode::Kernel, Backend::Nftables) => &[
            Slot::Container,
            Slot::Host,
            Slot::ContainerReject,
            Slot::HostReject,
            Slot::Masquerade,
        ],
    };
    for slot in slots {
        intent.nat.scaffold.insert(Scaffold::Chain(*slot));
        intent.nat.scaffold.insert(Scaffold::Hook(*slot));
    }
    // The ranges whose translated traffic is let through a dropping FORWARD: the iptables
    // backend's own forward slot, and the companion chain beside either backend.
    let mut forward: Vec<Net> = Vec::new();
    if config.mode == Mode::Kernel {
        for m in masquerades(config) {
            intent.nat.scaffold.insert(Scaffold::Masquerade(m));
        }
        forward.push(portal_net(config));
    }
    let index = EndpointIndex::new(catalog);
    for (key, service) in &catalog.services {
        let vip = allocation.vips.get(key).copied();
        let headless = service.vip == VipRequest::Headless;
        let mut view = ServiceView {
            name: key.to_string(),
            source: service.source.clone(),
            service_type: service.service_type,
            vip,
            headless,
            affinity_seconds: service.affinity_seconds,
            external_ips: service.external_ips.clone(),
            ports: Vec::new(),
        };
        let mut addresses: Vec<Ipv4Addr> = vip.map(|v| v.0).into_iter().collect();
        if !service.external_ips.is_empty() {
            if config.allow_external_ips {
                addresses.extend(service.external_ips.iter().copied());
            } else {
                diagnostics.push(Diagnostic {
                    file: service.source.file.clone(),
                    line: service.source.line,
                    severity: Severity::Warning,
                    object: Some(format!("Service `{key}`")),
                    field: Some("spec.externalIPs".into()),
                    message: "externalIPs are not served: allow them with --allow-external-ips"
                        .into(),
                });
                view.external_ips.clear();
            }
        }
        if config.mode == Mode::Kernel {
            // External IPs are portals too: their translated traffic is let through.
            for address in addresses
                .iter()
                .filter(|a| !config.portal_cidr.contains(**a))
            {
                forward.push(Net::new(*address, 32).expect("a /32 has no host bits"));
            }
        }
        for port in &service.ports {
            let resolved = index.resolve(service, port);
            let proxy_port =
                vip.and_then(|_| allocation.proxy_ports.get(&port_id(key, port)).copied());
            // Kernel mode has no proxy port (none is allocated): the VIP is enough.
            let served = config.mode == Mode::Kernel || proxy_port.is_some();
            if let (true, Some(vip)) = (served, vip) {
                let comment = portal_comment(key, port);
                let kernel = kernel_action(&resolved.endpoints, service.affinity_seconds);
                // No ready endpoint: the kernel refuses in both modes, at once (a TCP reset, an
                // ICMP port unreachable for UDP), rather than sending the client to a listener
                // with nowhere to go (which accepts TCP only to reset it, and drops UDP
                // silently). The listener returns with the endpoints, before the redirect.
                let refuse = resolved.endpoints.is_empty();
                for address in &addresses {
                    let actions = match (config.mode, proxy_port) {
                        (Mode::Userspace, _) if refuse => [Action::Reject, Action::Reject],
                        (Mode::Userspace, Some(proxy_port)) => [
                            Action::Redirect {
                                to_port: proxy_port.0,
                            },
                            Action::DnatLocal {
                                to: SocketAddrV4::new(config.host_target, proxy_port.0),
                            },
                        ],
                        _ => [kernel.clone(), kernel.clone()],
                    };
                    for (path, action) in Path::ALL.into_iter().zip(actions) {
                        intent.nat.insert_rule(PortalRule {
                            key: PortalKey {
                                path,
                                vip: *address,
                                protocol: port.protocol,
                                port: port.port,
                            },
                            comment: comment.clone(),
                            action,
                        });
                    }
                }
                if let Action::Balance { endpoints, .. } = &kernel {
                    if config.mode == Mode::Kernel {
                        // Any endpoint may be its own client.
                        for endpoint in endpoints {
                            intent
                                .nat
                                .scaffold
                                .insert(Scaffold::Hairpin(*endpoint.ip()));
                        }
                    }
                }
                if config.mode == Mode::Kernel {
                    // No userspace hop: the kernel sends traffic straight to the endpoints.
                    view.ports.push(PortView {
                        name: port.name.clone(),
                        protocol: port.protocol,
                        port: port.port,
                        target_port: port.target.clone(),
                        proxy_port: None,
                        endpoints: resolved.endpoints,
                        notes: resolved.notes,
                    });
                    continue;
                }
                let Some(proxy_port) = proxy_port else {
                    continue;
                };
                if refuse {
                    view.ports.push(PortView {
                        name: port.name.clone(),
                        protocol: port.protocol,
                        port: port.port,
                        target_port: port.target.clone(),
                        proxy_port: Some(proxy_port),
                        endpoints: Vec::new(),
                        notes: resolved.notes,
                    });
                    continue;
                }
                intent
                    .nat
                    .scaffold
                    .insert(Scaffold::ProxyGuard(GuardedPort {
                        protocol: port.protocol,
                        port: proxy_port.0,
                    }));
                intent.listeners.insert(
                    ListenerKey {
                        protocol: port.protocol,
                        port: proxy_port,
                    },
                    Listener {
                        name: comment.to_string(),
                        vip,
                        service_port: port.port,
                        endpoints: resolved.endpoints.clone(),
                        affinity_seconds: service.affinity_seconds,
                    },
                );
            }
            view.ports.push(PortView {
                name: port.name.clone(),
                protocol: port.protocol,
                port: port.port,
                target_port: port.target.clone(),
                proxy_port,
                endpoints: resolved.endpoints,
                notes: resolved.notes,
            });
        }
        intent.services.push(view);
    }
    if !forward.is_empty() {
        let slot = [
            Scaffold::Chain(Slot::Forward),
            Scaffold::Hook(Slot::Forward),
        ];
        let entries = forward.into_iter().map(Scaffold::Forward);
        intent.companion.scaffold = slot.into_iter().chain(entries).collect();
        if config.backend == Backend::Iptables {
            intent
                .nat
                .scaffold
                .extend(intent.companion.scaffold.iter().copied());
        }
    }
    (intent, diagnostics)
}

/// The kernel-mode action for a service port: spread over its endpoints, or refuse.
fn kernel_action(endpoints: &[Endpoint], affinity_seconds: Option<u32>) -> Action {
    if endpoints.is_empty() {
        return Action::Reject;
    }
    Action::Balance {
        endpoints: endpoints.iter().map(|e| e.0).collect(),
        affinity_seconds,
    }
}

/// Source NAT: for every directly attached network, connections through the portal range
/// whose client and chosen endpoint are both on it (the endpoint would answer the client
/// directly). A network that overlaps the portal range itself (its route exists only to
/// reach the VIPs) is left out.
fn masquerades(config: &Config) -> Vec<Masquerade> {
    let portals = portal_net(config);
    config
        .local_networks
        .iter()
        .filter(|n| !(n.contains(portals.addr) || portals.contains(n.addr)))
        .map(|network| Masquerade {
            network: *network,
            portals,
        })
        .collect()
}

/// The portal CIDR as the planners spell a network.
fn portal_net(config: &Config) -> Net {
    Net {
        addr: config.portal_cidr.network(),
        len: config.portal_cidr.prefix(),
    }
}
