//! Persistent sandboxes with snapshots and forks, from overlayfs layers. A sandbox's workspace
//! is a stack: read-only layers below (content-addressed: a layer's name is the hash of what
//! it holds, so equal content is stored once), and the sandbox's own writable layer on top,
//! mounted together at `/workspace` for each exec. A snapshot freezes the top layer into a new
//! read-only layer (a rename: no copy) and names the resulting stack; a fork is a new sandbox
//! on a snapshot's stack with an empty top layer — nothing is copied, whatever the size.
//!
//! ```text
//! <root>/layers/<sha256>/            read-only, shared
//! <root>/snapshots/<sha256>          a stack: the layers' names, top first (JSON)
//! <root>/sandboxes/<id>/upper|work   the sandbox's writable layer and overlayfs' work dir
//! <root>/sandboxes/<id>/stack        the layers below it (JSON)
//! <root>/sandboxes/<id>/ttl, used    idle lifetime and last use (Unix ms), when it has one
//! <root>/sandboxes/<id>/egress       its egress allow-list (JSON), when it has one
//! <root>/sandboxes/<id>/paused       present while it is paused
//! <root>/templates/<sha256>          the snapshot a template's setup built (by the setup's hash)
//! ```

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Where persistent sandboxes, their layers and snapshots live.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// A sandbox's workspace as an exec mounts it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Layered {
    /// Read-only layers, top first.
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

fn valid_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Setup(format!(
            "sandbox id {id:?}: 1-64 of a-z A-Z 0-9 - _"
        )))
    }
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

