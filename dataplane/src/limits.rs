//! File descriptors: the soft limit raised at start, the share of them the data plane may
//! hold, and the backoff of accept loops when the process runs out anyway.
//!
//! Every proxied TCP connection holds two descriptors (client and endpoint sockets), every
//! UDP flow one, every TCP listener one per worker. Left unbounded, traffic alone could take
//! the last descriptor, and then the reconciler could not even spawn `iptables-save`. The
//! data plane therefore keeps a count of what it holds and stops taking more at its
//! [`Budget`]: the soft `RLIMIT_NOFILE` less a reserve for the control path. Listeners may
//! take half of it, so that a file asking for thousands of ports cannot starve the
//! connections of the ports already served.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// The soft and hard `RLIMIT_NOFILE`, before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as kube-proxy and HAProxy do at start.
/// The low soft default (1,024 under systemd) only protects programs that still use
/// `select(2)`, which portald does not; the hard limit is the administrator's real bound.
///
/// Errors: `getrlimit`/`setrlimit` failing (never expected when lowering nothing).
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft_before, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft_before < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(NofileLimit {
        soft_before,
        soft,
        hard,
    })
}

/// The soft `RLIMIT_NOFILE` now: the most descriptors the process may hold, capped at
/// `u32::MAX` (an unlimited soft limit reads as `RLIM_INFINITY`).
pub fn nofile_soft_limit() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    // Without the limit, assume the common default rather than refuse to start.
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    usize::try_from(soft.min(u64::from(u32::MAX))).unwrap_or(u32::MAX as usize)
}

/// Descriptors the process holds now, from `/proc/self/fd` (the directory's own descriptor
/// not counted). Costs a directory read: for start-up and listener opens, not per
/// connection. `None` when `/proc` cannot be read (which itself may mean none is left).
pub fn open_fds() -> Option<usize> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(entries.count().saturating_sub(1))
}

/// One connection in [`Budget::state`]: one in the high half, two descriptors in the low.
const CONNECTION: u64 = (1 << 32) + 2;
const FDS_MASK: u64 = (1 << 32) - 1;

/// Connections accepted past the budget by accept loops that were already waiting in
/// `accept` when the last slot went, each kept until a slot frees. Their descriptors come
/// out of the reserve, so they are few: past this many, such a connection is reset.
const IN_HAND: usize = 32;

/// What the data plane holds and may hold: descriptors (listeners, connections, UDP flows)
/// and proxied TCP connections. One atomic word, so that taking or giving back a connection
/// is one atomic add, with no lock.
#[derive(Debug)]
pub(super) struct Budget {
    /// Descriptors the data plane may hold.
    fds: u64,
    /// Proxied TCP connections open at once, over all listeners (HAProxy's `maxconn`).
    connections: u64,
    /// Connections in the high 32 bits, descriptors in the low 32.
    state: AtomicU64,
    /// Connections accepted and waiting for a slot (see [`IN_HAND`]).
    in_hand: AtomicUsize,
    /// Descriptors of listening sockets, also counted in `state`; at most half of `fds`.
    listeners: AtomicUsize,
    /// Whether an accept loop found the budget full and said so: one log line for all the
    /// listeners and workers that wait, not one each.
    full: AtomicBool,
    /// Accepts failing for want of descriptors or memory, over all accept loops; locked
    /// only by a loop that is failing or has just recovered.
    shortage: Mutex<Episode>,
}

impl Budget {
    /// `fds`: descriptors the data plane may hold; `connections`: proxied TCP connections
    /// open at once.
    pub(super) fn new(fds: usize, connections: usize) -> Budget {
        let cap = |n: usize| u64::try_from(n).unwrap_or(u64::MAX).min(FDS_MASK);
        Budget {
            fds: cap(fds),
            connections: cap(connections),
            state: AtomicU64::new(0),
            in_hand: AtomicUsize::new(0),
            listeners: AtomicUsize::new(0),
            full: AtomicBool::new(false),
            shortage: Mutex::new(Episode::default()),
        }
    }

    /// The budget of a data plane starting now: the soft limit less `reserve` less what the
    /// process holds already (its runtimes, the log, whatever it inherited).
    pub(super) fn for_process(reserve: usize, connections: Option<usize>) -> Budget {
        let limit = nofile_soft_limit();
        let held = open_fds().unwrap_or(0);
        let fds = limit.saturating_sub(reserve).saturating_sub(held);
        tracing::info!(
            limit,
            reserve,
            held_at_start = held,
            data_plane = fds,
            "file descriptor budget"
        );
        Budget::new(fds, connections.unwrap_or(usize::MAX))
    }

