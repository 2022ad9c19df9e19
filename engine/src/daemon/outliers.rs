//! Outlier detection's records (from the data plane) as `status` rows and metric labels.

use super::control::EndpointHealthView;
use dataplane::{EndpointHealth, ListenerHealth, Protocol};
use std::time::{SystemTime, UNIX_EPOCH};

/// The `check` of outlier detection's rows and series.
pub const CHECK: &str = "outlier-detection";

/// The Service (`ns/name`) and port (`http/TCP`, `80/UDP`) of a listener named
/// `ns/name:port` (its rule comment). Namespaces, names and port names are DNS labels, so the
/// last `:` is the separator; a name without one (an overlong name's hashed comment) is
/// kept whole as the Service.
pub fn service_port(name: &str, protocol: Protocol) -> (String, String) {
    let protocol = protocol.to_string().to_ascii_uppercase();
    match name.rsplit_once(':') {
        Some((service, port)) => (service.to_string(), format!("{port}/{protocol}")),
        None => (name.to_string(), format!("?/{protocol}")),
    }
}

/// `ejected`, `unhealthy` (failing past the threshold, kept in by the ejection cap) or
/// `healthy`.
pub fn state(endpoint: &EndpointHealth) -> &'static str {
    if endpoint.ejected {
        "ejected"
    } else if endpoint.held {
        "unhealthy"
    } else {
        "healthy"
    }
}

/// One row per endpoint that has failed a dial since it joined its listener, in listener
/// then endpoint order.
pub fn rows(listeners: &[ListenerHealth]) -> Vec<EndpointHealthView> {
    let mut rows = Vec::new();
    for listener in listeners {
        let (service, port) = service_port(&listener.name, listener.protocol);
        for endpoint in &listener.endpoints {
            let state = state(endpoint);
            rows.push(EndpointHealthView {
                service: service.clone(),
                port: port.clone(),
                endpoint: endpoint.endpoint.to_string(),
                check: CHECK.to_string(),
                state: state.to_string(),
                since: unix_seconds(endpoint.since),
                reason: (state != "healthy").then(|| endpoint.last_error.clone()),
                detail: detail(endpoint, listener.threshold),
            });
        }
    }
    rows
}

/// How outlier detection sees the endpoint, in words.
fn detail(endpoint: &EndpointHealth, threshold: u32) -> String {
    let failures = endpoint.consecutive_failures;
    let times = match endpoint.ejections {
        1 => "once".to_string(),
        n => format!("{n} times"),
    };
    if let (true, Some(until)) = (endpoint.ejected, endpoint.ejected_until) {
        let left = until
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs();
        return format!(
            "{failures} failed dials in a row; out of the rotation for {} s (ejected {times}), \
             back at {} (Unix time, in {left} s)",
            endpoint.next_ejection.as_secs(),
            unix_seconds(until),
        );
    }
    if endpoint.held {
        return format!(
            "{failures} failed dials in a row; not ejected: as many endpoints as may be are \
             out (--outlier-max-ejection-percent), or it is the last one"
        );
    }
    if endpoint.returns > 0 && failures >= threshold {
        return format!(
            "back in the rotation after its ejection (ejected {times}); no dial has succeeded \
             since, so one more failure ejects it for {} s",
            endpoint.next_ejection.as_secs()
        );
    }
    let mut text = format!(
        "{failures} failed dials in a row (ejected at {threshold}); last error: {}",
        endpoint.last_error
    );
    if endpoint.ejections > 0 {
        text.push_str(&format!(
            "; ejected {times}, the next ejection lasts {} s",
            endpoint.next_ejection.as_secs()
        ));
    }
    text
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(ejected: bool) -> EndpointHealth {
        let since = UNIX_EPOCH + Duration::from_secs(1_000);
        EndpointHealth {
            endpoint: "10.0.0.1:8080".parse().unwrap(),
            ejected,
            since,
            ejected_until: ejected.then(|| since + Duration::from_secs(30)),
            consecutive_failures: 5,
            last_error: "Connection refused (os error 111)".into(),
            next_ejection: Duration::from_secs(30),
            ejections: u64::from(ejected),
            returns: 0,
            held: false,
        }
    }

    #[test]
    fn a_listener_name_splits_into_the_service_and_its_port_with_the_protocol() {
        assert_eq!(
            service_port("default/web:http", Protocol::Tcp),
            ("default/web".to_string(), "http/TCP".to_string())
        );
        assert_eq!(
            service_port("kube-system/dns:53", Protocol::Udp),
            ("kube-system/dns".to_string(), "53/UDP".to_string())
        );
    }

    #[test]
    fn an_ejected_endpoint_is_a_row_with_its_last_error_and_when_it_comes_back() {
        let listener = ListenerHealth {
            protocol: Protocol::Tcp,
            port: 20000,
            name: "default/web:http".into(),
            ejections: 1,
            threshold: 5,
            endpoints: vec![
                record(true),
                EndpointHealth {
                    endpoint: "10.0.0.2:8080".parse().unwrap(),
                    consecutive_failures: 2,
                    ..record(false)
                },
            ],
        };

        let rows = rows(&[listener]);

        assert_eq!(rows.len(), 2);
        let out = &rows[0];
        assert_eq!(
            (
                out.service.as_str(),
                out.port.as_str(),
                out.endpoint.as_str()
            ),
            ("default/web", "http/TCP", "10.0.0.1:8080")
        );
        assert_eq!((out.check.as_str(), out.state.as_str()), (CHECK, "ejected"));
        assert_eq!(out.since, 1_000);
        assert_eq!(
            out.reason.as_deref(),
            Some("Connection refused (os error 111)")
        );
        assert!(
            out.detail.starts_with(
                "5 failed dials in a row; out of the rotation for 30 s (ejected once), back at 1030"
            ),
            "{}",
            out.detail
        );
        let failing = &rows[1];
        assert_eq!(
            (failing.state.as_str(), failing.reason.as_deref()),
            ("healthy", None)
        );
        assert!(
            failing
                .detail
                .starts_with("2 failed dials in a row (ejected at 5)"),
            "{}",
            failing.detail
        );
    }
}
