//! Shared harness of the kernel-level daemon tests: a `Testbed` (private network namespaces)
//! with a node running `portald run`, pods running `portald backend`, and clients that use
//! real tools (`curl`, `portald udp-probe`) or plain std sockets created inside a namespace.
//!
//! Every wait is a bounded poll; every failure message carries what was last seen and the
//! daemon's log.

#![allow(dead_code)]

pub mod scratch;

use engine::compile::{PortView, ServiceView};
pub use engine::daemon::control::{ListenerView, Status};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};
use testbed::Testbed;

pub const PORTALD: &str = env!("CARGO_BIN_EXE_portald");

pub const SIGKILL: i32 = 9;
pub const SIGTERM: i32 = 15;

/// Whether process `pid` is alive (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(") ")?.1.to_string();
            after.chars().next()
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// How long any wait for the daemon to converge may take.
pub const CONVERGE: Duration = Duration::from_secs(10);
/// How often bounded polls look again.
pub const POLL_EVERY: Duration = Duration::from_millis(100);

/// The first pod addresses on the bridge (the node is 10.244.1.1).
pub const POD1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
pub const POD2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
pub const POD3: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 100);
pub const CLIENT2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 101);

/// Fails with a clear message when the environment cannot run these tests at all: they
/// need root and the kernel tools. Never skips.
pub fn require_environment() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?")
        .to_string();
    assert_eq!(
        euid, "0",
        "the kernel-level daemon tests create network namespaces and iptables rules: run them as root"
    );
    for tool in ["ip", "iptables", "iptables-save", "curl", "socat", "ss"] {
        let found = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "`{tool}` is not on PATH; the kernel-level tests need curl, socat, iproute2 and iptables (scripts/setup.sh installs them)"
        );
    }
}

/// Polls `probe` every 100 ms until it returns `Ok`, at most `timeout`; panics with `what`
/// and the last observation otherwise.
pub fn poll<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match probe() {
            Ok(value) => return value,
            Err(last) => {
                if Instant::now() >= deadline {
                    panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
                }
            }
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// The result of one `curl`.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: Option<i32>,
    pub body: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Reply {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

extern "C" {
    fn setns(fd: i32, nstype: i32) -> i32;
}
const CLONE_NEWNET: i32 = 0x4000_0000;

/// Runs `f` on a thread that has entered network namespace `ns`: sockets it creates belong
/// to that namespace and stay usable from any thread afterwards.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let handle = File::open(format!("/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("opening network namespace {ns}: {e}"));
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: setns(2) on a valid namespace fd, affecting only this thread.
                let rc = unsafe { setns(handle.as_raw_fd(), CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns into {ns}: {}",
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .expect("the thread inside the namespace panicked")
    })
}

/// Lines of an `iptables-save` dump without comments (`#` lines) and without counters, so
/// two dumps of the same rules compare equal.
pub fn normalize_save(dump: &str) -> Vec<String> {
    dump.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            if l.starts_with(':') {
                match l.rfind(" [") {
                    Some(i) if l.ends_with(']') => l[..i].to_string(),
                    _ => l.to_string(),
                }
            } else {
                l.to_string()
            }
        })
        .collect()
}

/// The lines that are portald's (its `PORTAL-` chains and jumps).
pub fn portal_lines(dump: &str) -> Vec<String> {
    normalize_save(dump)
        .into_iter()
        .filter(|l| l.contains("PORTAL"))
        .collect()
}

/// Everything else, table headers and `COMMIT`s included, in order.
pub fn foreign_lines(dump: &str) -> Vec<String> {
    normalize_save(dump)
        .into_iter()
        .filter(|l| !l.contains("PORTAL"))
        .collect()
}

/// A backend ("pod"): its namespace, address and process.
#[derive(Debug, Clone)]
pub struct Pod {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    pub pids: Vec<u32>,
}

/// A node running the daemon, with pods and clients, all in private namespaces.
pub struct Cluster {
    pub bed: Testbed,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub daemon: Option<u32>,
    /// Every daemon started, for the logs shown on failure.
    daemons: Vec<u32>,
}

