//! Tier 3: the daemon under resource pressure (a low file descriptor limit, descriptors
//! exhausted) and a backend that vanishes mid-stream, in real network namespaces.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use support::*;

/// `clock_t` ticks per second of `/proc/PID/stat` (`USER_HZ`, 100 on every Linux ABI).
const TICKS_PER_SECOND: u64 = 100;

/// CPU time the process has used so far (user + system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading stat");
    // Fields after the command name, which may hold spaces; utime and stime are the 14th
    // and 15th fields, the 12th and 13th after it.
    let after = stat.rsplit_once(") ").expect("stat format").1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND)
}

/// One pod `pod1` answering HTTP on port 80, and a service `small` on `vip:80` selecting it.
fn small_service(c: &mut Cluster, vip: &str) {
    c.pod("pod1", POD1, &[("pod1", &[80], &[])]);
    c.write("pods.yaml", &pods_yaml(&[("pod1", POD1, "web")]));
    c.write(
        "small.yaml",
        &service_yaml("small", Some(vip), "web", "TCP", 80, 80),
    );
}

/// A service with `ports` TCP ports (10000 and up), each its own proxy listener.
fn many_ports_yaml(ports: u16) -> String {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: big\nspec:\n  clusterIP: 10.11.0.99\n  selector:\n    app: web\n  ports:\n",
    );
    for i in 0..ports {
        yaml.push_str(&format!(
            "  - name: p{i}\n    protocol: TCP\n    port: {}\n    targetPort: 80\n",
            10000 + i
        ));
    }
    yaml
}

fn last_error(s: &Status) -> String {
    format!("{:?}", s.last_reconcile)
}

#[test]
fn a_600_port_service_under_a_1024_descriptor_limit_is_reported_and_removing_it_recovers() {
    let mut c = Cluster::new("fd600");
    small_service(&mut c, "10.11.0.10");
    // Two TCP workers, so each listener holds two descriptors: 1,200 for the big service.
    let pid = c.start_daemon_under(
        &[
            "env",
            "TOKIO_WORKER_THREADS=2",
            "prlimit",
            "--nofile=1024:1024",
        ],
        &[],
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 1024 ")),
        "{limits}"
    );
    let node = c.node();
    let url = "http://10.11.0.10:80/";
    assert_eq!(c.get(&node, url), "pod1");

    c.write("big.yaml", &many_ports_yaml(600));
    let error = c.wait_status(
        "the reconcile to report the descriptor shortage",
        |s| match &s.last_reconcile {
            Some(r) if !r.ok && r.error.as_deref().unwrap_or("").contains("RLIMIT_NOFILE") => {
                Ok(r.error.clone().unwrap_or_default())
            }
            _ => Err(last_error(s)),
        },
    );
    assert!(error.contains("default/big"), "{error}");

    // The daemon is not wedged: later passes still spawn their tools and fail on the same
    // listener, not on a spawn; the control socket answers; the small service serves.
    let before = c.status().reconciles;
    let later = c.wait_status("another reconcile", |s| {
        if s.reconciles > before + 1 {
            Ok(s.last_reconcile.clone())
        } else {
            Err(last_error(s))
        }
    });
    let later = later.and_then(|r| r.error).unwrap_or_default();
    assert!(later.contains("RLIMIT_NOFILE"), "{later}");
    assert_eq!(c.get(&node, url), "pod1");

    std::fs::remove_file(c.dir.join("big.yaml")).unwrap();
    c.wait_status(
        "a clean reconcile with the small service alone",
        |s| match &s.last_reconcile {
            Some(r) if r.ok && s.listeners.len() == 1 => Ok(()),
            _ => Err(format!(
                "{} listeners, {}",
                s.listeners.len(),
                last_error(s)
            )),
        },
    );
    assert_eq!(c.get(&node, url), "pod1");
}

