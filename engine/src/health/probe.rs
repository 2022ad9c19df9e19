//! The probe definition as Kubernetes has it (`core/v1 Probe`), read from a Pod container's
//! `readinessProbe` or a Service's `portald.io/health-check` annotation, with the API's
//! defaults (`pkg/apis/core/v1/defaults.go` `SetDefaults_Probe`) and validation
//! (`pkg/apis/core/validation/validation.go` `validateProbe`, `validateHTTPGetAction`,
//! `validateTCPSocketAction`, `validateGRPCAction`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// `periodSeconds` when absent or 0 (Kubernetes' default).
pub const DEFAULT_PERIOD_SECONDS: u32 = 10;
/// `timeoutSeconds` when absent or 0.
pub const DEFAULT_TIMEOUT_SECONDS: u32 = 1;
/// `successThreshold` when absent or 0.
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 1;
/// `failureThreshold` when absent or 0.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 3;

/// The Service annotation that asks portald to check the endpoints of its Endpoints objects
/// and EndpointSlices: `tcp`, `http` or a JSON object in the Probe shape.
pub const HEALTH_CHECK_ANNOTATION: &str = "portald.io/health-check";

/// A validated probe, defaults applied. Times are whole seconds, as in the API.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Probe {
    pub action: ProbeAction,
    pub initial_delay_seconds: u32,
    /// At least 1.
    pub period_seconds: u32,
    /// At least 1.
    pub timeout_seconds: u32,
    /// Consecutive successes that make a not-ready target ready; at least 1.
    pub success_threshold: u32,
    /// Consecutive failures that make a ready target not ready; at least 1.
    pub failure_threshold: u32,
}

/// Where a probe connects: a number, a container port's name, or (in the annotation, when
/// no port is given) the endpoint's own port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbePort {
    Number(u16),
    Name(String),
    Endpoint,
}

impl fmt::Display for ProbePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbePort::Number(n) => n.fmt(f),
            ProbePort::Name(n) => f.write_str(n),
            ProbePort::Endpoint => f.write_str("the endpoint's port"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scheme {
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "HTTPS")]
    Https,
}

/// What a probe does. Exactly one handler, as the API requires.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeAction {
    TcpSocket {
        port: ProbePort,
    },
    HttpGet {
        scheme: Scheme,
        /// Starts with `/` (the kubelet adds one when missing).
        path: String,
        port: ProbePort,
        /// The `Host` header; `None`: the target's address.
        host: Option<String>,
        headers: Vec<(String, String)>,
    },
    Grpc {
        port: ProbePort,
        /// The `service` of the grpc.health.v1 request; empty asks for the server as a whole.
        service: String,
    },
    /// Runs a command in the container: impossible here, the Pod's own Ready condition holds.
    Exec,
}

impl Probe {
    /// The check's type as metrics and `status` name it: `tcp`, `http`, `grpc`, `exec`.
    pub fn kind(&self) -> &'static str {
        match self.action {
            ProbeAction::TcpSocket { .. } => "tcp",
            ProbeAction::HttpGet { .. } => "http",
            ProbeAction::Grpc { .. } => "grpc",
            ProbeAction::Exec => "exec",
        }
    }

    /// The port the action names.
    pub fn port(&self) -> Option<&ProbePort> {
        match &self.action {
            ProbeAction::TcpSocket { port }
            | ProbeAction::HttpGet { port, .. }
            | ProbeAction::Grpc { port, .. } => Some(port),
            ProbeAction::Exec => None,
        }
    }

    /// A probe with Kubernetes' default timing around `action`.
    pub fn with_defaults(action: ProbeAction) -> Probe {
        Probe {
            action,
            initial_delay_seconds: 0,
            period_seconds: DEFAULT_PERIOD_SECONDS,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
        }
    }

    /// How it is checked, in a few words, for `status`:
    /// `httpGet :8080/healthz every 10s, timeout 1s, 3 failures out`.
    pub fn describe(&self, port: u16) -> String {
        let what = match &self.action {
            ProbeAction::TcpSocket { .. } => format!("tcpSocket :{port}"),
            ProbeAction::HttpGet { scheme, path, .. } => {
                let s = if *scheme == Scheme::Https {
                    "https "
                } else {
                    ""
                };
                format!("httpGet {s}:{port}{path}")
            }
            ProbeAction::Grpc { service, .. } if service.is_empty() => format!("grpc :{port}"),
            ProbeAction::Grpc { service, .. } => format!("grpc :{port} service {service}"),
            ProbeAction::Exec => "exec".to_string(),
        };
        format!(
            "{what} every {}s, timeout {}s, {} failures out, {} successes in",
            self.period_seconds,
            self.timeout_seconds,
            self.failure_threshold,
            self.success_threshold
        )
    }
}

