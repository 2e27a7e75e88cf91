//! Delegated credentials as every request sees them. A token (`steward_gov::delegation`) says
//! what it allows; the store says which of its blocks are links Steward minted, and whether
//! each is still live. A token is accepted only when its first block is a first link, each
//! link's parent is the one before it, no link is revoked or expired, the API key that began
//! the chain is live, and every agent on the chain may act. Links are read at most once a
//! second per node (at once on the node that revoked one).

use std::sync::Arc;

use biscuit_auth::Biscuit;
use steward_gov::delegation::{revocation_ids, Delegator, Requested, TokenError, ACTIONS};
use steward_gov::Scope;
use steward_store::{ApiKeyRecord, DelegationRecord, DelegationStore, GatewayStore, Store};

use crate::clock::Clock;
use crate::identities::Identities;
use crate::ttl_cache::TtlCache;

/// Longest chain accepted: a loop of agents delegating to each other ends here.
const MAX_LINKS: usize = 16;
/// A token asked for without an expiry lives this long (or less, under a parent that expires
/// sooner).
const DEFAULT_TTL_MS: i64 = 3_600_000;
/// A first link minted with a key that never expires lives at most this long.
const MAX_TTL_MS: i64 = 30 * 86_400_000;
/// Names in a scope: at most this many per list.
const MAX_NAMES: usize = 256;

/// A verified chain: the token, and its links first to last.
#[derive(Clone)]
pub struct Delegated {
    pub token: Biscuit,
    pub links: Vec<DelegationRecord>,
}

impl Delegated {
    pub fn last(&self) -> &DelegationRecord {
        // `open` never returns a chain without links.
        &self.links[self.links.len() - 1]
    }

    /// The agent whose key began the chain.
    pub fn root_agent(&self) -> &str {
        &self.links[0].issuer
    }

    pub fn link_ids(&self) -> Vec<String> {
        self.links.iter().map(|l| l.id.clone()).collect()
    }

    /// The budget account of the nearest link that has one.
    pub fn budget_account(&self) -> Option<String> {
        self.links
            .iter()
            .rev()
            .find(|l| scope_of(l).is_ok_and(|s| s.budget_nanos.is_some()))
            .map(|l| format!("delegation:{}", l.id))
    }
}

pub(crate) fn scope_of(l: &DelegationRecord) -> Result<Scope, String> {
    serde_json::from_str(&l.scope).map_err(|e| format!("delegation {}: {e}", l.id))
}

/// Why a scope cannot be granted: it is malformed, or it is wider than the delegator's.
#[derive(Debug)]
pub enum ScopeError {
    Invalid(Vec<String>),
    Wider(Vec<String>),
}

/// Why a token was refused: `Forged` is a token that is not ours or does not hang together;
/// the others are honest tokens that no longer hold.
#[derive(Debug)]
pub enum Refusal {
    Forged(String),
    Revoked(String),
    Expired(String),
    Barred(String),
    Internal(String),
}

pub(crate) struct Delegations {
    links_store: Arc<dyn DelegationStore>,
    keys_store: Arc<dyn GatewayStore>,
    pub clock: Arc<dyn Clock>,
    pub delegator: Delegator,
    pub identities: Arc<Identities>,
    links: TtlCache<String, Option<DelegationRecord>>,
    keys: TtlCache<String, Option<ApiKeyRecord>>,
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal::Internal(e.to_string())
}

