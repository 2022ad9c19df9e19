//! `portald apply DIR | PLANFILE`: hand the work to the running daemon, which holds the
//! userspace listeners.

use crate::args::ApplyArgs;
use anyhow::{bail, Context, Result};
use engine::daemon::control::{request, Request};
use engine::plan::Plan;
use std::time::Duration;

/// Kernel mode without a daemon: load, plan, apply and verify here, once.
fn apply_once(args: &ApplyArgs, config: &engine::config::Config) -> Result<u8> {
    let lock_path = args.engine.lock_path(&args.target);
    let (plan, batch_sent) = engine::daemon::apply_once(
        &args.target,
        &lock_path,
        &args.engine.state_file,
        config,
        std::sync::Arc::new(engine::exec::SystemExec),
    )
    .map_err(anyhow::Error::msg)
    .with_context(|| format!("applying `{}`", args.target.display()))?;
    print!("{}", engine::plan::render::plan_text(&plan));
    if !batch_sent && plan.retire.is_none() && plan.companions.is_empty() {
        println!("No batch sent: the kernel already matched.");
    }
    Ok(0)
}

pub fn run(args: ApplyArgs) -> Result<u8> {
    let socket = &args.control.control_socket;
    let request_body = if args.target.is_dir() {
        let config = args.engine.config();
        if config.mode == engine::config::Mode::Kernel && super::daemon_status(socket)?.is_none() {
            return apply_once(&args, &config);
        }
        let status = super::daemon_status(socket)?.with_context(|| {
            format!(
                "no portald daemon answers on `{}`: in userspace mode the listeners live in the daemon; start it with `portald run {}`",
                socket.display(),
                args.target.display()
            )
        })?;
        let wanted = std::fs::canonicalize(&args.target)
            .with_context(|| format!("services directory `{}`", args.target.display()))?;
        // The daemon keeps its path unresolved (a symlink it follows anew on each pass).
        let serves =
            std::fs::canonicalize(&status.dir).unwrap_or_else(|_| status.dir.clone().into());
        if serves != wanted {
            bail!(
                "the running daemon serves `{}`, not `{}`; a daemon applies only its own directory",
                status.dir,
                wanted.display()
            );
        }
        Request::Reconcile
    } else {
        let text = std::fs::read_to_string(&args.target)
            .with_context(|| format!("reading plan `{}`", args.target.display()))?;
        let plan: Plan = serde_json::from_str(&text).with_context(|| {
            format!(
                "`{}` is not a plan written by `portald plan --out`",
                args.target.display()
            )
        })?;
        if plan.format_version != engine::plan::PLAN_FORMAT_VERSION {
            bail!(
                "plan `{}` has format_version {}, this portald reads {}",
                args.target.display(),
                plan.format_version,
                engine::plan::PLAN_FORMAT_VERSION
            );
        }
        Request::ApplyPlan {
            plan: Box::new(plan),
        }
    };
    let response = request(socket, &request_body, Duration::from_secs(120))
        .context("asking the daemon to apply")?;
    if let Some(text) = &response.plan_text {
        println!("{text}");
    }
    if !response.ok {
        bail!(
            "{}",
            response
                .error
                .unwrap_or_else(|| "the daemon could not apply".into())
        );
    }
    Ok(0)
}
