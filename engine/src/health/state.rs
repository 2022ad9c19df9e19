//! The per-target state machine with the kubelet's semantics
//! (kubernetes/kubernetes `pkg/kubelet/prober/worker.go` `doProbe`), and where in its period
//! each target's probes fall. Pure: the caller brings the clock.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

/// What portald thinks of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No judgement yet (no flip since portald first saw the target): the file's own
    /// condition holds. Unlike the kubelet, which starts a new container not ready,
    /// portald may be restarting beside long-running services: its restart must not take
    /// every probed endpoint out.
    Unknown,
    Healthy,
    Unhealthy,
}

impl Verdict {
    /// `Some(ready)` once judged.
    pub fn ready(self) -> Option<bool> {
        match self {
            Verdict::Unknown => None,
            Verdict::Healthy => Some(true),
            Verdict::Unhealthy => Some(false),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Unknown => "unknown",
            Verdict::Healthy => "healthy",
            Verdict::Unhealthy => "unhealthy",
        }
    }
}

/// One target's results so far. `since` values are whatever clock the caller uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetState {
    pub verdict: Verdict,
    /// When `verdict` last changed (or the target was first seen).
    pub since: Duration,
    /// The last result and how many times in a row it came (the kubelet's `resultRun`).
    last: Option<bool>,
    run: u32,
    /// Why the last probe failed, `None` after a success.
    pub last_error: Option<String>,
}

impl TargetState {
    pub fn new(now: Duration) -> Self {
        TargetState {
            verdict: Verdict::Unknown,
            since: now,
            last: None,
            run: 0,
            last_error: None,
        }
    }

    /// Records one probe result. As the kubelet: a result takes effect only after
    /// `success_threshold` successes / `failure_threshold` failures in a row; before that
    /// the previous verdict stays. Returns the new verdict when it changed.
    pub fn record(
        &mut self,
        result: Result<(), String>,
        success_threshold: u32,
        failure_threshold: u32,
        now: Duration,
    ) -> Option<Verdict> {
        let ok = result.is_ok();
        self.last_error = result.err();
        if self.last == Some(ok) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let needed = if ok {
            success_threshold
        } else {
            failure_threshold
        };
        if self.run < needed.max(1) {
            return None;
        }
        let verdict = if ok {
            Verdict::Healthy
        } else {
            Verdict::Unhealthy
        };
        if verdict == self.verdict {
            return None;
        }
        self.verdict = verdict;
        self.since = now;
        Some(verdict)
    }
}

/// Where in its period a target's probes fall: a fixed offset in `[0, period)` from a hash
/// of the target's name, so that thousands of targets with the same period do not fire
/// together (and the same target fires at the same phase after a restart).
pub fn offset(target: &str, period: Duration) -> Duration {
    let period_ms = period.as_millis().max(1) as u64;
    let digest = Sha256::digest(target.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    Duration::from_millis(u64::from_le_bytes(first) % period_ms)
}

/// When the first probe of a target first seen at `seen` runs: after `initialDelaySeconds`
/// (counted from when portald first sees it, since portald cannot know when the container
/// started), then at the target's offset in its period.
pub fn first_probe_at(
    seen: Duration,
    initial_delay: Duration,
    target: &str,
    period: Duration,
) -> Duration {
    seen + initial_delay + offset(target, period)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAIL: fn() -> Result<(), String> = || Err("connection refused".into());

    fn at(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_new_target_has_no_judgement_until_a_threshold_is_reached() {
        let mut state = TargetState::new(at(0));
        assert_eq!(state.verdict, Verdict::Unknown);
        assert_eq!(state.record(FAIL(), 1, 3, at(1)), None);
        assert_eq!(state.record(FAIL(), 1, 3, at(2)), None);
        assert_eq!(
            state.verdict,
            Verdict::Unknown,
            "the file's condition still holds"
        );
        assert_eq!(state.record(FAIL(), 1, 3, at(3)), Some(Verdict::Unhealthy));
        assert_eq!(state.since, at(3));
        assert_eq!(state.last_error.as_deref(), Some("connection refused"));
    }

    #[test]
    fn failures_must_be_consecutive_to_take_a_target_out() {
        let mut state = TargetState::new(at(0));
        state.record(Ok(()), 1, 3, at(0));
        assert_eq!(state.verdict, Verdict::Healthy);
        for t in 1..=10 {
            // fail, fail, ok, ...: never three in a row.
            let result = if t % 3 == 0 { Ok(()) } else { FAIL() };
            assert_eq!(state.record(result, 1, 3, at(t)), None, "at {t}");
        }
        assert_eq!(state.verdict, Verdict::Healthy);
    }

    #[test]
    fn recovery_needs_success_threshold_successes_in_a_row() {
        let mut state = TargetState::new(at(0));
        state.record(FAIL(), 2, 1, at(0));
        assert_eq!(state.verdict, Verdict::Unhealthy);
        assert_eq!(state.record(Ok(()), 2, 1, at(1)), None);
        assert_eq!(state.record(FAIL(), 2, 1, at(2)), None, "still unhealthy");
        assert_eq!(state.record(Ok(()), 2, 1, at(3)), None);
        assert_eq!(state.record(Ok(()), 2, 1, at(4)), Some(Verdict::Healthy));
        assert_eq!(state.since, at(4));
        assert_eq!(state.last_error, None);
        assert_eq!(
            state.record(Ok(()), 2, 1, at(5)),
            None,
            "one flip, not one per result"
        );
    }

    #[test]
    fn offsets_are_spread_over_the_period_and_stable() {
        let period = at(10);
        let offsets: Vec<Duration> = (0..1000)
            .map(|i| offset(&format!("default/pod-{i}/0"), period))
            .collect();
        assert!(offsets.iter().all(|o| *o < period));
        assert_eq!(
            offsets[7],
            offset("default/pod-7/0", period),
            "deterministic"
        );
        // Ten 1-second buckets each get about a tenth (binomial: far within 50..150).
        let mut buckets = [0u32; 10];
        for o in &offsets {
            buckets[o.as_secs() as usize] += 1;
        }
        assert!(buckets.iter().all(|b| (50..150).contains(b)), "{buckets:?}");
    }

    #[test]
    fn the_initial_delay_counts_from_when_portald_first_sees_the_target() {
        let period = at(5);
        let first = first_probe_at(at(100), at(30), "default/a/0", period);
        assert!(first >= at(130) && first < at(135), "{first:?}");
    }
}
