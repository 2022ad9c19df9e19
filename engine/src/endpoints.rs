//! Finds the endpoints of each service port: from Endpoints / EndpointSlices, else from the
//! Pods its selector picks.

use crate::config::Config;
use crate::diagnostics::{Diagnostic, Severity};
use crate::model::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

/// Why `ip` may be neither an endpoint nor an external IP, or `None` when it may be.
///
/// The rule is Kubernetes' `ValidateNonSpecialIP` (kubernetes/kubernetes,
/// `pkg/apis/core/validation/validation.go`), which the API server applies to Endpoints
/// addresses, EndpointSlice endpoints (`pkg/apis/discovery/validation`) and Service
/// `externalIPs`: not unspecified (0.0.0.0), not loopback (127.0.0.0/8), not link-local
/// unicast (169.254.0.0/16, where the cloud metadata service 169.254.169.254 lives), not
/// link-local multicast (224.0.0.0/24). portald refuses as well what no backend can be: the
/// rest of 0.0.0.0/8 ("this network", a source only: RFC 1122 3.2.1.3), every multicast group
/// (224.0.0.0/4: a proxy cannot connect to a group, and a datagram to one fans out) and the
/// limited broadcast 255.255.255.255. The text completes "may not be …".
pub fn special_address(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified (0.0.0.0)")
    } else if ip.octets()[0] == 0 {
        Some("in the \"this network\" range (0.0.0.0/8)")
    } else if ip.is_loopback() {
        Some("in the loopback range (127.0.0.0/8)")
    } else if ip.is_link_local() {
        Some("in the link-local range (169.254.0.0/16)")
    } else if ip.is_multicast() && ip.octets()[..3] == [224, 0, 0] {
        Some("in the link-local multicast range (224.0.0.0/24)")
    } else if ip.is_multicast() {
        Some("multicast (224.0.0.0/4)")
    } else if ip.is_broadcast() {
        Some("the broadcast address (255.255.255.255)")
    } else {
        None
    }
}

/// Takes out of `catalog` the endpoint addresses, pod IPs and external IPs that would turn a
/// portal back on portald itself, and returns one warning for each, naming its file and field:
/// an address inside the portal CIDR (every VIP is there, so an endpoint equal to a VIP, which
/// makes a proxy loop, is one), and, when external IPs are served, an endpoint equal to one.
/// The rest of each object keeps serving. The line is the object's: the loader indexes the
/// lines of fields only for files with a problem of their own.
pub fn refuse_portal_addresses(catalog: &mut Catalog, config: &Config) -> Vec<Diagnostic> {
    let cidr = config.portal_cidr;
    let mut out = Vec::new();
    let refusal = |source: &SourceRef, object: String, field: String, message: String| Diagnostic {
        file: source.file.clone(),
        line: source.line,
        severity: Severity::Warning,
        object: Some(object),
        field: Some(field),
        message,
    };
    let mut external: BTreeMap<Ipv4Addr, ObjectKey> = BTreeMap::new();
    for (key, service) in &mut catalog.services {
        service.external_ips.retain(|ip| {
            if !cidr.contains(*ip) {
                return true;
            }
            out.push(refusal(
                &service.source,
                format!("Service `{key}`"),
                "spec.externalIPs".into(),
                format!("externalIP `{ip}` refused: it is inside the portal CIDR {cidr}, where the VIPs are; not served"),
            ));
            false
        });
        if config.allow_external_ips {
            for ip in &service.external_ips {
                external.entry(*ip).or_insert_with(|| key.clone());
            }
        }
    }
    let why = |ip: Ipv4Addr| {
        if cidr.contains(ip) {
            Some(format!("it is inside the portal CIDR {cidr}, where the VIPs are (a portal to a portal loops)"))
        } else {
            external.get(&ip).map(|key| {
                format!("it is an external IP of service `{key}` (a portal to a portal loops)")
            })
        }
    };
    for group in &mut catalog.endpoint_groups {
        group.addresses.retain(|address| match why(address.ip) {
            None => true,
            Some(why) => {
                out.push(refusal(
                    &group.source,
                    group.object.clone(),
                    address.field.clone(),
                    format!(
                        "endpoint `{}` refused: {why}; the other addresses are served",
                        address.ip
                    ),
                ));
                false
            }
        });
    }
    for pod in &mut catalog.pods {
        let Some((ip, why)) = pod.ip.and_then(|ip| why(ip).map(|why| (ip, why))) else {
            continue;
        };
        out.push(refusal(
            &pod.source,
            format!("Pod `{}`", pod.key),
            "status.podIP".into(),
            format!("pod IP `{ip}` refused: {why}; the pod is no endpoint"),
        ));
        pod.ip = None;
    }
    out
}

