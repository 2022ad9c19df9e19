//! Command-line arguments.

use clap::{Args, Parser, Subcommand, ValueEnum};
use engine::config::{Backend, Config, Mode, PortRange};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "portald",
    version,
    about = "Kubernetes-style services (portal IPs) for any Linux host"
)]
pub struct Cli {
    /// Log format on standard error (filter with RUST_LOG).
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    /// Longest a kernel tool (`iptables-restore`, `nft`, ...) may run before it is killed
    /// and its call fails, in seconds.
    #[arg(long, default_value_t = 30.0, global = true)]
    pub exec_timeout_seconds: f64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate a services directory; exit 0 when clean, 1 on errors.
    Check(CheckArgs),
    /// Show what apply would change against the live state (dry run).
    Plan(PlanArgs),
    /// Write or refresh the allocation record (`portald.lock`) of a services directory.
    Lock(LockArgs),
    /// Capture the live state to a file, for `plan --live FILE`.
    Snapshot(SnapshotArgs),
    /// Apply now: a services directory, or a plan saved with `plan --out` (refused if stale).
    Apply(ApplyArgs),
    /// The daemon: watch the directory, reconcile, serve the data plane.
    Run(RunArgs),
    /// Show the running daemon's services, listeners and last reconcile.
    Status(StatusArgs),
    /// Remove everything portald owns in the kernel.
    Cleanup(CleanupArgs),
    /// Switch the running daemon to another backend and/or mode, live.
    Switch(SwitchArgs),
    /// A self-contained run in private network namespaces: backends, services, traffic.
    Demo(DemoArgs),
    /// A named test server ("pod") for the demo and the tests.
    #[command(hide = true)]
    Backend(BackendArgs),
    /// Send numbered UDP datagrams and print the replies.
    #[command(hide = true)]
    UdpProbe(UdpProbeArgs),
}

/// Where the daemon's control socket is.
#[derive(Args, Debug, Clone)]
pub struct ControlArgs {
    #[arg(long, default_value = engine::daemon::control::DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// A services directory, or a plan file written by `portald plan --out`.
    pub target: PathBuf,
    #[command(flatten)]
    pub control: ControlArgs,
    /// Used when no daemon runs (a one-shot apply, kernel mode only); a running daemon
    /// applies with its own settings.
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Services directory to watch.
    pub dir: PathBuf,
    /// Full reconcile (and drift repair) at least this often, in seconds.
    #[arg(long, default_value_t = 30)]
    pub resync_seconds: u64,
    /// How often portald's own kernel rules are compared with what it last applied, so a
    /// change made by hand is repaired within this time (seconds; 0: only at the resync).
    #[arg(long, default_value_t = 2.0)]
    pub drift_check_seconds: f64,
    /// Quiet time after a file change before reconciling, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub debounce_ms: u64,
    /// Remove portald's kernel rules on SIGTERM (default: leave them in place so that a
    /// restarted daemon picks up its proxy ports again without a rule change).
    #[arg(long)]
    pub cleanup_on_exit: bool,
    /// Dial timeouts of successive endpoint attempts, in milliseconds.
    #[arg(long, value_delimiter = ',', default_value = "250,500,1000,2000")]
    pub dial_timeouts_ms: Vec<u64>,
    /// Most endpoints tried for one connection.
    #[arg(long, default_value_t = 4)]
    pub max_attempts: usize,
    /// One side of a TCP connection closed and the other silent this long: reap it (seconds).
    #[arg(long, default_value_t = 60)]
    pub half_close_timeout_seconds: u64,
    /// A UDP client flow idle this long is removed (seconds).
    #[arg(long, default_value_t = 30)]
    pub udp_idle_timeout_seconds: u64,
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Args, Debug)]
pub struct SwitchArgs {
    /// The kernel interface to move to.
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// The data path to move to.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print the raw JSON status.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Args, Debug)]
pub struct CleanupArgs {
    #[arg(long, value_enum, default_value = "iptables")]
    pub backend: BackendArg,
    #[command(flatten)]
    pub control: ControlArgs,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Keep the namespaces and processes for inspection until Enter is pressed.
    #[arg(long)]
    pub pause: bool,
    #[arg(long, value_enum, default_value = "iptables")]
    pub backend: BackendArg,
    /// Data path: the userspace proxy, or DNAT to the pods in the kernel.
    #[arg(long, value_enum, default_value = "userspace")]
    pub mode: ModeArg,
}

#[derive(Args, Debug)]
pub struct BackendArgs {
    /// Name answered on every port.
    #[arg(long)]
    pub name: String,
    /// TCP port answering HTTP/1.x with `200 OK` and body `NAME`.
    #[arg(long)]
    pub tcp: Vec<u16>,
    /// UDP port replying `NAME:` + payload.
    #[arg(long)]
    pub udp: Vec<u16>,
}

#[derive(Args, Debug)]
pub struct UdpProbeArgs {
    /// Target, IP:PORT.
    #[arg(long)]
    pub to: std::net::SocketAddr,
    /// Number of datagrams (each from a fresh source port, unless --source-port is given).
    #[arg(long, default_value_t = 1)]
    pub count: usize,
    /// Send every datagram from this one source port: one flow, as a long-lived client
    /// (a resolver, a game) keeps.
    #[arg(long)]
    pub source_port: Option<u16>,
    /// Payload prefix; the query number is appended.
    #[arg(long, default_value = "probe")]
    pub payload: String,
    /// Wait for each reply at most this long, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// Settings that shape the intended state.
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// CIDR the VIPs (portal IPs) are allocated from.
    #[arg(long, default_value = "10.11.0.0/16")]
    pub portal_cidr: ipnetwork_arg::Cidr,
    /// Local ports the userspace proxy listeners use, LOW-HIGH.
    #[arg(long, default_value_t = engine::config::DEFAULT_PROXY_PORTS)]
    pub proxy_port_range: PortRange,
    /// Kernel interface.
    #[arg(long, value_enum, default_value = "iptables")]
    pub backend: BackendArg,
    /// Data path.
    #[arg(long, value_enum, default_value = "userspace")]
    pub mode: ModeArg,
    /// Serve `spec.externalIPs` (off by default: a file could capture any address's traffic).
    #[arg(long)]
    pub allow_external_ips: bool,
    /// Allocation record; default `<DIR>/portald.lock`.
    #[arg(long)]
    pub lock: Option<PathBuf>,
}

impl EngineArgs {
    pub fn config(&self) -> Config {
        let mode = match self.mode {
            ModeArg::Userspace => Mode::Userspace,
            ModeArg::Kernel => Mode::Kernel,
        };
        Config {
            // Only kernel mode masquerades, for clients on the host's own links.
            local_networks: match mode {
                Mode::Kernel => engine::observe::routes::local_networks(),
                Mode::Userspace => Vec::new(),
            },
            portal_cidr: self.portal_cidr.0,
            proxy_ports: self.proxy_port_range,
            backend: match self.backend {
                BackendArg::Iptables => Backend::Iptables,
                BackendArg::Nftables => Backend::Nftables,
            },
            mode,
            allow_external_ips: self.allow_external_ips,
            ..Config::default()
        }
    }

