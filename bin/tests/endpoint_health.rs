//! Tier 3: portald runs the Pods' readiness probes and the Services' health checks itself,
//! with the real daemon in network namespaces, every backend × mode: an endpoint that fails
//! leaves the rotation within period × failureThreshold + 2 s and comes back when it
//! recovers. Each pod runs a small HTTP server (support/health_server.py) whose `/healthz`
//! answer the test flips (200, 500, or accept and never answer).

mod support;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::*;

const SERVER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/support/health_server.py"
);
const WEB: &str = "http://10.11.0.40/";
const DB: &str = "http://10.11.0.41/";
/// periodSeconds 1, failureThreshold 2, plus the 2 s the issue allows for the reconcile.
const OUT_WITHIN: Duration = Duration::from_secs(PERIOD * THRESHOLD + 2);
const PERIOD: u64 = 1;
const THRESHOLD: u64 = 2;

const HTTP_PROBE: &str =
    "{httpGet: {path: /healthz, port: http}, periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 2}";
const TCP_PROBE: &str = "{tcpSocket: {port: 80}, periodSeconds: 1, failureThreshold: 2}";

/// Service `web` selects both pods, each with `probe` as its readiness probe.
fn web(probe: &str) -> String {
    let mut out = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  clusterIP: 10.11.0.40\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http}]\n",
    );
    for (name, ip) in [("pod1", POD1), ("pod2", POD2)] {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: web}}}}\nspec:\n  containers:\n    - name: app\n      ports: [{{name: http, containerPort: 80}}]\n      readinessProbe: {probe}\nstatus: {{podIP: {ip}}}\n"
        ));
    }
    out
}

/// Service `db`: no selector, a hand-written Endpoints object, checked by its annotation.
const DB_YAML: &str = r#"apiVersion: v1
kind: Service
metadata:
  name: db
  annotations:
    portald.io/health-check: '{"httpGet":{"path":"/healthz"},"periodSeconds":1,"failureThreshold":2}'
spec:
  clusterIP: 10.11.0.41
  ports: [{port: 80}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: db}
subsets:
  - addresses: [{ip: 10.244.1.2}, {ip: 10.244.1.3}]
    ports: [{port: 80}]
"#;

struct HealthPod {
    name: &'static str,
    ip: Ipv4Addr,
    state: PathBuf,
    pid: u32,
}

impl HealthPod {
    fn set(&self, state: &str) {
        std::fs::write(&self.state, state).expect("writing the pod's health state");
    }
}

