//! Cgroup limits for one sandbox, on cgroup v2 (one unified tree) or v1 (a tree per
//! controller): memory, processes and CPU, plus what the sandbox used and whether the kernel
//! killed it for memory. Sandboxes' groups are made below the group this process is in.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Where sandboxes' groups go.
#[derive(Clone, Debug)]
pub struct CgroupRoot {
    pub version: Version,
    /// v2: the one parent directory; v1: the parent per controller (`memory`, `pids`, `cpu`,
    /// `cpuacct`, `freezer`).
    parents: Vec<(String, PathBuf)>,
}

const FS: &str = "/sys/fs/cgroup";

impl CgroupRoot {
    /// Finds this process's cgroups and makes `steward-sandboxes` below them; `None` when
    /// there is no writable cgroup tree with the memory and pids controllers.
    pub fn detect() -> Option<CgroupRoot> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let v2_controllers = std::fs::read_to_string(Path::new(FS).join("cgroup.controllers"));
        if let Ok(c) = v2_controllers {
            let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
            let parent = Path::new(FS)
                .join(path.trim_start_matches('/'))
                .join("steward-sandboxes");
            std::fs::create_dir_all(&parent).ok()?;
            // Controllers must be enabled for the children of the group that holds them.
            let wanted = ["memory", "pids", "cpu"];
            for dir in [parent.parent()?, &parent] {
                let enable: Vec<String> = wanted
                    .iter()
                    .filter(|w| c.split_whitespace().any(|x| x == **w))
                    .map(|w| format!("+{w}"))
                    .collect();
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), enable.join(" "));
            }
            let enabled =
                std::fs::read_to_string(parent.join("cgroup.subtree_control")).unwrap_or_default();
            if !(enabled.contains("memory") && enabled.contains("pids")) {
                return None;
            }
            return Some(CgroupRoot {
                version: Version::V2,
                parents: vec![("unified".into(), parent)],
            });
        }
        let mut parents = Vec::new();
        for controller in ["memory", "pids", "cpu", "cpuacct", "freezer"] {
            let path = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                names
                    .split(',')
                    .any(|n| n == controller)
                    .then(|| path.to_string())
            });
            let Some(path) = path else { continue };
            let parent = Path::new(FS)
                .join(controller)
                .join(path.trim_start_matches('/'))
                .join("steward-sandboxes");
            if std::fs::create_dir_all(&parent).is_ok() {
                parents.push((controller.to_string(), parent));
            }
        }
        let has = |c: &str| parents.iter().any(|(n, _)| n == c);
        (has("memory") && has("pids")).then_some(CgroupRoot {
            version: Version::V1,
            parents,
        })
    }

    /// A group of its own below this one, named `name`, for one server's sandboxes.
    pub fn scoped(&self, name: &str) -> Result<CgroupRoot> {
        let mut parents = Vec::new();
        for (controller, parent) in &self.parents {
            let dir = parent.join(name);
            std::fs::create_dir_all(&dir)?;
            if self.version == Version::V2 {
                let enable: Vec<String> =
                    self.controllers().iter().map(|c| format!("+{c}")).collect();
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), enable.join(" "));
            }
            parents.push((controller.clone(), dir));
        }
        Ok(CgroupRoot {
            version: self.version.clone(),
            parents,
        })
    }

    /// Kills and removes every sandbox group below this one; returns how many there were.
    pub fn sweep(&self) -> usize {
        self.sweep_named("sbx-")
    }

    /// The groups directly below this one whose names start with `prefix`.
    pub fn children(&self, prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (_, parent) in &self.parents {
            for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with(prefix) && e.path().is_dir() && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        names
    }

    /// Removes this group itself, once nothing is below it (a scope whose owner is gone).
    pub fn remove_empty(&self) {
        for (_, d) in &self.parents {
            let _ = std::fs::remove_dir(d);
        }
    }

    /// Kills and removes every group below this one whose name starts with `prefix`; returns
    /// how many there were.
    pub fn sweep_named(&self, prefix: &str) -> usize {
        let names = self.children(prefix);
        for name in &names {
            let g = Cgroup {
                version: self.version.clone(),
                dirs: self
                    .parents
                    .iter()
                    .map(|(c, p)| (c.clone(), p.join(name)))
                    .filter(|(_, d)| d.is_dir())
                    .collect(),
            };
            g.remove();
        }
        names.len()
    }

    /// Caps the processes and memory of every sandbox below this group, all together.
    pub fn limit_total(&self, pids: Option<u64>, memory_bytes: Option<u64>) -> Result<()> {
        let dir = |c: &str| {
            self.parents
                .iter()
                .find(|(n, _)| n == c || n == "unified")
                .map(|(_, d)| d.clone())
        };
        let (pids_file, memory_file) = match self.version {
            Version::V2 => ("pids.max", "memory.max"),
            Version::V1 => ("pids.max", "memory.limit_in_bytes"),
        };
        let value =
            |v: Option<u64>, unlimited: &str| v.map_or(unlimited.to_string(), |v| v.to_string());
        if let Some(d) = dir("pids") {
            write(&d, pids_file, value(pids, "max"))?;
        }
        if let Some(d) = dir("memory") {
            let unlimited = if self.version == Version::V2 {
                "max"
            } else {
                "-1"
            };
            write(&d, memory_file, value(memory_bytes, unlimited))?;
        }
        Ok(())
    }

    pub fn controllers(&self) -> Vec<String> {
        match self.version {
            Version::V2 => {
                let dir = &self.parents[0].1;
                std::fs::read_to_string(dir.join("cgroup.subtree_control"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            }
            Version::V1 => self.parents.iter().map(|(n, _)| n.clone()).collect(),
        }
    }

    /// A group for one sandbox, with its limits written.
    pub fn create(&self, name: &str, limits: &crate::Limits) -> Result<Cgroup> {
        let mut dirs = Vec::new();
        for (controller, parent) in &self.parents {
            let dir = parent.join(name);
            std::fs::create_dir_all(&dir)?;
            dirs.push((controller.clone(), dir));
        }
        let g = Cgroup {
            version: self.version.clone(),
            dirs,
        };
        g.limit(limits)?;
        Ok(g)
    }
}

/// One sandbox's group.
#[derive(Debug)]
pub struct Cgroup {
    version: Version,
    dirs: Vec<(String, PathBuf)>,
}

/// What a sandbox used.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub cpu_ns: u64,
    pub peak_memory_bytes: u64,
    pub oom_killed: bool,
}

fn write(dir: &Path, file: &str, value: impl ToString) -> Result<()> {
    std::fs::write(dir.join(file), value.to_string())
        .map_err(|e| Error::Setup(format!("{}: {e}", dir.join(file).display())))
}

fn read_u64(path: PathBuf) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A `key value` line of a flat-keyed cgroup file.
fn keyed(path: PathBuf, key: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

impl Cgroup {
    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| c == controller || c == "unified")
            .map(|(_, d)| d.as_path())
    }

    fn limit(&self, l: &crate::Limits) -> Result<()> {
        match self.version {
            Version::V2 => {
                let d = &self.dirs[0].1;
                write(d, "memory.max", l.memory_bytes)?;
                let _ = write(d, "memory.swap.max", 0);
                write(d, "pids.max", l.pids)?;
                if let Some(milli) = l.cpu_millicores {
                    let _ = write(d, "cpu.max", format!("{} 100000", milli * 100));
                }
            }
            Version::V1 => {
                if let Some(d) = self.dir("memory") {
                    write(d, "memory.limit_in_bytes", l.memory_bytes)?;
                    // Without swap accounting this file is absent; memory.limit still holds.
                    let _ = write(d, "memory.memsw.limit_in_bytes", l.memory_bytes);
                }
                if let Some(d) = self.dir("pids") {
                    write(d, "pids.max", l.pids)?;
                }
                if let (Some(d), Some(milli)) = (self.dir("cpu"), l.cpu_millicores) {
                    write(d, "cpu.cfs_period_us", 100_000)?;
                    write(d, "cpu.cfs_quota_us", milli * 100)?;
                }
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a process writes itself into to join every controller.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|(_, d)| d.join("cgroup.procs"))
            .collect()
    }

    /// Host pids of every process in the group.
    pub fn pids(&self) -> Vec<i32> {
        let Some(d) = self.dir("pids").or_else(|| self.dir("memory")) else {
            return Vec::new();
        };
        std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Stops (`true`) or restarts every process in the group: they keep their memory and
    /// files but get no CPU, whatever signals they are sent, until thawed.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        match self.version {
            Version::V2 => write(&self.dirs[0].1, "cgroup.freeze", u8::from(frozen)),
            Version::V1 => {
                let d = self.dir("freezer").ok_or_else(|| {
                    Error::Missing("the freezer cgroup controller (pause needs it)".into())
                })?;
                write(d, "freezer.state", if frozen { "FROZEN" } else { "THAWED" })
            }
        }
    }

    /// Kills every process in the group, however many it forks meanwhile.
    pub fn kill_all(&self) {
        // Frozen processes cannot act on a kill until thawed.
        let _ = self.freeze(false);
        if self.version == Version::V2 && write(&self.dirs[0].1, "cgroup.kill", 1).is_ok() {
            return;
        }
        for _ in 0..100 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    pub fn usage(&self) -> Usage {
        match self.version {
            Version::V2 => {
                let d = &self.dirs[0].1;
                Usage {
                    cpu_ns: keyed(d.join("cpu.stat"), "usage_usec").unwrap_or(0) * 1000,
                    peak_memory_bytes: read_u64(d.join("memory.peak")).unwrap_or(0),
                    oom_killed: keyed(d.join("memory.events"), "oom_kill").unwrap_or(0) > 0,
                }
            }
            Version::V1 => Usage {
                cpu_ns: self
                    .dir("cpuacct")
                    .and_then(|d| read_u64(d.join("cpuacct.usage")))
                    .unwrap_or(0),
                peak_memory_bytes: self
                    .dir("memory")
                    .and_then(|d| read_u64(d.join("memory.max_usage_in_bytes")))
                    .unwrap_or(0),
                oom_killed: self
                    .dir("memory")
                    .and_then(|d| keyed(d.join("memory.oom_control"), "oom_kill"))
                    .unwrap_or(0)
                    > 0,
            },
        }
    }

    /// Kills what is left and removes the group.
    pub fn remove(&self) {
        self.kill_all();
        for (_, d) in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    }
}
