//! Policy: Cedar decides every syscall. The principal is an agent, or a run of one (a run is
//! in its agent, so `principal in Steward::Agent::"x"` covers both), each with its `owner`; the
//! action is the syscall kind; the resource is the model or the tool; the context carries the
//! estimated cost, the time, the delegation chain and the owner on whose behalf it acts.
//! Policies are validated against [`SCHEMA`] before they replace the active set, and every
//! decision names the set's hash and the policies that decided it. Without a permit, the
//! answer is no.
//!
//! Administrators are principals too (`Steward::Admin`): every set carries a built-in permit
//! for them to update policies, and a set under which they could not — a forbid that catches
//! them — is refused, so no upload can lock the administrators out.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, Policy, PolicyId, PolicySet, PrincipalConstraint, Request,
    ResourceConstraint, RestrictedExpression, Schema, ValidationMode, Validator,
};
use sha2::{Digest, Sha256};

/// The entity types, actions and context every policy is checked against.
pub const SCHEMA: &str = r#"
namespace Steward {
  entity Agent { "owner": String };
  entity Run in [Agent] { "owner": String };
  entity Admin { "owner": String };
  entity Model;
  entity Tool;
  entity PolicySet;
  entity Sandbox;
  entity Namespace;
  entity Account;
  entity Mailbox;
  entity Secret;
  entity Queue;
  type Ctx = {
    "cost_nanos": Long,
    "time_ms": Long,
    "chain": Set<String>,
    "on_behalf_of": String,
  };
  action "llm.call" appliesTo { principal: [Agent, Run], resource: [Model], context: Ctx };
  action "tool.call" appliesTo { principal: [Agent, Run], resource: [Tool], context: Ctx };
  action "agent.spawn" appliesTo { principal: [Agent, Run], resource: [Agent], context: Ctx };
  action "sandbox.exec" appliesTo { principal: [Agent, Run], resource: [Sandbox], context: Ctx };
  action "memory.read", "memory.write" appliesTo { principal: [Agent, Run], resource: [Namespace], context: Ctx };
  action "spend" appliesTo { principal: [Agent, Run], resource: [Account], context: Ctx };
  action "message.send" appliesTo { principal: [Agent, Run], resource: [Mailbox], context: Ctx };
  type SecretCtx = {
    "cost_nanos": Long,
    "time_ms": Long,
    "chain": Set<String>,
    "on_behalf_of": String,
    "destination": String,
  };
  action "secret.use" appliesTo { principal: [Agent, Run], resource: [Secret], context: SecretCtx };
  action "agent.delegate" appliesTo { principal: [Agent, Run], resource: [Agent], context: Ctx };
  action "task.enqueue", "task.lease" appliesTo { principal: [Agent, Run], resource: [Queue], context: Ctx };
  action "policy.update" appliesTo { principal: [Admin], resource: [PolicySet], context: Ctx };
}
"#;

/// Part of every set: administrators may update the policies. Only a forbid can take that
/// away, and a set with such a forbid is refused ([`PolicyError::LocksOutAdmins`]).
pub const ADMIN_POLICY: &str = r#"permit (principal is Steward::Admin, action == Steward::Action::"policy.update", resource);"#;
const ADMIN_POLICY_ID: &str = "steward-admins-update-policies";

/// The administrator every management request acts as.
pub const ADMIN: &str = "admin";

/// In force until policies are configured: agents may call models and the tools their
/// manifests list (the Kernel checks the list before asking), start other agents and
/// delegate to them (never more than they hold). Secrets are used only where a policy says so.
pub const DEFAULT_POLICIES: &str = r#"
@id("default-allow-models-and-listed-tools")
permit (principal, action in [Steward::Action::"llm.call", Steward::Action::"tool.call", Steward::Action::"agent.spawn", Steward::Action::"sandbox.exec", Steward::Action::"agent.delegate"], resource);
"#;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the policies do not parse: {0}")]
    Parse(String),
    #[error("the policies do not match the schema: {0}")]
    Invalid(String),
    #[error("these policies would lock the administrators out (they could no longer update policies): {0}; narrow the forbid so it does not apply to Steward::Admin")]
    LocksOutAdmins(String),
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
    slices: Mutex<HashMap<SliceKey, Arc<Slice>>>,
    /// Each policy's `@id` (or Cedar's id) and `@approval`, read once: Cedar's
    /// `annotation(id, key)` parses `key` on every call, which cost more than the decision.
    labels: HashMap<PolicyId, Labels>,
}

