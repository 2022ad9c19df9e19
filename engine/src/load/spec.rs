//! Serde mirrors of the file formats (raw, unvalidated), Kubernetes spelling.

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Set when the object is being deleted (read for Pods: a terminating Pod).
    pub deletion_timestamp: Option<serde_json::Value>,
    /// Kept raw: only `portald.io/health-check` is read, and a value of another type
    /// elsewhere in the map is not portald's concern.
    pub annotations: Option<serde_json::Value>,
}

/// Fields of Kubernetes objects that portald reads past without comment.
pub const KNOWN_UNUSED: &[&str] = &[
    "apiVersion",
    "kind",
    "status",
    "metadata.uid",
    "metadata.resourceVersion",
    "metadata.creationTimestamp",
    "metadata.generation",
    "metadata.generateName",
    "metadata.managedFields",
    "metadata.ownerReferences",
    "metadata.finalizers",
    "metadata.selfLink",
    "spec.clusterIPs",
    "spec.ipFamilies",
    "spec.ipFamilyPolicy",
    "spec.loadBalancerIP",
    "spec.loadBalancerSourceRanges",
    "spec.loadBalancerClass",
    "spec.healthCheckNodePort",
    "spec.allocateLoadBalancerNodePorts",
    "spec.externalName",
    "spec.trafficDistribution",
    "spec.ports[].nodePort",
    "spec.ports[].appProtocol",
    "spec.sessionAffinityConfig.clientIP",
    "subsets[].addresses[].hostname",
    "subsets[].addresses[].nodeName",
    "subsets[].addresses[].targetRef",
    "subsets[].notReadyAddresses[].hostname",
    "subsets[].notReadyAddresses[].nodeName",
    "subsets[].notReadyAddresses[].targetRef",
    "subsets[].ports[].appProtocol",
    "addressType",
    "endpoints[].hostname",
    "endpoints[].nodeName",
    "endpoints[].zone",
    "endpoints[].targetRef",
    "endpoints[].hints",
    "endpoints[].deprecatedTopology",
    "ports[].appProtocol",
    // v1beta1
    "labels",
    "createExternalLoadBalancer",
    "publicIPs",
    "creationTimestamp",
    "resourceVersion",
    "selfLink",
    "uid",
    "namespace",
];

/// An `int-or-string` field.
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceV1 {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpecV1,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpecV1 {
    #[serde(default)]
    pub ports: Vec<ServicePortV1>,
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "type")]
    pub service_type: Option<String>,
    pub session_affinity: Option<String>,
    pub session_affinity_config: Option<SessionAffinityConfig>,
    #[serde(rename = "externalIPs", default)]
    pub external_ips: Vec<String>,
    pub publish_not_ready_addresses: Option<bool>,
    pub internal_traffic_policy: Option<String>,
    pub external_traffic_policy: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct SessionAffinityConfig {
    #[serde(rename = "clientIP")]
    pub client_ip: Option<ClientIpConfig>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClientIpConfig {
    pub timeout_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePortV1 {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: Option<i64>,
    pub target_port: Option<IntOrString>,
}

/// The seed's 2014 format (`apache-service.json`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceV1Beta1 {
    pub id: Option<String>,
    pub port: Option<i64>,
    pub container_port: Option<IntOrString>,
    pub protocol: Option<String>,
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(rename = "portalIP")]
    pub portal_ip: Option<String>,
    pub session_affinity: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointsV1 {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub subsets: Vec<EndpointSubset>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSubset {
    #[serde(default)]
    pub addresses: Vec<EndpointAddressSpec>,
    #[serde(default)]
    pub not_ready_addresses: Vec<EndpointAddressSpec>,
    #[serde(default)]
    pub ports: Vec<EndpointPortSpec>,
}

#[derive(Debug, Deserialize)]
pub struct EndpointAddressSpec {
    pub ip: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct EndpointPortSpec {
    pub name: Option<String>,
    pub port: Option<i64>,
    pub protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSliceV1 {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub endpoints: Vec<SliceEndpoint>,
    #[serde(default)]
    pub ports: Vec<EndpointPortSpec>,
}

#[derive(Debug, Deserialize)]
pub struct SliceEndpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: SliceConditions,
}

/// Conditions are tri-state in the API: absent `ready` means ready.
#[derive(Debug, Deserialize, Default)]
pub struct SliceConditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

/// Only what portald reads of a Pod; the rest of a Pod is passed over silently.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodV1 {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Deserialize, Default)]
pub struct PodSpec {
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: Option<String>,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    /// Kept raw: checked field by field in `health::probe`, so that every bad field is named.
    pub readiness_probe: Option<serde_json::Value>,
    pub liveness_probe: Option<serde_json::Value>,
    pub startup_probe: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: Option<i64>,
    pub protocol: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    /// Dual-stack Pods list one address per family here (`podIP` is the first).
    #[serde(rename = "podIPs", default)]
    pub pod_ips: Vec<PodIp>,
    pub phase: Option<String>,
    pub conditions: Option<Vec<PodCondition>>,
}

#[derive(Debug, Deserialize)]
pub struct PodIp {
    pub ip: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct PodCondition {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub status: Option<String>,
}
