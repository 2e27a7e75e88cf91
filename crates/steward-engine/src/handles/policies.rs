//! The Cedar policy set: the one in force, and new versions, validated and guarded against
//! locking the administrator out.

use crate::*;

/// `Engine::policies()`.
pub struct Policies<'a>(pub(crate) &'a Engine);

impl Policies<'_> {
    /// Validates Cedar policies against the schema and, when they pass, records them as the
    /// next version and puts them in force on every node. When they do not, the active set
    /// stays and the error carries Cedar's diagnostics.
    ///
    /// The administrator is a principal: the active set must let them update policies, and a
    /// set that would stop them doing so again is refused. Every attempt is audited.
    pub async fn put(&self, text: &str) -> Result<steward_store::PolicySetRecord> {
        let policies = &self.0.inner.kernel.authority.policies;
        let now = self.0.inner.shared.clock.now_ms();
        if let Err(by) = policies.admin_may_update(now) {
            let why = format!(
                "the policies in force do not let administrators update them ({})",
                by.join(", ")
            );
            self.0
                .audit_admin("policy.update", "policies", false, &why)
                .await?;
            return Err(Error::Forbidden(why));
        }
        let checked = match policies.check(text) {
            Ok(c) => c,
            Err(e) => {
                let why = e.to_string();
                self.0
                    .audit_admin("policy.update", "policies", false, &why)
                    .await?;
                return Err(Error::InvalidRequest(why));
            }
        };
        let rec = self
            .0
            .store()
            .put_policy_set(&checked.hash, text, now)
            .await?;
        self.0
            .audit_admin(
                "policy.update",
                &format!("policies:{}", checked.hash),
                true,
                "",
            )
            .await?;
        policies.activate(checked);
        Ok(rec)
    }

    /// The policy set in force: its version (0 for the built-in default), hash and text.
    pub async fn active(&self) -> Result<(i64, String, String)> {
        let active = self.0.inner.kernel.authority.policies.active();
        let version = self
            .0
            .store()
            .latest_policy_set()
            .await?
            .filter(|l| l.hash == active.hash)
            .map_or(0, |l| l.version);
        Ok((version, active.hash.clone(), active.text().to_string()))
    }
}
