//! The engine's resources as the management API sees them, one small handle each, got from
//! `Engine` (`engine.secrets().put(..)`, `engine.sandboxes().exec(..)`): each route module
//! of the API maps onto one of them.

pub mod agents;
pub mod alerts;
pub mod approvals;
pub mod audit;
pub mod budgets;
pub mod delegations;
pub mod evaluators;
pub mod experiments;
pub mod gateway;
pub mod identities;
pub mod keys;
pub mod mcp_servers;
pub mod memories;
pub mod openapis;
pub mod policies;
pub mod responses;
pub mod runs;
pub mod sandboxes;
pub mod secrets;
pub mod tools;
pub mod traces;