impl Cluster {
    pub fn new(tag: &str) -> Cluster {
        require_environment();
        let bed = Testbed::new(tag).unwrap_or_else(|e| panic!("creating the testbed: {e}"));
        let dir = bed.temp_dir().join("services");
        std::fs::create_dir_all(&dir).expect("services directory");
        // Whatever the umask: portald refuses to write its lock where others may write.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("services directory mode");
        let socket = bed.temp_dir().join("s.sock");
        Cluster {
            bed,
            dir,
            socket,
            daemon: None,
            daemons: Vec::new(),
        }
    }

    pub fn node(&self) -> String {
        self.bed.node().to_string()
    }

    /// A namespace on the bridge with no server in it.
    pub fn client(&mut self, name: &str, ip: Ipv4Addr) -> String {
        self.bed
            .add_host(name, ip)
            .unwrap_or_else(|e| panic!("adding host {name}: {e}"))
    }

    /// A pod namespace running one `portald backend --name NAME --tcp P...` per entry of
    /// `servers` (name, tcp ports, udp ports); waits until each says it is ready.
    pub fn pod(&mut self, name: &str, ip: Ipv4Addr, servers: &[(&str, &[u16], &[u16])]) -> Pod {
        let ns = self.client(name, ip);
        let mut pids = Vec::new();
        for (server, tcp, udp) in servers {
            let mut args: Vec<String> = vec!["backend".into(), "--name".into(), server.to_string()];
            for p in *tcp {
                args.extend(["--tcp".into(), p.to_string()]);
            }
            for p in *udp {
                args.extend(["--udp".into(), p.to_string()]);
            }
            let pid = self.spawn(&ns, PORTALD, &args);
            poll(
                &format!("backend {server} in {ns} to be ready"),
                CONVERGE,
                || {
                    let log = self.bed.log_of(pid);
                    if log.contains("ready on") {
                        Ok(())
                    } else {
                        Err(log)
                    }
                },
            );
            pids.push(pid);
        }
        Pod {
            name: name.to_string(),
            ns,
            ip,
            pids,
        }
    }

    pub fn spawn(&mut self, ns: &str, program: &str, args: &[String]) -> u32 {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.bed
            .spawn(ns, program, &args)
            .unwrap_or_else(|e| panic!("spawning {program} in {ns}: {e}"))
    }

    pub fn stop(&mut self, pid: u32, signal: i32) {
        self.bed
            .stop(pid, signal)
            .unwrap_or_else(|e| panic!("signal {signal} to {pid}: {e}"));
    }

