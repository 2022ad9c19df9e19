//! `portald completions SHELL` and `portald man`: generated from the command-line definition
//! itself, so they never drift from the flags.

use crate::args::{Cli, CompletionsArgs};
use anyhow::{Context, Result};
use clap::CommandFactory;
use std::io::Write;

pub fn completions(args: CompletionsArgs) -> Result<u8> {
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, "portald", &mut out);
    out.flush().context("writing the completion script")?;
    Ok(0)
}

pub fn man() -> Result<u8> {
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(Cli::command())
        .render(&mut out)
        .context("writing the manual page")?;
    out.flush().context("writing the manual page")?;
    Ok(0)
}
