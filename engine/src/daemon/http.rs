//! The daemon's HTTP endpoints, on its tokio runtime: `/metrics` on the metrics address,
//! `/healthz` and `/livez` on the health address (kube-proxy's ports and paths).

use super::metrics::{Health, Metrics};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// kube-proxy's `--metrics-bind-address` default.
pub const DEFAULT_METRICS_ADDRESS: &str = "127.0.0.1:10249";
/// kube-proxy's `--healthz-bind-address` default.
pub const DEFAULT_HEALTHZ_ADDRESS: &str = "127.0.0.1:10256";

/// A client that sends no complete request head within this long is dropped, so idle
/// connections cannot pile up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What one server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `/metrics`.
    Metrics,
    /// `/healthz` and `/livez`.
    Health,
}

/// Parses a bind address flag: `IP:PORT`, or `0` (or empty) to serve nothing, as
/// kube-proxy's `--healthz-bind-address 0`.
pub fn parse_bind_address(text: &str) -> Result<Option<SocketAddr>, String> {
    let text = text.trim();
    if text.is_empty() || text == "0" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| format!("`{text}` is not IP:PORT (or 0 to disable)"))
}

/// Serves `role` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, role: Role, metrics: Arc<Metrics>, resync: Duration) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, typically: wait rather than spin.
                tracing::warn!(error = %e, "metrics/health accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let metrics = metrics.clone();
                async move {
                    // A scrape may run `iptables-save`: off the async workers.
                    let request = Request::from_parts(request.into_parts().0, ());
                    let answered = tokio::task::spawn_blocking(move || {
                        answer(&request, role, &metrics, resync)
                    });
                    let response = answered.await.unwrap_or_else(|_| {
                        plain(StatusCode::INTERNAL_SERVER_ERROR, "the answer failed\n")
                    });
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(
    request: &Request<()>,
    role: Role,
    metrics: &Metrics,
    resync: Duration,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match (role, request.uri().path()) {
        // Prometheus asks for OpenMetrics; anything else gets the classic text format.
        (Role::Metrics, "/metrics") if wants_openmetrics(request) => response(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        (Role::Metrics, "/metrics") => response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode_prometheus_text(),
        ),
        (Role::Health, "/healthz") => health(metrics.health(resync)),
        (Role::Health, "/livez") => health(metrics.liveness(resync)),
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn wants_openmetrics(request: &Request<()>) -> bool {
    request
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

/// 200 when healthy, else 503; the body is the JSON of [`Health`] either way.
fn health(health: Health) -> Response<Full<Bytes>> {
    let status = if health.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = serde_json::to_string(&health).unwrap_or_default();
    body.push('\n');
    response(status, "application/json", body)
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    response(status, "text/plain; charset=utf-8", text.to_string())
}

fn response(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bind_address_is_ip_port_and_zero_or_empty_serves_none() {
        assert_eq!(parse_bind_address("0"), Ok(None));
        assert_eq!(parse_bind_address(""), Ok(None));
        assert_eq!(
            parse_bind_address("127.0.0.1:10249"),
            Ok(Some(SocketAddr::from(([127, 0, 0, 1], 10249))))
        );
        assert_eq!(
            parse_bind_address("localhost"),
            Err("`localhost` is not IP:PORT (or 0 to disable)".to_string())
        );
    }
}
