//! Executes a plan: listeners open first, one atomic kernel batch, listeners close last; then
//! re-observes and verifies that live equals intent.

use crate::diff::diff_nat;
use crate::exec::{Exec, ExecError};
use crate::listeners::{Listener, ListenerKey};
use crate::observe::dialect;
use crate::plan::{Plan, Step};
use planners::{Action, Change, Invocation, NatState, PortalRule, Protocol, StrayRule};
use std::collections::BTreeSet;

/// The only way the reconciler opens or closes listeners.
pub trait ListenerControl {
    fn open(&self, key: ListenerKey, listener: &Listener) -> Result<(), String>;
    fn update(&self, key: ListenerKey, listener: &Listener) -> Result<(), String>;
    fn close(&self, key: ListenerKey) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot open listener `{key}` for `{name}`: {message}")]
    Open {
        key: ListenerKey,
        name: String,
        message: String,
    },
    #[error("cannot update listener `{key}` for `{name}`: {message}")]
    Update {
        key: ListenerKey,
        name: String,
        message: String,
    },
    #[error("cannot close listener `{key}`: {message}")]
    Close { key: ListenerKey, message: String },
    #[error("the kernel refused the batch; nothing in it was applied")]
    Batch(#[source] ExecError),
    #[error("the kernel refused the batch that removes the other backend's rules")]
    Retire(#[source] ExecError),
    #[error("the kernel refused the {flavour} batch of portald's companion forward chain")]
    Companion {
        flavour: &'static str,
        #[source]
        source: ExecError,
    },
    #[error("after apply, the live state differs from the intent:\n{diff}")]
    Verify { diff: String },
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub listeners_opened: usize,
    pub listeners_updated: usize,
    pub listeners_closed: usize,
    /// Whether a kernel batch was sent (a no-op plan sends none).
    pub batch_sent: bool,
    /// Stale UDP conntrack flows asked to be flushed (one `conntrack -D` each).
    pub flows_flushed: usize,
}

/// `conntrack -D` calls for UDP flows the batch left pointing at a target that is gone: a
/// UDP "connection" never ends by itself, so without this a client that keeps sending
/// (DNS, say) would keep reaching a removed endpoint or a closed proxy port until it paused
/// longer than conntrack's timeout, the long-standing kube-proxy black hole. Each call names
/// the portal (original destination) and the old target (reply source).
pub fn stale_udp_flows(changes: &[Change]) -> Vec<Invocation> {
    let mut flows: BTreeSet<(std::net::Ipv4Addr, u16, Option<std::net::Ipv4Addr>, u16)> =
        BTreeSet::new();
    let mut note = |old: &PortalRule, new: Option<&Action>| {
        if old.key.protocol != Protocol::Udp {
            return;
        }
        let kept = new.map(Action::targets).unwrap_or_default();
        for target in old.action.targets() {
            if !kept.contains(&target) {
                flows.insert((old.key.vip, old.key.port, target.0, target.1));
            }
        }
    };
    for change in changes {
        match change {
            Change::RemoveRule { rule } => note(rule, None),
            Change::ReplaceRule { old, new } => note(old, Some(&new.action)),
            _ => {}
        }
    }
    flows
        .into_iter()
        .map(|(vip, port, addr, target_port)| {
            let (vip, port, target_port) =
                (vip.to_string(), port.to_string(), target_port.to_string());
            let mut args = vec![
                "-D",
                "-p",
                "udp",
                "--orig-dst",
                vip.as_str(),
                "--orig-port-dst",
                port.as_str(),
            ];
            let addr = addr.map(|a| a.to_string());
            if let Some(addr) = &addr {
                args.extend(["--reply-src", addr.as_str()]);
            }
            args.extend(["--reply-port-src", target_port.as_str()]);
            Invocation::new("conntrack", &args)
        })
        .collect()
}

/// Flushes stale flows; `conntrack` exits 1 when nothing matched, which is not a failure.
/// A flush that cannot run is logged, never fatal: the rules are already right.
fn flush_flows(exec: &dyn Exec, changes: &[Change]) -> usize {
    let calls = stale_udp_flows(changes);
    for call in &calls {
        match exec.run(call, None) {
            Ok(_) => {}
            Err(ExecError::Failed { stderr, .. }) if stderr.contains(" 0 flow entries") => {}
            Err(e) => tracing::warn!("cannot flush stale UDP flows (`{call}`): {e}"),
        }
    }
    calls.len()
}

/// What a long kernel batch is doing, for whoever watches the log: the plan's summary and
/// the batch's size before it is sent, a line every [`PROGRESS_EVERY`] while the kernel
/// tool works (10,000 iptables portals take minutes), and the outcome with its duration.
struct Progress {
    started: std::time::Instant,
    lines: usize,
    done: std::sync::mpsc::Sender<()>,
    ticker: Option<std::thread::JoinHandle<()>>,
}

/// Batches of at least this many lines announce themselves and their result at info (about
/// a second of `iptables-restore` work); smaller ones only at debug.
const LONG_BATCH_LINES: usize = 1_000;

/// How often a running batch says it is still running.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl Progress {
    fn start(plan: &Plan, tool: &str) -> Progress {
        let lines = plan.batch.lines().count();
        let s = &plan.summary;
        // A small batch takes milliseconds: the pass's own log line says enough.
        if lines >= LONG_BATCH_LINES {
            tracing::info!(
                add = s.add,
                change = s.change,
                remove = s.remove,
                lines,
                "applying: {} to add, {} to change, {} to remove; {lines} batch lines to `{tool}`",
                s.add,
                s.change,
                s.remove
            );
        }
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let started = std::time::Instant::now();
        let ticker = std::thread::Builder::new()
            .name("batch-progress".into())
            .spawn(move || {
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    wait.recv_timeout(PROGRESS_EVERY)
                {
                    let elapsed_s = started.elapsed().as_secs();
                    tracing::info!(elapsed_s, lines, "still applying the batch ({elapsed_s} s)");
                }
            })
            .ok();
        Progress {
            started,
            lines,
            done,
            ticker,
        }
    }

    fn finish(mut self, ok: bool) {
        let _ = self.done.send(());
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
        let elapsed_ms = self.started.elapsed().as_millis() as u64;
        let lines = self.lines;
        if ok && lines >= LONG_BATCH_LINES {
            tracing::info!(elapsed_ms, lines, "batch applied in {elapsed_ms} ms");
        } else if ok {
            tracing::debug!(elapsed_ms, lines, "batch applied in {elapsed_ms} ms");
        } else {
            tracing::warn!(elapsed_ms, lines, "batch refused after {elapsed_ms} ms");
        }
    }
}

/// Runs the plan's steps in order. On a failure, what was done stays done (every step is
/// safe on its own: make before break), and the error says which step failed.
pub fn apply(
    plan: &Plan,
    exec: &dyn Exec,
    listeners: &dyn ListenerControl,
) -> Result<ApplyReport, ApplyError> {
    let mut report = ApplyReport::default();
    let mut batch_done = false;
    let mut retired = plan.retire.is_none() && plan.companions.is_empty();
    for step in &plan.steps {
        if step.phase() == 2 && !retired {
            retire(plan, exec)?;
            retired = true;
        }
        match step {
            Step::OpenListener { key, listener } => {
                listeners
                    .open(*key, listener)
                    .map_err(|message| ApplyError::Open {
                        key: *key,
                        name: listener.name.clone(),
                        message,
                    })?;
                report.listeners_opened += 1;
            }
            Step::UpdateListener { key, new, .. } => {
                listeners
                    .update(*key, new)
                    .map_err(|message| ApplyError::Update {
                        key: *key,
                        name: new.name.clone(),
                        message,
                    })?;
                report.listeners_updated += 1;
            }
            Step::Kernel(_) => {
                // All kernel steps go in the one atomic batch, at the first kernel step.
                if !batch_done && !plan.batch.is_empty() {
                    let command = plan.apply_command();
                    let progress = Progress::start(plan, &command.to_string());
                    let sent = exec.run(&command, Some(&plan.batch));
                    progress.finish(sent.is_ok());
                    sent.map_err(ApplyError::Batch)?;
                    report.batch_sent = true;
                    report.flows_flushed = flush_flows(exec, &plan.kernel_changes());
                }
                batch_done = true;
            }
            Step::CloseListener { key, .. } => {
                listeners
                    .close(*key)
                    .map_err(|message| ApplyError::Close { key: *key, message })?;
                report.listeners_closed += 1;
            }
        }
    }
    if !retired {
        retire(plan, exec)?;
    }
    Ok(report)
}

/// After the new state is in place: brings the iptables flavours beside the backend to
/// what is wanted there (the companion forward chain, see
/// [`crate::observe::companion`]), then removes what portald owns through the other backend.
fn retire(plan: &Plan, exec: &dyn Exec) -> Result<(), ApplyError> {
    for companion in &plan.companions {
        if companion.batch.is_empty() {
            continue;
        }
        exec.run(&companion.apply_command(), Some(&companion.batch))
            .map_err(|source| ApplyError::Companion {
                flavour: companion.flavour.map(|f| f.name()).unwrap_or("iptables"),
                source,
            })?;
        flush_flows(exec, &companion.kernel_changes());
    }
    let Some(old) = &plan.retire else {
        return Ok(());
    };
    if !old.batch.is_empty() {
        exec.run(&dialect(old.backend).apply_command(), Some(&old.batch))
            .map_err(ApplyError::Retire)?;
        flush_flows(exec, &old.kernel_changes());
    }
    Ok(())
}

/// Compares the intended NAT state with what the kernel shows after apply.
pub fn verify(intent: &NatState, live: &NatState, strays: &[StrayRule]) -> Result<(), ApplyError> {
    let changes = diff_nat(intent, live);
    if changes.is_empty() && strays.is_empty() {
        return Ok(());
    }
    let render = |state: &NatState| serde_json::to_string_pretty(state).expect("state serializes");
    let mut diff = similar::TextDiff::from_lines(&render(live), &render(intent))
        .unified_diff()
        .header("live", "intent")
        .to_string();
    for stray in strays {
        diff.push_str(&format!("stray rule in {}: {}\n", stray.chain, stray.text));
    }
    Err(ApplyError::Verify { diff })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocate::Lock;
    use crate::config::Config;
    use crate::exec::FakeExec;
    use crate::load::{parse_file, SourceFile};
    use crate::observe::Observed;
    use std::sync::Mutex;

    /// Records listener calls and the order they came in, shared with the fake kernel.
    #[derive(Default)]
    struct Recorder {
        log: Mutex<Vec<String>>,
    }

    impl ListenerControl for Recorder {
        fn open(&self, key: ListenerKey, _: &Listener) -> Result<(), String> {
            self.log.lock().unwrap().push(format!("open {key}"));
            Ok(())
        }
        fn update(&self, key: ListenerKey, _: &Listener) -> Result<(), String> {
            self.log.lock().unwrap().push(format!("update {key}"));
            Ok(())
        }
        fn close(&self, key: ListenerKey) -> Result<(), String> {
            self.log.lock().unwrap().push(format!("close {key}"));
            Ok(())
        }
    }

    /// A service with one endpoint: without one it is refused in the kernel, no listener.
    fn files(port: u16) -> Vec<crate::load::ParsedFile> {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: {port}}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-1, labels: {{app: web}}}}\nstatus: {{podIP: 10.244.1.2}}\n"
        );
        vec![parse_file(&SourceFile {
            path: "web.yaml".into(),
            text,
        })]
    }

    fn plan_for(port: u16, observed: &Observed, lock: &Lock) -> (Plan, crate::pipeline::Outcome) {
        let outcome = crate::pipeline::run(&files(port), lock, observed, &Config::default(), true);
        (outcome.plan.clone(), outcome)
    }

    #[test]
    fn listener_opens_before_the_batch_and_a_second_apply_sends_nothing() {
        let (plan, outcome) = plan_for(80, &Observed::default(), &Lock::default());
        let exec = FakeExec::new().expect("iptables-restore -w 5 --noflush", Ok(""));
        let recorder = Recorder::default();
        let report = apply(&plan, &exec, &recorder).unwrap();
        assert!(report.batch_sent);
        assert_eq!(recorder.log.lock().unwrap().as_slice(), ["open tcp/20000"]);
        assert_eq!(exec.calls()[0].1.as_deref(), Some(plan.batch.as_str()));

        // The kernel now holds the intent and the listener is open: nothing left to do.
        let live = Observed {
            live: planners::Live {
                owned: outcome.intent.nat.clone(),
                ..Default::default()
            },
            listeners: outcome.intent.listeners.clone(),
            ..Default::default()
        };
        let (again, _) = plan_for(80, &live, &outcome.allocation.lock);
        assert!(again.is_empty(), "second plan: {again:?}");
        let exec = FakeExec::new();
        let report = apply(&again, &exec, &Recorder::default()).unwrap();
        assert!(!report.batch_sent);
        assert!(exec.calls().is_empty());
    }

    #[test]
    fn a_proxy_port_held_by_a_foreign_process_moves_the_rule_to_a_new_listener() {
        let (_, outcome) = plan_for(80, &Observed::default(), &Lock::default());
        let mut live = Observed {
            live: planners::Live {
                owned: outcome.intent.nat.clone(),
                ..Default::default()
            },
            listeners: outcome.intent.listeners.clone(),
            ..Default::default()
        };
        // A foreign process now squats on the proxy port the lock names.
        live.listeners.clear();
        live.sockets.push(crate::observe::sockets::HeldSocket {
            protocol: planners::Protocol::Tcp,
            port: 20000,
            pid: Some(1),
            command: Some("squatter".into()),
        });
        let (plan, _) = plan_for(80, &live, &outcome.allocation.lock);
        let exec = FakeExec::new().expect("iptables-restore -w 5 --noflush", Ok(""));
        let recorder = Recorder::default();
        apply(&plan, &exec, &recorder).unwrap();
        assert_eq!(recorder.log.lock().unwrap().as_slice(), ["open tcp/20001"]);
        assert!(plan.batch.contains("--to-ports 20001"), "{}", plan.batch);
        assert!(plan.batch.contains("-D PORTAL-CONTAINER"), "{}", plan.batch);
    }

    #[test]
    fn a_refused_batch_is_an_error_naming_the_kernel() {
        let (plan, _) = plan_for(80, &Observed::default(), &Lock::default());
        let exec =
            FakeExec::new().expect("iptables-restore -w 5 --noflush", Err("line 3: bad rule"));
        let err = apply(&plan, &exec, &Recorder::default()).unwrap_err();
        assert!(matches!(err, ApplyError::Batch(_)));
    }

    #[test]
    fn verify_shows_the_difference_as_a_diff() {
        let (_, outcome) = plan_for(80, &Observed::default(), &Lock::default());
        let err = verify(&outcome.intent.nat, &planners::NatState::default(), &[]).unwrap_err();
        let ApplyError::Verify { diff } = err else {
            panic!("not a verify error")
        };
        assert!(diff.contains("+++ intent"), "{diff}");
        assert!(diff.contains("default/web:80"), "{diff}");
    }
}