/// What a decision reports of a policy that decided it.
#[derive(Debug)]
struct Labels {
    id: String,
    approval: Option<String>,
}

/// The policies that can apply to one (agent, action, resource).
#[derive(Debug)]
struct Slice {
    set: PolicySet,
    /// No policy of the slice has a condition (`when`, `unless`) or names a run: its decision
    /// depends on nothing but whether the principal is a run or the agent itself, so it is
    /// evaluated once for each and kept.
    fixed: bool,
    /// The decision of a fixed slice, for the agent ([0]) and for its runs ([1]).
    decided: [std::sync::OnceLock<Decision>; 2],
}

/// Agent, action, resource.
type SliceKey = (String, &'static str, String);

/// Slices kept per policy set before the cache starts over.
const MAX_SLICES: usize = 10_000;

impl PolicySetVersion {
    fn slice(
        &self,
        (agent_id, agent): (&str, &EntityUid),
        action_name: &'static str,
        action: &EntityUid,
        (resource_id, resource): (&str, &EntityUid),
    ) -> Result<Arc<Slice>, String> {
        // Keyed by the ids as given: the action fixes the resource's type.
        let key = (agent_id.to_string(), action_name, resource_id.to_string());
        if let Some(s) = self.slices.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(s);
        }
        let set = PolicySet::from_policies(
            self.set
                .policies()
                .filter(|p| may_apply(p, agent, action, resource))
                .cloned(),
        )
        .map_err(|e| e.to_string())?;
        let fixed = set
            .policies()
            .all(|p| !p.has_non_scope_constraint() && !names_a_run(p));
        let slice = Arc::new(Slice {
            set,
            fixed,
            decided: Default::default(),
        });
        if let Ok(mut m) = self.slices.lock() {
            if m.len() >= MAX_SLICES {
                m.clear();
            }
            m.insert(key, slice.clone());
        }
        Ok(slice)
    }
}

