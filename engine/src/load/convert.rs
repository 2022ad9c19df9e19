//! Turns generic documents into validated objects, reporting every problem with its place.

use super::fields;
use super::positions::{document_lines, Positions};
use super::spec::{self, IntOrString, KNOWN_UNUSED};
use super::{Object, SourceFile};
use crate::diagnostics::{Diagnostic, Severity};
use crate::endpoints::special_address;
use crate::model::*;
use planners::Protocol;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

/// `ClientIP` affinity default, as in Kubernetes (3 hours).
pub const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;
const MAX_AFFINITY_SECONDS: i64 = 86_400;
/// What becomes of an Endpoints or EndpointSlice object when one of its addresses is refused.
const OTHERS_SERVED: &str = "the other addresses are served";

/// The label that hands a Service to another proxy. kube-proxy watches only Services
/// without it (`pkg/proxy` informers select `!service.kubernetes.io/service-proxy-name`);
/// portald serves those without it and those that name portald ([`PROXY_NAME`]).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The name a Service may give in [`SERVICE_PROXY_NAME_LABEL`] to be served by portald.
pub const PROXY_NAME: &str = "portald";
/// Endpoints and EndpointSlices of headless Services carry this label; kube-proxy does not
/// watch them (its EndpointSlice informer selects `!service.kubernetes.io/headless`).
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Who manages an EndpointSlice; the EndpointSlice controller's own slices say
/// [`SLICE_CONTROLLER`].
const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
const SLICE_CONTROLLER: &str = "endpointslice-controller.k8s.io";

/// Per-file context: where diagnostics go and how to find lines.
pub struct FileCtx<'a> {
    file: &'a SourceFile,
    /// Where each document starts, from a scan of the text (see [`document_lines`]).
    document_lines: Option<Vec<usize>>,
    /// The full line index (a scan of the text), made only when some other line is asked for.
    positions: OnceCell<Positions>,
    diagnostics: Vec<Diagnostic>,
}

/// Where in the file the current object is: document index and path prefix (`items[2]`).
#[derive(Clone)]
struct Place {
    doc: usize,
    prefix: String,
    object: Option<String>,
}

impl Place {
    fn path(&self, field: &str) -> String {
        match (self.prefix.is_empty(), field.is_empty()) {
            (true, _) => field.to_string(),
            (false, true) => self.prefix.clone(),
            (false, false) if field.starts_with('[') => format!("{}{field}", self.prefix),
            (false, false) => format!("{}.{field}", self.prefix),
        }
    }
}

impl<'a> FileCtx<'a> {
    /// `documents`: how many documents the parser found in the file, to find object lines
    /// with a scan ([`document_lines`]); `None` to find every line with the full index.
    pub fn new(file: &'a SourceFile, json: bool, documents: Option<usize>) -> Self {
        // For YAML the scan must have seen the documents the parser saw, or it is not trusted.
        let document_lines = documents.and_then(|documents| {
            document_lines(&file.text, json).filter(|lines| json || lines.len() == documents)
        });
        FileCtx {
            file,
            document_lines,
            positions: OnceCell::new(),
            diagnostics: Vec::new(),
        }
    }

    pub fn into_diagnostics(self) -> Vec<Diagnostic> {
        self.diagnostics
    }

    fn line(&self, place: &Place, field: &str) -> Option<usize> {
        if place.prefix.is_empty() && field.is_empty() {
            if let Some(line) = self
                .document_lines
                .as_ref()
                .and_then(|lines| lines.get(place.doc))
            {
                return Some(*line);
            }
        }
        let positions = self
            .positions
            .get_or_init(|| Positions::index(&self.file.text));
        positions.line(place.doc, &place.path(field))
    }

    fn report(
        &mut self,
        severity: Severity,
        place: &Place,
        field: &str,
        message: impl Into<String>,
    ) {
        let line = self.line(place, field);
        self.diagnostics.push(Diagnostic {
            file: self.file.path.clone(),
            line,
            severity,
            object: place.object.clone(),
            field: (!field.is_empty()).then(|| field.to_string()),
            message: message.into(),
        });
    }

    fn error(&mut self, place: &Place, field: &str, message: impl Into<String>) {
        self.report(Severity::Error, place, field, message);
    }

    fn warn(&mut self, place: &Place, field: &str, message: impl Into<String>) {
        self.report(Severity::Warning, place, field, message);
    }

    fn source(&self, place: &Place) -> SourceRef {
        SourceRef {
            file: self.file.path.clone(),
            line: self.line(place, ""),
        }
    }

    /// Converts one document (which may be a `List`).
    pub fn document(&mut self, doc: usize, value: &Value, out: &mut Vec<Object>) {
        let place = Place {
            doc,
            prefix: String::new(),
            object: None,
        };
        self.object(&place, value, out);
    }

