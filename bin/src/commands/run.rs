//! `portald run DIR`: the daemon.

use crate::args::RunArgs;
use anyhow::{Context, Result};
use dataplane::{raise_nofile_limit, DataPlaneConfig, Keepalive, OutlierDetection};
use engine::daemon::{run as run_daemon, DaemonConfig};
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
        state_path: args.engine.state_file.clone(),
        dir,
        config,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        debounce: Duration::from_millis(args.debounce_ms),
        drift_check: Some(crate::seconds(args.drift_check_seconds)).filter(|d| !d.is_zero()),
        control_socket: args.control.control_socket.clone(),
        cleanup_on_exit: args.cleanup_on_exit,
        metrics_bind: args.metrics_bind_address.0,
        healthz_bind: args.healthz_bind_address.0,
        probe_concurrency: args.probe_concurrency.max(1),
        // SIGHUP reads the config file and the environment again, over the same flags.
        settings: Some(engine::daemon::reconciler::SettingsSource(Arc::new(|| {
            crate::reparse_run()
                .map(|args| args.engine.config())
                .map_err(|e| format!("{e:#}"))
        }))),
        dataplane: DataPlaneConfig {
            dial_timeouts: args
                .dial_timeouts_ms
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            max_attempts: args.max_attempts.max(1),
            half_close_timeout: Duration::from_secs(args.half_close_timeout_seconds),
            udp_idle_timeout: Duration::from_secs(args.udp_idle_timeout_seconds),
            udp_max_flows: args.udp_max_flows.max(1),
            udp_max_flows_per_client: args.udp_max_flows_per_client.max(1),
            max_connections: args.max_connections,
            fd_reserve: args.fd_reserve,
            keepalive: keepalive(&args),
            outlier: OutlierDetection {
                consecutive_failures: args.outlier_consecutive_failures,
                base_ejection: crate::seconds(args.outlier_base_ejection),
                max_ejection: crate::seconds(args.outlier_max_ejection),
                max_ejection_percent: args.outlier_max_ejection_percent,
            },
            ..DataPlaneConfig::default()
        },
    };
    // Before the runtime starts: its threads and every later socket count against it.
    match raise_nofile_limit() {
        Ok(limit) => tracing::info!(
            soft_before = limit.soft_before,
            soft = limit.soft,
            hard = limit.hard,
            "file descriptor limit (RLIMIT_NOFILE)"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime
        .block_on(run_daemon(daemon, Arc::new(SystemExec)))
        .context("running the daemon")?;
    Ok(0)
}

/// Keepalive from the flags; an idle time of 0 turns it off.
fn keepalive(args: &RunArgs) -> Option<Keepalive> {
    if args.tcp_keepalive_idle_seconds == 0 {
        return None;
    }
    let idle = Duration::from_secs(args.tcp_keepalive_idle_seconds);
    let interval = Duration::from_secs(args.tcp_keepalive_interval_seconds.max(1));
    let count = args.tcp_keepalive_count.max(1);
    Some(Keepalive {
        idle,
        interval,
        count,
        user_timeout: args
            .tcp_user_timeout_seconds
            .map_or(idle + interval * count, Duration::from_secs),
    })
}
