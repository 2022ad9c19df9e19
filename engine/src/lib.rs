//! portald's engine: load → validate → allocate → compile → observe → diff → plan → apply.
//!
//! The control plane: the pure stages (`load` … `plan`, over the `model` and `listeners`
//! types) and the few modules that touch the world (`exec`, the one process seam; `observe`;
//! `apply`; the `daemon` with its reconciler). The userspace proxy is the `dataplane` crate,
//! which the reconciler alone drives; the kernel dialects are the `planners` crate. Neither
//! the CLI nor the test bed is a dependency.

pub mod allocate;
pub mod apply;
pub mod catalog;
pub mod compile;
pub mod config;
pub mod daemon;
pub mod diagnostics;
pub mod diff;
pub mod endpoints;
pub mod escape;
pub mod exec;
pub mod health;
pub mod listeners;
pub mod load;
/// Typed log fields, shared with the data plane (the lowest crate that logs).
pub use dataplane::log_fields;
pub mod model;
pub mod observe;
pub mod pipeline;
pub mod plan;
pub mod safe_write;
