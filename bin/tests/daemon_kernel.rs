//! Tier 3: the daemon in real network namespaces with real traffic. A node namespace runs
//! `portald run`, pod namespaces run `portald backend`, clients use `curl`, `portald
//! udp-probe` and std sockets. Needs root, iproute2, iptables, curl, socat, ss.
//!
//! Each test builds its own testbed (unique namespaces, control socket and directory), so
//! the tests run in parallel.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use support::*;

/// `apache-service.json` exactly as in SEED.md.
const SEED_SERVICE: &str = include_str!("../../examples/seed/apache-service.json");

/// The seed's two pods, labelled `name=apache`.
const SEED_PODS: &str = "apiVersion: v1
kind: Pod
metadata:
  name: apache-1
  labels: {name: apache}
status:
  podIP: 10.244.1.2
---
apiVersion: v1
kind: Pod
metadata:
  name: apache-2
  labels: {name: apache}
status:
  podIP: 10.244.1.3
";

fn started_pods(c: &mut Cluster, port: u16, count: usize) -> Vec<Pod> {
    [POD1, POD2, POD3]
        .into_iter()
        .take(count)
        .enumerate()
        .map(|(i, ip)| {
            let name = format!("pod{}", i + 1);
            c.pod(&name, ip, &[(&name, &[port], &[])])
        })
        .collect()
}

/// The seed's setup: its two pods serving port 80 and `apache-service.json` selecting them.
fn seed_on_two_pods(c: &mut Cluster) {
    started_pods(c, 80, 2);
    c.write("apache-service.json", SEED_SERVICE);
    c.write("pods.yaml", SEED_PODS);
}

