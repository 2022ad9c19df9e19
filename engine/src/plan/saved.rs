//! A saved plan is checked, not trusted: bound to the inputs it was made from, its batch what
//! portald renders for its steps, and every removal on something portald owns now.

use super::{Plan, Step};
use crate::config::Backend;
use crate::load::hex;
use crate::observe::companion::Companion;
use crate::observe::dialect;
use planners::{Change, Live};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// What a plan was made from, as digests. `apply PLANFILE` refuses a plan whose digests are
/// not those of the daemon's own directory and allocation record now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Inputs {
    /// [`crate::load::digest_files`] of the services directory: SHA-256, hex.
    pub services: String,
    /// [`lock_digest`] of the allocation record the plan used.
    pub lock: String,
}

/// What `lock` says when there is no allocation record file (an empty lock).
pub const NO_LOCK: &str = "none";

/// SHA-256 (hex) of the allocation record file's bytes, or [`NO_LOCK`] when it does not
/// exist. Errors: the file exists but cannot be read.
pub fn lock_digest(path: &Path) -> std::io::Result<String> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(hex(&Sha256::digest(&bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NO_LOCK.to_string()),
        Err(e) => Err(e),
    }
}

/// Why a saved plan is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SavedPlanError {
    #[error("the plan states no digest of the services and lock it was made from: write it again with this portald's `portald plan --out`")]
    Unbound,
    #[error("the plan was made from other services than the directory this daemon serves holds now (services digest {plan}, here {here}): run `portald plan` again")]
    OtherServices { plan: String, here: String },
    #[error("the plan was made with another allocation record than this daemon's lock (lock digest {plan}, here {here}): run `portald plan` again")]
    OtherLock { plan: String, here: String },
    #[error("the plan's {backend} batch is not what portald renders for the plan's steps: the file was edited")]
    BatchEdited { backend: Backend },
    #[error("step {index} of the plan for {backend} removes {what}, which is not portald's in the kernel now: the file was edited, or the state changed")]
    NotOwned {
        backend: Backend,
        index: usize,
        what: String,
    },
    #[error(
        "the plan retires what portald owns through {backend}, but portald owns nothing there now"
    )]
    NothingToRetire { backend: Backend },
    #[error("the plan changes portald's chains in an iptables flavour that is not beside the daemon's backend now: the file was edited, or the state changed")]
    NoSuchFlavour,
}

/// Refuses a plan made from other inputs than `here` (the daemon's own, digested now).
pub fn check_inputs(plan: &Plan, here: &Inputs) -> Result<(), SavedPlanError> {
    let Some(made) = &plan.inputs else {
        return Err(SavedPlanError::Unbound);
    };
    if made.services != here.services {
        return Err(SavedPlanError::OtherServices {
            plan: made.services.clone(),
            here: here.services.clone(),
        });
    }
    if made.lock != here.lock {
        return Err(SavedPlanError::OtherLock {
            plan: made.lock.clone(),
            here: here.lock.clone(),
        });
    }
    Ok(())
}

/// Checks a plan (and the plan retiring the other backend, if it has one) against what
/// portald owns now: `live` through the plan's backend, `other` through the other one. The
/// batch must be byte for byte what the dialect renders for the plan's kernel steps (so only
/// portald's renderer writes what reaches the kernel), and every step that removes or
/// replaces something must name a rule, chain or stray that portald sees in its own space now
/// (the free text of a stray could otherwise name anything). Additions are structured and
/// rendered into portald's own chains or table only.
pub fn verify(
    plan: &Plan,
    live: &Live,
    other: Option<&(Backend, Live)>,
) -> Result<(), SavedPlanError> {
    verify_one(plan, live)?;
    if let Some(retire) = &plan.retire {
        match other {
            Some((backend, other_live)) if *backend == retire.backend => {
                // Only two backends: what the retiring plan would retire in turn is not there.
                if let Some(again) = &retire.retire {
                    return Err(SavedPlanError::NothingToRetire {
                        backend: again.backend,
                    });
                }
                verify_one(retire, other_live)?;
            }
            _ => {
                return Err(SavedPlanError::NothingToRetire {
                    backend: retire.backend,
                })
            }
        }
    }
    Ok(())
}

