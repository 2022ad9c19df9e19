//! `portald demo`: a self-contained run in private network namespaces. A node with a
//! bridge, two "pods" running `portald backend`, a client; the seed's `apache-service.json`
//! plus a multi-port and a UDP service; the daemon in the node; then the plan, the rules,
//! traffic from the node and from the client through the VIPs, the spread per pod, the
//! daemon's status, and a clean teardown. Exit 0 only when every request was answered and
//! both pods served every service.

use crate::args::{BackendArg, DemoArgs, ModeArg};
use anyhow::{bail, Context, Result};
use engine::daemon::control::Status;
use engine::netns::{Testbed, SIGTERM};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const POD1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
const PODS: [&str; 2] = ["pod1", "pod2"];
/// Requests per (source, target): even, so round robin gives each pod the same share.
const HTTP_REQUESTS: usize = 20;
const UDP_QUERIES: usize = 10;
/// The daemon's listeners: apache-service, web/http, web/admin, dns/dns.
const LISTENERS: usize = 4;

/// The seed's service definition, byte for byte as in SEED.md: it must work unchanged.
const APACHE_SERVICE: &str = include_str!("../../../examples/seed/apache-service.json");

const WEB_SERVICE: &str = "\
# Two ports: `http` by the pods' named container port, `admin` by number.
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: admin, port: 8081, targetPort: 8080}
";

const DNS_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: dns
spec:
  selector: {role: dns}
  ports:
    - {name: dns, protocol: UDP, port: 53, targetPort: 5353}
";

