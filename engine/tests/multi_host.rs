//! Property tests of many hosts fed one Git repository: files and the lock arrive on each
//! host in its own order and at its own time, and no host ever serves a service on another
//! service's VIP.

use engine::allocate::Lock;
use engine::config::Config;
use engine::listeners::{Listener, ListenerKey};
use engine::load::{parse_file, ParsedFile, SourceFile};
use engine::observe::Observed;
use engine::pipeline::{run, Outcome};
use engine::plan::Step;
use planners::{apply_changes, Change, Live, NatState};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

const NAMES: &[&str] = &["a", "b", "c", "d", "e", "f", "g", "h"];
const HOSTS: usize = 3;

fn service_file(name: &str) -> SourceFile {
    SourceFile {
        path: format!("{name}.yaml"),
        text: format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector:\n    app: {name}\n  ports:\n    - port: 80\n"
        ),
    }
}

fn parse(names: &BTreeSet<&'static str>) -> Vec<ParsedFile> {
    names.iter().map(|n| parse_file(&service_file(n))).collect()
}

/// What `portald lock` writes for `names`, given the lock before the commit.
fn lock_for(names: &BTreeSet<&'static str>, previous: &Lock) -> Lock {
    let (lock, outcome) = engine::pipeline::relock(
        &parse(names),
        previous,
        &Observed::default(),
        &Config::default(),
    );
    assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
    lock
}

/// One simulated host: its copy of the repository, its kernel, listeners and node state.
#[derive(Clone)]
struct Host {
    files: BTreeSet<&'static str>,
    lock: Lock,
    kernel: NatState,
    listeners: BTreeMap<ListenerKey, Listener>,
    state: Lock,
}

impl Host {
    /// One daemon pass: plan against what is live, apply it to the fake kernel.
    fn reconcile(&mut self, config: &Config) -> Outcome {
        let observed = Observed {
            live: Live {
                owned: self.kernel.clone(),
                ..Live::default()
            },
            listeners: self.listeners.clone(),
            node_state: self.state.clone(),
            ..Observed::default()
        };
        let outcome = run(&parse(&self.files), &self.lock, &observed, config, true);
        self.kernel = apply_changes(&self.kernel, &outcome.plan.kernel_changes());
        self.listeners = outcome.intent.listeners.clone();
        self.state = outcome.allocation.lock.clone();
        outcome
    }

    /// Service → VIP, as the kernel rules say (each rule's comment names its service).
    fn served(&self) -> BTreeMap<String, BTreeSet<Ipv4Addr>> {
        let mut out: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
        for rule in self.kernel.rules.values() {
            let service = rule.comment.as_str().split(':').next().unwrap_or_default();
            out.entry(service.to_string())
                .or_default()
                .insert(rule.key.vip);
        }
        out
    }
}