    /// Writes a file of the services directory the way editors save: a hidden temporary
    /// file renamed over the target.
    pub fn write(&self, name: &str, text: &str) {
        let path = self.dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("creating a services subdirectory");
        }
        let tmp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&tmp, text).expect("writing a services file");
        std::fs::rename(&tmp, &path).expect("renaming a services file into place");
    }

    /// `portald run DIR --control-socket S` in the node with short timers, plus `extra`.
    /// Waits until the first reconcile succeeded.
    pub fn start_daemon(&mut self, extra: &[&str]) -> u32 {
        self.start_daemon_under(&[], extra)
    }

    /// [`Cluster::start_daemon`] with `NAME=value` variables in the daemon's environment
    /// only (through `env`, which execs it: the pid is the daemon's).
    pub fn start_daemon_with_env(&mut self, env: &[&str], extra: &[&str]) -> u32 {
        let mut wrapper = vec!["env"];
        wrapper.extend(env);
        self.start_daemon_under(&wrapper, extra)
    }

    /// Like `start_daemon`, but `portald` runs through `wrapper` (say `prlimit --nofile=N`),
    /// which must exec it so that the pid stays the daemon's; an empty wrapper runs it as is.
    pub fn start_daemon_under(&mut self, wrapper: &[&str], extra: &[&str]) -> u32 {
        let base: Vec<String> = vec![
            "run".into(),
            self.dir.display().to_string(),
            "--control-socket".into(),
            self.socket.display().to_string(),
            "--resync-seconds".into(),
            "2".into(),
            "--debounce-ms".into(),
            "100".into(),
            "--dial-timeouts-ms".into(),
            "150,300".into(),
            // The test's own node state, never the host's.
            "--state-file".into(),
            self.state_file().display().to_string(),
        ];
        // A flag given again in `extra` replaces the default above (clap refuses repeats).
        let args = merge_flags(base, extra);
        let node = self.node();
        let pid = match wrapper.split_first() {
            None => self.spawn(&node, PORTALD, &args),
            Some((program, rest)) => {
                let mut all: Vec<String> = rest.iter().map(|a| a.to_string()).collect();
                all.push(PORTALD.to_string());
                all.extend(args);
                self.spawn(&node, program, &all)
            }
        };
        self.daemon = Some(pid);
        self.daemons.push(pid);
        self.wait_status("the daemon's first successful reconcile", |s| {
            match &s.last_reconcile {
                Some(r) if r.ok && s.pid == pid => Ok(()),
                other => Err(format!("pid {} last reconcile {other:?}", s.pid)),
            }
        });
        self.settle();
        pid
    }

    /// Waits until no reconcile has run for 600 ms (at most 10 s): any follow-up passes are
    /// over, so a test that then changes something sees only its own change being handled.
    pub fn settle(&self) {
        let quiet = Duration::from_millis(600);
        let mut last = (self.status().reconciles, Instant::now());
        poll("the daemon to settle", CONVERGE, || {
            let now = self.try_status()?.reconciles;
            if now != last.0 {
                last = (now, Instant::now());
            }
            if last.1.elapsed() >= quiet {
                Ok(())
            } else {
                Err(format!("{now} reconciles, still changing"))
            }
        });
    }

    pub fn stop_daemon(&mut self, signal: i32) {
        let pid = self.daemon.take().expect("a daemon is running");
        self.stop(pid, signal);
    }

    /// The logs of every daemon this cluster started.
    pub fn daemon_logs(&self) -> String {
        let mut out = String::new();
        for pid in &self.daemons {
            let log = self.bed.log_of(*pid);
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            out.push_str(&format!("--- daemon {pid} (last lines) ---\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Runs a program inside `ns` and waits for it.
    pub fn run(&self, ns: &str, program: &str, args: &[&str]) -> Output {
        self.bed
            .run(ns, program, args)
            .unwrap_or_else(|e| panic!("running {program} in {ns}: {e}"))
    }

    /// Like `run`, but a failure panics with its output.
    pub fn run_ok(&self, ns: &str, program: &str, args: &[&str]) -> String {
        let out = self.run(ns, program, args);
        assert!(
            out.status.success(),
            "`{program} {}` in {ns} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The daemon's node state file: in the test's own directory, never the host's.
    pub fn state_file(&self) -> PathBuf {
        self.bed.temp_dir().join("state.json")
    }

    /// Asserts that `portald plan DIR --backend B --mode kernel --detailed-exitcode` against
    /// the live state exits 0: a second pass would change nothing.
    pub fn assert_plans_nothing_in_kernel_mode(&self, backend: &str) {
        let dir = self.dir.display().to_string();
        let out = self.portald(&[
            "plan",
            &dir,
            "--backend",
            backend,
            "--mode",
            "kernel",
            "--detailed-exitcode",
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "a second pass would change something:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `portald ARGS --control-socket S` in the node namespace (and, for the commands that
    /// read or write it, `--state-file` as the daemon's).
    pub fn portald(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        let socket = self.socket.display().to_string();
        // `lock` and `check` never talk to a daemon.
        if !matches!(args.first(), Some(&("lock" | "check"))) {
            all.extend(["--control-socket", &socket]);
        }
        let state = self.state_file().display().to_string();
        if matches!(args.first(), Some(&("apply" | "plan" | "lock" | "check"))) {
            all.extend(["--state-file", &state]);
        }
        self.run(&self.node(), PORTALD, &all)
    }

    pub fn try_status(&self) -> Result<Status, String> {
        let out = self.portald(&["status", "--json"]);
        if !out.status.success() {
            return Err(format!(
                "status failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| format!("status is not JSON: {e}"))
    }

    pub fn status(&self) -> Status {
        self.try_status()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.daemon_logs()))
    }

    /// Polls the status until `check` accepts it (at most 10 s).
    pub fn wait_status<T>(&self, what: &str, check: impl Fn(&Status) -> Result<T, String>) -> T {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let last = self.try_status().and_then(|s| check(&s));
            match last {
                Ok(v) => return v,
                Err(e) if Instant::now() >= deadline => panic!(
                    "timed out after {CONVERGE:?} waiting for {what}; last seen: {e}\n{}",
                    self.daemon_logs()
                ),
                Err(_) => std::thread::sleep(POLL_EVERY),
            }
        }
    }

    /// The daemon's ruleset in the node, as `iptables-save` prints it (all tables).
    pub fn iptables_save(&self) -> String {
        self.run_ok(&self.node(), "iptables-save", &[])
    }

    /// `iptables ARGS` in the node; must succeed.
    pub fn iptables(&self, args: &[&str]) {
        self.run_ok(&self.node(), "iptables", args);
    }

    /// One HTTP GET with curl from `ns`; `max_secs` bounds the whole transfer.
    pub fn curl(&self, ns: &str, url: &str, max_secs: u32) -> Reply {
        let started = Instant::now();
        let max = max_secs.to_string();
        let out = self.run(ns, "curl", &["-sS", "-m", &max, url]);
        Reply {
            code: out.status.code(),
            body: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    /// A GET that must succeed; returns the body trimmed (the backend's name).
    pub fn get(&self, ns: &str, url: &str) -> String {
        let reply = self.curl(ns, url, 5);
        assert!(
            reply.ok(),
            "curl {url} from {ns} failed: exit {:?}, {}\n{}",
            reply.code,
            reply.stderr.trim(),
            self.daemon_logs()
        );
        reply.body.trim().to_string()
    }

    /// `n` GETs that must all succeed; the names that answered, in order.
    pub fn names(&self, ns: &str, url: &str, n: usize) -> Vec<String> {
        (0..n).map(|_| self.get(ns, url)).collect()
    }

    /// Waits until GETs from `ns` succeed and `accept` likes the names of `n` of them.
    pub fn wait_names(
        &self,
        what: &str,
        ns: &str,
        url: &str,
        n: usize,
        accept: impl Fn(&[String]) -> bool,
    ) -> Vec<String> {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let replies: Vec<Reply> = (0..n).map(|_| self.curl(ns, url, 3)).collect();
            let names: Vec<String> = replies.iter().map(|r| r.body.trim().to_string()).collect();
            if replies.iter().all(Reply::ok) && accept(&names) {
                return names;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out waiting for {what}: GET {url} from {ns} gave {:?}\n{}",
                    replies
                        .iter()
                        .map(|r| format!(
                            "exit {:?} {:?} {}",
                            r.code,
                            r.body.trim(),
                            r.stderr.trim()
                        ))
                        .collect::<Vec<_>>(),
                    self.daemon_logs()
                );
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// `portald udp-probe --to ADDR --count N` from `ns`: the replies, one a line.
    pub fn udp_probe(&self, ns: &str, to: &str, count: usize) -> (bool, Vec<String>) {
        let count = count.to_string();
        let out = self.run(
            ns,
            PORTALD,
            &[
                "udp-probe",
                "--to",
                to,
                "--count",
                &count,
                "--timeout-ms",
                "1500",
            ],
        );
        let lines = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        (out.status.success(), lines)
    }

    /// Whether a TCP socket listens on `port` in `ns` (per `ss`).
    pub fn listening(&self, ns: &str, port: u16) -> bool {
        let filter = format!("sport = :{port}");
        !self.run_ok(ns, "ss", &["-Htln", &filter]).trim().is_empty()
    }

    pub fn temp(&self) -> &Path {
        self.bed.temp_dir()
    }
}

/// `base` with each `--flag VALUE` of `extra` replacing the same flag of `base` (or added).
fn merge_flags(mut base: Vec<String>, extra: &[&str]) -> Vec<String> {
    let mut i = 0;
    while i < extra.len() {
        let flag = extra[i];
        let value = extra.get(i + 1).filter(|v| !v.starts_with("--"));
        match base.iter().position(|b| b == flag) {
            Some(at) if value.is_some() && at + 1 < base.len() => {
                base[at + 1] = value.unwrap().to_string();
            }
            Some(_) => {}
            None => {
                base.push(flag.to_string());
                if let Some(v) = value {
                    base.push(v.to_string());
                }
            }
        }
        i += if value.is_some() { 2 } else { 1 };
    }
    base
}

/// The service called `name` (`namespace/name`) in a status.
pub fn service<'a>(status: &'a Status, name: &str) -> Result<&'a ServiceView, String> {
    status
        .services
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| {
            format!(
                "no service {name}; services: {:?}",
                status.services.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
}

/// The port `port` of service `name`.
pub fn port_view<'a>(status: &'a Status, name: &str, port: u16) -> Result<&'a PortView, String> {
    service(status, name)?
        .ports
        .iter()
        .find(|p| p.port == port)
        .ok_or_else(|| format!("service {name} has no port {port}"))
}

/// The proxy port of service `name` port `port`.
pub fn proxy_port(status: &Status, name: &str, port: u16) -> Result<u16, String> {
    port_view(status, name, port)?
        .proxy_port
        .map(|p| p.0)
        .ok_or_else(|| format!("service {name} port {port} has no proxy port"))
}

/// The endpoints of service `name` port `port`, as `ip:port` strings.
pub fn endpoints(status: &Status, name: &str, port: u16) -> Result<Vec<String>, String> {
    Ok(port_view(status, name, port)?
        .endpoints
        .iter()
        .map(ToString::to_string)
        .collect())
}

/// The data-plane listener on proxy port `port`.
pub fn listener(status: &Status, port: u16) -> Result<&ListenerView, String> {
    status
        .listeners
        .iter()
        .find(|l| l.port == port)
        .ok_or_else(|| {
            format!(
                "no listener on {port}; listeners: {:?}",
                status.listeners.iter().map(|l| l.port).collect::<Vec<_>>()
            )
        })
}

/// The distinct values of `names`, sorted.
pub fn distinct(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = names.to_vec();
    out.sort();
    out.dedup();
    out
}

/// Pod objects: (name, IP, `app` label).
pub fn pods_yaml(pods: &[(&str, Ipv4Addr, &str)]) -> String {
    pods.iter()
        .map(|(name, ip, app)| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: {app}\nstatus:\n  podIP: {ip}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A v1 Service selecting `app=APP`, one port.
pub fn service_yaml(
    name: &str,
    vip: Option<&str>,
    app: &str,
    protocol: &str,
    port: u16,
    target: u16,
) -> String {
    let vip = vip
        .map(|v| format!("  clusterIP: {v}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n{vip}  selector:\n    app: {app}\n  ports:\n  - protocol: {protocol}\n    port: {port}\n    targetPort: {target}\n"
    )
}

/// Docker-style chains and an admin's rules, as they would be on a real host.
pub const FOREIGN: &[&[&str]] = &[
    &["-t", "nat", "-N", "DOCKER"],
    &[
        "-t",
        "nat",
        "-A",
        "PREROUTING",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        "DOCKER",
    ],
    &[
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "!",
        "-d",
        "127.0.0.0/8",
        "-m",
        "addrtype",
        "--dst-type",
        "LOCAL",
        "-j",
        "DOCKER",
    ],
    &[
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-s",
        "172.17.0.0/16",
        "!",
        "-o",
        "docker0",
        "-j",
        "MASQUERADE",
    ],
    &["-t", "nat", "-A", "DOCKER", "-i", "docker0", "-j", "RETURN"],
    &[
        "-t",
        "nat",
        "-I",
        "PREROUTING",
        "1",
        "-p",
        "tcp",
        "--dport",
        "2222",
        "-m",
        "comment",
        "--comment",
        "admin: keep me first",
        "-j",
        "RETURN",
    ],
    &["-t", "filter", "-N", "DOCKER-USER"],
    &["-t", "filter", "-A", "FORWARD", "-j", "DOCKER-USER"],
    &["-t", "filter", "-A", "DOCKER-USER", "-j", "RETURN"],
    &[
        "-t",
        "filter",
        "-A",
        "INPUT",
        "-p",
        "tcp",
        "--dport",
        "22",
        "-m",
        "comment",
        "--comment",
        "admin ssh",
        "-j",
        "ACCEPT",
    ],
];