    pub fn lock_path(&self, dir: &std::path::Path) -> PathBuf {
        self.lock
            .clone()
            .unwrap_or_else(|| dir.join(engine::allocate::LOCK_FILE_NAME))
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BackendArg {
    Iptables,
    Nftables,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    /// NAT to a local proxy listener; the daemon proxies to the endpoints.
    Userspace,
    /// DNAT straight to the endpoints in the kernel; the daemon only reconciles.
    Kernel,
}

pub mod ipnetwork_arg {
    //! `--portal-cidr` parsing with a message that names the flag's rules.
    use std::str::FromStr;

    #[derive(Debug, Clone, Copy)]
    pub struct Cidr(pub ipnetwork::Ipv4Network);

    impl FromStr for Cidr {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, Self::Err> {
            let net: ipnetwork::Ipv4Network = s
                .parse()
                .map_err(|e| format!("`{s}` is not an IPv4 CIDR: {e}"))?;
            if net.prefix() > 30 {
                return Err(format!(
                    "`{s}` is too small: a prefix of /30 or shorter is needed"
                ));
            }
            if net.network() != net.ip() {
                return Err(format!(
                    "`{s}` has host bits set; did you mean {}/{}?",
                    net.network(),
                    net.prefix()
                ));
            }
            Ok(Cidr(net))
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ReportFormat {
    Text,
    Json,
    Github,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Services directory.
    pub dir: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// Where the live state comes from.
#[derive(Args, Debug, Clone)]
pub struct LiveArgs {
    /// Plan against a captured state (`portald snapshot`, or raw `iptables-save -t nat` /
    /// `nft -j list ruleset` output) instead of the kernel.
    #[arg(long, conflicts_with = "no_live")]
    pub live: Option<PathBuf>,
    /// Plan against an empty live state (no kernel access needed).
    #[arg(long)]
    pub no_live: bool,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Services directory.
    pub dir: PathBuf,
    #[command(flatten)]
    pub live: LiveArgs,
    /// Print the plan as JSON (versioned by `format_version`).
    #[arg(long)]
    pub json: bool,
    /// Also save the plan (JSON) to this file, for `apply PLANFILE`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the exact batch the kernel would be sent.
    #[arg(long)]
    pub show_batch: bool,
    /// Exit 0 when there is nothing to do, 2 when there are changes, 1 on error.
    #[arg(long)]
    pub detailed_exitcode: bool,
    #[command(flatten)]
    pub control: ControlArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Args, Debug)]
pub struct LockArgs {
    /// Services directory.
    pub dir: PathBuf,
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    /// File to write (default: standard output).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "iptables")]
    pub backend: BackendArg,
}
