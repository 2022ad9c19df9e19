//! `portald cleanup`: remove everything portald owns in the kernel, nothing else.

use crate::args::CleanupArgs;
use anyhow::{bail, Result};
use engine::config::Mode;
use engine::exec::SystemExec;
use engine::plan::render::plan_text;

pub fn run(args: CleanupArgs) -> Result<u8> {
    if super::daemon_status(&args.control.control_socket)?.is_some() {
        bail!(
            "a portald daemon is running (`{}`): stop it first (or run it with --cleanup-on-exit), or it will put the rules back",
            args.control.control_socket.display()
        );
    }
    let plan = engine::daemon::reconciler::cleanup(
        super::backend(args.backend),
        Mode::Userspace,
        &SystemExec,
    )
    .map_err(anyhow::Error::msg)?;
    print!("{}", plan_text(&plan));
    Ok(0)
}
