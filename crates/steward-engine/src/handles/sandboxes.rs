//! Persistent sandboxes, as the management API sees them: create (empty, forked from a
//! snapshot, or from a template), list, run code in, control, move files in and out,
//! snapshot, restore and remove. Every change is audited as the administrator's.

use crate::sandboxes::SandboxService;
use crate::{sandbox_error, Engine, Error, Result, SandboxAction};

/// `Engine::sandboxes()`.
pub struct Sandboxes<'a>(pub(crate) &'a Engine);

impl<'a> Sandboxes<'a> {
    fn service(&self) -> Result<&'a SandboxService> {
        self.0.inner.shared.sandboxes.as_deref().ok_or_else(|| {
            Error::Unavailable("sandboxes are disabled on this server ([sandbox] enabled)".into())
        })
    }

    /// New persistent sandboxes: `count` forks of `snapshot`, or one empty sandbox.
    /// With `template` (setup commands), the sandboxes start from the snapshot it builds
    /// (once; the same setup reuses it). Returns the ids and the snapshot they stand on.
    pub async fn create(
        &self,
        snapshot: Option<&str>,
        template: Option<&[String]>,
        count: usize,
        ttl_ms: Option<i64>,
        egress: &[String],
    ) -> Result<(Vec<String>, Option<String>)> {
        let service = self.service()?;
        let snapshot = match (snapshot, template) {
            (Some(_), Some(_)) => {
                return Err(Error::InvalidRequest(
                    "from_snapshot and template: one or the other".into(),
                ))
            }
            (Some(s), None) => Some(s.to_string()),
            (None, Some(setup)) => Some(service.template(setup).await.map_err(sandbox_error)?),
            (None, None) => None,
        };
        let ids = service
            .create(snapshot.as_deref(), count, ttl_ms, egress, self.0.now_ms())
            .map_err(sandbox_error)?;
        self.0
            .audit_admin(
                "sandbox.create",
                &ids.join(","),
                true,
                &snapshot
                    .as_ref()
                    .map(|s| format!("from snapshot {s}"))
                    .unwrap_or_default(),
            )
            .await?;
        Ok((ids, snapshot))
    }

    pub async fn list(&self) -> Result<Vec<crate::sandboxes::SandboxInfo>> {
        self.service()?.list().map_err(sandbox_error)
    }

    /// Runs `command` in persistent sandbox `id`; audited with how it ended.
    /// With `output`, stdout and stderr are also sent there as they come.
    pub async fn exec(
        &self,
        id: &str,
        command: &crate::sandboxes::Command,
        stdin: &[u8],
        output: Option<tokio::sync::mpsc::Sender<steward_sandbox::Output>>,
    ) -> Result<steward_sandbox::ExecResult> {
        let r = self
            .service()?
            .exec_in(
                id,
                command,
                stdin,
                output,
                crate::sandboxes::audit_egress(
                    self.0.store().clone(),
                    self.0.inner.shared.clock.clone(),
                    format!("sandbox:{id}"),
                    vec![format!("admin:{}", steward_gov::policy::ADMIN)],
                    None,
                ),
                self.0.now_ms(),
            )
            .await
            .map_err(sandbox_error)?;
        self.0
            .audit_admin("sandbox.exec", id, true, &format!("ended {:?}", r.ended))
            .await?;
        Ok(r)
    }

    /// Cancels, pauses or resumes what persistent sandbox `id` runs; audited.
    pub async fn control(&self, id: &str, action: SandboxAction) -> Result<()> {
        let service = self.service()?;
        let (name, done) = match action {
            SandboxAction::Cancel => ("sandbox.cancel", service.cancel(id)),
            SandboxAction::Pause => ("sandbox.pause", service.pause(id)),
            SandboxAction::Resume => ("sandbox.resume", service.resume(id)),
        };
        done.map_err(sandbox_error)?;
        self.0.audit_admin(name, id, true, "").await
    }

    pub async fn processes(&self, id: &str) -> Result<Vec<steward_sandbox::Process>> {
        self.service()?.processes(id).map_err(sandbox_error)
    }

    /// Signals one process of what sandbox `id` runs; audited.
    pub async fn kill(&self, id: &str, pid: i32, signal: i32) -> Result<()> {
        self.service()?
            .kill(id, pid, signal)
            .map_err(sandbox_error)?;
        self.0
            .audit_admin(
                "sandbox.kill",
                id,
                true,
                &format!("pid {pid} signal {signal}"),
            )
            .await
    }

    /// Writes a file into persistent sandbox `id`'s workspace; audited.
    pub async fn upload(&self, id: &str, path: &str, content: &[u8]) -> Result<()> {
        self.service()?
            .upload(id, path, content, self.0.now_ms())
            .await
            .map_err(sandbox_error)?;
        self.0
            .audit_admin(
                "sandbox.upload",
                id,
                true,
                &format!("{path} ({} bytes)", content.len()),
            )
            .await
    }

    pub async fn download(&self, id: &str, path: &str) -> Result<Vec<u8>> {
        self.service()?
            .download(id, path, self.0.now_ms())
            .await
            .map_err(sandbox_error)
    }

    pub async fn files(&self, id: &str, path: &str) -> Result<Vec<crate::sandboxes::FileEntry>> {
        self.service()?
            .list_files(id, path, self.0.now_ms())
            .await
            .map_err(sandbox_error)
    }

    pub async fn snapshot(&self, id: &str) -> Result<String> {
        let snap = self.service()?.snapshot(id).await.map_err(sandbox_error)?;
        self.0
            .audit_admin("sandbox.snapshot", id, true, &snap)
            .await?;
        Ok(snap)
    }

    pub async fn restore(&self, id: &str, snapshot: &str) -> Result<()> {
        self.service()?
            .restore(id, snapshot)
            .await
            .map_err(sandbox_error)?;
        self.0
            .audit_admin("sandbox.restore", id, true, snapshot)
            .await
    }

    pub async fn remove(&self, id: &str) -> Result<()> {
        self.service()?.remove(id).await.map_err(sandbox_error)?;
        self.0.audit_admin("sandbox.remove", id, true, "").await
    }
}
