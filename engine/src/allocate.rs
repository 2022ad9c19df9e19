//! Stable VIPs and proxy ports: the lock file decides every VIP it names; otherwise this
//! host's own record, the live rules, or the first free one in order.

use crate::config::Config;
use crate::diagnostics::{Diagnostic, Severity};
use crate::model::{ObjectKey, ProxyPort, Service, ServicePort, Vip, VipRequest};
use planners::{Action, NatState, Protocol};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The allocation record users commit next to their services (`portald.lock`): an input the
/// daemon reads and never writes. The same shape is the daemon's node state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Lock {
    pub format_version: u32,
    #[serde(default)]
    pub portal_cidr: String,
    #[serde(default)]
    pub vips: BTreeMap<String, Ipv4Addr>,
    /// Node-local: written to the node state file, not to the shared lock.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
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

    /// The part every host must share: the VIPs. Proxy ports are node-local and stay in
    /// the node state file.
    pub fn shared(&self) -> Lock {
        Lock {
            proxy_ports: BTreeMap::new(),
            ..self.clone()
        }
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
    /// This host's own record (the node state file): proxy ports, and the VIPs it chose for
    /// services the lock has no entry for. Same shape as a lock; never shared.
    pub state: Lock,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    pub vips: BTreeMap<ObjectKey, Vip>,
    pub proxy_ports: BTreeMap<String, ProxyPort>,
    /// Everything this allocation chose, as a record: the VIPs of services without an
    /// explicit `clusterIP` and the proxy ports. The daemon keeps it as its node state;
    /// `portald lock` writes its [`Lock::shared`] part.
    pub lock: Lock,
    /// Services held because `require_lock` is set and the lock has no entry for them.
    pub held: BTreeSet<ObjectKey>,
    pub diagnostics: Vec<Diagnostic>,
}

