//! The configured providers, and how a model route (`provider/model` or `scripted`) picks one.

use std::collections::BTreeMap;
use std::sync::Arc;

use steward_types::config::{LlmConfig, ProviderKind};
use steward_types::AgentSpec;

use crate::{AnthropicProvider, Error, OpenAiProvider, Provider, Result, ScriptedProvider};

#[derive(Clone, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Arc<dyn Provider>>,
    routes: BTreeMap<String, steward_types::config::RouteConfig>,
}

/// Where one request may go: the route's deployments in the order to try, and the chains it
/// falls back to when the failure is of a kind the route's own deployments cannot fix.
#[derive(Clone, Default)]
pub struct Plan {
    pub deployments: Vec<Deployment>,
    /// For a prompt too long for the context window.
    pub context_window: Vec<Deployment>,
    /// For a content-filter refusal.
    pub content_filter: Vec<Deployment>,
}

impl Plan {
    /// Leaves out every deployment `off` says no to, from the route and from its fallback
    /// chains; whether any deployment of the route itself is left.
    pub fn retain_allowed(&mut self, off: impl Fn(&str) -> bool) -> bool {
        for list in [
            &mut self.deployments,
            &mut self.context_window,
            &mut self.content_filter,
        ] {
            list.retain(|d| !off(&d.label));
        }
        !self.deployments.is_empty()
    }

    /// Every deployment the request could reach, fallbacks included.
    pub fn all(&self) -> impl Iterator<Item = &Deployment> {
        self.deployments
            .iter()
            .chain(&self.context_window)
            .chain(&self.content_filter)
    }
}

/// One place a model request can go: a provider and the model name it knows.
#[derive(Clone)]
pub struct Deployment {
    pub provider: Arc<dyn Provider>,
    pub model: String,
    /// `provider/model`, as configured.
    pub label: String,
}

impl Providers {
    /// Builds every configured provider. Keys are read from the environment variable each
    /// provider names; a missing variable is an error now rather than a 401 later.
    pub fn from_config(cfg: &LlmConfig, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
        Self::with_secrets(cfg, env, None)
    }

    /// As `from_config`, with the vault for providers that name an `api_key_secret`.
    pub fn with_secrets(
        cfg: &LlmConfig,
        env: impl Fn(&str) -> Option<String>,
        secrets: Option<Arc<dyn crate::SecretSource>>,
    ) -> Result<Self> {
        let mut by_name: BTreeMap<String, Arc<dyn Provider>> = BTreeMap::new();
        for (name, p) in &cfg.providers {
            if name == crate::SCRIPTED_LABEL {
                return Err(Error::Route(
                    "`scripted` is built in; name the provider something else".into(),
                ));
            }
            let key = match &p.api_key_env {
                Some(var) => Some(env(var).ok_or_else(|| {
                    Error::Route(format!(
                        "llm.providers.{name}.api_key_env: environment variable {var} is not set"
                    ))
                })?),
                None => None,
            };
            let vault_key = match (&p.api_key_secret, &secrets) {
                (None, _) => None,
                (Some(_), None) => {
                    return Err(Error::Route(format!(
                        "llm.providers.{name}.api_key_secret: no vault is available here"
                    )))
                }
                (Some(_), Some(_)) if p.api_key_env.is_some() => {
                    return Err(Error::Route(format!(
                        "llm.providers.{name}: give api_key_env or api_key_secret, not both"
                    )))
                }
                (Some(secret), Some(source)) => Some(crate::ApiKey::Secret {
                    name: secret.clone(),
                    source: source.clone(),
                }),
            };
            let timeout = p.timeout_ms.unwrap_or(cfg.timeout_ms);
            if p.responses_api && p.kind != ProviderKind::Openai {
                return Err(Error::Route(format!(
                    "llm.providers.{name}.responses_api: only an openai provider can serve the Responses API"
                )));
            }
            let provider: Arc<dyn Provider> = match (p.kind, vault_key) {
                (ProviderKind::Openai, None) => Arc::new(
                    OpenAiProvider::new(name, &p.base_url, key, timeout)?
                        .with_responses_api(p.responses_api),
                ),
                (ProviderKind::Openai, Some(k)) => Arc::new(
                    OpenAiProvider::new(name, &p.base_url, None, timeout)?
                        .with_key(k)
                        .with_responses_api(p.responses_api),
                ),
                (ProviderKind::Anthropic, None) => {
                    Arc::new(AnthropicProvider::new(name, &p.base_url, key, timeout)?)
                }
                (ProviderKind::Anthropic, Some(k)) => {
                    Arc::new(AnthropicProvider::new(name, &p.base_url, None, timeout)?.with_key(k))
                }
            };
            by_name.insert(name.clone(), provider);
        }
        let mut routes = BTreeMap::new();
        for (alias, r) in &cfg.routes {
            if r.deployments.is_empty() {
                return Err(Error::Route(format!(
                    "llm.routes.{alias}.deployments: name at least one provider/model"
                )));
            }
            let known = |d: &str| {
                d.split_once('/')
                    .is_some_and(|(p, m)| by_name.contains_key(p) && !m.is_empty())
            };
            for (i, d) in r.deployments.iter().enumerate() {
                if !known(d) {
                    return Err(Error::Route(format!(
                        "llm.routes.{alias}.deployments[{i}]: {d:?} is not provider/model with a configured provider"
                    )));
                }
            }
            // A fallback may name another alias; aliases are checked once all are known.
            for (field, list) in [
                ("context_window_fallbacks", &r.context_window_fallbacks),
                ("content_filter_fallbacks", &r.content_filter_fallbacks),
            ] {
                for (i, d) in list.iter().enumerate() {
                    if !known(d) && !cfg.routes.contains_key(d) {
                        return Err(Error::Route(format!(
                            "llm.routes.{alias}.{field}[{i}]: {d:?} is neither a model alias nor provider/model with a configured provider"
                        )));
                    }
                }
            }
            if r.strategy == steward_types::config::Strategy::Weighted
                && (r.weights.len() != r.deployments.len() || r.weights.iter().all(|w| *w == 0))
            {
                return Err(Error::Route(format!(
                    "llm.routes.{alias}.weights: give one weight per deployment ({}), not all zero",
                    r.deployments.len()
                )));
            }
            routes.insert(alias.clone(), r.clone());
        }
        Ok(Providers { by_name, routes })
    }

