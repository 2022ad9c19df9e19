//! `portald snapshot`: capture the live state for `plan --live FILE`.

use crate::args::SnapshotArgs;
use anyhow::{Context, Result};
use engine::daemon::control::{request, ControlError, Request};
use engine::exec::SystemExec;
use engine::listeners::{Listener, ListenerKey};
use engine::observe::{observe, Snapshot};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub fn run(args: SnapshotArgs) -> Result<u8> {
    let backend = super::backend(args.backend);
    let listeners = daemon_listeners(&args.control.control_socket)?;
    let observed = observe(backend, &SystemExec, listeners).context("observing the kernel")?;
    let text = Snapshot::from_observed(backend, &observed).render();
    match &args.out {
        Some(path) => engine::safe_write::write(path, text.as_bytes())
            .with_context(|| format!("writing snapshot `{}`", path.display()))?,
        None => print!("{text}"),
    }
    Ok(0)
}

/// The listeners the daemon answering on `socket` has open (userspace mode), as `plan`
/// diffs against them: without them a snapshot of a userspace host would plan every
/// listener anew. No daemon there: none (a kernel-mode host, or one being set up). A daemon
/// that cannot be asked (permission, a broken answer) is an error, not an empty record.
fn daemon_listeners(socket: &Path) -> Result<BTreeMap<ListenerKey, Listener>> {
    match request(socket, &Request::Status, Duration::from_secs(10)) {
        Ok(response) => {
            let status = response.status.with_context(|| {
                format!(
                    "the daemon on `{}` sent no status{}",
                    socket.display(),
                    response.error.map(|e| format!(": {e}")).unwrap_or_default()
                )
            })?;
            Ok(status
                .open
                .into_iter()
                .map(|e| (e.key, e.listener))
                .collect())
        }
        Err(ControlError::NotRunning { .. }) => {
            tracing::info!(
                "no daemon answers on `{}`: the snapshot records no listeners",
                socket.display()
            );
            Ok(BTreeMap::new())
        }
        Err(e) => Err(e).context("asking the daemon for its listeners"),
    }
}