/// Checks a plan's companion plans (see [`crate::observe::companion`]) like [`verify`]
/// checks the plan: each against what portald owns now in its flavour, read in
/// `companions`; a flavour that was not read has nothing of portald's to change.
pub fn verify_companions(plan: &Plan, companions: &[Companion]) -> Result<(), SavedPlanError> {
    for beside in &plan.companions {
        let live = companions
            .iter()
            .find(|c| Some(c.flavour) == beside.flavour)
            .map(|c| &c.live)
            .ok_or(SavedPlanError::NoSuchFlavour)?;
        if !beside.companions.is_empty() || beside.retire.is_some() {
            return Err(SavedPlanError::NoSuchFlavour);
        }
        verify_one(beside, live)?;
    }
    Ok(())
}

fn verify_one(plan: &Plan, live: &Live) -> Result<(), SavedPlanError> {
    if dialect(plan.backend).render_batch(&plan.kernel_changes()) != plan.batch {
        return Err(SavedPlanError::BatchEdited {
            backend: plan.backend,
        });
    }
    for (index, step) in plan.steps.iter().enumerate() {
        let Step::Kernel(change) = step else {
            continue;
        };
        let what = match change {
            Change::RemoveStray { stray } => (!live.stray.contains(stray)).then(|| {
                // Debug quoting: the text may hold anything, newlines included.
                format!("stray {:?} in {:?}", stray.text, stray.chain)
            }),
            Change::RemoveRule { rule } | Change::ReplaceRule { old: rule, .. } => {
                (live.owned.rules.get(&rule.key) != Some(rule))
                    .then(|| format!("rule `{}` ({})", rule.key, rule.comment))
            }
            Change::RemoveScaffold { scaffold } => {
                (!live.owned.scaffold.contains(scaffold)).then(|| format!("{scaffold:?}"))
            }
            Change::AddRule { .. } | Change::AddScaffold { .. } => None,
        };
        if let Some(what) = what {
            return Err(SavedPlanError::NotOwned {
                backend: plan.backend,
                index,
                what,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocate::Lock;
    use crate::config::Config;
    use crate::load::{parse_file, SourceFile};
    use crate::observe::Observed;
    use planners::StrayRule;

    /// A plan that adds one service to an empty kernel, through `backend`.
    fn fresh_plan(backend: Backend) -> Plan {
        let files = vec![parse_file(&SourceFile {
            path: "web.yaml".into(),
            text: "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n"
                .into(),
        })];
        let config = Config {
            backend,
            ..Config::default()
        };
        let outcome = crate::pipeline::run(
            &files,
            &Lock::default(),
            &Observed::default(),
            &config,
            true,
        );
        assert!(!outcome.plan.batch.is_empty());
        outcome.plan
    }

    #[test]
    fn an_untampered_plan_passes() {
        for backend in [Backend::Iptables, Backend::Nftables] {
            assert_eq!(verify(&fresh_plan(backend), &Live::default(), None), Ok(()));
        }
    }

    #[test]
    fn an_nft_batch_that_adds_a_foreign_table_is_refused() {
        let mut plan = fresh_plan(Backend::Nftables);
        plan.batch.push_str("add table ip evil\n");
        assert_eq!(
            verify(&plan, &Live::default(), None),
            Err(SavedPlanError::BatchEdited {
                backend: Backend::Nftables
            })
        );
    }

    #[test]
    fn an_iptables_batch_that_adds_a_foreign_chain_is_refused() {
        let mut plan = fresh_plan(Backend::Iptables);
        plan.batch = plan.batch.replacen("*nat\n", "*nat\n:EVIL - [0:0]\n", 1);
        assert!(plan.batch.contains(":EVIL"));
        assert_eq!(
            verify(&plan, &Live::default(), None),
            Err(SavedPlanError::BatchEdited {
                backend: Backend::Iptables
            })
        );
    }

    #[test]
    fn a_stray_removal_portald_does_not_see_is_refused_even_with_a_matching_batch() {
        for backend in [Backend::Iptables, Backend::Nftables] {
            let mut plan = fresh_plan(backend);
            // A forger who renders the batch for the edited steps too.
            plan.steps.insert(
                0,
                Step::Kernel(Change::RemoveStray {
                    stray: StrayRule {
                        chain: "INPUT".into(),
                        text: "-A INPUT -j ACCEPT".into(),
                    },
                }),
            );
            plan.batch = dialect(backend).render_batch(&plan.kernel_changes());
            let refused = verify(&plan, &Live::default(), None);
            assert!(
                matches!(refused, Err(SavedPlanError::NotOwned { index: 0, .. })),
                "{backend}: {refused:?}"
            );
            // The same stray, seen by portald in its own space, may go.
            let live = Live {
                stray: vec![StrayRule {
                    chain: "INPUT".into(),
                    text: "-A INPUT -j ACCEPT".into(),
                }],
                ..Live::default()
            };
            assert_eq!(verify(&plan, &live, None), Ok(()));
        }
    }

    #[test]
    fn removing_a_rule_portald_does_not_own_now_is_refused() {
        let plan = fresh_plan(Backend::Iptables);
        let Some(Change::AddRule { rule }) = plan
            .kernel_changes()
            .into_iter()
            .find(|c| matches!(c, Change::AddRule { .. }))
        else {
            panic!("the plan adds a rule");
        };
        let mut forged = plan.clone();
        forged.steps = vec![Step::Kernel(Change::RemoveRule { rule: rule.clone() })];
        forged.batch = dialect(Backend::Iptables).render_batch(&forged.kernel_changes());
        assert!(matches!(
            verify(&forged, &Live::default(), None),
            Err(SavedPlanError::NotOwned { .. })
        ));
    }

    #[test]
    fn a_plan_is_bound_to_the_services_and_lock_it_was_made_from() {
        let here = Inputs {
            services: "aa".into(),
            lock: NO_LOCK.into(),
        };
        let mut plan = fresh_plan(Backend::Iptables);
        assert_eq!(check_inputs(&plan, &here), Err(SavedPlanError::Unbound));
        plan.inputs = Some(here.clone());
        assert_eq!(check_inputs(&plan, &here), Ok(()));
        plan.inputs = Some(Inputs {
            services: "bb".into(),
            ..here.clone()
        });
        assert!(matches!(
            check_inputs(&plan, &here),
            Err(SavedPlanError::OtherServices { .. })
        ));
        plan.inputs = Some(Inputs {
            lock: "cc".into(),
            ..here.clone()
        });
        assert!(matches!(
            check_inputs(&plan, &here),
            Err(SavedPlanError::OtherLock { .. })
        ));
    }

    #[test]
    fn the_services_digest_follows_every_file_and_its_path() {
        let file = |path: &str, text: &str| SourceFile {
            path: path.into(),
            text: text.into(),
        };
        let one = crate::load::digest_files(&[file("a.yaml", "x"), file("b.yaml", "y")], &[]);
        let same = crate::load::digest_files(&[file("b.yaml", "y"), file("a.yaml", "x")], &[]);
        assert_eq!(one, same, "the order files are read in does not matter");
        for other in [
            vec![file("a.yaml", "x"), file("b.yaml", "z")],
            vec![file("a.yaml", "x"), file("c.yaml", "y")],
            vec![file("a.yaml", "x")],
            vec![file("a.yaml", "xb.yaml"), file("", "y")],
        ] {
            assert_ne!(crate::load::digest_files(&other, &[]), one, "{other:?}");
        }
    }
}
