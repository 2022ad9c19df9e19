//! Command-line arguments.

use clap::{Args, Parser, Subcommand, ValueEnum};
use engine::config::{Backend, Config, InputLimits, Mode, PortRange};
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
    /// Settings file (YAML, JSON or TOML; `.toml` by its name): every flag of the command
    /// by its name with `_` (`resync_seconds: 10`). Flags win over `PORTALD_*` variables,
    /// which win over the file. Also `PORTALD_CONFIG`.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print every setting of the command, its value and where it came from, then exit.
    #[arg(long, global = true)]
    pub print_config: bool,
    /// Longest a kernel tool (`iptables-restore`, `nft`, ...) may run before it is killed
    /// and its call fails, in seconds.
    #[arg(long, default_value_t = 30.0, global = true)]
    pub exec_timeout_seconds: f64,
    #[command(subcommand)]
    pub command: Command,
}

/// The parser: the derived definition, where a flag given twice (by a settings layer, then
/// by the user) takes the later value.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let mut command = Cli::command().args_override_self(true);
    let names: Vec<String> = command
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    for name in names {
        command = command.mut_subcommand(name, |c| c.args_override_self(true));
    }
    command
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the manual page (roff, for `man -l -`).
    Man,
    /// Print the JSON Schema of a versioned output (plan, check, status, snapshot, lock).
    Schema(SchemaArgs),
    /// A named test server ("pod") for the demo and the tests.
    #[command(hide = true)]
    Backend(BackendArgs),
    /// Send numbered UDP datagrams and print the replies.
    #[command(hide = true)]
    UdpProbe(UdpProbeArgs),
}

#[derive(Args, Debug)]
pub struct SchemaArgs {
    /// The document: `plan` (`plan --json`, `--out`), `check` (`check --format json`),
    /// `status` (`status --json`), `snapshot`, `lock` (the lock and the node state file).
    #[arg(value_enum)]
    pub name: SchemaName,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaName {
    Plan,
    Check,
    Status,
    Snapshot,
    Lock,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
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
    /// Most UDP flows of one listener; a new one past it evicts the least recently used.
    #[arg(long, default_value_t = dataplane::DEFAULT_UDP_MAX_FLOWS)]
    pub udp_max_flows: usize,
    /// Most UDP flows of one client IP address on one listener; a new one past it evicts
    /// that client's oldest (a client spraying source ports cannot crowd others out).
    #[arg(long, default_value_t = dataplane::DEFAULT_UDP_MAX_FLOWS_PER_CLIENT)]
    pub udp_max_flows_per_client: usize,
    /// Most proxied TCP connections open at once over all listeners (like HAProxy's
    /// maxconn); more wait in the listen backlog. Default: as many as file descriptors allow.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Readiness probes and health checks in flight at once over all endpoints; more wait
    /// for a free slot (their period stretches rather than bursting).
    #[arg(long, default_value_t = engine::daemon::prober::DEFAULT_CONCURRENCY)]
    pub probe_concurrency: usize,
    /// File descriptors kept free for the control path (spawning iptables/nft, the control
    /// socket, files): the data plane takes no more than the soft limit less this.
    #[arg(long, default_value_t = dataplane::DEFAULT_FD_RESERVE)]
    pub fd_reserve: usize,
    /// Idle time before TCP keepalive probes on client and endpoint sockets (seconds);
    /// 0 turns keepalive and the user timeout off.
    #[arg(long, default_value_t = 60)]
    pub tcp_keepalive_idle_seconds: u64,
    /// Between unanswered keepalive probes (seconds).
    #[arg(long, default_value_t = 10)]
    pub tcp_keepalive_interval_seconds: u64,
    /// Unanswered keepalive probes before the connection is dropped.
    #[arg(long, default_value_t = 3)]
    pub tcp_keepalive_count: u32,
    /// Sent data unacknowledged this long drops the connection (TCP_USER_TIMEOUT, seconds);
    /// default idle + interval × count.
    #[arg(long)]
    pub tcp_user_timeout_seconds: Option<u64>,
    /// Passive outlier detection (userspace mode): failed dials in a row (refused, timed
    /// out, unreachable) that take an endpoint out of the rotation; 0 turns it off. Envoy's
    /// consecutive_gateway_failure.
    #[arg(long, default_value_t = 5)]
    pub outlier_consecutive_failures: u32,
    /// Seconds an endpoint stays out at its first ejection; the n-th in a row lasts n times
    /// as long (Envoy's base_ejection_time).
    #[arg(long, default_value_t = 30.0)]
    pub outlier_base_ejection: f64,
    /// Longest ejection, in seconds (Envoy's max_ejection_time).
    #[arg(long, default_value_t = 300.0)]
    pub outlier_max_ejection: f64,
    /// Most endpoints of a service port out at once, in percent (yet one of two or more,
    /// never the last one).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub outlier_max_ejection_percent: u8,
    /// Where Prometheus `/metrics` is served, IP:PORT; `0` serves none (as kube-proxy).
    #[arg(long, default_value = engine::daemon::http::DEFAULT_METRICS_ADDRESS)]
    pub metrics_bind_address: BindAddress,
    /// Where `/healthz` and `/livez` are served, IP:PORT; `0` serves none (as kube-proxy).
    #[arg(long, default_value = engine::daemon::http::DEFAULT_HEALTHZ_ADDRESS)]
    pub healthz_bind_address: BindAddress,
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
    /// Print the status as JSON: a versioned document (`format_version`, schema from
    /// `portald schema status`) with every problem's file and line in `diagnostics`.
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
    /// Allocation record (an input: read and watched, never written by the daemon);
    /// default `<DIR>/portald.lock`.
    #[arg(long)]
    pub lock: Option<PathBuf>,
    /// Strict multi-host mode: a service with no lock entry gets no VIP and is held
    /// (reported by `status`, the logs and `check`), instead of being given a VIP another
    /// host may give to a different service.
    #[arg(long)]
    pub require_lock: bool,
    /// Node-local state: proxy ports, and the VIPs this host chose for services without a
    /// lock entry. Written atomically by the daemon and a one-shot apply.
    #[arg(long, default_value = DEFAULT_STATE_FILE)]
    pub state_file: PathBuf,
    /// Largest services file or lock read, in bytes; a larger one is reported and skipped.
    #[arg(long, default_value_t = engine::config::DEFAULT_MAX_FILE_BYTES)]
    pub max_file_bytes: u64,
    /// Deepest nesting (block levels plus open `[`/`{`) of a services file; a deeper one is
    /// reported and not parsed. At most 120 (the YAML parser's own limit is 128).
    #[arg(long, default_value_t = engine::config::DEFAULT_MAX_NESTING_DEPTH as u16,
          value_parser = clap::value_parser!(u16).range(1..=120))]
    pub max_nesting_depth: u16,
}

