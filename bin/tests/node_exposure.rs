//! Tier 3: a node's traffic beyond the plain VIP path. Proxy ports refuse what portald's
//! NAT did not send them; kernel mode lets its translated traffic through a Docker-like
//! FORWARD policy of DROP without changing a foreign rule, with either backend; a pod reaches its own service
//! (hairpin) where the bridge lets it, and is told why not where it does not. Needs root,
//! iproute2, iptables, nft, sysctl and curl.

mod support;

use std::time::Duration;
use support::*;

const WEB_URL: &str = "http://10.11.0.40/";

fn services(c: &Cluster) {
    c.write(
        "web.yaml",
        &service_yaml("web", Some("10.11.0.40"), "web", "TCP", 80, 80),
    );
    c.write(
        "dns.yaml",
        &service_yaml("dns", Some("10.11.0.53"), "web", "UDP", 53, 53),
    );
    c.write("pods.yaml", &pods_yaml(&[("pod1", POD1, "web")]));
}

/// A neighbour on the bridge connects to node-address:proxy-port, bypassing the VIP: the
/// guard refuses it (TCP at once, UDP with no answer), while the VIP still works from the
/// node (DNAT to 127.0.0.1) and from a pod (REDIRECT).
fn guard(backend: &str) {
    let mut c = Cluster::new(&format!("guard{}", &backend[..1]));
    c.pod("pod1", POD1, &[("pod1", &[80], &[53])]);
    let client = c.client("client", CLIENT);
    let node = c.node();
    services(&c);
    c.start_daemon(&["--backend", backend, "--mode", "userspace"]);
    let status = c.status();
    let tcp = proxy_port(&status, "default/web", 80).unwrap();
    let udp = proxy_port(&status, "default/dns", 53).unwrap();

    for ns in [&node, &client] {
        assert_eq!(c.get(ns, WEB_URL), "pod1", "the VIP from {ns}");
    }
    let (all, lines) = c.udp_probe(&client, "10.11.0.53:53", 3);
    assert!(all, "UDP through the VIP: {lines:?}");

    let node_addr = testbed::NODE_ADDR;
    let direct = c.curl(&client, &format!("http://{node_addr}:{tcp}/"), 5);
    assert_eq!(
        direct.code,
        Some(7),
        "a neighbour reached proxy port {tcp} directly: {direct:?}"
    );
    assert!(direct.elapsed < Duration::from_secs(3), "{direct:?}");
    let (any, lines) = c.udp_probe(&client, &format!("{node_addr}:{udp}"), 2);
    assert!(
        !any && lines.iter().all(|l| !l.starts_with("pod")),
        "a neighbour reached UDP proxy port {udp} directly: {lines:?}"
    );
    // Still answered through the VIP after the refusals.
    assert_eq!(c.get(&client, WEB_URL), "pod1");
}

#[test]
fn iptables_proxy_ports_refuse_a_neighbour_but_not_the_vip() {
    guard("iptables");
}

#[test]
fn nftables_proxy_ports_refuse_a_neighbour_but_not_the_vip() {
    guard("nftables");
}

/// Docker's filter rules besides those of [`FOREIGN`] (which has `DOCKER-USER` and the nat
/// `DOCKER` chain): FORWARD policy DROP and its chains jumped from FORWARD.
const DOCKER_FILTER: &[&[&str]] = &[
    &["-t", "filter", "-P", "FORWARD", "DROP"],
    &["-t", "filter", "-N", "DOCKER"],
    &["-t", "filter", "-N", "DOCKER-ISOLATION-STAGE-1"],
    &["-t", "filter", "-N", "DOCKER-ISOLATION-STAGE-2"],
    &[
        "-t",
        "filter",
        "-A",
        "FORWARD",
        "-j",
        "DOCKER-ISOLATION-STAGE-1",
    ],
    &[
        "-t",
        "filter",
        "-A",
        "FORWARD",
        "-o",
        "docker0",
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-j",
        "ACCEPT",
    ],
    &[
        "-t", "filter", "-A", "FORWARD", "-o", "docker0", "-j", "DOCKER",
    ],
    &[
        "-t",
        "filter",
        "-A",
        "DOCKER-ISOLATION-STAGE-1",
        "-i",
        "docker0",
        "!",
        "-o",
        "docker0",
        "-j",
        "DOCKER-ISOLATION-STAGE-2",
    ],
    &[
        "-t",
        "filter",
        "-A",
        "DOCKER-ISOLATION-STAGE-1",
        "-j",
        "RETURN",
    ],
    &[
        "-t",
        "filter",
        "-A",
        "DOCKER-ISOLATION-STAGE-2",
        "-o",
        "docker0",
        "-j",
        "DROP",
    ],
    &[
        "-t",
        "filter",
        "-A",
        "DOCKER-ISOLATION-STAGE-2",
        "-j",
        "RETURN",
    ],
];

fn forward_drop_reported(c: &Cluster) -> bool {
    c.status().diagnostics.iter().any(|d| {
        d.message
            .contains("`ip filter/FORWARD` drops forwarded packets")
    })
}

