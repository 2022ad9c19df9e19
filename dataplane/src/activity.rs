//! The clock of one proxied connection's last activity, read by the half-close reaper and
//! moved by both directions, whether they copy or splice.

use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::{Duration, Instant};

/// When either direction of a connection last moved (a read, a write, or an EOF), so the
/// half-close timeout measures silence, not age.
pub(super) struct Activity {
    base: Instant,
    /// Nanoseconds after `base` of the latest activity.
    last: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Activity {
            base: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        let since_base = Instant::now().saturating_duration_since(self.base);
        self.last.fetch_max(
            u64::try_from(since_base.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub(super) fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}
