//! Tier 3: passive outlier detection in userspace mode, in real network namespaces, with
//! both backends: a pod whose server dies is ejected after 5 failed dials, then costs no
//! request a failed dial; `status` and `/metrics` show it. Needs root, iproute2, iptables,
//! nft, curl, socat, ss.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use support::*;

const VIP: &str = "10.11.0.41";
const TARGET_PORT: u16 = 8080;
const METRICS_URL: &str = "http://127.0.0.1:10249/metrics";
/// Bound of one request's connect and read.
const IO_BOUND: Duration = Duration::from_secs(5);

/// One HTTP request through the VIP on a socket made in `ns`: the body (the pod's name) and
/// how long connect, request and response took.
fn request(ns: &str) -> (String, Duration) {
    let vip: SocketAddr = format!("{VIP}:80").parse().unwrap();
    in_netns(ns, || {
        let started = Instant::now();
        let mut stream = TcpStream::connect_timeout(&vip, IO_BOUND).expect("connecting to the VIP");
        stream.set_read_timeout(Some(IO_BOUND)).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
            .expect("sending the request");
        let mut response = String::new();
        let read = stream.read_to_string(&mut response);
        let took = started.elapsed();
        let body = match read {
            Ok(_) => response
                .split_once("\r\n\r\n")
                .map_or(String::new(), |(_, body)| body.trim().to_string()),
            Err(e) => format!("error: {e}"),
        };
        (body, took)
    })
}

fn mean(times: &[Duration]) -> Duration {
    times.iter().sum::<Duration>() / u32::try_from(times.len().max(1)).unwrap_or(1)
}

fn failures(c: &Cluster, proxy: u16) -> u64 {
    listener(&c.status(), proxy).unwrap().failures
}

fn a_killed_pod_is_ejected_and_costs_no_more_failed_dials(backend: &str) {
    let mut c = Cluster::new(&format!("ej{}", &backend[..3]));
    let mut pods = Vec::new();
    for (name, ip) in [("pod1", POD1), ("pod2", POD2)] {
        pods.push(c.pod(name, ip, &[(name, &[TARGET_PORT], &[])]));
    }
    let client = c.client("client", CLIENT);
    c.write(
        "web.yaml",
        &service_yaml("web", Some(VIP), "web", "TCP", 80, TARGET_PORT),
    );
    c.write(
        "pods.yaml",
        &pods_yaml(&[("pod1", POD1, "web"), ("pod2", POD2, "web")]),
    );
    c.start_daemon(&["--backend", backend, "--mode", "userspace"]);
    let url = format!("http://{VIP}/");
    c.wait_names("both pods to serve", &client, &url, 4, |names| {
        distinct(names) == ["pod1", "pod2"]
    });
    let proxy = proxy_port(&c.status(), "default/web", 80).unwrap();
    let mut healthy = Vec::new();
    for _ in 0..10 {
        healthy.push(request(&client).1);
    }
    let start = failures(&c, proxy);
    assert_eq!(start, 0);

    // pod1's server dies; the file still lists it, so only the data plane can help.
    c.stop(pods[0].pids[0], SIGTERM);
    poll("pod1's port to close", CONVERGE, || {
        if c.listening(&pods[0].ns, TARGET_PORT) {
            Err("still listening".to_string())
        } else {
            Ok(())
        }
    });

    // Round robin sends every other request to pod1 first: each of those pays a refused
    // dial, then is served by pod2, until the fifth refusal ejects pod1.
    let mut paying = Vec::new();
    let mut served = 0;
    while failures(&c, proxy) < 5 {
        assert!(
            served < 20,
            "pod1 was dialled only {} times in 20 requests",
            failures(&c, proxy)
        );
        let (body, took) = request(&client);
        assert_eq!(body, "pod2", "{}", c.daemon_logs());
        paying.push(took);
        served += 1;
    }
    assert_eq!(failures(&c, proxy), 5);

    let mut after = Vec::new();
    for n in 0..50 {
        let (body, took) = request(&client);
        assert_eq!(
            body,
            "pod2",
            "request {n} after the ejection\n{}",
            c.daemon_logs()
        );
        after.push(took);
    }

    let status = c.status();
    let l = listener(&status, proxy).unwrap();
    assert_eq!(l.failures, 5, "no failed dial once ejected: {l:?}");
    assert_eq!(l.rejected, 0, "{l:?}");
    let dead = format!("{POD1}:{TARGET_PORT}");
    let row = status
        .endpoint_health
        .iter()
        .find(|h| h.endpoint == dead && h.check == "outlier-detection")
        .unwrap_or_else(|| panic!("no outlier row for {dead}: {:?}", status.endpoint_health));
    assert_eq!(row.service, "default/web");
    assert_eq!(row.state, "ejected", "{row:?}");
    assert!(
        row.reason.as_deref().is_some_and(|r| r.contains("refused")),
        "{row:?}"
    );
    assert!(row.detail.contains("5 failed dials in a row"), "{row:?}");
    assert!(
        status
            .endpoint_health
            .iter()
            .all(|h| h.endpoint != format!("{POD2}:{TARGET_PORT}")),
        "pod2 never failed: no row"
    );

    let out = c.run_ok(&c.node(), "curl", &["-sS", "-m", "3", METRICS_URL]);
    let gauge = format!(
        "portald_endpoint_healthy{{service=\"default/web\",port=\"80/TCP\",endpoint=\"{dead}\",check=\"outlier-detection\"}} 0"
    );
    assert!(out.lines().any(|l| l == gauge), "no `{gauge}` in:\n{out}");
    assert!(
        out.contains("portald_outlier_ejections_total{service=\"default/web\",port=\"80/TCP\"} 1"),
        "{out}"
    );
    let logs = c.bed.log_of(c.daemon.expect("the daemon runs"));
    assert_eq!(
        logs.matches("endpoint ejected").count(),
        1,
        "one warning per ejection:\n{logs}"
    );
    eprintln!(
        "{backend}: mean request {:?} with both pods up, {:?} while pod1 was dead and not yet \
         ejected ({} requests, every other one after a refused dial), {:?} once ejected (50 \
         requests, slowest {:?})",
        mean(&healthy),
        mean(&paying),
        paying.len(),
        mean(&after),
        after.iter().max().copied().unwrap_or_default()
    );
}

#[test]
fn a_killed_pod_is_ejected_and_costs_no_more_failed_dials_with_iptables() {
    a_killed_pod_is_ejected_and_costs_no_more_failed_dials("iptables");
}

#[test]
fn a_killed_pod_is_ejected_and_costs_no_more_failed_dials_with_nftables() {
    a_killed_pod_is_ejected_and_costs_no_more_failed_dials("nftables");
}