/// Kernel mode on a Docker-like host (br_netfilter on): TCP and UDP from a namespace on the
/// bridge cross the FORWARD policy of DROP through the VIPs, whatever the backend (nftables
/// keeps the same `PORTAL-FORWARD` chain in iptables-nft as the iptables backend); the
/// foreign rules and policy are the same bytes afterwards; a second pass plans nothing.
fn docker_forward(backend: &str) {
    let mut c = Cluster::new(&format!("dock{}", &backend[..1]));
    c.pod("pod1", POD1, &[("pod1", &[80], &[53])]);
    let client = c.client("client", CLIENT);
    let node = c.node();
    c.run_ok(
        &node,
        "sysctl",
        &["-w", "net.bridge.bridge-nf-call-iptables=1"],
    );
    for rule in FOREIGN.iter().chain(DOCKER_FILTER) {
        c.iptables(rule);
    }
    let baseline = foreign_lines(&c.iptables_save());
    assert!(
        baseline.iter().any(|l| l == ":FORWARD DROP"),
        "{baseline:#?}"
    );
    services(&c);
    c.start_daemon(&["--backend", backend, "--mode", "kernel"]);

    // DNAT in PREROUTING, then FORWARD, where Docker's policy drops: let through.
    assert_eq!(c.get(&client, WEB_URL), "pod1");
    let (all, lines) = c.udp_probe(&client, "10.11.0.53:53", 3);
    assert!(all, "UDP through the VIP past FORWARD DROP: {lines:?}");
    assert!(!forward_drop_reported(&c), "{:?}", c.status().diagnostics);
    assert!(
        portal_lines(&c.iptables_save())
            .iter()
            .any(|l| l == "-A FORWARD -m comment --comment \"portald:forward\" -j PORTAL-FORWARD"),
        "{}",
        c.iptables_save()
    );
    // Nothing else is let through: the pod directly, not through a VIP, is still dropped.
    let direct = c.curl(&client, &format!("http://{POD1}/"), 2);
    assert!(
        !direct.ok(),
        "traffic portald did not translate crossed FORWARD: {direct:?}"
    );
    assert_eq!(
        foreign_lines(&c.iptables_save()),
        baseline,
        "a foreign rule or policy changed"
    );
    c.assert_plans_nothing_in_kernel_mode(backend);
}

#[test]
fn iptables_kernel_mode_crosses_a_docker_forward_drop_policy_and_leaves_it_as_it_was() {
    docker_forward("iptables");
}

#[test]
fn nftables_kernel_mode_crosses_a_docker_forward_drop_policy_and_leaves_it_as_it_was() {
    docker_forward("nftables");
}

/// A service on a VIP and an external IP (outside the portal CIDR, so the masquerade of
/// the bridge's network towards the portals does not cover it: only the hairpin entry does).
const SELF_SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.11.0.40
  externalIPs: [192.0.2.10]
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
";

fn hairpin_warned(c: &Cluster) -> bool {
    c.status()
        .diagnostics
        .iter()
        .any(|d| d.message.contains("hairpin mode off") && d.message.contains("`br0`"))
}

/// pod1 is the only endpoint of its own service, so every connection it makes to the
/// service comes back to itself.
fn hairpin(backend: &str) {
    let mut c = Cluster::new(&format!("hairpin{}", &backend[..1]));
    let pod = c.pod("pod1", POD1, &[("pod1", &[80], &[])]);
    let node = c.node();
    // The testbed's first host port on the bridge.
    let port = "vh0";
    c.write("web.yaml", SELF_SERVICE);
    c.write("pods.yaml", &pods_yaml(&[("pod1", POD1, "web")]));
    let sysctl = |c: &Cluster, value: &str| {
        c.run_ok(
            &node,
            "sysctl",
            &["-w", &format!("net.bridge.bridge-nf-call-iptables={value}")],
        );
    };
    let hairpin_mode = |c: &Cluster, on: &str| {
        c.run_ok(
            &node,
            "ip",
            &["link", "set", port, "type", "bridge_slave", "hairpin", on],
        );
    };
    sysctl(&c, "1");
    c.start_daemon(&[
        "--backend",
        backend,
        "--mode",
        "kernel",
        "--allow-external-ips",
    ]);

    // br_netfilter on, hairpin off: the bridge drops the frame before any rule of
    // portald's could help, and portald says so.
    let reply = c.curl(&pod.ns, WEB_URL, 2);
    assert!(
        !reply.ok(),
        "answered with hairpin mode off; the report would be wrong: {reply:?}"
    );
    assert!(
        hairpin_warned(&c),
        "no hairpin report: {:?}",
        c.status().diagnostics
    );

    // The admin turns hairpin mode on: answered through the VIP and the external IP, and
    // the report goes at the next pass.
    hairpin_mode(&c, "on");
    for url in [WEB_URL, "http://192.0.2.10/"] {
        assert_eq!(c.get(&pod.ns, url), "pod1", "{url} with hairpin mode on");
    }
    c.wait_status("the hairpin report to go", |s| {
        match s.diagnostics.iter().find(|d| d.message.contains("hairpin")) {
            None => Ok(()),
            Some(d) => Err(d.message.clone()),
        }
    });

    // br_netfilter off, hairpin off: routed by the node, answered thanks to masquerade.
    hairpin_mode(&c, "off");
    sysctl(&c, "0");
    for url in [WEB_URL, "http://192.0.2.10/"] {
        assert_eq!(c.get(&pod.ns, url), "pod1", "{url} with br_netfilter off");
    }
}

#[test]
fn iptables_kernel_mode_pod_reaches_its_own_service_or_is_told_why_not() {
    hairpin("iptables");
}

#[test]
fn nftables_kernel_mode_pod_reaches_its_own_service_or_is_told_why_not() {
    hairpin("nftables");
}
