//! Finds the endpoints of each service port: from Endpoints / EndpointSlices, else from the
//! Pods its selector picks.

use crate::model::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddrV4;

/// Indexes a catalog once so resolution is fast for thousands of services.
pub struct EndpointIndex<'a> {
    groups: BTreeMap<&'a ObjectKey, Vec<&'a EndpointGroup>>,
    /// (namespace, label key, label value) → pods.
    labels: BTreeMap<(&'a str, &'a str, &'a str), Vec<&'a Pod>>,
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
        EndpointIndex { groups, labels }
    }

    /// The endpoints of `port`: the Pods a selector picks plus the slices kept for the
    /// service (see `catalog::assemble` for which), else its Endpoints objects. Ready ones
    /// serve; when none is ready, the serving-and-terminating ones do (as kube-proxy, KEP-1669).
    pub fn resolve(&self, service: &Service, port: &ServicePort) -> Resolved {
        let mut candidates = Candidates::default();
        let mut notes = Vec::new();
        let groups = self.groups.get(&service.key);
        if let Some(groups) = groups {
            from_groups(groups, port, &mut candidates);
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
        // Intersect starting from the rarest label so large catalogs stay cheap.
        let mut lists: Vec<&Vec<&Pod>> = Vec::new();
        for (k, v) in selector {
            match self
                .labels
                .get(&(service.key.namespace.as_str(), k.as_str(), v.as_str()))
            {
                Some(list) => lists.push(list),
                None => {
                    notes.push("no pod matches the selector".into());
                    return;
                }
            }
        }
        lists.sort_by_key(|l| l.len());
        let mut missing_port = 0;
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
            let Some(target) = target else {
                missing_port += 1;
                continue;
            };
            // publishNotReadyAddresses: the controller marks every such Pod ready.
            let ready = pod.ready || service.publish_not_ready;
            candidates.add(
                Endpoint(SocketAddrV4::new(ip, target)),
                ready,
                pod.serving,
                pod.terminating,
            );
        }
        if missing_port > 0 {
            notes.push(format!(
                "{missing_port} selected pod(s) declare no port named `{}`",
                port.target
            ));
        }
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

fn from_groups(groups: &[&EndpointGroup], port: &ServicePort, candidates: &mut Candidates) {
    for group in groups {
        let matching = group.ports.iter().find(|p| {
            p.protocol == port.protocol
                && match &port.name {
                    Some(name) => p.name.as_deref() == Some(name),
                    None => group.ports.len() == 1,
                }
        });
        let Some(target) = matching else { continue };
        for address in &group.addresses {
            candidates.add(
                Endpoint(SocketAddrV4::new(address.ip, target.port)),
                address.ready,
                address.serving,
                address.terminating,
            );
        }
    }
}
