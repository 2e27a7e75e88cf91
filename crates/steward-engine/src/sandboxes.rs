//! Each managed run's sandbox, as the tools see it: a workspace directory the run keeps for its
//! lifetime (`<data_dir>/workspaces/<run id>`), where every `sandbox_exec` runs a fresh,
//! isolated process tree (`steward-sandbox`), and whose files `sandbox_write_file` and
//! `sandbox_read_file` move in and out — never following a link, so nothing a sandboxed command
//! leaves behind can point them at the host.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Value};
use steward_sandbox::{Ended, ExecRequest, Limits, Sandboxes};
use steward_tools::ToolError;
use steward_types::RunId;

/// Largest file the file tools move.
const MAX_FILE_BYTES: usize = 1 << 20;

pub struct SandboxService {
    /// `Err`: why code may not run here (a missing isolation layer, no helper…).
    sandboxes: Result<Sandboxes, String>,
    workspaces: PathBuf,
    limits: Limits,
}

fn failed(e: impl std::fmt::Display) -> ToolError {
    ToolError::Failed(e.to_string())
}

impl SandboxService {
    pub fn new(sandboxes: Result<Sandboxes, String>, workspaces: PathBuf, limits: Limits) -> Self {
        SandboxService {
            sandboxes,
            workspaces,
            limits,
        }
    }

    fn workspace(&self, run: &RunId) -> Result<PathBuf, ToolError> {
        let dir = self.workspaces.join(run.as_str());
        std::fs::create_dir_all(&dir).map_err(failed)?;
        Ok(dir)
    }

    pub async fn exec(&self, run: &RunId, command: &str, stdin: &str) -> Result<Value, ToolError> {
        let sandboxes = self
            .sandboxes
            .as_ref()
            .map_err(|why| ToolError::Denied(format!("sandboxes are unavailable here: {why}")))?;
        let ws = self.workspace(run)?;
        let r = sandboxes
            .exec(ExecRequest {
                workspace: ws.into(),
                argv: vec!["/bin/sh".into(), "-c".into(), command.into()],
                env: vec![
                    ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
                    ("HOME".into(), "/workspace".into()),
                    ("LANG".into(), "C.UTF-8".into()),
                ],
                stdin: stdin.as_bytes().to_vec(),
                limits: self.limits.clone(),
            })
            .await
            .map_err(failed)?;
        let (ended, code, signal) = match r.ended {
            Ended::Exit(c) => ("exit", Some(c), None),
            Ended::Signal(s) => ("signal", None, Some(s)),
            Ended::Timeout => ("timeout", None, None),
            Ended::OomKilled => ("oom_killed", None, None),
        };
        Ok(json!({
            "ended": ended,
            "exit_code": code,
            "signal": signal,
            "stdout": String::from_utf8_lossy(&r.stdout),
            "stderr": String::from_utf8_lossy(&r.stderr),
            "truncated": r.truncated,
            "cpu_ms": r.cpu.as_millis() as u64,
            "peak_memory_bytes": r.peak_memory_bytes,
            "wall_ms": r.wall.as_millis() as u64,
        }))
    }

    pub async fn write(&self, run: &RunId, path: &str, content: &[u8]) -> Result<(), ToolError> {
        if content.len() > MAX_FILE_BYTES {
            return Err(ToolError::InvalidArgs(format!(
                "content: at most {MAX_FILE_BYTES} bytes"
            )));
        }
        let ws = self.workspace(run)?;
        let (path, content) = (path.to_string(), content.to_vec());
        tokio::task::spawn_blocking(move || {
            let target = walk(&ws, &path, true)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&target)
                .map_err(|e| failed(format!("{path}: {e}")))?;
            f.write_all(&content).map_err(failed)
        })
        .await
        .map_err(failed)?
    }

    pub async fn read(&self, run: &RunId, path: &str) -> Result<Vec<u8>, ToolError> {
        let ws = self.workspace(run)?;
        let path = path.to_string();
        tokio::task::spawn_blocking(move || {
            let target = walk(&ws, &path, false)?;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&target)
                .map_err(|e| failed(format!("{path}: {e}")))?;
            let mut buf = Vec::new();
            f.take(MAX_FILE_BYTES as u64 + 1)
                .read_to_end(&mut buf)
                .map_err(failed)?;
            if buf.len() > MAX_FILE_BYTES {
                return Err(ToolError::Failed(format!(
                    "{path}: larger than {MAX_FILE_BYTES} bytes"
                )));
            }
            Ok(buf)
        })
        .await
        .map_err(failed)?
    }
}

/// `rel` inside `ws`: relative, no `..`, and no link on the way (directories made as needed
/// when `create`). The last component is left to an `O_NOFOLLOW` open.
fn walk(ws: &Path, rel: &str, create: bool) -> Result<PathBuf, ToolError> {
    let bad = |why: &str| ToolError::InvalidArgs(format!("path {rel:?}: {why}"));
    if rel.is_empty() || rel.len() > 4096 || rel.contains('\0') {
        return Err(bad("1 to 4096 characters"));
    }
    let parts: Vec<&std::ffi::OsStr> = Path::new(rel)
        .components()
        .map(|c| match c {
            Component::Normal(p) => Ok(p),
            _ => Err(bad("relative to the workspace, without `..`")),
        })
        .collect::<Result<_, _>>()?;
    let Some((last, dirs)) = parts.split_last() else {
        return Err(bad("names no file"));
    };
    let mut cur = ws.to_path_buf();
    for d in dirs {
        cur.push(d);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return Err(bad("goes through a link")),
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(bad("goes through a file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                std::fs::create_dir(&cur).map_err(failed)?
            }
            Err(e) => return Err(failed(format!("{rel}: {e}"))),
        }
    }
    Ok(cur.join(last))
}
