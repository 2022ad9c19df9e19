//! The one place portald spawns a process: every kernel tool call goes through [`Exec`].

use planners::Invocation;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot run `{command}` (is it installed?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {timeout:?}; it was killed")]
    TimedOut { command: String, timeout: Duration },
    #[error("`{command}` was stopped: the daemon is stopping")]
    Interrupted { command: String },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Runs a command with optional standard input; a non-zero exit is an error.
pub trait Exec: Send + Sync {
    fn run(&self, invocation: &Invocation, stdin: Option<&str>) -> Result<ExecOutput, ExecError>;
}

/// How long a kernel tool may run when nothing else was configured: a healthy `nft -f` or
/// `iptables-restore` of 10,000 services takes a few seconds; `iptables-restore -w 5`
/// already bounds its wait for the xtables lock.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The bound of every [`SystemExec`] call, in milliseconds. Process-wide rather than a
/// field of `SystemExec` so that every caller (daemon, one-shot commands) shares the one
/// value the command line set, and `SystemExec` stays a plain unit value.
static TIMEOUT_MS: AtomicU64 = AtomicU64::new(DEFAULT_TIMEOUT.as_millis() as u64);

/// Process groups of the tools running now, for [`interrupt`], each with whether it was
/// interrupted.
static RUNNING: Mutex<BTreeMap<i32, bool>> = Mutex::new(BTreeMap::new());

/// Sets the bound of every later [`SystemExec`] call (at least 1 ms).
pub fn set_timeout(timeout: Duration) {
    TIMEOUT_MS.store(
        u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1),
        Ordering::Relaxed,
    );
}

/// The bound of [`SystemExec`] calls.
pub fn timeout() -> Duration {
    Duration::from_millis(TIMEOUT_MS.load(Ordering::Relaxed))
}

/// Set by [`interrupt`], cleared by [`resume`]: new calls fail at once meanwhile.
static REFUSING: AtomicBool = AtomicBool::new(false);

/// Kills every tool running now and refuses new ones until [`resume`] (on SIGTERM: a hung
/// `nft` must not hold the daemon's exit for the whole timeout, nor the rest of the pass
/// start another). Their calls return [`ExecError::Interrupted`].
pub fn interrupt() {
    REFUSING.store(true, Ordering::SeqCst);
    for (group, interrupted) in RUNNING.lock().expect("running tools lock").iter_mut() {
        *interrupted = true;
        kill_group(*group);
    }
}

/// Lets tools run again after [`interrupt`] (the daemon's cleanup on exit needs them).
pub fn resume() {
    REFUSING.store(false, Ordering::SeqCst);
}

fn kill_group(group: i32) {
    // SAFETY: kill(2) on a process group whose leader we spawned and have not reaped (it is
    // reaped and leaves `RUNNING` under the same lock); no memory is involved.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
}

/// Runs real processes, each bounded by [`timeout`] (plus 1 ms per line of input): past it
/// the tool and everything it started (its process group) is killed and reaped, and the
/// call fails naming both.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemExec;

impl Exec for SystemExec {
    fn run(&self, invocation: &Invocation, stdin: Option<&str>) -> Result<ExecOutput, ExecError> {
        run_bounded(invocation, stdin, bound(timeout(), stdin))
    }
}

/// The bound of one call: `base`, plus 1 ms per line of input, since a big batch is
/// legitimately slow (`iptables-restore` of 10,000 kernel-mode portals, 240,000 lines,
/// takes 104 s on 2 cores: README, Performance) and a bound must not kill the work it
/// guards; a hung tool is still stopped.
fn bound(base: Duration, stdin: Option<&str>) -> Duration {
    let lines = stdin.map_or(0, |text| text.lines().count());
    base.saturating_add(Duration::from_millis(lines as u64))
}

