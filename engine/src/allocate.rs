//! Stable VIPs and proxy ports: kept from the lock file, else from the live rules, else the
//! first free one in order, so every host with the same directory and lock agrees.

use crate::config::Config;
use crate::diagnostics::{Diagnostic, Severity};
use crate::model::{ObjectKey, ProxyPort, Service, ServicePort, Vip, VipRequest};
use planners::{Action, NatState, Protocol};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The allocation record users commit next to their services (`portald.lock`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub format_version: u32,
    #[serde(default)]
    pub portal_cidr: String,
    #[serde(default)]
    pub vips: BTreeMap<String, Ipv4Addr>,
    #[serde(default)]
    pub proxy_ports: BTreeMap<String, u16>,
}

pub const LOCK_FORMAT_VERSION: u32 = 1;
pub const LOCK_FILE_NAME: &str = "portald.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot read lock file `{path}`")]
    Read {
        path: String,
        #[source]
        source: crate::load::file::ReadError,
    },
    #[error("lock file `{path}` is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("cannot write lock file `{path}`")]
    Write {
        path: String,
        #[source]
        source: crate::safe_write::SafeWriteError,
    },
}

impl Lock {
    pub fn parse(text: &str, path: &str) -> Result<Lock, LockError> {
        let lock: Lock = serde_json::from_str(text).map_err(|e| LockError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        if lock.format_version != LOCK_FORMAT_VERSION {
            return Err(LockError::Parse {
                path: path.to_string(),
                message: format!(
                    "format_version {} is not {LOCK_FORMAT_VERSION}",
                    lock.format_version
                ),
            });
        }
        Ok(lock)
    }

    /// Reads a lock file within the default size limit; a missing file is an empty lock.
    pub fn read(path: &std::path::Path) -> Result<Lock, LockError> {
        Lock::read_limited(path, crate::config::DEFAULT_MAX_FILE_BYTES)
    }

    /// Reads a lock file of at most `max_bytes`; a missing file is an empty lock. A lock that
    /// is not a regular file (a FIFO, `/dev/zero`) or is larger is an error, never a hang.
    pub fn read_limited(path: &std::path::Path, max_bytes: u64) -> Result<Lock, LockError> {
        let name = || path.display().to_string();
        match crate::load::file::read_limited(path, max_bytes) {
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| LockError::Parse {
                    path: name(),
                    message: "not UTF-8 text".to_string(),
                })?;
                Lock::parse(&text, &name())
            }
            Err(e) if e.is_not_found() => Ok(Lock::default()),
            Err(source) => Err(LockError::Read {
                path: name(),
                source,
            }),
        }
    }

    pub fn render(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("lock serializes");
        text.push('\n');
        text
    }

    /// Writes atomically through [`crate::safe_write`], so a crash never leaves half a lock
    /// and a symlink planted at `path` or beside it is never written through.
    pub fn write(&self, path: &std::path::Path) -> Result<(), LockError> {
        crate::safe_write::write(path, self.render().as_bytes()).map_err(|source| {
            LockError::Write {
                path: path.display().to_string(),
                source,
            }
        })
    }
}

/// Key of a service port in the lock and listener names: `ns/name:label/proto`.
pub fn port_id(key: &ObjectKey, port: &ServicePort) -> String {
    format!("{key}:{}/{}", port.label(), port.protocol)
}

/// What allocation needs to know of the live host.
#[derive(Debug, Clone, Default)]
pub struct LiveHints {
    /// portald's rules now in the kernel.
    pub nat: NatState,
    /// Ports held by processes other than portald.
    pub foreign_ports: BTreeSet<(Protocol, u16)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    pub vips: BTreeMap<ObjectKey, Vip>,
    pub proxy_ports: BTreeMap<String, ProxyPort>,
    pub lock: Lock,
    pub diagnostics: Vec<Diagnostic>,
}

