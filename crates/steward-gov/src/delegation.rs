//! Delegated credentials as biscuit tokens. A link of a chain is one token block Steward signs:
//! it names the holder and carries the link's scope as datalog checks, so a token can only ever
//! be narrowed — by Steward hop by hop, or offline by its holder appending checks of its own.
//! What a link may do is checked twice: here, by the token's own checks against the request;
//! and before the block is signed, by [`Scope::narrow`], which refuses any scope wider than the
//! parent's. Which blocks are links, and whether any is revoked, is the store's business: a
//! block is found there by its revocation id (its signature), which no one can forge.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, UNIX_EPOCH};

use biscuit_auth::builder::{BlockBuilder, Term};
use biscuit_auth::{AuthorizerBuilder, AuthorizerLimits, Biscuit, KeyPair, PrivateKey};
use serde::{Deserialize, Serialize};
use steward_store::merkle::hex;

/// The actions a delegated credential may be limited to.
pub const ACTIONS: &[&str] = &["llm.call", "tool.call"];

/// What one link allows. A list that is absent allows everything its parent allows; the root
/// link (minted with an agent's API key) starts from everything the agent may do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actions: Option<BTreeSet<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<BTreeSet<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<BTreeSet<String>>,
    /// Spending cap over the link's life, nano-dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_nanos: Option<i64>,
    /// Unix milliseconds.
    pub expires_at: i64,
}

/// What a delegator asks for; every absent field is inherited from the parent.
#[derive(Clone, Debug, Default)]
pub struct Requested {
    pub actions: Option<BTreeSet<String>>,
    pub models: Option<BTreeSet<String>>,
    pub tools: Option<BTreeSet<String>>,
    pub budget_nanos: Option<i64>,
    pub expires_at: Option<i64>,
}

impl Scope {
    /// Whether the scope lets its holder do `action` on `resource`: the action is listed (or
    /// no list), and a model call's model or a tool call's tool is listed (or no list).
    pub fn covers(&self, action: &str, resource: &str) -> bool {
        let within = |list: &Option<BTreeSet<String>>, what: &str| {
            list.as_ref().is_none_or(|l| l.contains(what))
        };
        within(&self.actions, action)
            && match action {
                "llm.call" => within(&self.models, resource),
                "tool.call" => within(&self.tools, resource),
                _ => true,
            }
    }

