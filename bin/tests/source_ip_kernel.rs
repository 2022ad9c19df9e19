//! Tier 3: kernel mode keeps the client's source address where the reply comes back
//! through the node anyway. Node A (the testbed's node, running `portald run`) has a client
//! pod and a local pod on its bridge; node B, reached over a routed link, has a pod on its
//! own bridge. The endpoint behind node B must see the client pod's own address; the local
//! pod, which would answer the client directly over the bridge, must see the node's.

mod support;

use std::net::Ipv4Addr;
use support::*;

/// Node B's pod, on B's bridge `10.244.2.0/24` (B is `10.244.2.1` there).
const REMOTE: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 2);
/// Node A's address on its bridge: a masqueraded connection comes from here.
const NODE_A_BRIDGE: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);

const SERVICES: &str = "apiVersion: v1
kind: Service
metadata: {name: remote}
spec:
  clusterIP: 10.11.0.40
  selector: {app: remote}
  ports: [{port: 80, targetPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: local}
spec:
  clusterIP: 10.11.0.41
  selector: {app: local}
  ports: [{port: 80, targetPort: 80}]
";

/// `ip ARGS` inside `ns`; must succeed.
fn ip(c: &Cluster, ns: &str, args: &[&str]) {
    c.run_ok(ns, "ip", args);
}

/// Node B and its pod running `portald backend --name remote`, routed to and from node A
/// over a veth link (`192.168.77.0/30`): B's pods are not on A's bridge.
fn node_b(c: &mut Cluster) {
    let node_a = c.node();
    let node_b = c.bed.add_bare("nodeb").expect("node B's namespace");
    let pod = c.bed.add_bare("remote").expect("node B's pod namespace");
    ip(
        c,
        &node_a,
        &[
            "link", "add", "nl0", "type", "veth", "peer", "name", "nl0", "netns", &node_b,
        ],
    );
    ip(
        c,
        &node_a,
        &["addr", "add", "192.168.77.1/30", "dev", "nl0"],
    );
    ip(c, &node_a, &["link", "set", "nl0", "up"]);
    ip(
        c,
        &node_a,
        &["route", "add", "10.244.2.0/24", "via", "192.168.77.2"],
    );
    ip(
        c,
        &node_b,
        &["addr", "add", "192.168.77.2/30", "dev", "nl0"],
    );
    ip(c, &node_b, &["link", "set", "nl0", "up"]);
    ip(c, &node_b, &["link", "add", "br0", "type", "bridge"]);
    ip(c, &node_b, &["addr", "add", "10.244.2.1/24", "dev", "br0"]);
    ip(c, &node_b, &["link", "set", "br0", "up"]);
    ip(
        c,
        &node_b,
        &[
            "link", "add", "vr0", "type", "veth", "peer", "name", "eth0", "netns", &pod,
        ],
    );
    ip(c, &node_b, &["link", "set", "vr0", "master", "br0", "up"]);
    ip(
        c,
        &node_b,
        &["route", "add", "10.244.1.0/24", "via", "192.168.77.1"],
    );
    c.run_ok(&node_b, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);
    let addr = format!("{REMOTE}/24");
    ip(c, &pod, &["addr", "add", &addr, "dev", "eth0"]);
    ip(c, &pod, &["link", "set", "eth0", "up"]);
    ip(c, &pod, &["route", "add", "default", "via", "10.244.2.1"]);
    let args: Vec<String> = ["backend", "--name", "remote", "--tcp", "80"]
        .map(String::from)
        .to_vec();
    let pid = c.spawn(&pod, PORTALD, &args);
    poll("the remote backend to be ready", CONVERGE, || {
        let log = c.bed.log_of(pid);
        if log.contains("ready on") {
            Ok(())
        } else {
            Err(log)
        }
    });
}

/// One GET from `ns`: the name that answered and the client address the backend saw
/// (its `X-Client` header).
fn answer(c: &Cluster, ns: &str, url: &str) -> (String, Ipv4Addr) {
    let out = c.run(ns, "curl", &["-sS", "-i", "-m", "5", url]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "GET {url} from {ns} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        c.daemon_logs()
    );
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {text:?}"));
    let peer = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Client: "))
        .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok())
        .unwrap_or_else(|| panic!("no X-Client header in {head:?}"));
    let std::net::IpAddr::V4(seen) = peer.ip() else {
        panic!("an IPv6 client address: {peer}");
    };
    (body.trim().to_string(), seen)
}

fn source_ip(backend: &str) {
    let mut c = Cluster::new(&format!("srcip{}", &backend[..1]));
    c.pod("local", POD1, &[("local", &[80], &[])]);
    let client = c.client("client", CLIENT);
    node_b(&mut c);
    c.write("services.yaml", SERVICES);
    c.write(
        "pods.yaml",
        &pods_yaml(&[("remote", REMOTE, "remote"), ("local", POD1, "local")]),
    );
    c.start_daemon(&["--backend", backend, "--mode", "kernel"]);

    // Behind node B: the reply is routed back through node A, which undoes the DNAT, so
    // nothing needs hiding.
    let (name, seen) = answer(&c, &client, "http://10.11.0.40/");
    assert_eq!(name, "remote");
    assert_eq!(
        seen,
        CLIENT,
        "the endpoint behind node B did not see the client pod's own address\n{}",
        c.daemon_logs()
    );
    // On the client's own bridge: without source NAT the pod would answer the client
    // directly, from an address the client never asked; so it is masqueraded to node A.
    // With br_netfilter off the bridge no longer undoes the DNAT of a reply it forwards,
    // so only the masquerade gets the client its answer.
    let node = c.node();
    for br_netfilter in ["1", "0"] {
        let sysctl = format!("net.bridge.bridge-nf-call-iptables={br_netfilter}");
        c.run_ok(&node, "sysctl", &["-q", "-w", &sysctl]);
        let (name, seen) = answer(&c, &client, "http://10.11.0.41/");
        assert_eq!(name, "local");
        assert_eq!(
            seen, NODE_A_BRIDGE,
            "with {sysctl}, a connection to an endpoint on the client's bridge was not masqueraded"
        );
        let (_, seen) = answer(&c, &client, "http://10.11.0.40/");
        assert_eq!(seen, CLIENT, "with {sysctl}, behind node B");
    }
}

#[test]
fn iptables_kernel_mode_endpoint_behind_another_node_sees_the_client_pods_own_address() {
    source_ip("iptables");
}

#[test]
fn nftables_kernel_mode_endpoint_behind_another_node_sees_the_client_pods_own_address() {
    source_ip("nftables");
}
