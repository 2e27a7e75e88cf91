//! Agent manifests: Kubernetes-style YAML documents (`kind: Agent`, `metadata`, `spec`).
//!
//! Parsing rejects unknown fields and wrong types with the path of the offending field
//! (`spec.maxSteps: invalid type: string "ten", expected u32`), then checks the values.

use serde::{Deserialize, Serialize};

use crate::ids::AgentName;

pub const API_VERSION: &str = "steward.dev/v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ManifestError(pub String);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentManifest {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: AgentSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: AgentName,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The meta-tool that finds tools by what they do (MCP clients always have it; managed agents
/// with `spec.toolSearch`).
pub const TOOLS_SEARCH: &str = "tools_search";
/// The meta-tool that shows tools' argument schemas, by name.
pub const TOOLS_DESCRIBE: &str = "tools_describe";

/// What an agent is: the version of this a run starts with is the version it keeps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentSpec {
    /// `provider/model` (e.g. `openai/gpt-4o-mini`), a model alias from `[llm.routes]`, or
    /// `scripted` with a `script`.
    pub model: String,
    #[serde(default)]
    pub system_prompt: String,
    #[serde(default)]
    pub tools: Vec<String>,
    /// Offer the model `tools_search` and `tools_describe` instead of every tool `tools`
    /// gives: a tool's schema joins what the model is offered once `tools_describe` showed it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tool_search: bool,
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    #[serde(default = "default_step_timeout", with = "duration")]
    pub step_timeout: u64,
    #[serde(default = "default_run_timeout", with = "duration")]
    pub run_timeout: u64,
    #[serde(default)]
    pub recovery: RecoveryPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Spending limits of the agent's runs, and what a run does when a model call would pass
    /// one (of the run's own account or any above it: `agent:<name>`, its team, its org).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RunBudget>,
    /// The run's sandbox (for `sandbox_exec`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<SandboxSpec>,
    /// Failure handling per tool: timeout, retries, a circuit breaker shared by the fleet, a
    /// fallback tool.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tool_policies: std::collections::BTreeMap<String, ToolPolicy>,
    /// Undo steps: when a run fails or is cancelled part-way, each of its successful calls of a
    /// tool named here is undone by the step given — in reverse order, in a compensation run.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub compensation: std::collections::BTreeMap<String, Compensation>,
    /// Progress checks beyond `stepTimeout`: a run that keeps making the same tool call is
    /// stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness: Option<Liveness>,
    /// A task queue the agent serves: each task it leases becomes a run of the agent with the
    /// task's payload as input, and the run's end finishes the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<TaskSource>,
    /// Memories recalled into the run's context before its first model call: a
    /// `memory_search` step with the run's input as the query, journaled like any step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryRecall>,
    /// The turns the `scripted` provider plays, in order. Only with `model: scripted`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub script: Vec<ScriptTurn>,
}

fn default_max_steps() -> u32 {
    20
}
fn default_step_timeout() -> u64 {
    60_000
}
fn default_run_timeout() -> u64 {
    3_600_000
}

/// What to do with a step whose intent is journaled but whose outcome is not (the process died
/// while acting) and whose action is not idempotent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryPolicy {
    /// Act again. Only for tools whose double effect is harmless.
    Retry,
    /// Fail the run with `in_doubt`.
    Fail,
    /// Park the run in `waiting` until a human resolves it.
    #[default]
    WaitForHuman,
}

impl RecoveryPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryPolicy::Retry => "retry",
            RecoveryPolicy::Fail => "fail",
            RecoveryPolicy::WaitForHuman => "wait_for_human",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RunBudget {
    /// Each run's cap, US dollars: the run gets the budget account `run:<id>` with this cap,
    /// under `agent:<name>` when that account exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_run_usd: Option<f64>,
    #[serde(default)]
    pub on_exceeded: BudgetPolicy,
}

/// What a run does when its next model call's worst case does not fit a budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPolicy {
    /// Fail the run with `budget_exceeded`.
    #[default]
    Fail,
    /// Park the run in `waiting` until a human raises the budget and resolves it (`retry`),
    /// or fails it.
    WaitForHuman,
}

