//! Kernel dialects for portald: render intended NAT state and parse live dumps, purely.
//!
//! Nothing here runs a process: a dialect says which command to run and what text to send,
//! and the engine's one process seam does the running. A leaf of the workspace: it depends
//! on no other crate of it, and the engine is its caller.

pub mod iptables;
pub mod model;
pub mod nftables;

pub use iptables::Iptables;
pub use model::*;
pub use nftables::Nftables;

/// A command line for the engine's process seam to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub program: String,
    pub args: Vec<String>,
}

impl Invocation {
    pub fn new(program: &str, args: &[&str]) -> Self {
        Invocation {
            program: program.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }
}

impl std::fmt::Display for Invocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.program)?;
        for arg in &self.args {
            write!(f, " {arg}")?;
        }
        Ok(())
    }
}

/// A live dump that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{dialect} dump, line {line}: {message}")]
pub struct ParseError {
    pub dialect: &'static str,
    pub line: usize,
    pub message: String,
}

/// One way of speaking to the kernel's NAT machinery.
pub trait Dialect: Send + Sync {
    /// `iptables` or `nftables`.
    fn name(&self) -> &'static str;
    /// The command whose output is the live dump [`Dialect::parse_live`] reads.
    fn observe_command(&self) -> Invocation;
    /// The command that takes a batch from [`Dialect::render_batch`] on its standard input
    /// and applies it atomically.
    fn apply_command(&self) -> Invocation;
    /// Like [`Dialect::apply_command`], but only checks the batch.
    fn check_command(&self) -> Invocation;
    /// The whole intended state as the dialect's own text (what `iptables-save` or
    /// `nft list table` would print once applied, modulo counters).
    fn render_state(&self, state: &NatState) -> String;
    /// The exact batch that turns the live state into the intended one, for changes that are
    /// already in dependency order. Empty changes render as an empty string.
    fn render_batch(&self, changes: &[Change]) -> String;
    /// Reads a live dump: what portald owns, strays in its space, and foreign rules.
    fn parse_live(&self, dump: &str) -> Result<Live, ParseError>;
}
