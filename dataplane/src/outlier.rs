//! Passive outlier detection: endpoints that keep failing dials leave the rotation for a while.
//!
//! Envoy's consecutive-failure ejection (its `consecutive_gateway_failure`, which counts
//! connection failures), applied to the dials the proxy makes anyway: no probe traffic. Pure:
//! the caller passes the time, so the rules are tested with a clock the test moves.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// When an endpoint is ejected, and for how long. Field names and defaults are Envoy's
/// (`config.cluster.v3.OutlierDetection`) except `max_ejection_percent`, 50 here (Envoy: 10):
/// a Service has few endpoints, and 10 % of two is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Failed dials in a row (refused, timed out, unreachable) that eject an endpoint; a
    /// successful dial starts the count again. 0 turns outlier detection off. Envoy's
    /// `consecutive_gateway_failure` default, 5.
    pub consecutive_failures: u32,
    /// The first ejection lasts this long, the n-th in a row n times as long (Envoy's
    /// `base_ejection_time`, 30 s). Each period of this length that an endpoint stays in the
    /// rotation without being ejected again takes one step off the multiplier.
    pub base_ejection: Duration,
    /// No ejection lasts longer (Envoy's `max_ejection_time`, 300 s).
    pub max_ejection: Duration,
    /// Most endpoints of a listener out at once, in percent of its endpoints, yet at least
    /// one when it has two or more, and never the last one (Envoy's `max_ejection_percent`
    /// with its `always_eject_one_host`, and its panic threshold): past it a failing endpoint
    /// stays in.
    pub max_ejection_percent: u8,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

impl OutlierDetection {
    /// Whether any endpoint can be ejected at all.
    pub fn enabled(&self) -> bool {
        self.consecutive_failures > 0
    }

    /// How long the `nth` ejection in a row (1 for the first) lasts.
    pub fn ejection_time(&self, nth: u32) -> Duration {
        self.base_ejection
            .saturating_mul(nth)
            .min(self.max_ejection)
    }

    /// The multiplier past which ejections grow no longer (Envoy stops raising it once
    /// `base × n` reaches `max_ejection_time`), so the decay back takes bounded time.
    fn max_multiplier(&self) -> u32 {
        if self.base_ejection.is_zero() {
            return 1;
        }
        let steps = self
            .max_ejection
            .as_nanos()
            .div_ceil(self.base_ejection.as_nanos());
        u32::try_from(steps).unwrap_or(u32::MAX).max(1)
    }

    /// Most endpoints out at once among `endpoints`.
    pub fn max_ejected(&self, endpoints: usize) -> usize {
        let share = endpoints.saturating_mul(usize::from(self.max_ejection_percent)) / 100;
        share.max(1).min(endpoints.saturating_sub(1))
    }
}

/// What outlier detection knows of one endpoint that has failed at least once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Record {
    /// Failed dials since the last success.
    pub consecutive: u32,
    /// Ejections in a row: the next one lasts `base × (multiplier + 1)`.
    pub multiplier: u32,
    /// Out of the rotation until then.
    pub ejected_until: Option<Instant>,
    /// When it entered its current state: ejected, or back in the rotation (first failure
    /// for one never ejected).
    pub since: Instant,
    /// The multiplier last stepped down then (or the endpoint came back then).
    decay_from: Instant,
    /// The last dial error, as the kernel put it.
    pub last_error: String,
    /// Times ejected, and times back, while in the endpoint set.
    pub ejections: u64,
    pub returns: u64,
    /// Failing past the threshold but kept in: as many endpoints as may be are out.
    pub held: bool,
}

/// A change to log once; the caller logs it after letting go of the balancer's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Event {
    Ejected {
        endpoint: SocketAddr,
        consecutive: u32,
        /// 1 for the first ejection in a row.
        nth: u32,
        duration: Duration,
        error: String,
    },
    Returned {
        endpoint: SocketAddr,
        /// How long it was out.
        after: Duration,
    },
    /// Failing past the threshold, not ejected: `ejected` of `endpoints` already are.
    Held {
        endpoint: SocketAddr,
        consecutive: u32,
        ejected: usize,
        endpoints: usize,
    },
}

/// The records of one listener's endpoints.
#[derive(Debug)]
pub(super) struct Outliers {
    config: OutlierDetection,
    records: BTreeMap<SocketAddr, Record>,
    /// Records with `ejected_until` set.
    ejected: usize,
    /// Ejections over the listener's life, endpoints since removed included.
    total_ejections: u64,
    events: Vec<Event>,
}

