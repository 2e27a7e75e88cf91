//! Whom an action acts for, and what the policy says of it: the one place a decision is made.
//!
//! One answer for every decision a run's action takes — the Kernel's steps, its fallbacks, and
//! the secrets a tool sends on the run's behalf — so a policy on `principal.owner`,
//! `context.on_behalf_of` or `context.chain` reads the same values wherever the run acts, and a
//! suspended agent or a revoked grant stops all of them alike; and the same for an external
//! caller of the gateway (a model call, a queue, a delegation), decided for every agent whose
//! authority its call uses.

use std::sync::Arc;

use steward_gov::{AuditEvent, AuditRecord, Decision, Policies, Query};
use steward_store::RunRecord;

use crate::delegations::Delegations;
use crate::identities::Identities;
use crate::principal::Principal;

/// Whom an action of a run acts for.
pub(crate) struct ActsFor {
    /// The run's agent's owner, on whose behalf a managed run acts.
    pub owner: Option<String>,
    /// Outermost first: the owner, the run that spawned this one (if any), the agent, the run.
    pub chain: Vec<String>,
}

/// What a decision made where nobody can be asked came to.
pub(crate) struct Unattended {
    pub decision: Decision,
    /// Why the action may not go ahead, when it may not.
    pub refused: Option<String>,
}

/// The policy, identities and grants every decision consults.
#[derive(Clone)]
pub(crate) struct Authority {
    pub policies: Arc<Policies>,
    pub identities: Arc<Identities>,
    pub delegations: Arc<Delegations>,
}

impl Authority {
    /// Whom `run` acts for.
    pub async fn acts_for(&self, run: &RunRecord) -> steward_store::Result<ActsFor> {
        let owner = self.identities.owner(&run.agent).await?;
        let chain = run_chain(
            owner.as_deref(),
            run.parent_id.as_ref().map(|p| p.as_str()),
            &run.agent,
            run.id.as_str(),
        );
        Ok(ActsFor { owner, chain })
    }

    /// Why `run`'s agent may not act now (suspended or revoked), if it may not.
    pub async fn barred(&self, run: &RunRecord) -> steward_store::Result<Option<String>> {
        self.identities.barred(&run.agent).await
    }

    /// Why `action` on `resource` is outside the grant `run` was spawned with, if it is: the
    /// grant was revoked, has expired, or does not list it.
    pub async fn outside_grant(
        &self,
        run: &RunRecord,
        action: &str,
        resource: &str,
        now: i64,
    ) -> steward_store::Result<Option<String>> {
        let Some(parent) = &run.parent_id else {
            return Ok(None);
        };
        let link = self
            .delegations
            .link(&crate::host::run_link(&run.id))
            .await
            .map_err(|e| steward_store::Error::Config(format!("{e:?}")))?;
        let Some(link) = link else {
            return Ok(None);
        };
        if link.revoked_at.is_some() {
            return Ok(Some(format!(
                "the grant run {parent} gave this run was revoked: {}",
                link.revoke_reason.unwrap_or_default()
            )));
        }
        if link.expires_at <= now {
            return Ok(Some(format!(
                "the grant run {parent} gave this run has expired"
            )));
        }
        let scope = crate::delegations::scope_of(&link).map_err(steward_store::Error::Corrupt)?;
        let allowed = scope.covers(action, resource);
        Ok((!allowed)
            .then(|| format!("{action} {resource} is outside what run {parent} granted this run")))
    }

    /// The policy's decision on `action` on `resource` for an external caller, made for every
    /// agent whose authority the call uses ([`Principal::authorities`]): allowed only if
    /// allowed for each. A denial for an agent up the chain names it.
    pub async fn decide_for_caller(
        &self,
        who: &Principal,
        (action, resource): (&str, &str),
        cost_nanos: i64,
        destination: Option<&str>,
        now: i64,
    ) -> steward_store::Result<(Decision, Option<String>)> {
        let mut allowed: Option<Decision> = None;
        for agent in who.authorities() {
            let caller = agent == who.agent.as_str();
            let owner = if caller {
                who.owner.clone()
            } else {
                self.identities.owner(agent).await?
            };
            let d = self.policies.decide(&Query {
                agent,
                run: if caller {
                    who.run.as_ref().map(|r| r.as_str())
                } else {
                    None
                },
                action,
                resource,
                cost_nanos,
                time_ms: now,
                chain: &who.chain,
                owner: owner.as_deref(),
                on_behalf_of: who.on_behalf_of.as_deref(),
                destination,
            });
            if !d.allow {
                return Ok((d, (!caller).then(|| agent.to_string())));
            }
            allowed = Some(match allowed {
                None => d,
                Some(mut all) => {
                    for id in d.policy_ids {
                        if !all.policy_ids.contains(&id) {
                            all.policy_ids.push(id);
                        }
                    }
                    all.approval = all.approval.or(d.approval);
                    all.errors.extend(d.errors);
                    all
                }
            });
        }
        allowed
            .map(|d| (d, None))
            .ok_or_else(|| steward_store::Error::Config("a call with no agent behind it".into()))
    }

