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

    pub fn resolve(&self, service: &Service, port: &ServicePort) -> Resolved {
        if let Some(groups) = self.groups.get(&service.key) {
            return from_groups(groups, port);
        }
        match &service.selector {
            Some(selector) if !selector.is_empty() => self.selected_pods(service, selector, port),
            _ => Resolved {
                endpoints: Vec::new(),
                notes: vec!["no selector and no Endpoints object".into()],
            },
        }
    }

    fn selected_pods(
        &self,
        service: &Service,
        selector: &BTreeMap<String, String>,
        port: &ServicePort,
    ) -> Resolved {
        // Intersect starting from the rarest label so large catalogs stay cheap.
        let mut lists: Vec<&Vec<&Pod>> = Vec::new();
        for (k, v) in selector {
            match self
                .labels
                .get(&(service.key.namespace.as_str(), k.as_str(), v.as_str()))
            {
                Some(list) => lists.push(list),
                None => {
                    return Resolved {
                        endpoints: Vec::new(),
                        notes: vec!["no pod matches the selector".into()],
                    }
                }
            }
        }
        lists.sort_by_key(|l| l.len());
        let mut ready = BTreeSet::new();
        let mut missing_port = 0;
        for pod in lists[0].iter() {
            if !selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
                continue;
            }
            let (Some(ip), true) = (pod.ip, pod.ready) else {
                continue;
            };
            let target = match &port.target {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Name(name) => pod
                    .ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name) && p.protocol == port.protocol)
                    .map(|p| p.port),
            };
            match target {
                Some(t) => {
                    ready.insert(Endpoint(SocketAddrV4::new(ip, t)));
                }
                None => missing_port += 1,
            }
        }
        let mut notes = Vec::new();
        if missing_port > 0 {
            notes.push(format!(
                "{missing_port} selected pod(s) declare no port named `{}`",
                port.target
            ));
        }
        Resolved {
            endpoints: ready.into_iter().collect(),
            notes,
        }
    }
}

fn from_groups(groups: &[&EndpointGroup], port: &ServicePort) -> Resolved {
    let mut ready = BTreeSet::new();
    let mut fallback = BTreeSet::new();
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
            let endpoint = Endpoint(SocketAddrV4::new(address.ip, target.port));
            if address.ready {
                ready.insert(endpoint);
            } else if address.serving && address.terminating {
                fallback.insert(endpoint);
            }
        }
    }
    // As kube-proxy does: terminating-but-serving endpoints only when nothing is ready.
    let endpoints = if ready.is_empty() { fallback } else { ready };
    Resolved {
        endpoints: endpoints.into_iter().collect(),
        notes: Vec::new(),
    }
}