/// Indexes a catalog once so resolution is fast for thousands of services.
pub struct EndpointIndex<'a> {
    groups: BTreeMap<&'a ObjectKey, Vec<&'a EndpointGroup>>,
    /// (namespace, label key, label value) → pods.
    labels: BTreeMap<(&'a str, &'a str, &'a str), Vec<&'a Pod>>,
    /// portald's own judgements (the catalog's).
    health: &'a crate::health::Health,
}

/// The endpoints of one service port and why some may be missing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    pub endpoints: Vec<Endpoint>,
    /// Short notes for the plan output (e.g. a named port no pod declares).
    pub notes: Vec<String>,
}

impl<'a> EndpointIndex<'a> {
    pub fn new(catalog: &'a Catalog) -> Self {
        let mut groups: BTreeMap<&ObjectKey, Vec<&EndpointGroup>> = BTreeMap::new();
        for group in &catalog.endpoint_groups {
            groups.entry(&group.service).or_default().push(group);
        }
        let mut labels: BTreeMap<(&str, &str, &str), Vec<&Pod>> = BTreeMap::new();
        for pod in &catalog.pods {
            for (k, v) in &pod.labels {
                labels
                    .entry((pod.key.namespace.as_str(), k.as_str(), v.as_str()))
                    .or_default()
                    .push(pod);
            }
        }
        EndpointIndex {
            groups,
            labels,
            health: &catalog.health,
        }
    }

    /// The Pods `service` selects for `port`, with the endpoint each makes (whatever its
    /// readiness): what readiness probes judge.
    pub fn pod_endpoints(&self, service: &Service, port: &ServicePort) -> Vec<(&'a Pod, Endpoint)> {
        let mut out = Vec::new();
        if let Some(selector) = service.selector.as_ref().filter(|s| !s.is_empty()) {
            self.each_selected_pod(service, selector, port, |pod, endpoint| {
                if let Some(endpoint) = endpoint {
                    out.push((pod, endpoint));
                }
            });
        }
        out
    }