/// [`SystemExec::run`] with an explicit bound.
fn run_bounded(
    invocation: &Invocation,
    stdin: Option<&str>,
    limit: Duration,
) -> Result<ExecOutput, ExecError> {
    let command = invocation.to_string();
    if REFUSING.load(Ordering::SeqCst) {
        return Err(ExecError::Interrupted { command });
    }
    let mut child = Command::new(&invocation.program)
        .args(&invocation.args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that a timeout also kills what a wrapper script started
        // (which would otherwise hold the output pipes open).
        .process_group(0)
        .spawn()
        .map_err(|source| ExecError::Spawn {
            command: command.clone(),
            source,
        })?;
    let group = child.id() as i32;
    RUNNING
        .lock()
        .expect("running tools lock")
        .insert(group, false);
    let started = Instant::now();
    let (stdin_pipe, stdout_pipe, stderr_pipe) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let (waited, stdout, stderr) = std::thread::scope(|scope| {
        // Writing and reading on their own threads: a tool that stops reading its
        // input or fills a pipe cannot block the wait for its deadline.
        if let (Some(text), Some(mut pipe)) = (stdin, stdin_pipe) {
            // A write error means the child exited early; its status says why.
            scope.spawn(move || {
                let _ = pipe.write_all(text.as_bytes());
            });
        }
        let out = scope.spawn(move || read_all(stdout_pipe));
        let err = scope.spawn(move || read_all(stderr_pipe));
        let waited = wait_until(&mut child, group, started + limit);
        (
            waited,
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        )
    });
    let status = match waited {
        Ok((_, true)) => return Err(ExecError::Interrupted { command }),
        Ok((Some(status), false)) => status,
        Ok((None, false)) => {
            return Err(ExecError::TimedOut {
                command,
                timeout: limit,
            })
        }
        Err(source) => return Err(ExecError::Spawn { command, source }),
    };
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    if !status.success() {
        return Err(ExecError::Failed {
            command,
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        });
    }
    Ok(ExecOutput { stdout, stderr })
}

fn read_all(pipe: Option<impl Read>) -> Vec<u8> {
    let mut buffer = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut buffer);
    }
    buffer
}

