//! Workspaces that follow their run. A managed run's workspace lives on the node that drives
//! it; when the run moves (its node killed, stalled or drained), the node that takes it over
//! must find the workspace as the last completed step left it. So after every sandbox step
//! that changed it, the workspace is saved in the store — a manifest of its paths, each file's
//! content stored once by hash — before the step's outcome is journaled; and before a sandbox
//! step, a node whose copy is not the one the run's last saved state names restores that state.
//!
//! A node's copy is known by a marker beside it (`<run>.state`: the hash of the manifest it
//! was restored from or saved as), so a run that stays on one node never restores anything.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use steward_store::{Blob, Store, WorkspaceState};
use steward_tools::ToolError;
use steward_types::RunId;

/// Most paths a workspace may hold and still follow its run.
const MAX_ENTRIES: usize = 50_000;

/// One path of a workspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    /// Relative to the workspace, `/`-separated.
    path: String,
    #[serde(flatten)]
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Kind {
    Dir { mode: u32 },
    File { mode: u32, hash: String },
    Link { target: String },
}

fn failed(e: impl std::fmt::Display) -> ToolError {
    ToolError::Failed(format!(
        "the run's workspace could not be kept in the store: {e}"
    ))
}

fn marker(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".state");
    dir.with_file_name(name)
}

fn local_hash(dir: &Path) -> Option<String> {
    std::fs::read_to_string(marker(dir)).ok()
}

/// Before the sandbox step at `seq`: makes `dir` what the run's last saved state before `seq`
/// holds, unless it already is, and returns that state's hash. `owner`: who root in the
/// sandbox is on the host. A step that will change the workspace (`changes`) drops the
/// marker first: if it is cut off half-way, the next try starts from the saved state again.
pub(crate) async fn follow(
    store: &dyn Store,
    run: &RunId,
    seq: i64,
    dir: &Path,
    owner: Option<(u32, u32)>,
    changes: bool,
) -> Result<Option<String>, ToolError> {
    let Some(state) = store.workspace_before(run, seq).await.map_err(failed)? else {
        return Ok(None); // nothing saved yet: the run's first sandbox step
    };
    if local_hash(dir).as_deref() != Some(state.hash.as_str()) {
        restore_state(store, run, dir, owner, &state).await?;
    }
    if changes {
        match std::fs::remove_file(marker(dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(failed(e)),
            _ => {}
        }
    }
    Ok(Some(state.hash))
}

async fn restore_state(
    store: &dyn Store,
    run: &RunId,
    dir: &Path,
    owner: Option<(u32, u32)>,
    state: &WorkspaceState,
) -> Result<(), ToolError> {
    let entries: Vec<Entry> = serde_json::from_str(&state.manifest).map_err(failed)?;
    let hashes: Vec<String> = entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::File { hash, .. } => Some(hash.clone()),
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let blobs = store.load_blobs(&hashes).await.map_err(failed)?;
    if blobs.len() != hashes.len() {
        return Err(failed(format!(
            "{} of the files of step {}'s workspace are missing",
            hashes.len() - blobs.len(),
            state.seq
        )));
    }
    let (dir, hash) = (dir.to_path_buf(), state.hash.clone());
    tracing::info!(run_id = %run, step = state.seq, paths = entries.len(), "restoring the run's workspace as its last sandbox step left it");
    tokio::task::spawn_blocking(move || restore(&dir, &entries, &blobs, owner, &hash))
        .await
        .map_err(failed)?
}

fn restore(
    dir: &Path,
    entries: &[Entry],
    blobs: &[Blob],
    owner: Option<(u32, u32)>,
    hash: &str,
) -> Result<(), ToolError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let _ = std::fs::remove_file(marker(dir));
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(failed)?;
    }
    std::fs::create_dir_all(dir).map_err(failed)?;
    let chown = |p: &Path| -> Result<(), ToolError> {
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid)).map_err(failed)?;
        }
        Ok(())
    };
    chown(dir)?;
    // Parents come before their children: the manifest is sorted by path.
    for e in entries {
        let p = dir.join(safe(&e.path)?);
        match &e.kind {
            Kind::Dir { mode } => {
                std::fs::create_dir(&p).map_err(failed)?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o777))
                    .map_err(failed)?;
            }
            Kind::File { mode, hash } => {
                let blob = blobs
                    .iter()
                    .find(|b| &b.hash == hash)
                    .ok_or_else(|| failed(format!("{}: content missing", e.path)))?;
                let bytes = b64.decode(&blob.data).map_err(failed)?;
                std::fs::write(&p, &bytes).map_err(failed)?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode & 0o777))
                    .map_err(failed)?;
            }
            Kind::Link { target } => std::os::unix::fs::symlink(target, &p).map_err(failed)?,
        }
        chown(&p)?;
    }
    std::fs::write(marker(dir), hash).map_err(failed)
}

