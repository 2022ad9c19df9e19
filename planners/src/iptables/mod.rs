//! The iptables dialect: portald's portals as rules in the `nat` table, written with
//! `iptables-restore --noflush` and read back from `iptables-save`.
//!
//! Layout (userspace mode, the seed's design), all in `nat`:
//! - owned chains `PORTAL-CONTAINER` ([`Scaffold::Chain`]`(Container)`) and `PORTAL-HOST`
//!   ([`Scaffold::Chain`]`(Host)`); every chain named `PORTAL-*` is portald's space;
//! - hooks: a commented jump at the top of `PREROUTING` (container path) and of `OUTPUT`
//!   (host path) into the owned chain;
//! - one rule per portal, spelled exactly as `iptables-save` prints it, so a rendered state
//!   and a dump of the applied state are the same text:
//!   `-A PORTAL-CONTAINER -d 10.11.0.1/32 -p tcp -m comment --comment "ns/svc:80" -m tcp
//!   --dport 80 -j REDIRECT --to-ports 33945` (or `-j DNAT --to-destination 127.0.0.1:33945`).
//!
//! Facts about `iptables-restore --noflush` (1.8.9, nf_tables backend) the batches rely on,
//! each checked against the real kernel by `tests/iptables_kernel.rs`:
//! - a batch is one transaction: if any line fails, nothing of it is applied;
//! - `:CHAIN - [0:0]` for a chain that exists FLUSHES it, even in `--noflush` mode, and a
//!   declaration after `-A` lines for the same chain in one batch throws those rules away;
//!   so a batch declares only chains it creates, and before their rules;
//! - `--test` only parses: it does not notice a `-D` of a rule or chain that is not there.

mod parse;
mod render;
pub mod tokenize;

use crate::{Change, Dialect, Invocation, Live, NatState, ParseError, Path};

pub use parse::is_terminal_target;
pub use render::rule_spec;

/// The table every portald rule lives in.
pub const TABLE: &str = "nat";
/// Chains whose name starts with this belong to portald.
pub const CHAIN_PREFIX: &str = "PORTAL-";
/// Seconds `iptables-restore` waits for the xtables lock before giving up.
pub const LOCK_WAIT_SECONDS: &str = "5";

/// The owned chain that holds a path's portal rules.
pub fn chain(path: Path) -> &'static str {
    match path {
        Path::Container => "PORTAL-CONTAINER",
        Path::Host => "PORTAL-HOST",
    }
}

/// The built-in chain a path's hook jumps from.
pub fn hook_chain(path: Path) -> &'static str {
    match path {
        Path::Container => "PREROUTING",
        Path::Host => "OUTPUT",
    }
}

/// The comment that marks a path's hook as portald's.
pub fn hook_comment(path: Path) -> &'static str {
    match path {
        Path::Container => "portald:container-portals",
        Path::Host => "portald:host-portals",
    }
}

/// The path whose owned chain has this name, if any.
pub fn path_of_chain(name: &str) -> Option<Path> {
    Path::ALL.into_iter().find(|p| chain(*p) == name)
}

/// portald's iptables dialect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Iptables;

impl Dialect for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    /// `iptables-save` of every table: foreign rules anywhere (a filter DROP of a VIP, say)
    /// matter for conflict reports, not only those in `nat`.
    fn observe_command(&self) -> Invocation {
        Invocation::new("iptables-save", &[])
    }

    fn apply_command(&self) -> Invocation {
        Invocation::new("iptables-restore", &["-w", LOCK_WAIT_SECONDS, "--noflush"])
    }

    fn check_command(&self) -> Invocation {
        Invocation::new(
            "iptables-restore",
            &["-w", LOCK_WAIT_SECONDS, "--noflush", "--test"],
        )
    }

    fn render_state(&self, state: &NatState) -> String {
        render::state(state)
    }

    fn render_batch(&self, changes: &[Change]) -> String {
        render::batch(changes)
    }

    fn parse_live(&self, dump: &str) -> Result<Live, ParseError> {
        parse::live(dump)
    }
}
