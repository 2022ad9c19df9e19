//! Tier 3: every backend × mode combination with the real daemon in network namespaces,
//! and live switches between them. Real clients (curl, UDP probes) from the node itself
//! (host path) and from another namespace (container path). Needs root, iproute2,
//! iptables, nft, conntrack and curl.

mod support;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const SEED_SERVICE: &str = include_str!("../../examples/seed/apache-service.json");

/// The two pods, labelled for the seed service (`name=apache`) and the others (`app=web`).
fn pods(which: &[(&str, std::net::Ipv4Addr)]) -> String {
    which
        .iter()
        .map(|(name, ip)| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    name: apache\n    app: web\nstatus:\n  podIP: {ip}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

const STICKY: &str = "apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  clusterIP: 10.11.0.20
  selector: {app: web}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  ports: [{port: 80, targetPort: 80}]
";

const EMPTY: &str = "apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  clusterIP: 10.11.0.30
  selector: {app: nobody}
  ports: [{port: 80}]
";

const DNS: &str = "apiVersion: v1
kind: Service
metadata: {name: dns}
spec:
  clusterIP: 10.11.0.53
  selector: {app: web}
  ports: [{protocol: UDP, port: 53, targetPort: 53}]
";

/// An admin's own nftables table: portald must never touch it.
const ADMIN_TABLE: &str = "table inet admin {
	chain input {
		type filter hook input priority filter; policy accept;
		tcp dport 22 accept comment \"admin ssh\"
	}
}
";

const SEED_URL: &str = "http://10.11.0.1:12345/";

/// What is not portald's, in both dialects: iptables' foreign lines and the admin's table.
fn foreign(c: &Cluster) -> (Vec<String>, String) {
    let node = c.node();
    (
        foreign_lines(&c.iptables_save()),
        c.run_ok(&node, "nft", &["list", "table", "inet", "admin"]),
    )
}

/// Whether portald owns anything through iptables (`PORTAL-` chains) or nftables (its
/// table) in the node.
fn owned(c: &Cluster) -> (bool, bool) {
    let node = c.node();
    let tables = c.run_ok(&node, "nft", &["list", "tables"]);
    (
        !portal_lines(&c.iptables_save()).is_empty(),
        tables.lines().any(|l| l.trim() == "table ip portald"),
    )
}

fn udp_names(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.to_string()))
        .filter(|n| n.starts_with("pod"))
        .collect()
}

