//! Tier 3: the daemon's `/metrics`, `/healthz` and `/livez` on their default addresses
//! inside a node namespace, scraped by a real Prometheus server (a child process, never a
//! system service) and checked by `promtool`; health follows a kernel that refuses batches;
//! the kernel's own per-portal counters with either backend.
//! Needs root, iproute2, iptables, curl, socat, and Debian's `prometheus` package.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

/// `apache-service.json` exactly as in SEED.md: VIP 10.11.0.1, port 12345 → pods' 80.
const SEED_SERVICE: &str = include_str!("../../examples/seed/apache-service.json");

const SEED_POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: apache-1
  labels: {name: apache}
status:
  podIP: 10.244.1.2
";

const EXTRA_SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: extra}
spec:
  selector: {name: apache}
  ports: [{port: 8080, targetPort: 80}]
";

const METRICS_URL: &str = "http://127.0.0.1:10249/metrics";
const HEALTHZ_URL: &str = "http://127.0.0.1:10256/healthz";
const LIVEZ_URL: &str = "http://127.0.0.1:10256/livez";
/// Prometheus's web address inside the node namespace (below the proxy port range).
const PROMETHEUS: &str = "127.0.0.1:19090";
/// Prometheus takes a few seconds to start and scrape at least once.
const PROMETHEUS_WAIT: Duration = Duration::from_secs(40);

/// One GET from the node namespace: the HTTP status (0 when nothing answered) and body.
fn get(c: &Cluster, url: &str) -> (u16, String) {
    let out = c.run(
        &c.node(),
        "curl",
        &["-sS", "-m", "3", "-w", "\n%{http_code}", url],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The value of the sample `series` (name with labels, exactly as exposed) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The value of the one sample of `name` whose labels contain each of `labels`.
fn labelled(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let prefix = format!("{name}{{");
    let mut found = text
        .lines()
        .filter(|l| l.starts_with(&prefix) && labels.iter().all(|want| l.contains(want)));
    let line = found.next()?;
    if found.next().is_some() {
        return None;
    }
    line.rsplit_once(' ')?.1.trim().parse().ok()
}

/// `promtool check metrics` on `text`: its verdict and what it printed.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is on PATH (scripts/setup.sh installs Debian's `prometheus`)");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Asks the Prometheus server in the node for `query`; the single result's value.
fn query(c: &Cluster, promql: &str) -> Result<f64, String> {
    let url = format!("http://{PROMETHEUS}/api/v1/query");
    let q = format!("query={promql}");
    let out = c.run(
        &c.node(),
        "curl",
        &["-sS", "-m", "3", "-G", "--data-urlencode", &q, &url],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("not JSON ({e}): {text}"))?;
    let results = json["data"]["result"]
        .as_array()
        .ok_or_else(|| format!("no result: {text}"))?;
    match results.as_slice() {
        [one] => one["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no value: {text}")),
        _ => Err(format!("{} results: {text}", results.len())),
    }
}

/// A Prometheus server in the node namespace scraping the daemon every second; its pid.
fn start_prometheus(c: &mut Cluster) -> u32 {
    let dir = c.bed.temp_dir().join("prometheus");
    std::fs::create_dir_all(dir.join("data")).expect("prometheus directory");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: portald\n    static_configs:\n      - targets: ['127.0.0.1:10249']\n",
    )
    .expect("prometheus config");
    let node = c.node();
    c.spawn(
        &node,
        "prometheus",
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={PROMETHEUS}"),
        ],
    )
}

/// Waits until the Prometheus server `prometheus` answers `promql` with `want`.
fn seen(c: &Cluster, prometheus: u32, promql: &str, want: f64) {
    poll(
        &format!("Prometheus to answer {promql} = {want}"),
        PROMETHEUS_WAIT,
        || match query(c, promql) {
            Ok(v) if v == want => Ok(()),
            Ok(v) => Err(format!("{v}")),
            Err(e) => Err(format!(
                "{e}\nprometheus log:\n{}",
                c.bed.log_of(prometheus)
            )),
        },
    )
}

