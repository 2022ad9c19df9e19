//! `portald switch`: move the running daemon to another backend and/or mode without a
//! restart, so that traffic keeps flowing (in userspace mode the listeners live in the
//! daemon, and a restart would drop them).

use crate::args::{ModeArg, SwitchArgs};
use anyhow::{bail, Context, Result};
use engine::config::Mode;
use engine::daemon::control::{request, Request};
use std::time::Duration;

pub fn run(args: SwitchArgs) -> Result<u8> {
    if args.backend.is_none() && args.mode.is_none() {
        bail!("nothing to switch: give --backend and/or --mode");
    }
    let switch = Request::Switch {
        backend: args.backend.map(super::backend),
        mode: args.mode.map(|m| match m {
            ModeArg::Userspace => Mode::Userspace,
            ModeArg::Kernel => Mode::Kernel,
        }),
    };
    let response = request(
        &args.control.control_socket,
        &switch,
        Duration::from_secs(120),
    )
    .context("asking the daemon to switch")?;
    if let Some(text) = &response.plan_text {
        println!("{text}");
    }
    if !response.ok {
        bail!(
            "the switch failed and the daemon went back to its previous settings: {}",
            response.error.unwrap_or_default()
        );
    }
    Ok(0)
}
