//! `portald plan DIR`: the dry run.

use crate::args::PlanArgs;
use anyhow::{Context, Result};
use engine::diagnostics::{render, ReportFormat};
use engine::plan::render::{plan_text, services_table};

/// The plan as `--json` and `--out` write it: everything `apply PLANFILE` reads back as a
/// [`engine::plan::Plan`], plus the services and diagnostics for people and pipelines.
/// Serialized straight from the outcome (keys in alphabetical order), never as a whole
/// `Value` tree or string: at 10,000 services that doubled the peak memory.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub(super) struct PlanDocument<'a> {
    backend: engine::config::Backend,
    batch: &'a str,
    diagnostics: &'a [engine::diagnostics::Diagnostic],
    format_version: u32,
    held_back: usize,
    inputs: &'a engine::plan::saved::Inputs,
    mode: engine::config::Mode,
    observed: &'a planners::NatState,
    #[serde(skip_serializing_if = "Option::is_none")]
    retire: Option<&'a engine::plan::Plan>,
    services: &'a [engine::compile::ServiceView],
    steps: &'a [engine::plan::Step],
    summary: engine::plan::Summary,
}

fn write_json(mut out: impl std::io::Write, document: &PlanDocument) -> Result<()> {
    serde_json::to_writer_pretty(&mut out, document)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

pub fn run(args: PlanArgs) -> Result<u8> {
    let config = args.engine.config();
    let (files, services_digest) =
        engine::load::load_dir_digest(&args.dir, &args.engine.input_limits())
            .with_context(|| format!("loading services from `{}`", args.dir.display()))?;
    let lock_path = args.engine.lock_path(&args.dir);
    // Digested before it is parsed: a lock changed in between makes the plan refused, not wrong.
    let inputs = engine::plan::saved::Inputs {
        services: services_digest,
        lock: engine::plan::saved::lock_digest(&lock_path)
            .with_context(|| format!("reading the allocation record `{}`", lock_path.display()))?,
    };
    let lock = super::load_lock(&args.engine, &args.dir)?;
    let mut observed = super::observe(&args.live, config.backend)?;
    // Against this host's kernel, this host's own record counts too, as in the daemon;
    // a captured or empty live state is not this host's.
    if args.live.live.is_none() && !args.live.no_live {
        observed.node_state = super::load_state(&args.engine)?;
    }
    // Against the kernel, the running daemon tells which listeners are open.
    // Its probes' and health checks' verdicts too: they are the daemon's judgement of the
    // endpoints, not a change to plan (without a daemon the files' conditions hold).
    let mut listeners_known = args.live.live.is_some();
    let mut health = engine::health::Health::default();
    if args.live.live.is_none() && !args.live.no_live {
        if let Some(status) = super::daemon_status(&args.control.control_socket)? {
            observed.listeners = super::listeners_of(&status);
            listeners_known = true;
            health = engine::health::Health::from_views(&status.endpoint_health);
        }
    }
    let outcome = engine::pipeline::run_with_health(
        &files,
        &lock,
        &observed,
        &config,
        listeners_known,
        &health,
    );
    let document = PlanDocument {
        backend: outcome.plan.backend,
        batch: &outcome.plan.batch,
        diagnostics: &outcome.diagnostics,
        format_version: outcome.plan.format_version,
        held_back: outcome.plan.held_back,
        inputs: &inputs,
        mode: outcome.plan.mode,
        observed: &outcome.plan.observed,
        retire: outcome.plan.retire.as_deref(),
        services: &outcome.intent.services,
        steps: &outcome.plan.steps,
        summary: outcome.plan.summary,
    };
    if let Some(out) = &args.out {
        let mut bytes = Vec::new();
        write_json(&mut bytes, &document).context("rendering the plan")?;
        engine::safe_write::write(out, &bytes)
            .with_context(|| format!("writing plan `{}`", out.display()))?;
    }
    if args.json {
        write_json(std::io::BufWriter::new(std::io::stdout().lock()), &document)
            .context("writing the plan")?;
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
