//! A tool call: one of the agent's tools, with the arguments the model gave, under the
//! agent's tool policy (timeouts, retries, breaker, fallbacks).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::Sha256;
use steward_store::JournalEntry;
use steward_tools::{AlsoDecided, ToolContext, Wait};
use steward_types::RunId;

use super::syscall::{body_of, fingerprint, Journaled, Syscall};
use super::{ConversationHash, Kernel, RunCtx, StepError};

/// A tool's result, or the error it reported: errors are shown to the model, not fatal.
pub type ToolResult = Result<Value, String>;

/// A call of the tool `name` with `args`, as the model asked for it.
#[derive(Clone, Copy, Debug)]
pub struct ToolCall<'a> {
    pub name: &'a str,
    pub args: &'a Value,
}

impl Syscall for ToolCall<'_> {
    type Outcome = ToolResult;
    const KIND: &'static str = "tool";

    fn name(&self) -> &str {
        self.name
    }

    fn span(&self, ctx: &RunCtx, seq: i64) -> tracing::Span {
        tracing::info_span!(
            "syscall",
            "otel.name" = %format_args!("execute_tool {}", self.name),
            run_id = %ctx.run.id,
            seq,
            kind = Self::KIND,
            "gen_ai.operation.name" = "execute_tool",
            "gen_ai.tool.name" = %self.name,
        )
    }

    fn request_hash(&self, _: &mut ConversationHash) -> String {
        fingerprint(Sha256::default(), Self::KIND, self.name, self.args)
    }

    fn intent_body(&self) -> Value {
        self.args.clone()
    }

    fn decided_as<'a>(&'a self, _: &'a RunCtx) -> (&'static str, &'a str) {
        ("tool.call", self.name)
    }

    /// What the tool says it does besides (starting an agent is also `agent.spawn` on it,
    /// running code is also `sandbox.exec` on the run's sandbox).
    fn also_decided(&self, kernel: &Kernel, ctx: &RunCtx) -> Option<AlsoDecided> {
        kernel
            .tools
            .get(self.name)
            .and_then(|t| t.also_decided(&ctx.run.id, self.args))
    }

    fn idempotent(&self, kernel: &Kernel) -> bool {
        crate::tool_search::is_meta(self.name)
            || kernel
                .tools
                .get(self.name)
                .is_some_and(|t| t.idempotent(self.args))
    }

    /// A metered tool (sandbox CPU, when charged) holds its worst case like a model call.
    fn worst_case(&self, kernel: &Kernel, _: &RunCtx, _: &str) -> Option<Result<i64, String>> {
        kernel
            .tools
            .get(self.name)
            .and_then(|t| t.meter())
            .and_then(|m| kernel.meters.worst_case_nanos(m.name))
            .map(Ok)
    }

    async fn act(
        &self,
        kernel: &Kernel,
        ctx: &RunCtx,
        seq: i64,
        key: &str,
    ) -> Result<(ToolResult, i64), StepError> {
        let (name, args) = (self.name, self.args);
        let step_timeout = Duration::from_millis(ctx.spec.step_timeout);
        // Authorize: an agent calls only the tools its spec lists.
        if !ctx.spec.lists_tool(name) {
            return Ok((
                (Err(format!("tool {name:?} is not available to this agent"))),
                0,
            ));
        }
        // The meta-tools search and describe what the agent's spec gives it; what they answer
        // is journaled like any result, so a replay offers the model the same tools.
        if crate::tool_search::is_meta(name) {
            use crate::tool_search::{self, ToolView};
            if let Err(why) =
                kernel
                    .tool_plane
                    .check_args(name, &tool_search::schema_of(name), args)
            {
                return Ok((Err(why), 0));
            }
            let visible: Vec<ToolView> = kernel
                .tools
                .matching(&ctx.spec.tools)
                .iter()
                .map(|t| ToolView::of(t.info().name.to_string(), t.as_ref()))
                .collect();
            return Ok((Ok(tool_search::answer(name, args, &visible)), 0));
        }
        let Some(tool) = kernel.tools.get(name) else {
            return Ok(((Err(format!("no tool named {name:?} exists"))), 0));
        };
        // Arguments that break the tool's schema never reach it (an upstream server, say): the
        // model is told which field is wrong. Then the per-minute limits.
        let plane = &kernel.tool_plane;
        if let Err(why) = plane.check_args(name, &tool.info().parameters, args) {
            return Ok((Err(why), 0));
        }
        let run = ctx.run.id.as_str();
        if let Err(refused) = plane.take_rate(name, &ctx.run.agent, Some(run)).await {
            return Ok((Err(refused.to_string()), 0));
        }
        let tctx = ToolContext {
            run_id: Some(ctx.run.id.clone()),
            seq,
            idempotency_key: key.to_string(),
            host: kernel.host.clone(),
            traceparent: crate::traceparent(),
            progress: None,
            // Whose own credentials `{{user_secret:NAME}}` means: the agent's owner.
            owner: kernel
                .authority
                .identities
                .owner(&ctx.run.agent)
                .await
                .ok()
                .flatten()
                .map(|o| format!("user:{o}")),
        };
        let result = if let Some(p) = ctx.spec.tool_policies.get(name as &str) {
            kernel
                .resilient_tool(ctx, name, args, &tctx, p, step_timeout)
                .await?
        } else if tool.wait() == Wait::UntilDone {
            // Waiting on work of its own (a child run, bounded by its own timeout) is
            // abandoned on shutdown without an outcome: such a tool is idempotent, so
            // the next life calls it again and finds the same work.
            tokio::select! {
                r = tool.call(&tctx, args.clone()) => r.map_err(|e| e.to_string()),
                _ = kernel.draining.cancelled() => return Err(StepError::Draining),
            }
        } else {
            match tokio::time::timeout(step_timeout, tool.call(&tctx, args.clone())).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "the tool did not finish within stepTimeout ({} ms)",
                    ctx.spec.step_timeout
                )),
            }
        };
        // A metered tool is charged at what the call used.
        let spent = match (&result, tool.meter()) {
            (Ok(v), Some(m)) => kernel.meters.cost_nanos(m.name, (m.used)(v)),
            _ => 0,
        };
        Ok((result, spent))
    }

    /// A denied tool call's error is shown to the model: it may do something else.
    fn denied(&self, by: &str) -> Result<ToolResult, StepError> {
        Ok(Err(format!("tool {:?} denied by policy: {by}", self.name)))
    }

    fn journaled(result: &ToolResult) -> Journaled {
        match result {
            Ok(v) => Journaled {
                body: json!({ "ok": v }).to_string(),
                ok: true,
                tokens_in: 0,
                tokens_out: 0,
            },
            Err(e) => Journaled::failed(json!({ "error": e })),
        }
    }

    fn replayed(e: &JournalEntry) -> Result<ToolResult, StepError> {
        let v = body_of(e)?;
        Ok(match v.get("error") {
            Some(err) => Err(err.as_str().unwrap_or_default().to_string()),
            None => Ok(v.get("ok").cloned().unwrap_or(Value::Null)),
        })
    }
}