/// Waits for `child` (leader of process group `group`) until `deadline`: its status, or
/// `None` if it still ran then, in which case its group is killed and it is reaped; and
/// whether [`interrupt`] killed it. Polls, first every 1 ms (most tool calls end within a
/// few) and then up to every 20 ms. The child is reaped and leaves `RUNNING` under one
/// lock, so `interrupt` never signals a group whose pid could have been reused.
fn wait_until(
    child: &mut Child,
    group: i32,
    deadline: Instant,
) -> std::io::Result<(Option<ExitStatus>, bool)> {
    let mut pause = Duration::from_millis(1);
    loop {
        let now = Instant::now();
        {
            let mut running = RUNNING.lock().expect("running tools lock");
            let status = match child.try_wait() {
                Ok(Some(status)) => Some(status),
                Ok(None) if now < deadline => None,
                Ok(None) => {
                    kill_group(group);
                    // SIGKILL cannot be ignored: this wait is short. The pipes close
                    // with the rest of the group.
                    let _ = child.wait();
                    let interrupted = running.remove(&group).unwrap_or(false);
                    return Ok((None, interrupted));
                }
                Err(e) => {
                    kill_group(group);
                    let _ = child.wait();
                    running.remove(&group);
                    return Err(e);
                }
            };
            if let Some(status) = status {
                let interrupted = running.remove(&group).unwrap_or(false);
                return Ok((Some(status), interrupted));
            }
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// A scripted [`Exec`] for tests: answers expected calls in order, records what it was sent,
/// and panics on anything unexpected.
#[derive(Debug, Default)]
pub struct FakeExec {
    script: Mutex<Vec<(String, Result<String, String>)>>,
    calls: Mutex<Vec<(String, Option<String>)>>,
}

impl FakeExec {
    pub fn new() -> Self {
        FakeExec::default()
    }

    /// Expect `command` (as displayed) next; answer with stdout, or fail with stderr.
    pub fn expect(self, command: &str, answer: Result<&str, &str>) -> Self {
        self.script.lock().expect("fake exec lock").push((
            command.to_string(),
            answer.map(str::to_string).map_err(str::to_string),
        ));
        self
    }

    /// Every call made so far: command and standard input.
    pub fn calls(&self) -> Vec<(String, Option<String>)> {
        self.calls.lock().expect("fake exec lock").clone()
    }
}

impl Exec for FakeExec {
    fn run(&self, invocation: &Invocation, stdin: Option<&str>) -> Result<ExecOutput, ExecError> {
        let command = invocation.to_string();
        self.calls
            .lock()
            .expect("fake exec lock")
            .push((command.clone(), stdin.map(str::to_string)));
        let mut script = self.script.lock().expect("fake exec lock");
        assert!(!script.is_empty(), "unexpected command `{command}`");
        let (expected, answer) = script.remove(0);
        assert_eq!(expected, command, "unexpected command");
        match answer {
            Ok(stdout) => Ok(ExecOutput {
                stdout,
                stderr: String::new(),
            }),
            Err(stderr) => Err(ExecError::Failed {
                command,
                status: "exit status: 1".into(),
                stderr,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`interrupt`] stops every tool of the process: these tests run one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn sh(script: &str) -> Invocation {
        Invocation::new("sh", &["-c", script])
    }

    #[test]
    fn a_tool_that_outlives_its_bound_is_killed_with_what_it_started_and_named() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        // The shell waits on a child of its own: killing only the shell would leave `sleep`
        // holding the output pipe open.
        let error = run_bounded(&sh("sleep 30 & wait"), None, Duration::from_millis(300))
            .expect_err("the tool was not stopped");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        let text = error.to_string();
        assert!(
            text.contains("`sh -c sleep 30 & wait`") && text.contains("300ms"),
            "{text}"
        );
    }

    #[test]
    fn a_tool_that_does_not_read_its_input_cannot_block_the_deadline() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        // Far more than a pipe holds: a writer on the waiting thread would block for ever.
        let input = "x".repeat(4 << 20);
        let error = run_bounded(&sh("sleep 30"), Some(&input), Duration::from_millis(300));
        assert!(
            matches!(error, Err(ExecError::TimedOut { .. })),
            "{error:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_quick_tool_gives_its_output_and_a_failing_one_its_stderr() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let out = run_bounded(&sh("cat; echo done"), Some("in\n"), Duration::from_secs(10))
            .expect("cat runs");
        assert_eq!(out.stdout, "in\ndone\n");
        let error = run_bounded(&sh("echo bad >&2; exit 3"), None, Duration::from_secs(10))
            .expect_err("exit 3 is a failure");
        assert!(
            matches!(&error, ExecError::Failed { stderr, .. } if stderr == "bad"),
            "{error:?}"
        );
    }

    #[test]
    fn a_big_batch_gets_a_millisecond_per_line_on_top_of_the_bound() {
        let base = Duration::from_secs(30);
        assert_eq!(bound(base, None), base);
        assert_eq!(
            bound(base, Some("-A X\n-A Y\n")),
            base + Duration::from_millis(2)
        );
        let batch = "-A PORTAL-X -j RETURN\n".repeat(240_000);
        assert_eq!(bound(base, Some(&batch)), Duration::from_secs(270));
    }

    #[test]
    fn interrupt_stops_a_running_tool_at_once() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let invocation = sh("sleep 30");
        let started = Instant::now();
        let stopper = std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(200));
            interrupt();
        });
        let error = run_bounded(&invocation, None, Duration::from_secs(20));
        stopper.join().unwrap();
        let refused = run_bounded(&sh("true"), None, Duration::from_secs(20));
        resume();
        assert!(
            matches!(refused, Err(ExecError::Interrupted { .. })),
            "a tool started after the interrupt ran: {refused:?}"
        );
        run_bounded(&sh("true"), None, Duration::from_secs(20)).expect("resumed");
        assert!(
            matches!(error, Err(ExecError::Interrupted { .. })),
            "{error:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}