/// One reply of the scripted model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScriptTurn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ScriptToolCall>,
    /// Simulated model latency.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delay_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptToolCall {
    pub name: String,
    #[serde(default)]
    pub arguments: serde_json::Value,
}

/// A `kind: Supervisor` document: its name and its spec, checked by the engine.
#[derive(Clone, Debug, PartialEq)]
pub struct SupervisorDoc {
    pub name: String,
    pub spec: serde_json::Value,
}

/// Parses every document of a YAML (or JSON) stream into agent manifests.
/// Documents are all-or-nothing: one bad document rejects the whole stream.
pub fn parse_manifests(text: &str) -> Result<Vec<AgentManifest>, ManifestError> {
    let (agents, supervisors) = parse_documents(text)?;
    if !supervisors.is_empty() {
        return Err(ManifestError(
            "kind: Supervisor documents are applied through the engine".into(),
        ));
    }
    Ok(agents)
}

/// Parses every document of a YAML (or JSON) stream: agents (`kind: Agent`) and supervisors
/// (`kind: Supervisor`). All-or-nothing: one bad document rejects the whole stream.
pub fn parse_documents(
    text: &str,
) -> Result<(Vec<AgentManifest>, Vec<SupervisorDoc>), ManifestError> {
    let mut out = Vec::new();
    let mut supervisors = Vec::new();
    // Aliases are expanded when a document is read: measure first, so a small text of many
    // aliases of a large anchor never becomes gigabytes of values.
    let mut left = MAX_EXPANDED_BYTES;
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        serde::de::DeserializeSeed::deserialize(expanded::Measure(&mut left), doc)
            .map_err(|e| ManifestError(format!("document {}: malformed YAML: {e}", i + 1)))?;
    }
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|e| ManifestError(format!("document {}: malformed YAML: {e}", i + 1)))?;
        if value.is_null() {
            continue; // an empty document, e.g. a trailing `---`
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        if kind == "Supervisor" {
            let name = value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                .ok_or_else(|| {
                    ManifestError(format!("document {}: metadata.name: missing", i + 1))
                })?;
            let spec = serde_json::to_value(value.get("spec").cloned().unwrap_or_default())
                .map_err(|e| ManifestError(format!("document {}: spec: {e}", i + 1)))?;
            supervisors.push(SupervisorDoc {
                name: name.to_string(),
                spec,
            });
            continue;
        }
        if kind != "Agent" {
            return Err(ManifestError(format!(
                "document {}: kind: expected \"Agent\" or \"Supervisor\", found {:?}",
                i + 1,
                value
                    .get("kind")
                    .map(yaml_brief)
                    .unwrap_or_else(|| "nothing".into())
            )));
        }
        let manifest: AgentManifest = serde_path_to_error::deserialize(value).map_err(|e| {
            ManifestError(format!("document {}: {}: {}", i + 1, e.path(), e.inner()))
        })?;
        manifest.validate().map_err(|e| {
            ManifestError(format!(
                "document {} ({}): {e}",
                i + 1,
                manifest.metadata.name
            ))
        })?;
        out.push(manifest);
    }
    if out.is_empty() && supervisors.is_empty() {
        return Err(ManifestError(
            "no manifest found: expected at least one `kind: Agent` or `kind: Supervisor` document"
                .into(),
        ));
    }
    Ok((out, supervisors))
}

/// The most a manifest stream may expand to, aliases expanded (bytes of scalars, plus a few
/// per node).
pub const MAX_EXPANDED_BYTES: usize = 16 * 1024 * 1024;

/// Walks a YAML document as the deserializer expands it, without keeping anything, and stops
/// once it has grown past a budget.
mod expanded {
    use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    /// Bytes charged for a node besides its scalar's length.
    const NODE: usize = 16;