    /// An alias's configuration, if `model` is one.
    pub fn route(&self, model: &str) -> Option<&steward_types::config::RouteConfig> {
        self.routes.get(model)
    }

    /// The model aliases the gateway serves.
    pub fn aliases(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }

    /// Where a gateway model name goes: an alias's deployments in priority order, or the one
    /// deployment a `provider/model` name designates.
    pub fn deployments(&self, model: &str) -> Result<Vec<Deployment>> {
        let labels: Vec<String> = match self.routes.get(model) {
            Some(r) => r.deployments.clone(),
            None => vec![model.to_string()],
        };
        labels
            .into_iter()
            .map(|label| {
                let (p, m) = label.split_once('/').ok_or_else(|| {
                    let aliases: Vec<&str> = self.aliases().collect();
                    Error::Route(format!(
                        "{model:?}: not a configured model alias ({}) nor provider/model",
                        if aliases.is_empty() {
                            "none configured".to_string()
                        } else {
                            aliases.join(", ")
                        }
                    ))
                })?;
                let provider = self
                    .by_name
                    .get(p)
                    .ok_or_else(|| {
                        let known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
                        Error::Route(format!(
                            "{model:?}: no provider named {p:?} is configured (configured: {}); add [llm.providers.{p}] to steward.toml",
                            if known.is_empty() { "none".to_string() } else { known.join(", ") }
                        ))
                    })?
                    .clone();
                Ok(Deployment {
                    provider,
                    model: m.to_string(),
                    label,
                })
            })
            .collect()
    }

    /// A route's fallback chains by failure kind (empty for a `provider/model` name). A
    /// fallback naming an alias contributes that alias's deployments, in its listed order.
    pub fn fallbacks(&self, model: &str) -> Result<(Vec<Deployment>, Vec<Deployment>)> {
        let Some(r) = self.routes.get(model) else {
            return Ok((Vec::new(), Vec::new()));
        };
        let resolve = |list: &[String]| -> Result<Vec<Deployment>> {
            let mut out = Vec::new();
            for name in list {
                out.extend(self.deployments(name)?);
            }
            Ok(out)
        };
        Ok((
            resolve(&r.context_window_fallbacks)?,
            resolve(&r.content_filter_fallbacks)?,
        ))
    }

    /// Checks that an agent's model route leads somewhere: `scripted`, an alias, or
    /// `provider/model` with a configured provider.
    pub fn check_route(&self, spec: &AgentSpec) -> Result<()> {
        if spec.is_scripted() {
            return Ok(());
        }
        self.deployments(&spec.model).map(|_| ())
    }

    /// The scripted provider playing an agent's script, for `model: scripted`.
    pub fn scripted(&self, spec: &AgentSpec) -> Option<Arc<dyn Provider>> {
        spec.is_scripted()
            .then(|| Arc::new(ScriptedProvider::new(spec.script.clone())) as Arc<dyn Provider>)
    }
}
