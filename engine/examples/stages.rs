//! Per-stage timings of `portald plan DIR [--live FILE]`, for the scale benchmark.
//!
//!   cargo run --release -p engine --example stages -- DIR [LIVE] [--nftables] [--ports LOW-HIGH]
//!       [--empty-lock] [--positions]
//!
//! `--positions` also times the full line index of every file (which the pipeline builds only
//! for files with something to report).
//! `--empty-lock` ignores DIR's `portald.lock`: allocation starts from nothing, as in the first
//! `portald lock DIR`.
//! Mirrors `engine::pipeline::run` stage by stage (read, YAML parse, convert, lock, observe
//! parse, assemble, allocate, compile, diff, order, JSON) and prints the wall time of each.
//! Measures only: no engine code is changed by it.

use engine::allocate::{allocate, LiveHints, Lock};
use engine::catalog::assemble;
use engine::compile::compile;
use engine::config::{Backend, Config, PortRange};
use engine::diff::{diff, DiffOptions};
use engine::load::{parse_all, parse_file, read_dir, yaml::parse_documents};
use engine::observe::{from_file_text, Observed};
use engine::plan::graph;
use engine::plan::make_plan;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut live: Option<PathBuf> = None;
    let mut config = Config::default();
    let mut empty_lock = false;
    let mut positions = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--nftables" => config.backend = Backend::Nftables,
            "--empty-lock" => empty_lock = true,
            "--positions" => positions = true,
            "--ports" => {
                let v = args.next().expect("--ports LOW-HIGH");
                let (lo, hi) = v.split_once('-').expect("LOW-HIGH");
                config.proxy_ports = PortRange {
                    low: lo.parse().unwrap(),
                    high: hi.parse().unwrap(),
                };
            }
            _ if dir.is_none() => dir = Some(a.into()),
            _ => live = Some(a.into()),
        }
    }
    let dir = dir.expect("usage: stages DIR [LIVE] [--nftables] [--ports LOW-HIGH]");
    let mut rows: Vec<(&str, Duration, String)> = Vec::new();
    let total = Instant::now();

    let t = Instant::now();
    let (sources, _) = read_dir(&dir).expect("read dir");
    let bytes: usize = sources.iter().map(|s| s.text.len()).sum();
    rows.push((
        "read files",
        t.elapsed(),
        format!("{} files, {} bytes", sources.len(), bytes),
    ));

    // YAML/JSON syntax alone (parse_file below does it again, then converts).
    let t = Instant::now();
    let docs: usize = sources
        .iter()
        .map(|s| {
            parse_documents(&s.text, s.path.ends_with(".json"))
                .map(|d| d.len())
                .unwrap_or(0)
        })
        .sum();
    let yaml = t.elapsed();
    rows.push(("  yaml->value only", yaml, format!("{docs} documents")));

    let t = Instant::now();
    let files: Vec<_> = sources.iter().map(parse_file).collect();
    let parse = t.elapsed();
    let objects: usize = files.iter().map(|f| f.objects.len()).sum();
    let diags: usize = files.iter().map(|f| f.diagnostics.len()).sum();
    rows.push((
        "parse_file (yaml+convert)",
        parse,
        format!("{objects} objects, {diags} diagnostics"),
    ));
    rows.push((
        "  convert (difference)",
        parse.saturating_sub(yaml),
        String::new(),
    ));

    // What the pipeline runs: the same, on every core.
    let t = Instant::now();
    let all = parse_all(&sources);
    rows.push((
        "  parse_all (every core)",
        t.elapsed(),
        format!("{} files", all.len()),
    ));

    // The daemon's pass over an unchanged directory: read and hash every file, parse none.
    let mut cache = engine::load::cache::ParseCache::new();
    let limits = engine::config::InputLimits::default();
    let t = Instant::now();
    cache.load_dir(&dir, &limits).expect("read dir");
    rows.push((
        "  daemon load, first pass",
        t.elapsed(),
        format!("{} files parsed", cache.parses()),
    ));
    let t = Instant::now();
    cache.load_dir(&dir, &limits).expect("read dir");
    rows.push((
        "  daemon load, unchanged",
        t.elapsed(),
        format!("{} files parsed in all", cache.parses()),
    ));

    // The full line index (a scan of the text): off the happy path since object lines come
    // from a line scan; built for a file only when a diagnostic, an explicit VIP or a `List`
    // needs a field's line, or the line scan cannot be sure.
    if positions {
        let t = Instant::now();
        for s in &sources {
            std::hint::black_box(engine::load::positions::Positions::index(&s.text));
        }
        rows.push((
            "  positions index (extra)",
            t.elapsed(),
            "Positions::index of every file".into(),
        ));
    }

    let t = Instant::now();
    let lock = if empty_lock {
        Lock::default()
    } else {
        Lock::read(&dir.join(engine::allocate::LOCK_FILE_NAME)).expect("lock")
    };
    rows.push((
        "lock read",
        t.elapsed(),
        format!("{} vips", lock.vips.len()),
    ));

    let t = Instant::now();
    let observed = match &live {
        Some(path) => {
            let text = std::fs::read_to_string(path).expect("live file");
            from_file_text(config.backend, &text, &path.display().to_string()).expect("parse live")
        }
        None => Observed::default(),
    };
    rows.push((
        "observe (parse live)",
        t.elapsed(),
        format!("{} bytes", observed.dump.len()),
    ));

    let t = Instant::now();
    let assembled = assemble(&files);
    rows.push((
        "assemble (catalog)",
        t.elapsed(),
        format!("{} services", assembled.catalog.services.len()),
    ));

    let t = Instant::now();
    let hints = LiveHints {
        nat: observed.live.owned.clone(),
        foreign_ports: observed.foreign_ports(),
        ..Default::default()
    };
    let allocation = allocate(
        &assembled.catalog.services,
        &lock,
        &hints,
        &config,
        !assembled.broken_files.is_empty(),
    );
    rows.push((
        "allocate",
        t.elapsed(),
        format!("{} diagnostics", allocation.diagnostics.len()),
    ));

    let t = Instant::now();
    let (intent, _) = compile(&assembled.catalog, &allocation, &config);
    rows.push((
        "compile",
        t.elapsed(),
        format!("{} listeners", intent.listeners.len()),
    ));

    let t = Instant::now();
    let changes = diff(
        &intent,
        &observed,
        DiffOptions {
            hold_removals: false,
            listeners_known: live.is_some(),
        },
    );
    rows.push(("diff", t.elapsed(), String::new()));

    let t = Instant::now();
    let plan = make_plan(&changes, &observed.live.owned, config.backend, config.mode);
    rows.push((
        "make_plan (graph+order+batch)",
        t.elapsed(),
        format!(
            "{} steps, batch {} bytes",
            plan.steps.len(),
            plan.batch.len()
        ),
    ));

    // The graph part of make_plan alone, on the plan's own steps.
    let t = Instant::now();
    let g = graph::build(&plan.steps);
    rows.push((
        "  graph::build",
        t.elapsed(),
        format!("{} edges", g.edge_count()),
    ));
    let t = Instant::now();
    let order = graph::linearize(&plan.steps, &g);
    rows.push((
        "  graph::linearize",
        t.elapsed(),
        format!("{} nodes", order.len()),
    ));

    let t = Instant::now();
    let value = serde_json::json!({
        "format_version": plan.format_version,
        "backend": plan.backend,
        "mode": plan.mode,
        "summary": plan.summary,
        "services": intent.services,
        "steps": plan.steps,
        "batch": plan.batch,
        "held_back": plan.held_back,
        "observed": plan.observed,
    });
    let text = serde_json::to_string_pretty(&value).expect("json");
    rows.push(("plan JSON", t.elapsed(), format!("{} bytes", text.len())));

    let all = total.elapsed();
    for (name, d, note) in &rows {
        println!("{:<32} {:>9.1} ms  {}", name, d.as_secs_f64() * 1e3, note);
    }
    println!(
        "{:<32} {:>9.1} ms  (graph rows re-run outside make_plan)",
        "total",
        all.as_secs_f64() * 1e3
    );
}
