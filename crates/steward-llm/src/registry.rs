//! The configured providers, and how a model route (`provider/model` or `scripted`) picks one.

use std::collections::BTreeMap;
use std::sync::Arc;

use steward_types::config::{LlmConfig, ProviderKind};
use steward_types::AgentSpec;

use crate::{AnthropicProvider, Error, OpenAiProvider, Provider, Result, ScriptedProvider};

#[derive(Clone, Default)]
pub struct Providers {
    by_name: BTreeMap<String, Arc<dyn Provider>>,
}

impl Providers {
    /// Builds every configured provider. Keys are read from the environment variable each
    /// provider names; a missing variable is an error now rather than a 401 later.
    pub fn from_config(cfg: &LlmConfig, env: impl Fn(&str) -> Option<String>) -> Result<Self> {
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
            let timeout = p.timeout_ms.unwrap_or(cfg.timeout_ms);
            let provider: Arc<dyn Provider> = match p.kind {
                ProviderKind::Openai => {
                    Arc::new(OpenAiProvider::new(name, &p.base_url, key, timeout)?)
                }
                ProviderKind::Anthropic => {
                    Arc::new(AnthropicProvider::new(name, &p.base_url, key, timeout)?)
                }
            };
            by_name.insert(name.clone(), provider);
        }
        Ok(Providers { by_name })
    }

    /// Checks that an agent's route names a provider that exists.
    pub fn check_route(&self, spec: &AgentSpec) -> Result<()> {
        self.resolve(spec).map(|_| ())
    }

    /// The provider and upstream model name an agent's route selects.
    pub fn resolve(&self, spec: &AgentSpec) -> Result<(Arc<dyn Provider>, String)> {
        if spec.is_scripted() {
            return Ok((
                Arc::new(ScriptedProvider::new(spec.script.clone())),
                crate::SCRIPTED_LABEL.into(),
            ));
        }
        let (provider, model) = spec
            .model
            .split_once('/')
            .ok_or_else(|| Error::Route(format!("{:?}: expected provider/model", spec.model)))?;
        let p = self.by_name.get(provider).ok_or_else(|| {
            let known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            Error::Route(format!(
                "{:?}: no provider named {provider:?} is configured (configured: {}); add [llm.providers.{provider}] to steward.toml",
                spec.model,
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ))
        })?;
        Ok((p.clone(), model.to_string()))
    }
}
