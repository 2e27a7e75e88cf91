//! Policy: Cedar decides every syscall. The principal is an agent, or a run of one (a run is
//! in its agent, so `principal in Steward::Agent::"x"` covers both); the action is the syscall
//! kind; the resource is the model or the tool; the context carries the estimated cost, the time
//! and the delegation chain. Policies are validated against [`SCHEMA`] before they replace the
//! active set, and every decision names the set's hash and the policies that decided it.
//! Without a permit, the answer is no.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint, Request, ResourceConstraint,
    RestrictedExpression, Schema, ValidationMode, Validator,
};
use sha2::{Digest, Sha256};

/// The entity types, actions and context every policy is checked against.
pub const SCHEMA: &str = r#"
namespace Steward {
  entity Agent;
  entity Run in [Agent];
  entity Model;
  entity Tool;
  type Ctx = {
    "cost_nanos": Long,
    "time_ms": Long,
    "chain": Set<String>,
  };
  action "llm.call" appliesTo { principal: [Agent, Run], resource: [Model], context: Ctx };
  action "tool.call" appliesTo { principal: [Agent, Run], resource: [Tool], context: Ctx };
}
"#;

/// In force until policies are configured: agents may call models and the tools their
/// manifests list (the Kernel checks the list before asking).
pub const DEFAULT_POLICIES: &str = r#"
@id("default-allow-models-and-listed-tools")
permit (principal, action in [Steward::Action::"llm.call", Steward::Action::"tool.call"], resource);
"#;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the policies do not parse: {0}")]
    Parse(String),
    #[error("the policies do not match the schema: {0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
}

/// A validated policy set, ready to decide.
#[derive(Debug)]
pub struct PolicySetVersion {
    set: PolicySet,
    text: String,
    /// Hex SHA-256 of the policy text: what each decision records.
    pub hash: String,
    /// The policies whose scope can match an (agent, action, resource), by that triple: Cedar
    /// evaluates every policy it is given, so each decision is handed only these. A policy
    /// scoped to a run goes into every slice of its kind (runs are many; such policies few).
    slices: Mutex<HashMap<SliceKey, Arc<PolicySet>>>,
}

/// Agent, action, resource.
type SliceKey = (String, &'static str, String);

/// Slices kept per policy set before the cache starts over.
const MAX_SLICES: usize = 10_000;

impl PolicySetVersion {
    fn slice(
        &self,
        agent: &EntityUid,
        action_name: &'static str,
        action: &EntityUid,
        resource: &EntityUid,
    ) -> Result<Arc<PolicySet>, String> {
        let key = (agent.to_string(), action_name, resource.to_string());
        if let Some(s) = self.slices.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(s);
        }
        let slice = PolicySet::from_policies(
            self.set
                .policies()
                .filter(|p| may_apply(p, agent, action, resource))
                .cloned(),
        )
        .map_err(|e| e.to_string())?;
        let slice = Arc::new(slice);
        if let Ok(mut m) = self.slices.lock() {
            if m.len() >= MAX_SLICES {
                m.clear();
            }
            m.insert(key, slice.clone());
        }
        Ok(slice)
    }
}

/// Whether `p`'s scope can match a request by `agent` or any of its runs, doing `action` to
/// `resource`. Conditions (`when`, `unless`) are left to Cedar.
fn may_apply(p: &Policy, agent: &EntityUid, action: &EntityUid, resource: &EntityUid) -> bool {
    let principal = match p.principal_constraint() {
        PrincipalConstraint::Any | PrincipalConstraint::Is(_) => true,
        PrincipalConstraint::Eq(u)
        | PrincipalConstraint::In(u)
        | PrincipalConstraint::IsIn(_, u) => &u == agent || u.type_name().basename() == "Run",
    };
    let act = match p.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => &a == action,
        ActionConstraint::In(list) => list.iter().any(|a| a == action),
    };
    let res = match p.resource_constraint() {
        ResourceConstraint::Any | ResourceConstraint::Is(_) => true,
        ResourceConstraint::Eq(u) | ResourceConstraint::In(u) | ResourceConstraint::IsIn(_, u) => {
            &u == resource
        }
    };
    principal && act && res
}

impl PolicySetVersion {
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// What to decide: who, doing what, to what, at what estimated cost.
pub struct Query<'a> {
    pub agent: &'a str,
    pub run: Option<&'a str>,
    /// `llm.call` or `tool.call`.
    pub action: &'a str,
    pub resource: &'a str,
    pub cost_nanos: i64,
    pub time_ms: i64,
    pub chain: &'a [String],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// The policies that decided: the permits that allowed, or the forbids that denied (none
    /// when nothing permitted).
    pub policy_ids: Vec<String>,
    pub policy_hash: String,
    /// Policies that failed to evaluate (they are skipped, as Cedar does).
    pub errors: Vec<String>,
    /// When a permit that allowed carries `@approval("group")`: the group that must approve
    /// before the step may act.
    pub approval: Option<String>,
}

