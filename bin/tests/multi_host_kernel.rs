//! Tier 3: several nodes fed one Git repository, each a testbed of its own (node, pods,
//! client in private namespaces) running `portald run` in userspace mode with iptables.
//! Files and the lock reach each node in its own order; clients probe the VIPs throughout.
//! The lock is an input: no daemon writes into the watched directory.

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const VIP_A: Ipv4Addr = Ipv4Addr::new(10, 11, 0, 1);
const VIP_B: Ipv4Addr = Ipv4Addr::new(10, 11, 0, 2);

/// Every file below `dir` and its bytes.
fn contents(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).expect("reading the services directory") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("reading a file");
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), bytes);
            }
        }
    }
    out
}

/// What the test itself wrote, for comparison with the directory at the end.
struct Written(BTreeMap<PathBuf, Vec<u8>>);

impl Written {
    fn new() -> Self {
        Written(BTreeMap::new())
    }

    fn write(&mut self, c: &Cluster, name: &str, text: &str) {
        c.write(name, text);
        self.0.insert(PathBuf::from(name), text.as_bytes().to_vec());
    }

    fn remove(&mut self, c: &Cluster, name: &str) {
        std::fs::remove_file(c.dir.join(name)).expect("removing a services file");
        self.0.remove(Path::new(name));
    }

    fn assert_untouched(&self, c: &Cluster) {
        let now = contents(&c.dir);
        let names = |m: &BTreeMap<PathBuf, Vec<u8>>| m.keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            names(&now),
            names(&self.0),
            "the daemon added or removed files in the watched directory"
        );
        assert!(
            now == self.0,
            "the daemon changed a file in the watched directory"
        );
    }
}

/// What `portald lock` (pure, no kernel) writes for these files and previous lock.
fn lock_for(scratch: &Path, files: &[(&str, String)], previous: Option<&str>) -> String {
    let _ = std::fs::remove_dir_all(scratch);
    std::fs::create_dir_all(scratch).unwrap();
    for (name, text) in files {
        std::fs::write(scratch.join(name), text).unwrap();
    }
    if let Some(lock) = previous {
        std::fs::write(scratch.join("portald.lock"), lock).unwrap();
    }
    let out = std::process::Command::new(PORTALD)
        .arg("lock")
        .arg(scratch)
        .output()
        .expect("portald lock runs");
    assert!(
        out.status.success(),
        "portald lock: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(scratch.join("portald.lock")).expect("the lock was written")
}

/// A node with pods `pa` (answering `a`) and `pb` (answering `b`) and a client.
fn node(tag: &str) -> (Cluster, String) {
    let mut c = Cluster::new(tag);
    c.pod("pa", POD1, &[("a", &[80], &[])]);
    c.pod("pb", POD2, &[("b", &[80], &[])]);
    let client = c.client("client", CLIENT);
    (c, client)
}

fn pods() -> String {
    pods_yaml(&[("pa", POD1, "a"), ("pb", POD2, "b")])
}

fn svc(name: &str, app: &str) -> String {
    service_yaml(name, None, app, "TCP", 80, 80)
}

/// One HTTP/1.0 GET to `vip:80`: the name of the pod that answered.
fn ask(vip: Ipv4Addr) -> Result<String, String> {
    let to = SocketAddr::from((vip, 80));
    let mut s =
        TcpStream::connect_timeout(&to, Duration::from_millis(200)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .ok_or_else(|| format!("no body in {reply:?}"))?;
    Ok(body)
}

/// A client probing every VIP every 50 ms from its namespace until stopped (at most 90 s).
struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<(Ipv4Addr, Result<String, String>)>>,
}

impl Prober {
    fn start(ns: &str, vips: &[Ipv4Addr]) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, vips, flag) = (ns.to_string(), vips.to_vec(), stop.clone());
        let thread = std::thread::spawn(move || {
            in_netns(&ns, || {
                let started = Instant::now();
                let mut seen = Vec::new();
                while !flag.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(90) {
                    for vip in &vips {
                        seen.push((*vip, ask(*vip)));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                seen
            })
        });
        Prober { stop, thread }
    }

    fn finish(self) -> Vec<(Ipv4Addr, Result<String, String>)> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the prober panicked")
    }
}

/// Every answer from `vip` came from `want`'s pods, and at least one came.
fn only_from(seen: &[(Ipv4Addr, Result<String, String>)], vip: Ipv4Addr, want: &str, node: &str) {
    let answers: Vec<&String> = seen
        .iter()
        .filter(|(v, _)| *v == vip)
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    let wrong: Vec<&&String> = answers.iter().filter(|a| a.as_str() != want).collect();
    assert!(
        wrong.is_empty(),
        "on {node}, {vip} answered from the wrong service's pods {} time(s) out of {}: {wrong:?}",
        wrong.len(),
        answers.len()
    );
    assert!(!answers.is_empty(), "on {node}, {vip} never answered");
}