/// The setup most tests start from: `count` (at most 3) pods serving port 8080 with label
/// `app=web`, a client, and service `web` on `vip` (port 80 to the pods' 8080). Returns the
/// pods and the client's namespace.
fn web_on_pods(c: &mut Cluster, count: usize, vip: &str) -> (Vec<Pod>, String) {
    let pods = started_pods(c, 8080, count);
    let client = c.client("client", CLIENT);
    c.write(
        "web.yaml",
        &service_yaml("web", Some(vip), "web", "TCP", 80, 8080),
    );
    let labelled = [
        ("pod1", POD1, "web"),
        ("pod2", POD2, "web"),
        ("pod3", POD3, "web"),
    ];
    c.write("pods.yaml", &pods_yaml(&labelled[..count]));
    (pods, client)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn seed_service_reaches_both_pods_from_host_and_from_another_namespace() {
    let mut c = Cluster::new("seed");
    seed_on_two_pods(&mut c);
    let client = c.client("client", CLIENT);
    c.start_daemon(&[]);

    let status = c.status();
    let svc = service(&status, "default/apache-service").unwrap();
    assert_eq!(svc.vip.map(|v| v.0), Some(Ipv4Addr::new(10, 11, 0, 1)));
    assert_eq!(
        endpoints(&status, "default/apache-service", 12345).unwrap(),
        strings(&["10.244.1.2:80", "10.244.1.3:80"])
    );
    let proxy = proxy_port(&status, "default/apache-service", 12345).unwrap();

    // Both paths have their rules: PREROUTING for container traffic, OUTPUT for the host's.
    let rules = portal_lines(&c.iptables_save());
    for hook in ["-A PREROUTING", "-A OUTPUT"] {
        assert!(
            rules
                .iter()
                .any(|l| l.starts_with(hook) && l.contains("PORTAL")),
            "no jump from {hook} into portald's chains: {rules:#?}"
        );
    }
    assert!(
        rules
            .iter()
            .any(|l| l.contains("10.11.0.1/32") && l.contains(&proxy.to_string())),
        "no rule sends 10.11.0.1 to proxy port {proxy}: {rules:#?}"
    );

    let url = "http://10.11.0.1:12345/";
    let node = c.node();
    let from_host = c.names(&node, url, 6);
    assert_eq!(
        distinct(&from_host),
        strings(&["pod1", "pod2"]),
        "{from_host:?}"
    );
    let from_container = c.names(&client, url, 6);
    assert_eq!(
        distinct(&from_container),
        strings(&["pod1", "pod2"]),
        "{from_container:?}"
    );

    let after = c.status();
    let l = listener(&after, proxy).unwrap();
    assert_eq!(l.accepted, 12, "{l:?}");
    assert_eq!(l.per_endpoint.values().sum::<u64>(), 12, "{l:?}");
    assert!(l.per_endpoint.values().all(|n| *n >= 3), "{l:?}");
    assert_eq!((l.failures, l.rejected), (0, 0), "{l:?}");
}

#[test]
fn client_ip_affinity_keeps_one_client_on_one_pod_and_without_it_requests_spread() {
    let mut c = Cluster::new("affinity");
    let pods = started_pods(&mut c, 8080, 2);
    let client = c.client("client", CLIENT);
    let client2 = c.client("client2", CLIENT2);
    let sticky = service_yaml("sticky", Some("10.11.0.20"), "web", "TCP", 80, 8080)
        .replace("  selector:", "  sessionAffinity: ClientIP\n  selector:");
    c.write("sticky.yaml", &sticky);
    c.write(
        "spread.yaml",
        &service_yaml("spread", Some("10.11.0.21"), "web", "TCP", 80, 8080),
    );
    c.write(
        "pods.yaml",
        &pods_yaml(&[("pod1", POD1, "web"), ("pod2", POD2, "web")]),
    );
    c.start_daemon(&[]);
    let status = c.status();
    let sticky_port = proxy_port(&status, "default/sticky", 80).unwrap();
    let spread_port = proxy_port(&status, "default/spread", 80).unwrap();
    assert_eq!(
        listener(&status, sticky_port).unwrap().affinity_seconds,
        Some(10800),
        "ClientIP affinity with the default timeout"
    );
    assert_eq!(
        listener(&status, spread_port).unwrap().affinity_seconds,
        None
    );

    let sticky_url = "http://10.11.0.20/";
    let node = c.node();
    let mut chosen = Vec::new();
    for ns in [&client, &client2, &node] {
        let names = c.names(ns, sticky_url, 8);
        assert_eq!(
            distinct(&names).len(),
            1,
            "affinity broken for {ns}: {names:?}"
        );
        chosen.push(names[0].clone());
    }
    for ns in [&client, &client2, &node] {
        let names = c.names(ns, "http://10.11.0.21/", 8);
        assert_eq!(
            distinct(&names),
            strings(&["pod1", "pod2"]),
            "no affinity: round robin over both pods from {ns}"
        );
    }

    // The pod a client sticks to dies: the client moves to the other pod and stays there.
    let dead = pods.iter().find(|p| p.name == chosen[0]).unwrap();
    let survivor = if dead.name == "pod1" { "pod2" } else { "pod1" };
    let pid = dead.pids[0];
    c.stop(pid, SIGTERM);
    let names = c.names(&client, sticky_url, 6);
    assert_eq!(distinct(&names), strings(&[survivor]), "{names:?}");
}

#[test]
fn stopped_pod_is_skipped_by_retry() {
    let mut c = Cluster::new("retry");
    let (pods, client) = web_on_pods(&mut c, 3, "10.11.0.40");
    c.start_daemon(&["--dial-timeouts-ms", "150,300"]);
    let url = "http://10.11.0.40/";
    assert_eq!(
        distinct(&c.names(&client, url, 6)),
        strings(&["pod1", "pod2", "pod3"])
    );
    let proxy = proxy_port(&c.status(), "default/web", 80).unwrap();
    let before = listener(&c.status(), proxy).unwrap().clone();
    assert_eq!(before.failures, 0, "{before:?}");

    // pod1 refuses (its server is gone); pod2 drops everything (dials time out). Both stay
    // in the endpoints: only retry can save the requests.
    let pid = pods[0].pids[0];
    c.stop(pid, SIGTERM);
    c.run_ok(
        &pods[1].ns,
        "iptables",
        &["-A", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "DROP"],
    );
    for _ in 0..9 {
        let reply = c.curl(&client, url, 10);
        assert!(
            reply.ok(),
            "a request failed although pod3 is alive: exit {:?} {}\n{}",
            reply.code,
            reply.stderr,
            c.daemon_logs()
        );
        assert_eq!(reply.body.trim(), "pod3");
        // At worst one refusal plus one 150 or 300 ms timeout before pod3.
        assert!(reply.elapsed < Duration::from_secs(2), "{reply:?}");
    }
    let after = c.status();
    assert_eq!(
        endpoints(&after, "default/web", 80).unwrap().len(),
        3,
        "the file still lists all three pods"
    );
    let l = listener(&after, proxy).unwrap();
    assert!(
        l.failures >= 2,
        "round robin over 9 requests must have dialled the dead pods: {l:?}"
    );
    assert_eq!(l.rejected, 0, "{l:?}");
    assert_eq!(l.accepted, before.accepted + 9, "{l:?}");
}

#[test]
fn no_live_pod_is_refused_quickly() {
    let mut c = Cluster::new("refuse");
    let (pods, client) = web_on_pods(&mut c, 2, "10.11.0.50");
    c.write(
        "empty.yaml",
        &service_yaml("empty", Some("10.11.0.51"), "nothing", "TCP", 80, 8080),
    );
    // The production dial timeouts: a refusal must not wait for any of them.
    c.start_daemon(&["--dial-timeouts-ms", "250,500,1000,2000"]);
    let status = c.status();
    assert_eq!(
        endpoints(&status, "default/empty", 80).unwrap(),
        Vec::<String>::new()
    );
    let empty_port = proxy_port(&status, "default/empty", 80).unwrap();
    let web_port = proxy_port(&status, "default/web", 80).unwrap();
    assert_eq!(c.names(&client, "http://10.11.0.50/", 2).len(), 2);

    // curl may wait 10 s, so a hang shows as a slow failure, not as curl's own timeout.
    let node = c.node();
    let assert_refused = |c: &Cluster, ns: &str, url: &str| {
        let reply = c.curl(ns, url, 10);
        assert!(!reply.ok(), "{url} from {ns} answered: {reply:?}");
        assert_ne!(reply.code, Some(28), "curl timed out: {reply:?}");
        assert!(
            reply.elapsed < Duration::from_secs(3),
            "refusal took {:?}: {reply:?}",
            reply.elapsed
        );
    };
    for ns in [&client, &node] {
        assert_refused(&c, ns, "http://10.11.0.51/");
    }
    // No endpoint at all: the kernel refuses, no listener is open for it.
    assert!(listener(&c.status(), empty_port).is_err());

    for pod in &pods {
        let pid = pod.pids[0];
        c.stop(pid, SIGTERM);
    }
    for ns in [&client, &client, &node] {
        assert_refused(&c, ns, "http://10.11.0.50/");
    }
    let l = listener(&c.status(), web_port).unwrap().clone();
    assert_eq!(l.rejected, 3, "{l:?}");
    assert!(l.failures >= 6, "two refused dials per request: {l:?}");
}

#[test]
fn file_changes_are_followed_while_traffic_flows() {
    let mut c = Cluster::new("files");
    // Each pod serves on 8080 and 8081 under different names, so a reply tells the port.
    c.pod(
        "pod1",
        POD1,
        &[("pod1@8080", &[8080], &[]), ("pod1@8081", &[8081], &[])],
    );
    c.pod(
        "pod2",
        POD2,
        &[("pod2@8080", &[8080], &[]), ("pod2@8081", &[8081], &[])],
    );
    let client = c.client("client", CLIENT);
    c.write(
        "web.yaml",
        &service_yaml("web", Some("10.11.0.30"), "web", "TCP", 80, 8080),
    );
    c.write(
        "pods.yaml",
        &pods_yaml(&[("pod1", POD1, "web"), ("pod2", POD2, "web")]),
    );
    c.start_daemon(&[]);
    let web = "http://10.11.0.30/";
    assert_eq!(
        distinct(&c.names(&client, web, 4)),
        strings(&["pod1@8080", "pod2@8080"])
    );
    let web_proxy = proxy_port(&c.status(), "default/web", 80).unwrap();

    // A connection established through the VIP before the change, used after it.
    let vip: SocketAddr = "10.11.0.30:80".parse().unwrap();
    let mut held = in_netns(&client, || {
        TcpStream::connect_timeout(&vip, Duration::from_secs(3)).expect("connecting to the VIP")
    });
    c.wait_status("the held connection to be proxied", |s| {
        let l = listener(s, web_proxy)?;
        if l.active >= 1 {
            Ok(())
        } else {
            Err(format!("{l:?}"))
        }
    });

    // Edit: targetPort 8080 -> 8081.
    c.write(
        "web.yaml",
        &service_yaml("web", Some("10.11.0.30"), "web", "TCP", 80, 8081),
    );
    c.wait_status("the new targetPort", |s| {
        let e = endpoints(s, "default/web", 80)?;
        if e == strings(&["10.244.1.2:8081", "10.244.1.3:8081"]) {
            Ok(())
        } else {
            Err(format!("{e:?}"))
        }
    });
    c.wait_names("traffic on 8081", &client, web, 4, |n| {
        distinct(n) == strings(&["pod1@8081", "pod2@8081"])
    });
    assert_eq!(
        proxy_port(&c.status(), "default/web", 80).unwrap(),
        web_proxy,
        "an endpoint change keeps the listener"
    );
    // The old connection still works and still reaches its old endpoint.
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    held.write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        .expect("writing on the held connection");
    let mut answer = String::new();
    held.read_to_string(&mut answer)
        .expect("reading on the held connection");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.trim_end().ends_with("@8080"),
        "the connection established before the change broke: {answer:?}"
    );
    drop(held);

    // Edit the endpoints: pod1 is no longer selected.
    c.write(
        "pods.yaml",
        &pods_yaml(&[("pod1", POD1, "retired"), ("pod2", POD2, "web")]),
    );
    c.wait_status("pod1 to leave the endpoints", |s| {
        let e = endpoints(s, "default/web", 80)?;
        if e == strings(&["10.244.1.3:8081"]) {
            Ok(())
        } else {
            Err(format!("{e:?}"))
        }
    });
    c.wait_names("only pod2", &client, web, 4, |n| {
        distinct(n) == strings(&["pod2@8081"])
    });

    // Add a file: a service without clusterIP gets a VIP, a rule and a listener.
    c.write(
        "extra.yaml",
        &service_yaml("extra", None, "web", "TCP", 9000, 8080),
    );
    let (extra_vip, extra_proxy) = c.wait_status("the added service", |s| {
        let svc = service(s, "default/extra")?;
        let vip = svc.vip.ok_or("no VIP")?.0;
        let proxy = proxy_port(s, "default/extra", 9000)?;
        listener(s, proxy)?;
        Ok((vip, proxy))
    });
    let extra_url = format!("http://{extra_vip}:9000/");
    assert_eq!(c.get(&client, &extra_url), "pod2@8080");
    let rules = portal_lines(&c.iptables_save());
    assert!(
        rules
            .iter()
            .any(|l| l.contains(&format!("{extra_vip}/32")) && l.contains(&extra_proxy.to_string())),
        "no rule for the added service: {rules:#?}"
    );

    // Rename it into a subfolder: same service, same VIP, same port, no rule change.
    std::fs::create_dir_all(c.dir.join("moved")).unwrap();
    std::fs::rename(c.dir.join("extra.yaml"), c.dir.join("moved/extra.yaml")).unwrap();
    c.wait_status("the renamed file to be the service's source", |s| {
        let svc = service(s, "default/extra")?;
        if svc.source.file == "moved/extra.yaml" {
            Ok(())
        } else {
            Err(format!("source {:?}", svc.source))
        }
    });
    let status = c.status();
    assert_eq!(
        service(&status, "default/extra").unwrap().vip.map(|v| v.0),
        Some(extra_vip)
    );
    assert_eq!(
        proxy_port(&status, "default/extra", 9000).unwrap(),
        extra_proxy
    );
    assert_eq!(
        portal_lines(&c.iptables_save()),
        rules,
        "a rename changed rules"
    );
    assert_eq!(c.get(&client, &extra_url), "pod2@8080");

    // An invalid edit: the last good version stays in force, the error names file and line.
    let mut bad = service_yaml("web", Some("10.11.0.30"), "web", "TCP", 80, 8081);
    bad = bad.replace("targetPort: 8081", "targetPort: 70000");
    let bad_line = bad.lines().position(|l| l.contains("70000")).unwrap() + 1;
    c.write("web.yaml", &bad);
    let problem = c.wait_status("the error in web.yaml", |s| {
        s.diagnostics
            .iter()
            .find(|d| d.is_error() && d.file == "web.yaml")
            .cloned()
            .ok_or_else(|| format!("{:?}", s.diagnostics))
    });
    assert_eq!(problem.line, Some(bad_line), "{problem}");
    assert!(problem.to_string().contains("70000"), "{problem}");
    let status = c.status();
    assert!(status.last_reconcile.as_ref().unwrap().ok);
    assert_eq!(
        endpoints(&status, "default/web", 80).unwrap(),
        strings(&["10.244.1.3:8081"]),
        "the last good web.yaml stays in force"
    );
    assert_eq!(distinct(&c.names(&client, web, 3)), strings(&["pod2@8081"]));

    // Remove the added file: rule and listener go, the VIP stops answering.
    std::fs::remove_file(c.dir.join("moved/extra.yaml")).unwrap();
    c.wait_status("the removed service to go", |s| {
        if service(s, "default/extra").is_ok() || listener(s, extra_proxy).is_ok() {
            Err("still there".to_string())
        } else {
            Ok(())
        }
    });
    let rules = portal_lines(&c.iptables_save());
    assert!(
        !rules.iter().any(|l| l.contains(&format!("{extra_vip}/32"))),
        "a rule for the removed service is left: {rules:#?}"
    );
    let reply = c.curl(&client, &extra_url, 2);
    assert!(!reply.ok(), "the removed service still answers: {reply:?}");
    // The fixed file is picked up again.
    c.write(
        "web.yaml",
        &service_yaml("web", Some("10.11.0.30"), "web", "TCP", 80, 8080),
    );
    c.wait_names("the fixed web.yaml", &client, web, 2, |n| {
        distinct(n) == strings(&["pod2@8080"])
    });
    assert!(
        !c.status().diagnostics.iter().any(|d| d.is_error()),
        "the error stays after the fix"
    );
}

