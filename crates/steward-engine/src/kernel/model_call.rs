//! A model call: one turn of the agent's conversation, through the router — fallbacks,
//! retries and breakers, the gateway's path — or the scripted model.

use std::time::Duration;

use serde_json::{json, Value};
use steward_gov::Decision;
use steward_llm::{ChatRequest, ChatResponse};
use steward_store::JournalEntry;

use super::syscall::{body_of, corrupt, fingerprint, Journaled, Syscall};
use super::{ConversationHash, Kernel, RunCtx, StepError};
use crate::authority::{decision_record, run_query};
use crate::budgets::DEFAULT_MAX_OUTPUT;

/// How journals written before denials were marked (`"denied": true`) told one: by this prefix
/// on the error's text. Read only to replay those journals.
const LEGACY_DENIAL_PREFIX: &str = "policy_denied:";

/// The run's next model call: its whole conversation so far. Borrowed: the loop keeps its
/// conversation and the Kernel never needs a copy of it.
#[derive(Clone, Copy, Debug)]
pub struct ModelCall<'a> {
    pub request: &'a ChatRequest,
}

impl Syscall for ModelCall<'_> {
    type Outcome = ChatResponse;
    const KIND: &'static str = "model";
    const BILLED_WHEN_INTERRUPTED: bool = true;

    fn name(&self) -> &str {
        &self.request.model
    }

    fn span(&self, ctx: &RunCtx, seq: i64) -> tracing::Span {
        tracing::info_span!(
            "syscall",
            "otel.name" = %format_args!("chat {}", ctx.spec.model),
            run_id = %ctx.run.id,
            seq,
            kind = Self::KIND,
            "gen_ai.operation.name" = "chat",
            "gen_ai.request.model" = %ctx.spec.model,
            "gen_ai.provider.name" = tracing::field::Empty,
            "gen_ai.usage.input_tokens" = tracing::field::Empty,
            "gen_ai.usage.output_tokens" = tracing::field::Empty,
        )
    }

    /// A conversation only grows, so its messages are hashed once each into a running state
    /// kept in the `RunCtx`: the cost of a step does not grow with the run's length.
    fn request_hash(&self, conversation: &mut ConversationHash) -> String {
        let r = self.request;
        let conversation = conversation.absorb(&r.messages);
        fingerprint(
            conversation,
            Self::KIND,
            self.name(),
            &(&r.tools, r.max_tokens),
        )
    }

    fn intent_body(&self) -> Value {
        let r = self.request;
        json!({
            "model": r.model,
            "messages": r.messages.len(),
            "last": r.messages.last().and_then(|m| m.content.clone()),
            "tools": r.tools.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        })
    }

    /// Decided on the name the agent's spec gives (an alias or `provider/model`); the
    /// deployments it may reach are decided as well when it acts.
    fn decided_as<'a>(&'a self, ctx: &'a RunCtx) -> (&'static str, &'a str) {
        ("llm.call", ctx.spec.model.as_str())
    }

    /// A model call has no effect beyond its cost; re-asking is safe.
    fn idempotent(&self, _: &Kernel) -> bool {
        true
    }

    /// The scripted model costs nothing; every other call holds its worst case.
    fn worst_case(&self, kernel: &Kernel, ctx: &RunCtx, key: &str) -> Option<Result<i64, String>> {
        ctx.provider
            .is_none()
            .then(|| kernel.estimate(ctx, self.request, key))
    }

    async fn act(
        &self,
        kernel: &Kernel,
        ctx: &RunCtx,
        seq: i64,
        key: &str,
    ) -> Result<(ChatResponse, i64), StepError> {
        let request = self.request;
        let step_timeout = Duration::from_millis(ctx.spec.step_timeout);
        let acted = {
            // What is actually called is decided, not only the name the spec gives.
            let plan = match &ctx.provider {
                Some(_) => None,
                None => Some(kernel.permitted_plan(ctx, key, seq).await?),
            };
            // The scripted provider plays its script; every real model goes through the
            // router (fallbacks, retries, breakers), the same path as the gateway's.
            let attempt = async {
                match &ctx.provider {
                    Some(p) => p.chat(request).await.map(|r| (r, 0)),
                    None => {
                        // The hold assumed at most DEFAULT_MAX_OUTPUT tokens when the agent
                        // set no limit: the upstream is held to it too.
                        let bounded;
                        let request = if request.max_tokens.is_none() {
                            bounded = ChatRequest {
                                max_tokens: Some(DEFAULT_MAX_OUTPUT as u32),
                                ..request.clone()
                            };
                            &bounded
                        } else {
                            request
                        };
                        let plan = plan.as_ref().ok_or_else(|| {
                            steward_llm::Error::Route("no plan for the model call".into())
                        })?;
                        let (r, label) = kernel.router.chat_planned(key, plan, request).await?;
                        let spent = kernel.budgets.cost(
                            &label,
                            r.usage.input_tokens as i64,
                            r.usage.output_tokens as i64,
                        );
                        Ok((r, spent.unwrap_or(0)))
                    }
                }
            };
            match tokio::time::timeout(step_timeout, attempt).await {
                Ok(Ok((r, spent))) => Ok((r, spent)),
                Ok(Err(e)) => Err(StepError::Model(e.to_string())),
                Err(_) => Err(StepError::ModelTimeout(format!(
                    "the model call did not finish within the agent's stepTimeout ({} ms)",
                    ctx.spec.step_timeout
                ))),
            }
        };
        if let Ok((r, _)) = &acted {
            let span = tracing::Span::current();
            span.record("gen_ai.provider.name", r.provider.as_str());
            // As i64: exporters carry u64 as strings.
            span.record("gen_ai.usage.input_tokens", r.usage.input_tokens as i64);
            span.record("gen_ai.usage.output_tokens", r.usage.output_tokens as i64);
        }
        acted
    }

    /// A denied model call ends the run.
    fn denied(&self, by: &str) -> Result<ChatResponse, StepError> {
        Err(StepError::PolicyDenied(format!(
            "the model call was denied by policy: {by}"
        )))
    }

    fn journaled(r: &ChatResponse) -> Journaled {
        Journaled {
            body: serde_json::to_string(r).unwrap_or_default(),
            ok: true,
            tokens_in: r.usage.input_tokens as i64,
            tokens_out: r.usage.output_tokens as i64,
        }
    }

    fn replayed(e: &JournalEntry) -> Result<ChatResponse, StepError> {
        let v = body_of(e)?;
        if let Some(err) = v.get("error") {
            let msg = err.as_str().unwrap_or_default().to_string();
            return Err(if v.get("timeout").is_some() {
                StepError::ModelTimeout(msg)
            } else if v.get("denied").is_some() {
                StepError::PolicyDenied(msg)
            } else if let Some(rest) = msg.strip_prefix(LEGACY_DENIAL_PREFIX) {
                StepError::PolicyDenied(rest.trim_start().to_string())
            } else {
                StepError::Model(msg)
            });
        }
        serde_json::from_value(v).map_err(|err| corrupt(e, err))
    }
}

