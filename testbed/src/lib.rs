//! Private network namespaces for `portald demo` and the kernel-level tests: a "node"
//! namespace with a bridge, "hosts" (pods, clients) joined to it by veth pairs, and
//! background processes that are always reaped, with every namespace deleted on drop.
//!
//! This is the test and demo shell, not the engine's kernel seam: it shells out to `ip`
//! with `std::process::Command` directly. A crate of its own so that the product's engine
//! carries no test bed: only `portald demo` and the tests depend on it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The node's address on its bridge; every host's default route points here.
pub const NODE_ADDR: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
/// Prefix length of the bridge network.
pub const HOST_PREFIX: u8 = 24;
/// The portal (VIP) range routed to the bridge inside the node, so that host-originated
/// traffic to a VIP has a route to match the NAT rules against.
pub const PORTAL_ROUTE: &str = "10.11.0.0/16";

/// Signals for `Testbed::stop`, re-exported so callers need no libc of their own.
pub const SIGTERM: i32 = libc::SIGTERM;
pub const SIGKILL: i32 = libc::SIGKILL;
pub const SIGHUP: i32 = libc::SIGHUP;

/// Makes concurrent testbeds in one process (parallel tests) distinct.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How long `Drop` lets children exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long `stop` waits for a terminated child.
const STOP_WAIT: Duration = Duration::from_secs(5);

struct Spawned {
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

/// A set of network namespaces and processes, all removed when dropped (also on panic).
pub struct Testbed {
    prefix: String,
    node: String,
    /// Created namespaces, node first; deleted in reverse order.
    namespaces: Vec<String>,
    children: BTreeMap<u32, Spawned>,
    temp: PathBuf,
    veths: u32,
}

impl Testbed {
    /// Creates the node namespace: lo up, bridge `br0` with `NODE_ADDR/24`, a route for the
    /// portal range via the bridge, and IP forwarding on.
    pub fn new(tag: &str) -> io::Result<Testbed> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{tag}-{}-{n}", std::process::id());
        let temp = std::env::temp_dir().join(format!("portald-testbed-{prefix}"));
        // A leftover from a crashed run with a recycled pid would confuse logs.
        let _ = std::fs::remove_dir_all(&temp);
        std::fs::create_dir_all(&temp)?;
        let node = format!("{prefix}-node");
        // Built before any kernel change so that a failure half-way is undone by Drop.
        let mut bed = Testbed {
            prefix,
            node: node.clone(),
            namespaces: Vec::new(),
            children: BTreeMap::new(),
            temp,
            veths: 0,
        };
        bed.add_namespace(&node)?;
        let addr = format!("{NODE_ADDR}/{HOST_PREFIX}");
        ip(&["-n", &node, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &node, "addr", "add", &addr, "dev", "br0"])?;
        ip(&["-n", &node, "link", "set", "br0", "up"])?;
        ip(&["-n", &node, "route", "add", PORTAL_ROUTE, "dev", "br0"])?;
        bed.run_checked(&node, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
        Ok(bed)
    }

    /// The node namespace's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The unique prefix of every namespace this testbed creates.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A new namespace joined to `br0` by a veth (`eth0` inside, `ip/24`), lo up, default
    /// route via `NODE_ADDR`. Returns the namespace's name.
    pub fn add_host(&mut self, name: &str, ip_addr: Ipv4Addr) -> io::Result<String> {
        let ns = format!("{}-{name}", self.prefix);
        self.add_namespace(&ns)?;
        // The node end lives in the node namespace only, so a short counter-based name is
        // unique there and stays within the 15-character interface name limit.
        let veth = format!("vh{}", self.veths);
        self.veths += 1;
        let node = self.node.clone();
        ip(&[
            "-n", &node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["-n", &node, "link", "set", &veth, "master", "br0", "up"])?;
        let addr = format!("{ip_addr}/{HOST_PREFIX}");
        ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &NODE_ADDR.to_string(),
        ])?;
        Ok(ns)
    }

    /// A new namespace with only `lo` up, removed with the testbed: for a topology the
    /// caller wires itself (say another node reached over a routed link). Returns its name.
    pub fn add_bare(&mut self, name: &str) -> io::Result<String> {
        let ns = format!("{}-{name}", self.prefix);
        self.add_namespace(&ns)?;
        Ok(ns)
    }