/// Deletes a rule given as an `iptables-save` line (`-A CHAIN ...`) in the node.
fn delete_rule(c: &Cluster, table: &str, line: &str) {
    let rest = line.strip_prefix("-A ").expect("an -A line");
    let command = format!("iptables -t {table} -D {rest}");
    c.run_ok(&c.node(), "sh", &["-c", &command]);
}

#[test]
fn drift_is_repaired_at_the_next_resync() {
    let mut c = Cluster::new("drift");
    let (_, client) = web_on_pods(&mut c, 2, "10.11.0.70");
    c.start_daemon(&["--resync-seconds", "2"]);
    let url = "http://10.11.0.70/";
    c.names(&client, url, 2);
    let good = portal_lines(&c.iptables_save());
    let chains: Vec<String> = good
        .iter()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(!chains.is_empty(), "no PORTAL chains: {good:#?}");
    // Resync every 2 s: repaired within one period, plus the pass itself.
    let within = Duration::from_secs(4);
    let wait_repaired = |c: &Cluster, what: &str| {
        let started = Instant::now();
        poll(what, within, || {
            let now = portal_lines(&c.iptables_save());
            if now == good {
                Ok(())
            } else {
                Err(format!("{now:#?}"))
            }
        });
        started.elapsed()
    };

    // 1. Flush all of portald's chains.
    for chain in &chains {
        c.iptables(&["-t", table_of(chain), "-F", chain]);
    }
    assert_ne!(portal_lines(&c.iptables_save()), good);
    let took = wait_repaired(&c, "flushed chains to be refilled");
    eprintln!("flushed chains repaired in {took:?}");
    c.names(&client, url, 2);

    // 2. Delete the jumps from the built-in chains.
    let jumps: Vec<String> = good
        .iter()
        .filter(|l| l.starts_with("-A PREROUTING") || l.starts_with("-A OUTPUT"))
        .cloned()
        .collect();
    assert!(jumps.len() >= 2, "{good:#?}");
    for jump in &jumps {
        // The table is the jump target's: the refusal chains live in filter.
        let target = jump.rsplit_once("-j ").map_or("", |(_, t)| t.trim());
        delete_rule(&c, table_of(target), jump);
    }
    let reply = c.curl(&client, url, 1);
    assert!(
        !reply.ok(),
        "the VIP answered without the jump rules: {reply:?}"
    );
    wait_repaired(&c, "the jump rules to come back");
    c.names(&client, url, 2);
    c.names(&c.node(), url, 2);

    // 3. A stray rule inside a portald chain is removed.
    let chain = chains
        .iter()
        .find(|name| table_of(name) == "nat")
        .expect("a nat chain");
    c.iptables(&[
        "-t",
        table_of(chain),
        "-I",
        chain,
        "1",
        "-p",
        "tcp",
        "-d",
        "10.11.0.99/32",
        "-j",
        "RETURN",
    ]);
    assert_ne!(portal_lines(&c.iptables_save()), good);
    wait_repaired(&c, "the stray rule to be removed");
    let last = c.status().last_reconcile.unwrap();
    assert!(last.ok, "{last:?}");
}