impl Store {
    pub fn open(root: PathBuf) -> Result<Store> {
        for d in ["layers", "snapshots", "sandboxes", "templates"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        Ok(Store { root })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join("sandboxes").join(id)
    }

    fn stack(&self, id: &str) -> Result<Vec<String>> {
        let text =
            std::fs::read_to_string(self.dir(id).join("stack")).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::NotFound(format!("no sandbox {id}")),
                _ => Error::Setup(format!("sandbox {id}: {e}")),
            })?;
        serde_json::from_str(&text).map_err(|e| Error::Setup(format!("sandbox {id}: {e}")))
    }

    fn write_stack(&self, id: &str, stack: &[String]) -> Result<()> {
        let tmp = self.dir(id).join("stack.tmp");
        std::fs::write(&tmp, serde_json::to_string(stack).unwrap_or_default())?;
        std::fs::rename(tmp, self.dir(id).join("stack"))?;
        Ok(())
    }

    /// A new sandbox on `snapshot`'s stack (none: empty). Nothing is copied.
    pub fn create(&self, id: &str, snapshot: Option<&str>) -> Result<()> {
        valid_id(id)?;
        let stack = match snapshot {
            Some(s) => self.snapshot_stack(s)?,
            None => Vec::new(),
        };
        let dir = self.dir(id);
        if dir.exists() {
            return Err(Error::Setup(format!("sandbox {id} exists already")));
        }
        for d in ["upper", "work", "base"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        self.write_stack(id, &stack)
    }

    /// Sets the egress allow-list entries of sandbox `id` (none: no network).
    pub fn set_egress(&self, id: &str, entries: &[String]) -> Result<()> {
        valid_id(id)?;
        std::fs::write(
            self.dir(id).join("egress"),
            serde_json::to_string(entries).unwrap_or_default(),
        )?;
        Ok(())
    }

    /// Marks sandbox `id` paused, or not.
    pub fn set_paused(&self, id: &str, paused: bool) -> Result<()> {
        valid_id(id)?;
        let mark = self.dir(id).join("paused");
        if paused {
            std::fs::write(mark, b"")?;
        } else if let Err(e) = std::fs::remove_file(mark) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e.into());
            }
        }
        Ok(())
    }

    pub fn paused(&self, id: &str) -> bool {
        valid_id(id).is_ok() && self.dir(id).join("paused").exists()
    }

    /// Sandbox `id`'s egress allow-list entries.
    pub fn egress(&self, id: &str) -> Result<Vec<String>> {
        valid_id(id)?;
        match std::fs::read_to_string(self.dir(id).join("egress")) {
            Ok(t) => {
                serde_json::from_str(&t).map_err(|e| Error::Setup(format!("sandbox {id}: {e}")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every sandbox, by id.
    pub fn ids(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = std::fs::read_dir(self.root.join("sandboxes"))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|id| self.exists(id))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// The read-only layers under sandbox `id`'s own, top first.
    pub fn stack_of(&self, id: &str) -> Result<Vec<String>> {
        valid_id(id)?;
        self.stack(id)
    }

    pub fn exists(&self, id: &str) -> bool {
        valid_id(id).is_ok() && self.dir(id).join("stack").exists()
    }

    /// The workspace of sandbox `id`, to mount for an exec.
    pub fn layered(&self, id: &str) -> Result<Layered> {
        valid_id(id)?;
        let stack = self.stack(id)?;
        let mut lower: Vec<PathBuf> = stack
            .iter()
            .map(|l| self.root.join("layers").join(l))
            .collect();
        // overlayfs needs a layer below the writable one, if only an empty one.
        lower.push(self.dir(id).join("base"));
        Ok(Layered {
            lower,
            upper: self.dir(id).join("upper"),
            work: self.dir(id).join("work"),
        })
    }

    /// Freezes the sandbox's writable layer into a read-only one and names the stack it now
    /// stands on. Must not run while the sandbox executes.
    pub fn snapshot(&self, id: &str) -> Result<String> {
        valid_id(id)?;
        let mut stack = self.stack(id)?;
        let dir = self.dir(id);
        let upper = dir.join("upper");
        if !is_empty(&upper)? {
            crate::quota::strip_set_id(&upper);
            let layer = hash_tree(&upper)?;
            let target = self.root.join("layers").join(&layer);
            if target.exists() {
                std::fs::remove_dir_all(&upper)?;
            } else {
                std::fs::rename(&upper, &target)?;
            }
            std::fs::create_dir(&upper)?;
            // overlayfs' work dir must be empty for the next mount.
            std::fs::remove_dir_all(dir.join("work"))?;
            std::fs::create_dir(dir.join("work"))?;
            stack.insert(0, layer);
            self.write_stack(id, &stack)?;
        }
        let name = hex(&Sha256::digest(stack.join("\n").as_bytes()));
        let path = self.root.join("snapshots").join(&name);
        if !path.exists() {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_string(&stack).unwrap_or_default())?;
            std::fs::rename(tmp, path)?;
        }
        Ok(name)
    }

    fn snapshot_stack(&self, snapshot: &str) -> Result<Vec<String>> {
        if snapshot.len() != 64 || !snapshot.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::NotFound(format!("no snapshot {snapshot:?}")));
        }
        let text = std::fs::read_to_string(self.root.join("snapshots").join(snapshot)).map_err(
            |e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::NotFound(format!("no snapshot {snapshot}")),
                _ => Error::Setup(format!("snapshot {snapshot}: {e}")),
            },
        )?;
        serde_json::from_str(&text).map_err(|e| Error::Setup(format!("snapshot {snapshot}: {e}")))
    }

    /// Puts the sandbox back on `snapshot`: its writable layer is discarded.
    pub fn restore(&self, id: &str, snapshot: &str) -> Result<()> {
        valid_id(id)?;
        let stack = self.snapshot_stack(snapshot)?;
        let dir = self.dir(id);
        for d in ["upper", "work"] {
            std::fs::remove_dir_all(dir.join(d))?;
            std::fs::create_dir(dir.join(d))?;
        }
        self.write_stack(id, &stack)
    }

    /// Gives sandbox `id` an idle lifetime: unused for `ttl_ms`, it expires.
    pub fn set_ttl(&self, id: &str, ttl_ms: i64, now_ms: i64) -> Result<()> {
        valid_id(id)?;
        std::fs::write(self.dir(id).join("ttl"), ttl_ms.to_string())?;
        self.touch(id, now_ms)
    }

    /// Records a use of sandbox `id` (its idle lifetime starts again).
    pub fn touch(&self, id: &str, now_ms: i64) -> Result<()> {
        valid_id(id)?;
        if self.dir(id).join("ttl").exists() {
            std::fs::write(self.dir(id).join("used"), now_ms.to_string())?;
        }
        Ok(())
    }

    /// Sandboxes whose idle lifetime has run out at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> Result<Vec<String>> {
        let read =
            |p: PathBuf| -> Option<i64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
        Ok(self
            .ids()?
            .into_iter()
            .filter(|id| {
                let d = self.dir(id);
                match (read(d.join("ttl")), read(d.join("used"))) {
                    (Some(ttl), Some(used)) => used.saturating_add(ttl) <= now_ms,
                    _ => false,
                }
            })
            .collect())
    }

    /// The snapshot a template with this setup built before, if any.
    pub fn template(&self, setup_hash: &str) -> Option<String> {
        let s = std::fs::read_to_string(self.root.join("templates").join(setup_hash)).ok()?;
        let s = s.trim().to_string();
        self.snapshot_stack(&s).is_ok().then_some(s)
    }

    pub fn save_template(&self, setup_hash: &str, snapshot: &str) -> Result<()> {
        let path = self.root.join("templates").join(setup_hash);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, snapshot)?;
        std::fs::rename(tmp, path)?;
        Ok(())
    }

    /// Removes the sandbox (its layers below stay for the snapshots that use them).
    pub fn remove(&self, id: &str) -> Result<()> {
        valid_id(id)?;
        std::fs::remove_dir_all(self.dir(id))?;
        Ok(())
    }
}

fn is_empty(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)?.next().is_none())
}

/// SHA-256 over a directory tree: every entry's relative path, kind, mode and content (a
/// link's target; overlayfs' deletion markers as such), in name order.
fn hash_tree(root: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut stack = vec![PathBuf::new()];
    let mut buf = vec![0u8; 1 << 16];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> =
            std::fs::read_dir(root.join(&rel))?.collect::<std::io::Result<Vec<_>>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries.into_iter().rev() {
            let path = rel.join(e.file_name());
            let meta = std::fs::symlink_metadata(root.join(&path))?;
            let ft = meta.file_type();
            h.update(path.as_os_str().as_encoded_bytes());
            h.update([0]);
            h.update(meta.mode().to_le_bytes());
            if ft.is_dir() {
                h.update(b"d");
                stack.push(path);
            } else if ft.is_symlink() {
                h.update(b"l");
                h.update(
                    std::fs::read_link(root.join(&path))?
                        .as_os_str()
                        .as_encoded_bytes(),
                );
            } else if ft.is_char_device() {
                h.update(b"c");
                h.update(meta.rdev().to_le_bytes());
            } else if ft.is_file() {
                h.update(b"f");
                h.update(meta.len().to_le_bytes());
                let mut f = std::fs::File::open(root.join(&path))?;
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
            }
            h.update([0]);
        }
    }
    Ok(hex(&h.finalize()))
}
