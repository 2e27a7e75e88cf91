//! The audit log: verified, checkpointed, exported with inclusion proofs, and told of changes
//! made through the management API.

use crate::*;

/// `Engine::audit()`.
pub struct Audit<'a>(pub(crate) &'a Engine);

impl Audit<'_> {
    /// Verifies the audit log as the database holds it, against this node's key and the
    /// configured trusted keys.
    pub async fn verify(&self) -> Result<steward_gov::Report> {
        let mut trusted = vec![self.0.inner.audit_key.verifying_key()];
        for k in &self.0.inner.gov.audit_trusted_keys {
            trusted.push(
                steward_gov::audit_key::public_key(k)
                    .map_err(|e| Error::InvalidRequest(format!("gov.audit_trusted_keys: {e}")))?,
            );
        }
        Ok(steward_gov::verify_log(self.0.store().as_ref(), &trusted).await?)
    }

    /// Signs a checkpoint now if the log grew since the last one (so an export or a
    /// verification covers the newest records).
    pub async fn checkpoint(&self) -> Result<()> {
        steward_gov::checkpointer::checkpoint_now(
            self.0.store().as_ref(),
            &self.0.inner.audit_key,
            self.0.inner.shared.clock.now_ms(),
        )
        .await?;
        Ok(())
    }

    /// The audit records since `since` (Unix ms) as JSON lines with inclusion proofs, after
    /// signing a checkpoint that covers the newest.
    pub async fn export(&self, since: i64, run: Option<&RunId>) -> Result<Vec<String>> {
        self.checkpoint().await?;
        Ok(steward_gov::export::export_lines(
            self.0.store().as_ref(),
            since,
            run.map(RunId::as_str),
        )
        .await?)
    }

    /// Records a change made through the management API, durably.
    pub async fn change(&self, change: Change) -> Result<()> {
        let now = self.0.inner.shared.clock.now_ms();
        let record = steward_gov::AuditRecord {
            outcome: Some(format!("status:{}", change.status)),
            ..steward_gov::AuditRecord::new(
                steward_gov::AuditEvent::Change,
                now,
                change.principal,
                change.chain,
                &change.action,
                &change.resource,
            )
        }
        .to_json();
        self.0.store().append_audit(&[(now, record)]).await?;
        Ok(())
    }
}