    /// Whether one more connection would fit now; a plain load, for an accept loop to
    /// decide whether to accept at all.
    pub(super) fn has_room(&self) -> bool {
        let state = self.state.load(Ordering::Relaxed);
        (state >> 32) < self.connections && (state & FDS_MASK) + 2 <= self.fds
    }

    /// Takes one connection and its two descriptors; `false` (nothing taken) when either
    /// bound is reached.
    pub(super) fn try_connection(&self) -> bool {
        let before = self.state.fetch_add(CONNECTION, Ordering::Relaxed);
        if (before >> 32) < self.connections && (before & FDS_MASK) + 2 <= self.fds {
            return true;
        }
        self.state.fetch_sub(CONNECTION, Ordering::Relaxed);
        false
    }

    pub(super) fn release_connection(&self) {
        self.state.fetch_sub(CONNECTION, Ordering::Relaxed);
    }

    /// Takes `n` descriptors; `false` (nothing taken) when they do not fit.
    pub(super) fn try_fds(&self, n: usize) -> bool {
        let n = n as u64;
        let before = self.state.fetch_add(n, Ordering::Relaxed);
        if (before & FDS_MASK) + n <= self.fds {
            return true;
        }
        self.state.fetch_sub(n, Ordering::Relaxed);
        false
    }

    /// Takes `n` descriptors for a listener: listeners may hold at most half of the budget,
    /// so that the ports already served keep room for their connections however many
    /// ports a file asks for. `false` (nothing taken) when they do not fit.
    pub(super) fn try_listener(&self, n: usize) -> bool {
        let before = self.listeners.fetch_add(n, Ordering::Relaxed);
        if before + n <= self.listener_share() && self.try_fds(n) {
            return true;
        }
        self.listeners.fetch_sub(n, Ordering::Relaxed);
        false
    }

    pub(super) fn release_listener(&self, n: usize) {
        self.listeners.fetch_sub(n, Ordering::Relaxed);
        self.release_fds(n);
    }

    /// Descriptors listeners hold, and the most they may.
    pub(super) fn listener_fds(&self) -> (usize, usize) {
        (
            self.listeners.load(Ordering::Relaxed),
            self.listener_share(),
        )
    }

    fn listener_share(&self) -> usize {
        (self.fds / 2) as usize
    }

    /// Takes `n` descriptors whether they fit or not: for a UDP flow that replaces one just
    /// evicted, whose socket closes a moment later.
    pub(super) fn force_fds(&self, n: usize) {
        self.state.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(super) fn release_fds(&self, n: usize) {
        self.state.fetch_sub(n as u64, Ordering::Relaxed);
    }

    /// Descriptors held, and descriptors the data plane may hold.
    pub(super) fn fds(&self) -> (usize, usize) {
        let held = self.state.load(Ordering::Relaxed) & FDS_MASK;
        (held as usize, self.fds as usize)
    }

    /// Counts one more connection accepted past the budget; `false` (nothing counted) when
    /// [`IN_HAND`] already wait.
    pub(super) fn hold_in_hand(&self) -> bool {
        if self.in_hand.fetch_add(1, Ordering::Relaxed) < IN_HAND {
            return true;
        }
        self.in_hand.fetch_sub(1, Ordering::Relaxed);
        false
    }

    pub(super) fn release_in_hand(&self) {
        self.in_hand.fetch_sub(1, Ordering::Relaxed);
    }

    /// Marks the budget full; `true` for the caller that should log it.
    pub(super) fn note_full(&self) -> bool {
        !self.full.swap(true, Ordering::Relaxed)
    }

    /// Marks the budget no longer full; `true` for the caller that should log it.
    pub(super) fn note_room(&self) -> bool {
        self.full.swap(false, Ordering::Relaxed)
    }

    /// Counts one accept failed for want of resources; what to log now, if anything.
    pub(super) fn note_shortage(&self) -> Option<EpisodeLog> {
        super::lock(&self.shortage).failed()
    }

    /// Ends the shortage episode, if one runs; what to log once.
    pub(super) fn note_recovered(&self) -> Option<(u64, Duration)> {
        super::lock(&self.shortage).ended()
    }

    /// Proxied TCP connections open now.
    #[cfg(test)]
    pub(super) fn connections(&self) -> usize {
        (self.state.load(Ordering::Relaxed) >> 32) as usize
    }
}

/// Whether an accept (or socket) error means the process or the system ran out of
/// something (descriptors, buffers, memory): retrying at once fails the same way, and since
/// the pending connection stays queued the listener stays ready, so a loop that retries at
/// once spins. tokio's `TcpListener::accept` docs and HAProxy both say to back off.
pub fn is_resource_shortage(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Waits of an accept loop that keeps failing: 10 ms, doubling up to 1 s, back to 10 ms
/// after a success.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    pub fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    /// The wait before the next try; each call doubles the one after.
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }

    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// A run of the same failure, logged as one line when it starts, one a minute while it
/// lasts and one when it ends, instead of a line per failure (which at thousands of failed
/// accepts a second would fill the journal).
#[derive(Debug, Default)]
pub struct Episode {
    failures: u64,
    started: Option<Instant>,
    logged: Option<Instant>,
}

/// What an [`Episode`] asks its owner to log now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpisodeLog {
    /// The first failure of an episode.
    Started,
    /// Still failing: `failures` so far over `elapsed`.
    Continues { failures: u64, elapsed: Duration },
}