    /// Runs `program args...` inside `ns` and waits for it.
    pub fn run(&self, ns: &str, program: &str, args: &[&str]) -> io::Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .output()
    }

    /// Like `run`, but a non-zero exit is an error carrying the program's stderr.
    pub fn run_checked(&self, ns: &str, program: &str, args: &[&str]) -> io::Result<Output> {
        let out = self.run(ns, program, args)?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(io::Error::other(format!(
                "`{program} {}` in {ns} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Starts `program args...` inside `ns` in the background, its stdout and stderr going
    /// to a log file in the temp dir. Returns the pid (the program's own: `ip netns exec`
    /// execs it, so signals reach it directly).
    pub fn spawn(&mut self, ns: &str, program: &str, args: &[&str]) -> io::Result<u32> {
        let n = self.children.len();
        let base = Path::new(program)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "child".into());
        let log = self.temp.join(format!("{n:02}-{base}.log"));
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        // Its own process group: a Ctrl-C at the terminal reaches only the owner, which
        // then stops the children in order (the daemon before the namespaces go).
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()?;
        let pid = child.id();
        self.children.insert(
            pid,
            Spawned {
                child,
                log,
                status: None,
            },
        );
        Ok(pid)
    }

    /// Sends `signal` to a spawned child; for SIGTERM and SIGKILL also waits (at most 5 s)
    /// for it to exit.
    pub fn stop(&mut self, pid: u32, signal: i32) -> io::Result<()> {
        let spawned = self.children.get_mut(&pid).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, format!("pid {pid} is not a child"))
        })?;
        if spawned.status.is_some() {
            return Ok(());
        }
        // Reap first if it already exited: signalling a reaped pid could hit a stranger.
        if let Some(status) = spawned.child.try_wait()? {
            spawned.status = Some(status);
            return Ok(());
        }
        // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory involved.
        if unsafe { libc::kill(pid as libc::pid_t, signal) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if signal == libc::SIGTERM || signal == libc::SIGKILL {
            match wait_bounded(&mut spawned.child, STOP_WAIT)? {
                Some(status) => spawned.status = Some(status),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("pid {pid} did not exit within {STOP_WAIT:?}"),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The exit status of a spawned child, if it has exited (reaping it if needed).
    pub fn exit_status(&mut self, pid: u32) -> Option<ExitStatus> {
        let spawned = self.children.get_mut(&pid)?;
        if spawned.status.is_none() {
            spawned.status = spawned.child.try_wait().ok().flatten();
        }
        spawned.status
    }

    /// What the child printed (stdout and stderr) so far; empty for an unknown pid.
    pub fn log_of(&self, pid: u32) -> String {
        self.children
            .get(&pid)
            .and_then(|s| std::fs::read(&s.log).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits (bounded) until the child's log contains `needle`; false on timeout or if the
    /// child exits first.
    pub fn wait_for_log(&mut self, pid: u32, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_of(pid).contains(needle) {
                return true;
            }
            if self.exit_status(pid).is_some() || Instant::now() >= deadline {
                return self.log_of(pid).contains(needle);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// A fresh directory owned by the testbed, removed on drop.
    pub fn temp_dir(&self) -> &Path {
        &self.temp
    }

    fn add_namespace(&mut self, ns: &str) -> io::Result<()> {
        ip(&["netns", "add", ns])?;
        self.namespaces.push(ns.to_string());
        ip(&["-n", ns, "link", "set", "lo", "up"])
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Terminate all at once, then share one grace period, so teardown takes at most
        // about 2 s however many children there are.
        let mut running: Vec<u32> = Vec::new();
        for (pid, s) in self.children.iter_mut() {
            if s.status.is_none() && matches!(s.child.try_wait(), Ok(None)) {
                // SAFETY: kill(2) on our own unreaped child.
                unsafe { libc::kill(*pid as libc::pid_t, libc::SIGTERM) };
                running.push(*pid);
            }
        }
        let deadline = Instant::now() + TERM_GRACE;
        for pid in running {
            let s = self.children.get_mut(&pid).expect("tracked child");
            let left = deadline.saturating_duration_since(Instant::now());
            if !matches!(wait_bounded(&mut s.child, left), Ok(Some(_))) {
                let _ = s.child.kill();
                let _ = s.child.wait();
            }
        }
        // Deleting the node namespace also removes the bridge and every veth pair.
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = std::fs::remove_dir_all(&self.temp);
    }
}

/// Polls `try_wait` until the child exits or `timeout` passes.
fn wait_bounded(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `ip args...`; a failure is an error carrying its stderr.
fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