/// One problem of a probe: the field below the probe (`httpGet.port`, empty for the probe
/// itself) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeProblem {
    pub field: String,
    pub message: String,
}

/// Reads a probe object (`readinessProbe`, or the annotation's JSON). `port_optional`: a
/// missing port means the endpoint's own port (the annotation) rather than an error.
/// Returns the probe, or every problem found (each naming its field).
pub fn parse_probe(value: &Value, port_optional: bool) -> Result<Probe, Vec<ProbeProblem>> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, message: String| {
        problems.push(ProbeProblem {
            field: field.to_string(),
            message,
        })
    };
    let Some(map) = value.as_object() else {
        problem("", "expected a mapping (`key: value` lines)".into());
        return Err(problems);
    };
    let handlers: Vec<&str> = ["exec", "httpGet", "tcpSocket", "grpc"]
        .into_iter()
        .filter(|h| map.get(*h).is_some_and(|v| !v.is_null()))
        .collect();
    let action = match handlers.as_slice() {
        [] => {
            problem(
                "",
                "must specify a handler type (`httpGet`, `tcpSocket`, `grpc` or `exec`)".into(),
            );
            None
        }
        [one] => action(one, &map[*one], port_optional, &mut problem),
        [_, second, ..] => {
            problem(
                second,
                format!(
                    "may not specify more than one handler type (found {})",
                    handlers.join(", ")
                ),
            );
            None
        }
    };
    let mut seconds = |field: &str, default: u32, min: u32| -> u32 {
        match map.get(field) {
            None | Some(Value::Null) => default,
            Some(v) => match v.as_i64() {
                // The API defaults 0 for these (min 1); validation refuses negatives.
                Some(0) if min > 0 => default,
                Some(n) if n < 0 => {
                    problem(
                        field,
                        format!("must be greater than or equal to 0, found {n}"),
                    );
                    default
                }
                Some(n) if n > i64::from(i32::MAX) => {
                    problem(field, format!("must be at most {}, found {n}", i32::MAX));
                    default
                }
                Some(n) => n as u32,
                None => {
                    problem(
                        field,
                        format!("expected a whole number, found {}", shown(v)),
                    );
                    default
                }
            },
        }
    };
    let initial_delay_seconds = seconds("initialDelaySeconds", 0, 0);
    let period_seconds = seconds("periodSeconds", DEFAULT_PERIOD_SECONDS, 1);
    let timeout_seconds = seconds("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS, 1);
    let success_threshold = seconds("successThreshold", DEFAULT_SUCCESS_THRESHOLD, 1);
    let failure_threshold = seconds("failureThreshold", DEFAULT_FAILURE_THRESHOLD, 1);
    match action {
        Some(action) if problems.is_empty() => Ok(Probe {
            action,
            initial_delay_seconds,
            period_seconds,
            timeout_seconds,
            success_threshold,
            failure_threshold,
        }),
        _ => Err(problems),
    }
}

