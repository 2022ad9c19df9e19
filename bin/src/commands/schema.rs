//! `portald schema NAME`: the JSON Schema of a versioned output, generated from the types
//! that write it (so it cannot drift); the copies in `docs/schema/` are checked against it.

use crate::args::{SchemaArgs, SchemaName};
use anyhow::{Context, Result};
use schemars::JsonSchema;
use std::io::Write;

pub fn run(args: SchemaArgs) -> Result<u8> {
    let mut out = std::io::stdout().lock();
    out.write_all(schema(args.name).as_bytes())
        .and_then(|()| out.flush())
        .context("writing the schema")?;
    Ok(0)
}

/// The schema of `name`, pretty-printed JSON ending in a newline.
pub fn schema(name: SchemaName) -> String {
    let schema = match name {
        SchemaName::Plan => generate::<super::plan::PlanDocument>(),
        SchemaName::Check => generate::<engine::diagnostics::CheckReport>(),
        SchemaName::Status => generate::<engine::daemon::control::StatusReport>(),
        SchemaName::Snapshot => generate::<engine::observe::Snapshot>(),
        SchemaName::Lock => generate::<engine::allocate::Lock>(),
    };
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema serializes");
    text.push('\n');
    text
}

/// Draft 2020-12, the generator's default. Serialized forms only: what the outputs hold
/// (a `serialize_with` or `into` type is described as it is written).
fn generate<T: JsonSchema>() -> schemars::Schema {
    schemars::generate::SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<T>()
}