/// Where the node state lives unless `--state-file` says otherwise.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/portald/state.json";

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
            require_lock: self.require_lock,
            input_limits: self.input_limits(),
            ..Config::default()
        }
    }

    pub fn input_limits(&self) -> InputLimits {
        InputLimits {
            max_file_bytes: self.max_file_bytes,
            max_nesting_depth: usize::from(self.max_nesting_depth),
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
    /// Also fail (exit 1) unless the lock is exactly what `portald lock DIR` would write:
    /// an entry for every service, none for a service that is gone, nothing to change.
    /// The GitOps gate for CI.
    #[arg(long)]
    pub locked: bool,
    /// Make warnings fatal: exit 1 on an unknown field, a misspelt kind or any other
    /// warning, as on an error.
    #[arg(long)]
    pub strict: bool,
    /// With `--format github`: put PREFIX before each file's path (relative to DIR), so
    /// annotations land on the pull request's files. Without it, the path from the
    /// repository's top level (the nearest folder above DIR holding `.git`) to DIR.
    #[arg(long, value_name = "PREFIX")]
    pub path_prefix: Option<String>,
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
    /// Keep the VIPs a captured state (`portald snapshot`) serves for services the lock
    /// does not name yet: adopting an existing host's addresses.
    #[arg(long, conflicts_with = "from_kernel")]
    pub live: Option<PathBuf>,
    /// The same from this host's live kernel rules. Without `--live` or this flag, the lock
    /// is a pure function of the directory and the current lock.
    #[arg(long)]
    pub from_kernel: bool,
    /// Accepted for compatibility: reading no live state is the default.
    #[arg(long, hide = true)]
    pub no_live: bool,
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
    /// The daemon whose listeners the snapshot records (when one answers there).
    #[command(flatten)]
    pub control: ControlArgs,
}

/// An HTTP bind address flag: `IP:PORT`, or `0` for none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddress(pub Option<std::net::SocketAddr>);

impl std::str::FromStr for BindAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        engine::daemon::http::parse_bind_address(text).map(BindAddress)
    }
}