    /// The policy's decision on `action` on `resource` by `run`.
    pub fn decide(&self, q: &Query<'_>) -> Decision {
        self.policies.decide(q)
    }

    /// Whether `run` may do `action` on `resource` where no one can be asked (a fallback, a
    /// secret a tool sends): the policy (a permit that asks for approval counts as no), the
    /// agent's identity, and the run's grant. The caller audits the result with
    /// [`decision_record`].
    pub async fn unattended(
        &self,
        run: &RunRecord,
        acts: &ActsFor,
        (action, resource): (&str, &str),
        destination: Option<&str>,
        now: i64,
    ) -> steward_store::Result<Unattended> {
        let decision = self.decide(&Query {
            destination,
            ..run_query(run, acts, now, (action, resource), 0)
        });
        let mut refused = if !decision.allow {
            Some(if decision.policy_ids.is_empty() {
                format!("no policy permits {action} on it")
            } else {
                format!("forbidden by {}", decision.policy_ids.join(", "))
            })
        } else if decision.approval.is_some() {
            Some(format!(
                "{action} on it needs approval, which nobody is asked for when a run acts unattended (a fallback, a secret a tool sends)"
            ))
        } else {
            None
        };
        if refused.is_none() {
            refused = self.barred(run).await?;
        }
        if refused.is_none() {
            refused = self.outside_grant(run, action, resource, now).await?;
        }
        Ok(Unattended { decision, refused })
    }
}

impl Authority {
    /// [`Authority::unattended`] for a resource that is the run's own (its agent's memory
    /// scope, its owner's, its own): allowed when no policy applies to it at all — a forbid
    /// still refuses, as do a barred agent and a grant that leaves it out.
    pub async fn unattended_own(
        &self,
        run: &RunRecord,
        acts: &ActsFor,
        (action, resource): (&str, &str),
        own: bool,
        now: i64,
    ) -> steward_store::Result<Unattended> {
        let mut u = self
            .unattended(run, acts, (action, resource), None, now)
            .await?;
        if own && !u.decision.allow && u.decision.policy_ids.is_empty() {
            u.refused = self.barred(run).await?;
            if u.refused.is_none() {
                u.refused = self.outside_grant(run, action, resource, now).await?;
            }
        }
        Ok(u)
    }
}

/// The chain of authority of run `run` of `agent`, outermost first: its agent's owner, the run
/// that spawned it (if any), the agent, the run.
pub(crate) fn run_chain(
    owner: Option<&str>,
    parent: Option<&str>,
    agent: &str,
    run: &str,
) -> Vec<String> {
    let mut chain = Vec::with_capacity(4);
    if let Some(o) = owner {
        chain.push(format!("user:{o}"));
    }
    if let Some(p) = parent {
        chain.push(format!("run:{p}"));
    }
    chain.push(format!("agent:{agent}"));
    chain.push(format!("run:{run}"));
    chain
}

/// What the policy is asked about an action of `run`: `action` on `resource`, by the run of its
/// agent, acting for `acts.chain` and on its owner's behalf.
pub(crate) fn run_query<'a>(
    run: &'a RunRecord,
    acts: &'a ActsFor,
    now: i64,
    (action, resource): (&'a str, &'a str),
    cost_nanos: i64,
) -> Query<'a> {
    Query {
        agent: &run.agent,
        run: Some(run.id.as_str()),
        action,
        resource,
        cost_nanos,
        time_ms: now,
        chain: &acts.chain,
        owner: acts.owner.as_deref(),
        on_behalf_of: acts.owner.as_deref(),
        destination: None,
    }
}

/// The audit record of a decision on `action` on `resource` by `run` (at step `seq`, when
/// the action is one), with the authority of `chain`, in the current trace.
pub(crate) fn decision_record(
    run: &RunRecord,
    chain: &[String],
    seq: Option<i64>,
    (action, resource): (&str, &str),
    at: i64,
) -> AuditRecord {
    AuditRecord {
        trace_id: crate::trace_id(),
        ..AuditRecord::new(
            AuditEvent::Decision,
            at,
            format!("run:{}", run.id),
            chain.to_vec(),
            action,
            resource,
        )
        .in_run(Some(run.id.to_string()), seq.map(|s| s.to_string()))
    }
}
