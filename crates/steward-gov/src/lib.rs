//! Governance: who may do what, and the record that proves what was done. This crate holds the
//! tamper-evident audit log's signing and verification (the log's rows and Merkle head live in
//! the store); identities, delegation and policy build on it.

pub mod audit_key;
pub mod checkpointer;
pub mod delegation;
pub mod export;
pub mod policy;
pub mod proof;
pub mod record;
pub mod vault;
pub mod verify;

pub use audit_key::AuditKey;
pub use delegation::{Delegator, Scope};
pub use policy::{Decision, Policies, PolicyError, Query};
pub use record::{AuditEvent, AuditRecord};
pub use verify::{verify_log, Problem, Report};
