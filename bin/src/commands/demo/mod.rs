//! `portald demo`: a self-contained run in private network namespaces. A node with a
//! bridge, two "pods" running `portald backend`, a client; the seed's `apache-service.json`
//! plus a multi-port and a UDP service; the daemon in the node; then the plan, the rules,
//! traffic from the node and from the client through the VIPs, the spread per pod, the
//! daemon's status, and a clean teardown. Exit 0 only when every request was answered and
//! both pods served every service.
//!
//! [`topology`] sets the scene (namespaces, backends, the services directory), [`traffic`]
//! sends the requests through the VIPs, [`report`] shows what portald made of it; this file
//! drives the run and the daemon, and tears down even when interrupted.

mod report;
mod topology;
mod traffic;

use crate::args::{BackendArg, DemoArgs, ModeArg};
use anyhow::{bail, Context, Result};
use engine::daemon::control::Status;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testbed::{Testbed, SIGTERM};
use traffic::{vips_of, Vips};

/// The daemon's listeners: apache-service, web/http, web/admin, dns/dns.
const LISTENERS: usize = 4;

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
    if outcome.is_err() || !demo.problems.is_empty() {
        demo.show_daemon_log();
    }
    outcome?;
    heading("Teardown");
    let prefix = demo.bed.prefix().to_string();
    drop(demo.bed);
    println!("namespaces {prefix}-* deleted, background processes reaped");
    println!();
    Ok(report::verdict(&demo.problems))
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

    /// `portald VERB` on the demo's directory, control socket and node state, with the
    /// verb's own `flag`, then the demo's backend and mode.
    fn portald_args(&self, verb: &str, flag: &str) -> Result<Vec<String>> {
        // The demo leaves nothing on the host: its node state lives with its namespaces, and
        // a plan reads the daemon's own, so it sees the VIPs the daemon chose.
        let state = path_str(&self.bed.temp_dir().join("state.json"))?;
        let (dir, socket) = (path_str(&self.dir)?, path_str(&self.socket)?);
        let args = [
            verb,
            &dir,
            "--control-socket",
            &socket,
            "--state-file",
            &state,
            flag,
            "--backend",
            self.backend_flag(),
            "--mode",
            self.mode_flag(),
        ];
        Ok(args.map(str::to_string).to_vec())
    }

    fn start_daemon(&mut self) -> Result<()> {
        heading("4. The daemon: `portald run` in the node");
        let node = self.bed.node().to_string();
        let exe = self.exe.clone();
        let args = self.portald_args("run", "--cleanup-on-exit")?;
        println!("portald {}", args.join(" "));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
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

fn heading(title: &str) {
    println!("\n=== {title} ===");
}

fn path_str(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("`{}` is not UTF-8", path.display()))
}