#[test]
fn foreign_rules_are_untouched_by_apply_restart_and_cleanup() {
    let mut c = Cluster::new("foreign");
    started_pods(&mut c, 8080, 2);
    let client = c.client("client", CLIENT);
    for rule in FOREIGN {
        c.iptables(rule);
    }
    let baseline = foreign_lines(&c.iptables_save());
    assert!(
        baseline.iter().any(|l| l.contains("admin ssh"))
            && baseline.iter().any(|l| l.starts_with(":DOCKER")),
        "the foreign rules are not in place: {baseline:#?}"
    );
    let check = |c: &Cluster, after: &str| {
        let now = foreign_lines(&c.iptables_save());
        assert_eq!(now, baseline, "foreign rules changed after {after}");
    };
    c.write(
        "web.yaml",
        &service_yaml("web", Some("10.11.0.80"), "web", "TCP", 80, 8080),
    );
    c.write(
        "pods.yaml",
        &pods_yaml(&[("pod1", POD1, "web"), ("pod2", POD2, "web")]),
    );
    c.start_daemon(&[]);
    assert_eq!(c.names(&client, "http://10.11.0.80/", 2).len(), 2);
    assert!(!portal_lines(&c.iptables_save()).is_empty());
    check(&c, "the daemon's start");

    let dir = c.dir.display().to_string();
    let out = c.portald(&["apply", &dir]);
    assert!(out.status.success(), "apply: {out:?}");
    check(&c, "apply");

    c.stop_daemon(SIGTERM);
    c.start_daemon(&[]);
    assert_eq!(c.names(&client, "http://10.11.0.80/", 2).len(), 2);
    check(&c, "a restart");

    c.stop_daemon(SIGTERM);
    let out = c.portald(&["cleanup"]);
    assert!(out.status.success(), "cleanup: {out:?}");
    check(&c, "cleanup");
    let left = portal_lines(&c.iptables_save());
    assert!(left.is_empty(), "cleanup left portald's rules: {left:#?}");
}

#[test]
fn kill_9_restart_keeps_ports_and_rules() {
    let mut c = Cluster::new("kill9");
    let (_, client) = web_on_pods(&mut c, 2, "10.11.0.90");
    c.write(
        "dns.yaml",
        &service_yaml("dns", Some("10.11.0.91"), "web", "UDP", 53, 5353),
    );
    let first = c.start_daemon(&[]);
    let url = "http://10.11.0.90/";
    c.names(&client, url, 2);
    let before = c.status();
    let ports = |s: &Status| {
        (
            proxy_port(s, "default/web", 80).unwrap(),
            proxy_port(s, "default/dns", 53).unwrap(),
        )
    };
    let ports_before = ports(&before);
    let rules_before = normalize_save(&c.iptables_save());

    c.stop_daemon(SIGKILL);
    assert_eq!(
        normalize_save(&c.iptables_save()),
        rules_before,
        "rules must stay when the daemon dies"
    );
    let reply = c.curl(&client, url, 2);
    assert!(
        !reply.ok(),
        "nothing should serve the VIP while the daemon is dead: {reply:?}"
    );

    let second = c.start_daemon(&[]);
    assert_ne!(first, second);
    let after = c.status();
    assert_eq!(after.pid, second);
    assert_eq!(ports(&after), ports_before, "the proxy ports moved");
    let last = after.last_reconcile.clone().unwrap();
    assert!(
        last.ok && !last.batch_sent,
        "a restart with unchanged rules sent a kernel batch: {last:?}"
    );
    eprintln!("restart reconcile: {last:?}");
    assert_eq!(
        normalize_save(&c.iptables_save()),
        rules_before,
        "the restart changed the rules"
    );
    for port in [ports_before.0, ports_before.1] {
        listener(&after, port).unwrap();
    }
    assert_eq!(
        distinct(&c.names(&client, url, 4)),
        strings(&["pod1", "pod2"])
    );
}

/// The table of one of portald's iptables chains: its slot's, or `nat` for a portal's own.
fn table_of(chain: &str) -> &'static str {
    planners::Slot::ALL
        .into_iter()
        .find(|s| planners::iptables::chain(*s) == chain)
        .map_or("nat", planners::iptables::table)
}

