//! Model providers behind one `Provider` trait: OpenAI-compatible chat completions, Anthropic
//! Messages, and the `scripted` provider for tests and demos. A provider acts and reports usage;
//! it never bills, authorizes or stores — the Kernel does that around it.

mod anthropic;
mod anthropic_stream;
mod chat;
mod error;
mod http;
pub mod native;
mod openai;
pub mod openai_wire;
mod prices;
mod registry;
pub mod resilience;
mod router;
mod scripted;

pub use chat::{ChatRequest, ChatResponse, Message, Role, ToolCall, ToolSpec, Usage};
pub use error::{Error, Failure, Result};
pub use native::{NativeApi, NativeRequest};
pub use prices::Prices;
pub use registry::{Deployment, Plan, Providers};
pub use router::Router;
pub use scripted::{ScriptedProvider, SCRIPTED_LABEL};

/// An upstream's streamed response body (Server-Sent Events in OpenAI's chunk format).
pub type ByteStream = futures::stream::BoxStream<'static, Result<bytes::Bytes>>;

/// One upstream model API.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// The provider's name as it appears in routes and journals (`openai`, `scripted`, …).
    fn name(&self) -> &str;
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse>;

    /// Answers an OpenAI-format request body in OpenAI format, for the `/v1` gateway. This
    /// default translates through the neutral shapes (fields they cannot carry are dropped);
    /// OpenAI-compatible upstreams pass the body through untouched.
    async fn chat_openai(
        &self,
        body: serde_json::Value,
        model: &str,
        id: &str,
        created: i64,
    ) -> Result<serde_json::Value> {
        let req = openai_wire::request_from_openai(&body, model)?;
        let r = self.chat(&req).await?;
        Ok(openai_wire::response_to_openai(&r, id, model, created))
    }

    /// Answers an OpenAI-format `/embeddings` request body in OpenAI format.
    async fn embeddings_openai(
        &self,
        _body: serde_json::Value,
        _model: &str,
    ) -> Result<serde_json::Value> {
        Err(Error::Unsupported(format!(
            "{}: this provider offers no embeddings",
            self.name()
        )))
    }

    /// Streams an OpenAI-format request's answer as OpenAI chunks.
    async fn stream_openai(&self, _body: serde_json::Value, _model: &str) -> Result<ByteStream> {
        Err(Error::Unsupported(format!(
            "{}: streaming through the gateway is only supported for OpenAI-compatible deployments so far",
            self.name()
        )))
    }

    /// Whether the upstream speaks `api` itself, so a request in it can be passed through whole.
    fn speaks(&self, _api: NativeApi) -> bool {
        false
    }

    /// Answers a request in an API the upstream speaks (`speaks`), in that API.
    async fn native(&self, req: &NativeRequest, _model: &str) -> Result<serde_json::Value> {
        Err(Error::Unsupported(format!(
            "{}: does not speak {:?} natively",
            self.name(),
            req.api
        )))
    }

    /// How many input tokens a request in an API the upstream speaks would take, counted by the
    /// upstream (Anthropic's `count_tokens`); no model is run.
    async fn count_tokens(&self, req: &NativeRequest, _model: &str) -> Result<i64> {
        Err(Error::Unsupported(format!(
            "{}: does not count tokens of {:?} requests",
            self.name(),
            req.api
        )))
    }

    /// Streams the answer to a request in an API the upstream speaks, as that API's events.
    async fn native_stream(&self, req: &NativeRequest, _model: &str) -> Result<ByteStream> {
        Err(Error::Unsupported(format!(
            "{}: does not speak {:?} natively",
            self.name(),
            req.api
        )))
    }
}

/// Where a provider's key comes from.
#[derive(Clone, Default)]
pub enum ApiKey {
    #[default]
    None,
    Static(String),
    /// Read from the vault by name on every call, so a rotated key applies at once.
    Secret {
        name: String,
        source: std::sync::Arc<dyn SecretSource>,
    },
}

impl ApiKey {
    pub fn current(&self) -> Option<String> {
        match self {
            ApiKey::None => None,
            ApiKey::Static(k) => Some(k.clone()),
            ApiKey::Secret { name, source } => source.secret(name),
        }
    }
}

/// Credentials by name, decrypted, at call time (the engine's vault).
pub trait SecretSource: Send + Sync {
    fn secret(&self, name: &str) -> Option<String>;
}

pub use anthropic::AnthropicProvider;
pub use openai::OpenAiProvider;
