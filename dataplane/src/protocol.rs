//! The transport a listener serves, the data plane's own so that it needs no kernel dialect.

use std::fmt;

/// A listener's transport. The engine maps its rule model's protocol onto this at the one
/// place it drives the data plane (the reconciler's listener control), so the proxy depends
/// on neither the planners nor the loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    /// Lower case, as the kernel tools and `portald status` spell it (`tcp`, `udp`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}