/// Allocates VIPs and proxy ports for `services`. `keep_absent` keeps lock entries of
/// services not loaded (their file is broken: their addresses must not move).
pub fn allocate(
    services: &BTreeMap<ObjectKey, Service>,
    lock: &Lock,
    live: &LiveHints,
    config: &Config,
    keep_absent: bool,
) -> Allocation {
    let mut out = Allocation::default();
    let cidr = config.portal_cidr;
    let usable = |ip: Ipv4Addr| cidr.contains(ip) && ip != cidr.network() && ip != cidr.broadcast();
    let live_vips = live_vips_by_service(&live.nat);
    let mut taken: BTreeMap<Ipv4Addr, ObjectKey> = BTreeMap::new();

    // Live VIPs of services not loaded stay reserved until their rules are gone.
    for (key, ip) in &live_vips {
        if !services.contains_key(key) {
            taken.insert(*ip, key.clone());
        }
    }
    // So do the locked VIPs of services whose file is broken: when it is mended, they get
    // their address back rather than finding it handed to a newcomer.
    if keep_absent {
        for (k, ip) in &lock.vips {
            if let Some(key) = parse_key(k).filter(|key| !services.contains_key(key)) {
                taken.entry(*ip).or_insert(key);
            }
        }
    }
    // Lock entries of services still present are honoured before explicit requests, so an
    // explicit clusterIP cannot steal an address another service already has.
    let locked: BTreeMap<ObjectKey, Ipv4Addr> = lock
        .vips
        .iter()
        .filter_map(|(k, ip)| parse_key(k).map(|k| (k, *ip)))
        .collect();
    for (key, service) in services {
        if service.vip == VipRequest::Auto {
            if let Some(ip) = locked.get(key).copied().filter(|ip| usable(*ip)) {
                if let std::collections::btree_map::Entry::Vacant(slot) = taken.entry(ip) {
                    slot.insert(key.clone());
                    out.vips.insert(key.clone(), Vip(ip));
                }
            }
        }
    }
    for (key, service) in services {
        let VipRequest::Explicit(ip) = service.vip else {
            continue;
        };
        let (field, line) = match &service.vip_at {
            Some(at) => (at.field.clone(), at.line),
            None => ("spec.clusterIP".to_string(), service.source.line),
        };
        let problem = if !cidr.contains(ip) {
            Some(format!("clusterIP {ip} is outside the portal CIDR {cidr}"))
        } else if ip == cidr.network() || ip == cidr.broadcast() {
            Some(format!(
                "clusterIP {ip} is the network or broadcast address of {cidr}"
            ))
        } else {
            taken
                .get(&ip)
                .map(|other| format!("clusterIP {ip} is already taken by service `{other}`"))
        };
        match problem {
            Some(message) => out.diagnostics.push(Diagnostic {
                file: service.source.file.clone(),
                line,
                severity: Severity::Error,
                object: Some(format!("Service `{key}`")),
                field: Some(field),
                message,
            }),
            None => {
                taken.insert(ip, key.clone());
                out.vips.insert(key.clone(), Vip(ip));
            }
        }
    }
    // Then what the kernel already has (for every service, before any first-free pick can
    // take a live address), then the first free address, in key order.
    for (key, service) in services {
        if service.vip != VipRequest::Auto || out.vips.contains_key(key) {
            continue;
        }
        if let Some(ip) = live_vips
            .get(key)
            .copied()
            .filter(|ip| usable(*ip) && !taken.contains_key(ip))
        {
            taken.insert(ip, key.clone());
            out.vips.insert(key.clone(), Vip(ip));
        }
    }
    let mut next = u32::from(cidr.network()) + 1;
    let last = u32::from(cidr.broadcast());
    for (key, service) in services {
        if service.vip != VipRequest::Auto || out.vips.contains_key(key) {
            continue;
        }
        while next < last && taken.contains_key(&Ipv4Addr::from(next)) {
            next += 1;
        }
        if next >= last {
            out.diagnostics.push(Diagnostic {
                file: service.source.file.clone(),
                line: service.source.line,
                severity: Severity::Error,
                object: Some(format!("Service `{key}`")),
                field: None,
                message: format!("portal CIDR {cidr} has no free address left"),
            });
            continue;
        }
        let ip = Ipv4Addr::from(next);
        taken.insert(ip, key.clone());
        out.vips.insert(key.clone(), Vip(ip));
    }

    allocate_ports(services, lock, live, config, keep_absent, &mut out);

    out.lock = Lock {
        format_version: LOCK_FORMAT_VERSION,
        portal_cidr: cidr.to_string(),
        vips: out
            .vips
            .iter()
            .filter(|(k, _)| services.get(*k).is_some_and(|s| s.vip == VipRequest::Auto))
            .map(|(k, v)| (k.to_string(), v.0))
            .collect(),
        proxy_ports: out
            .proxy_ports
            .iter()
            .map(|(k, p)| (k.clone(), p.0))
            .collect(),
    };
    if keep_absent {
        for (k, ip) in &lock.vips {
            if parse_key(k).is_some_and(|key| !services.contains_key(&key)) {
                out.lock.vips.entry(k.clone()).or_insert(*ip);
            }
        }
        for (k, port) in &lock.proxy_ports {
            let present = k
                .split_once(':')
                .and_then(|(key, _)| parse_key(key))
                .is_some_and(|key| services.contains_key(&key));
            if !present {
                out.lock.proxy_ports.entry(k.clone()).or_insert(*port);
            }
        }
    }
    out
}

