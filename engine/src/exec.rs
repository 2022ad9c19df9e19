//! The one place portald spawns a process: every kernel tool call goes through [`Exec`].

use planners::Invocation;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;

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

/// Runs real processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemExec;

impl Exec for SystemExec {
    fn run(&self, invocation: &Invocation, stdin: Option<&str>) -> Result<ExecOutput, ExecError> {
        let command = invocation.to_string();
        let mut child = Command::new(&invocation.program)
            .args(&invocation.args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| ExecError::Spawn {
                command: command.clone(),
                source,
            })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A write error means the child exited early; its status says why.
            let _ = pipe.write_all(text.as_bytes());
        }
        let output = child
            .wait_with_output()
            .map_err(|source| ExecError::Spawn {
                command: command.clone(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if !output.status.success() {
            return Err(ExecError::Failed {
                command,
                status: output.status.to_string(),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok(ExecOutput { stdout, stderr })
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