fn start_pod(c: &mut Cluster, name: &'static str, ip: Ipv4Addr) -> HealthPod {
    let ns = c.client(name, ip);
    let state = c.temp().join(format!("{name}.health"));
    std::fs::write(&state, "ok").expect("writing the pod's health state");
    let args: Vec<String> = [
        SERVER,
        "--name",
        name,
        "--port",
        "80",
        "--state-file",
        &state.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let pid = c.spawn(&ns, "python3", &args);
    poll(&format!("{name}'s server to listen"), CONVERGE, || {
        let log = c.bed.log_of(pid);
        if log.contains("ready on") {
            Ok(())
        } else {
            Err(log)
        }
    });
    HealthPod {
        name,
        ip,
        state,
        pid,
    }
}

/// The state of the status row of (`service`, `ip`, `check`), or why there is none.
fn row_state(status: &Status, service: &str, ip: Ipv4Addr, check: &str) -> Result<String, String> {
    status
        .endpoint_health
        .iter()
        .find(|r| {
            r.service == service && r.check == check && r.endpoint.starts_with(&format!("{ip}:"))
        })
        .map(|r| r.state.clone())
        .ok_or_else(|| {
            format!(
                "no {check} row for {service} {ip}: {:?}",
                status.endpoint_health
            )
        })
}

/// `n` GETs from `client` must all be answered by `name`.
fn all_on(c: &Cluster, client: &str, url: &str, name: &str, n: usize) {
    let names = c.names(client, url, n);
    let others: Vec<&String> = names.iter().filter(|n| *n != name).collect();
    assert!(
        others.is_empty(),
        "{url}: {} of {n} requests were not served by {name}: {others:?}\n{}",
        others.len(),
        c.daemon_logs()
    );
}

fn both_serve(c: &Cluster, what: &str, client: &str, url: &str) {
    c.wait_names(what, client, url, 20, |names| {
        distinct(names) == ["pod1".to_string(), "pod2".to_string()]
    });
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// Service `grpc` selects pod3, whose readiness probe is the standard gRPC health check.
const GRPC_YAML: &str = "apiVersion: v1
kind: Service
metadata: {name: grpc}
spec:
  clusterIP: 10.11.0.42
  selector: {app: grpc}
  ports: [{port: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: pod3, labels: {app: grpc}}
spec:
  containers:
    - name: app
      readinessProbe: {grpc: {port: 9000}, periodSeconds: 1, failureThreshold: 2}
status: {podIP: 10.244.1.4}
";

/// A real grpc.health.v1 server (tonic-health's) listening in pod3's namespace, served by
/// the test's own runtime; the reporter flips its answer.
fn start_grpc_pod(
    c: &mut Cluster,
) -> (
    tonic_health::server::HealthReporter,
    tokio::runtime::Runtime,
) {
    let ns = c.client("pod3", POD3);
    let listener = in_netns(&ns, || std::net::TcpListener::bind("0.0.0.0:9000"))
        .expect("binding the gRPC server in pod3");
    listener
        .set_nonblocking(true)
        .expect("a non-blocking listener");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("the gRPC server's runtime");
    let (reporter, service) = tonic_health::server::health_reporter();
    runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = tonic::transport::Server::builder()
            .serve_with_incoming(service, incoming)
            .await;
    });
    (reporter, runtime)
}

fn set_grpc(
    reporter: &tonic_health::server::HealthReporter,
    runtime: &tokio::runtime::Runtime,
    serving: bool,
) {
    use tonic_health::ServingStatus;
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    runtime.block_on(reporter.set_service_status("", status));
}

fn scenario(backend: &str, mode: &str) {
    let mut c = Cluster::new(&format!("eh{}{}", &backend[..1], &mode[..1]));
    let pod1 = start_pod(&mut c, "pod1", POD1);
    let pod2 = start_pod(&mut c, "pod2", POD2);
    let (grpc, grpc_runtime) = start_grpc_pod(&mut c);
    set_grpc(&grpc, &grpc_runtime, true);
    let client = c.client("client", CLIENT);
    c.write("web.yaml", &web(HTTP_PROBE));
    c.write("db.yaml", DB_YAML);
    c.write("grpc.yaml", GRPC_YAML);
    c.start_daemon(&["--backend", backend, "--mode", mode]);
    c.wait_status("every checked endpoint judged healthy", |s| {
        for pod in [&pod1, &pod2] {
            for (service, check) in [
                ("default/web", "readiness-probe"),
                ("default/db", "health-check"),
            ] {
                let state = row_state(s, service, pod.ip, check)?;
                if state != "healthy" {
                    return Err(format!("{service} {} {check}: {state}", pod.name));
                }
            }
        }
        Ok(())
    });
    both_serve(&c, "both pods serving web", &client, WEB);
    both_serve(&c, "both pods serving db", &client, DB);

    // httpGet readiness probe (and the db health check): pod1's health answer turns 500.
    pod1.set("fail");
    sleep_until(Instant::now() + OUT_WITHIN);
    all_on(&c, &client, WEB, "pod2", 50);
    all_on(&c, &client, DB, "pod2", 50);
    let status = c.status();
    let row = status
        .endpoint_health
        .iter()
        .find(|r| r.service == "default/web" && r.endpoint == format!("{POD1}:80"))
        .expect("pod1's row");
    assert_eq!(row.state, "unhealthy", "{row:?}");
    assert!(
        row.reason
            .as_deref()
            .is_some_and(|r| r.contains("HTTP 500")),
        "{row:?}"
    );
    pod1.set("ok");
    both_serve(&c, "pod1 back in web after recovering", &client, WEB);
    both_serve(&c, "pod1 back in db after recovering", &client, DB);

    // Probe timeouts: pod1 accepts the probe's request and never answers.
    pod1.set("hang");
    let hung = Instant::now();
    c.wait_status(
        "pod1 unhealthy after its probes time out",
        |s| match row_state(s, "default/web", POD1, "readiness-probe")?.as_str() {
            "unhealthy" => Ok(()),
            other => Err(other.to_string()),
        },
    );
    assert!(
        hung.elapsed() <= OUT_WITHIN,
        "a hanging health endpoint took {:?} to be judged (period x threshold + 2 s is {OUT_WITHIN:?})",
        hung.elapsed()
    );
    let reason = c
        .status()
        .endpoint_health
        .iter()
        .find(|r| r.service == "default/web" && r.endpoint == format!("{POD1}:80"))
        .and_then(|r| r.reason.clone())
        .unwrap_or_default();
    assert!(reason.contains("timed out after 1s"), "{reason}");
    sleep_until(hung + OUT_WITHIN);
    all_on(&c, &client, WEB, "pod2", 50);
    pod1.set("ok");
    both_serve(&c, "pod1 back after its probes answer again", &client, WEB);

    // grpc readiness probe: pod3's health service answers NOT_SERVING, then SERVING.
    c.wait_status(
        "pod3 judged healthy by its grpc probe",
        |s| match row_state(s, "default/grpc", POD3, "readiness-probe")?.as_str() {
            "healthy" => Ok(()),
            other => Err(other.to_string()),
        },
    );
    assert_eq!(
        endpoints(&c.status(), "default/grpc", 9000),
        Ok(vec![format!("{POD3}:9000")])
    );
    set_grpc(&grpc, &grpc_runtime, false);
    sleep_until(Instant::now() + OUT_WITHIN);
    let status = c.status();
    assert_eq!(
        endpoints(&status, "default/grpc", 9000),
        Ok(vec![]),
        "{:?}\n{}",
        status.endpoint_health,
        c.daemon_logs()
    );
    let reason = status
        .endpoint_health
        .iter()
        .find(|r| r.service == "default/grpc")
        .and_then(|r| r.reason.clone())
        .unwrap_or_default();
    assert!(reason.contains("NOT_SERVING"), "{reason}");
    set_grpc(&grpc, &grpc_runtime, true);
    c.wait_status("pod3 back after SERVING", |s| {
        match endpoints(s, "default/grpc", 9000)?.as_slice() {
            [one] if one == &format!("{POD3}:9000") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // tcpSocket readiness probe: pod1's server is killed, then pod2's too.
    c.write("web.yaml", &web(TCP_PROBE));
    c.wait_status("the tcp probes in force and healthy", |s| {
        let rows: Vec<_> = s
            .endpoint_health
            .iter()
            .filter(|r| r.service == "default/web")
            .collect();
        if rows.len() == 2
            && rows
                .iter()
                .all(|r| r.detail.starts_with("tcpSocket") && r.state == "healthy")
        {
            Ok(())
        } else {
            Err(format!("{rows:?}"))
        }
    });
    c.stop(pod1.pid, SIGKILL);
    sleep_until(Instant::now() + OUT_WITHIN);
    // In userspace mode a dial to a dead pod is retried on another: the rules and
    // listeners must show pod1 gone, not only the answers.
    assert_eq!(
        endpoints(&c.status(), "default/web", 80),
        Ok(vec![format!("{POD2}:80")]),
        "{}",
        c.daemon_logs()
    );
    all_on(&c, &client, WEB, "pod2", 50);
    c.stop(pod2.pid, SIGKILL);
    sleep_until(Instant::now() + OUT_WITHIN);
    let reply = c.curl(&client, WEB, 5);
    assert!(
        !reply.ok() && reply.elapsed < Duration::from_secs(1),
        "with every pod failing, a connection is refused at once: exit {:?} after {:?}: {}\n{}",
        reply.code,
        reply.elapsed,
        reply.stderr.trim(),
        c.daemon_logs()
    );
    // curl's exit 7: could not connect (refused), not 28 (timed out).
    assert_eq!(reply.code, Some(7), "{}", reply.stderr.trim());
}

#[test]
fn iptables_userspace_endpoints_failing_their_checks_leave_and_come_back() {
    scenario("iptables", "userspace");
}

#[test]
fn iptables_kernel_endpoints_failing_their_checks_leave_and_come_back() {
    scenario("iptables", "kernel");
}

#[test]
fn nftables_userspace_endpoints_failing_their_checks_leave_and_come_back() {
    scenario("nftables", "userspace");
}

#[test]
fn nftables_kernel_endpoints_failing_their_checks_leave_and_come_back() {
    scenario("nftables", "kernel");
}