pub struct Policies {
    schema: Schema,
    names: Names,
    active: RwLock<Arc<PolicySetVersion>>,
    authorizer: Authorizer,
}

impl Policies {
    /// Starts with `text`, or the default policies when `None`.
    pub fn new(text: Option<&str>) -> Result<Self, PolicyError> {
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA)
            .map_err(|e| PolicyError::Internal(format!("the built-in schema: {e}")))?;
        let first = compile(&schema, text.unwrap_or(DEFAULT_POLICIES))?;
        Ok(Policies {
            names: Names::new().map_err(PolicyError::Internal)?,
            schema,
            active: RwLock::new(Arc::new(first)),
            authorizer: Authorizer::new(),
        })
    }

    /// Checks `text` without putting it in force.
    pub fn check(&self, text: &str) -> Result<PolicySetVersion, PolicyError> {
        compile(&self.schema, text)
    }

    /// Puts a checked set in force.
    pub fn activate(&self, version: PolicySetVersion) {
        if let Ok(mut a) = self.active.write() {
            *a = Arc::new(version);
        }
    }

    pub fn active(&self) -> Arc<PolicySetVersion> {
        self.active
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn decide(&self, q: &Query<'_>) -> Decision {
        let active = self.active();
        let deny = |why: String| Decision {
            allow: false,
            policy_ids: Vec::new(),
            policy_hash: active.hash.clone(),
            errors: vec![why],
            approval: None,
        };
        let n = &self.names;
        let agent = uid(&n.agent, q.agent);
        let agent_uid = agent.clone();
        let mut entities = vec![Entity::new_no_attrs(agent.clone(), HashSet::new())];
        let principal = match q.run {
            Some(run) => {
                let r = uid(&n.run, run);
                entities.push(Entity::new_no_attrs(
                    r.clone(),
                    HashSet::from([agent.clone()]),
                ));
                r
            }
            None => agent,
        };
        let (rtype, action_name, action) = match q.action {
            "llm.call" => (&n.model, "llm.call", n.llm_call.clone()),
            "tool.call" => (&n.tool, "tool.call", n.tool_call.clone()),
            other => return deny(format!("no such action {other:?}")),
        };
        let resource = uid(rtype, q.resource);
        let slice = match active.slice(&agent_uid, action_name, &action, &resource) {
            Ok(s) => s,
            Err(e) => return deny(e),
        };
        let context = Context::from_pairs([
            (
                "cost_nanos".to_string(),
                RestrictedExpression::new_long(q.cost_nanos),
            ),
            (
                "time_ms".to_string(),
                RestrictedExpression::new_long(q.time_ms),
            ),
            (
                "chain".to_string(),
                RestrictedExpression::new_set(
                    q.chain
                        .iter()
                        .map(|c| RestrictedExpression::new_string(c.clone())),
                ),
            ),
        ]);
        let context = match context {
            Ok(c) => c,
            Err(e) => return deny(e.to_string()),
        };
        // Built here from known types, so checking them against the schema again on every
        // decision would only cost time; the policies were validated against it.
        let request = match Request::new(principal, action, resource, context, None) {
            Ok(r) => r,
            Err(e) => return deny(e.to_string()),
        };
        let entities = match Entities::from_entities(entities, None) {
            Ok(e) => e,
            Err(e) => return deny(e.to_string()),
        };
        let response = self.authorizer.is_authorized(&request, &slice, &entities);
        let diagnostics = response.diagnostics();
        let allow = response.decision() == CedarDecision::Allow;
        let approval: Option<String> = diagnostics
            .reason()
            .find_map(|id| slice.annotation(id, "approval"))
            .filter(|_| allow)
            .map(str::to_string);
        Decision {
            allow,
            approval,
            policy_ids: diagnostics
                .reason()
                .map(|id| {
                    active
                        .set
                        .annotation(id, "id")
                        .map_or_else(|| id.to_string(), str::to_string)
                })
                .collect(),
            policy_hash: active.hash.clone(),
            errors: diagnostics.errors().map(|e| e.to_string()).collect(),
        }
    }
}

/// The entity types and actions every decision uses, parsed once: Cedar's parser is far too
/// slow to run per decision.
struct Names {
    agent: EntityTypeName,
    run: EntityTypeName,
    model: EntityTypeName,
    tool: EntityTypeName,
    llm_call: EntityUid,
    tool_call: EntityUid,
}

impl Names {
    fn new() -> Result<Self, String> {
        let t = |n: &str| EntityTypeName::from_str(n).map_err(|e| e.to_string());
        let a = |n: &str| EntityUid::from_str(n).map_err(|e| e.to_string());
        Ok(Names {
            agent: t("Steward::Agent")?,
            run: t("Steward::Run")?,
            model: t("Steward::Model")?,
            tool: t("Steward::Tool")?,
            llm_call: a(r#"Steward::Action::"llm.call""#)?,
            tool_call: a(r#"Steward::Action::"tool.call""#)?,
        })
    }
}

fn uid(kind: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id))
}