impl Episode {
    /// Between two lines of one episode.
    const EVERY: Duration = Duration::from_secs(60);

    /// Counts one failure; returns what to log now, if anything.
    pub fn failed(&mut self) -> Option<EpisodeLog> {
        let now = Instant::now();
        self.failures += 1;
        let Some(started) = self.started else {
            self.started = Some(now);
            self.logged = Some(now);
            return Some(EpisodeLog::Started);
        };
        if self.logged.is_some_and(|at| now - at < Self::EVERY) {
            return None;
        }
        self.logged = Some(now);
        Some(EpisodeLog::Continues {
            failures: self.failures,
            elapsed: now - started,
        })
    }

    /// Ends the episode, if one runs; returns its failures and length, to log once.
    pub fn ended(&mut self) -> Option<(u64, Duration)> {
        let started = self.started.take()?;
        let failures = std::mem::take(&mut self.failures);
        self.logged = None;
        Some((failures, started.elapsed()))
    }

    /// Whether an episode runs.
    pub fn ongoing(&self) -> bool {
        self.started.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_takes_two_descriptors_and_is_refused_past_either_bound() {
        let budget = Budget::new(5, 10);
        assert!(budget.try_connection());
        assert!(budget.try_connection());
        assert_eq!(budget.fds(), (4, 5));
        // A third would need descriptors 5 and 6 of 5.
        assert!(!budget.has_room());
        assert!(!budget.try_connection());
        assert_eq!((budget.fds().0, budget.connections()), (4, 2));
        budget.release_connection();
        assert!(budget.try_connection());

        let budget = Budget::new(100, 1);
        assert!(budget.try_connection());
        assert!(!budget.try_connection());
        assert_eq!(budget.connections(), 1);
    }

    #[test]
    fn descriptors_are_refused_past_the_budget_and_free_again_when_released() {
        let budget = Budget::new(3, 10);
        assert!(budget.try_fds(2));
        assert!(!budget.try_fds(2));
        assert!(budget.try_fds(1));
        budget.release_fds(2);
        assert!(budget.try_fds(2));
        assert_eq!(budget.fds(), (3, 3));
    }

    #[test]
    fn listeners_may_hold_half_of_the_budget_leaving_the_rest_for_connections() {
        let budget = Budget::new(8, 10);
        assert!(budget.try_listener(2));
        assert!(budget.try_listener(2));
        assert!(!budget.try_listener(1));
        assert_eq!(budget.listener_fds(), (4, 4));
        assert!(budget.try_connection() && budget.try_connection());
        assert_eq!(budget.fds(), (8, 8));
        budget.release_listener(2);
        assert_eq!(budget.listener_fds(), (2, 4));
        assert_eq!(budget.fds(), (6, 8));
    }

    #[test]
    fn backoff_doubles_from_ten_milliseconds_to_one_second_and_resets() {
        let mut backoff = Backoff::new();
        let waits: Vec<u64> = (0..9)
            .map(|_| backoff.next_wait().as_millis() as u64)
            .collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_wait(), Duration::from_millis(10));
    }

    #[test]
    fn an_episode_logs_its_first_failure_then_nothing_until_it_ends() {
        let mut episode = Episode::default();
        assert_eq!(episode.failed(), Some(EpisodeLog::Started));
        for _ in 0..1000 {
            assert_eq!(episode.failed(), None);
        }
        let (failures, _) = episode.ended().expect("an episode ran");
        assert_eq!(failures, 1001);
        assert_eq!(episode.ended(), None);
        assert_eq!(episode.failed(), Some(EpisodeLog::Started));
    }

    #[test]
    fn raising_the_limit_leaves_soft_equal_to_hard() {
        let limit = raise_nofile_limit().expect("rlimit");
        assert_eq!(limit.soft, limit.hard);
        assert!(limit.soft >= limit.soft_before);
    }
}