fn allocate_ports(
    services: &BTreeMap<ObjectKey, Service>,
    lock: &Lock,
    live: &LiveHints,
    config: &Config,
    keep_absent: bool,
    out: &mut Allocation,
) {
    let range = config.proxy_ports;
    // Proxy ports the live rules point at, by the rule's comment.
    let mut live_ports: BTreeMap<String, u16> = BTreeMap::new();
    for rule in live.nat.rules.values() {
        if let Action::Redirect { to_port } = rule.action {
            live_ports.insert(format!("{}/{}", rule.comment, rule.key.protocol), to_port);
        }
    }
    let mut taken: BTreeSet<(Protocol, u16)> = live.foreign_ports.clone();
    // Proxy ports live rules of services not loaded (removed, or their file is broken and
    // held) still send traffic to stay theirs until those rules are gone.
    for rule in live.nat.rules.values() {
        let owner = rule
            .comment
            .as_str()
            .split_once(':')
            .and_then(|(k, _)| parse_key(k));
        if let (Some(owner), Action::Redirect { to_port }) = (owner, &rule.action) {
            if !services.contains_key(&owner) {
                taken.insert((rule.key.protocol, *to_port));
            }
        }
    }
    // The locked ports of services whose file is broken stay theirs, like their VIPs.
    if keep_absent {
        for (id, port) in &lock.proxy_ports {
            let owner = id.split_once(':').and_then(|(k, _)| parse_key(k));
            let protocol = match id.rsplit_once('/').map(|(_, p)| p) {
                Some("tcp") => Some(Protocol::Tcp),
                Some("udp") => Some(Protocol::Udp),
                _ => None,
            };
            if let (Some(owner), Some(protocol)) = (owner, protocol) {
                if !services.contains_key(&owner) {
                    taken.insert((protocol, *port));
                }
            }
        }
    }
    let wanted: Vec<(String, Protocol, &Service)> = services
        .iter()
        .filter(|(key, _)| out.vips.contains_key(*key))
        .flat_map(|(key, s)| {
            s.ports
                .iter()
                .map(move |p| (port_id(key, p), p.protocol, s))
        })
        .collect();
    let free = |taken: &BTreeSet<(Protocol, u16)>, proto: Protocol, port: u16| {
        range.contains(port) && !taken.contains(&(proto, port))
    };
    // Lock first (the committed record), then live, then first free.
    for preferred in [&lock.proxy_ports, &live_ports] {
        for (id, proto, _) in &wanted {
            if out.proxy_ports.contains_key(id) {
                continue;
            }
            if let Some(port) = preferred
                .get(id)
                .copied()
                .filter(|p| free(&taken, *proto, *p))
            {
                taken.insert((*proto, port));
                out.proxy_ports.insert(id.clone(), ProxyPort(port));
            }
        }
    }
    // Ports are handed out in order, so the search resumes where the last one stopped.
    let mut cursor: BTreeMap<Protocol, u16> = BTreeMap::new();
    for (id, proto, service) in &wanted {
        if out.proxy_ports.contains_key(id) {
            continue;
        }
        let from = cursor.get(proto).copied().unwrap_or(range.low);
        match (from..=range.high).find(|p| free(&taken, *proto, *p)) {
            Some(port) => {
                taken.insert((*proto, port));
                cursor.insert(*proto, port);
                out.proxy_ports.insert(id.clone(), ProxyPort(port));
            }
            None => out.diagnostics.push(Diagnostic {
                file: service.source.file.clone(),
                line: service.source.line,
                severity: Severity::Error,
                object: Some(format!("Service `{}`", service.key)),
                field: None,
                message: format!(
                    "proxy port range {range} has no free {proto} port left for `{id}`"
                ),
            }),
        }
    }
}

/// `ns/name` → key.
pub fn parse_key(text: &str) -> Option<ObjectKey> {
    let (ns, name) = text.split_once('/')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(['/', ':']))
        .then(|| ObjectKey::new(ns, name))
}