#[test]
fn prometheus_scrapes_the_daemon_and_sees_its_services_connections_and_bytes() {
    let mut c = Cluster::new("prom");
    c.pod("pod1", POD1, &[("pod1", &[80], &[])]);
    c.write("apache-service.json", SEED_SERVICE);
    c.write("pods.yaml", SEED_POD);
    // The default addresses: the namespace is the node's own.
    c.start_daemon(&[]);
    let node = c.node();
    for _ in 0..3 {
        assert_eq!(c.get(&node, "http://10.11.0.1:12345/"), "pod1");
    }

    // The exposition itself: well formed for promtool, with the values seen in status.
    let (code, text) = get(&c, METRICS_URL);
    assert_eq!(code, 200, "{text}");
    let (clean, said) = promtool_check(&text);
    assert!(clean, "promtool check metrics: {said}\n{text}");
    assert_eq!(sample(&text, "portald_services"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "portald_portals"), Some(1.0), "{text}");
    assert_eq!(sample(&text, "portald_endpoints"), Some(1.0), "{text}");
    let proxy = proxy_port(&c.status(), "default/apache-service", 12345).unwrap();
    let port = format!("proxy_port=\"{proxy}\"");
    let service = "service_port=\"default/apache-service";
    let labels = [service, "protocol=\"tcp\"", port.as_str()];
    assert_eq!(
        labelled(&text, "portald_proxy_connections_accepted_total", &labels),
        Some(3.0),
        "{text}"
    );
    let to_client = [&labels[..], &["direction=\"to_client\""]].concat();
    assert!(
        labelled(&text, "portald_proxy_bytes_total", &to_client)
            .is_some_and(|b| b >= 3.0 * "pod1".len() as f64),
        "{text}"
    );

    // The kernel's own counters on the portal rule of the node's path (OUTPUT).
    let host = [
        "service_port=\"default/apache-service:12345\"",
        "path=\"host\"",
    ];
    assert!(
        labelled(&text, "portald_kernel_rule_packets_total", &host).is_some_and(|p| p >= 3.0),
        "{text}"
    );

    // A real Prometheus server scrapes it every second.
    let prometheus = start_prometheus(&mut c);
    let seen = |promql: &str, want: f64| seen(&c, prometheus, promql, want);
    seen("up{job=\"portald\"}", 1.0);
    seen("portald_services", 1.0);
    seen("sum(portald_proxy_connections_accepted_total)", 3.0);
    seen("sum(portald_proxy_connections_active)", 0.0);
    seen(
        "count(portald_sync_proxy_rules_last_timestamp_seconds > 0)",
        1.0,
    );
    seen(
        "count(portald_sync_proxy_rules_duration_seconds_count > 0)",
        1.0,
    );
    // A new request through the VIP shows in the next scrape.
    assert_eq!(c.get(&node, "http://10.11.0.1:12345/"), "pod1");
    seen("sum(portald_proxy_connections_accepted_total)", 4.0);

    // Problems: a file that does not parse, and two services asking for one clusterIP.
    seen("portald_invalid_files", 0.0);
    seen("portald_conflicts{kind=\"allocation\"}", 0.0);
    c.write("broken.yaml", BROKEN_FILE);
    c.write("first.yaml", &claiming("first"));
    c.write("second.yaml", &claiming("second"));
    seen("portald_invalid_files", 1.0);
    seen("portald_conflicts{kind=\"allocation\"}", 1.0);
}

/// Bytes of the first packet of each test connection, the SYN the kernel's NAT counters
/// see: an IPv4 header (20), a TCP header (20) and the options Linux puts on a SYN by
/// default (20: MSS, SACK permitted, timestamps, window scale).
const SYN_BYTES: f64 = 60.0;

/// The nftables backend's portal counters on `/metrics`, under the iptables backend's names:
/// `host` counts the node's own connections to the VIP, `container` another namespace's,
/// each by exactly the connections made; and a pass after the traffic changes nothing.
fn nftables_counters_rise_by_the_connections_of_each_path(mode: &str) {
    let mut c = Cluster::new(&format!("nftc-{}", &mode[..1]));
    c.pod("pod1", POD1, &[("pod1", &[80], &[])]);
    let client = c.client("client", CLIENT);
    c.write("apache-service.json", SEED_SERVICE);
    c.write("pods.yaml", SEED_POD);
    c.start_daemon(&["--backend", "nftables", "--mode", mode]);
    let node = c.node();
    let counters = |path: &str| {
        let (code, text) = get(&c, METRICS_URL);
        assert_eq!(code, 200, "{text}");
        let labels = [
            "service_port=\"default/apache-service:12345\"",
            &format!("path=\"{path}\""),
        ];
        let packets = labelled(&text, "portald_kernel_rule_packets_total", &labels);
        let bytes = labelled(&text, "portald_kernel_rule_bytes_total", &labels);
        (packets, bytes, text)
    };
    for path in ["host", "container"] {
        let (packets, bytes, text) = counters(path);
        assert_eq!((packets, bytes), (Some(0.0), Some(0.0)), "{path}:\n{text}");
    }

    for _ in 0..3 {
        assert_eq!(c.get(&node, "http://10.11.0.1:12345/"), "pod1");
    }
    for _ in 0..2 {
        assert_eq!(c.get(&client, "http://10.11.0.1:12345/"), "pod1");
    }
    let (packets, bytes, text) = counters("host");
    assert_eq!(
        (packets, bytes),
        (Some(3.0), Some(3.0 * SYN_BYTES)),
        "host:\n{text}"
    );
    let (packets, bytes, text) = counters("container");
    assert_eq!(
        (packets, bytes),
        (Some(2.0), Some(2.0 * SYN_BYTES)),
        "container:\n{text}"
    );
    let (clean, said) = promtool_check(&text);
    assert!(clean, "promtool check metrics: {said}\n{text}");

    // Counting changes nothing the diff sees: the next resync sends no batch.
    let before = c.status().reconciles;
    c.wait_status("a resync after the traffic", |s| match &s.last_reconcile {
        Some(r) if s.reconciles > before && r.trigger == "resync" => {
            if r.ok && !r.batch_sent {
                Ok(())
            } else {
                panic!("the resync after traffic changed something: {r:?}")
            }
        }
        other => Err(format!("{} reconciles, last {other:?}", s.reconciles)),
    });

    // A real Prometheus server sees the same.
    let prometheus = start_prometheus(&mut c);
    seen(
        &c,
        prometheus,
        "sum(portald_kernel_rule_packets_total{service_port=\"default/apache-service:12345\"})",
        5.0,
    );
}

