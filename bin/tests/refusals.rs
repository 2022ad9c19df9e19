//! Tier 3: a service with no ready endpoint is refused at once, TCP and UDP, in every
//! backend × mode combination, from the node and from a namespace on the node's bridge.
//! Needs root, iproute2, iptables and nft.

mod support;

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use support::*;

/// A UDP and a TCP service whose selector matches nothing.
const EMPTY: &str = "apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  clusterIP: 10.11.0.30
  selector: {app: nobody}
  ports:
  - {name: dns, protocol: UDP, port: 53}
  - {name: web, protocol: TCP, port: 80}
";

const VIP: Ipv4Addr = Ipv4Addr::new(10, 11, 0, 30);

/// "At once": well under the first retry of any client, far from a silent timeout.
const AT_ONCE: Duration = Duration::from_millis(500);

/// Linux's EPERM (asm-generic/errno-base.h), without a libc dependency for one constant.
const EPERM: i32 = 1;

/// What one datagram to `to` got back on a connected socket: `Ok(elapsed)` when the kernel
/// reported ECONNREFUSED (an ICMP port unreachable came back), else what happened instead.
fn udp_refusal(to: SocketAddrV4) -> Result<Duration, String> {
    let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("bind: {e}"))?;
    // Connected: only then does Linux report an ICMP error to the socket (no IP_RECVERR).
    socket.connect(to).map_err(|e| format!("connect: {e}"))?;
    socket
        .set_read_timeout(Some(AT_ONCE))
        .map_err(|e| format!("timeout: {e}"))?;
    let started = Instant::now();
    // From the node the refusal is in filter OUTPUT, whose drop also fails the send itself
    // (EPERM) while the ICMP error reaches the socket: both at once, and the error is read.
    match socket.send(b"ping") {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(EPERM) => {}
        Err(e) => return Err(format!("send: {e}")),
    }
    let mut buf = [0u8; 512];
    match socket.recv(&mut buf) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(started.elapsed()),
        Err(e) => Err(format!("not a refusal within {AT_ONCE:?}: {e}")),
        Ok(n) => Err(format!(
            "an answer: {:?}",
            String::from_utf8_lossy(&buf[..n])
        )),
    }
}

/// What a TCP connect to `to` got: `Ok(elapsed)` for ECONNREFUSED (a reset to the SYN);
/// a connect that succeeds (a proxy accepting and resetting later) is an error.
fn tcp_refusal(to: SocketAddrV4) -> Result<Duration, String> {
    let started = Instant::now();
    match TcpStream::connect_timeout(&to.into(), AT_ONCE) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(started.elapsed()),
        Err(e) => Err(format!("not a refusal within {AT_ONCE:?}: {e}")),
        Ok(_) => Err("the connection was accepted".into()),
    }
}

fn refuses_at_once(backend: &str, mode: &str) {
    let mut c = Cluster::new(&format!("r{}{}", &backend[..1], &mode[..1]));
    let client = c.client("client", CLIENT);
    let node = c.node();
    c.write("empty.yaml", EMPTY);
    c.start_daemon(&["--backend", backend, "--mode", mode]);
    let mut failures = Vec::new();
    for ns in [&node, &client] {
        // Twice: a second client right after the first must not find the ICMP token spent.
        for attempt in 1..=2 {
            let udp = in_netns(ns, || udp_refusal(SocketAddrV4::new(VIP, 53)));
            let tcp = in_netns(ns, || tcp_refusal(SocketAddrV4::new(VIP, 80)));
            for (proto, result) in [("udp", udp), ("tcp", tcp)] {
                match result {
                    Ok(elapsed) if elapsed < AT_ONCE => {}
                    Ok(elapsed) => failures.push(format!("{proto} from {ns}: took {elapsed:?}")),
                    Err(e) => failures.push(format!("{proto} from {ns} (#{attempt}): {e}")),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{backend}/{mode}: {}\n{}",
        failures.join("\n"),
        c.daemon_logs()
    );

    // Endpoints come back: the service serves again, from the bridge and from the node.
    let _pod = c.pod("pod1", POD1, &[("pod1", &[80], &[])]);
    c.write("pod.yaml", &pods_yaml(&[("pod1", POD1, "nobody")]));
    for ns in [&client, &node] {
        c.wait_names("the endpoint's return", ns, "http://10.11.0.30/", 2, |n| {
            n.iter().all(|x| x == "pod1")
        });
    }
}

#[test]
fn iptables_userspace_refuses_at_once_without_endpoints() {
    refuses_at_once("iptables", "userspace");
}

#[test]
fn iptables_kernel_refuses_at_once_without_endpoints() {
    refuses_at_once("iptables", "kernel");
}

#[test]
fn nftables_userspace_refuses_at_once_without_endpoints() {
    refuses_at_once("nftables", "userspace");
}

#[test]
fn nftables_kernel_refuses_at_once_without_endpoints() {
    refuses_at_once("nftables", "kernel");
}