impl Kernel {
    /// A tool call under its agent's `toolPolicies` entry: each attempt bounded by the policy's
    /// timeout, failures of the classes it names retried with the router's backoff, the
    /// fleet-wide circuit breaker `tool:<name>` consulted and fed, and the fallback tool tried
    /// with the same arguments when all that still fails, then the fallback agent. All within
    /// the one journaled step.
    async fn resilient_tool(
        &self,
        ctx: &RunCtx,
        name: &str,
        args: &Value,
        tctx: &ToolContext,
        p: &steward_types::manifest::ToolPolicy,
        step_timeout: Duration,
    ) -> Result<Result<Value, String>, StepError> {
        let timeout = p
            .timeout_ms
            .map_or(step_timeout, |t| Duration::from_millis(t).min(step_timeout));
        let attempts = p.retry.as_ref().map_or(1, |r| r.max_attempts.max(1));
        let retried = |class: &str| {
            p.retry
                .as_ref()
                .is_some_and(|r| r.on.iter().any(|c| c == class))
        };
        let label = format!("tool:{name}");
        let breakers = self.router.breakers();
        let mut last = Err(format!("tool {name:?} was not called"));
        for attempt in 0..attempts {
            if p.breaker && !breakers.allow(&label, Instant::now()) {
                last = Err(format!(
                    "tool {name:?}: its circuit is open after repeated failures across the fleet; not called"
                ));
                break;
            }
            let Some(tool) = self.tools.get(name) else {
                return Ok(Err(format!("no tool named {name:?} exists")));
            };
            let (result, class) =
                match tokio::time::timeout(timeout, tool.call(tctx, args.clone())).await {
                    Ok(Ok(v))
                        if v.get("status")
                            .and_then(Value::as_u64)
                            .is_some_and(|s| s >= 500) =>
                    {
                        (Ok(v), Some("5xx"))
                    }
                    Ok(Ok(v)) => (Ok(v), None),
                    Ok(Err(e)) => (Err(e.to_string()), Some("error")),
                    Err(_) => (
                        Err(format!(
                            "the tool did not finish within {} ms",
                            timeout.as_millis()
                        )),
                        Some("timeout"),
                    ),
                };
            last = result;
            let Some(class) = class else {
                if p.breaker {
                    breakers.success(&label);
                }
                return Ok(last);
            };
            if p.breaker {
                breakers.failure(&label, Instant::now());
            }
            if !retried(class) || attempt + 1 == attempts {
                break;
            }
            let initial = p.retry.as_ref().map_or(200, |r| r.initial_ms);
            let seed = ctx.run.id.as_str().bytes().fold(tctx.seq as u64, |h, b| {
                h.wrapping_mul(31).wrapping_add(u64::from(b))
            });
            tokio::time::sleep(steward_llm::resilience::retry_delay(
                attempt,
                Duration::from_millis(initial),
                None,
                seed,
            ))
            .await;
        }
        let failed = |r: &Result<Value, String>| match r {
            Err(_) => true,
            Ok(v) => v
                .get("status")
                .and_then(Value::as_u64)
                .is_some_and(|s| s >= 500),
        };
        if let (true, Some(other)) = (failed(&last), &p.fallback) {
            // The fallback is a tool call of its own: listed, decided and audited like the
            // first, never run on the first one's permit.
            if let Some(refused) = self.may_fallback(ctx, other, args, tctx.seq).await? {
                let why = match &last {
                    Err(e) => e.clone(),
                    Ok(v) => format!("the tool answered with status {}", v["status"]),
                };
                return Ok(Err(format!(
                    "{why}; the fallback tool {other:?} was not called: {refused}"
                )));
            }
            if let Some(tool) = self.tools.get(other) {
                last = match tokio::time::timeout(step_timeout, tool.call(tctx, args.clone())).await
                {
                    Ok(r) => r.map_err(|e| format!("fallback {other:?} failed too: {e}")),
                    Err(_) => Err(format!(
                        "fallback {other:?} did not finish within stepTimeout"
                    )),
                };
            }
        }
        match (failed(&last), &p.fallback_agent) {
            (true, Some(agent)) => {
                let why = match &last {
                    Err(e) => e.clone(),
                    Ok(v) => format!("the tool answered with status {}", v["status"]),
                };
                self.fallback_agent(ctx, name, args, tctx.seq, agent, &why)
                    .await
            }
            _ => Ok(last),
        }
    }