/// `path` as a relative path that stays inside the workspace.
fn safe(path: &str) -> Result<&Path, ToolError> {
    let p = Path::new(path);
    if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(failed(format!(
            "{path:?} is not a path inside the workspace"
        )));
    }
    Ok(p)
}

/// After the sandbox step at `seq` (which may have changed `dir`): saves the workspace in the
/// store, unless it is still `before`, the state [`follow`] found.
pub(crate) async fn keep(
    store: &dyn Store,
    run: &RunId,
    seq: i64,
    dir: &Path,
    before: Option<&str>,
    now: i64,
) -> Result<(), ToolError> {
    let d = dir.to_path_buf();
    let (entries, contents) = tokio::task::spawn_blocking(move || scan(&d))
        .await
        .map_err(failed)??;
    let manifest = serde_json::to_string(&entries).map_err(failed)?;
    let hash = format!("{:x}", Sha256::digest(manifest.as_bytes()));
    if before == Some(hash.as_str()) {
        return std::fs::write(marker(dir), &hash).map_err(failed); // unchanged
    }
    let uses: Vec<String> = contents.iter().map(|(h, _)| h.clone()).collect();
    let state = WorkspaceState {
        seq,
        hash: hash.clone(),
        manifest,
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut sent_all = false;
    loop {
        let missing = if sent_all {
            uses.clone()
        } else {
            store.missing_blobs(&uses).await.map_err(failed)?
        };
        let mut blobs = Vec::with_capacity(missing.len());
        for h in &missing {
            if let Some((_, path)) = contents.iter().find(|(x, _)| x == h) {
                let bytes = tokio::fs::read(path).await.map_err(failed)?;
                blobs.push(Blob {
                    hash: h.clone(),
                    data: b64.encode(bytes),
                });
            }
        }
        match store.save_workspace(run, &state, &uses, &blobs, now).await {
            Ok(()) => break,
            Err(steward_store::Error::Conflict(_)) if !sent_all => sent_all = true,
            Err(e) => return Err(failed(e)),
        }
    }
    std::fs::write(marker(dir), &hash).map_err(failed)
}

/// The workspace's entries, sorted by path, and each distinct content's hash with a file that
/// holds it. Links are recorded, never followed; sockets, FIFOs and devices are left out.
#[allow(clippy::type_complexity)]
fn scan(dir: &Path) -> Result<(Vec<Entry>, Vec<(String, PathBuf)>), ToolError> {
    let mut entries = Vec::new();
    let mut contents: Vec<(String, PathBuf)> = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let Ok(read) = std::fs::read_dir(dir.join(&rel)) else {
            continue;
        };
        for e in read {
            let e = e.map_err(failed)?;
            let m = e.metadata().map_err(failed)?; // not following links
            let rel = rel.join(e.file_name());
            let Some(path) = rel.to_str().map(str::to_string) else {
                return Err(failed(format!("{rel:?} is not UTF-8")));
            };
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                todo.push(rel.clone());
                Kind::Dir {
                    mode: m.mode() & 0o777,
                }
            } else if ft.is_file() {
                let bytes = std::fs::read(e.path()).map_err(failed)?;
                let hash = format!("{:x}", Sha256::digest(&bytes));
                if !contents.iter().any(|(h, _)| h == &hash) {
                    contents.push((hash.clone(), e.path()));
                }
                Kind::File {
                    mode: m.mode() & 0o777,
                    hash,
                }
            } else if ft.is_symlink() {
                let target = std::fs::read_link(e.path()).map_err(failed)?;
                Kind::Link {
                    target: target.to_string_lossy().into_owned(),
                }
            } else {
                continue;
            };
            entries.push(Entry { path, kind });
            if entries.len() > MAX_ENTRIES {
                return Err(failed(format!(
                    "it holds more than {MAX_ENTRIES} paths, too many to follow the run to another node"
                )));
            }
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((entries, contents))
}