fn action(
    handler: &str,
    value: &Value,
    port_optional: bool,
    problem: &mut impl FnMut(&str, String),
) -> Option<ProbeAction> {
    let Some(map) = value.as_object() else {
        problem(
            handler,
            format!(
                "expected a mapping (`key: value` lines), found {}",
                shown(value)
            ),
        );
        return None;
    };
    let field = |name: &str| format!("{handler}.{name}");
    match handler {
        "exec" => Some(ProbeAction::Exec),
        "tcpSocket" => {
            if map.get("host").is_some_and(|h| !h.is_null()) {
                problem(
                    &field("host"),
                    "another host than the target's is not probed here (the kubelet's `host` is deprecated); the endpoint's address is probed".into(),
                );
            }
            port(
                map.get("port"),
                &field("port"),
                true,
                port_optional,
                problem,
            )
            .map(|port| ProbeAction::TcpSocket { port })
        }
        "grpc" => {
            let port = port(
                map.get("port"),
                &field("port"),
                false,
                port_optional,
                problem,
            );
            let service = match map.get("service") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => {
                    problem(
                        &field("service"),
                        format!("expected a string, found {}", shown(other)),
                    );
                    String::new()
                }
            };
            port.map(|port| ProbeAction::Grpc { port, service })
        }
        _ => {
            let port = port(
                map.get("port"),
                &field("port"),
                true,
                port_optional,
                problem,
            );
            let scheme = match map.get("scheme") {
                None | Some(Value::Null) => Some(Scheme::Http),
                Some(Value::String(s)) if s == "HTTP" => Some(Scheme::Http),
                Some(Value::String(s)) if s == "HTTPS" => Some(Scheme::Https),
                Some(other) => {
                    problem(
                        &field("scheme"),
                        format!(
                            "unsupported value {}: supported values: \"HTTP\", \"HTTPS\"",
                            shown(other)
                        ),
                    );
                    None
                }
            };
            let path = match map.get("path") {
                None | Some(Value::Null) => "/".to_string(),
                Some(Value::String(p)) if p.is_empty() => "/".to_string(),
                Some(Value::String(p)) if p.starts_with('/') => p.clone(),
                // As the kubelet's `formatURL`: a path without its slash gets one.
                Some(Value::String(p)) => format!("/{p}"),
                Some(other) => {
                    problem(
                        &field("path"),
                        format!("expected a string, found {}", shown(other)),
                    );
                    "/".to_string()
                }
            };
            if path.chars().any(|c| c.is_control() || c == ' ') {
                problem(
                    &field("path"),
                    "may not contain spaces or control characters".into(),
                );
            }
            let host = match map.get("host") {
                None | Some(Value::Null) => None,
                Some(Value::String(h)) if h.is_empty() => None,
                Some(Value::String(h)) if h.chars().all(|c| c.is_ascii_graphic()) => {
                    Some(h.clone())
                }
                Some(other) => {
                    problem(&field("host"), format!("not a host name: {}", shown(other)));
                    None
                }
            };
            let headers = headers(map.get("httpHeaders"), &field("httpHeaders"), problem);
            match (port, scheme) {
                (Some(port), Some(scheme)) => Some(ProbeAction::HttpGet {
                    scheme,
                    path,
                    port,
                    host,
                    headers,
                }),
                _ => None,
            }
        }
    }
}

fn headers(
    value: Option<&Value>,
    field: &str,
    problem: &mut impl FnMut(&str, String),
) -> Vec<(String, String)> {
    let list = match value {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(list)) => list,
        Some(other) => {
            problem(field, format!("expected a list, found {}", shown(other)));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, header) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let name = header.get("name").and_then(Value::as_str);
        let value = header.get("value").and_then(Value::as_str).unwrap_or("");
        match name {
            // RFC 7230 token characters, as `validateHTTPHeaderName` requires.
            Some(name)
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) =>
            {
                if value.chars().any(|c| c.is_control() && c != '\t') {
                    problem(
                        &format!("{at}.value"),
                        "may not contain control characters".into(),
                    );
                } else {
                    out.push((name.to_string(), value.to_string()));
                }
            }
            Some(name) => problem(
                &format!("{at}.name"),
                format!("`{}` is not a valid HTTP header name", name.escape_debug()),
            ),
            None => problem(&format!("{at}.name"), "header name is missing".into()),
        }
    }
    out
}

/// A probe's port: 1-65535, or (`by_name`) an IANA service name (`validatePortNumOrName`:
/// at most 15 characters, lower-case letters, digits and `-`, at least one letter, no `--`,
/// no `-` at either end).
fn port(
    value: Option<&Value>,
    field: &str,
    by_name: bool,
    optional: bool,
    problem: &mut impl FnMut(&str, String),
) -> Option<ProbePort> {
    let number = |n: i64, problem: &mut dyn FnMut(&str, String)| {
        if (1..=65535).contains(&n) {
            Some(ProbePort::Number(n as u16))
        } else {
            problem(field, format!("port {n} is out of range 1-65535"));
            None
        }
    };
    match value {
        None | Some(Value::Null) if optional => Some(ProbePort::Endpoint),
        None | Some(Value::Null) => {
            problem(field, "port is missing".into());
            None
        }
        Some(Value::Number(n)) => match n.as_i64() {
            Some(n) => number(n, problem),
            None => {
                problem(field, format!("expected a port number, found {n}"));
                None
            }
        },
        Some(Value::String(s)) if !by_name => {
            problem(
                field,
                format!(
                    "expected a port number, found the string \"{}\" (grpc ports are numbers)",
                    s.escape_debug()
                ),
            );
            None
        }
        Some(Value::String(s)) => match s.parse::<i64>() {
            Ok(n) => number(n, problem),
            Err(_) => match check_service_name(s) {
                Ok(()) => Some(ProbePort::Name(s.clone())),
                Err(why) => {
                    problem(
                        field,
                        format!("`{}` is not a valid port name: {why}", s.escape_debug()),
                    );
                    None
                }
            },
        },
        Some(other) => {
            problem(
                field,
                format!(
                    "expected a port number or a port name, found {}",
                    shown(other)
                ),
            );
            None
        }
    }
}