impl Kernel {
    /// The most a model call can cost — its size in tokens plus its output limit, at the
    /// dearest deployment its route may reach — or why that cannot be known (a deployment
    /// without a price). For the policy's context and the budget hold alike.
    fn estimate(&self, ctx: &RunCtx, request: &ChatRequest, key: &str) -> Result<i64, String> {
        let plan = self
            .router
            .plan(&ctx.spec.model, key)
            .map_err(|e| e.to_string())?;
        let (tokens_in, tokens_out) = crate::budgets::bounds_of(request);
        self.budgets.worst_case(&plan, tokens_in, tokens_out)
    }

    /// The plan for this run's model call with every deployment the policy refuses left out
    /// (`llm.call` on `provider/model`, decided beside the one on the name the spec gives): a
    /// forbidden deployment is never reached through an alias. Refusals are audited; a call
    /// none of whose deployments may be called is denied.
    ///
    /// A child run's grant is not consulted here: a grant's `models` name routes, as a caller
    /// asks for a model, and the route was checked against it with the call itself; the
    /// deployments a granted route lists are the operator's, each decided by the policy — as
    /// the gateway does for a delegated token.
    async fn permitted_plan(
        &self,
        ctx: &RunCtx,
        key: &str,
        seq: i64,
    ) -> Result<steward_llm::Plan, StepError> {
        let model = ctx.spec.model.as_str();
        let mut plan = self
            .router
            .plan(model, key)
            .map_err(|e| StepError::Model(e.to_string()))?;
        let labels: std::collections::BTreeSet<String> = plan
            .all()
            .map(|d| d.label.clone())
            .filter(|l| l != model)
            .collect();
        if labels.is_empty() {
            return Ok(plan);
        }
        let acts = self.acts_for(ctx).await?;
        let now = self.clock.now_ms();
        let mut refused: Vec<(String, Decision)> = Vec::new();
        let mut records = Vec::new();
        for label in labels {
            let d =
                self.authority
                    .decide(&run_query(&ctx.run, &acts, now, ("llm.call", &label), 0));
            if d.allow && d.approval.is_none() {
                continue;
            }
            records.push((
                now,
                steward_gov::AuditRecord {
                    error: Some(format!("deployment of {model} left out of the call")),
                    ..decision_record(&ctx.run, &acts.chain, Some(seq), ("llm.call", &label), now)
                        .decided("deny", Some(&d))
                }
                .to_json(),
            ));
            refused.push((label, d));
        }
        if refused.is_empty() {
            return Ok(plan);
        }
        self.record(ctx, Vec::new(), records).await?;
        if !plan.retain_allowed(|l| refused.iter().any(|(r, _)| r == l)) {
            return Err(StepError::PolicyDenied(format!(
                "the model call was denied by policy: every deployment {model} routes to is refused: {}",
                crate::gateway::refused_deployments(refused.iter().map(|(l, d)| (l.as_str(), d)))
            )));
        }
        Ok(plan)
    }
}
