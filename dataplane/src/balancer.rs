//! Endpoint choice for one listener: round robin with optional client-IP affinity, skipping
//! endpoints that outlier detection ejected; pure.
//!
//! The balancer does no IO; the caller passes the time, so its rules are tested without
//! sockets or sleeps.

use super::outlier::{Event, OutlierDetection, Outliers, Record};
use super::Backends;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub(super) struct Balancer {
    endpoints: Vec<SocketAddr>,
    /// Index of the endpoint the next unpinned client starts at.
    next: usize,
    affinity: Option<Duration>,
    sticky: HashMap<IpAddr, Sticky>,
    /// When expired affinity entries were last dropped; keeps the table bounded by the
    /// clients seen within one affinity period.
    pruned: Option<Instant>,
    outliers: Outliers,
}

#[derive(Debug, Clone, Copy)]
struct Sticky {
    endpoint: SocketAddr,
    last: Instant,
}

impl Balancer {
    /// A balancer with outlier detection at its defaults.
    #[cfg(test)]
    pub(super) fn new(backends: &Backends) -> Self {
        Self::with_outlier_detection(backends, OutlierDetection::default())
    }

    pub(super) fn with_outlier_detection(backends: &Backends, outlier: OutlierDetection) -> Self {
        let mut balancer = Balancer {
            endpoints: Vec::new(),
            next: 0,
            affinity: None,
            sticky: HashMap::new(),
            pruned: None,
            outliers: Outliers::new(outlier),
        };
        balancer.update(backends);
        balancer
    }

    pub(super) fn endpoints(&self) -> &[SocketAddr] {
        &self.endpoints
    }

    pub(super) fn affinity(&self) -> Option<Duration> {
        self.affinity
    }

    pub(super) fn contains(&self, endpoint: SocketAddr) -> bool {
        self.endpoints.contains(&endpoint)
    }

    /// Replaces the endpoint set. Clients pinned to an endpoint that remains stay pinned, so
    /// an unrelated endpoint change does not reshuffle every client; an endpoint that remains
    /// keeps its outlier record (failures, ejection), a removed one's goes.
    pub(super) fn update(&mut self, backends: &Backends) {
        let mut endpoints = backends.endpoints.clone();
        // A duplicate would get a double share of the round robin.
        let mut seen = std::collections::HashSet::new();
        endpoints.retain(|e| seen.insert(*e));
        self.endpoints = endpoints;
        self.next = if self.endpoints.is_empty() {
            0
        } else {
            self.next % self.endpoints.len()
        };
        self.outliers.retain(&self.endpoints);
        self.affinity = backends.affinity;
        if self.affinity.is_none() {
            self.sticky.clear();
        } else {
            let endpoints = &self.endpoints;
            self.sticky.retain(|_, s| endpoints.contains(&s.endpoint));
        }
    }

    /// The endpoints to try, in order, for a new connection from `client`: its pinned
    /// endpoint if affinity holds, else the next in the rotation; then those after it. At
    /// most `max_attempts` (at least one) and never an endpoint twice. Ejected endpoints are
    /// left out, unless every endpoint is (possible only after the set shrank): then none
    /// is, as Envoy's panic mode balances over all hosts.
    pub(super) fn plan(
        &mut self,
        client: IpAddr,
        now: Instant,
        max_attempts: usize,
    ) -> Vec<SocketAddr> {
        let count = self.endpoints.len();
        if count == 0 {
            return Vec::new();
        }
        self.prune(now);
        self.outliers.sweep(now);
        let attempts = max_attempts.clamp(1, count);
        if self.outliers.ejected() == 0 || self.outliers.ejected() >= count {
            let start = match self.pinned(client, now) {
                Some(index) => index,
                None => {
                    let start = self.next;
                    self.next = (start + 1) % count;
                    start
                }
            };
            return (0..attempts)
                .map(|i| self.endpoints[(start + i) % count])
                .collect();
        }
        // A client pinned to an ejected endpoint starts in the rotation; the endpoint that
        // takes it becomes its pin.
        let pinned = self.pinned(client, now);
        let outliers = &self.outliers;
        let pinned = pinned.filter(|&i| !outliers.is_ejected(&self.endpoints[i]));
        let start = pinned.unwrap_or(self.next);
        let order: Vec<usize> = (0..count)
            .map(|i| (start + i) % count)
            .filter(|&i| !outliers.is_ejected(&self.endpoints[i]))
            .take(attempts)
            .collect();
        if pinned.is_none() {
            // Past the endpoint chosen, not past the ejected ones skipped, or the endpoint
            // after an ejected one would get its turns too.
            if let Some(&first) = order.first() {
                self.next = (first + 1) % count;
            }
        }
        order.into_iter().map(|i| self.endpoints[i]).collect()
    }

    /// A dial to `endpoint` failed with `error`: counted by outlier detection.
    pub(super) fn dial_failed(&mut self, endpoint: SocketAddr, error: &str, now: Instant) {
        if self.contains(endpoint) {
            let count = self.endpoints.len();
            self.outliers.failed(endpoint, error, count, now);
        }
    }

    /// A dial to `endpoint` succeeded (TCP), or it answered (UDP): its count of failures
    /// starts again.
    pub(super) fn succeeded(&mut self, endpoint: SocketAddr) {
        self.outliers.succeeded(endpoint);
    }

    /// The outlier records as of `now`, and the listener's ejections so far.
    pub(super) fn outlier_records(&mut self, now: Instant) -> (Vec<(SocketAddr, Record)>, u64) {
        (self.outliers.records(now), self.outliers.total_ejections())
    }

    pub(super) fn outlier_detection(&self) -> &OutlierDetection {
        self.outliers.config()
    }

    /// Ejections and returns since the last call, to log outside the lock.
    pub(super) fn take_events(&mut self) -> Vec<Event> {
        self.outliers.take_events()
    }

    /// `client` is now served by `endpoint`: with affinity its next connections go there
    /// too, which also moves a client whose pinned endpoint failed.
    pub(super) fn established(&mut self, client: IpAddr, endpoint: SocketAddr, now: Instant) {
        if self.affinity.is_some() {
            self.sticky.insert(
                client,
                Sticky {
                    endpoint,
                    last: now,
                },
            );
        }
    }

    /// No endpoint took `client`: forget its pin so its next try starts afresh.
    pub(super) fn failed(&mut self, client: IpAddr) {
        self.sticky.remove(&client);
    }

    fn pinned(&mut self, client: IpAddr, now: Instant) -> Option<usize> {
        let affinity = self.affinity?;
        let sticky = *self.sticky.get(&client)?;
        let index = self.endpoints.iter().position(|e| *e == sticky.endpoint);
        if now.saturating_duration_since(sticky.last) >= affinity || index.is_none() {
            self.sticky.remove(&client);
            return None;
        }
        index
    }

    fn prune(&mut self, now: Instant) {
        let Some(affinity) = self.affinity else {
            return;
        };
        match self.pruned {
            Some(pruned) if now.saturating_duration_since(pruned) < affinity => {}
            _ => {
                self.sticky
                    .retain(|_, s| now.saturating_duration_since(s.last) < affinity);
                self.pruned = Some(now);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn pinned_clients(&self) -> usize {
        self.sticky.len()
    }
}