/// The fields of a probe object that are not the API's (`httpGet.prot`), for a warning:
/// as elsewhere in portald, an unknown field is ignored, never an error.
pub fn unknown_fields(value: &Value) -> Vec<String> {
    const PROBE: &[&str] = &[
        "exec",
        "httpGet",
        "tcpSocket",
        "grpc",
        "initialDelaySeconds",
        "periodSeconds",
        "timeoutSeconds",
        "successThreshold",
        "failureThreshold",
        // Only for liveness and startup probes (the grace before a kill).
        "terminationGracePeriodSeconds",
    ];
    let mut out = Vec::new();
    let Some(map) = value.as_object() else {
        return out;
    };
    for (key, inner) in map {
        if !PROBE.contains(&key.as_str()) {
            out.push(key.clone());
            continue;
        }
        let known: &[&str] = match key.as_str() {
            "exec" => &["command"],
            "tcpSocket" => &["port", "host"],
            "httpGet" => &["port", "path", "host", "scheme", "httpHeaders"],
            "grpc" => &["port", "service"],
            _ => continue,
        };
        if let Some(fields) = inner.as_object() {
            for name in fields.keys().filter(|k| !known.contains(&k.as_str())) {
                out.push(format!("{key}.{name}"));
            }
        }
    }
    out
}

/// Kubernetes' `IsValidPortName` (IANA service names, RFC 6335).
pub fn check_service_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("it must be 1 to 15 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lower-case letters, digits and `-` are allowed");
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("it must contain at least one letter");
    }
    if name.contains("--") || name.starts_with('-') || name.ends_with('-') {
        return Err("`-` may not be doubled nor start or end it");
    }
    Ok(())
}

/// The value of a `portald.io/health-check` annotation: `tcp`, `http`, or a JSON object in
/// the Probe shape whose missing port means the endpoint's own port. Problems name fields
/// below the annotation (`httpGet.port`), empty for the annotation itself.
pub fn parse_annotation(text: &str) -> Result<Probe, Vec<ProbeProblem>> {
    match text.trim() {
        "tcp" => Ok(Probe::with_defaults(ProbeAction::TcpSocket {
            port: ProbePort::Endpoint,
        })),
        "http" => Ok(Probe::with_defaults(ProbeAction::HttpGet {
            scheme: Scheme::Http,
            path: "/".into(),
            port: ProbePort::Endpoint,
            host: None,
            headers: Vec::new(),
        })),
        json if json.starts_with('{') => match serde_json::from_str::<Value>(json) {
            Ok(value) => {
                let probe = parse_probe(&value, true)?;
                if probe.action == ProbeAction::Exec {
                    return Err(vec![ProbeProblem {
                        field: "exec".into(),
                        message: "an exec check cannot run here (there is no container)".into(),
                    }]);
                }
                Ok(probe)
            }
            Err(e) => Err(vec![ProbeProblem {
                field: String::new(),
                message: format!("not valid JSON: {e}"),
            }]),
        },
        other => Err(vec![ProbeProblem {
            field: String::new(),
            message: format!(
                "`{}` is not a health check: `tcp`, `http` or a JSON probe such as {{\"httpGet\":{{\"path\":\"/healthz\"}}}}",
                other.escape_debug()
            ),
        }]),
    }
}