#[test]
fn second_apply_sends_no_batch() {
    let mut c = Cluster::new("apply2");
    let (_, client) = web_on_pods(&mut c, 2, "10.11.0.100");
    // No resync during the test: only `apply` may repair.
    c.start_daemon(&["--resync-seconds", "600"]);
    let good = portal_lines(&c.iptables_save());
    let chain = good
        .iter()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .find(|name| good.iter().any(|l| l.starts_with(&format!("-A {name} "))))
        .expect("a portald chain with rules")
        .to_string();
    c.iptables(&["-t", table_of(&chain), "-F", &chain]);

    let dir = c.dir.display().to_string();
    let apply = |c: &Cluster| {
        let out = c.portald(&["apply", &dir]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "apply failed: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (text, c.status().last_reconcile.unwrap())
    };
    let (text, first) = apply(&c);
    assert!(
        first.ok && first.batch_sent,
        "the first apply repairs: {first:?}"
    );
    assert!(
        !text.contains("0 to add, 0 to change, 0 to remove"),
        "the first apply had work to do: {text}"
    );
    assert_eq!(portal_lines(&c.iptables_save()), good);

    let (text, second) = apply(&c);
    assert!(
        text.contains("Plan: 0 to add, 0 to change, 0 to remove."),
        "second apply: {text}"
    );
    assert_eq!(second.trigger, "request");
    assert!(second.ok && !second.batch_sent, "{second:?}");
    assert_eq!(portal_lines(&c.iptables_save()), good);
    assert_eq!(
        distinct(&c.names(&client, "http://10.11.0.100/", 4)),
        strings(&["pod1", "pod2"])
    );
}

/// Two pods answering UDP on 5353 behind `default/dns` = 10.11.0.60:53, and a client.
fn udp_cluster(tag: &str, extra: &[&str]) -> (Cluster, String) {
    let mut c = Cluster::new(tag);
    c.pod("pod1", POD1, &[("pod1", &[], &[5353])]);
    c.pod("pod2", POD2, &[("pod2", &[], &[5353])]);
    let client = c.client("client", CLIENT);
    c.write(
        "dns.yaml",
        &service_yaml("dns", Some("10.11.0.60"), "dns", "UDP", 53, 5353),
    );
    c.write(
        "pods.yaml",
        &pods_yaml(&[("pod1", POD1, "dns"), ("pod2", POD2, "dns")]),
    );
    c.start_daemon(extra);
    (c, client)
}

/// Six datagrams from fresh source ports, from `ns`: all answered, by both pods.
fn assert_udp_spreads(c: &Cluster, ns: &str) {
    let (ok, lines) = c.udp_probe(ns, "10.11.0.60:53", 6);
    assert!(
        ok,
        "UDP through the VIP from {ns}: {lines:?}\n{}",
        c.daemon_logs()
    );
    let names: Vec<String> = lines
        .iter()
        .filter_map(|l| l.split_once(":probe-"))
        .map(|(name, _)| name.to_string())
        .collect();
    assert_eq!(names.len(), 6, "{lines:?}");
    assert_eq!(distinct(&names), strings(&["pod1", "pod2"]), "{lines:?}");
}

#[test]
fn udp_from_the_node_itself_is_answered_through_the_vip() {
    let (c, _) = udp_cluster("udphost", &[]);
    // Host-originated datagrams take the OUTPUT path (DNAT to a local address); the
    // replies must come back from that address for conntrack to undo the DNAT.
    assert_udp_spreads(&c, &c.node());
}

#[test]
fn udp_echo_through_the_vip_and_flow_idle_timeout() {
    let (c, client) = udp_cluster("udp", &["--udp-idle-timeout-seconds", "1"]);
    let proxy = proxy_port(&c.status(), "default/dns", 53).unwrap();
    assert_udp_spreads(&c, &client);

    // One client flow: kept while it is busy, removed once idle, recreated on demand.
    let vip: SocketAddr = "10.11.0.60:53".parse().unwrap();
    let socket = in_netns(&client, || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("binding");
        s.connect(vip).expect("connecting");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    });
    let ask = |payload: &str| -> String {
        socket.send(payload.as_bytes()).expect("sending");
        let mut buf = [0u8; 1500];
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no reply to {payload}: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // Let the probes' flows expire first, so that `active` counts only this flow.
    c.wait_status("the probes' flows to expire", |s| {
        let l = listener(s, proxy)?;
        if l.active == 0 {
            Ok(())
        } else {
            Err(format!("{l:?}"))
        }
    });
    let first = ask("q0");
    let pod = first.split(':').next().unwrap().to_string();
    assert_eq!(first, format!("{pod}:q0"));
    let busy_until = Instant::now() + Duration::from_millis(2500);
    let mut i = 1;
    while Instant::now() < busy_until {
        std::thread::sleep(Duration::from_millis(300));
        let reply = ask(&format!("q{i}"));
        assert_eq!(reply, format!("{pod}:q{i}"), "a flow stays on its pod");
        let l = listener(&c.status(), proxy).unwrap().clone();
        assert_eq!(l.active, 1, "the busy flow is in the table: {l:?}");
        i += 1;
    }
    let idle_since = Instant::now();
    poll(
        "the idle flow to be removed",
        Duration::from_secs(6),
        || {
            let l = listener(&c.status(), proxy)?.clone();
            if l.active == 0 {
                Ok(())
            } else {
                Err(format!("{l:?}"))
            }
        },
    );
    let removed_after = idle_since.elapsed();
    assert!(
        removed_after >= Duration::from_millis(700),
        "the flow went after {removed_after:?}, before its 1 s idle timeout"
    );
    let again = ask("again");
    assert!(again.ends_with(":again"), "{again}");
    let l = listener(&c.status(), proxy).unwrap().clone();
    assert_eq!(l.active, 1, "a new flow: {l:?}");
}

#[test]
fn foreign_process_on_proxy_port_is_replaced_make_before_break() {
    let mut c = Cluster::new("takeover");
    let (_, client) = web_on_pods(&mut c, 2, "10.11.0.110");
    c.start_daemon(&[]);
    let url = "http://10.11.0.110/";
    c.names(&client, url, 2);
    let old = proxy_port(&c.status(), "default/web", 80).unwrap();
    let to_old = format!("--to-ports {old}");

    // Stopped without --cleanup-on-exit: the rules stay and point at a closed port.
    c.stop_daemon(SIGTERM);
    let rules = portal_lines(&c.iptables_save());
    assert!(
        rules.iter().any(|l| l.contains(&to_old)),
        "the rules should stay after a plain stop: {rules:#?}"
    );
    let node = c.node();
    let listen = format!("TCP-LISTEN:{old},reuseaddr,fork");
    let foreign = c.spawn(
        &node,
        "socat",
        &[
            listen,
            // The pause lets socat relay the answer before it sees its child exit.
            "SYSTEM:echo HTTP/1.0 200 OK; echo; echo foreign; sleep 0.3".to_string(),
        ],
    );
    poll("socat to listen", CONVERGE, || {
        if c.listening(&node, old) {
            Ok(())
        } else {
            Err(c.bed.log_of(foreign))
        }
    });
    // Meanwhile the foreign process catches the VIP's traffic.
    c.wait_names("the foreign process to answer", &client, url, 1, |n| {
        n == ["foreign"]
    });

    c.start_daemon(&[]);
    let status = c.status();
    let new = proxy_port(&status, "default/web", 80).unwrap();
    assert_ne!(new, old, "the daemon reused a port a foreign process holds");
    listener(&status, new).unwrap();
    let rules = portal_lines(&c.iptables_save());
    assert!(
        rules
            .iter()
            .any(|l| l.contains(&format!("--to-ports {new}"))),
        "no rule to the new port {new}: {rules:#?}"
    );
    assert!(
        !rules.iter().any(|l| l.contains(&to_old)),
        "a rule still sends traffic to the foreign process: {rules:#?}"
    );
    assert_eq!(
        distinct(&c.names(&client, url, 4)),
        strings(&["pod1", "pod2"])
    );
    assert_eq!(
        distinct(&c.names(&node, url, 4)),
        strings(&["pod1", "pod2"])
    );
    // The foreign process is left alone.
    assert!(
        c.listening(&node, old),
        "the foreign listener was disturbed"
    );
    assert!(alive(foreign), "socat died");
}

#[test]
fn the_daemon_writes_its_node_state_not_the_lock_and_that_write_starts_no_reconcile() {
    let mut c = Cluster::new("ownlock");
    c.write(
        "web.yaml",
        &service_yaml("web", None, "web", "TCP", 80, 8080),
    );
    // No resync during the test: each reconcile after the first has a file event behind it.
    c.start_daemon(&["--resync-seconds", "600"]);
    // The lock belongs to the repository: the daemon records its allocation elsewhere.
    assert!(
        !c.dir.join("portald.lock").exists(),
        "the daemon wrote a lock into the watched directory"
    );
    let state = std::fs::read_to_string(c.state_file()).expect("the node state was written");
    assert!(state.contains("\"default/web\""), "{state}");
    // `start_daemon` waited until no reconcile had run for 600 ms (6 debounce periods).
    assert_eq!(
        c.status().reconciles,
        1,
        "only the start reconciled:\n{}",
        c.daemon_logs()
    );

    // A user's change is still seen.
    c.write(
        "api.yaml",
        &service_yaml("api", None, "api", "TCP", 81, 8081),
    );
    c.wait_status("the new file's reconcile", |s| {
        service(s, "default/api").map(|_| ())
    });
    c.settle();
    assert_eq!(c.status().reconciles, 2, "{}", c.daemon_logs());
}

#[test]
fn sighup_reloads_without_dropping_a_request() {
    let mut c = Cluster::new("sighup");
    seed_on_two_pods(&mut c);
    let client = c.client("client", CLIENT);
    // No resync: every pass after the start is one the reload asked for.
    let pid = c.start_daemon(&["--resync-seconds", "600"]);
    let before = c.status().reconciles;

    // Requests keep going while the daemon gets three SIGHUPs (each was its end before).
    let url = "http://10.11.0.1:12345/";
    let mut answered = 0;
    for round in 0..3 {
        // SAFETY: the pid is the daemon this test started and still holds as a child.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
        for _ in 0..10 {
            let reply = c.curl(&client, url, 3);
            assert!(reply.ok(), "round {round}: request failed: {reply:?}");
            answered += 1;
        }
    }
    assert_eq!(answered, 30);
    assert!(alive(pid), "the daemon ended on SIGHUP");
    c.wait_status("a reconcile triggered by the reload", |s| {
        match &s.last_reconcile {
            Some(r) if r.trigger == "reload" && r.ok && s.reconciles > before => Ok(()),
            other => Err(format!("{} reconciles, last {other:?}", s.reconciles)),
        }
    });
    let logs = c.daemon_logs();
    assert!(logs.contains("SIGHUP: reloading"), "{logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "colour codes in a log that is not a terminal: {logs}"
    );
}

/// Every datagram that arrived on `socket` within `wait`, as text.
fn notifications(socket: &std::os::unix::net::UnixDatagram, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("read timeout");
        match socket.recv(&mut buf) {
            Ok(n) => out.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    out
}

#[test]
fn the_daemon_speaks_the_systemd_notification_protocol() {
    let mut c = Cluster::new("sdnotify");
    seed_on_two_pods(&mut c);
    // The service manager's end: a datagram socket, as systemd binds for Type=notify.
    let path = c.temp().join("notify.sock");
    let manager = std::os::unix::net::UnixDatagram::bind(&path).expect("binds NOTIFY_SOCKET");
    let notify_socket = format!("NOTIFY_SOCKET={}", path.display());
    let pid = c.start_daemon_with_env(
        &[&notify_socket, "WATCHDOG_USEC=400000"],
        &["--resync-seconds", "600"],
    );

    // start_daemon returned after the first successful reconcile: READY=1 has been sent,
    // with a status line, and the rules it announces are in the kernel.
    let first = notifications(&manager, Duration::from_millis(700));
    let ready = first
        .iter()
        .find(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1: {first:?}"));
    assert!(
        ready.contains("STATUS=1 services, 1 ports, 2 endpoints; last reconcile ok (start)"),
        "{ready}"
    );
    assert!(
        portal_lines(&c.iptables_save())
            .iter()
            .any(|l| l.contains("10.11.0.1/32")),
        "READY=1 before the rules were live"
    );
    // The watchdog (WATCHDOG_USEC=0.4 s) is fed every 0.2 s.
    let pings = first
        .iter()
        .filter(|m| m.trim_end() == "WATCHDOG=1")
        .count();
    assert!(pings >= 2, "{pings} watchdog pings in 0.7 s: {first:?}");

    // A reload: RELOADING=1 with the monotonic time, then READY=1 again.
    // SAFETY: the pid is the daemon this test started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    let reload = notifications(&manager, Duration::from_millis(1500));
    let reloading = reload
        .iter()
        .position(|m| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1: {reload:?}"));
    assert!(reload[reloading].contains("MONOTONIC_USEC="), "{reload:?}");
    assert!(
        reload[reloading..]
            .iter()
            .any(|m| m.lines().any(|l| l == "READY=1")),
        "no READY=1 after the reload: {reload:?}"
    );

    c.stop_daemon(libc::SIGTERM);
    let last = notifications(&manager, Duration::from_millis(300));
    assert!(
        last.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "no STOPPING=1: {last:?}"
    );
}

#[test]
fn status_lists_every_problem_check_lists() {
    let mut c = Cluster::new("problems");
    // A service defined twice, an externalIP not allowed, an endpoint no cluster accepts,
    // and a file that breaks after it served: its last good version is held in force.
    c.write("a.yaml", &service_yaml("twice", None, "a", "TCP", 80, 8080));
    c.write("b.yaml", &service_yaml("twice", None, "b", "TCP", 81, 8081));
    c.write(
        "ingress.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: ingress}\nspec:\n  selector: {app: ingress}\n  externalIPs: [203.0.113.10]\n  ports: [{port: 80}]\n",
    );
    c.write(
        "endpoints.yaml",
        "apiVersion: v1\nkind: Endpoints\nmetadata: {name: ingress}\nsubsets:\n  - addresses: [{ip: 10.244.1.2}, {ip: 127.0.0.1}]\n    ports: [{port: 80}]\n",
    );
    c.write(
        "held.yaml",
        &service_yaml("held", None, "held", "TCP", 82, 8082),
    );
    c.start_daemon(&[]);
    c.write(
        "held.yaml",
        &service_yaml("held", None, "held", "TCP", 82, 8082).replace("port: 82\n", "port: 70000\n"),
    );
    let dir = c.dir.display().to_string();
    let check_json = c.run(&c.node(), PORTALD, &["check", &dir, "--format", "json"]);
    let report: serde_json::Value =
        serde_json::from_slice(&check_json.stdout).expect("check --format json is JSON");
    let listed: Vec<engine::diagnostics::Diagnostic> =
        serde_json::from_value(report["diagnostics"].clone()).expect("diagnostics");
    for expected in [
        "duplicate service",
        "externalIPs are not served",
        "`127.0.0.1` refused",
        "out of range",
    ] {
        assert!(
            listed.iter().any(|d| d.message.contains(expected)),
            "check lists `{expected}`: {listed:#?}"
        );
    }
    // --json: the very diagnostics, each with its file and line.
    let status = c.wait_status("status to list what check lists", |s| {
        let missing: Vec<String> = listed
            .iter()
            .filter(|d| !s.diagnostics.contains(d))
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() {
            Ok(s.clone())
        } else {
            Err(format!(
                "missing from status: {missing:#?}\nstatus has: {:#?}",
                s.diagnostics
            ))
        }
    });
    assert!(
        status.diagnostics.iter().any(
            |d| d.file == "held.yaml" && d.message.contains("last good version stays in force")
        ),
        "status says what the broken file holds back: {:#?}",
        status.diagnostics
    );
    assert!(
        service(&status, "default/held").is_ok(),
        "the last good version of held.yaml is still served"
    );
    // Text: every line `check` prints about a file is a line of `status`.
    let check_text = c.run(&c.node(), PORTALD, &["check", &dir]);
    let status_text = c.portald(&["status"]);
    let status_text = String::from_utf8_lossy(&status_text.stdout).into_owned();
    let status_lines: Vec<&str> = status_text.lines().map(str::trim).collect();
    let check_text = String::from_utf8_lossy(&check_text.stdout).into_owned();
    let problems: Vec<&str> = check_text
        .lines()
        .filter(|l| l.contains(": error: ") || l.contains(": warning: ") || l.contains(": note: "))
        .collect();
    assert_eq!(problems.len(), listed.len(), "{check_text}");
    for line in problems {
        assert!(
            status_lines.contains(&line),
            "`status` misses `{line}`:\n{status_text}"
        );
    }
}

/// The node's NAT state in both dialects, without counters: what a refused plan must leave
/// exactly as it was.
fn kernel_state(c: &Cluster) -> (Vec<String>, String) {
    let node = c.node();
    let tables = c.run_ok(&node, "nft", &["list", "tables"]);
    let portald = if tables.contains("table ip portald") {
        c.run_ok(&node, "nft", &["list", "table", "ip", "portald"])
    } else {
        String::new()
    };
    (
        normalize_save(&c.iptables_save()),
        format!("{tables}{portald}"),
    )
}

/// `portald apply FILE`: the exit code and what it printed on stderr.
fn apply_file(c: &Cluster, plan: &std::path::Path) -> (i32, String) {
    let out = c.portald(&["apply", &plan.display().to_string()]);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A saved plan goes through only untampered, and made from the daemon's own directory and
/// lock: an edited batch (a foreign table or chain), another directory or a changed lock
/// are refused and leave the kernel as it was.
fn saved_plan_is_checked(backend: &str) {
    let mut c = Cluster::new(&format!("saved{}", &backend[..1]));
    c.write(
        "web.yaml",
        &service_yaml("web", Some("10.11.0.70"), "web", "TCP", 80, 8080),
    );
    // A ready pod: the service is redirected (one without an endpoint is refused instead).
    c.write("pods.yaml", &pods_yaml(&[("pod1", POD1, "web")]));
    // The repository's lock, written by `portald lock` (the daemon only reads it).
    let dir = c.dir.display().to_string();
    let locked = c.portald(&["lock", &dir]);
    assert!(
        locked.status.success(),
        "{}",
        String::from_utf8_lossy(&locked.stderr)
    );
    // No resync: the drift below stays until a plan repairs it.
    c.start_daemon(&[
        "--backend",
        backend,
        "--resync-seconds",
        "600",
        "--drift-check-seconds",
        "0",
    ]);
    let good = kernel_state(&c);
    let node = c.node();
    match backend {
        "iptables" => c.iptables(&["-t", "nat", "-F", "PORTAL-CONTAINER"]),
        _ => {
            c.run_ok(
                &node,
                "nft",
                &["flush", "chain", "ip", "portald", "container"],
            );
        }
    }
    let drifted = kernel_state(&c);
    assert_ne!(drifted, good, "the drift changed nothing");

    let plan_path = c.temp().join("plan.json");
    let out = c.portald(&[
        "plan",
        &dir,
        "--backend",
        backend,
        "--out",
        &plan_path.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&plan_path).expect("plan file")).expect("JSON");
    let batch = plan["batch"].as_str().expect("batch").to_string();
    assert!(!batch.is_empty(), "the plan repairs the drift: {plan}");
    assert!(
        plan["inputs"]["services"]
            .as_str()
            .is_some_and(|d| d.len() == 64),
        "{}",
        plan["inputs"]
    );

    // 1. The batch edited to create what portald does not own.
    let evil = match backend {
        "iptables" => batch.replacen("*nat\n", "*nat\n:EVIL - [0:0]\n", 1),
        _ => format!("{batch}add table ip evil\n"),
    };
    assert_ne!(evil, batch);
    let mut tampered = plan.clone();
    tampered["batch"] = serde_json::Value::String(evil);
    let tampered_path = c.temp().join("tampered.json");
    std::fs::write(&tampered_path, tampered.to_string()).expect("write");
    let (code, stderr) = apply_file(&c, &tampered_path);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("batch is not what portald renders"),
        "{stderr}"
    );
    assert_eq!(
        kernel_state(&c),
        drifted,
        "a refused plan changed the kernel"
    );
    assert!(!c.run_ok(&node, "nft", &["list", "tables"]).contains("evil"));
    assert!(!c.iptables_save().contains(":EVIL"));

    // 2. A plan made from another directory (one more file).
    let other = c.temp().join("other");
    std::fs::create_dir_all(&other).expect("other dir");
    for entry in std::fs::read_dir(&c.dir).expect("dir").flatten() {
        std::fs::copy(entry.path(), other.join(entry.file_name())).expect("copy");
    }
    std::fs::write(
        other.join("api.yaml"),
        service_yaml("api", Some("10.11.0.71"), "api", "TCP", 80, 8080),
    )
    .expect("write");
    let other_plan = c.temp().join("other.json");
    let out = c.portald(&[
        "plan",
        &other.display().to_string(),
        "--backend",
        backend,
        "--out",
        &other_plan.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, stderr) = apply_file(&c, &other_plan);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("made from other services"), "{stderr}");
    assert_eq!(kernel_state(&c), drifted);

    // 3. The untampered plan applies and repairs the drift.
    let (code, stderr) = apply_file(&c, &plan_path);
    assert_eq!(code, 0, "{stderr}\n{}", c.daemon_logs());
    assert_eq!(kernel_state(&c), good);

    // 4. The lock changed since the plan was made: refused before anything else is looked at.
    let lock_path = c.dir.join("portald.lock");
    let lock = std::fs::read_to_string(&lock_path).expect("the repository's lock");
    std::fs::write(&lock_path, format!("{lock}\n")).expect("write lock");
    let (code, stderr) = apply_file(&c, &plan_path);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("another allocation record"), "{stderr}");
}

#[test]
fn saved_iptables_plan_is_applied_only_untampered_from_the_daemons_directory_and_lock() {
    saved_plan_is_checked("iptables");
}

#[test]
fn saved_nftables_plan_is_applied_only_untampered_from_the_daemons_directory_and_lock() {
    saved_plan_is_checked("nftables");
}

#[test]
fn the_daemons_state_write_replaces_a_planted_symlink_and_never_writes_the_lock() {
    let mut c = Cluster::new("locklink");
    c.write(
        "web.yaml",
        &service_yaml("web", None, "web", "TCP", 80, 8080),
    );
    // Victims outside the services directory: one behind the lock (an input the daemon never
    // writes; a valid empty lock, so reading it succeeds), one behind the node state file.
    let victim_state = c.temp().join("victim-passwd");
    let victim_lock = c.temp().join("victim-lock");
    std::fs::write(&victim_state, "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(&victim_lock, "{\"format_version\": 1}\n").unwrap();
    std::os::unix::fs::symlink(&victim_state, c.state_file()).unwrap();
    std::os::unix::fs::symlink(&victim_lock, c.dir.join("portald.lock")).unwrap();

    c.start_daemon(&[]);

    assert_eq!(
        std::fs::read_to_string(&victim_state).unwrap(),
        "root:x:0:0::/root:/bin/sh\n"
    );
    assert_eq!(
        std::fs::read_to_string(&victim_lock).unwrap(),
        "{\"format_version\": 1}\n"
    );
    assert!(
        std::fs::symlink_metadata(c.dir.join("portald.lock"))
            .unwrap()
            .file_type()
            .is_symlink(),
        "the daemon replaced the lock: it is an input, never written"
    );
    let state_path = c.state_file();
    assert!(
        !std::fs::symlink_metadata(&state_path)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the node state is still a symlink"
    );
    let state = engine::allocate::Lock::read(&state_path).expect("the written state parses");
    let vip = service(&c.status(), "default/web").unwrap().vip;
    assert_eq!(
        state.vips.get("default/web").copied(),
        vip.map(|v| v.0),
        "the node state holds the VIP the daemon chose"
    );
}

#[test]
fn hostile_files_do_not_hold_back_another_files_change_and_a_broken_file_keeps_its_last_good_version(
) {
    let mut c = Cluster::new("hostile");
    c.write(
        "web.yaml",
        &service_yaml("web", None, "web", "TCP", 80, 8080),
    );
    c.write(
        "old.yaml",
        &service_yaml("old", None, "old", "TCP", 82, 8082),
    );
    let fifo = std::ffi::CString::new(c.dir.join("fifo.yaml").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path inside the test's own directory.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::os::unix::fs::symlink("/dev/zero", c.dir.join("zero.yaml")).unwrap();
    c.start_daemon(&["--resync-seconds", "600"]);

    // `old.yaml` turns into 400 KB of nested brackets: refused, its last good version stays.
    let n = 200_000;
    c.write("old.yaml", &("[".repeat(n) + &"]".repeat(n)));
    c.write(
        "maps.yaml",
        &("{a: ".repeat(n / 2) + "1" + &"}".repeat(n / 2)),
    );
    let started = std::time::Instant::now();
    c.write(
        "api.yaml",
        &service_yaml("api", None, "api", "TCP", 81, 8081),
    );
    let status = c.wait_status("the new file's service", |s| {
        service(s, "default/api")?;
        Ok(s.clone())
    });
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(3),
        "api.yaml took {took:?} to be served\n{}",
        c.daemon_logs()
    );
    assert!(
        service(&status, "default/old").is_ok(),
        "old's last good version is gone"
    );
    assert!(service(&status, "default/web").is_ok());
    // Each file's errors (a broken file also gets a note of what it holds back).
    let message = |file: &str| {
        let all: Vec<String> = status
            .diagnostics
            .iter()
            .filter(|d| d.file == file && d.is_error())
            .map(|d| d.message.clone())
            .collect();
        assert!(
            !all.is_empty(),
            "no error for {file}: {:?}",
            status.diagnostics
        );
        all.join("\n")
    };
    assert!(message("old.yaml").contains("nested deeper than 64 levels"));
    assert!(message("maps.yaml").contains("nested deeper than 64 levels"));
    assert_eq!(message("fifo.yaml"), "not a regular file (a FIFO): skipped");
    assert_eq!(
        message("zero.yaml"),
        "not a regular file (a character device): skipped"
    );
}

#[test]
fn json_logs_carry_typed_fields_one_event_a_line() {
    let mut c = Cluster::new("jsonlog");
    seed_on_two_pods(&mut c);
    c.start_daemon(&["--log-format", "json"]);
    let logs = c.daemon_logs();
    let events: Vec<serde_json::Value> = logs
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let message = |e: &serde_json::Value| e["fields"]["message"].as_str().unwrap_or("").to_string();
    let reconciled = events
        .iter()
        .find(|e| message(e).starts_with("reconciled:"))
        .unwrap_or_else(|| panic!("no reconcile event: {logs}"));
    // Numbers as numbers, not Rust `Debug` strings.
    assert!(
        reconciled["fields"]["add"].as_u64().is_some_and(|n| n > 0),
        "{reconciled}"
    );
    assert!(reconciled["fields"]["elapsed_ms"].is_u64(), "{reconciled}");
    assert_eq!(reconciled["fields"]["trigger"], "start", "{reconciled}");
    let ready = events
        .iter()
        .find(|e| message(e) == "ready")
        .unwrap_or_else(|| panic!("no ready event: {logs}"));
    assert_eq!(ready["fields"]["backend"], "iptables", "{ready}");
    // Every message is one line.
    assert!(events.iter().all(|e| !message(e).contains('\n')), "{logs}");
}

#[test]
fn sighup_reads_the_config_file_again_and_takes_its_new_settings_live() {
    let mut c = Cluster::new("hupcfg");
    seed_on_two_pods(&mut c);
    let client = c.client("client", CLIENT);
    // The config file lives outside the services directory, as /etc/portald/config.yaml.
    let config = c.temp().join("config.yaml");
    std::fs::write(&config, "backend: iptables\n").unwrap();
    let config_arg = config.display().to_string();
    let pid = c.start_daemon(&["--config", &config_arg, "--resync-seconds", "600"]);
    assert_eq!(c.status().backend, "iptables");
    assert!(!portal_lines(&c.iptables_save()).is_empty());

    std::fs::write(&config, "backend: nftables\n").unwrap();
    // SAFETY: the pid is the daemon this test started and still holds as a child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGHUP) }, 0);
    c.wait_status("the reload to take the new backend", |s| {
        match &s.last_reconcile {
            Some(r) if s.backend == "nftables" && r.trigger == "reload" && r.ok => Ok(()),
            other => Err(format!("backend {} last {other:?}", s.backend)),
        }
    });
    let node = c.node();
    let tables = c.run_ok(&node, "nft", &["list", "tables"]);
    assert!(tables.contains("table ip portald"), "{tables}");
    assert!(
        portal_lines(&c.iptables_save()).is_empty(),
        "the iptables rules were not retired: {:#?}",
        portal_lines(&c.iptables_save())
    );
    assert_eq!(
        distinct(&c.names(&client, "http://10.11.0.1:12345/", 6)),
        strings(&["pod1", "pod2"])
    );
    assert!(c.daemon_logs().contains("reload: new settings taken"));
}