fn matrix(backend: &str, mode: &str) {
    let mut c = Cluster::new(&format!("m{}{}", &backend[..1], &mode[..1]));
    let mut pod_list = Vec::new();
    for (name, ip) in [("pod1", POD1), ("pod2", POD2)] {
        pod_list.push(c.pod(name, ip, &[(name, &[80], &[53])]));
    }
    let client = c.client("client", CLIENT);
    let node = c.node();
    for rule in FOREIGN {
        c.iptables(rule);
    }
    let out = Command::new("ip")
        .args(["netns", "exec", &node, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(ADMIN_TABLE.as_bytes())?;
            child.wait()
        })
        .expect("loading the admin table");
    assert!(out.success(), "the admin table did not load");
    let baseline = foreign(&c);
    assert!(baseline.1.contains("admin ssh"), "{}", baseline.1);

    c.write("apache-service.json", SEED_SERVICE);
    c.write("sticky.yaml", STICKY);
    c.write("empty.yaml", EMPTY);
    c.write("dns.yaml", DNS);
    c.write("pods.yaml", &pods(&[("pod1", POD1), ("pod2", POD2)]));
    let flags = ["--backend", backend, "--mode", mode];
    c.start_daemon(&flags);

    let status = c.status();
    assert_eq!(
        (status.backend.as_str(), status.mode.as_str()),
        (backend, mode)
    );
    // Kernel mode has no userspace hop: no listener at all.
    assert_eq!(
        status.open.is_empty(),
        mode == "kernel",
        "{:?}",
        status.open
    );
    let (by_iptables, by_nft) = owned(&c);
    assert_eq!(
        (by_iptables, by_nft),
        (backend == "iptables", backend == "nftables"),
        "rules in the wrong dialect"
    );

    // The seed's example from the host and from another namespace, spread over both pods
    // (kernel mode picks at random: 24 requests all on one pod is a 1 in 8 million event).
    for ns in [&node, &client] {
        let names = c.names(ns, SEED_URL, 24);
        assert_eq!(distinct(&names), ["pod1", "pod2"], "from {ns}: {names:?}");
    }
    // ClientIP affinity: one client, one pod.
    for ns in [&node, &client] {
        let names = c.names(ns, "http://10.11.0.20/", 8);
        assert_eq!(distinct(&names).len(), 1, "affinity from {ns}: {names:?}");
    }
    // No endpoint: refused at once, from both paths.
    for ns in [&node, &client] {
        let reply = c.curl(ns, "http://10.11.0.30/", 10);
        assert!(
            !reply.ok(),
            "a service without endpoints answered: {reply:?}"
        );
        assert!(
            reply.elapsed < Duration::from_secs(3),
            "refusal took {:?} from {ns}: {reply:?}",
            reply.elapsed
        );
        // Both modes refuse the connection in the kernel (a reset to the SYN): never
        // accepted and then reset.
        assert_eq!(reply.code, Some(7), "not a refusal from {ns}: {reply:?}");
    }
    // UDP through the VIP, spread.
    let (all, lines) = c.udp_probe(&client, "10.11.0.53:53", 24);
    assert!(all, "UDP replies missing: {lines:?}");
    assert_eq!(distinct(&udp_names(&lines)), ["pod1", "pod2"], "{lines:?}");

    // A long-lived UDP flow (one source port) sticks to its endpoint; when that endpoint is
    // removed, its next datagrams reach the other one at once (stale conntrack flushed).
    let probe = |count: usize| -> Vec<String> {
        let count = count.to_string();
        let out = c.run(
            &client,
            PORTALD,
            &[
                "udp-probe",
                "--to",
                "10.11.0.53:53",
                "--count",
                &count,
                "--source-port",
                "40053",
                "--timeout-ms",
                "1000",
            ],
        );
        udp_names(
            &String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>(),
        )
    };
    let first = probe(3);
    assert_eq!(first.len(), 3, "{first:?}");
    assert_eq!(
        distinct(&first).len(),
        1,
        "one flow, one endpoint: {first:?}"
    );
    let (gone, stays) = if first[0] == "pod1" {
        (("pod1", POD1), ("pod2", POD2))
    } else {
        (("pod2", POD2), ("pod1", POD1))
    };
    c.write("pods.yaml", &pods(&[stays]));
    let removed_at = Instant::now();
    c.wait_status("the endpoint removal", |s| {
        let eps = endpoints(s, "default/dns", 53)?;
        if eps == [format!("{}:53", stays.1)] {
            Ok(())
        } else {
            Err(format!("{eps:?}"))
        }
    });
    let after = probe(3);
    assert_eq!(
        after,
        vec![stays.0.to_string(); 3],
        "the flow still reaches the removed {} ({:?} after the change)",
        gone.0,
        removed_at.elapsed()
    );
    // TCP follows the endpoint removal too.
    c.wait_names("only the remaining pod", &client, SEED_URL, 4, |n| {
        n.iter().all(|x| x == stays.0)
    });

    // Restart: traffic flows again, foreign rules untouched.
    assert_eq!(foreign(&c), baseline, "foreign rules changed by apply");
    c.stop_daemon(SIGTERM);
    c.start_daemon(&flags);
    assert_eq!(distinct(&c.names(&client, SEED_URL, 3)), [stays.0]);
    assert_eq!(foreign(&c), baseline, "foreign rules changed by a restart");

    // Cleanup removes exactly portald's state.
    c.stop_daemon(SIGTERM);
    let out = c.portald(&["cleanup", "--backend", backend]);
    assert!(out.status.success(), "cleanup: {out:?}");
    assert_eq!(owned(&c), (false, false), "cleanup left portald's state");
    assert_eq!(foreign(&c), baseline, "foreign rules changed by cleanup");
    drop(pod_list);
}

#[test]
fn iptables_userspace() {
    matrix("iptables", "userspace");
}

#[test]
fn iptables_kernel() {
    matrix("iptables", "kernel");
}

#[test]
fn nftables_userspace() {
    matrix("nftables", "userspace");
}

#[test]
fn nftables_kernel() {
    matrix("nftables", "kernel");
}

