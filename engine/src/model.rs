//! Validated domain types: what the engine sees once the files have been read and checked.

use planners::Protocol;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

/// `namespace/name` of an object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where an object came from: the file (relative to the services directory) and line.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct SourceRef {
    pub file: String,
    pub line: Option<usize>,
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.file),
            None => f.write_str(&self.file),
        }
    }
}

/// A field of an object: its path and line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FieldRef {
    pub field: String,
    pub line: Option<usize>,
}

/// A service's virtual IP (portal IP). Never an endpoint, never a listener address.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct Vip(pub Ipv4Addr);

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A local port a userspace proxy listener holds.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct ProxyPort(pub u16);

impl fmt::Display for ProxyPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An address of a backend that serves a service port.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct Endpoint(pub SocketAddrV4);

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The port on the endpoints, by number or by the name of a container / endpoint port.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(untagged)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => n.fmt(f),
            TargetPort::Name(n) => f.write_str(n),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub protocol: Protocol,
    pub port: u16,
    pub target: TargetPort,
}

impl ServicePort {
    /// The name used in rule comments and listener names: the port's name, else its number.
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.port.to_string())
    }
}

/// How the service gets its VIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "ip")]
pub enum VipRequest {
    /// Allocated from the portal CIDR.
    Auto,
    /// `spec.clusterIP` / `portalIP` given in the file.
    Explicit(Ipv4Addr),
    /// `clusterIP: None`: no VIP, nothing to proxy.
    Headless,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
    ExternalName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub key: ObjectKey,
    pub source: SourceRef,
    pub service_type: ServiceType,
    pub vip: VipRequest,
    /// Where an explicit VIP was written, for conflicts found later.
    pub vip_at: Option<FieldRef>,
    pub ports: Vec<ServicePort>,
    /// `None` when the service has no selector (endpoints come from Endpoints objects).
    pub selector: Option<BTreeMap<String, String>>,
    /// `ClientIP` affinity timeout in seconds.
    pub affinity_seconds: Option<u32>,
    pub external_ips: Vec<Ipv4Addr>,
    /// `spec.publishNotReadyAddresses`: every selected Pod that is not finished serves, ready
    /// or not (the EndpointSlice controller marks them ready).
    #[serde(default)]
    pub publish_not_ready: bool,
    /// The `portald.io/health-check` annotation: how portald checks the endpoints of this
    /// Service's Endpoints objects and EndpointSlices (Pods are judged by their own probes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<crate::health::Probe>,
}

/// One backend address from an Endpoints or EndpointSlice object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointAddress {
    pub ip: Ipv4Addr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// The field it was read from (`subsets[0].addresses[1].ip`), for a refusal found later.
    pub field: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// Which object an [`EndpointGroup`] came from: it decides whether a Service with a selector
/// uses it (see `catalog::assemble`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupKind {
    /// A v1 Endpoints subset.
    Endpoints,
    /// An EndpointSlice managed by someone other than the EndpointSlice controller.
    EndpointSlice,
    /// An EndpointSlice labelled `endpointslice.kubernetes.io/managed-by:
    /// endpointslice-controller.k8s.io`: on a cluster the controller rewrites it from the Pods.
    ControllerSlice,
}

/// Addresses that share a port list: an Endpoints subset or an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointGroup {
    pub service: ObjectKey,
    /// The object it came from, as diagnostics name it (``EndpointSlice `prod/api-1` ``).
    pub object: String,
    pub source: SourceRef,
    pub kind: GroupKind,
    pub addresses: Vec<EndpointAddress>,
    pub ports: Vec<NamedPort>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pod {
    pub key: ObjectKey,
    pub source: SourceRef,
    pub labels: BTreeMap<String, String>,
    pub ip: Option<Ipv4Addr>,
    /// As the EndpointSlice controller computes it: the Ready condition, false while
    /// terminating.
    pub ready: bool,
    /// The Ready condition whatever the termination (the slice's `serving`).
    pub serving: bool,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// `status.phase` is `Succeeded` or `Failed`: never an endpoint.
    pub finished: bool,
    pub ports: Vec<NamedPort>,
    /// The containers' `readinessProbe`s portald runs (an `exec` probe is not among them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<PodProbe>,
}

/// One container's readiness probe, its port resolved against that container's ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodProbe {
    /// The container's name, else `#<index>`.
    pub container: String,
    pub probe: crate::health::Probe,
    /// The port probed on the Pod's IP, or why none can be (a named port the container
    /// does not declare): the probe then fails with that reason, as the kubelet's does.
    pub port: Result<u16, String>,
}

/// Everything valid that was loaded, keyed for deterministic iteration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    pub services: BTreeMap<ObjectKey, Service>,
    pub endpoint_groups: Vec<EndpointGroup>,
    pub pods: Vec<Pod>,
    /// portald's own judgements of the Pods and endpoints it checks, applied when the
    /// endpoints are resolved; empty without a daemon (the files' conditions hold).
    #[serde(skip)]
    pub health: crate::health::Health,
}
