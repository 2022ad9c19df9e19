//! `portald check DIR`: validate only.

use crate::args::{CheckArgs, ReportFormat};
use anyhow::Result;
use engine::diagnostics::{render, ReportFormat as Format};

pub fn run(args: CheckArgs) -> Result<u8> {
    let files = super::load_files(&args.engine, &args.dir)?;
    let lock = super::load_lock(&args.engine, &args.dir)?;
    let diagnostics = engine::pipeline::check(&files, &lock, &args.engine.config());
    let format = match args.format {
        ReportFormat::Text => Format::Text,
        ReportFormat::Json => Format::Json,
        ReportFormat::Github => Format::Github,
    };
    print!("{}", render(&diagnostics, format));
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    if args.format == ReportFormat::Text {
        let services = files
            .iter()
            .filter(|f| !f.has_errors())
            .flat_map(|f| &f.objects)
            .filter(|o| matches!(o, engine::load::Object::Service(_)))
            .count();
        println!(
            "{} file(s), {services} service(s) valid, {errors} error(s), {} warning(s).",
            files.len(),
            diagnostics
                .iter()
                .filter(|d| d.severity == engine::diagnostics::Severity::Warning)
                .count()
        );
    }
    Ok(if errors > 0 { 1 } else { 0 })
}
