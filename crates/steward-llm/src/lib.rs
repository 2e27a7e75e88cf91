//! Model providers behind one `Provider` trait: OpenAI-compatible chat completions, Anthropic
//! Messages, and the `scripted` provider for tests and demos. A provider acts and reports usage;
//! it never bills, authorizes or stores — the Kernel does that around it.

mod anthropic;
mod chat;
mod error;
mod http;
mod openai;
mod registry;
mod scripted;

pub use chat::{ChatRequest, ChatResponse, Message, Role, ToolCall, ToolSpec, Usage};
pub use error::{Error, Result};
pub use registry::Providers;
pub use scripted::{ScriptedProvider, SCRIPTED_LABEL};

/// One upstream model API.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// The provider's name as it appears in routes and journals (`openai`, `scripted`, …).
    fn name(&self) -> &str;
    async fn chat(&self, req: &ChatRequest) -> Result<ChatResponse>;
}

pub use anthropic::AnthropicProvider;
pub use openai::OpenAiProvider;
