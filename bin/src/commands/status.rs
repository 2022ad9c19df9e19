//! `portald status`: the running daemon's view.

use crate::args::StatusArgs;
use anyhow::{Context, Result};
use engine::daemon::control::{request, Request, Status, StatusReport};
use engine::escape;
use engine::plan::render::services_table;
use std::fmt::Write;
use std::time::Duration;

pub fn run(args: StatusArgs) -> Result<u8> {
    let response = request(
        &args.control.control_socket,
        &Request::Status,
        Duration::from_secs(10),
    )
    .context("asking the daemon for its status")?;
    let status = response.status.context("the daemon sent no status")?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&StatusReport::new(*status)).expect("status serializes")
        );
        return Ok(0);
    }
    print!("{}", render(&status));
    Ok(0)
}

/// Rows of the endpoint health section shown at most; the rest are counted (all are in
/// `status --json`).
const MAX_HEALTH_ROWS: usize = 20;

/// The endpoints portald checks: those out of rotation first (unhealthy, ejected), then
/// those without a judgement yet, then the healthy ones; at most [`MAX_HEALTH_ROWS`].
fn health_section(out: &mut String, status: &Status) {
    if status.endpoint_health.is_empty() {
        return;
    }
    let rank = |state: &str| match state {
        "unhealthy" | "ejected" => 0,
        "unknown" => 1,
        _ => 2,
    };
    let mut rows: Vec<_> = status.endpoint_health.iter().collect();
    rows.sort_by_key(|r| rank(&r.state));
    let out_of_rotation = rows.iter().filter(|r| rank(&r.state) == 0).count();
    let _ = writeln!(
        out,
        "\nENDPOINT HEALTH ({} checked, {out_of_rotation} out of rotation)",
        rows.len()
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    for r in rows.iter().take(MAX_HEALTH_ROWS) {
        let _ = writeln!(
            out,
            "  {} {} {} {}: {} for {}s{}; {}",
            escape::clipped(&r.service, escape::MAX_NAME),
            escape::clipped(&r.port, escape::MAX_NAME),
            escape::clipped(&r.endpoint, escape::MAX_NAME),
            escape::clipped(&r.check, escape::MAX_NAME),
            escape::clipped(&r.state, escape::MAX_NAME),
            now.saturating_sub(r.since),
            r.reason
                .as_ref()
                .map(|why| format!(" ({})", escape::clipped(why, escape::MAX_TEXT)))
                .unwrap_or_default(),
            escape::clipped(&r.detail, escape::MAX_TEXT),
        );
    }
    if rows.len() > MAX_HEALTH_ROWS {
        let _ = writeln!(
            out,
            "  ... and {} more (`portald status --json` lists them all)",
            rows.len() - MAX_HEALTH_ROWS
        );
    }
}

/// The status as text: one line per record, whatever the daemon reports. Paths, names and
/// errors are escaped and clipped by [`engine::escape`], lists shortened, so a line stays
/// under [`escape::MAX_LINE`] characters.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "portald daemon pid {}, {} (backend {}, mode {}), {} reconciles",
        status.pid,
        escape::clipped(&status.dir, escape::MAX_PATH),
        escape::clipped(&status.backend, escape::MAX_NAME),
        escape::clipped(&status.mode, escape::MAX_NAME),
        status.reconciles
    );
    if let Some(last) = &status.last_reconcile {
        let _ = writeln!(
            out,
            "last reconcile ({}): {}; {} added, {} changed, {} removed{}",
            escape::clipped(&last.trigger, escape::MAX_NAME),
            if last.ok { "ok" } else { "FAILED" },
            last.summary.add,
            last.summary.change,
            last.summary.remove,
            last.error
                .as_ref()
                .map(|e| format!("\n  error: {}", escape::clipped(e, escape::MAX_TEXT)))
                .unwrap_or_default()
        );
    }
    out.push('\n');
    out.push_str(&services_table(&status.services));
    out.push_str("\nLISTENERS\n");
    for l in &status.listeners {
        let spread = l.per_endpoint.iter().map(|(e, n)| format!("{e}={n}"));
        let _ = writeln!(
            out,
            "  {}/{} {}: {} active, {} accepted, {} failed dials, {} rejected; spread {}",
            l.protocol,
            l.port,
            escape::clipped(&l.name, escape::MAX_NAME),
            l.active,
            l.accepted,
            l.failures,
            l.rejected,
            if l.per_endpoint.is_empty() {
                "-".into()
            } else {
                escape::list_joined(spread, l.per_endpoint.len(), " ")
            }
        );
    }
    health_section(&mut out, status);
    if !status.held.is_empty() {
        let _ = writeln!(
            out,
            "\nHELD (no lock entry, --require-lock): {}",
            escape::list_joined(&status.held, status.held.len(), ", ")
        );
    }
    if !status.diagnostics.is_empty() {
        out.push_str("\nPROBLEMS\n");
        for d in &status.diagnostics {
            let _ = writeln!(out, "  {d}");
        }
    }
    out
}