impl Outliers {
    pub fn new(config: OutlierDetection) -> Self {
        Outliers {
            config,
            records: BTreeMap::new(),
            ejected: 0,
            total_ejections: 0,
            events: Vec::new(),
        }
    }

    pub fn config(&self) -> &OutlierDetection {
        &self.config
    }

    /// Endpoints out of the rotation now (after [`Outliers::sweep`]).
    pub fn ejected(&self) -> usize {
        self.ejected
    }

    pub fn total_ejections(&self) -> u64 {
        self.total_ejections
    }

    /// Whether `endpoint` is out of the rotation (as of the last [`Outliers::sweep`]).
    pub fn is_ejected(&self, endpoint: &SocketAddr) -> bool {
        self.ejected > 0
            && self
                .records
                .get(endpoint)
                .is_some_and(|r| r.ejected_until.is_some())
    }

    /// Brings back every endpoint whose back-off has ended by `now`.
    pub fn sweep(&mut self, now: Instant) {
        if self.ejected == 0 {
            return;
        }
        for (endpoint, record) in &mut self.records {
            let Some(until) = record.ejected_until else {
                continue;
            };
            if until > now {
                continue;
            }
            record.ejected_until = None;
            self.ejected -= 1;
            let after = until.saturating_duration_since(record.since);
            // Back at the end of its back-off, whenever this sweep noticed.
            record.since = until;
            record.decay_from = until;
            record.returns += 1;
            self.events.push(Event::Returned {
                endpoint: *endpoint,
                after,
            });
        }
    }

    /// A dial to `endpoint` failed with `error`, one of `endpoints` of the listener. Ejects it
    /// at the threshold unless the cap is reached; an endpoint back from an ejection has no
    /// success since, so its first failure ejects it again.
    pub fn failed(&mut self, endpoint: SocketAddr, error: &str, endpoints: usize, now: Instant) {
        if !self.config.enabled() {
            return;
        }
        self.sweep(now);
        let record = self.records.entry(endpoint).or_insert_with(|| Record {
            consecutive: 0,
            multiplier: 0,
            ejected_until: None,
            since: now,
            decay_from: now,
            last_error: String::new(),
            ejections: 0,
            returns: 0,
            held: false,
        });
        record.consecutive = record.consecutive.saturating_add(1);
        error.clone_into(&mut record.last_error);
        // A dial planned before the ejection, failing after it: already out.
        if record.ejected_until.is_some() || record.consecutive < self.config.consecutive_failures {
            return;
        }
        let allowed = self.config.max_ejected(endpoints);
        if self.ejected >= allowed {
            if !record.held {
                record.held = true;
                self.events.push(Event::Held {
                    endpoint,
                    consecutive: record.consecutive,
                    ejected: self.ejected,
                    endpoints,
                });
            }
            return;
        }
        decay(&self.config, record, now);
        record.multiplier = (record.multiplier + 1).min(self.config.max_multiplier());
        let duration = self.config.ejection_time(record.multiplier);
        record.ejected_until = Some(now + duration);
        record.since = now;
        record.ejections += 1;
        record.held = false;
        self.ejected += 1;
        self.total_ejections += 1;
        self.events.push(Event::Ejected {
            endpoint,
            consecutive: record.consecutive,
            nth: record.multiplier,
            duration,
            error: error.to_string(),
        });
    }

    /// A dial to `endpoint` succeeded (or a UDP endpoint answered): its count starts again.
    /// Costs one map lookup, and nothing while no endpoint has failed.
    pub fn succeeded(&mut self, endpoint: SocketAddr) {
        if let Some(record) = self.records.get_mut(&endpoint) {
            record.consecutive = 0;
            record.held = false;
        }
    }

    /// The endpoint set is now `endpoints`: the records of those that stay are kept, the
    /// others' go.
    pub fn retain(&mut self, endpoints: &[SocketAddr]) {
        if self.records.is_empty() {
            return;
        }
        self.records.retain(|e, _| endpoints.contains(e));
        self.ejected = self
            .records
            .values()
            .filter(|r| r.ejected_until.is_some())
            .count();
    }

    /// The records as of `now` (back-offs ended and multipliers decayed by then), by endpoint.
    pub fn records(&mut self, now: Instant) -> Vec<(SocketAddr, Record)> {
        self.sweep(now);
        let config = &self.config;
        self.records
            .iter_mut()
            .map(|(endpoint, record)| {
                decay(config, record, now);
                (*endpoint, record.clone())
            })
            .collect()
    }

