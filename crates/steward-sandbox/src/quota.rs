//! The workspace's disk quota, and what the host keeps from what a sandbox wrote. No
//! unprivileged mechanism bounds what a directory tree may hold, so the quota is kept from two
//! sides: the kernel stops any one file from growing past the room left when an exec starts
//! (`RLIMIT_FSIZE`, in `init`), and the exec's space and file count are measured every
//! [`CHECK_EVERY`] while it runs, ending it once the workspace is past either quota. Many small
//! files can overshoot by what is written in one interval; the next exec then starts with no
//! room, so nothing can grow until files are removed.

use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// What a workspace holds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Bytes allocated on disk (a file linked twice counted once per link).
    pub bytes: u64,
    /// Files, directories, links and the rest.
    pub inodes: u64,
}

/// What is under `dir` (links not followed).
pub async fn usage(dir: PathBuf) -> Usage {
    tokio::task::spawn_blocking(move || tree_usage(&dir))
        .await
        .unwrap_or_default()
}

/// Calls `each` on every entry under `dir` (not `dir` itself), never following a link.
fn walk(dir: &Path, mut each: impl FnMut(&Path, &std::fs::Metadata)) {
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            // `DirEntry::metadata` does not follow links.
            let Ok(m) = e.metadata() else { continue };
            let path = e.path();
            each(&path, &m);
            if m.is_dir() {
                todo.push(path);
            }
        }
    }
}

fn tree_usage(dir: &Path) -> Usage {
    let mut u = Usage::default();
    walk(dir, |_, m| {
        u.bytes += m.blocks() * 512;
        u.inodes += 1;
    });
    u
}

/// Clears the set-uid and set-gid bits of every file under `dir`: whatever a sandbox wrote,
/// the host never holds a program that changes who runs it.
pub fn strip_set_id(dir: &Path) {
    walk(dir, |path, m| {
        let mode = m.mode();
        if m.is_file() && mode & (libc::S_ISUID | libc::S_ISGID) != 0 {
            let kept = mode & 0o1777;
            // By descriptor, never following a link put in the file's place.
            let cleared = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(path)
                .and_then(|f| {
                    if f.metadata()?.is_file() {
                        f.set_permissions(std::fs::Permissions::from_mode(kept))?;
                    }
                    Ok(())
                });
            if let Err(e) = cleared {
                tracing::warn!(path = %path.display(), error = %e, "could not clear a set-uid bit");
            }
        }
    });
}

/// Gives `root` and everything under it to `uid`:`gid`, links themselves and not what they
/// point to.
pub fn chown_tree(root: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid))?;
    let mut failed = None;
    walk(root, |path, m| {
        if (m.uid(), m.gid()) != (uid, gid) {
            if let Err(e) = std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
                failed.get_or_insert(e);
            }
        }
    });
    failed.map_or(Ok(()), Err)
}