/// VIPs of the services the live rules belong to, read from their `ns/name:port` comments.
fn live_vips_by_service(nat: &NatState) -> BTreeMap<ObjectKey, Ipv4Addr> {
    let mut out = BTreeMap::new();
    for rule in nat.rules.values() {
        if let Some(key) = rule
            .comment
            .as_str()
            .split_once(':')
            .and_then(|(k, _)| parse_key(k))
        {
            out.entry(key).or_insert(rule.key.vip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ServiceType, SourceRef, TargetPort};

    fn service(name: &str, vip: VipRequest) -> Service {
        Service {
            key: ObjectKey::new("default", name),
            source: SourceRef {
                file: format!("{name}.yaml"),
                line: Some(1),
            },
            service_type: ServiceType::ClusterIP,
            vip,
            vip_at: None,
            ports: vec![ServicePort {
                name: None,
                protocol: Protocol::Tcp,
                port: 80,
                target: TargetPort::Number(80),
            }],
            selector: None,
            affinity_seconds: None,
            external_ips: Vec::new(),
        }
    }

    fn services(list: &[Service]) -> BTreeMap<ObjectKey, Service> {
        list.iter().map(|s| (s.key.clone(), s.clone())).collect()
    }

    fn config(cidr: &str) -> Config {
        Config {
            portal_cidr: cidr.parse().unwrap(),
            ..Config::default()
        }
    }

    #[test]
    fn network_and_broadcast_addresses_are_never_handed_out() {
        let all: Vec<Service> = (0..2)
            .map(|i| service(&format!("s{i}"), VipRequest::Auto))
            .collect();
        let third = service("s2", VipRequest::Auto);
        let mut list = all.clone();
        list.push(third);
        let out = allocate(
            &services(&list),
            &Lock::default(),
            &LiveHints::default(),
            &config("10.11.0.0/30"),
            false,
        );
        let vips: Vec<Ipv4Addr> = out.vips.values().map(|v| v.0).collect();
        assert_eq!(
            vips,
            vec![
                "10.11.0.1".parse::<Ipv4Addr>().unwrap(),
                "10.11.0.2".parse().unwrap()
            ]
        );
        assert_eq!(
            out.diagnostics.len(),
            1,
            "the third service finds the /30 full"
        );
        assert!(out.diagnostics[0].message.contains("no free address"));
    }

    #[test]
    fn lock_keeps_a_vip_when_an_earlier_service_appears() {
        let b = service("b", VipRequest::Auto);
        let first = allocate(
            &services(std::slice::from_ref(&b)),
            &Lock::default(),
            &LiveHints::default(),
            &config("10.11.0.0/16"),
            false,
        );
        let a = service("a", VipRequest::Auto);
        let second = allocate(
            &services(&[a.clone(), b.clone()]),
            &first.lock,
            &LiveHints::default(),
            &config("10.11.0.0/16"),
            false,
        );
        assert_eq!(first.vips[&b.key], second.vips[&b.key]);
        assert_ne!(second.vips[&a.key], second.vips[&b.key]);
    }

    #[test]
    fn explicit_cluster_ip_cannot_take_a_locked_address() {
        let a = service("a", VipRequest::Auto);
        let first = allocate(
            &services(std::slice::from_ref(&a)),
            &Lock::default(),
            &LiveHints::default(),
            &config("10.11.0.0/16"),
            false,
        );
        let taken = first.vips[&a.key].0;
        let b = service("b", VipRequest::Explicit(taken));
        let second = allocate(
            &services(&[a.clone(), b.clone()]),
            &first.lock,
            &LiveHints::default(),
            &config("10.11.0.0/16"),
            false,
        );
        assert_eq!(second.vips[&a.key].0, taken);
        assert!(!second.vips.contains_key(&b.key));
        assert!(second.diagnostics[0]
            .message
            .contains("already taken by service `default/a`"));
    }

    #[test]
    fn proxy_port_held_by_a_foreign_process_is_avoided() {
        let a = service("a", VipRequest::Auto);
        let live = LiveHints {
            foreign_ports: [(Protocol::Tcp, 20000)].into_iter().collect(),
            ..LiveHints::default()
        };
        let out = allocate(
            &services(&[a]),
            &Lock::default(),
            &live,
            &config("10.11.0.0/16"),
            false,
        );
        assert_eq!(out.proxy_ports.values().next().unwrap().0, 20001);
    }

    #[test]
    fn lock_entries_of_broken_files_survive_when_asked() {
        let a = service("a", VipRequest::Auto);
        let first = allocate(
            &services(std::slice::from_ref(&a)),
            &Lock::default(),
            &LiveHints::default(),
            &config("10.11.0.0/16"),
            false,
        );
        let kept = allocate(
            &BTreeMap::new(),
            &first.lock,
            &LiveHints::default(),
            &config("10.11.0.0/16"),
            true,
        );
        assert_eq!(kept.lock.vips, first.lock.vips);
        let dropped = allocate(
            &BTreeMap::new(),
            &first.lock,
            &LiveHints::default(),
            &config("10.11.0.0/16"),
            false,
        );
        assert!(dropped.lock.vips.is_empty());
        // While the file is broken, a newcomer gets neither its VIP nor its proxy port.
        let b = service("b", VipRequest::Auto);
        let newcomer = allocate(
            &services(std::slice::from_ref(&b)),
            &first.lock,
            &LiveHints::default(),
            &config("10.11.0.0/16"),
            true,
        );
        let a_vip = first.lock.vips.values().next().copied().unwrap();
        let a_port = first.lock.proxy_ports.values().next().copied().unwrap();
        assert_ne!(newcomer.vips.values().next().unwrap().0, a_vip);
        assert!(newcomer.proxy_ports.values().all(|p| p.0 != a_port));
        assert_eq!(newcomer.lock.vips.len(), 2, "{:?}", newcomer.lock);
    }
}
