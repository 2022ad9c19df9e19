//! The testbed itself: hosts on the node's bridge reach each other, children are logged,
//! stopped and reaped, and every namespace is gone after drop, also after a panic.
//! Needs root and iproute2 (and curl); fails, never skips, without them.
//!
//! The server in a host is this very test binary, re-run with `NETNS_TEST_SERVE` set (see
//! `helper_http_server`), so the testbed's tests need no other program to listen.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::time::{Duration, Instant};
use testbed::{Testbed, NODE_ADDR};

const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);

/// Not a test of its own: a one-line HTTP server when re-run by `spawn_server`, a no-op
/// otherwise.
#[test]
fn helper_http_server() {
    let Ok(spec) = std::env::var("NETNS_TEST_SERVE") else {
        return;
    };
    let (name, port) = spec.split_once(':').expect("NAME:PORT");
    let listener = TcpListener::bind(("0.0.0.0", port.parse::<u16>().unwrap())).unwrap();
    // Written straight to the fd: the harness captures only the print macros.
    std::io::stdout()
        .write_all(format!("listening on {port}\n").as_bytes())
        .unwrap();
    for stream in listener.incoming() {
        let mut stream = stream.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let body = format!("{name}\n");
        let _ = write!(
            stream,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

fn spawn_server(bed: &mut Testbed, ns: &str, name: &str, port: u16) -> u32 {
    let exe = std::env::current_exe().unwrap();
    let var = format!("NETNS_TEST_SERVE={name}:{port}");
    let pid = bed
        .spawn(
            ns,
            "env",
            &[
                &var,
                exe.to_str().unwrap(),
                "--exact",
                "helper_http_server",
                "--nocapture",
                "--test-threads=1",
            ],
        )
        .unwrap();
    assert!(
        bed.wait_for_log(pid, "listening on", Duration::from_secs(10)),
        "server did not start: {}",
        bed.log_of(pid)
    );
    pid
}

fn curl(bed: &Testbed, ns: &str, url: &str) -> String {
    let out = bed
        .run(ns, "curl", &["-sS", "--max-time", "5", url])
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {url} from {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn namespaces() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[test]
fn host_a_answers_host_b_and_the_node_then_all_is_removed() {
    let mut bed = Testbed::new("nst").unwrap();
    let prefix = bed.prefix().to_string();
    let temp = bed.temp_dir().to_path_buf();
    assert!(temp.is_dir());
    let a = bed.add_host("a", A).unwrap();
    let b = bed.add_host("b", B).unwrap();
    assert!(namespaces().contains(bed.node()));

    let pid = spawn_server(&mut bed, &a, "host-a", 80);
    assert_eq!(curl(&bed, &b, &format!("http://{A}/")), "host-a\n");
    assert_eq!(curl(&bed, bed.node(), &format!("http://{A}/")), "host-a\n");

    // The node has forwarding on and the portal route via its bridge.
    let out = bed
        .run_checked(bed.node(), "sysctl", &["-n", "net.ipv4.ip_forward"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    let out = bed.run_checked(bed.node(), "ip", &["route"]).unwrap();
    let routes = String::from_utf8_lossy(&out.stdout);
    assert!(routes.contains("10.11.0.0/16 dev br0"), "{routes}");
    let out = bed.run_checked(&b, "ip", &["route"]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("default via {NODE_ADDR}")));

    bed.stop(pid, libc::SIGTERM).unwrap();
    assert!(bed.exit_status(pid).is_some());
    assert!(bed.log_of(pid).contains("listening on 80"));

    drop(bed);
    assert!(!namespaces().contains(&prefix), "{}", namespaces());
    assert!(!temp.exists());
}

#[test]
fn drop_after_a_panic_kills_children_and_removes_namespaces() {
    let mut seen = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut bed = Testbed::new("nsp").unwrap();
        bed.add_host("h", A).unwrap();
        let ns = format!("{}-h", bed.prefix());
        let pid = bed.spawn(&ns, "sleep", &["60"]).unwrap();
        seen = Some((bed.prefix().to_string(), pid));
        panic!("on purpose");
    }));
    assert!(result.is_err());
    let (prefix, pid) = seen.unwrap();
    assert!(!alive(pid), "child {pid} survived the drop");
    assert!(!namespaces().contains(&prefix), "{}", namespaces());
}

#[test]
fn drop_kills_a_child_that_ignores_sigterm_within_the_grace_period() {
    let mut bed = Testbed::new("nsk").unwrap();
    let node = bed.node().to_string();
    let pid = bed
        .spawn(
            &node,
            "sh",
            &[
                "-c",
                "trap '' TERM; echo trapped; while :; do sleep 0.1; done",
            ],
        )
        .unwrap();
    assert!(bed.wait_for_log(pid, "trapped", Duration::from_secs(5)));
    // Signals other than TERM and KILL are sent without waiting; SIGCONT is harmless.
    bed.stop(pid, libc::SIGCONT).unwrap();
    assert!(bed.exit_status(pid).is_none());
    let started = Instant::now();
    drop(bed);
    let took = started.elapsed();
    assert!(!alive(pid));
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}