    fn object(&mut self, place: &Place, value: &Value, out: &mut Vec<Object>) {
        if value.is_null() {
            return;
        }
        let Some(map) = value.as_object() else {
            self.error(place, "", "expected an object (a mapping with `kind`)");
            return;
        };
        let kind = map.get("kind").and_then(Value::as_str);
        let api = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let Some(kind) = kind else {
            self.error(place, "kind", "`kind` is missing");
            return;
        };
        if kind == "List" || (kind.ends_with("List") && map.contains_key("items")) {
            let items = map.get("items").and_then(Value::as_array);
            for (i, item) in items.into_iter().flatten().enumerate() {
                let child = Place {
                    doc: place.doc,
                    prefix: place.path(&format!("items[{i}]")),
                    object: None,
                };
                self.object(&child, item, out);
            }
            return;
        }
        let name = name_of(map);
        let mut place = place.clone();
        place.object = Some(format!("{kind} `{}`", name.as_deref().unwrap_or("?")));
        if let Some(text) = template_marker(value) {
            self.warn(
                &place,
                "",
                format!("looks like an unrendered template (`{text}`); skipped"),
            );
            return;
        }
        match (kind, api) {
            ("Service", "v1beta1" | "v1beta2") => self.service_v1beta1(&place, value, out),
            ("Service", "" | "v1") if map.contains_key("id") => {
                self.service_v1beta1(&place, value, out)
            }
            ("Service", "v1" | "") => self.service_v1(&place, value, out),
            ("Endpoints", "v1" | "") => self.endpoints_v1(&place, value, out),
            ("EndpointSlice", "discovery.k8s.io/v1" | "discovery.k8s.io/v1beta1") => {
                self.endpoint_slice(&place, value, out)
            }
            ("Pod", "v1" | "") => self.pod(&place, value, out),
            (kind @ ("Service" | "Endpoints" | "EndpointSlice" | "Pod"), api) => self.error(
                &place,
                "apiVersion",
                format!("apiVersion `{api}` of {kind} is not supported"),
            ),
            // A served kind misspelt is a mistake worth a warning, not a note.
            (kind, _) => match fields::suggest(kind, SERVED_KINDS) {
                Some(served) => self.warn(
                    &place,
                    "kind",
                    format!("kind `{kind}` is not served; skipped (did you mean `{served}`?)"),
                ),
                None => self.report(
                    Severity::Note,
                    &place,
                    "kind",
                    format!("kind `{kind}` is not served; skipped"),
                ),
            },
        }
    }

