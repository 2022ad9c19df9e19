//! `portald status`: the running daemon's view.

use crate::args::StatusArgs;
use anyhow::{Context, Result};
use engine::daemon::control::{request, Request};
use engine::plan::render::services_table;
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
            serde_json::to_string_pretty(&status).expect("status serializes")
        );
        return Ok(0);
    }
    println!(
        "portald daemon pid {}, {} (backend {}, mode {}), {} reconciles",
        status.pid, status.dir, status.backend, status.mode, status.reconciles
    );
    if let Some(last) = &status.last_reconcile {
        println!(
            "last reconcile ({}): {}; {} added, {} changed, {} removed{}",
            last.trigger,
            if last.ok { "ok" } else { "FAILED" },
            last.summary.add,
            last.summary.change,
            last.summary.remove,
            last.error
                .as_ref()
                .map(|e| format!("\n  error: {e}"))
                .unwrap_or_default()
        );
    }
    println!();
    print!("{}", services_table(&status.services));
    println!("\nLISTENERS");
    for l in &status.listeners {
        let spread: Vec<String> = l
            .per_endpoint
            .iter()
            .map(|(e, n)| format!("{e}={n}"))
            .collect();
        println!(
            "  {}/{} {}: {} active, {} accepted, {} failed dials, {} rejected; spread {}",
            l.protocol,
            l.port,
            l.name,
            l.active,
            l.accepted,
            l.failures,
            l.rejected,
            if spread.is_empty() {
                "-".into()
            } else {
                spread.join(" ")
            }
        );
    }
    if !status.held.is_empty() {
        println!(
            "\nHELD (no lock entry, --require-lock): {}",
            status.held.join(", ")
        );
    }
    if !status.diagnostics.is_empty() {
        println!("\nPROBLEMS");
        for d in &status.diagnostics {
            println!("  {d}");
        }
    }
    Ok(0)
}