    /// The child scope `req` asks for under `self`, or every way in which it would be wider.
    pub fn narrow(&self, req: Requested) -> Result<Scope, Vec<String>> {
        let mut wider = Vec::new();
        let mut set = |what: &str,
                       parent: &Option<BTreeSet<String>>,
                       asked: Option<BTreeSet<String>>| {
            match (parent, asked) {
                (p, None) => p.clone(),
                (None, Some(a)) => Some(a),
                (Some(p), Some(a)) => {
                    let extra: Vec<&String> = a.difference(p).collect();
                    if !extra.is_empty() {
                        wider.push(format!(
                            "{what} {} not granted to the delegator",
                            extra
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    Some(a)
                }
            }
        };
        let actions = set("actions", &self.actions, req.actions);
        let models = set("models", &self.models, req.models);
        let tools = set("tools", &self.tools, req.tools);
        let budget_nanos = match (self.budget_nanos, req.budget_nanos) {
            (p, None) => p,
            (Some(p), Some(a)) if a > p => {
                wider.push(format!(
                    "a budget of {a} nano-dollars is more than the delegator's {p}"
                ));
                Some(a)
            }
            (_, Some(a)) => Some(a),
        };
        let expires_at = match req.expires_at {
            None => self.expires_at,
            Some(t) if t > self.expires_at => {
                wider.push("an expiry later than the delegator's".to_string());
                t
            }
            Some(t) => t,
        };
        if wider.is_empty() {
            Ok(Scope {
                actions,
                models,
                tools,
                budget_nanos,
                expires_at,
            })
        } else {
            Err(wider)
        }
    }
}

/// Why a presented token is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a Steward delegation token, or was altered: {0}")]
    Forged(String),
    #[error("the token does not allow this: {0}")]
    OutOfScope(String),
    #[error("{0}")]
    Internal(String),
}

/// Mints and checks delegation tokens with the signing key every node shares.
pub struct Delegator {
    root: KeyPair,
}

/// A token, and the revocation id of the block that made its last link.
pub struct Minted {
    pub token: String,
    pub revocation_id: String,
}

/// Link facts and scope checks of one block. Names are passed as parameters, never spliced
/// into the datalog text.
fn block(link: &str, holder: &str, scope: &Scope) -> Result<BlockBuilder, TokenError> {
    let mut code = String::from("link({link});\nholder({holder});\n");
    code.push_str("check if time($t), $t <= {expires};\n");
    let mut params: HashMap<String, Term> = HashMap::from([
        ("link".into(), Term::from(link)),
        ("holder".into(), Term::from(holder)),
        (
            "expires".into(),
            Term::from(UNIX_EPOCH + Duration::from_millis(scope.expires_at.max(0) as u64)),
        ),
    ]);
    let as_set = |s: &BTreeSet<String>| {
        Term::from(
            s.iter()
                .map(|v| Term::from(v.as_str()))
                .collect::<BTreeSet<Term>>(),
        )
    };
    if let Some(a) = &scope.actions {
        code.push_str("check if action($a), {actions}.contains($a);\n");
        params.insert("actions".into(), as_set(a));
    }
    // A list of models restricts model calls only; one of tools, tool calls only.
    if let Some(m) = &scope.models {
        code.push_str(
            "check if resource($k, $r), $k != \"model\" or resource(\"model\", $r), {models}.contains($r);\n",
        );
        params.insert("models".into(), as_set(m));
    }
    if let Some(t) = &scope.tools {
        code.push_str(
            "check if resource($k, $r), $k != \"tool\" or resource(\"tool\", $r), {tools}.contains($r);\n",
        );
        params.insert("tools".into(), as_set(t));
    }
    BlockBuilder::new()
        .code_with_params(code, params, HashMap::new())
        .map_err(|e| TokenError::Internal(format!("building a token block: {e}")))
}

fn internal(e: impl std::fmt::Display) -> TokenError {
    TokenError::Internal(e.to_string())
}

impl Delegator {
    /// A new signing key, and its private half in hex to keep.
    pub fn generate() -> (Delegator, String) {
        let root = KeyPair::new();
        let secret = root.private().to_bytes_hex();
        (Delegator { root }, secret)
    }

    pub fn from_hex(secret: &str) -> Result<Delegator, TokenError> {
        let key = PrivateKey::from_bytes_hex(secret.trim(), biscuit_auth::Algorithm::Ed25519)
            .map_err(|e| internal(format!("the delegation signing key: {e}")))?;
        Ok(Delegator {
            root: KeyPair::from(&key),
        })
    }

    /// The first link: a token for `holder`, signed with the root key.
    pub fn first(&self, link: &str, holder: &str, scope: &Scope) -> Result<Minted, TokenError> {
        let b = Biscuit::builder()
            .merge(block(link, holder, scope)?)
            .build(&self.root)
            .map_err(internal)?;
        minted(&b)
    }

    /// A link below `parent`'s last: the parent's token with one block more.
    pub fn attenuate(
        &self,
        parent: &Biscuit,
        link: &str,
        holder: &str,
        scope: &Scope,
    ) -> Result<Minted, TokenError> {
        let b = parent
            .append(block(link, holder, scope)?)
            .map_err(internal)?;
        minted(&b)
    }

    /// A token whose signatures check out against the root key. It may still be revoked, or
    /// not allow what it is presented for.
    pub fn open(&self, token: &str) -> Result<Biscuit, TokenError> {
        Biscuit::from_base64(token.trim(), self.root.public())
            .map_err(|e| TokenError::Forged(e.to_string()))
    }

    /// Whether every check of every block allows `action` on the resource (`kind`: `model` or
    /// `tool`) at `now_ms`.
    pub fn allows(
        &self,
        token: &Biscuit,
        action: &str,
        kind: &str,
        resource: &str,
        now_ms: i64,
    ) -> Result<(), TokenError> {
        let params = HashMap::from([
            ("action".to_string(), Term::from(action)),
            ("kind".to_string(), Term::from(kind)),
            ("resource".to_string(), Term::from(resource)),
            (
                "now".to_string(),
                Term::from(UNIX_EPOCH + Duration::from_millis(now_ms.max(0) as u64)),
            ),
        ]);
        let mut authorizer = AuthorizerBuilder::new()
            .code_with_params(
                "action({action}); resource({kind}, {resource}); time({now}); allow if true;",
                params,
                HashMap::new(),
            )
            .map_err(internal)?
            .set_limits(AuthorizerLimits {
                max_time: Duration::from_millis(50),
                ..AuthorizerLimits::default()
            })
            .build(token)
            .map_err(internal)?;
        authorizer
            .authorize()
            .map(|_| ())
            .map_err(|e| TokenError::OutOfScope(e.to_string()))
    }
}

/// The revocation ids of a token's blocks, first to last (hex).
pub fn revocation_ids(token: &Biscuit) -> Vec<String> {
    token
        .revocation_identifiers()
        .iter()
        .map(|r| hex(r))
        .collect()
}

fn minted(b: &Biscuit) -> Result<Minted, TokenError> {
    Ok(Minted {
        token: b.to_base64().map_err(internal)?,
        revocation_id: revocation_ids(b)
            .pop()
            .ok_or_else(|| internal("a token without blocks"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> Option<BTreeSet<String>> {
        Some(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn a_scope_covers_what_its_lists_name() {
        let all = Scope::default();
        assert!(all.covers("tool.call", "anything") && all.covers("secret.use", "k"));
        let narrow = Scope {
            actions: set(&["llm.call", "tool.call"]),
            models: set(&["m"]),
            tools: set(&["echo"]),
            ..Scope::default()
        };
        assert!(narrow.covers("llm.call", "m") && narrow.covers("tool.call", "echo"));
        assert!(!narrow.covers("llm.call", "other") && !narrow.covers("tool.call", "grep"));
        assert!(!narrow.covers("secret.use", "k"), "an action not listed");
        let tools_only = Scope {
            tools: set(&["echo"]),
            ..Scope::default()
        };
        assert!(tools_only.covers("llm.call", "any") && tools_only.covers("agent.spawn", "x"));
        assert!(!tools_only.covers("tool.call", "grep"));
    }

    fn scope() -> Scope {
        Scope {
            actions: set(&["llm.call", "tool.call"]),
            models: set(&["small", "large"]),
            tools: set(&["echo"]),
            budget_nanos: Some(1_000),
            expires_at: 10_000_000,
        }
    }

    #[test]
    fn a_child_inherits_narrows_and_never_widens() {
        let parent = scope();
        let child = parent
            .narrow(Requested {
                models: set(&["small"]),
                budget_nanos: Some(10),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(child.models, set(&["small"]));
        assert_eq!(
            (child.tools, child.expires_at),
            (set(&["echo"]), 10_000_000)
        );
        let wider = parent
            .narrow(Requested {
                models: set(&["small", "huge"]),
                tools: set(&["shell"]),
                budget_nanos: Some(5_000),
                expires_at: Some(20_000_000),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(wider.len(), 4, "{wider:?}");
        assert!(wider[0].contains("huge"), "{wider:?}");
    }

    #[test]
    fn tokens_allow_what_every_block_allows_and_nothing_else() {
        let (d, secret) = Delegator::generate();
        let d2 = Delegator::from_hex(&secret).unwrap();
        let first = d.first("dlg_1", "b", &scope()).unwrap();
        let t1 = d2.open(&first.token).unwrap();
        d.allows(&t1, "llm.call", "model", "large", 1_000).unwrap();
        d.allows(&t1, "tool.call", "tool", "echo", 1_000).unwrap();
        assert!(d.allows(&t1, "tool.call", "tool", "shell", 1_000).is_err());
        assert!(
            d.allows(&t1, "llm.call", "model", "large", 10_001_000)
                .is_err(),
            "expired"
        );
        let narrower = scope()
            .narrow(Requested {
                actions: set(&["llm.call"]),
                models: set(&["small"]),
                ..Default::default()
            })
            .unwrap();
        let second = d.attenuate(&t1, "dlg_2", "c", &narrower).unwrap();
        let t2 = d.open(&second.token).unwrap();
        d.allows(&t2, "llm.call", "model", "small", 1_000).unwrap();
        assert!(d.allows(&t2, "llm.call", "model", "large", 1_000).is_err());
        assert!(d.allows(&t2, "tool.call", "tool", "echo", 1_000).is_err());
        assert_eq!(revocation_ids(&t2)[0], first.revocation_id);
        assert_eq!(revocation_ids(&t2)[1], second.revocation_id);
    }

    #[test]
    fn forged_altered_and_cut_tokens_are_refused() {
        let (d, _) = Delegator::generate();
        let (other, _) = Delegator::generate();
        let t = d.first("dlg_1", "b", &scope()).unwrap().token;
        assert!(matches!(other.open(&t), Err(TokenError::Forged(_))));
        let cut = &t[..t.len() - 10];
        assert!(matches!(d.open(cut), Err(TokenError::Forged(_))));
        let mut bytes = t.clone().into_bytes();
        let mid = bytes.len() / 2;
        bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).unwrap();
        assert!(matches!(d.open(&altered), Err(TokenError::Forged(_))));
    }

    #[test]
    fn dropping_the_last_link_leaves_a_token_that_does_not_verify() {
        use biscuit_auth::format::schema;
        use prost::Message;
        let (d, _) = Delegator::generate();
        let t1 = d
            .open(&d.first("dlg_1", "b", &scope()).unwrap().token)
            .unwrap();
        let t2 = d.attenuate(&t1, "dlg_2", "c", &scope()).unwrap().token;
        // The holder of the second link cuts its own block off, hoping to hold the first.
        let raw = d.open(&t2).unwrap().to_vec().unwrap();
        let mut proto = schema::Biscuit::decode(raw.as_slice()).unwrap();
        assert_eq!(proto.blocks.len(), 1);
        proto.blocks.clear();
        let cut = biscuit_auth::Biscuit::from(proto.encode_to_vec(), d.root.public());
        assert!(cut.is_err(), "a truncated chain must not verify");
    }
}