/// A commit seen by every host: some services deleted, some added, and the new lock.
#[derive(Debug, Clone)]
enum Event {
    Delete(&'static str),
    Add(&'static str),
    Lock,
}

/// The base set, the deleted subset and the added names (disjoint from the base).
fn commit() -> impl Strategy<
    Value = (
        BTreeSet<&'static str>,
        BTreeSet<&'static str>,
        BTreeSet<&'static str>,
    ),
> {
    prop::collection::vec(0..3u8, NAMES.len()).prop_map(|roles| {
        let mut base = BTreeSet::new();
        let mut deleted = BTreeSet::new();
        let mut added = BTreeSet::new();
        for (name, role) in NAMES.iter().zip(roles) {
            match role {
                0 => {
                    base.insert(*name);
                }
                1 => {
                    base.insert(*name);
                    if name.len() == 1 && deleted.len() < 2 {
                        deleted.insert(*name);
                    }
                }
                _ => {
                    added.insert(*name);
                }
            }
        }
        (base, deleted, added)
    })
}

/// Per host: a shuffle key per event and whether a reconcile runs right after it (false:
/// the next event lands within the debounce, one pass sees both).
fn schedules(events: usize) -> impl Strategy<Value = Vec<Vec<(u32, bool)>>> {
    prop::collection::vec(
        prop::collection::vec((any::<u32>(), any::<bool>()), events),
        HOSTS,
    )
}

fn ordered(events: &[Event], schedule: &[(u32, bool)]) -> Vec<(Event, bool)> {
    let mut keyed: Vec<(u32, usize, bool)> = schedule
        .iter()
        .enumerate()
        .map(|(i, (k, r))| (*k, i, *r))
        .collect();
    keyed.sort();
    keyed
        .into_iter()
        .map(|(_, i, r)| (events[i].clone(), r))
        .collect()
}

/// Every host in steady state on `base` with `lock`.
fn steady(base: &BTreeSet<&'static str>, lock: &Lock, config: &Config) -> Vec<Host> {
    let mut host = Host {
        files: base.clone(),
        lock: lock.clone(),
        kernel: NatState::default(),
        listeners: BTreeMap::new(),
        state: Lock::default(),
    };
    host.reconcile(config);
    vec![host; HOSTS]
}

fn events_of(deleted: &BTreeSet<&'static str>, added: &BTreeSet<&'static str>) -> Vec<Event> {
    let mut events: Vec<Event> = deleted.iter().map(|n| Event::Delete(n)).collect();
    events.extend(added.iter().map(|n| Event::Add(n)));
    events.push(Event::Lock);
    events
}

fn happen(host: &mut Host, event: &Event, new_lock: &Lock) {
    match event {
        Event::Delete(name) => {
            host.files.remove(name);
        }
        Event::Add(name) => {
            host.files.insert(name);
        }
        Event::Lock => host.lock = new_lock.clone(),
    }
}

/// No `Add`/`Replace` of a rule on a VIP comes before the removal of another service's
/// rule on that VIP.
fn removals_first(steps: &[Step]) -> Result<(), TestCaseError> {
    let owner = |r: &planners::PortalRule| {
        r.comment
            .as_str()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string()
    };
    for (i, step) in steps.iter().enumerate() {
        let Step::Kernel(Change::RemoveRule { rule: gone }) = step else {
            continue;
        };
        for earlier in &steps[..i] {
            let new = match earlier {
                Step::Kernel(Change::AddRule { rule }) => rule,
                Step::Kernel(Change::ReplaceRule { new, .. }) => new,
                _ => continue,
            };
            prop_assert!(
                new.key.vip != gone.key.vip || owner(new) == owner(gone),
                "{} took {} before {} left it",
                owner(new),
                new.key.vip,
                owner(gone)
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn with_require_lock_every_host_serves_a_service_on_its_locked_vip_or_not_at_all(
        (base, deleted, added) in commit(),
        plan in schedules(NAMES.len() + 1),
    ) {
        let config = Config { require_lock: true, ..Config::default() };
        let old_lock = lock_for(&base, &Lock::default());
        let after: BTreeSet<&'static str> = base.difference(&deleted).chain(&added).copied().collect();
        let new_lock = lock_for(&after, &old_lock);
        // Each service's one address in the repository's history (entries never move).
        let mut truth: BTreeMap<String, Ipv4Addr> = old_lock.vips.clone();
        for (k, ip) in &new_lock.vips {
            prop_assert!(truth.get(k).is_none_or(|old| old == ip), "the lock moved {k}");
            truth.insert(k.clone(), *ip);
        }
        let events = events_of(&deleted, &added);
        let mut hosts = steady(&base, &old_lock, &config);
        for (h, host) in hosts.iter_mut().enumerate() {
            let schedule = &plan[h][..events.len()];
            for (event, reconcile) in ordered(&events, schedule) {
                happen(host, &event, &new_lock);
                if !reconcile {
                    continue;
                }
                let outcome = host.reconcile(&config);
                prop_assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
                removals_first(&outcome.plan.steps)?;
                for (service, vips) in host.served() {
                    let locked = host.lock.vips.get(&service);
                    prop_assert_eq!(
                        vips.iter().collect::<Vec<_>>(),
                        locked.into_iter().collect::<Vec<_>>(),
                        "host {} serves {} off its lock", h, &service
                    );
                    prop_assert_eq!(Some(vips.iter().next().unwrap()), truth.get(&service));
                }
            }
            host.reconcile(&config);
            // Everything arrived: the host serves exactly the lock.
            let served: BTreeMap<String, Ipv4Addr> = host
                .served()
                .into_iter()
                .map(|(s, v)| (s, *v.iter().next().unwrap()))
                .collect();
            prop_assert_eq!(&served, &new_lock.vips, "host {}", h);
        }
    }

    #[test]
    fn without_require_lock_every_host_ends_on_the_lock_whatever_it_chose_before(
        (base, deleted, added) in commit(),
        plan in schedules(NAMES.len() + 1),
    ) {
        let config = Config::default();
        let old_lock = lock_for(&base, &Lock::default());
        let after: BTreeSet<&'static str> = base.difference(&deleted).chain(&added).copied().collect();
        let new_lock = lock_for(&after, &old_lock);
        let events = events_of(&deleted, &added);
        let mut hosts = steady(&base, &old_lock, &config);
        for (h, host) in hosts.iter_mut().enumerate() {
            let schedule = &plan[h][..events.len()];
            for (event, reconcile) in ordered(&events, schedule) {
                happen(host, &event, &new_lock);
                if reconcile {
                    let outcome = host.reconcile(&config);
                    prop_assert!(!outcome.has_errors(), "{:?}", outcome.diagnostics);
                    removals_first(&outcome.plan.steps)?;
                    // A service the host's lock names is served there and nowhere else.
                    for (service, vips) in host.served() {
                        if let Some(locked) = host.lock.vips.get(&service) {
                            prop_assert_eq!(vips.iter().collect::<Vec<_>>(), vec![locked]);
                        }
                    }
                }
            }
            let last = host.reconcile(&config);
            let served: BTreeMap<String, Ipv4Addr> = host
                .served()
                .into_iter()
                .map(|(s, v)| (s, *v.iter().next().unwrap()))
                .collect();
            prop_assert_eq!(&served, &new_lock.vips, "host {}", h);
            // And it stays there: the next pass changes nothing.
            prop_assert!(host.reconcile(&config).plan.is_empty(), "{:?}", last.plan.summary);
        }
    }
}