fn vip_of(s: &Status, name: &str) -> Result<Option<Ipv4Addr>, String> {
    Ok(service(s, name)?.vip.map(|v| v.0))
}

fn serving(c: &Cluster, what: &str, name: &str, vip: Ipv4Addr) {
    c.wait_status(what, |s| match vip_of(s, name)? {
        Some(v) if v == vip => Ok(()),
        other => Err(format!("{name} on {other:?}")),
    });
}

#[test]
fn skewed_arrival_with_require_lock_never_answers_from_the_wrong_services_pods() {
    skewed_arrival("iptables", "userspace");
}

#[test]
fn skewed_arrival_never_answers_from_the_wrong_services_pods_with_nftables_userspace() {
    skewed_arrival("nftables", "userspace");
}

#[test]
fn skewed_arrival_never_answers_from_the_wrong_services_pods_with_iptables_kernel() {
    skewed_arrival("iptables", "kernel");
}

#[test]
fn skewed_arrival_never_answers_from_the_wrong_services_pods_with_nftables_kernel() {
    skewed_arrival("nftables", "kernel");
}

/// Two nodes see two new services in opposite orders before the lock, with clients
/// probing both VIPs every 50 ms throughout, in one backend x mode combination.
fn skewed_arrival(backend: &str, mode: &str) {
    let tag = format!("{}{}", &backend[..1], &mode[..1]);
    let (mut n1, client1) = node(&format!("skew1{tag}"));
    let (mut n2, client2) = node(&format!("skew2{tag}"));
    let files = [("a.yaml", svc("a", "a")), ("b.yaml", svc("b", "b"))];
    let lock = lock_for(&n1.temp().join("repo"), &files, None);
    assert!(lock.contains("\"default/a\": \"10.11.0.1\""), "{lock}");
    assert!(lock.contains("\"default/b\": \"10.11.0.2\""), "{lock}");

    let mut written = [Written::new(), Written::new()];
    for (c, w) in [&mut n1, &mut n2].into_iter().zip(written.iter_mut()) {
        w.write(c, "pods.yaml", &pods());
        c.start_daemon(&["--require-lock", "--backend", backend, "--mode", mode]);
    }
    let probes = [
        Prober::start(&client1, &[VIP_A, VIP_B]),
        Prober::start(&client2, &[VIP_A, VIP_B]),
    ];
    // The services arrive in opposite orders, a debounce apart, before the lock.
    written[0].write(&n1, "a.yaml", &files[0].1);
    written[1].write(&n2, "b.yaml", &files[1].1);
    std::thread::sleep(Duration::from_millis(400));
    written[0].write(&n1, "b.yaml", &files[1].1);
    written[1].write(&n2, "a.yaml", &files[0].1);
    for c in [&n1, &n2] {
        c.wait_status("both services held", |s| {
            if s.held == ["default/a", "default/b"] && s.services.len() == 2 {
                Ok(())
            } else {
                Err(format!("held {:?}", s.held))
            }
        });
        assert!(
            c.status()
                .diagnostics
                .iter()
                .any(|d| d.message.contains("held")),
            "status does not report the held services"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    // The lock reaches one node, then the other.
    written[0].write(&n1, "portald.lock", &lock);
    serving(&n1, "a on its locked VIP", "default/a", VIP_A);
    std::thread::sleep(Duration::from_millis(500));
    written[1].write(&n2, "portald.lock", &lock);
    for c in [&n1, &n2] {
        serving(c, "a on its locked VIP", "default/a", VIP_A);
        serving(c, "b on its locked VIP", "default/b", VIP_B);
        assert!(c.status().held.is_empty());
    }
    // Let both clients see both services for a while.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
    }
    let [p1, p2] = probes;
    for (seen, name) in [(p1.finish(), "node 1"), (p2.finish(), "node 2")] {
        only_from(&seen, VIP_A, "a", name);
        only_from(&seen, VIP_B, "b", name);
    }
    written[0].assert_untouched(&n1);
    written[1].assert_untouched(&n2);
}

#[test]
fn delete_and_add_in_one_commit_every_node_and_a_node_started_later_serve_the_locks_vip() {
    let (mut n1, client1) = node("dela1");
    let old = [("old.yaml", svc("old", "a"))];
    let old_lock = lock_for(&n1.temp().join("repo1"), &old, None);
    assert!(
        old_lock.contains("\"default/old\": \"10.11.0.1\""),
        "{old_lock}"
    );
    let mut w1 = Written::new();
    w1.write(&n1, "pods.yaml", &pods());
    w1.write(&n1, "old.yaml", &old[0].1);
    w1.write(&n1, "portald.lock", &old_lock);
    n1.start_daemon(&[]);
    serving(&n1, "old on its locked VIP", "default/old", VIP_A);
    assert_eq!(ask_in(&client1, VIP_A), "a");

    // One commit: `old` deleted, `new` added; the lock gives `new` the freed VIP.
    let new = [("new.yaml", svc("new", "b"))];
    let new_lock = lock_for(&n1.temp().join("repo2"), &new, Some(&old_lock));
    assert!(
        new_lock.contains("\"default/new\": \"10.11.0.1\""),
        "{new_lock}"
    );
    let probe = Prober::start(&client1, &[VIP_A, VIP_B]);
    w1.remove(&n1, "old.yaml");
    w1.write(&n1, "new.yaml", &new[0].1);
    w1.write(&n1, "portald.lock", &new_lock);
    // From the first pass that sees `new`, it is on the lock's VIP, never on another.
    let first = n1.wait_status("new to appear", |s| {
        service(s, "default/new").map(|_| vip_of(s, "default/new").unwrap())
    });
    assert_eq!(first, Some(VIP_A), "{}", n1.daemon_logs());
    n1.wait_names(
        "b's pod behind the VIP",
        &client1,
        "http://10.11.0.1/",
        3,
        |n| n.iter().all(|x| x == "b"),
    );
    let seen = probe.finish();
    let elsewhere: Vec<_> = seen
        .iter()
        .filter(|(v, r)| *v == VIP_B && r.is_ok())
        .collect();
    assert!(
        elsewhere.is_empty(),
        "new was served on another VIP: {elsewhere:?}"
    );

    // A node started after the commit agrees.
    let (mut n2, client2) = node("dela2");
    let mut w2 = Written::new();
    w2.write(&n2, "pods.yaml", &pods());
    w2.write(&n2, "new.yaml", &new[0].1);
    w2.write(&n2, "portald.lock", &new_lock);
    n2.start_daemon(&[]);
    serving(&n2, "new on the lock's VIP", "default/new", VIP_A);
    assert_eq!(ask_in(&client2, VIP_A), "b");
    // And the first node still does, after a resync.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(vip_of(&n1.status(), "default/new").unwrap(), Some(VIP_A));
    w1.assert_untouched(&n1);
    w2.assert_untouched(&n2);
}

fn ask_in(ns: &str, vip: Ipv4Addr) -> String {
    in_netns(ns, || ask(vip)).unwrap_or_else(|e| panic!("asking {vip} from {ns}: {e}"))
}

#[test]
fn require_lock_holds_a_service_missing_from_the_lock_and_a_lock_change_alone_makes_it_live() {
    let (mut c, client) = node("held");
    let files = [("a.yaml", svc("a", "a")), ("b.yaml", svc("b", "b"))];
    let full = lock_for(&c.temp().join("repo"), &files, None);
    let only_a = lock_for(&c.temp().join("repo-a"), &files[..1], None);
    let mut w = Written::new();
    w.write(&c, "pods.yaml", &pods());
    for (name, text) in &files {
        w.write(&c, name, text);
    }
    w.write(&c, "portald.lock", &only_a);
    // No resync during the test: only the lock's change can bring `b` in.
    c.start_daemon(&["--require-lock", "--resync-seconds", "600"]);
    let status = c.status();
    assert_eq!(status.held, ["default/b"]);
    assert_eq!(vip_of(&status, "default/b").unwrap(), None);
    assert_eq!(vip_of(&status, "default/a").unwrap(), Some(VIP_A));
    assert!(
        status
            .diagnostics
            .iter()
            .any(|d| d.message.contains("held")
                && d.object.as_deref() == Some("Service `default/b`")),
        "{:?}",
        status.diagnostics
    );
    assert!(
        c.daemon_logs().contains("held"),
        "the logs do not say `b` is held"
    );
    assert_eq!(ask_in(&client, VIP_A), "a", "nothing else is disturbed");
    let a_port = proxy_port(&status, "default/a", 80).unwrap();
    let reconciles = status.reconciles;

    let changed = Instant::now();
    w.write(&c, "portald.lock", &full);
    serving(&c, "b live once the lock names it", "default/b", VIP_B);
    let took = changed.elapsed();
    eprintln!("a lock change alone made the held service live in {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "the lock change took {took:?} to be served"
    );
    assert_eq!(ask_in(&client, VIP_B), "b");
    let after = c.status();
    assert!(after.held.is_empty());
    assert!(after.reconciles > reconciles);
    assert_eq!(proxy_port(&after, "default/a", 80).unwrap(), a_port);
    assert_eq!(ask_in(&client, VIP_A), "a");
    w.assert_untouched(&c);
    assert!(
        c.state_file().exists(),
        "the node state went to --state-file"
    );
}
