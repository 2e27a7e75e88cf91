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

/// A name of a rule, evaluator or dataset: lowercase letters, digits, '-' and '_', 1 to `max`.
pub(crate) fn check_resource_name(what: &str, name: &str, max: usize) -> crate::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(crate::Error::InvalidRequest(format!(
            "{what}: lowercase letters, digits, '-' and '_', 1 to {max} of them; found {:?}",
            name.chars().take(80).collect::<String>()
        )))
    }
}