fn compile(schema: &Schema, text: &str) -> Result<PolicySetVersion, PolicyError> {
    let set = PolicySet::from_str(text).map_err(|e| {
        let all: Vec<String> = e.iter().map(|d| d.to_string()).collect();
        PolicyError::Parse(all.join("; "))
    })?;
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    if !result.validation_passed() {
        let all: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
        return Err(PolicyError::Invalid(all.join("; ")));
    }
    Ok(PolicySetVersion {
        slices: Mutex::new(HashMap::new()),
        hash: Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        text: text.to_string(),
        set,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q<'a>(agent: &'a str, action: &'a str, resource: &'a str, cost: i64) -> Query<'a> {
        Query {
            agent,
            run: Some("run_1"),
            action,
            resource,
            cost_nanos: cost,
            time_ms: 0,
            chain: &[],
        }
    }

    #[test]
    fn the_default_allows_and_names_its_policy() {
        let p = Policies::new(None).unwrap();
        let d = p.decide(&q("a", "tool.call", "echo", 0));
        assert!(d.allow, "{d:?}");
        assert_eq!(d.policy_ids, ["default-allow-models-and-listed-tools"]);
        assert_eq!(d.policy_hash.len(), 64);
    }

    #[test]
    fn forbids_win_nothing_permitted_is_denied_and_runs_are_in_their_agent() {
        let p = Policies::new(Some(
            r#"
            @id("models-for-researchers")
            permit (principal in Steward::Agent::"researcher", action == Steward::Action::"llm.call", resource);
            @id("no-dear-calls")
            forbid (principal, action, resource) when { context.cost_nanos > 1000000000 };
            "#,
        ))
        .unwrap();
        let d = p.decide(&q("researcher", "llm.call", "openai/gpt-4o", 10));
        assert!(d.allow, "a run is in its agent: {d:?}");
        let d = p.decide(&q("researcher", "llm.call", "openai/gpt-4o", 2_000_000_000));
        assert_eq!(
            (d.allow, d.policy_ids),
            (false, vec!["no-dear-calls".to_string()])
        );
        let d = p.decide(&q("researcher", "tool.call", "http_request", 0));
        assert!(!d.allow && d.policy_ids.is_empty(), "default deny: {d:?}");
        let d = p.decide(&q("intruder", "llm.call", "openai/gpt-4o", 0));
        assert!(!d.allow);
    }

    #[test]
    fn slices_keep_every_policy_that_can_apply() {
        let p = Policies::new(Some(
            r#"
            @id("this-run")
            permit (principal == Steward::Run::"run_1", action, resource == Steward::Tool::"echo");
            @id("tools-by-list")
            permit (principal, action in [Steward::Action::"tool.call"], resource == Steward::Tool::"calc");
            @id("is-model")
            permit (principal is Steward::Agent, action, resource is Steward::Model);
            "#,
        ))
        .unwrap();
        assert_eq!(
            p.decide(&q("a", "tool.call", "echo", 0)).policy_ids,
            ["this-run"]
        );
        assert_eq!(
            p.decide(&q("b", "tool.call", "calc", 0)).policy_ids,
            ["tools-by-list"]
        );
        assert!(!p.decide(&q("b", "tool.call", "grep", 0)).allow);
        let other_run = Query {
            run: Some("run_2"),
            ..q("a", "tool.call", "echo", 0)
        };
        assert!(!p.decide(&other_run).allow, "scoped to run_1 only");
        let as_agent = Query {
            run: None,
            ..q("a", "llm.call", "m", 0)
        };
        assert_eq!(p.decide(&as_agent).policy_ids, ["is-model"]);
    }

    #[test]
    fn a_permit_can_ask_for_approval() {
        let p = Policies::new(Some(
            r#"
            @id("payments-need-finance") @approval("finance")
            permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"pay");
            @id("echo") permit (principal, action, resource == Steward::Tool::"echo");
            "#,
        ))
        .unwrap();
        let d = p.decide(&q("a", "tool.call", "pay", 0));
        assert_eq!((d.allow, d.approval.as_deref()), (true, Some("finance")));
        assert_eq!(p.decide(&q("a", "tool.call", "echo", 0)).approval, None);
    }

    #[test]
    fn bad_policies_are_refused_with_diagnostics_and_the_active_set_stays() {
        let p = Policies::new(None).unwrap();
        let before = p.active().hash.clone();
        let e = p.check("permit (principal, action, resource").unwrap_err();
        assert!(matches!(e, PolicyError::Parse(_)), "{e}");
        let e = p
            .check(r#"permit (principal == Steward::Wizard::"x", action, resource);"#)
            .unwrap_err();
        assert!(matches!(e, PolicyError::Invalid(_)), "{e}");
        assert!(e.to_string().contains("Wizard"), "{e}");
        assert_eq!(p.active().hash, before);
    }
}
