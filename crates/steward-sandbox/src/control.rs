//! A handle on an exec while it runs: cancel it, pause and resume it (the cgroup freezer: its
//! processes keep their state but get no CPU, and its wall-clock limit stops counting), list
//! its processes and signal one of them. Each exec has its own process tree, so these act on
//! the one exec the handle was given to.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::cgroup::Cgroup;
use crate::{Error, Result};

#[derive(Default)]
pub struct Control {
    state: Mutex<State>,
    /// Told when the exec is cancelled (one waiter: the exec).
    pub(crate) changed: tokio::sync::Notify,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("paused", &self.is_paused())
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

#[derive(Default)]
struct State {
    /// The exec's group while it runs.
    group: Option<Arc<Cgroup>>,
    cancelled: bool,
    paused_since: Option<Instant>,
    paused_total: Duration,
}

/// A process in a sandbox, as its own pid namespace numbers it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    /// `R` running, `S` sleeping, `D` waiting on I/O, `T` stopped, `Z` zombie (the kernel's
    /// letters).
    pub state: String,
    pub command: Vec<String>,
}

impl Control {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by the exec once its group exists; a pause asked for before applies now.
    pub(crate) fn attach(&self, group: Arc<Cgroup>) -> Result<()> {
        let mut s = self.state();
        if s.paused_since.is_some() {
            group.freeze(true)?;
        }
        s.group = Some(group);
        Ok(())
    }

    pub(crate) fn detach(&self) {
        self.state().group = None;
    }

    /// Ends the exec: its whole tree is killed and it reports `cancelled`.
    pub fn cancel(&self) {
        self.state().cancelled = true;
        self.changed.notify_one();
    }

    pub fn is_cancelled(&self) -> bool {
        self.state().cancelled
    }

    /// Freezes the exec's processes; its wall-clock limit stops counting until [`Self::resume`].
    pub fn pause(&self) -> Result<()> {
        let mut s = self.state();
        if s.paused_since.is_some() {
            return Ok(());
        }
        if let Some(g) = &s.group {
            g.freeze(true)?;
        }
        s.paused_since = Some(Instant::now());
        Ok(())
    }

    pub fn resume(&self) -> Result<()> {
        let mut s = self.state();
        let Some(since) = s.paused_since.take() else {
            return Ok(());
        };
        s.paused_total += since.elapsed();
        if let Some(g) = &s.group {
            g.freeze(false)?;
        }
        Ok(())
    }

    pub fn is_paused(&self) -> bool {
        self.state().paused_since.is_some()
    }

    /// How long the exec has been paused, all told (the pause in progress included).
    pub(crate) fn paused_for(&self) -> Duration {
        let s = self.state();
        s.paused_total + s.paused_since.map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// The command's processes (the sandbox's own helpers left out), by their pids inside.
    pub fn processes(&self) -> Vec<Process> {
        let Some(group) = self.state().group.clone() else {
            return Vec::new();
        };
        let found: Vec<(i32, Inside)> = group
            .pids()
            .into_iter()
            .filter_map(|host| Some((host, inside(host)?)))
            .collect();
        let inner_of = |host: i32| {
            found
                .iter()
                .find(|(h, _)| *h == host)
                .map_or(0, |(_, i)| i.pid)
        };
        found
            .iter()
            .map(|(_, i)| Process {
                pid: i.pid,
                ppid: inner_of(i.host_ppid),
                state: i.state.clone(),
                command: i.command.clone(),
            })
            .collect()
    }

    /// Sends `signal` to the process numbered `pid` inside the sandbox.
    pub fn kill(&self, pid: i32, signal: i32) -> Result<()> {
        let sig = nix::sys::signal::Signal::try_from(signal)
            .map_err(|_| Error::Setup(format!("signal {signal}: not a signal")))?;
        let Some(group) = self.state().group.clone() else {
            return Err(Error::Setup("nothing is running in this sandbox".into()));
        };
        let host = group
            .pids()
            .into_iter()
            .find(|h| inside(*h).is_some_and(|i| i.pid == pid))
            .ok_or_else(|| Error::Setup(format!("no process {pid} in this sandbox")))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(host), sig)
            .map_err(|e| Error::Setup(format!("process {pid}: {e}")))
    }
}

struct Inside {
    pid: i32,
    host_ppid: i32,
    state: String,
    command: Vec<String>,
}

/// A host process as seen from inside its sandbox; `None` for the helper processes (outside
/// the sandbox's pid namespace, or the sandbox's own init and relay) and for processes gone.
fn inside(host: i32) -> Option<Inside> {
    let status = std::fs::read_to_string(format!("/proc/{host}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let nspids: Vec<i32> = field("NSpid:")?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if nspids.len() < 2 {
        return None;
    }
    let command: Vec<String> = std::fs::read(format!("/proc/{host}/cmdline"))
        .ok()?
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if command.get(1).is_some_and(|a| a == crate::INIT_ARG) {
        return None;
    }
    Some(Inside {
        pid: *nspids.last()?,
        host_ppid: field("PPid:")?.parse().ok()?,
        state: field("State:")?.chars().next()?.to_string(),
        command,
    })
}
