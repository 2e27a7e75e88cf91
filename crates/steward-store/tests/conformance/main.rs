//! The store conformance suite: the same assertions against SQLite and PostgreSQL, each test on
//! a fresh database (a new SQLite file; a new PostgreSQL schema). One module per aggregate, each
//! naming its tests once in `on_both_backends!`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod support;

mod agents;
mod approvals;
mod audit;
mod backends;
mod budgets;
mod delegations;
mod evaluation;
mod gateway_calls;
mod journal;
mod limits;
mod mcp_servers;
mod mcp_tasks;
mod memories;
mod merges;
mod openapi_apis;
mod policies;
mod responses;
mod runs;
mod schedules;
mod secrets;
mod spans;
mod supervisors;
mod tasks;
mod workspaces;