/// Allocates VIPs and proxy ports for `services`: a pure function of the services, the
/// lock, `live` and `config`, where a lock entry decides alone.
///
/// A service without `clusterIP` gets, in this order: its lock entry (even when a removed
/// service still holds that VIP live: the lock wins); with `config.require_lock`, nothing
/// (held, warned); else the VIP this host gave it before (`live.state`), the one its live
/// rules use, or the first address nobody holds or is locked to. Every lock entry is
/// reserved whether or not its service is loaded here yet, so a newcomer never takes the
/// VIP the repository gave a service whose file has not arrived. A locked VIP outside the
/// CIDR, or shared by two entries, is an error naming the entries, and the service gets no
/// VIP rather than a different one. `keep_absent` keeps the records of services not loaded
/// (their file is broken: their addresses must not move).
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

    // The lock first, whole: it is the one input every host shares.
    let locked: BTreeMap<ObjectKey, Ipv4Addr> = lock
        .vips
        .iter()
        .filter_map(|(k, ip)| parse_key(k).map(|k| (k, *ip)))
        .collect();
    let mut by_vip: BTreeMap<Ipv4Addr, Vec<&ObjectKey>> = BTreeMap::new();
    for (key, ip) in &locked {
        by_vip.entry(*ip).or_default().push(key);
    }
    let mut refused: BTreeMap<ObjectKey, String> = BTreeMap::new();
    for (ip, keys) in &by_vip {
        if !usable(*ip) {
            for key in keys {
                refused.insert(
                    (*key).clone(),
                    format!(
                        "lock entry `{key}` holds VIP {ip}, outside the portal CIDR {cidr} (or its network or broadcast address)"
                    ),
                );
            }
            continue;
        }
        // Reserved even when shared: no third service may take it either.
        taken.insert(*ip, keys[0].clone());
        if keys.len() > 1 {
            let names: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
            for key in keys {
                refused.insert(
                    (*key).clone(),
                    format!(
                        "lock entries {} all hold VIP {ip}; fix the lock so each has its own",
                        names.join(" and ")
                    ),
                );
            }
        }
    }
    for (key, service) in services {
        if service.vip != VipRequest::Auto {
            continue;
        }
        if let Some(message) = refused.get(key) {
            out.diagnostics.push(Diagnostic {
                file: service.source.file.clone(),
                line: service.source.line,
                severity: Severity::Error,
                object: Some(format!("Service `{key}`")),
                field: None,
                message: message.clone(),
            });
        } else if let Some(ip) = locked.get(key) {
            out.vips.insert(key.clone(), Vip(*ip));
        }
    }
    // Live VIPs of services not loaded stay reserved until their rules are gone (unless the
    // lock gave them to another service above).
    for (key, ip) in &live_vips {
        if !services.contains_key(key) {
            taken.entry(*ip).or_insert_with(|| key.clone());
        }
    }
    // So do the VIPs this host gave services whose file is broken: when it is mended, they
    // get their address back rather than finding it handed to a newcomer.
    if keep_absent {
        for (k, ip) in &live.state.vips {
            if let Some(key) = parse_key(k).filter(|key| !services.contains_key(key)) {
                taken.entry(*ip).or_insert(key);
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
    // A service the lock does not name: held in strict mode, else this host's own choice.
    let unlocked: Vec<(&ObjectKey, &Service)> = services
        .iter()
        .filter(|(key, s)| s.vip == VipRequest::Auto && !locked.contains_key(*key))
        .collect();
    if config.require_lock {
        for (key, service) in &unlocked {
            out.held.insert((*key).clone());
            out.diagnostics.push(Diagnostic {
                file: service.source.file.clone(),
                line: service.source.line,
                severity: Severity::Warning,
                object: Some(format!("Service `{key}`")),
                field: None,
                message: "held: the lock has no entry for it and --require-lock is set; run `portald lock` and commit the lock".into(),
            });
        }
    } else {
        // What this host chose before, then what the kernel already has (for every
        // service, before any first-free pick can take a live address).
        for (key, _) in &unlocked {
            let mine = live.state.vips.get(&key.to_string()).copied();
            if let Some(ip) = mine.filter(|ip| usable(*ip) && !taken.contains_key(ip)) {
                taken.insert(ip, (*key).clone());
                out.vips.insert((*key).clone(), Vip(ip));
            }
        }
        for (key, _) in &unlocked {
            if out.vips.contains_key(*key) {
                continue;
            }
            let serving = live_vips.get(*key).copied();
            if let Some(ip) = serving.filter(|ip| usable(*ip) && !taken.contains_key(ip)) {
                taken.insert(ip, (*key).clone());
                out.vips.insert((*key).clone(), Vip(ip));
            }
        }
        let mut next = u32::from(cidr.network()) + 1;
        let last = u32::from(cidr.broadcast());
        for (key, service) in &unlocked {
            if out.vips.contains_key(*key) {
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
            taken.insert(ip, (*key).clone());
            out.vips.insert((*key).clone(), Vip(ip));
        }
    }

    // Kernel mode DNATs straight to the endpoints: no listener, no proxy port.
    if config.mode == crate::config::Mode::Userspace {
        allocate_ports(services, lock, live, config, keep_absent, &mut out);
    }

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
        for record in [lock, &live.state] {
            for (k, ip) in &record.vips {
                if parse_key(k).is_some_and(|key| !services.contains_key(&key)) {
                    out.lock.vips.entry(k.clone()).or_insert(*ip);
                }
            }
            for (k, port) in &record.proxy_ports {
                let present = k
                    .split_once(':')
                    .and_then(|(key, _)| parse_key(key))
                    .is_some_and(|key| services.contains_key(&key));
                if !present {
                    out.lock.proxy_ports.entry(k.clone()).or_insert(*port);
                }
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
    // The recorded ports of services whose file is broken stay theirs, like their VIPs.
    if keep_absent {
        for (id, port) in lock.proxy_ports.iter().chain(&live.state.proxy_ports) {
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
    // This host's record first (proxy ports are node-local), then a lock written before
    // they moved out of it, then live, then first free.
    for preferred in [&live.state.proxy_ports, &lock.proxy_ports, &live_ports] {
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
            publish_not_ready: false,
            health_check: None,
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

    /// `allocate` of `list` in 10.11.0.0/16 from `lock` and `live`, with no broken file (the
    /// lock entries of services not in `list` are dropped).
    fn allocate_from(list: &[Service], lock: &Lock, live: &LiveHints) -> Allocation {
        allocate(&services(list), lock, live, &config("10.11.0.0/16"), false)
    }

    /// A first allocation of `list`: no lock, nothing live.
    fn fresh(list: &[Service]) -> Allocation {
        allocate_from(list, &Lock::default(), &LiveHints::default())
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
        let first = fresh(std::slice::from_ref(&b));
        let a = service("a", VipRequest::Auto);
        let second = allocate_from(&[a.clone(), b.clone()], &first.lock, &LiveHints::default());
        assert_eq!(first.vips[&b.key], second.vips[&b.key]);
        assert_ne!(second.vips[&a.key], second.vips[&b.key]);
    }

    #[test]
    fn explicit_cluster_ip_cannot_take_a_locked_address() {
        let a = service("a", VipRequest::Auto);
        let first = fresh(std::slice::from_ref(&a));
        let taken = first.vips[&a.key].0;
        let b = service("b", VipRequest::Explicit(taken));
        let second = allocate_from(&[a.clone(), b.clone()], &first.lock, &LiveHints::default());
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
        let out = allocate_from(&[a], &Lock::default(), &live);
        assert_eq!(out.proxy_ports.values().next().unwrap().0, 20001);
    }

    #[test]
    fn lock_entries_of_broken_files_survive_when_asked() {
        let a = service("a", VipRequest::Auto);
        let first = fresh(std::slice::from_ref(&a));
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
    fn lock_of(entries: &[(&str, &str)]) -> Lock {
        Lock {
            format_version: LOCK_FORMAT_VERSION,
            portal_cidr: "10.11.0.0/16".into(),
            vips: entries
                .iter()
                .map(|(k, ip)| (format!("default/{k}"), ip.parse().unwrap()))
                .collect(),
            proxy_ports: BTreeMap::new(),
        }
    }

    /// Live rules for `name` on `ip` port 80, as a running host would have them.
    fn live_on(entries: &[(&str, &str)]) -> LiveHints {
        let mut nat = NatState::default();
        for (name, ip) in entries {
            nat.insert_rule(planners::PortalRule {
                key: planners::PortalKey {
                    path: planners::Path::Container,
                    vip: ip.parse().unwrap(),
                    protocol: Protocol::Tcp,
                    port: 80,
                },
                comment: planners::Comment::new(format!("default/{name}:80")).unwrap(),
                action: Action::Redirect { to_port: 20000 },
            });
        }
        LiveHints {
            nat,
            ..LiveHints::default()
        }
    }

    fn vip_of(out: &Allocation, name: &str) -> Option<String> {
        out.vips
            .get(&ObjectKey::new("default", name))
            .map(|v| v.0.to_string())
    }

    #[test]
    fn a_locked_vip_is_honoured_while_a_removed_service_still_holds_it_live() {
        // `old` was deleted and `new` added in one commit; the lock gives `new` the freed VIP.
        let out = allocate_from(
            &[service("new", VipRequest::Auto)],
            &lock_of(&[("new", "10.11.0.1")]),
            &live_on(&[("old", "10.11.0.1")]),
        );
        assert_eq!(vip_of(&out, "new").as_deref(), Some("10.11.0.1"));
        assert!(out.diagnostics.is_empty(), "{:?}", out.diagnostics);
    }

    #[test]
    fn the_lock_wins_over_a_vip_this_host_gave_another_service() {
        // This host saw `b` first and gave it .1; the lock says .1 is `a`'s and .2 `b`'s.
        let live = live_on(&[("b", "10.11.0.1")]);
        let out = allocate_from(
            &[
                service("a", VipRequest::Auto),
                service("b", VipRequest::Auto),
            ],
            &lock_of(&[("a", "10.11.0.1"), ("b", "10.11.0.2")]),
            &live,
        );
        assert_eq!(vip_of(&out, "a").as_deref(), Some("10.11.0.1"));
        assert_eq!(vip_of(&out, "b").as_deref(), Some("10.11.0.2"));
    }

    #[test]
    fn a_newcomer_never_takes_the_vip_the_lock_gives_a_service_not_arrived_yet() {
        let out = allocate_from(
            &[service("b", VipRequest::Auto)],
            &lock_of(&[("a", "10.11.0.1")]),
            &LiveHints::default(),
        );
        assert_eq!(vip_of(&out, "b").as_deref(), Some("10.11.0.2"));
    }

    #[test]
    fn require_lock_holds_a_service_without_an_entry_and_serves_the_others() {
        let strict = Config {
            require_lock: true,
            ..config("10.11.0.0/16")
        };
        let out = allocate(
            &services(&[
                service("a", VipRequest::Auto),
                service("b", VipRequest::Auto),
            ]),
            &lock_of(&[("a", "10.11.0.7")]),
            &live_on(&[("b", "10.11.0.1")]),
            &strict,
            false,
        );
        assert_eq!(vip_of(&out, "a").as_deref(), Some("10.11.0.7"));
        assert_eq!(vip_of(&out, "b"), None, "held, even though it is live");
        assert_eq!(
            out.held.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["default/b"]
        );
        assert!(out
            .proxy_ports
            .keys()
            .all(|id| id.starts_with("default/a:")));
        let warning = &out.diagnostics[0];
        assert_eq!(warning.severity, Severity::Warning);
        assert!(warning.message.contains("held"), "{warning}");
    }

    #[test]
    fn two_services_locked_to_one_vip_is_an_error_naming_both_and_neither_gets_it() {
        let out = allocate_from(
            &[
                service("a", VipRequest::Auto),
                service("b", VipRequest::Auto),
                service("c", VipRequest::Auto),
            ],
            &lock_of(&[("a", "10.11.0.1"), ("b", "10.11.0.1")]),
            &LiveHints::default(),
        );
        assert_eq!(vip_of(&out, "a"), None);
        assert_eq!(vip_of(&out, "b"), None);
        assert_eq!(vip_of(&out, "c").as_deref(), Some("10.11.0.2"));
        assert_eq!(out.diagnostics.len(), 2, "{:?}", out.diagnostics);
        for d in &out.diagnostics {
            assert!(d.is_error());
            assert!(
                d.message.contains("`default/a`") && d.message.contains("`default/b`"),
                "{d}"
            );
        }
    }

    #[test]
    fn a_locked_vip_outside_the_cidr_is_an_error_not_a_new_address() {
        let out = allocate_from(
            &[service("a", VipRequest::Auto)],
            &lock_of(&[("a", "192.168.0.1")]),
            &LiveHints::default(),
        );
        assert_eq!(vip_of(&out, "a"), None);
        assert!(out.diagnostics[0].is_error());
        assert!(
            out.diagnostics[0].message.contains("`default/a`"),
            "{:?}",
            out.diagnostics
        );
    }

    #[test]
    fn without_a_lock_the_vip_this_host_recorded_is_kept_across_a_restart() {
        let b = service("b", VipRequest::Auto);
        let first = fresh(std::slice::from_ref(&b));
        // Restarted with no rules left and a newcomer that sorts first: `b` keeps its VIP.
        let again = allocate_from(
            &[service("a", VipRequest::Auto), b],
            &Lock::default(),
            &LiveHints {
                state: first.lock.clone(),
                ..LiveHints::default()
            },
        );
        assert_eq!(vip_of(&again, "b"), vip_of(&first, "b"));
        assert_ne!(vip_of(&again, "a"), vip_of(&first, "b"));
    }

    #[test]
    fn kernel_mode_allocates_no_proxy_port() {
        let kernel = Config {
            mode: crate::config::Mode::Kernel,
            ..config("10.11.0.0/16")
        };
        let out = allocate(
            &services(&[service("a", VipRequest::Auto)]),
            &Lock::default(),
            &LiveHints::default(),
            &kernel,
            false,
        );
        assert!(out.proxy_ports.is_empty());
        assert!(out.lock.proxy_ports.is_empty());
        assert_eq!(vip_of(&out, "a").as_deref(), Some("10.11.0.1"));
    }
}