    /// The events since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }
}

/// Steps the multiplier of an endpoint in the rotation down once per `base_ejection` it has
/// stayed there: Envoy decrements it at each sweep once the host has been back for
/// `base_ejection_time`, so an endpoint that failed once long ago is not punished as a
/// flapping one.
fn decay(config: &OutlierDetection, record: &mut Record, now: Instant) {
    if record.ejected_until.is_some() || record.multiplier == 0 {
        return;
    }
    let stayed = now.saturating_duration_since(record.decay_from);
    if config.base_ejection.is_zero() {
        record.multiplier = 0;
        return;
    }
    let steps = stayed.as_nanos() / config.base_ejection.as_nanos();
    let steps = u32::try_from(steps).unwrap_or(u32::MAX);
    if steps == 0 {
        return;
    }
    record.multiplier = record.multiplier.saturating_sub(steps);
    record.decay_from += config.base_ejection.saturating_mul(steps);
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ep(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 80))
    }

    fn fail(
        outliers: &mut Outliers,
        endpoint: SocketAddr,
        times: u32,
        endpoints: usize,
        now: Instant,
    ) {
        for _ in 0..times {
            outliers.failed(endpoint, "connection refused", endpoints, now);
        }
    }

    fn ejections(events: &[Event]) -> Vec<(SocketAddr, Duration)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Ejected {
                    endpoint, duration, ..
                } => Some((*endpoint, *duration)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_endpoint_is_ejected_at_the_threshold_of_consecutive_failures_and_not_before() {
        let mut outliers = Outliers::new(OutlierDetection::default());
        let t0 = Instant::now();

        fail(&mut outliers, ep(1), 4, 2, t0);
        assert!(!outliers.is_ejected(&ep(1)));
        outliers.failed(ep(1), "connection refused", 2, t0);

        assert!(outliers.is_ejected(&ep(1)));
        assert_eq!(ejections(&outliers.take_events()), [(ep(1), 30 * S)]);
    }

    #[test]
    fn a_success_starts_the_count_of_failures_again() {
        let mut outliers = Outliers::new(OutlierDetection::default());
        let t0 = Instant::now();

        fail(&mut outliers, ep(1), 4, 2, t0);
        outliers.succeeded(ep(1));
        fail(&mut outliers, ep(1), 4, 2, t0);

        assert!(!outliers.is_ejected(&ep(1)));
        assert!(outliers.take_events().is_empty());
    }

    #[test]
    fn an_endpoint_comes_back_after_its_back_off_and_its_first_failure_ejects_it_for_longer() {
        let mut outliers = Outliers::new(OutlierDetection::default());
        let t0 = Instant::now();
        fail(&mut outliers, ep(1), 5, 2, t0);

        outliers.sweep(t0 + 30 * S - Duration::from_millis(1));
        assert!(outliers.is_ejected(&ep(1)), "still out just before 30 s");
        outliers.sweep(t0 + 30 * S);
        assert!(!outliers.is_ejected(&ep(1)), "back at 30 s");
        outliers.failed(ep(1), "connection refused", 2, t0 + 31 * S);

        assert!(outliers.is_ejected(&ep(1)), "one failure ejects it again");
        let events = outliers.take_events();
        assert_eq!(ejections(&events), [(ep(1), 30 * S), (ep(1), 60 * S)]);
        assert!(events.contains(&Event::Returned {
            endpoint: ep(1),
            after: 30 * S
        }));
    }

    #[test]
    fn the_back_off_grows_with_each_ejection_in_a_row_up_to_the_cap() {
        let mut outliers = Outliers::new(OutlierDetection::default());
        let mut now = Instant::now();
        fail(&mut outliers, ep(1), 4, 2, now);
        let mut durations = Vec::new();
        for _ in 0..13 {
            outliers.failed(ep(1), "connection refused", 2, now);
            let (_, duration) = ejections(&outliers.take_events())[0];
            durations.push(duration.as_secs());
            // Back exactly at the end of the back-off, failing at once.
            now += duration;
        }

        assert_eq!(
            durations,
            [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300, 300]
        );

        // A cap that is no multiple of the base is still the cap.
        let config = OutlierDetection {
            max_ejection: 100 * S,
            ..OutlierDetection::default()
        };
        let times: Vec<u64> = (1..=6).map(|n| config.ejection_time(n).as_secs()).collect();
        assert_eq!(times, [30, 60, 90, 100, 100, 100]);
    }

    #[test]
    fn the_multiplier_decays_one_step_per_base_ejection_spent_in_the_rotation() {
        let mut outliers = Outliers::new(OutlierDetection::default());
        let t0 = Instant::now();
        // Three ejections in a row: 30 s, 60 s, 90 s; back at 180 s.
        fail(&mut outliers, ep(1), 5, 2, t0);
        outliers.failed(ep(1), "refused", 2, t0 + 30 * S);
        outliers.failed(ep(1), "refused", 2, t0 + 90 * S);
        let back = t0 + 180 * S;
        outliers.sweep(back);
        outliers.succeeded(ep(1));
        let multiplier = |o: &mut Outliers, at| o.records(at)[0].1.multiplier;
        assert_eq!(multiplier(&mut outliers, back), 3);
        assert_eq!(multiplier(&mut outliers, back + 59 * S), 2);
        assert_eq!(multiplier(&mut outliers, back + 60 * S), 1);

        // Two base periods in the rotation: the next ejection is the second in a row.
        fail(&mut outliers, ep(1), 5, 2, back + 61 * S);
        let events = outliers.take_events();
        assert_eq!(ejections(&events).last(), Some(&(ep(1), 60 * S)));
    }

    #[test]
    fn the_last_endpoint_is_never_ejected() {
        let mut outliers = Outliers::new(OutlierDetection::default());
        let t0 = Instant::now();

        fail(&mut outliers, ep(1), 50, 1, t0);

        assert!(!outliers.is_ejected(&ep(1)));
        assert_eq!(outliers.ejected(), 0);
        let events = outliers.take_events();
        assert_eq!(
            events.len(),
            1,
            "held once, not once per failure: {events:?}"
        );
        assert!(matches!(
            events[0],
            Event::Held {
                ejected: 0,
                endpoints: 1,
                ..
            }
        ));
    }

    #[test]
    fn no_more_than_the_percent_cap_is_ejected_but_at_least_one_of_two() {
        let config = OutlierDetection::default();
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 10].map(|n| config.max_ejected(n)),
            [0, 0, 1, 1, 2, 2, 5]
        );
        let all = OutlierDetection {
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        };
        assert_eq!(all.max_ejected(3), 2, "never every endpoint");
        let none = OutlierDetection {
            max_ejection_percent: 0,
            ..OutlierDetection::default()
        };
        assert_eq!(none.max_ejected(10), 1, "at least one");

        let mut outliers = Outliers::new(config);
        let t0 = Instant::now();
        for n in 1..=4 {
            fail(&mut outliers, ep(n), 5, 4, t0);
        }
        let out: Vec<_> = (1..=4).filter(|n| outliers.is_ejected(&ep(*n))).collect();
        assert_eq!(out, [1, 2], "half of four");
        assert_eq!(outliers.total_ejections(), 2);

        // Once one is back, the next failing endpoint may go.
        outliers.sweep(t0 + 30 * S);
        outliers.failed(ep(3), "refused", 4, t0 + 30 * S);
        assert!(outliers.is_ejected(&ep(3)));
    }

    #[test]
    fn zero_consecutive_failures_turns_detection_off() {
        let mut outliers = Outliers::new(OutlierDetection {
            consecutive_failures: 0,
            ..OutlierDetection::default()
        });
        fail(&mut outliers, ep(1), 100, 2, Instant::now());
        assert!(!outliers.is_ejected(&ep(1)));
        assert!(outliers.records(Instant::now()).is_empty());
    }

    #[test]
    fn an_update_keeps_the_records_of_endpoints_that_stay_and_drops_the_others() {
        let mut outliers = Outliers::new(OutlierDetection::default());
        let t0 = Instant::now();
        fail(&mut outliers, ep(1), 5, 3, t0);
        fail(&mut outliers, ep(2), 5, 3, t0);
        assert_eq!(outliers.ejected(), 1, "one of three");
        fail(&mut outliers, ep(3), 2, 3, t0);

        outliers.retain(&[ep(1), ep(3), ep(4)]);

        assert!(outliers.is_ejected(&ep(1)), "kept its ejection");
        let records = outliers.records(t0);
        let kept: Vec<_> = records.iter().map(|(e, r)| (*e, r.consecutive)).collect();
        assert_eq!(kept, [(ep(1), 5), (ep(3), 2)]);
        assert_eq!(outliers.ejected(), 1);
        assert_eq!(outliers.total_ejections(), 1, "a counter: not lowered");
    }
}