fn pod_yaml(name: &str, ip: Ipv4Addr) -> String {
    format!(
        "\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{name: apache, app: web, role: dns}}
spec:
  containers:
    - name: backend
      ports:
        - {{name: http, containerPort: 80}}
        - {{name: admin, containerPort: 8080}}
        - {{name: dns, containerPort: 5353, protocol: UDP}}
status:
  podIP: {ip}
  conditions: [{{type: Ready, status: \"True\"}}]
"
    )
}

pub fn run(args: DemoArgs) -> Result<u8> {
    let exe = std::env::current_exe().context("finding the portald executable")?;
    let exe = exe
        .to_str()
        .context("the portald executable's path is not UTF-8")?
        .to_string();
    heading("1. Testbed: a node, two pods and a client in private network namespaces");
    let bed = Testbed::new("demo")
        .context("creating the network namespaces (needs root, iproute2 and iptables)")?;
    let (wake_tx, wake) = mpsc::channel();
    let mut demo = Demo {
        bed,
        interrupted: watch_signals(wake_tx.clone()),
        wake,
        wake_tx,
        exe,
        backend: args.backend,
        mode: args.mode,
        problems: Vec::new(),
        pods: Vec::new(),
        client: String::new(),
        dir: PathBuf::new(),
        socket: PathBuf::new(),
        daemon: None,
    };
    let outcome = demo.play(args.pause);
    // The daemon's log explains most failures; show its end before the testbed goes.
    if outcome.is_err() || !demo.problems.is_empty() {
        if let Some(pid) = demo.daemon {
            let log = demo.bed.log_of(pid);
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("\n--- daemon log (last lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
    outcome?;
    heading("Teardown");
    let prefix = demo.bed.prefix().to_string();
    drop(demo.bed);
    println!("namespaces {prefix}-* deleted, background processes reaped");
    println!();
    if demo.problems.is_empty() {
        println!("demo: OK: every request answered through the VIPs, pod1 and pod2 both served");
        Ok(0)
    } else {
        println!("demo: FAILED");
        for p in &demo.problems {
            println!("  - {p}");
        }
        Ok(1)
    }
}

struct Demo {
    bed: Testbed,
    /// Set on SIGINT/SIGTERM: the demo stops at the next step and still tears down (the
    /// testbed's drop), instead of dying with namespaces and processes left behind.
    interrupted: Arc<AtomicBool>,
    /// Wakes `--pause` on Enter or on a signal.
    wake: mpsc::Receiver<()>,
    wake_tx: mpsc::Sender<()>,
    exe: String,
    backend: BackendArg,
    mode: ModeArg,
    /// Failed checks; the demo goes on so that the whole picture is shown.
    problems: Vec<String>,
    pods: Vec<String>,
    client: String,
    dir: PathBuf,
    socket: PathBuf,
    daemon: Option<u32>,
}

/// What one batch of requests from one source to one target got back.
struct Tally {
    answers: BTreeMap<String, usize>,
    failed: usize,
}

impl Demo {
    fn play(&mut self, pause: bool) -> Result<()> {
        self.build_topology()?;
        self.check()?;
        self.start_backends()?;
        self.write_services()?;
        self.start_daemon()?;
        let status = self.wait_for_listeners()?;
        let vips = vips_of(&status)?;
        self.show_plan()?;
        self.check()?;
        self.show_rules()?;
        self.traffic(&vips)?;
        self.check()?;
        self.show_status()?;
        if pause {
            self.pause(&vips);
        }
        self.stop_daemon()
    }

    fn check(&self) -> Result<()> {
        if self.interrupted.load(Ordering::SeqCst) {
            bail!("interrupted; tearing down");
        }
        Ok(())
    }

    fn build_topology(&mut self) -> Result<()> {
        let node = self.bed.node().to_string();
        println!(
            "node   {node}: br0 {}/24, route 10.11.0.0/16 dev br0, ip_forward=1",
            engine::netns::NODE_ADDR
        );
        for (name, ip) in [("pod1", POD1), ("pod2", POD2), ("client", CLIENT)] {
            let ns = self
                .bed
                .add_host(name, ip)
                .with_context(|| format!("adding host {name}"))?;
            println!("{name:<6} {ns}: eth0 {ip}/24, default via the node");
            if name == "client" {
                self.client = ns;
            } else {
                self.pods.push(ns);
            }
        }
        Ok(())
    }

    fn start_backends(&mut self) -> Result<()> {
        heading("2. Backends: `portald backend` in each pod (tcp/80, tcp/8080, udp/5353)");
        let exe = self.exe.clone();
        for (name, ns) in PODS.iter().zip(self.pods.clone()) {
            let args = [
                "backend", "--name", name, "--tcp", "80", "--tcp", "8080", "--udp", "5353",
            ];
            let pid = self
                .bed
                .spawn(&ns, &exe, &args)
                .with_context(|| format!("starting the backend in {name}"))?;
            if !self.bed.wait_for_log(pid, "ready", Duration::from_secs(10)) {
                bail!(
                    "the backend in {name} did not start within 10 s: {}",
                    self.bed.log_of(pid).trim()
                );
            }
            print!("{name}: {}", self.bed.log_of(pid));
        }
        Ok(())
    }

    fn write_services(&mut self) -> Result<()> {
        heading("3. Services directory");
        self.dir = self.bed.temp_dir().join("services");
        self.socket = self.bed.temp_dir().join("portald.sock");
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating `{}`", self.dir.display()))?;
        // Whatever the umask: portald refuses to write into a directory others may write.
        std::fs::set_permissions(
            &self.dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .with_context(|| format!("making `{}` writable by root only", self.dir.display()))?;
        let files = [
            ("apache-service.json", APACHE_SERVICE.to_string()),
            ("web.yaml", WEB_SERVICE.to_string()),
            ("dns.yaml", DNS_SERVICE.to_string()),
            ("pod1.yaml", pod_yaml("pod1", POD1)),
            ("pod2.yaml", pod_yaml("pod2", POD2)),
        ];
        for (name, text) in files {
            let path = self.dir.join(name);
            engine::safe_write::write(&path, text.as_bytes())
                .with_context(|| format!("writing `{}`", path.display()))?;
        }
        println!("{}:", self.dir.display());
        println!("  apache-service.json  the seed's v1beta1 service: 12345 -> containerPort 80, name=apache");
        println!("  web.yaml             v1 web: http 80 -> named port `http`, admin 8081 -> 8080");
        println!("  dns.yaml             v1 dns: 53/UDP -> 5353");
        println!("  pod1.yaml pod2.yaml  the pods: labels name=apache app=web role=dns, podIPs {POD1} {POD2}");
        println!(
            "\n--- apache-service.json ---\n{}",
            APACHE_SERVICE.trim_end()
        );
        Ok(())
    }

    fn mode_flag(&self) -> &'static str {
        match self.mode {
            ModeArg::Userspace => "userspace",
            ModeArg::Kernel => "kernel",
        }
    }

    /// Listeners the daemon opens: none in kernel mode, where the kernel carries traffic.
    fn listeners_wanted(&self) -> usize {
        match self.mode {
            ModeArg::Userspace => LISTENERS,
            ModeArg::Kernel => 0,
        }
    }

    fn backend_flag(&self) -> &'static str {
        match self.backend {
            BackendArg::Iptables => "iptables",
            BackendArg::Nftables => "nftables",
        }
    }

    fn start_daemon(&mut self) -> Result<()> {
        heading("4. The daemon: `portald run` in the node");
        let node = self.bed.node().to_string();
        let (exe, dir, socket) = (
            self.exe.clone(),
            path_str(&self.dir)?,
            path_str(&self.socket)?,
        );
        // The demo leaves nothing on the host: its node state lives with its namespaces.
        let state = path_str(&self.bed.temp_dir().join("state.json"))?;
        let args = [
            "run",
            &dir,
            "--control-socket",
            &socket,
            "--state-file",
            &state,
            "--cleanup-on-exit",
            "--backend",
            self.backend_flag(),
            "--mode",
            self.mode_flag(),
        ];
        println!("portald {}", args.join(" "));
        let pid = self
            .bed
            .spawn(&node, &exe, &args)
            .context("starting the daemon")?;
        self.daemon = Some(pid);
        Ok(())
    }

    /// Polls the control socket until all listeners are open and a reconcile succeeded.
    fn wait_for_listeners(&mut self) -> Result<Status> {
        let pid = self.daemon.context("the daemon is not running")?;
        let started = Instant::now();
        let deadline = started + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = super::daemon_status(&self.socket) {
                let ok = status.last_reconcile.as_ref().is_some_and(|r| r.ok);
                if ok && status.listeners.len() >= self.listeners_wanted() {
                    println!(
                        "ready after {} ms: {} listeners, last reconcile ok",
                        started.elapsed().as_millis(),
                        status.listeners.len()
                    );
                    return Ok(status);
                }
            }
            if let Some(exit) = self.bed.exit_status(pid) {
                bail!("the daemon exited ({exit}) before it was ready");
            }
            self.check()?;
            if Instant::now() >= deadline {
                bail!(
                    "the daemon was not ready ({} listeners) within 20 s",
                    self.listeners_wanted()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn show_plan(&mut self) -> Result<()> {
        heading("5. The plan against the live node: nothing should be left to do");
        let node = self.bed.node().to_string();
        let (dir, socket) = (path_str(&self.dir)?, path_str(&self.socket)?);
        // The daemon's own node state: the plan sees the VIPs it chose.
        let state = path_str(&self.bed.temp_dir().join("state.json"))?;
        let args = [
            "plan",
            &dir,
            "--control-socket",
            &socket,
            "--state-file",
            &state,
            "--detailed-exitcode",
            "--backend",
            self.backend_flag(),
            "--mode",
            self.mode_flag(),
        ];
        println!("$ portald {}", args.join(" "));
        let out = self
            .bed
            .run(&node, &self.exe, &args)
            .context("running `portald plan`")?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        match out.status.code() {
            Some(0) => println!("(exit 0: no changes)"),
            other => self.problems.push(format!(
                "`portald plan` found changes against the running daemon (exit {other:?})"
            )),
        }
        Ok(())
    }

    fn show_rules(&mut self) -> Result<()> {
        let node = self.bed.node().to_string();
        let lines = match self.backend {
            BackendArg::Iptables => {
                heading("6. Live rules: `iptables-save -t nat | grep PORTAL` in the node");
                self.portal_rules(&node)?
            }
            BackendArg::Nftables => {
                heading("6. Live rules: `nft list table ip portald` in the node");
                self.portal_rules(&node)?
            }
        };
        for line in &lines {
            println!("{line}");
        }
        if lines.is_empty() {
            self.problems
                .push("no portald rules in the node's kernel".into());
        }
        Ok(())
    }

    /// portald's rules in the node's kernel, as text lines (empty when there are none).
    fn portal_rules(&self, node: &str) -> Result<Vec<String>> {
        match self.backend {
            BackendArg::Iptables => {
                let out = self
                    .bed
                    .run_checked(node, "iptables-save", &["-t", "nat"])
                    .context("reading the node's NAT table")?;
                Ok(String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.contains("PORTAL"))
                    .map(str::to_string)
                    .collect())
            }
            BackendArg::Nftables => {
                // A missing table makes nft fail: that is "no rules", not an error.
                let out = self
                    .bed
                    .run(node, "nft", &["list", "table", "ip", "portald"])
                    .context("running nft in the node")?;
                if !out.status.success() {
                    return Ok(Vec::new());
                }
                Ok(String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect())
            }
        }
    }

    fn traffic(&mut self, vips: &Vips) -> Result<()> {
        heading("7. Traffic through the VIPs");
        let node = self.bed.node().to_string();
        let client = self.client.clone();
        let sources = [
            ("node (host traffic)", node.as_str()),
            ("client (container traffic)", client.as_str()),
        ];
        let http_targets = [
            ("apache-service", format!("{}:12345", vips.apache)),
            ("web/http", format!("{}:80", vips.web)),
            ("web/admin", format!("{}:8081", vips.web)),
        ];
        let mut per_target: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        let (mut total, mut answered) = (0, 0);
        for (target, addr) in &http_targets {
            for (source, ns) in sources {
                let tally = self.curl_batch(ns, addr)?;
                let what = format!("{HTTP_REQUESTS} x curl http://{addr}/ from {source}");
                println!("{what:<72} -> {}", spread(&tally));
                total += HTTP_REQUESTS;
                answered += HTTP_REQUESTS - tally.failed;
                merge(per_target.entry(target.to_string()).or_default(), &tally);
            }
        }
        let dns = format!("{}:53", vips.dns);
        for (source, ns) in &sources {
            let tally = self.udp_batch(ns, &dns)?;
            let what = format!("{UDP_QUERIES} x udp-probe {dns} from {source}");
            println!("{what:<72} -> {}", spread(&tally));
            total += UDP_QUERIES;
            answered += UDP_QUERIES - tally.failed;
            merge(per_target.entry("dns/dns".into()).or_default(), &tally);
        }
        println!("\nspread per service (both sources):");
        for (target, answers) in &per_target {
            let shown: Vec<String> = answers.iter().map(|(p, n)| format!("{p}={n}")).collect();
            println!("  {target:<15} {}", shown.join(" "));
            for pod in PODS {
                if answers.get(pod).copied().unwrap_or(0) == 0 {
                    self.problems
                        .push(format!("{pod} got no traffic for {target}"));
                }
            }
        }
        println!("{answered}/{total} requests answered");
        if answered != total {
            self.problems
                .push(format!("{} of {total} requests failed", total - answered));
        }
        Ok(())
    }

    /// `HTTP_REQUESTS` sequential requests in one curl run (the backend closes each
    /// connection, so each request is a new connection the proxy balances).
    fn curl_batch(&self, ns: &str, addr: &str) -> Result<Tally> {
        let url = format!("http://{addr}/");
        let mut args = vec!["-sS", "--connect-timeout", "2", "--max-time", "3"];
        // A loop, not `repeat_n`: that needs Rust 1.82 and the workspace allows 1.80.
        for _ in 0..HTTP_REQUESTS {
            args.push(url.as_str());
        }
        let out = self.bed.run(ns, "curl", &args).context("running curl")?;
        let mut tally = count_answers(&String::from_utf8_lossy(&out.stdout), |l| {
            Some(l.trim().to_string())
        });
        tally.failed = HTTP_REQUESTS.saturating_sub(tally.answers.values().sum());
        if tally.failed > 0 {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(tally)
    }

    fn udp_batch(&self, ns: &str, addr: &str) -> Result<Tally> {
        let count = UDP_QUERIES.to_string();
        let args = [
            "udp-probe",
            "--to",
            addr,
            "--count",
            &count,
            "--timeout-ms",
            "2000",
        ];
        let out = self
            .bed
            .run(ns, &self.exe, &args)
            .context("running udp-probe")?;
        // Replies look like `pod1:probe-3`; other lines are the probe's own notes.
        let mut tally = count_answers(&String::from_utf8_lossy(&out.stdout), |l| {
            l.split_once(":probe-").map(|(pod, _)| pod.to_string())
        });
        tally.failed = UDP_QUERIES.saturating_sub(tally.answers.values().sum());
        if tally.failed > 0 {
            // The probe's notes say whether replies were missing or came from elsewhere.
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if !line.contains(":probe-") || line.starts_with("reply to") {
                    eprintln!("  udp-probe: {line}");
                }
            }
        }
        Ok(tally)
    }

    fn show_status(&mut self) -> Result<()> {
        heading("8. `portald status`");
        let socket = path_str(&self.socket)?;
        let node = self.bed.node().to_string();
        let out = self
            .bed
            .run(&node, &self.exe, &["status", "--control-socket", &socket])
            .context("running `portald status`")?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            self.problems.push(format!(
                "`portald status` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    fn pause(&self, vips: &Vips) {
        heading("Paused: the testbed is live");
        println!("node namespace:   {}", self.bed.node());
        println!("client namespace: {}", self.client);
        println!(
            "try: ip netns exec {} curl http://{}:12345/",
            self.client, vips.apache
        );
        println!(
            "     portald status --control-socket {}",
            self.socket.display()
        );
        println!("press Enter (or Ctrl-C) to tear down");
        let tx = self.wake_tx.clone();
        // A detached reader: the process ends soon after, so it need not be joined.
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            let _ = tx.send(());
        });
        let _ = self.wake.recv();
    }

    fn stop_daemon(&mut self) -> Result<()> {
        heading("9. SIGTERM to the daemon (--cleanup-on-exit)");
        let pid = self.daemon.context("the daemon is not running")?;
        self.bed.stop(pid, SIGTERM).context("stopping the daemon")?;
        let exit = self.bed.exit_status(pid);
        println!(
            "daemon exited: {}",
            exit.map(|e| e.to_string()).unwrap_or_else(|| "?".into())
        );
        if !exit.is_some_and(|e| e.success()) {
            self.problems
                .push("the daemon did not exit cleanly on SIGTERM".into());
        }
        let node = self.bed.node().to_string();
        let left = self.portal_rules(&node)?;
        if left.is_empty() {
            println!("no portald rule remains in the node");
        } else {
            for line in &left {
                println!("left over: {line}");
            }
            self.problems.push(format!(
                "{} portald rule lines remain after the daemon exited",
                left.len()
            ));
        }
        Ok(())
    }
}

/// Catches SIGINT and SIGTERM for the rest of the process (so they no longer kill it) and
/// reports them through the returned flag and `wake`.
fn watch_signals(wake: mpsc::Sender<()>) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut term) = signal(SignalKind::terminate()) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            eprintln!("portald demo: interrupted; tearing down");
            set.store(true, Ordering::SeqCst);
            let _ = wake.send(());
            // Keep the handlers installed (a second Ctrl-C must not kill the teardown).
            std::future::pending::<()>().await
        });
    });
    flag
}

struct Vips {
    apache: Ipv4Addr,
    web: Ipv4Addr,
    dns: Ipv4Addr,
}

fn vips_of(status: &Status) -> Result<Vips> {
    let find = |name: &str| {
        status
            .services
            .iter()
            .find(|s| s.name == name || s.name.ends_with(&format!("/{name}")))
            .and_then(|s| s.vip)
            .map(|v| v.0)
            .with_context(|| format!("the daemon shows no VIP for service `{name}`"))
    };
    let vips = Vips {
        apache: find("apache-service")?,
        web: find("web")?,
        dns: find("dns")?,
    };
    println!(
        "VIPs: apache-service {}, web {}, dns {}",
        vips.apache, vips.web, vips.dns
    );
    Ok(vips)
}

fn count_answers(text: &str, pod_of: impl Fn(&str) -> Option<String>) -> Tally {
    let mut answers = BTreeMap::new();
    for line in text.lines() {
        if let Some(pod) = pod_of(line) {
            if PODS.contains(&pod.as_str()) {
                *answers.entry(pod).or_insert(0) += 1;
            }
        }
    }
    Tally { answers, failed: 0 }
}

fn spread(tally: &Tally) -> String {
    let mut parts: Vec<String> = tally
        .answers
        .iter()
        .map(|(p, n)| format!("{p}={n}"))
        .collect();
    if tally.failed > 0 {
        parts.push(format!("FAILED={}", tally.failed));
    }
    parts.join(" ")
}

fn merge(into: &mut BTreeMap<String, usize>, tally: &Tally) {
    for (pod, n) in &tally.answers {
        *into.entry(pod.clone()).or_insert(0) += n;
    }
}

fn heading(title: &str) {
    println!("\n=== {title} ===");
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("`{}` is not UTF-8", path.display()))
}