impl Delegations {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        delegator: Delegator,
        identities: Arc<Identities>,
    ) -> Self {
        Delegations {
            links_store: store.clone(),
            keys_store: store,
            clock,
            delegator,
            identities,
            links: TtlCache::new(crate::ttl_cache::LOOKUP_TTL),
            keys: TtlCache::new(crate::ttl_cache::LOOKUP_TTL),
        }
    }

    /// Forgets cached links and keys, so a revocation applies on this node at once.
    pub fn forget(&self) {
        self.links.clear();
        self.keys.clear();
    }

    pub async fn link(&self, revocation_id: &str) -> Result<Option<DelegationRecord>, Refusal> {
        if let Some(l) = self.links.get(&revocation_id.to_string()) {
            return Ok(l);
        }
        let l = self
            .links_store
            .delegation_by_revocation(revocation_id)
            .await
            .map_err(internal)?;
        self.links.put(revocation_id.to_string(), l.clone());
        Ok(l)
    }

    async fn key(&self, id: &str) -> Result<Option<ApiKeyRecord>, Refusal> {
        if let Some(k) = self.keys.get(&id.to_string()) {
            return Ok(k);
        }
        let k = self.keys_store.get_key(id).await.map_err(internal)?;
        self.keys.put(id.to_string(), k.clone());
        Ok(k)
    }

    /// The chain a presented token carries, if every link of it holds.
    pub async fn open(&self, token: &str) -> Result<Delegated, Refusal> {
        let token = self.delegator.open(token).map_err(|e| match e {
            TokenError::Forged(m) => Refusal::Forged(m),
            other => internal(other),
        })?;
        let ids = revocation_ids(&token);
        if ids.len() > MAX_LINKS {
            return Err(Refusal::Forged(format!(
                "a chain of more than {MAX_LINKS} blocks"
            )));
        }
        let mut links: Vec<DelegationRecord> = Vec::new();
        for (i, rid) in ids.iter().enumerate() {
            match self.link(rid).await? {
                Some(l) => {
                    let follows = match links.last() {
                        None => i == 0 && l.parent_id.is_none(),
                        Some(prev) => l.parent_id.as_deref() == Some(prev.id.as_str()),
                    };
                    if !follows {
                        return Err(Refusal::Forged(format!(
                            "the chain is broken: delegation {} does not follow {}",
                            l.id,
                            links.last().map_or("the start", |p| p.id.as_str())
                        )));
                    }
                    links.push(l);
                }
                // A block the holder appended itself: it can only narrow.
                None if i > 0 => {}
                None => {
                    return Err(Refusal::Forged(
                        "its first block was not minted by this Steward".into(),
                    ))
                }
            }
        }
        let now = self.clock.now_ms();
        for l in &links {
            if l.revoked_at.is_some() {
                return Err(Refusal::Revoked(format!(
                    "delegation {} was revoked: {}",
                    l.id,
                    l.revoke_reason.clone().unwrap_or_default()
                )));
            }
            if l.expires_at <= now {
                return Err(Refusal::Expired(format!(
                    "delegation {} has expired; ask the delegator for a new token",
                    l.id
                )));
            }
        }
        if let Some(key_id) = &links[0].key_id {
            match self.key(key_id).await? {
                Some(k) if k.revoked_at.is_some() => {
                    return Err(Refusal::Revoked(format!(
                        "the API key {key_id} this chain began with was revoked: {}",
                        k.revoke_reason.unwrap_or_default()
                    )))
                }
                Some(_) => {}
                None => return Err(Refusal::Forged(format!("no API key {key_id}"))),
            }
        }
        let d = Delegated { token, links };
        for agent in
            std::iter::once(d.root_agent()).chain(d.links.iter().map(|l| l.holder.as_str()))
        {
            if let Some(why) = self.identities.barred(agent).await.map_err(internal)? {
                return Err(Refusal::Barred(why));
            }
        }
        Ok(d)
    }

    /// The scope a new link below `parent` (or below the key's agent when `None`) would have,
    /// or every way in which it would be wider.
    pub fn child_scope(
        &self,
        parent: Option<&Delegated>,
        key_expires_at: Option<i64>,
        mut req: Requested,
    ) -> Result<Scope, ScopeError> {
        let now = self.clock.now_ms();
        let parent_scope = match parent {
            Some(p) => scope_of(p.last()).map_err(|e| ScopeError::Invalid(vec![e]))?,
            None => Scope {
                expires_at: key_expires_at
                    .unwrap_or(now + MAX_TTL_MS)
                    .min(now + MAX_TTL_MS),
                ..Scope::default()
            },
        };
        let mut problems = Vec::new();
        for (what, list) in [
            ("actions", &req.actions),
            ("models", &req.models),
            ("tools", &req.tools),
        ] {
            if let Some(l) = list {
                if l.len() > MAX_NAMES {
                    problems.push(format!("{what}: at most {MAX_NAMES}"));
                }
                if let Some(bad) = l.iter().find(|n| !valid_name(n)) {
                    problems.push(format!(
                        "{what}: {bad:?} is not a name (1-128 of a-z A-Z 0-9 . _ - / : @)"
                    ));
                }
            }
        }
        if let Some(a) = &req.actions {
            if let Some(bad) = a.iter().find(|a| !ACTIONS.contains(&a.as_str())) {
                problems.push(format!(
                    "actions: {bad:?} is not one of {}",
                    ACTIONS.join(", ")
                ));
            }
        }
        if req.budget_nanos.is_some_and(|b| b < 0) {
            problems.push("budget_usd: not negative".into());
        }
        if req.expires_at.is_some_and(|t| t <= now) {
            problems.push("ttl_s: at least 1".into());
        }
        if !problems.is_empty() {
            return Err(ScopeError::Invalid(problems));
        }
        if req.expires_at.is_none() {
            req.expires_at = Some((now + DEFAULT_TTL_MS).min(parent_scope.expires_at));
        }
        parent_scope.narrow(req).map_err(ScopeError::Wider)
    }

    /// Mints the link: its token block, its row, and its budget account when it has a budget.
    pub async fn mint(
        &self,
        parent: Option<&Delegated>,
        key_id: Option<&str>,
        issuer: &str,
        holder: &str,
        scope: &Scope,
    ) -> Result<(DelegationRecord, String), Refusal> {
        let id = self.clock.new_id("dlg");
        let minted = match parent {
            None => self.delegator.first(&id, holder, scope),
            Some(p) => self.delegator.attenuate(&p.token, &id, holder, scope),
        }
        .map_err(internal)?;
        let now = self.clock.now_ms();
        let rec = DelegationRecord {
            id: id.clone(),
            parent_id: parent.map(|p| p.last().id.clone()),
            revocation_id: minted.revocation_id,
            issuer: issuer.to_string(),
            holder: holder.to_string(),
            key_id: key_id.map(str::to_string),
            scope: serde_json::to_string(scope).map_err(internal)?,
            expires_at: scope.expires_at,
            created_at: now,
            revoked_at: None,
            revoke_reason: None,
        };
        match scope.budget_nanos {
            Some(cap) => {
                // Spending under the link also counts against the link above it, or else the
                // agent whose key began the chain.
                let above = parent
                    .and_then(Delegated::budget_account)
                    .unwrap_or_else(|| {
                        format!("agent:{}", parent.map_or(issuer, |p| p.root_agent()))
                    });
                self.links_store
                    .create_budgeted_delegation(&rec, &format!("delegation:{id}"), &above, cap)
                    .await
            }
            None => self.links_store.create_delegation(&rec).await,
        }
        .map_err(internal)?;
        Ok((rec, minted.token))
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':' | '@'))
}
