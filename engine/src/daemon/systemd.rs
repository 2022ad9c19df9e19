//! The systemd notification protocol (`sd_notify(3)`): readiness, reloads, stops, a status
//! line and the watchdog, through the `sd-notify` crate; nothing is sent without
//! `NOTIFY_SOCKET`.

use super::control::Status;
use sd_notify::NotifyState;
use std::time::Duration;

/// Says that the first reconcile was applied and verified (`READY=1`), with the status line.
pub fn ready(status: &Status) {
    send(&[
        NotifyState::Ready,
        NotifyState::Status(&status_line(status)),
    ]);
}

/// Says what the daemon serves now (`STATUS=`), after each reconcile.
pub fn status(status: &Status) {
    send(&[NotifyState::Status(&status_line(status))]);
}

/// A reload starts (`RELOADING=1` with `MONOTONIC_USEC`, which systemd 253 and newer
/// require); [`ready`] ends it.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    if let Ok(now) = NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// The daemon is stopping (`STOPPING=1`).
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Tells the watchdog the daemon is alive (`WATCHDOG=1`).
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, as `sd_watchdog_enabled(3)`
/// recommends; `None` when the service manager asked for no watchdog (or for another pid).
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// `STATUS=` text: services, ports, endpoints and the last reconcile, on one line.
pub fn status_line(status: &Status) -> String {
    let ports: usize = status.services.iter().map(|s| s.ports.len()).sum();
    let endpoints: usize = status
        .services
        .iter()
        .flat_map(|s| &s.ports)
        .map(|p| p.endpoints.len())
        .sum();
    let last = match &status.last_reconcile {
        None => "no reconcile yet".to_string(),
        Some(r) if r.ok => format!(
            "last reconcile ok ({}): {} added, {} changed, {} removed",
            r.trigger, r.summary.add, r.summary.change, r.summary.remove
        ),
        Some(r) => format!("last reconcile FAILED ({})", r.trigger),
    };
    let problems = status.diagnostics.iter().filter(|d| d.is_error()).count();
    format!(
        "{} services, {ports} ports, {endpoints} endpoints; {last}; {problems} error(s) in the files",
        status.services.len()
    )
}

fn send(states: &[NotifyState]) {
    // Best effort: a service manager that went away must not stop the data plane.
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_line_counts_and_names_the_last_reconcile() {
        let mut status = Status::default();
        assert_eq!(
            status_line(&status),
            "0 services, 0 ports, 0 endpoints; no reconcile yet; 0 error(s) in the files"
        );
        status.last_reconcile = Some(super::super::control::ReconcileResult {
            ok: false,
            trigger: "files".into(),
            ..Default::default()
        });
        assert!(status_line(&status).contains("last reconcile FAILED (files)"));
    }
}