/// Whether `p`'s principal scope names a particular run.
fn names_a_run(p: &Policy) -> bool {
    match p.principal_constraint() {
        PrincipalConstraint::Any | PrincipalConstraint::Is(_) => false,
        PrincipalConstraint::Eq(u)
        | PrincipalConstraint::In(u)
        | PrincipalConstraint::IsIn(_, u) => u.type_name().basename() == "Run",
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
    /// The principal agent's owner.
    pub owner: Option<&'a str>,
    /// The owner on whose behalf the chain acts (that of the agent that began it).
    pub on_behalf_of: Option<&'a str>,
    /// For `secret.use`: where the secret is going (a host name, or `sandbox`).
    pub destination: Option<&'a str>,
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
        let first = compile(&schema, text.unwrap_or(DEFAULT_POLICIES), Guard::Admins)?;
        Ok(Policies {
            names: Names::new().map_err(PolicyError::Internal)?,
            schema,
            active: RwLock::new(Arc::new(first)),
            authorizer: Authorizer::new(),
        })
    }

    /// Checks `text` without putting it in force: it parses, matches the schema, and can never
    /// stop the administrators from updating policies, at any time.
    pub fn check(&self, text: &str) -> Result<PolicySetVersion, PolicyError> {
        compile(&self.schema, text, Guard::Admins)
    }

    /// Checks a set that was stored after passing [`Policies::check`]: it must still parse and
    /// match the schema, and is taken as it is — a stored set is never swapped for a more
    /// permissive one because some check gives a different answer today.
    pub fn load(&self, text: &str) -> Result<PolicySetVersion, PolicyError> {
        compile(&self.schema, text, Guard::None)
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

    /// Whether the administrator may update the policies now, under the active set; the ids
    /// of the policies that stop them when they may not.
    pub fn admin_may_update(&self, time_ms: i64) -> Result<(), Vec<String>> {
        admins_may_update(&self.active().set, time_ms)
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
        let Some((action_name, rtype, action)) = n.action(q.action) else {
            return deny(format!("no such action {:?}", q.action));
        };
        let resource = uid(rtype, q.resource);
        let slice = match active.slice(
            (q.agent, &agent),
            action_name,
            &action,
            (q.resource, &resource),
        ) {
            Ok(s) => s,
            Err(e) => return deny(e),
        };
        let by_run = usize::from(q.run.is_some());
        if let Some(d) = slice.decided[by_run].get() {
            return d.clone();
        }
        let owner = || {
            HashMap::from([(
                "owner".to_string(),
                RestrictedExpression::new_string(q.owner.unwrap_or_default().to_string()),
            )])
        };
        let mut entities = Vec::with_capacity(2);
        match Entity::new(agent.clone(), owner(), HashSet::new()) {
            Ok(e) => entities.push(e),
            Err(e) => return deny(e.to_string()),
        }
        let principal = match q.run {
            Some(run) => {
                let r = uid(&n.run, run);
                match Entity::new(r.clone(), owner(), HashSet::from([agent.clone()])) {
                    Ok(e) => entities.push(e),
                    Err(e) => return deny(e.to_string()),
                }
                r
            }
            None => agent,
        };
        let mut pairs = vec![
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
            (
                "on_behalf_of".to_string(),
                RestrictedExpression::new_string(q.on_behalf_of.unwrap_or_default().to_string()),
            ),
        ];
        if action_name == "secret.use" {
            pairs.push((
                "destination".to_string(),
                RestrictedExpression::new_string(q.destination.unwrap_or_default().to_string()),
            ));
        }
        let context = match Context::from_pairs(pairs) {
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
        let response = self
            .authorizer
            .is_authorized(&request, &slice.set, &entities);
        let diagnostics = response.diagnostics();
        let allow = response.decision() == CedarDecision::Allow;
        let labels = |id: &PolicyId| active.labels.get(id);
        let approval: Option<String> = diagnostics
            .reason()
            .find_map(|id| labels(id).and_then(|l| l.approval.clone()))
            .filter(|_| allow);
        let decision = Decision {
            allow,
            approval,
            policy_ids: diagnostics
                .reason()
                .map(|id| labels(id).map_or_else(|| id.to_string(), |l| l.id.clone()))
                .collect(),
            policy_hash: active.hash.clone(),
            errors: diagnostics.errors().map(|e| e.to_string()).collect(),
        };
        if slice.fixed && decision.errors.is_empty() {
            let _ = slice.decided[by_run].set(decision.clone());
        }
        decision
    }
}

/// The syscall kinds agents' requests are decided for, and the type of their resources.
const AGENT_ACTIONS: &[(&str, &str)] = &[
    ("llm.call", "Steward::Model"),
    ("tool.call", "Steward::Tool"),
    ("agent.spawn", "Steward::Agent"),
    ("sandbox.exec", "Steward::Sandbox"),
    ("memory.read", "Steward::Namespace"),
    ("memory.write", "Steward::Namespace"),
    ("spend", "Steward::Account"),
    ("message.send", "Steward::Mailbox"),
    ("secret.use", "Steward::Secret"),
    ("agent.delegate", "Steward::Agent"),
    ("task.enqueue", "Steward::Queue"),
    ("task.lease", "Steward::Queue"),
];

/// The entity types and actions every decision uses, parsed once: Cedar's parser is far too
/// slow to run per decision.
struct Names {
    agent: EntityTypeName,
    run: EntityTypeName,
    /// By action name: the action and its resource type.
    actions: Vec<(&'static str, EntityTypeName, EntityUid)>,
}

impl Names {
    fn new() -> Result<Self, String> {
        let t = |n: &str| EntityTypeName::from_str(n).map_err(|e| e.to_string());
        let mut actions = Vec::new();
        for (name, rtype) in AGENT_ACTIONS {
            actions.push((
                *name,
                t(rtype)?,
                EntityUid::from_str(&format!(r#"Steward::Action::"{name}""#))
                    .map_err(|e| e.to_string())?,
            ));
        }
        Ok(Names {
            agent: t("Steward::Agent")?,
            run: t("Steward::Run")?,
            actions,
        })
    }

    fn action(&self, name: &str) -> Option<(&'static str, &EntityTypeName, EntityUid)> {
        self.actions
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(n, t, a)| (*n, t, a.clone()))
    }
}

/// Whether the administrator may update the policies under `set`, at `time_ms`; the ids of
/// the forbids that stop them when they may not.
fn admins_may_update(set: &PolicySet, time_ms: i64) -> Result<(), Vec<String>> {
    let parse = |s: &str| EntityUid::from_str(s).map_err(|e| vec![e.to_string()]);
    let admin = parse(&format!(r#"Steward::Admin::"{ADMIN}""#))?;
    let action = parse(r#"Steward::Action::"policy.update""#)?;
    let resource = parse(r#"Steward::PolicySet::"active""#)?;
    let context = Context::from_pairs([
        ("cost_nanos".to_string(), RestrictedExpression::new_long(0)),
        (
            "time_ms".to_string(),
            RestrictedExpression::new_long(time_ms),
        ),
        (
            "chain".to_string(),
            RestrictedExpression::new_set([RestrictedExpression::new_string(format!(
                "admin:{ADMIN}"
            ))]),
        ),
        (
            "on_behalf_of".to_string(),
            RestrictedExpression::new_string(String::new()),
        ),
    ])
    .map_err(|e| vec![e.to_string()])?;
    let request = Request::new(admin.clone(), action, resource, context, None)
        .map_err(|e| vec![e.to_string()])?;
    let entity = Entity::new(
        admin.clone(),
        HashMap::from([(
            "owner".to_string(),
            RestrictedExpression::new_string(String::new()),
        )]),
        HashSet::new(),
    )
    .map_err(|e| vec![e.to_string()])?;
    let entities = Entities::from_entities([entity], None).map_err(|e| vec![e.to_string()])?;
    let response = Authorizer::new().is_authorized(&request, set, &entities);
    if response.decision() == CedarDecision::Allow {
        return Ok(());
    }
    Err(response
        .diagnostics()
        .reason()
        .map(|id| {
            set.annotation(id, "id")
                .map_or_else(|| id.to_string(), str::to_string)
        })
        .collect())
}

fn uid(kind: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(kind.clone(), EntityId::new(id))
}

/// Whether [`compile`] refuses a set that could stop the administrators.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Guard {
    Admins,
    None,
}

/// Deepest nesting of brackets, `if`s and unary operators a policy text may have. Cedar's
/// parser recurses on nesting; real policies stay far below this.
pub const MAX_NESTING: usize = 48;

/// Most operators one policy may have. A chain of operators is a tree as deep as it is long,
/// and Cedar evaluates it recursively on whatever thread decides: a policy it could not
/// evaluate there would be skipped, and a skipped forbid is a permit.
pub const MAX_OPERATORS: usize = 256;

/// Stack for parsing and validating a policy set, whatever thread asked: with nesting bounded,
/// far more than the parser needs.
const COMPILE_STACK: usize = 32 * 1024 * 1024;

/// Parses, validates and (with [`Guard::Admins`]) checks a set on a thread with a known stack,
/// after bounding its nesting: a hostile text is an error, never a crashed server.
fn compile(schema: &Schema, text: &str, guard: Guard) -> Result<PolicySetVersion, PolicyError> {
    let depth = nesting_depth(text);
    if depth > MAX_NESTING {
        return Err(PolicyError::Parse(format!(
            "the policies nest {depth} levels deep (brackets, `if`s and unary operators); at most {MAX_NESTING} are accepted"
        )));
    }
    let operators = most_operators(text);
    if operators > MAX_OPERATORS {
        return Err(PolicyError::Parse(format!(
            "a policy has {operators} operators; at most {MAX_OPERATORS} are accepted in one policy (split it, or test membership with `in [..]` or `.contains(..)`)"
        )));
    }
    let (schema, owned) = (schema.clone(), text.to_string());
    std::thread::Builder::new()
        .name("policy-compile".into())
        .stack_size(COMPILE_STACK)
        .spawn(move || compile_here(&schema, &owned, guard))
        .map_err(|e| PolicyError::Internal(format!("cannot start the policy checker: {e}")))?
        .join()
        .map_err(|_| PolicyError::Internal("the policy checker failed".into()))?
}

fn compile_here(
    schema: &Schema,
    text: &str,
    guard: Guard,
) -> Result<PolicySetVersion, PolicyError> {
    let mut set = PolicySet::from_str(text).map_err(|e| {
        let all: Vec<String> = e.iter().map(|d| d.to_string()).collect();
        PolicyError::Parse(all.join("; "))
    })?;
    let admin = Policy::parse(Some(PolicyId::new(ADMIN_POLICY_ID)), ADMIN_POLICY)
        .map_err(|e| PolicyError::Internal(format!("the built-in admin policy: {e}")))?;
    set.add(admin)
        .map_err(|e| PolicyError::Internal(format!("the built-in admin policy: {e}")))?;
    let result = Validator::new(schema.clone()).validate(&set, ValidationMode::Strict);
    if !result.validation_passed() {
        let all: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
        return Err(PolicyError::Invalid(all.join("; ")));
    }
    if guard == Guard::Admins {
        admins_never_locked_out(&set)?;
    }
    let labels = set
        .policies()
        .map(|p| {
            let mut labels = Labels {
                id: p.id().to_string(),
                approval: None,
            };
            for (key, value) in p.annotations() {
                match key {
                    "id" => labels.id = value.to_string(),
                    "approval" => labels.approval = Some(value.to_string()),
                    _ => {}
                }
            }
            (p.id().clone(), labels)
        })
        .collect();
    Ok(PolicySetVersion {
        labels,
        slices: Mutex::new(HashMap::new()),
        hash: hex::encode(Sha256::digest(text.as_bytes())),
        text: text.to_string(),
        set,
    })
}

/// Whether `set` lets the administrators update policies at every moment, not only now. An
/// administrator's request is the same every time except for `context.time_ms`, so a forbid
/// that can catch it either reads the time — refused, since it may catch them later — or
/// gives the same answer always, which one evaluation finds.
fn admins_never_locked_out(set: &PolicySet) -> Result<(), PolicyError> {
    let timed: Vec<String> = set
        .policies()
        .filter(|p| p.effect() == cedar_policy::Effect::Forbid && may_catch_admins(p))
        .filter(|p| reads_the_time(p))
        .map(|p| {
            p.annotation("id")
                .map_or_else(|| p.id().to_string(), str::to_string)
        })
        .collect();
    if !timed.is_empty() {
        return Err(PolicyError::LocksOutAdmins(format!(
            "{} depend on the time and could apply to Steward::Admin at some moment (scope them with `principal is Steward::Agent`, or to other actions)",
            timed.join(", ")
        )));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    admins_may_update(set, now).map_err(|by| {
        PolicyError::LocksOutAdmins(if by.is_empty() {
            "nothing permits it".into()
        } else {
            format!("forbidden by {}", by.join(", "))
        })
    })
}

/// Whether `p`'s scope takes in the administrator updating the policy set.
fn may_catch_admins(p: &Policy) -> bool {
    let is = |t: &EntityTypeName, name: &str| t.to_string() == name;
    let admin = |u: &EntityUid| is(u.type_name(), "Steward::Admin") && u.id().unescaped() == ADMIN;
    let principal = match p.principal_constraint() {
        PrincipalConstraint::Any => true,
        PrincipalConstraint::Is(t) => is(&t, "Steward::Admin"),
        PrincipalConstraint::Eq(u) | PrincipalConstraint::In(u) => admin(&u),
        PrincipalConstraint::IsIn(t, u) => is(&t, "Steward::Admin") && admin(&u),
    };
    let update = |a: &EntityUid| a.id().unescaped() == "policy.update";
    let action = match p.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(a) => update(&a),
        ActionConstraint::In(list) => list.iter().any(update),
    };
    let set = |u: &EntityUid| is(u.type_name(), "Steward::PolicySet");
    let resource = match p.resource_constraint() {
        ResourceConstraint::Any => true,
        ResourceConstraint::Is(t) => is(&t, "Steward::PolicySet"),
        ResourceConstraint::Eq(u) | ResourceConstraint::In(u) | ResourceConstraint::IsIn(_, u) => {
            set(&u)
        }
    };
    principal && action && resource
}

/// Whether `p`'s conditions can read `context.time_ms`. Cedar has no computed attribute names,
/// so any access names it; read from the policy's JSON form, where escapes are already undone.
/// A policy that cannot be shown as JSON counts as reading it.
fn reads_the_time(p: &Policy) -> bool {
    p.to_json()
        .map_or(true, |j| j.to_string().contains("time_ms"))
}

/// How deeply `text` nests: brackets, plus every `if` and unary `!`/`-` inside a bracket
/// (counted as if each opened a level until the bracket closes, which over-counts, never
/// under). Strings and `//` comments are skipped.
pub fn nesting_depth(text: &str) -> usize {
    let b = text.as_bytes();
    // Per open bracket: the `if`s and unary operators seen inside it.
    let mut levels: Vec<usize> = vec![0];
    let (mut depth, mut max) = (0usize, 0usize);
    let mut prev_operand = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                prev_operand = true;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'(' | b'[' | b'{' => {
                levels.push(0);
                depth += 1;
                prev_operand = false;
            }
            b')' | b']' | b'}' => {
                if levels.len() > 1 {
                    depth -= 1 + levels.pop().unwrap_or(0);
                }
                prev_operand = true;
            }
            b'!' if b.get(i + 1) != Some(&b'=') => {
                bump(&mut levels, &mut depth);
                prev_operand = false;
            }
            b'-' if !prev_operand => {
                bump(&mut levels, &mut depth);
            }
            c if c.is_ascii_alphanumeric() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                let word = &b[start..i];
                if word == b"if" {
                    bump(&mut levels, &mut depth);
                }
                prev_operand = !matches!(
                    word,
                    b"if" | b"then" | b"else" | b"in" | b"has" | b"like" | b"is"
                );
                max = max.max(depth);
                continue;
            }
            c if c.is_ascii_whitespace() => {}
            _ => prev_operand = false,
        }
        max = max.max(depth);
        i += 1;
    }
    max
}

/// The most operators (comparisons, arithmetic, `&&`, `||`, `.`, `in`, `has`, `like`, `is`,
/// `if`) in any one policy of `text` (policies end at a `;` outside brackets). Strings and
/// comments are skipped.
pub fn most_operators(text: &str) -> usize {
    let b = text.as_bytes();
    let (mut count, mut max, mut depth) = (0usize, 0usize, 0usize);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b';' if depth == 0 => count = 0,
            b'&' | b'|' | b'=' if b.get(i + 1) == Some(&b[i]) => {
                count += 1;
                i += 1;
            }
            b'!' | b'<' | b'>' | b'+' | b'-' | b'*' | b'.' => count += 1,
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                if matches!(&b[start..i], b"in" | b"has" | b"like" | b"is" | b"if") {
                    count += 1;
                }
                max = max.max(count);
                continue;
            }
            _ => {}
        }
        max = max.max(count);
        i += 1;
    }
    max
}

fn bump(levels: &mut [usize], depth: &mut usize) {
    if let Some(l) = levels.last_mut() {
        *l += 1;
    }
    *depth += 1;
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
            owner: Some("alice"),
            on_behalf_of: Some("alice"),
            destination: None,
        }
    }

    /// A slice with no conditions is evaluated once per principal kind and kept; anything that
    /// can make two requests of one (agent, action, resource) differ — a condition, a run
    /// named in a scope, a run or the agent itself as principal — decides each request anew.
    #[test]
    fn kept_decisions_are_the_decisions() {
        let p = Policies::new(Some(
            r#"
            @id("runs-may-echo") @approval("ops")
            permit (principal is Steward::Run, action == Steward::Action::"tool.call", resource == Steward::Tool::"echo");
            @id("run-2-may-grep")
            permit (principal == Steward::Run::"run_2", action == Steward::Action::"tool.call", resource == Steward::Tool::"grep");
            @id("calc-in-office-hours")
            permit (principal, action == Steward::Action::"tool.call", resource == Steward::Tool::"calc") when { context.time_ms < 1000 };
            @id("no-calc-for-bob")
            forbid (principal, action, resource == Steward::Tool::"calc") when { principal.owner == "bob" };
            "#,
        ))
        .unwrap();
        let as_agent = |r| Query {
            run: None,
            ..q("a", "tool.call", r, 0)
        };
        for _ in 0..3 {
            let d = p.decide(&q("a", "tool.call", "echo", 0));
            assert_eq!(
                (d.allow, d.approval.as_deref(), d.policy_ids),
                (true, Some("ops"), vec!["runs-may-echo".to_string()])
            );
            assert!(!p.decide(&as_agent("echo")).allow, "the agent is no run");
        }
        for _ in 0..3 {
            assert!(!p.decide(&q("a", "tool.call", "grep", 0)).allow);
            let run_2 = Query {
                run: Some("run_2"),
                ..q("a", "tool.call", "grep", 0)
            };
            assert!(p.decide(&run_2).allow, "run_2 is named");
        }
        for _ in 0..3 {
            assert!(p.decide(&q("a", "tool.call", "calc", 0)).allow);
            let later = Query {
                time_ms: 5000,
                ..q("a", "tool.call", "calc", 0)
            };
            assert!(!p.decide(&later).allow, "after hours");
            let bobs = Query {
                owner: Some("bob"),
                ..q("a", "tool.call", "calc", 0)
            };
            assert_eq!(p.decide(&bobs).policy_ids, ["no-calc-for-bob"]);
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
    fn owners_are_in_every_decision() {
        let p = Policies::new(Some(
            r#"
            @id("models") permit (principal, action == Steward::Action::"llm.call", resource);
            @id("only-for-its-own-owner")
            forbid (principal, action, resource) unless { principal.owner == context.on_behalf_of };
            "#,
        ))
        .unwrap();
        assert!(p.decide(&q("a", "llm.call", "m", 0)).allow);
        let for_bob = Query {
            on_behalf_of: Some("bob"),
            ..q("a", "llm.call", "m", 0)
        };
        let d = p.decide(&for_bob);
        assert_eq!(
            (d.allow, d.policy_ids),
            (false, vec!["only-for-its-own-owner".to_string()])
        );
    }

    #[test]
    fn every_action_of_the_schema_can_be_decided() {
        let p = Policies::new(Some(
            r#"@id("spawn") permit (principal, action == Steward::Action::"agent.spawn", resource == Steward::Agent::"helper");"#,
        ))
        .unwrap();
        assert!(p.decide(&q("a", "agent.spawn", "helper", 0)).allow);
        assert!(!p.decide(&q("a", "agent.spawn", "other", 0)).allow);
        assert!(!p.decide(&q("a", "sandbox.exec", "sb", 0)).allow);
        assert!(!p.decide(&q("a", "wizardry", "x", 0)).allow);
    }

    #[test]
    fn a_set_that_would_lock_out_administrators_is_refused() {
        let p = Policies::new(None).unwrap();
        let before = p.active().hash.clone();
        let e = p
            .check(r#"@id("freeze-everything") forbid (principal, action, resource);"#)
            .unwrap_err();
        assert!(matches!(e, PolicyError::LocksOutAdmins(_)), "{e}");
        assert!(e.to_string().contains("freeze-everything"), "{e}");
        assert_eq!(p.active().hash, before);
        assert!(p.admin_may_update(0).is_ok());
        // Forbids that leave administrators alone are fine.
        p.check(r#"forbid (principal is Steward::Agent, action, resource);"#)
            .unwrap();
        assert!(Policies::new(Some("forbid (principal, action, resource);")).is_err());
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

    #[test]
    fn a_forbid_that_could_catch_administrators_at_some_time_is_refused() {
        let p = Policies::new(None).unwrap();
        let soon = 4_102_444_800_000i64; // 2100: "now" passes, a later moment would not
        for text in [
            format!("@id(\"bomb\") forbid (principal, action, resource) when {{ context.time_ms > {soon} }};"),
            format!("@id(\"bomb\") forbid (principal, action, resource) unless {{ context.time_ms < {soon} }};"),
            format!("@id(\"bomb\") forbid (principal is Steward::Admin, action, resource) when {{ context[\"time\\u{{5f}}ms\"] > {soon} }};"),
            format!("@id(\"bomb\") forbid (principal, action == Steward::Action::\"policy.update\", resource) when {{ context.time_ms * 2 > {soon} }};"),
            format!("@id(\"bomb\") forbid (principal, action, resource == Steward::PolicySet::\"active\") when {{ context == {{\"cost_nanos\": 0, \"time_ms\": {soon}, \"chain\": [\"admin:admin\"], \"on_behalf_of\": \"\"}} }};"),
        ] {
            let e = p.check(&text).unwrap_err();
            assert!(matches!(e, PolicyError::LocksOutAdmins(_)), "{text}: {e}");
            assert!(e.to_string().contains("bomb"), "{e}");
        }
        // Time windows that cannot reach administrators are fine.
        for text in [
            format!("forbid (principal is Steward::Agent, action, resource) when {{ context.time_ms > {soon} }};"),
            format!("forbid (principal, action == Steward::Action::\"llm.call\", resource) when {{ context.time_ms > {soon} }};"),
            format!("forbid (principal, action, resource is Steward::Model) when {{ context.time_ms > {soon} }};"),
            // Conditions that never read the time are decided by one evaluation.
            "forbid (principal, action, resource) when { context.cost_nanos > 5 };".to_string(),
        ] {
            p.check(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        }
    }

    #[test]
    fn deeply_nested_policies_are_refused_not_crashed_on() {
        let p = Policies::new(None).unwrap();
        let wrap = |open: &str, close: &str, n: usize| {
            format!(
                "permit (principal, action, resource) when {{ {}true{} }};",
                open.repeat(n),
                close.repeat(n)
            )
        };
        let ifs = format!(
            "permit (principal, action, resource) when {{ {}true }};",
            "if true then ".repeat(400) + "true" + &" else false".repeat(400)
        );
        for text in [
            wrap("(", ")", 150),
            wrap("(", ")", 100_000),
            wrap("[", "].contains(true)", 300),
            wrap("!", "", 5_000),
            wrap("-", " == 0", 5_000),
            ifs,
        ] {
            let e = p.check(&text).unwrap_err();
            assert!(matches!(e, PolicyError::Parse(_)), "{e}");
        }
        // Shallow nesting, strings and comments full of brackets are fine.
        p.check(&wrap("(", ")", 20)).unwrap();
        p.check(
            "// ((((((((((((((((((((((((((((((((((((((((((((((((((((((\n\
             permit (principal, action, resource) when { \"((((((((((((((((((((((((((((((((((((((((((((((((((((\" != \"\" };",
        )
        .unwrap();
        // A chain too long to evaluate on an ordinary thread is refused…
        let chain = |n: usize| {
            format!(
                "permit (principal, action == Steward::Action::\"llm.call\", resource) when {{ {} }};",
                vec!["true"; n].join(" && ")
            )
        };
        let e = p.check(&chain(2_000)).unwrap_err();
        assert!(e.to_string().contains("operators"), "{e}");
        // …and the longest accepted decides on one.
        p.activate(p.check(&chain(MAX_OPERATORS)).unwrap());
        let d = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024) // a Tokio worker's
            .spawn(move || p.decide(&q("a", "llm.call", "m", 0)).allow)
            .unwrap()
            .join()
            .unwrap();
        assert!(d);
    }

    #[test]
    fn a_stored_set_loads_as_it_is() {
        let p = Policies::new(None).unwrap();
        // A set that would no longer pass the guard is still loaded as stored, never replaced.
        let text = "@id(\"freeze\") forbid (principal, action, resource);";
        assert!(p.check(text).is_err());
        let loaded = p.load(text).unwrap();
        p.activate(loaded);
        assert!(!p.decide(&q("a", "llm.call", "m", 0)).allow);
        assert!(p.load("permit (principal, action, resource").is_err());
    }

    #[test]
    fn nesting_is_measured_outside_strings_and_comments() {
        assert_eq!(nesting_depth("permit (principal, action, resource);"), 1);
        assert_eq!(nesting_depth("when { ((x)) }"), 3);
        assert_eq!(nesting_depth("when { \"(((\" }"), 1);
        assert_eq!(nesting_depth("// (((\nwhen { x }"), 1);
        assert_eq!(
            nesting_depth("when { if a then if b then c else d else e }"),
            3
        );
        assert_eq!(nesting_depth("when { a - b > -1 }"), 2);
    }
}
