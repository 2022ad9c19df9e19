//! portald's engine: load → validate → allocate → compile → observe → diff → plan → apply.

pub mod allocate;
pub mod apply;
pub mod catalog;
pub mod compile;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod diagnostics;
pub mod diff;
pub mod endpoints;
pub mod escape;
pub mod exec;
pub mod health;
pub mod load;
pub mod model;
pub mod netns;
pub mod observe;
pub mod pipeline;
pub mod plan;
pub mod safe_write;