#[test]
fn nftables_userspace_mode_counts_each_paths_connections_on_its_portal() {
    nftables_counters_rise_by_the_connections_of_each_path("userspace");
}

#[test]
fn nftables_kernel_mode_counts_each_paths_connections_on_its_portal() {
    nftables_counters_rise_by_the_connections_of_each_path("kernel");
}

/// Malformed YAML (an unclosed flow mapping).
const BROKEN_FILE: &str = "apiVersion: v1
kind: Service
metadata: {name: broken
";

/// A Service `name` asking for clusterIP 10.11.0.200.
fn claiming(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  clusterIP: 10.11.0.200\n  ports: [{{port: 80}}]\n"
    )
}

#[test]
fn healthz_turns_503_while_the_kernel_refuses_the_batch_and_200_when_it_recovers() {
    let mut c = Cluster::new("health");
    c.pod("pod1", POD1, &[("pod1", &[80], &[])]);
    c.write("apache-service.json", SEED_SERVICE);
    c.write("pods.yaml", SEED_POD);
    // An `iptables-restore` earlier in the daemon's PATH that fails while a flag file exists.
    let bin = c.bed.temp_dir().join("bin");
    std::fs::create_dir_all(&bin).expect("wrapper directory");
    let flag = c.bed.temp_dir().join("refuse-batches");
    let real = Command::new("sh")
        .args(["-c", "command -v iptables-restore"])
        .output()
        .expect("sh");
    let real = String::from_utf8_lossy(&real.stdout).trim().to_string();
    assert!(!real.is_empty(), "iptables-restore is not on PATH");
    let wrapper = bin.join("iptables-restore");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then echo 'iptables-restore: injected failure' >&2; exit 1; fi\nexec '{real}' \"$@\"\n",
            flag.display()
        ),
    )
    .expect("wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("wrapper mode");
    let path = format!(
        "PATH={}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    c.start_daemon_with_env(&[&path], &[]);

    let health = |want: u16| {
        poll(
            &format!("/healthz to answer {want}"),
            CONVERGE,
            || match get(&c, HEALTHZ_URL) {
                (code, body) if code == want => Ok(body),
                (code, body) => Err(format!("{code} {body}")),
            },
        )
    };
    let body = health(200);
    let json: serde_json::Value = serde_json::from_str(&body).expect("healthz answers JSON");
    assert_eq!(json["healthy"], true, "{body}");
    assert_eq!(get(&c, LIVEZ_URL).0, 200);
    let programming = |text: &str| {
        let count = "portald_network_programming_duration_seconds_count";
        let sum = "portald_network_programming_duration_seconds_sum";
        (
            sample(text, count).unwrap_or(-1.0),
            sample(text, sum).unwrap_or(-1.0),
        )
    };
    let before = programming(&get(&c, METRICS_URL).1);

    // The kernel refuses the next batch: a new service forces one.
    std::fs::write(&flag, "").expect("flag file");
    c.write("extra.yaml", EXTRA_SERVICE);
    let body = health(503);
    let json: serde_json::Value = serde_json::from_str(&body).expect("healthz answers JSON");
    assert_eq!(json["healthy"], false, "{body}");
    let reason = json["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("the last reconcile failed") && reason.contains("refused the batch"),
        "{body}"
    );
    // The reconciler still turns: liveness holds.
    assert_eq!(get(&c, LIVEZ_URL).0, 200);
    let (_, text) = get(&c, METRICS_URL);
    assert!(
        sample(
            &text,
            "portald_sync_proxy_rules_failures_total{cause=\"kernel_batch\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );

    // It accepts again: the next pass (the 2 s resync) applies, and health returns.
    std::fs::remove_file(&flag).expect("flag removed");
    health(200);
    c.wait_status("the extra service to be served", |s| {
        service(s, "default/extra").map(|_| ())
    });
    // The change's network programming latency ends at the pass that finally applied it,
    // and is measured from when the watcher saw the file (so at least the debounce).
    let after = programming(&get(&c, METRICS_URL).1);
    assert_eq!(after.0, before.0 + 1.0, "{before:?} → {after:?}");
    assert!(after.1 - before.1 >= 0.1, "{before:?} → {after:?}");
}