    /// The endpoints of `port` from the Service's Endpoints objects and EndpointSlices,
    /// whatever their conditions: what its health check judges.
    pub fn group_endpoints(&self, service: &Service, port: &ServicePort) -> Vec<Endpoint> {
        let mut out = BTreeSet::new();
        if let Some(groups) = self.groups.get(&service.key) {
            for group in groups {
                if let Some(target) = group_port(group, port) {
                    for address in &group.addresses {
                        out.insert(Endpoint(SocketAddrV4::new(address.ip, target)));
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    /// The endpoints of `port`: the Pods a selector picks plus the slices kept for the
    /// service (see `catalog::assemble` for which), else its Endpoints objects. Ready ones
    /// serve; when none is ready, the serving-and-terminating ones do (as kube-proxy, KEP-1669).
    pub fn resolve(&self, service: &Service, port: &ServicePort) -> Resolved {
        let mut candidates = Candidates::default();
        let mut notes = Vec::new();
        let groups = self.groups.get(&service.key);
        if let Some(groups) = groups {
            from_groups(groups, service, port, self.health, &mut candidates);
        }
        match &service.selector {
            Some(selector) if !selector.is_empty() => {
                self.selected_pods(service, selector, port, &mut candidates, &mut notes)
            }
            _ if groups.is_none() => notes.push("no selector and no Endpoints object".into()),
            _ => {}
        }
        Resolved {
            endpoints: candidates.serving(),
            notes,
        }
    }

    fn selected_pods(
        &self,
        service: &Service,
        selector: &BTreeMap<String, String>,
        port: &ServicePort,
        candidates: &mut Candidates,
        notes: &mut Vec<String>,
    ) {
        let mut missing_port = 0;
        let matched = self.each_selected_pod(service, selector, port, |pod, endpoint| {
            let Some(endpoint) = endpoint else {
                missing_port += 1;
                return;
            };
            // portald's probe verdict stands for the Ready condition, as the kubelet's.
            let (ready, serving) = match self.health.pods.get(&pod.key).copied().or_else(|| {
                self.health
                    .endpoints
                    .get(&(service.key.clone(), endpoint))
                    .copied()
            }) {
                Some(judged) => (judged && !pod.terminating, judged),
                None => (pod.ready, pod.serving),
            };
            // publishNotReadyAddresses: the controller marks every such Pod ready.
            let ready = ready || service.publish_not_ready;
            candidates.add(endpoint, ready, serving, pod.terminating);
        });
        if !matched {
            notes.push("no pod matches the selector".into());
        }
        if missing_port > 0 {
            notes.push(format!(
                "{missing_port} selected pod(s) declare no port named `{}`",
                port.target
            ));
        }
    }

    /// Calls `each` with every selected Pod that has an IP and is not finished, and its
    /// endpoint for `port` (`None`: it declares no port of that name). Returns false when
    /// some label of the selector matches no Pod at all.
    fn each_selected_pod(
        &self,
        service: &Service,
        selector: &BTreeMap<String, String>,
        port: &ServicePort,
        mut each: impl FnMut(&'a Pod, Option<Endpoint>),
    ) -> bool {
        // Intersect starting from the rarest label so large catalogs stay cheap.
        let mut lists: Vec<&Vec<&Pod>> = Vec::new();
        for (k, v) in selector {
            match self
                .labels
                .get(&(service.key.namespace.as_str(), k.as_str(), v.as_str()))
            {
                Some(list) => lists.push(list),
                None => return false,
            }
        }
        lists.sort_by_key(|l| l.len());
        for pod in lists[0].iter() {
            if !selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
                continue;
            }
            let Some(ip) = pod.ip else { continue };
            if pod.finished {
                continue;
            }
            let target = match &port.target {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(name) => pod
                    .ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name) && p.protocol == port.protocol)
                    .map(|p| p.port),
            };
            each(pod, target.map(|t| Endpoint(SocketAddrV4::new(ip, t))));
        }
        true
    }
}

/// Endpoints found so far, split by their conditions.
#[derive(Default)]
struct Candidates {
    ready: BTreeSet<Endpoint>,
    fallback: BTreeSet<Endpoint>,
}

impl Candidates {
    fn add(&mut self, endpoint: Endpoint, ready: bool, serving: bool, terminating: bool) {
        if ready {
            self.ready.insert(endpoint);
        } else if serving && terminating {
            self.fallback.insert(endpoint);
        }
    }

    /// As kube-proxy does: terminating-but-serving endpoints only when nothing is ready.
    fn serving(self) -> Vec<Endpoint> {
        let chosen = if self.ready.is_empty() {
            self.fallback
        } else {
            self.ready
        };
        chosen.into_iter().collect()
    }
}

/// The port of `group` that serves `port`, if any.
fn group_port(group: &EndpointGroup, port: &ServicePort) -> Option<u16> {
    group
        .ports
        .iter()
        .find(|p| {
            p.protocol == port.protocol
                && match &port.name {
                    Some(name) => p.name.as_deref() == Some(name),
                    None => group.ports.len() == 1,
                }
        })
        .map(|p| p.port)
}

/// A health check can only take an address out: the file's conditions say whether it is
/// meant to serve, the check whether it can.
fn from_groups(
    groups: &[&EndpointGroup],
    service: &Service,
    port: &ServicePort,
    health: &crate::health::Health,
    candidates: &mut Candidates,
) {
    for group in groups {
        let Some(target) = group_port(group, port) else {
            continue;
        };
        for address in &group.addresses {
            let endpoint = Endpoint(SocketAddrV4::new(address.ip, target));
            let failing = health.endpoints.get(&(service.key.clone(), endpoint)) == Some(&false);
            candidates.add(
                endpoint,
                address.ready && !failing,
                address.serving && !failing,
                address.terminating,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocate::Lock;
    use crate::load::{parse_file, SourceFile};
    use crate::observe::Observed;

    fn refused(ip: &str) -> Option<&'static str> {
        special_address(ip.parse().expect("test address"))
    }

    #[test]
    fn loopback_addresses_are_no_endpoints() {
        for ip in ["127.0.0.1", "127.0.0.2", "127.255.255.254"] {
            assert_eq!(refused(ip), Some("in the loopback range (127.0.0.0/8)"));
        }
    }

    #[test]
    fn the_unspecified_address_and_this_network_are_no_endpoints() {
        assert_eq!(refused("0.0.0.0"), Some("unspecified (0.0.0.0)"));
        assert!(refused("0.1.2.3").is_some_and(|why| why.contains("0.0.0.0/8")));
    }

    #[test]
    fn link_local_addresses_and_the_metadata_service_are_no_endpoints() {
        for ip in ["169.254.169.254", "169.254.0.1", "169.254.255.255"] {
            assert_eq!(
                refused(ip),
                Some("in the link-local range (169.254.0.0/16)")
            );
        }
    }

    #[test]
    fn multicast_groups_are_no_endpoints() {
        assert_eq!(
            refused("224.0.0.251"),
            Some("in the link-local multicast range (224.0.0.0/24)")
        );
        for ip in ["224.0.1.1", "239.1.1.1", "239.255.255.255"] {
            assert_eq!(refused(ip), Some("multicast (224.0.0.0/4)"));
        }
    }

    #[test]
    fn the_broadcast_address_is_no_endpoint() {
        assert_eq!(
            refused("255.255.255.255"),
            Some("the broadcast address (255.255.255.255)")
        );
    }

    #[test]
    fn ordinary_unicast_addresses_are_endpoints() {
        for ip in [
            "10.244.0.5",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "203.0.113.10",
            "1.1.1.1",
            "169.253.255.255",
            "223.255.255.255",
            "128.0.0.1",
        ] {
            assert_eq!(refused(ip), None, "{ip}");
        }
    }

    fn run(text: &str, config: &Config) -> crate::pipeline::Outcome {
        let files = vec![parse_file(&SourceFile {
            path: "svc.yaml".into(),
            text: text.into(),
        })];
        crate::pipeline::run(
            &files,
            &Lock::default(),
            &Observed::default(),
            config,
            false,
        )
    }

    fn endpoints_of(outcome: &crate::pipeline::Outcome, service: &str) -> Vec<String> {
        let view = outcome
            .intent
            .services
            .iter()
            .find(|s| s.name == service)
            .expect("service compiled");
        view.ports[0]
            .endpoints
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    const LOOP: &str = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.11.0.10
  externalIPs: [203.0.113.10]
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: web}
subsets:
  - addresses: [{ip: 10.244.0.5}, {ip: 10.11.0.10}, {ip: 203.0.113.10}]
    ports: [{port: 8080}]
";

    #[test]
    fn an_endpoint_equal_to_a_vip_is_refused_and_the_other_addresses_serve() {
        let outcome = run(LOOP, &Config::default());
        assert_eq!(
            endpoints_of(&outcome, "default/web"),
            ["10.244.0.5:8080", "203.0.113.10:8080"]
        );
        let refusal = outcome
            .diagnostics
            .iter()
            .find(|d| d.message.contains("`10.11.0.10`"))
            .expect("the VIP endpoint is reported");
        assert_eq!(refusal.file, "svc.yaml");
        assert_eq!(refusal.line, Some(8), "the line of the object");
        assert_eq!(refusal.field.as_deref(), Some("subsets[0].addresses[1].ip"));
        assert_eq!(refusal.object.as_deref(), Some("Endpoints `default/web`"));
    }

    #[test]
    fn an_endpoint_equal_to_a_served_external_ip_is_refused() {
        let config = Config {
            allow_external_ips: true,
            ..Config::default()
        };
        let outcome = run(LOOP, &config);
        assert_eq!(endpoints_of(&outcome, "default/web"), ["10.244.0.5:8080"]);
        assert!(outcome
            .diagnostics
            .iter()
            .any(|d| d.field.as_deref() == Some("subsets[0].addresses[2].ip")
                && d.message.contains("external IP of service `default/web`")));
    }

    #[test]
    fn a_pod_whose_ip_is_inside_the_portal_cidr_is_no_endpoint() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: cache}
spec:
  selector: {app: cache}
  ports: [{port: 6379}]
---
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: cache}}
status: {podIP: 10.11.3.4}
---
apiVersion: v1
kind: Pod
metadata: {name: b, labels: {app: cache}}
status: {podIP: 10.244.0.7}
";
        let outcome = run(text, &Config::default());
        assert_eq!(endpoints_of(&outcome, "default/cache"), ["10.244.0.7:6379"]);
        assert!(outcome
            .diagnostics
            .iter()
            .any(|d| d.object.as_deref() == Some("Pod `default/a`")
                && d.field.as_deref() == Some("status.podIP")));
    }

    #[test]
    fn an_external_ip_inside_the_portal_cidr_is_not_served() {
        let text = "\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  externalIPs: [10.11.0.200, 203.0.113.10]
  ports: [{port: 80}]
";
        let config = Config {
            allow_external_ips: true,
            ..Config::default()
        };
        let outcome = run(text, &config);
        let view = &outcome.intent.services[0];
        assert_eq!(
            view.external_ips,
            ["203.0.113.10".parse::<Ipv4Addr>().unwrap()]
        );
        let refused = Ipv4Addr::new(10, 11, 0, 200);
        assert!(!outcome.intent.nat.rules.keys().any(|k| k.vip == refused));
        assert!(outcome
            .intent
            .nat
            .rules
            .keys()
            .any(|k| k.vip.octets()[0] == 203));
    }
}