    /// Deserializes into a spec type, reporting type errors and unknown fields with paths.
    fn decode<T: DeserializeOwned>(
        &mut self,
        place: &Place,
        value: &Value,
        warn_unknown: bool,
    ) -> Option<T> {
        // Unknown fields, except those known and unused, in the order met.
        let mut unknown = Vec::new();
        let mut on_ignored = |path: serde_ignored::Path| {
            if warn_unknown && !is_known_unused(&path) {
                unknown.push(ignored_path(&path));
            }
        };
        // Tracking the path of a type error costs; it is done again only when there is one.
        let ignoring = serde_ignored::Deserializer::new(value, &mut on_ignored);
        if let Ok(spec) = T::deserialize(ignoring) {
            // The names `T` knows, found only when a field is unknown.
            let known = (!unknown.is_empty()).then(|| fields::known_fields::<T>(value));
            for path in unknown {
                let hint = known
                    .as_ref()
                    .and_then(|known| did_you_mean(known, &path))
                    .map(|name| format!(" (did you mean `{name}`?)"))
                    .unwrap_or_default();
                self.warn(place, &path, format!("unknown field; ignored{hint}"));
            }
            return Some(spec);
        }
        let mut skip = |_: serde_ignored::Path| {};
        let ignoring = serde_ignored::Deserializer::new(value, &mut skip);
        let result: Result<T, _> = serde_path_to_error::deserialize(ignoring);
        match result {
            Ok(spec) => Some(spec),
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                self.error(place, &path, user_terms(&e.inner().to_string()));
                None
            }
        }
    }

    fn service_v1(&mut self, place: &Place, value: &Value, out: &mut Vec<Object>) {
        let Some(spec) = self.decode::<spec::ServiceV1>(place, value, true) else {
            return;
        };
        if let Some(proxy) = spec.metadata.labels.get(SERVICE_PROXY_NAME_LABEL) {
            if proxy != PROXY_NAME {
                self.report(
                    Severity::Note,
                    place,
                    &format!("metadata.labels.{SERVICE_PROXY_NAME_LABEL}"),
                    format!(
                        "meant for the proxy `{}`, not `{PROXY_NAME}` (as kube-proxy, portald leaves it alone); skipped",
                        escape(proxy)
                    ),
                );
                return;
            }
        }
        let errors_before = self.error_count();
        // Keep checking after a bad name: every problem of the object is reported at once.
        let key = self.object_key(place, &spec.metadata);
        self.traffic_policies(place, &spec.spec);
        let service_type = match spec.spec.service_type.as_deref() {
            None | Some("ClusterIP") => ServiceType::ClusterIP,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => {
                self.report(
                    Severity::Note,
                    place,
                    "spec.type",
                    "ExternalName services have no VIP to serve; skipped",
                );
                return;
            }
            Some(other) => {
                self.error(
                    place,
                    "spec.type",
                    format!("unknown service type `{other}`"),
                );
                return;
            }
        };
        if matches!(
            service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        ) {
            self.warn(
                place,
                "spec.type",
                format!("{service_type:?}: the ClusterIP part is served; node ports and load balancers are not supported yet"),
            );
        }
        let vip = self.vip_request(place, "spec.clusterIP", spec.spec.cluster_ip.as_deref());
        let mut ports = Vec::new();
        if spec.spec.ports.is_empty() && vip != Some(VipRequest::Headless) {
            self.error(place, "spec.ports", "a service needs at least one port");
        }
        let mut names = BTreeMap::new();
        let mut numbers = BTreeSet::new();
        let multi = spec.spec.ports.len() > 1;
        for (i, p) in spec.spec.ports.iter().enumerate() {
            let field = format!("spec.ports[{i}]");
            if let Some(port) = self.service_port(place, &field, p, multi) {
                if let Some(name) = &port.name {
                    if let Some(first) = names.insert(name.clone(), i) {
                        self.error(
                            place,
                            &format!("{field}.name"),
                            format!("port name `{name}` is already used by `spec.ports[{first}]`"),
                        );
                        continue;
                    }
                }
                if !numbers.insert((port.port, port.protocol)) {
                    self.error(
                        place,
                        &format!("{field}.port"),
                        format!("port {}/{} is listed twice", port.port, port.protocol),
                    );
                    continue;
                }
                ports.push(port);
            }
        }
        let affinity = self.affinity(
            place,
            spec.spec.session_affinity.as_deref(),
            spec.spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds),
        );
        let mut external_ips = Vec::new();
        for (i, ip) in spec.spec.external_ips.iter().enumerate() {
            match ip.parse::<Ipv4Addr>() {
                Ok(ip) => {
                    let field = format!("spec.externalIPs[{i}]");
                    if !self.refuse_special(place, &field, ip, "externalIP", "not served") {
                        external_ips.push(ip);
                    }
                }
                Err(_) => self.error(
                    place,
                    &format!("spec.externalIPs[{i}]"),
                    format!("`{ip}` is not an IPv4 address"),
                ),
            }
        }
        if self.error_count() > errors_before {
            return;
        }
        let (Some(key), Some(vip), Some(affinity)) = (key, vip, affinity) else {
            return;
        };
        let health_check = self.health_check(place, spec.metadata.annotations.as_ref());
        let vip_at = self.field_ref(place, "spec.clusterIP", vip);
        out.push(Object::Service(Service {
            key,
            source: self.source(place),
            service_type,
            vip,
            vip_at,
            ports,
            selector: spec.spec.selector,
            affinity_seconds: affinity,
            external_ips,
            publish_not_ready: spec.spec.publish_not_ready_addresses.unwrap_or(false),
            health_check,
        }));
    }

    /// `internalTrafficPolicy` / `externalTrafficPolicy`: `Local` needs to know which
    /// endpoints run on this node, and portald has no node identity: every endpoint serves
    /// (as `Cluster`), which is said, never silently done.
    fn traffic_policies(&mut self, place: &Place, spec: &spec::ServiceSpecV1) {
        for (field, value) in [
            (
                "spec.internalTrafficPolicy",
                spec.internal_traffic_policy.as_deref(),
            ),
            (
                "spec.externalTrafficPolicy",
                spec.external_traffic_policy.as_deref(),
            ),
        ] {
            match value {
                None | Some("Cluster") => {}
                Some("Local") => self.warn(
                    place,
                    field,
                    "`Local` needs node-local endpoints and portald has no node identity: every endpoint serves, as with `Cluster`",
                ),
                Some(other) => self.error(
                    place,
                    field,
                    format!("`{}` is not a traffic policy (Cluster or Local)", escape(other)),
                ),
            }
        }
    }

    fn service_v1beta1(&mut self, place: &Place, value: &Value, out: &mut Vec<Object>) {
        let Some(spec) = self.decode::<spec::ServiceV1Beta1>(place, value, true) else {
            return;
        };
        let errors_before = self.error_count();
        let Some(id) = spec.id.as_deref() else {
            self.error(place, "id", "`id` is missing");
            return;
        };
        let mut place = place.clone();
        place.object = Some(format!("Service `default/{id}`"));
        let place = &place;
        if let Err(why) = check_dns_label(id) {
            self.error(
                place,
                "id",
                format!("`{}` is not a valid name: {why}", escape(id)),
            );
            return;
        }
        let port = self.port_number(place, "port", spec.port);
        let protocol = self.protocol(place, "protocol", spec.protocol.as_deref());
        let target = match &spec.container_port {
            None => port.map(TargetPort::Number),
            Some(t) => self.target_port(place, "containerPort", t),
        };
        let vip = self.vip_request(place, "portalIP", spec.portal_ip.as_deref());
        let affinity = self.affinity(place, spec.session_affinity.as_deref(), None);
        if self.error_count() > errors_before {
            return;
        }
        let (Some(port), Some(protocol), Some(target), Some(vip), Some(affinity)) =
            (port, protocol, target, vip, affinity)
        else {
            return;
        };
        let vip_at = self.field_ref(place, "portalIP", vip);
        out.push(Object::Service(Service {
            key: ObjectKey::new("default", id),
            source: self.source(place),
            service_type: ServiceType::ClusterIP,
            vip,
            vip_at,
            ports: vec![ServicePort {
                name: None,
                protocol,
                port,
                target,
            }],
            selector: spec.selector,
            affinity_seconds: affinity,
            external_ips: Vec::new(),
            publish_not_ready: false,
            health_check: None,
        }));
    }

    fn service_port(
        &mut self,
        place: &Place,
        field: &str,
        p: &spec::ServicePortV1,
        multi: bool,
    ) -> Option<ServicePort> {
        let before = self.error_count();
        let name = match &p.name {
            Some(name) if !name.is_empty() => {
                if let Err(why) = check_dns_label(name) {
                    self.error(
                        place,
                        &format!("{field}.name"),
                        format!("`{}` is not a valid port name: {why}", escape(name)),
                    );
                }
                Some(name.clone())
            }
            _ => {
                if multi {
                    self.error(
                        place,
                        &format!("{field}.name"),
                        "every port of a multi-port service needs a name",
                    );
                }
                None
            }
        };
        let protocol = self.protocol(place, &format!("{field}.protocol"), p.protocol.as_deref());
        let port = self.port_number(place, &format!("{field}.port"), p.port);
        let target = match &p.target_port {
            None => port.map(TargetPort::Number),
            Some(t) => self.target_port(place, &format!("{field}.targetPort"), t),
        };
        if self.error_count() > before {
            return None;
        }
        Some(ServicePort {
            name,
            protocol: protocol?,
            port: port?,
            target: target?,
        })
    }

    fn port_number(&mut self, place: &Place, field: &str, port: Option<i64>) -> Option<u16> {
        match port {
            None => {
                self.error(place, field, "port is missing");
                None
            }
            Some(p) if (1..=65535).contains(&p) => Some(p as u16),
            Some(p) => {
                self.error(place, field, format!("port {p} is out of range 1-65535"));
                None
            }
        }
    }

    fn target_port(&mut self, place: &Place, field: &str, t: &IntOrString) -> Option<TargetPort> {
        match t {
            IntOrString::Int(n) => self
                .port_number(place, field, Some(*n))
                .map(TargetPort::Number),
            IntOrString::Str(s) => match s.parse::<i64>() {
                Ok(n) => self
                    .port_number(place, field, Some(n))
                    .map(TargetPort::Number),
                Err(_) => match check_dns_label(s) {
                    Ok(()) => Some(TargetPort::Name(s.clone())),
                    Err(why) => {
                        self.error(
                            place,
                            field,
                            format!("`{}` is not a valid port name: {why}", escape(s)),
                        );
                        None
                    }
                },
            },
        }
    }

    fn protocol(&mut self, place: &Place, field: &str, protocol: Option<&str>) -> Option<Protocol> {
        match protocol {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => {
                self.error(place, field, "protocol SCTP is not supported (TCP or UDP)");
                None
            }
            Some(other) => {
                self.error(
                    place,
                    field,
                    format!("protocol `{}` is not TCP or UDP", escape(other)),
                );
                None
            }
        }
    }

    fn vip_request(&mut self, place: &Place, field: &str, ip: Option<&str>) -> Option<VipRequest> {
        match ip {
            None | Some("") => Some(VipRequest::Auto),
            Some("None") => Some(VipRequest::Headless),
            Some(text) => match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) => match special_address(ip) {
                    None => Some(VipRequest::Explicit(ip)),
                    Some(why) => {
                        self.error(place, field, format!("clusterIP `{ip}` may not be {why}"));
                        None
                    }
                },
                Ok(IpAddr::V6(_)) => {
                    self.error(
                        place,
                        field,
                        format!("`{text}`: IPv6 VIPs are not supported yet"),
                    );
                    None
                }
                Err(_) => {
                    self.error(
                        place,
                        field,
                        format!("`{}` is not an IP address", escape(text)),
                    );
                    None
                }
            },
        }
    }

    /// `Some(None)` = no affinity; `None` = invalid.
    fn affinity(
        &mut self,
        place: &Place,
        mode: Option<&str>,
        timeout: Option<i64>,
    ) -> Option<Option<u32>> {
        match mode {
            None | Some("None") => Some(None),
            Some("ClientIP") => match timeout {
                None => Some(Some(DEFAULT_AFFINITY_SECONDS)),
                Some(t) if (1..=MAX_AFFINITY_SECONDS).contains(&t) => Some(Some(t as u32)),
                Some(t) => {
                    self.error(
                        place,
                        "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                        format!("timeout {t} is out of range 1-{MAX_AFFINITY_SECONDS}"),
                    );
                    None
                }
            },
            Some(other) => {
                self.error(
                    place,
                    "spec.sessionAffinity",
                    format!("`{}` is not `None` or `ClientIP`", escape(other)),
                );
                None
            }
        }
    }

    fn object_key(&mut self, place: &Place, meta: &spec::ObjectMeta) -> Option<ObjectKey> {
        let Some(name) = meta.name.as_deref() else {
            self.error(place, "metadata.name", "`metadata.name` is missing");
            return None;
        };
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        let mut ok = true;
        if let Err(why) = check_dns_label(name) {
            self.error(
                place,
                "metadata.name",
                format!("`{}` is not a valid name: {why}", escape(name)),
            );
            ok = false;
        }
        if let Err(why) = check_dns_label(namespace) {
            self.error(
                place,
                "metadata.namespace",
                format!("`{}` is not a valid namespace: {why}", escape(namespace)),
            );
            ok = false;
        }
        ok.then(|| ObjectKey::new(namespace, name))
    }

    fn endpoints_v1(&mut self, place: &Place, value: &Value, out: &mut Vec<Object>) {
        let Some(spec) = self.decode::<spec::EndpointsV1>(place, value, true) else {
            return;
        };
        let Some(key) = self.object_key(place, &spec.metadata) else {
            return;
        };
        if self.is_headless(place, &spec.metadata) {
            return;
        }
        let before = self.error_count();
        let mut groups = Vec::new();
        for (s, subset) in spec.subsets.iter().enumerate() {
            let ports = self.endpoint_ports(place, &format!("subsets[{s}].ports"), &subset.ports);
            let mut addresses = Vec::new();
            for (list, ready, items) in [
                ("addresses", true, &subset.addresses),
                ("notReadyAddresses", false, &subset.not_ready_addresses),
            ] {
                for (a, addr) in items.iter().enumerate() {
                    let field = format!("subsets[{s}].{list}[{a}].ip");
                    let Some(ip) = self.endpoint_ip(place, &field, addr.ip.as_deref()) else {
                        continue;
                    };
                    if !self.refuse_special(place, &field, ip, "endpoint", OTHERS_SERVED) {
                        addresses.push(EndpointAddress {
                            ip,
                            ready,
                            serving: ready,
                            terminating: false,
                            field,
                        });
                    }
                }
            }
            groups.push(EndpointGroup {
                service: key.clone(),
                object: place.object.clone().unwrap_or_default(),
                source: self.source(place),
                kind: GroupKind::Endpoints,
                addresses,
                ports,
            });
        }
        if self.error_count() == before {
            out.extend(groups.into_iter().map(Object::Endpoints));
        }
    }

    fn endpoint_slice(&mut self, place: &Place, value: &Value, out: &mut Vec<Object>) {
        if value
            .get("addressType")
            .and_then(Value::as_str)
            .is_some_and(|t| t != "IPv4")
        {
            self.report(
                Severity::Note,
                place,
                "addressType",
                "only IPv4 endpoint slices are served; skipped",
            );
            return;
        }
        let Some(spec) = self.decode::<spec::EndpointSliceV1>(place, value, true) else {
            return;
        };
        let Some(slice_key) = self.object_key(place, &spec.metadata) else {
            return;
        };
        let Some(service) = spec.metadata.labels.get("kubernetes.io/service-name") else {
            self.error(
                place,
                "metadata.labels",
                "label `kubernetes.io/service-name` is missing: the slice belongs to no service",
            );
            return;
        };
        if self.is_headless(place, &spec.metadata) {
            return;
        }
        let kind = match spec.metadata.labels.get(MANAGED_BY_LABEL) {
            Some(manager) if manager == SLICE_CONTROLLER => GroupKind::ControllerSlice,
            _ => GroupKind::EndpointSlice,
        };
        let before = self.error_count();
        let ports = self.endpoint_ports(place, "ports", &spec.ports);
        let mut addresses = Vec::new();
        for (e, endpoint) in spec.endpoints.iter().enumerate() {
            // The API says consumers use the first address only.
            let field = format!("endpoints[{e}].addresses[0]");
            let Some(first) = endpoint.addresses.first() else {
                self.error(
                    place,
                    &format!("endpoints[{e}].addresses"),
                    "an endpoint needs an address",
                );
                continue;
            };
            let Some(ip) = self.endpoint_ip(place, &field, Some(first)) else {
                continue;
            };
            if !self.refuse_special(place, &field, ip, "endpoint", OTHERS_SERVED) {
                let ready = endpoint.conditions.ready.unwrap_or(true);
                addresses.push(EndpointAddress {
                    ip,
                    ready,
                    serving: endpoint.conditions.serving.unwrap_or(ready),
                    terminating: endpoint.conditions.terminating.unwrap_or(false),
                    field,
                });
            }
        }
        if self.error_count() == before {
            out.push(Object::Endpoints(EndpointGroup {
                service: ObjectKey::new(&slice_key.namespace, service),
                object: place.object.clone().unwrap_or_default(),
                source: self.source(place),
                kind,
                addresses,
                ports,
            }));
        }
    }

    /// Endpoints and slices labelled [`HEADLESS_LABEL`] are skipped with a note, as kube-proxy
    /// never sees them.
    fn is_headless(&mut self, place: &Place, meta: &spec::ObjectMeta) -> bool {
        let headless = meta.labels.contains_key(HEADLESS_LABEL);
        if headless {
            self.report(
                Severity::Note,
                place,
                &format!("metadata.labels.{HEADLESS_LABEL}"),
                "endpoints of a headless service: no proxy serves them (as kube-proxy); skipped",
            );
        }
        headless
    }

    fn endpoint_ports(
        &mut self,
        place: &Place,
        field: &str,
        ports: &[spec::EndpointPortSpec],
    ) -> Vec<NamedPort> {
        let mut out = Vec::new();
        for (i, p) in ports.iter().enumerate() {
            let f = format!("{field}[{i}]");
            let protocol = self.protocol(place, &format!("{f}.protocol"), p.protocol.as_deref());
            let port = self.port_number(place, &format!("{f}.port"), p.port);
            if let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) {
                if let Err(why) = check_dns_label(name) {
                    self.error(
                        place,
                        &format!("{f}.name"),
                        format!("`{}` is not a valid port name: {why}", escape(name)),
                    );
                    continue;
                }
            }
            if let (Some(protocol), Some(port)) = (protocol, port) {
                out.push(NamedPort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    port,
                    protocol,
                });
            }
        }
        out
    }

    fn endpoint_ip(&mut self, place: &Place, field: &str, ip: Option<&str>) -> Option<Ipv4Addr> {
        match ip.map(str::parse::<IpAddr>) {
            None => {
                self.error(place, field, "address is missing");
                None
            }
            Some(Ok(IpAddr::V4(ip))) => Some(ip),
            Some(Ok(IpAddr::V6(_))) => {
                self.warn(place, field, "IPv6 endpoints are not served yet; skipped");
                None
            }
            Some(Err(_)) => {
                self.error(
                    place,
                    field,
                    format!("`{}` is not an IP address", escape(ip.unwrap_or_default())),
                );
                None
            }
        }
    }

    /// Reports `ip` and returns true when it is an address no cluster accepts
    /// ([`special_address`]): a warning, since the rest of the object still serves.
    fn refuse_special(
        &mut self,
        place: &Place,
        field: &str,
        ip: Ipv4Addr,
        what: &str,
        outcome: &str,
    ) -> bool {
        let Some(why) = special_address(ip) else {
            return false;
        };
        self.warn(
            place,
            field,
            format!("{what} `{ip}` refused: it may not be {why}; {outcome}"),
        );
        true
    }

    fn pod(&mut self, place: &Place, value: &Value, out: &mut Vec<Object>) {
        let Some(spec) = self.decode::<spec::PodV1>(place, value, false) else {
            return;
        };
        let Some(key) = self.object_key(place, &spec.metadata) else {
            return;
        };
        let before = self.error_count();
        let ip = self.pod_ip(place, &spec.status);
        let condition_ready = match &spec.status.conditions {
            Some(conditions)
                if conditions
                    .iter()
                    .any(|c| c.kind.as_deref() == Some("Ready")) =>
            {
                conditions.iter().any(|c| {
                    c.kind.as_deref() == Some("Ready") && c.status.as_deref() == Some("True")
                })
            }
            // A pod written by hand has no kubelet to report conditions: running counts as ready.
            _ => matches!(spec.status.phase.as_deref(), None | Some("Running")),
        };
        // The EndpointSlice controller's rules (pkg/controller/endpointslice `podToEndpoint`,
        // `ShouldPodBeInEndpoints`): a finished Pod is never an endpoint; a terminating one is
        // not ready but still serving while its Ready condition holds.
        let finished = matches!(spec.status.phase.as_deref(), Some("Succeeded" | "Failed"));
        let terminating = spec
            .metadata
            .deletion_timestamp
            .as_ref()
            .is_some_and(|t| !t.is_null());
        let mut ports = Vec::new();
        for (c, container) in spec.spec.containers.iter().enumerate() {
            for (i, p) in container.ports.iter().enumerate() {
                let f = format!("spec.containers[{c}].ports[{i}]");
                let protocol =
                    self.protocol(place, &format!("{f}.protocol"), p.protocol.as_deref());
                let port = self.port_number(place, &format!("{f}.containerPort"), p.container_port);
                if let (Some(protocol), Some(port)) = (protocol, port) {
                    ports.push(NamedPort {
                        name: p.name.clone(),
                        port,
                        protocol,
                    });
                }
            }
        }
        let probes = self.pod_probes(place, &spec.spec.containers);
        if self.error_count() == before {
            out.push(Object::Pod(Pod {
                key,
                source: self.source(place),
                labels: spec.metadata.labels,
                ip,
                ready: condition_ready && !terminating,
                serving: condition_ready,
                terminating,
                finished,
                ports,
                probes,
            }));
        }
    }

    /// The containers' readiness probes, each bad field an error naming it (the API server
    /// refuses such a Pod). Liveness and startup probes restart containers, which is the
    /// kubelet's job, not portald's: one note per Pod. An `exec` probe cannot run here: a
    /// warning, and the Pod's own Ready condition is used.
    fn pod_probes(&mut self, place: &Place, containers: &[spec::Container]) -> Vec<PodProbe> {
        let mut out = Vec::new();
        let mut restarting = Vec::new();
        for (c, container) in containers.iter().enumerate() {
            let at = format!("spec.containers[{c}]");
            for (kind, probe) in [
                ("livenessProbe", &container.liveness_probe),
                ("startupProbe", &container.startup_probe),
            ] {
                if probe.as_ref().is_some_and(|p| !p.is_null()) {
                    restarting.push(format!("{at}.{kind}"));
                }
            }
            let Some(value) = container.readiness_probe.as_ref().filter(|v| !v.is_null()) else {
                continue;
            };
            let field = format!("{at}.readinessProbe");
            for unknown in crate::health::unknown_fields(value) {
                self.warn(
                    place,
                    &format!("{field}.{unknown}"),
                    "unknown field; ignored",
                );
            }
            let probe = match crate::health::parse_probe(value, false) {
                Ok(probe) => probe,
                Err(problems) => {
                    for problem in problems {
                        let f = if problem.field.is_empty() {
                            field.clone()
                        } else {
                            format!("{field}.{}", problem.field)
                        };
                        self.error(place, &f, problem.message);
                    }
                    continue;
                }
            };
            if probe.action == crate::health::ProbeAction::Exec {
                self.warn(
                    place,
                    &format!("{field}.exec"),
                    "an exec probe cannot run here; the Pod's own Ready condition is used",
                );
                continue;
            }
            let port = match probe.port() {
                Some(crate::health::ProbePort::Number(n)) => Ok(*n),
                Some(crate::health::ProbePort::Name(name)) => container
                    .ports
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .and_then(|p| p.container_port)
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| {
                        format!("the container declares no port named `{}`", escape(name))
                    }),
                _ => Err("the probe names no port".to_string()),
            };
            if let Err(why) = &port {
                let kind = probe.kind();
                let handler = match kind {
                    "tcp" => "tcpSocket",
                    "http" => "httpGet",
                    _ => "grpc",
                };
                self.warn(
                    place,
                    &format!("{field}.{handler}.port"),
                    format!("{why}: the probe fails until it does"),
                );
            }
            out.push(PodProbe {
                container: container.name.clone().unwrap_or_else(|| format!("#{c}")),
                probe,
                port,
            });
        }
        if !restarting.is_empty() {
            self.report(
                Severity::Note,
                place,
                &restarting[0],
                format!(
                    "ignored{}: liveness and startup probes restart containers, which is the kubelet's job, not portald's",
                    if restarting.len() > 1 {
                        format!(" (with {})", restarting[1..].join(", "))
                    } else {
                        String::new()
                    }
                ),
            );
        }
        out
    }

    /// The `portald.io/health-check` annotation of a Service; a bad value is a warning and
    /// the service serves unchecked.
    fn health_check(
        &mut self,
        place: &Place,
        annotations: Option<&Value>,
    ) -> Option<crate::health::Probe> {
        use crate::health::HEALTH_CHECK_ANNOTATION as KEY;
        let value = annotations?.get(KEY)?;
        let line = self.line(place, &format!("metadata.annotations.{KEY}"));
        let warn = |this: &mut Self, below: &str, message: String| {
            let field = format!(
                "metadata.annotations[\"{KEY}\"]{}",
                if below.is_empty() {
                    String::new()
                } else {
                    format!(".{below}")
                }
            );
            this.diagnostics.push(Diagnostic {
                file: this.file.path.clone(),
                line,
                severity: Severity::Warning,
                object: place.object.clone(),
                field: Some(field),
                message: format!("{message}; the service serves unchecked"),
            });
        };
        let Some(text) = value.as_str() else {
            warn(
                self,
                "",
                "expected a string (`tcp`, `http` or a JSON probe)".into(),
            );
            return None;
        };
        if let Ok(value) = serde_json::from_str::<Value>(text) {
            for unknown in crate::health::unknown_fields(&value) {
                let field = format!("metadata.annotations[\"{KEY}\"].{unknown}");
                self.diagnostics.push(Diagnostic {
                    file: self.file.path.clone(),
                    line,
                    severity: Severity::Warning,
                    object: place.object.clone(),
                    field: Some(field),
                    message: "unknown field; ignored".into(),
                });
            }
        }
        match crate::health::parse_annotation(text) {
            Ok(probe) => Some(probe),
            Err(problems) => {
                for problem in problems {
                    warn(self, &problem.field, problem.message);
                }
                None
            }
        }
    }

    /// The Pod's IPv4 address: `status.podIP`, else the first IPv4 one of `status.podIPs` (a
    /// dual-stack Pod whose primary family is IPv6 still serves on its IPv4 address).
    fn pod_ip(&mut self, place: &Place, status: &spec::PodStatus) -> Option<Ipv4Addr> {
        let mut candidates: Vec<(String, &str)> = Vec::new();
        if let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
            candidates.push(("status.podIP".into(), ip));
        }
        for (i, entry) in status.pod_ips.iter().enumerate() {
            if let Some(ip) = entry.ip.as_deref() {
                candidates.push((format!("status.podIPs[{i}].ip"), ip));
            }
        }
        for (field, ip) in &candidates {
            if ip.parse::<IpAddr>().is_err() {
                self.endpoint_ip(place, field, Some(ip));
            }
        }
        let v4 = candidates
            .iter()
            .find(|(_, ip)| ip.parse::<Ipv4Addr>().is_ok());
        match v4 {
            Some((field, ip)) => self.endpoint_ip(place, field, Some(ip)).filter(|ip| {
                !self.refuse_special(place, field, *ip, "pod IP", "the pod is no endpoint")
            }),
            // No IPv4 address: the first one says why (IPv6 not served, or not an address).
            None => {
                let (field, ip) = candidates.first()?;
                self.endpoint_ip(place, field, Some(ip))
            }
        }
    }

    fn field_ref(&self, place: &Place, field: &str, vip: VipRequest) -> Option<FieldRef> {
        matches!(vip, VipRequest::Explicit(_)).then(|| FieldRef {
            field: field.to_string(),
            line: self.line(place, field),
        })
    }

    fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }
}

