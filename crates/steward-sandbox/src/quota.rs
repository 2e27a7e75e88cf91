//! The workspace's disk quota. No unprivileged mechanism bounds what a directory tree may hold,
//! so it is kept from two sides: the kernel stops any one file from growing past the room left
//! when an exec starts (`RLIMIT_FSIZE`, in `init`), and the exec's space is measured every
//! [`CHECK_EVERY`] while it runs, ending it once the workspace is past the quota. Many small
//! files can overshoot by what is written in one interval; the next exec then starts with no
//! room, so nothing can grow until files are removed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Bytes allocated on disk under `dir` (links not followed; a file linked twice counted once
/// per link).
pub async fn usage(dir: PathBuf) -> u64 {
    tokio::task::spawn_blocking(move || tree_bytes(&dir))
        .await
        .unwrap_or(0)
}

fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512;
            if m.is_dir() {
                todo.push(e.path());
            }
        }
    }
    total
}