/// A client in its own namespace sending requests back to back until told to stop (at most
/// 90 s or 5,000 requests); returns (requests, failures with their curl errors).
fn steady_client(
    ns: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut sent = 0;
        let mut failures = Vec::new();
        while !stop.load(Ordering::Relaxed)
            && started.elapsed() < Duration::from_secs(90)
            && sent < 5000
        {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns, "curl", "-sS", "-m", "3", SEED_URL])
                .output()
                .expect("running curl");
            sent += 1;
            if !out.status.success() {
                failures.push(format!(
                    "#{sent} at {:?}: {}",
                    started.elapsed(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        (sent, failures)
    })
}

#[test]
fn live_switches_of_backend_and_mode_drop_no_request() {
    let mut c = Cluster::new("switch");
    for (name, ip) in [("pod1", POD1), ("pod2", POD2)] {
        c.pod(name, ip, &[(name, &[80], &[])]);
    }
    let client = c.client("client", CLIENT);
    c.write("apache-service.json", SEED_SERVICE);
    c.write("pods.yaml", &pods(&[("pod1", POD1), ("pod2", POD2)]));
    c.start_daemon(&["--backend", "iptables", "--mode", "userspace"]);
    assert_eq!(c.names(&client, SEED_URL, 2).len(), 2);

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_client(client.clone(), stop.clone());
    // (switch flags, (backend, mode) after it, (owned through iptables, through nftables))
    type Switch<'a> = (&'a [&'a str], (&'a str, &'a str), (bool, bool));
    let steps: [Switch; 4] = [
        (
            &["--backend", "nftables"],
            ("nftables", "userspace"),
            (false, true),
        ),
        (&["--mode", "kernel"], ("nftables", "kernel"), (false, true)),
        (
            &["--backend", "iptables"],
            ("iptables", "kernel"),
            (true, false),
        ),
        (
            &["--mode", "userspace"],
            ("iptables", "userspace"),
            (true, false),
        ),
    ];
    for (flags, (backend, mode), dialects) in steps {
        std::thread::sleep(Duration::from_millis(700));
        let mut args = vec!["switch"];
        args.extend_from_slice(flags);
        let out = c.portald(&args);
        assert!(
            out.status.success(),
            "switch {flags:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            c.daemon_logs()
        );
        let status = c.status();
        assert_eq!(
            (status.backend.as_str(), status.mode.as_str()),
            (backend, mode)
        );
        assert_eq!(owned(&c), dialects, "after switching to {backend}/{mode}");
        assert_eq!(status.open.is_empty(), mode == "kernel");
        // The steady client shares the round robin, so only success is checked here.
        let names = c.names(&client, SEED_URL, 4);
        assert!(
            names.iter().all(|n| n == "pod1" || n == "pod2"),
            "{names:?}"
        );
    }
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let (sent, failures) = load.join().expect("client thread");
    assert!(sent >= 20, "the client sent only {sent} requests");
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {failures:#?}",
        failures.len()
    );
}

#[test]
fn one_shot_apply_in_kernel_mode_needs_no_daemon() {
    let mut c = Cluster::new("oneshot");
    for (name, ip) in [("pod1", POD1), ("pod2", POD2)] {
        c.pod(name, ip, &[(name, &[80], &[])]);
    }
    let client = c.client("client", CLIENT);
    c.write("apache-service.json", SEED_SERVICE);
    c.write("pods.yaml", &pods(&[("pod1", POD1), ("pod2", POD2)]));
    let dir = c.dir.display().to_string();
    for backend in ["nftables", "iptables"] {
        let out = c.portald(&["apply", &dir, "--backend", backend, "--mode", "kernel"]);
        assert!(out.status.success(), "apply: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("dnat 10.244.1.2:80, 10.244.1.3:80"), "{text}");
        assert_eq!(distinct(&c.names(&client, SEED_URL, 24)), ["pod1", "pod2"]);
        assert_eq!(owned(&c), (backend == "iptables", backend == "nftables"));
        // A second apply finds nothing to do.
        let again = c.portald(&["apply", &dir, "--backend", backend, "--mode", "kernel"]);
        let text = String::from_utf8_lossy(&again.stdout);
        assert!(text.contains("No batch sent"), "{text}");
    }
    let out = c.portald(&["cleanup"]);
    assert!(out.status.success(), "cleanup: {out:?}");
    assert_eq!(owned(&c), (false, false));
}

#[test]
fn a_long_one_shot_apply_says_what_it_is_doing_while_the_kernel_works() {
    use std::os::unix::fs::PermissionsExt;
    let mut c = Cluster::new("progress");
    c.pod("pod1", POD1, &[("pod1", &[80], &[])]);
    // 600 services (1,215 objects to add with their refusals and scaffold): a batch of
    // thousands of lines, past the size that announces itself.
    let mut yaml = String::new();
    for i in 0..600 {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec:\n  clusterIP: 10.11.{}.{}\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n",
            i / 200 + 1,
            i % 200 + 1
        ));
    }
    c.write("many.yaml", &yaml);
    c.write("pods.yaml", &pods_yaml(&[("pod1", POD1, "web")]));
    // A kernel tool that takes 6 s: the apply must say it is still at work meanwhile.
    let bin = c.temp().join("slow-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let wrapper = bin.join("iptables-restore");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\nsleep 6\nexec /usr/sbin/iptables-restore \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("PATH={}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display());
    let dir = c.dir.display().to_string();
    let state = c.temp().join("state.json").display().to_string();
    let out = c.run(
        &c.node(),
        "env",
        &[
            &path,
            PORTALD,
            "apply",
            &dir,
            "--mode",
            "kernel",
            "--state-file",
            &state,
            "--control-socket",
            &c.temp().join("none.sock").display().to_string(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    let announced = stderr
        .find("applying: 1215 to add")
        .unwrap_or_else(|| panic!("{stderr}"));
    let still = stderr
        .find("still applying the batch (5 s)")
        .unwrap_or_else(|| panic!("{stderr}"));
    let applied = stderr
        .find("batch applied in")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(announced < still && still < applied, "{stderr}");
}
