//! `portald plan DIR`: the dry run.

use crate::args::PlanArgs;
use anyhow::{Context, Result};
use engine::diagnostics::{render, ReportFormat};
use engine::plan::render::{plan_text, services_table};

pub fn run(args: PlanArgs) -> Result<u8> {
    let config = args.engine.config();
    let files = super::load_files(&args.dir)?;
    let lock = super::load_lock(&args.engine, &args.dir)?;
    let mut observed = super::observe(&args.live, config.backend)?;
    // Against the kernel, the running daemon tells which listeners are open.
    let mut listeners_known = args.live.live.is_some();
    if args.live.live.is_none() && !args.live.no_live {
        if let Some(status) = super::daemon_status(&args.control.control_socket) {
            observed.listeners = super::listeners_of(&status);
            listeners_known = true;
        }
    }
    let outcome = engine::pipeline::run(&files, &lock, &observed, &config, listeners_known);
    let plan_json = || -> String {
        let value = serde_json::json!({
            "format_version": outcome.plan.format_version,
            "backend": outcome.plan.backend,
            "mode": outcome.plan.mode,
            "summary": outcome.plan.summary,
            "services": outcome.intent.services,
            "diagnostics": outcome.diagnostics,
            "steps": outcome.plan.steps,
            "batch": outcome.plan.batch,
            "held_back": outcome.plan.held_back,
            "observed": outcome.plan.observed,
        });
        let mut text = serde_json::to_string_pretty(&value).expect("plan serializes");
        text.push('\n');
        text
    };
    if let Some(out) = &args.out {
        std::fs::write(out, plan_json())
            .with_context(|| format!("writing plan `{}`", out.display()))?;
    }
    if args.json {
        print!("{}", plan_json());
    } else {
        eprint!("{}", render(&outcome.diagnostics, ReportFormat::Text));
        println!(
            "portald plan: {} services, backend {}, mode {}\n",
            outcome.intent.services.len(),
            config.backend,
            config.mode
        );
        print!("{}", services_table(&outcome.intent.services));
        println!();
        print!("{}", plan_text(&outcome.plan));
        if args.show_batch && !outcome.plan.batch.is_empty() {
            println!(
                "\nBatch for `{}`:\n{}",
                engine::observe::dialect(config.backend).apply_command(),
                outcome.plan.batch
            );
        }
    }
    if outcome.has_errors() {
        return Ok(1);
    }
    Ok(if args.detailed_exitcode && !outcome.plan.is_empty() {
        2
    } else {
        0
    })
}