    /// Hands a failed tool call to the policy's fallback agent: a child run (id derived from
    /// the step, so a replayed step finds it again), started only if `agent.spawn` on that
    /// agent is allowed — the decision audited like any other — whose answer is the result.
    async fn fallback_agent(
        &self,
        ctx: &RunCtx,
        tool: &str,
        args: &Value,
        seq: i64,
        agent: &str,
        why: &str,
    ) -> Result<Result<Value, String>, StepError> {
        if let Some(refused) = self.may_spawn(ctx, agent, seq).await? {
            return Ok(Err(format!(
                "{why}; the fallback agent {agent:?} was not started: {refused}"
            )));
        }
        let child = RunId::child_of(&ctx.run.id, seq);
        let input = json!({ "tool": tool, "arguments": args, "error": why }).to_string();
        // Waiting is abandoned on shutdown; the next life finds the same child and waits again.
        let waited = tokio::select! {
            r = self.host.spawn_and_wait(&ctx.run.id, &child, agent, &input, None) => r,
            _ = self.draining.cancelled() => return Err(StepError::Draining),
        };
        Ok(match waited {
            Ok(o) if o.state == "succeeded" => {
                Ok(json!({ "fallback_agent": agent, "run_id": o.run_id, "result": o.result }))
            }
            Ok(o) => Err(format!(
                "{why}; the fallback agent {agent:?} (run {}) {}: {}",
                o.run_id,
                o.state,
                o.error.unwrap_or_default()
            )),
            Err(e) => Err(format!("{why}; the fallback agent {agent:?}: {e}")),
        })
    }

    /// Whether this run may start `agent` as a child other than by a tool call (a fallback):
    /// the policy's `agent.spawn` decision and the run's own grant, audited. A permit that asks
    /// for approval counts as no: a fallback does not wait for a human.
    async fn may_spawn(
        &self,
        ctx: &RunCtx,
        agent: &str,
        seq: i64,
    ) -> Result<Option<String>, StepError> {
        self.may_act_unattended(ctx, "agent.spawn", agent, seq)
            .await
    }

    /// Whether the fallback tool `tool` may be called with `args` in place of a failed one:
    /// it must be one of the agent's tools, and `tool.call` on it — and what the tool does
    /// besides (`agent.spawn`, `sandbox.exec`) — must be allowed without an approval.
    async fn may_fallback(
        &self,
        ctx: &RunCtx,
        tool: &str,
        args: &Value,
        seq: i64,
    ) -> Result<Option<String>, StepError> {
        if !ctx.spec.lists_tool(tool) {
            return Ok(Some(
                "it is not one of this agent's tools (spec.tools)".to_string(),
            ));
        }
        if let Some(refused) = self.may_act_unattended(ctx, "tool.call", tool, seq).await? {
            return Ok(Some(refused));
        }
        let also = self
            .tools
            .get(tool)
            .and_then(|t| t.also_decided(&ctx.run.id, args));
        match also {
            Some(also) => {
                self.may_act_unattended(ctx, also.action, &also.resource, seq)
                    .await
            }
            None => Ok(None),
        }
    }
}
