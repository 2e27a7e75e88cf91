//! Steward's integration tests, as one binary (built and linked once): each module drives the
//! real `steward` binary, or the engine in process, over real SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
mod common;

mod admin;
mod alerts;
mod api;
mod approvals;
mod audit;
mod budgets;
mod cache;
mod cli;
mod console;
mod crash;
mod delegation;
mod evaluation;
mod fallbacks;
mod fork;
mod full_disk;
mod gateway;
mod identities;
mod journal_compat;
mod journal_complete;
mod limits;
mod mcp;
mod mcp_http;
mod memory;
mod merge_queue;
mod new_tools;
mod nodes;
mod openapi_tools;
mod policy;
mod queues;
mod recovery;
mod sandbox;
mod spend;
mod stall;
mod supervisors;
mod telemetry;
mod tool_limits;
mod tool_search;
mod traces;
mod vault;
mod workspaces;
