//! `portald run DIR`: the daemon.

use crate::args::RunArgs;
use anyhow::{Context, Result};
use engine::daemon::{run as run_daemon, DaemonConfig};
use engine::dataplane::DataPlaneConfig;
use engine::exec::SystemExec;
use std::sync::Arc;
use std::time::Duration;

pub fn run(args: RunArgs) -> Result<u8> {
    let config = args.engine.config();
    // Absolute but not resolved: a symlink (git-sync's published commit, a GitOps
    // puller's) is followed anew on every pass, so swapping it is a change.
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("services directory `{}`", args.dir.display()))?;
    let daemon = DaemonConfig {
        lock_path: args.engine.lock_path(&dir),
        dir,
        config,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        debounce: Duration::from_millis(args.debounce_ms),
        drift_check: Some(crate::seconds(args.drift_check_seconds)).filter(|d| !d.is_zero()),
        control_socket: args.control.control_socket.clone(),
        cleanup_on_exit: args.cleanup_on_exit,
        dataplane: DataPlaneConfig {
            dial_timeouts: args
                .dial_timeouts_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            max_attempts: args.max_attempts.max(1),
            half_close_timeout: Duration::from_secs(args.half_close_timeout_seconds),
            udp_idle_timeout: Duration::from_secs(args.udp_idle_timeout_seconds),
            ..DataPlaneConfig::default()
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime
        .block_on(run_daemon(daemon, Arc::new(SystemExec)))
        .context("running the daemon")?;
    Ok(0)
}