fn name_of(map: &serde_json::Map<String, Value>) -> Option<String> {
    let meta = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str);
    let name = meta.or_else(|| map.get("id").and_then(Value::as_str))?;
    let namespace = map
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    Some(escape(&format!("{namespace}/{name}")))
}

/// Finds a `{{ ... }}` placeholder in the object's name: the file is a template.
fn template_marker(value: &Value) -> Option<String> {
    let name = value
        .get("metadata")
        .and_then(|m| m.get("name"))
        .or_else(|| value.get("id"))
        .and_then(Value::as_str)?;
    name.contains("{{").then(|| name.to_string())
}

/// Kubernetes' DNS-1123 label: what names, namespaces and port names may be.
pub fn check_dns_label(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.len() > 63 {
        return Err("it is longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lower-case letters, digits and `-` are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("it must start and end with a letter or digit");
    }
    Ok(())
}

/// Shows hostile text safely inside a message: control characters and quotes escaped.
pub fn escape(text: &str) -> String {
    let escaped: String = text.escape_debug().collect();
    if escaped.len() > 80 {
        format!("{}...", escaped.chars().take(77).collect::<String>())
    } else {
        escaped
    }
}

/// Whether an ignored field is one of [`KNOWN_UNUSED`] or below one: its pattern (`[]` for
/// every index, as in `spec.ports[].nodePort`) equals or extends an entry.
fn is_known_unused(path: &serde_ignored::Path) -> bool {
    fn pattern(path: &serde_ignored::Path, out: &mut String) {
        match path {
            serde_ignored::Path::Root => {}
            serde_ignored::Path::Seq { parent, .. } => {
                pattern(parent, out);
                out.push_str("[]");
            }
            serde_ignored::Path::Map { parent, key } => {
                pattern(parent, out);
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => pattern(parent, out),
        }
    }
    let mut text = String::new();
    pattern(path, &mut text);
    KNOWN_UNUSED.iter().any(|known| {
        text.strip_prefix(known)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

/// serde's wording in the terms of a YAML or JSON file: `invalid type: string "abc",
/// expected i64` becomes `expected a number, found the string "abc"`. Messages of another
/// shape (`missing field`, portald's own) pass unchanged.
fn user_terms(message: &str) -> String {
    fn expected(what: &str) -> String {
        let what = what.trim();
        match what {
            "i8" | "i16" | "i32" | "i64" | "i128" | "u8" | "u16" | "u32" | "u64" | "u128"
            | "isize" | "usize" => "a whole number".to_string(),
            "f32" | "f64" => "a number".to_string(),
            "a string" | "string" | "a borrowed string" | "a character" => "a string".into(),
            "a boolean" | "bool" => "true or false".to_string(),
            "a sequence" | "sequence" => "a list".to_string(),
            "a map" | "map" => "a mapping (`key: value` lines)".to_string(),
            _ if what.starts_with("struct ") => "a mapping (`key: value` lines)".to_string(),
            _ if what.contains("untagged enum IntOrString") => {
                "a port number or a port name".to_string()
            }
            _ => what.to_string(),
        }
    }
    fn found(what: &str) -> String {
        let (kind, value) = what.split_once(' ').unwrap_or((what, ""));
        let value = value.trim_matches('`');
        let noun = match kind {
            "string" => "the string",
            "integer" => "the number",
            "floating" => return format!("the number {}", value.trim_start_matches("point `")),
            "boolean" => "",
            "sequence" => return "a list".to_string(),
            "map" => return "a mapping".to_string(),
            "unit" | "null" => return "nothing (null)".to_string(),
            _ => return what.to_string(),
        };
        if noun.is_empty() {
            value.to_string()
        } else {
            format!("{noun} {value}")
        }
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        if let Some((what, wanted)) = rest.split_once(", expected ") {
            return format!("expected {}, found {}", expected(wanted), found(what));
        }
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        if let Some((what, wanted)) = rest.split_once(", expected ") {
            let range = match wanted.trim() {
                "u16" => " from 0 to 65535",
                "u32" => " from 0 to 4294967295",
                "u8" => " from 0 to 255",
                _ => "",
            };
            return format!(
                "expected {}{range}, found {}",
                expected(wanted),
                found(what)
            );
        }
    }
    if message.starts_with("data did not match any variant of untagged enum IntOrString") {
        return "expected a port number or a port name".to_string();
    }
    message.to_string()
}

/// The kinds portald reads (Kubernetes spelling: kinds are case-sensitive).
const SERVED_KINDS: [&str; 4] = ["Service", "Endpoints", "EndpointSlice", "Pod"];

/// A known field close to the unknown one at `path` (`spec.ports[0].targetport`), among
/// the fields of the struct it was written in.
fn did_you_mean<'k>(known: &'k fields::KnownFields, path: &str) -> Option<&'k str> {
    let (parent, key) = match path.rsplit_once('.') {
        Some((parent, key)) => (parent, key),
        None => ("", path),
    };
    // `spec.ports[0]` → `spec.ports[]`, the pattern the probe records.
    let mut pattern = String::with_capacity(parent.len());
    let mut in_index = false;
    for c in parent.chars() {
        match c {
            '[' => {
                in_index = true;
                pattern.push('[');
            }
            ']' => {
                in_index = false;
                pattern.push(']');
            }
            _ if in_index => {}
            c => pattern.push(c),
        }
    }
    fields::suggest(key, known.get(&pattern)?.iter().copied())
}

/// `spec.ports[0].nodePort`: the path of an ignored field, as diagnostics name it.
fn ignored_path(path: &serde_ignored::Path) -> String {
    fn walk(path: &serde_ignored::Path, exact: &mut String) {
        match path {
            serde_ignored::Path::Root => {}
            serde_ignored::Path::Seq { parent, index } => {
                walk(parent, exact);
                exact.push_str(&format!("[{index}]"));
            }
            serde_ignored::Path::Map { parent, key } => {
                walk(parent, exact);
                if !exact.is_empty() {
                    exact.push('.');
                }
                exact.push_str(key);
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => walk(parent, exact),
        }
    }
    let mut exact = String::new();
    walk(path, &mut exact);
    exact
}

#[cfg(test)]
mod wording_tests {
    use super::user_terms;

    #[test]
    fn serde_wording_is_told_in_the_terms_of_a_yaml_or_json_file() {
        for (serde, user) in [
            (
                "invalid type: string \"abc\", expected i64",
                "expected a whole number, found the string \"abc\"",
            ),
            (
                "invalid type: integer `5`, expected a string",
                "expected a string, found the number 5",
            ),
            (
                "invalid type: string \"yes\", expected a boolean",
                "expected true or false, found the string \"yes\"",
            ),
            (
                "invalid type: map, expected a sequence",
                "expected a list, found a mapping",
            ),
            (
                "invalid type: sequence, expected struct ObjectMeta",
                "expected a mapping (`key: value` lines), found a list",
            ),
            (
                "invalid value: integer `70000`, expected u16",
                "expected a whole number from 0 to 65535, found the number 70000",
            ),
            (
                "data did not match any variant of untagged enum IntOrString",
                "expected a port number or a port name",
            ),
            ("missing field `name`", "missing field `name`"),
        ] {
            assert_eq!(user_terms(serde), user, "{serde}");
        }
    }
}