/// A JSON value in a message, short.
fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("the string \"{}\"", s.escape_debug()),
        Value::Number(n) => format!("the number {n}"),
        Value::Bool(b) => b.to_string(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a mapping".into(),
        Value::Null => "nothing (null)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(result: Result<Probe, Vec<ProbeProblem>>) -> Vec<String> {
        result
            .expect_err("problems")
            .into_iter()
            .map(|p| p.field)
            .collect()
    }

    #[test]
    fn an_http_probe_gets_kubernetes_defaults() {
        let probe = parse_probe(&json!({"httpGet": {"port": 8080}}), false).unwrap();
        assert_eq!(probe.period_seconds, 10);
        assert_eq!(probe.timeout_seconds, 1);
        assert_eq!(probe.success_threshold, 1);
        assert_eq!(probe.failure_threshold, 3);
        assert_eq!(probe.initial_delay_seconds, 0);
        assert_eq!(
            probe.action,
            ProbeAction::HttpGet {
                scheme: Scheme::Http,
                path: "/".into(),
                port: ProbePort::Number(8080),
                host: None,
                headers: vec![],
            }
        );
    }

    #[test]
    fn zero_timing_fields_take_the_defaults_as_the_api_server_does() {
        let probe = parse_probe(
            &json!({"tcpSocket": {"port": "http"}, "periodSeconds": 0, "timeoutSeconds": 0,
                    "successThreshold": 0, "failureThreshold": 0}),
            false,
        )
        .unwrap();
        assert_eq!(
            (
                probe.period_seconds,
                probe.timeout_seconds,
                probe.success_threshold,
                probe.failure_threshold
            ),
            (10, 1, 1, 3)
        );
        assert_eq!(probe.port(), Some(&ProbePort::Name("http".into())));
    }

    #[test]
    fn every_bad_field_is_named() {
        let problems = fields(parse_probe(
            &json!({"httpGet": {"port": 70000, "scheme": "FTP"}, "periodSeconds": -1,
                    "failureThreshold": "x"}),
            false,
        ));
        assert_eq!(
            problems,
            [
                "httpGet.port",
                "httpGet.scheme",
                "periodSeconds",
                "failureThreshold"
            ]
        );
    }

    #[test]
    fn a_probe_needs_exactly_one_handler() {
        assert_eq!(
            fields(parse_probe(&json!({"periodSeconds": 5}), false)),
            [""]
        );
        assert_eq!(
            fields(parse_probe(
                &json!({"tcpSocket": {"port": 1}, "httpGet": {"port": 1}}),
                false
            )),
            ["tcpSocket"]
        );
    }

    #[test]
    fn grpc_ports_are_numbers_and_port_names_follow_iana() {
        assert_eq!(
            fields(parse_probe(&json!({"grpc": {"port": "grpc"}}), false)),
            ["grpc.port"]
        );
        assert_eq!(
            fields(parse_probe(
                &json!({"tcpSocket": {"port": "no--dash"}}),
                false
            )),
            ["tcpSocket.port"]
        );
        assert_eq!(
            fields(parse_probe(
                &json!({"tcpSocket": {"port": "a-name-far-too-long"}}),
                false
            )),
            ["tcpSocket.port"]
        );
    }

    #[test]
    fn a_probe_without_port_is_refused_but_a_health_check_uses_the_endpoints_port() {
        assert_eq!(
            fields(parse_probe(&json!({"tcpSocket": {}}), false)),
            ["tcpSocket.port"]
        );
        let probe =
            parse_annotation(r#"{"httpGet":{"path":"healthz"},"periodSeconds":5}"#).unwrap();
        assert_eq!(probe.port(), Some(&ProbePort::Endpoint));
        assert_eq!(probe.period_seconds, 5);
        assert!(matches!(&probe.action, ProbeAction::HttpGet { path, .. } if path == "/healthz"));
    }

    #[test]
    fn the_annotation_takes_tcp_http_or_json_and_names_what_is_wrong() {
        assert_eq!(parse_annotation("tcp").unwrap().kind(), "tcp");
        assert_eq!(parse_annotation("http").unwrap().kind(), "http");
        assert_eq!(fields(parse_annotation("ping")), [""]);
        assert_eq!(fields(parse_annotation("{\"httpGet\":")), [""]);
        assert_eq!(
            fields(parse_annotation(r#"{"exec":{"command":["true"]}}"#)),
            ["exec"]
        );
        assert_eq!(
            fields(parse_annotation(r#"{"httpGet":{"port":0}}"#)),
            ["httpGet.port"]
        );
    }

    #[test]
    fn unknown_fields_are_named_but_do_not_make_the_probe_invalid() {
        let value = json!({"httpGet": {"port": 80, "prot": 1}, "periodSecond": 5});
        assert!(parse_probe(&value, false).is_ok());
        assert_eq!(unknown_fields(&value), ["httpGet.prot", "periodSecond"]);
    }

    #[test]
    fn http_headers_are_checked_and_kept_in_order() {
        let probe = parse_probe(
            &json!({"httpGet": {"port": 80, "httpHeaders": [
                {"name": "X-A", "value": "1"}, {"name": "X-B", "value": "2"}]}}),
            false,
        )
        .unwrap();
        let ProbeAction::HttpGet { headers, .. } = probe.action else {
            panic!("httpGet")
        };
        assert_eq!(
            headers,
            [("X-A".into(), "1".into()), ("X-B".into(), "2".into())]
        );
        assert_eq!(
            fields(parse_probe(
                &json!({"httpGet": {"port": 80, "httpHeaders": [{"name": "bad name"}]}}),
                false
            )),
            ["httpGet.httpHeaders[0].name"]
        );
    }
}