    pub struct Measure<'a>(pub &'a mut usize);

    impl Measure<'_> {
        fn take<E: de::Error>(&mut self, n: usize) -> Result<(), E> {
            match self.0.checked_sub(n) {
                Some(left) => {
                    *self.0 = left;
                    Ok(())
                }
                None => Err(E::custom(format!(
                    "with its aliases expanded the manifest is larger than {} MiB; write it out, or use fewer aliases",
                    super::MAX_EXPANDED_BYTES / (1024 * 1024)
                ))),
            }
        }
    }

    impl<'de> DeserializeSeed<'de> for Measure<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Measure<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any YAML value")
        }
        fn visit_bool<E: de::Error>(mut self, _: bool) -> Result<(), E> {
            self.take(NODE)
        }
        fn visit_i64<E: de::Error>(mut self, _: i64) -> Result<(), E> {
            self.take(NODE)
        }
        fn visit_u64<E: de::Error>(mut self, _: u64) -> Result<(), E> {
            self.take(NODE)
        }
        fn visit_f64<E: de::Error>(mut self, _: f64) -> Result<(), E> {
            self.take(NODE)
        }
        fn visit_str<E: de::Error>(mut self, v: &str) -> Result<(), E> {
            self.take(NODE.saturating_add(v.len()))
        }
        fn visit_bytes<E: de::Error>(mut self, v: &[u8]) -> Result<(), E> {
            self.take(NODE.saturating_add(v.len()))
        }
        fn visit_unit<E: de::Error>(mut self) -> Result<(), E> {
            self.take(NODE)
        }
        fn visit_none<E: de::Error>(mut self) -> Result<(), E> {
            self.take(NODE)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
        fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
            self.take(NODE)?;
            while seq.next_element_seed(Measure(&mut *self.0))?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
            self.take(NODE)?;
            while map.next_key_seed(Measure(&mut *self.0))?.is_some() {
                map.next_value_seed(Measure(&mut *self.0))?;
            }
            Ok(())
        }
        fn visit_enum<A: de::EnumAccess<'de>>(mut self, data: A) -> Result<(), A::Error> {
            use de::VariantAccess;
            self.take(NODE)?;
            let (_, variant) = data.variant::<de::IgnoredAny>()?;
            variant.newtype_variant_seed(Measure(&mut *self.0))
        }
    }
}

fn yaml_brief(v: &serde_yaml::Value) -> String {
    serde_yaml::to_string(v)
        .unwrap_or_default()
        .trim()
        .chars()
        .take(40)
        .collect()
}

impl AgentManifest {
    fn validate(&self) -> Result<(), ManifestError> {
        if self.api_version != API_VERSION {
            return Err(ManifestError(format!(
                "apiVersion: expected {API_VERSION:?}, found {:?}",
                self.api_version
            )));
        }
        self.spec.validate()
    }
}

/// Whether an entry of `spec.tools` names `tool`: the tool's own name, or `prefix.*` for every
/// tool an upstream MCP server `prefix` offers (`github.*` covers `github.create_issue`).
pub fn tool_pattern_covers(pattern: &str, tool: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(prefix) => tool
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.')),
        None => pattern == tool,
    }
}

impl AgentSpec {
    /// Whether `spec.tools` gives the agent `tool`, by name or by an upstream's prefix (or
    /// `spec.memory` gives it `memory_search`, which its recall step is).
    pub fn lists_tool(&self, tool: &str) -> bool {
        self.tools.iter().any(|p| tool_pattern_covers(p, tool))
            || (self.tool_search && (tool == TOOLS_SEARCH || tool == TOOLS_DESCRIBE))
            || (self.memory.is_some() && tool == MEMORY_SEARCH)
    }

    pub fn is_scripted(&self) -> bool {
        self.model == "scripted"
    }

