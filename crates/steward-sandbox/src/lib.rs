//! Isolated execution for agents' code, from kernel primitives. A command runs in its own user,
//! mount, pid, network, ipc and uts namespaces, on a minimal root (the host's `/usr` and
//! friends read-only, a private writable workspace, private `/tmp` and `/dev`) entered with
//! `pivot_root`, with every capability dropped, `no_new_privs`, a seccomp filter denying what
//! sandboxed code never needs, cgroup limits on memory, processes and CPU, and a wall-clock
//! timeout that kills the whole tree. [`probe`] reports which of these the host enforces.
//!
//! The isolation is set up by a helper process, told what to build on its standard input
//! ([`init::main`]), because namespaces, mounts and `fork` need a single-threaded process, which
//! the server is not. Helpers are forked by a [`zygote`] — the `steward` binary executed once as
//! `steward __sandbox-init zygote` — so a sandbox does not pay for executing the binary anew. This crate knows nothing of the store or
//! the engine: it runs a command and reports what happened.

pub mod cgroup;
mod control;
pub mod egress;
mod exec;
pub mod init;
pub mod layers;
mod probe;
mod quota;
mod seccomp;
pub mod zygote;

pub use control::{Control, Process};
pub use exec::{
    Egress, Ended, ExecRequest, ExecResult, Limits, Options, Output, Sandboxes, Workspace,
    DEFAULT_HOST_UID,
};
pub use layers::Layered;
pub use probe::{probe, Layers};

/// The argument that makes the `steward` binary act as the sandbox helper.
pub const INIT_ARG: &str = "__sandbox-init";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sandbox: {0}")]
    Setup(String),
    #[error("sandbox: a required isolation layer is missing on this host: {0}")]
    Missing(String),
    #[error("sandbox: {0}")]
    Io(#[from] std::io::Error),
    /// Every slot for a running command is taken: try again later.
    #[error("sandbox: {0}")]
    Busy(String),
    /// No such sandbox or snapshot.
    #[error("sandbox: {0}")]
    NotFound(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