#[test]
fn exhausted_descriptors_back_off_accept_loops_quietly_and_everything_answers_once_freed() {
    let mut c = Cluster::new("emfile");
    small_service(&mut c, "10.11.0.20");
    let pid = c.start_daemon_under(&["prlimit", "--nofile=256:256"], &[]);
    // The proxy port exists (only traffic through the VIP may reach it: the guard).
    proxy_port(&c.status(), "default/small", 80).unwrap();

    // Control clients that never send a line each hold one of the daemon's descriptors:
    // 300 of them leave it none, and more wait in the control socket's backlog.
    let held: Vec<UnixStream> = (0..300)
        .map(|_| UnixStream::connect(&c.socket).expect("connecting to the control socket"))
        .collect();
    assert!(
        c.bed
            .wait_for_log(pid, "control socket: accept failed", CONVERGE),
        "the control socket never ran out of descriptors\n{}",
        c.daemon_logs()
    );
    // Connections through the VIP to the proxy listener complete in the kernel and wait in
    // its backlog.
    let node = c.node();
    let mut waiting: Vec<TcpStream> = in_netns(&node, || {
        (0..3)
            .map(|_| TcpStream::connect(("10.11.0.20", 80)).expect("connecting to the proxy"))
            .collect()
    });
    assert!(
        c.bed
            .wait_for_log(pid, "accept failed; backing off", CONVERGE),
        "the proxy listener never ran out of descriptors\n{}",
        c.daemon_logs()
    );

    let window = Duration::from_secs(3);
    let used_before = cpu_time(pid);
    std::thread::sleep(window);
    let used = cpu_time(pid) - used_before;
    println!("daemon CPU while out of descriptors: {used:?} in {window:?}");
    assert!(
        used < window / 10,
        "the daemon used {used:?} of CPU in {window:?} while out of descriptors\n{}",
        c.daemon_logs()
    );
    let log = c.bed.log_of(pid);
    let accept_lines = log.lines().filter(|l| l.contains("accept")).count();
    assert!(
        accept_lines <= 10,
        "{accept_lines} log lines about accepts:\n{}",
        c.daemon_logs()
    );

    drop(held);
    c.wait_status(
        "the status to answer and a reconcile to succeed",
        |s| match &s.last_reconcile {
            Some(r) if r.ok => Ok(()),
            _ => Err(last_error(s)),
        },
    );
    // The proxied connections that waited are served.
    for stream in &mut waiting {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        assert!(reply.ends_with("pod1") || reply.contains("pod1"), "{reply}");
    }
    assert_eq!(c.get(&node, "http://10.11.0.20:80/"), "pod1");
}

#[test]
fn a_backend_that_vanishes_mid_stream_ends_the_client_connection_within_the_keepalive_bound() {
    let mut c = Cluster::new("blackhole");
    let pod = c.client("pod1", POD1);
    c.spawn(
        &pod,
        "socat",
        &["TCP-LISTEN:7000,fork,reuseaddr".into(), "EXEC:cat".into()],
    );
    poll("the echo server to listen", CONVERGE, || {
        c.listening(&pod, 7000)
            .then_some(())
            .ok_or_else(String::new)
    });
    c.write("pods.yaml", &pods_yaml(&[("pod1", POD1, "echo")]));
    c.write(
        "echo.yaml",
        &service_yaml("echo", Some("10.11.0.30"), "echo", "TCP", 7000, 7000),
    );
    let client = c.client("client", CLIENT);
    c.start_daemon(&[
        "--tcp-keepalive-idle-seconds",
        "1",
        "--tcp-keepalive-interval-seconds",
        "1",
        "--tcp-keepalive-count",
        "2",
        "--tcp-user-timeout-seconds",
        "3",
    ]);

    let mut stream = in_netns(&client, || {
        TcpStream::connect_timeout(&"10.11.0.30:7000".parse().unwrap(), CONVERGE)
            .expect("connecting to the service")
    });
    stream.write_all(b"hello").unwrap();
    let mut echo = [0u8; 5];
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"hello");

    // The pod's network goes silent: no FIN, no RST, nothing answers.
    for chain in ["INPUT", "OUTPUT"] {
        c.run_ok(&pod, "iptables", &["-I", chain, "-j", "DROP"]);
    }
    let started = Instant::now();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 16];
    let ended = stream.read(&mut buf);
    let elapsed = started.elapsed();
    assert!(
        matches!(&ended, Ok(0))
            || matches!(&ended, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "the client connection did not end: {ended:?} after {elapsed:?}\n{}",
        c.daemon_logs()
    );
    // Idle 1 s + 2 probes 1 s apart, or the 3 s user timeout; well under the 20 s wait.
    assert!(elapsed < Duration::from_secs(8), "ended after {elapsed:?}");
}

#[test]
fn the_daemon_raises_its_soft_descriptor_limit_to_the_hard_one() {
    let mut c = Cluster::new("rlimit");
    let pid = c.start_daemon_under(&["prlimit", "--nofile=512:4096"], &[]);
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a descriptor limit");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{line}");
}