    fn validate(&self) -> Result<(), ManifestError> {
        let err = |m: String| Err(ManifestError(m));
        if let Some(m) = &self.memory {
            if !(1..=20).contains(&m.recall) {
                return err(format!("spec.memory.recall: {} is not 1 to 20", m.recall));
            }
            if !(1..=8000).contains(&m.max_tokens) {
                return err(format!(
                    "spec.memory.maxTokens: {} is not 1 to 8000",
                    m.max_tokens
                ));
            }
            if m.scopes.len() > 8 || m.scopes.iter().any(|s| s.is_empty() || s.len() > 200) {
                return err("spec.memory.scopes: at most 8, each 1 to 200 characters".into());
            }
        }
        if let Some(l) = &self.liveness {
            if !["fail", "escalate", "restart"].contains(&l.on_loop.as_str()) {
                return err(format!(
                    "spec.liveness.onLoop: {:?} is not fail, escalate or restart",
                    l.on_loop
                ));
            }
            if l.max_repeats == 0 || l.max_restarts > 10 {
                return err("spec.liveness: maxRepeats at least 1, maxRestarts at most 10".into());
            }
        }
        for (name, c) in &self.compensation {
            if !self.lists_tool(name) || !self.lists_tool(&c.tool) {
                return err(format!(
                    "spec.compensation.{name}: both {name:?} and its undo tool {:?} must be in spec.tools",
                    c.tool
                ));
            }
        }
        for (name, p) in &self.tool_policies {
            let at = format!("spec.toolPolicies.{name}");
            if !self.lists_tool(name) {
                return err(format!("{at}: {name:?} is not in spec.tools"));
            }
            if let Some(f) = &p.fallback {
                if !self.lists_tool(f) || f == name {
                    return err(format!(
                        "{at}.fallback: {f:?} must be another tool in spec.tools"
                    ));
                }
            }
            if let Some(a) = &p.fallback_agent {
                if let Err(e) = AgentName::parse(a) {
                    return err(format!("{at}.fallbackAgent: {}", e.0));
                }
            }
            if p.timeout_ms == Some(0) {
                return err(format!("{at}.timeoutMs: above 0"));
            }
            if let Some(r) = &p.retry {
                if !(1..=10).contains(&r.max_attempts) || r.initial_ms > 60_000 {
                    return err(format!(
                        "{at}.retry: maxAttempts from 1 to 10, initialMs at most 60000"
                    ));
                }
                if let Some(bad) =
                    r.on.iter()
                        .find(|c| !["error", "timeout", "5xx"].contains(&c.as_str()))
                {
                    return err(format!(
                        "{at}.retry.on: {bad:?} is not error, timeout or 5xx"
                    ));
                }
            }
        }
        if self.is_scripted() {
            if self.script.is_empty() {
                return err("spec.script: required with `model: scripted` (the turns the scripted model plays)".into());
            }
        } else {
            // `provider/model`, or a model alias from [llm.routes] (the engine checks it exists).
            let well_formed = !self.model.is_empty()
                && self.model.len() <= 200
                && !self.model.chars().any(char::is_whitespace)
                && match self.model.split_once('/') {
                    Some((p, m)) => !p.is_empty() && !m.is_empty(),
                    None => true,
                };
            if !well_formed {
                return err(format!(
                    "spec.model: expected `provider/model` (e.g. openai/gpt-4o-mini), a model alias, or `scripted`; found {:?}",
                    self.model
                ));
            }
            if !self.script.is_empty() {
                return err("spec.script: only allowed with `model: scripted`".into());
            }
        }
        if self.max_steps == 0 || self.max_steps > 10_000 {
            return err(format!(
                "spec.maxSteps: must be between 1 and 10000, found {}",
                self.max_steps
            ));
        }
        if self.step_timeout == 0 || self.run_timeout == 0 {
            return err("spec.stepTimeout / spec.runTimeout: must be greater than zero".into());
        }
        if let Some(usd) = self.budget.as_ref().and_then(|b| b.per_run_usd) {
            if !usd.is_finite() || !(0.0..=1e9).contains(&usd) {
                return err(format!(
                    "spec.budget.perRunUsd: a number of US dollars from 0 to 1e9, found {usd}"
                ));
            }
        }
        if self.system_prompt.len() > 256 * 1024 {
            return err("spec.systemPrompt: longer than 256 KiB".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, t) in self.tools.iter().enumerate() {
            if !seen.insert(t) {
                return err(format!("spec.tools[{i}]: {t:?} is listed twice"));
            }
        }
        for (i, turn) in self.script.iter().enumerate() {
            if turn.content.is_none() && turn.tool_calls.is_empty() {
                return err(format!(
                    "spec.script[{i}]: a turn needs `content` or `toolCalls`"
                ));
            }
            for (j, call) in turn.tool_calls.iter().enumerate() {
                if !self.lists_tool(&call.name) {
                    return err(format!(
                        "spec.script[{i}].toolCalls[{j}].name: {:?} is not in spec.tools",
                        call.name
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Durations as `250ms`, `30s`, `5m`, `2h`, or a bare number of milliseconds.
pub mod duration {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn parse(s: &str) -> Result<u64, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: use e.g. 250ms, 30s, 5m, 2h"))?;
        let mult = match unit {
            "" | "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: use e.g. 250ms, 30s, 5m, 2h"
                ))
            }
        };
        n.checked_mul(mult)
            .ok_or_else(|| format!("duration {s:?} is too large"))
    }

    pub fn serialize<S: Serializer>(ms: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{ms}ms"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(n),
            Raw::S(s) => parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_pattern_covers_its_servers_tools_only() {
        assert!(tool_pattern_covers("github.*", "github.create_issue"));
        assert!(tool_pattern_covers("github.*", "github.a.b"));
        assert!(
            !tool_pattern_covers("github.*", "github."),
            "a name, not the bare prefix"
        );
        assert!(!tool_pattern_covers("github.*", "githubx.create_issue"));
        assert!(!tool_pattern_covers("github.*", "gitlab.create_issue"));
        assert!(!tool_pattern_covers("github.*", "github"));
        assert!(tool_pattern_covers("echo", "echo"));
        assert!(!tool_pattern_covers("echo", "echo2"));
        assert!(
            !tool_pattern_covers("*", "echo"),
            "no wildcard for every tool"
        );
    }

    const GOOD: &str = r#"
apiVersion: steward.dev/v1
kind: Agent
metadata: {name: greeter}
spec:
  model: scripted
  tools: [echo]
  stepTimeout: 5s
  script:
    - toolCalls: [{name: echo, arguments: {x: 1}}]
    - content: done
"#;

    #[test]
    fn aliases_that_expand_past_the_bound_are_refused_quickly() {
        // One large anchor and many aliases of it: small text, huge expansion.
        let big = "x".repeat(400 * 1024);
        let text = format!(
            "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: a}}\nspec:\n  model: scripted\n  systemPrompt: &s {big}\n  script: [{}]\n",
            vec!["*s"; 200_000].join(", ")
        );
        let started = std::time::Instant::now();
        let e = parse_manifests(&text).unwrap_err();
        assert!(e.0.contains("aliases expanded"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        // Nested aliases (each level doubling) likewise.
        let mut nested = String::from("a0: &a0 [xxxxxxxxxxxxxxxx]\n");
        for i in 1..40 {
            nested.push_str(&format!("a{i}: &a{i} [*a{}, *a{}]\n", i - 1, i - 1));
        }
        let e = parse_manifests(&nested).unwrap_err();
        assert!(e.0.contains("malformed YAML"), "{e}");
        // A few aliases are fine.
        let ok = "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: a}\nspec:\n  model: scripted\n  systemPrompt: &p hello\n  script: [{content: *p}, {content: *p}]\n";
        assert_eq!(parse_manifests(ok).unwrap().len(), 1);
    }

    #[test]
    fn parses_a_scripted_agent_with_defaults() {
        let m = parse_manifests(GOOD).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].spec.step_timeout, 5_000);
        assert_eq!(m[0].spec.max_steps, 20);
        assert_eq!(m[0].spec.recovery, RecoveryPolicy::WaitForHuman);
    }

    #[test]
    fn tool_search_gives_the_meta_tools_and_is_left_out_when_off() {
        let m = parse_manifests(GOOD).unwrap();
        assert!(!m[0].spec.tool_search);
        assert!(!m[0].spec.lists_tool(TOOLS_SEARCH));
        // Off, it is not written: the specs stored before it existed read back the same.
        let written = serde_json::to_value(&m[0].spec).unwrap();
        assert!(written.get("toolSearch").is_none(), "{written}");
        let on = GOOD.replace("stepTimeout: 5s", "stepTimeout: 5s\n  toolSearch: true");
        let m = parse_manifests(&on).unwrap();
        assert!(m[0].spec.tool_search);
        assert!(m[0].spec.lists_tool(TOOLS_SEARCH) && m[0].spec.lists_tool(TOOLS_DESCRIBE));
        let bad = GOOD.replace(
            "stepTimeout: 5s",
            "stepTimeout: 5s\n  toolSearch: yes please",
        );
        assert!(parse_manifests(&bad)
            .unwrap_err()
            .0
            .contains("spec.toolSearch"));
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_path() {
        let bad = GOOD.replace("stepTimeout: 5s", "stepTimeout: 5s\n  colour: blue");
        let e = parse_manifests(&bad).unwrap_err().0;
        assert!(e.contains("spec.colour: unknown field `colour`"), "{e}");
    }

    #[test]
    fn wrong_types_are_rejected_with_their_path() {
        let bad = GOOD.replace("stepTimeout: 5s", "maxSteps: ten");
        let e = parse_manifests(&bad).unwrap_err().0;
        assert!(e.contains("spec.maxSteps"), "{e}");
        let bad = GOOD.replace("stepTimeout: 5s", "stepTimeout: soon");
        assert!(parse_manifests(&bad)
            .unwrap_err()
            .0
            .contains("spec.stepTimeout"));
    }

    #[test]
    fn values_are_checked() {
        let bad = GOOD.replace("[{name: echo", "[{name: rm_rf");
        assert!(parse_manifests(&bad)
            .unwrap_err()
            .0
            .contains("not in spec.tools"));
        let bad = GOOD.replace("model: scripted", "model: /gpt4");
        assert!(parse_manifests(&bad).unwrap_err().0.contains("spec.model"));
        let bad = GOOD.replace("kind: Agent", "kind: Pod");
        assert!(parse_manifests(&bad).unwrap_err().0.contains("kind"));
        assert!(parse_manifests(": : :\n  - [").is_err());
        assert!(parse_manifests("").is_err());
    }

    #[test]
    fn budgets_are_checked() {
        let with = |b: &str| {
            GOOD.replace(
                "stepTimeout: 5s",
                &format!("stepTimeout: 5s\n  budget: {b}"),
            )
        };
        let m = parse_manifests(&with("{perRunUsd: 0.5, onExceeded: wait_for_human}")).unwrap();
        let b = m[0].spec.budget.clone().unwrap();
        assert_eq!(
            (b.per_run_usd, b.on_exceeded),
            (Some(0.5), BudgetPolicy::WaitForHuman)
        );
        let e = parse_manifests(&with("{perRunUsd: -1}")).unwrap_err().0;
        assert!(e.contains("spec.budget.perRunUsd"), "{e}");
        let e = parse_manifests(&with("{onExceeded: shrug}")).unwrap_err().0;
        assert!(e.contains("spec.budget.onExceeded"), "{e}");
        let e = parse_manifests(&with("{perRunUsd: lots}")).unwrap_err().0;
        assert!(e.contains("spec.budget.perRunUsd"), "{e}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(duration::parse("250ms"), Ok(250));
        assert_eq!(duration::parse("2m"), Ok(120_000));
        assert!(duration::parse("5 parsecs").is_err());
        assert!(duration::parse("99999999999999999999h").is_err());
    }
}

/// The call that undoes a tool call. String values of `arguments` may hold `{{args.NAME}}`
/// and `{{result.NAME}}`, filled from the original call's arguments and result (a string that
/// is only a placeholder takes the value as it is, JSON and all).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Compensation {
    pub tool: String,
    #[serde(default)]
    pub arguments: serde_json::Value,
}

/// How one tool's failures are handled, in the same vocabulary as model calls' resilience.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ToolPolicy {
    /// Bound on one attempt (at most the agent's `stepTimeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<ToolRetry>,
    /// Share a circuit breaker for this tool with every run on every node: after
    /// `[llm] breaker_failures` failures in a row the tool is not called (the step fails at
    /// once, or goes to the fallback) until `breaker_cooldown_ms` has passed.
    #[serde(default)]
    pub breaker: bool,
    /// Another tool (one the agent lists) called with the same arguments when this one still
    /// fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    /// An agent that takes over when the tool (and its fallback tool) still fails: a child
    /// run, started under the `agent.spawn` decision, whose input is the call and its error
    /// and whose answer becomes the call's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_agent: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ToolRetry {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff before the n-th retry: `initialMs × 2^(n-1)` with jitter.
    #[serde(default = "default_retry_initial")]
    pub initial_ms: u64,
    /// Which failures are retried: `error` (the tool failed), `timeout`, `5xx` (an HTTP
    /// result with a server-error status). Default: error and timeout.
    #[serde(default = "default_retry_on")]
    pub on: Vec<String>,
}

fn default_retry_initial() -> u64 {
    200
}

fn default_retry_on() -> Vec<String> {
    vec!["error".into(), "timeout".into()]
}

/// `spec.memory`: what a run recalls before its first model call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MemoryRecall {
    /// At most this many memories (1 to 20).
    #[serde(default = "default_recall")]
    pub recall: u32,
    /// At most about this many tokens of them in all (1 to 8000).
    #[serde(default = "default_recall_tokens")]
    pub max_tokens: u32,
    /// The scopes searched; by default the agent's own and its owner's. Any other needs a
    /// policy permitting `memory.read` on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

fn default_recall() -> u32 {
    5
}

fn default_recall_tokens() -> u32 {
    1000
}

/// The memory tool a run's recall step calls.
pub const MEMORY_SEARCH: &str = "memory_search";

/// When a run counts as stuck.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Liveness {
    /// The same tool call (name and arguments) made this many times in a row is a loop: the
    /// run fails with `loop_detected` instead of making it again.
    pub max_repeats: u32,
    /// What else a loop does: nothing more (`fail`), open an incident for a human
    /// (`escalate`), or start the run over with the same input (`restart`, at most
    /// `maxRestarts` times in a row).
    #[serde(default = "default_on_loop")]
    pub on_loop: String,
    #[serde(default = "default_loop_restarts")]
    pub max_restarts: u32,
}

fn default_on_loop() -> String {
    "fail".into()
}

fn default_loop_restarts() -> u32 {
    1
}

/// The queue an agent takes tasks from, and how many of its runs may serve it at once
/// (across every node).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TaskSource {
    pub queue: String,
    /// Runs serving the queue at once: the pool's size, or its floor when it autoscales.
    #[serde(default = "default_task_concurrency")]
    pub concurrency: u32,
    /// Autoscaling: up to this many runs, one per `tasksPerRun` tasks waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u32>,
    #[serde(default = "default_tasks_per_run")]
    pub tasks_per_run: u32,
    /// Autoscaling on latency: while the oldest waiting task has waited longer than this, one
    /// more run (up to `maxConcurrency`) whatever the depth says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_wait_ms: Option<u64>,
}

fn default_tasks_per_run() -> u32 {
    1
}

impl TaskSource {
    /// How many runs should serve the queue with `waiting` tasks ready and `busy` runs
    /// serving it: the floor, or one per `tasksPerRun` of the work in hand, up to the ceiling.
    pub fn desired(&self, waiting: i64, busy: i64, oldest_wait_ms: Option<i64>) -> i64 {
        let floor = i64::from(self.concurrency);
        let Some(max) = self.max_concurrency else {
            return floor;
        };
        let per = i64::from(self.tasks_per_run.max(1));
        let mut wanted = (waiting + busy + per - 1) / per;
        let late = match (self.target_wait_ms, oldest_wait_ms) {
            (Some(target), Some(waited)) => waited > target as i64,
            _ => false,
        };
        if late {
            wanted = wanted.max(busy + 1);
        }
        wanted.clamp(floor, i64::from(max).max(floor))
    }
}

fn default_task_concurrency() -> u32 {
    1
}

/// A run's sandbox.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SandboxSpec {
    /// Where its code may connect, through the egress proxy: `host:port` (`*` for any port,
    /// `*.example.com` for subdomains) or CIDR blocks (`10.0.0.0/8`, `10.0.0.0/8:443`).
    /// Empty: no network at all.
    #[serde(default)]
    pub egress: Vec<String>,
    /// Vault secrets set as environment variables of its commands — each only if a policy
    /// permits `secret.use` on `Steward::Secret::"NAME"` for the run; never otherwise. Their
    /// values are masked in what the commands print.
    #[serde(default)]
    pub secrets: Vec<String>,
}
