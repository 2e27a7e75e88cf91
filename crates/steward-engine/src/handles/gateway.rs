//! The `/v1` gateway for external agents: who is calling, and their model calls on the one
//! governance path.

use crate::*;

/// `Engine::gateway()`.
pub struct Gateway<'a>(pub(crate) &'a Engine);

impl Gateway<'_> {
    /// Identifies a gateway caller by its API key, the delegated token it holds (if any) and
    /// the run it names (if any).
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        delegation: Option<&str>,
        run: Option<&str>,
    ) -> Result<Principal, GatewayError> {
        self.0
            .inner
            .gateway
            .authenticate(bearer, delegation, run)
            .await
    }

    /// See `Gateway::authorize_queue`.
    pub async fn authorize_queue(
        &self,
        who: &Principal,
        action: &str,
        queue: &str,
    ) -> Result<(), GatewayError> {
        self.0
            .inner
            .gateway
            .authorize_queue(who, action, queue)
            .await
    }

    /// The tools `who` may call from outside a run (an MCP client): registry tools that need
    /// no run and that its token and the policy allow it, then the meta-tools.
    pub async fn tools(&self, who: &Principal) -> Result<Vec<ToolView>, GatewayError> {
        let mut tools = self.0.inner.gateway.visible_tools(who).await?;
        // Memory is every agent's: each scope is decided when a call names it.
        tools.extend(handles::memories::tool_views());
        Ok(tools)
    }

    /// Calls a tool for `who` outside any run, on the governance path (decided, schema-checked,
    /// bounded in time, audited). When `cancelled` fires (the caller went away) the call is
    /// given up: an upstream MCP server is told to cancel it, an HTTP request is aborted, and
    /// the record says so. `progress` receives what the tool reports of a long call.
    pub async fn call_tool(
        &self,
        who: &Principal,
        name: &str,
        args: serde_json::Value,
        cancelled: &tokio_util::sync::CancellationToken,
        progress: Option<steward_tools::ProgressSink>,
        approval: crate::gateway::Approval,
    ) -> Result<serde_json::Value, ToolCallError> {
        if handles::memories::is_memory_tool(name) {
            return self.0.memories().tool_call(who, name, args).await;
        }
        self.0
            .inner
            .gateway
            .call_tool(who, name, args, cancelled, progress, approval)
            .await
    }

    /// An OpenAI-format chat completion for an external agent, through the syscall path.
    pub async fn chat(
        &self,
        who: &Principal,
        body: serde_json::Value,
    ) -> Result<GatewayReply, GatewayError> {
        self.0
            .inner
            .gateway
            .chat(who, body, GatewayApi::ChatCompletions)
            .await
    }

    /// A chat call that came through another API: `chat` is its translation onto chat
    /// completions (what bounds, authorizes and reaches translated deployments), `native` the
    /// request as sent, passed through whole to deployments that speak its API.
    pub async fn chat_via(
        &self,
        who: &Principal,
        chat: serde_json::Value,
        native: steward_llm::NativeRequest,
    ) -> Result<GatewayReply, GatewayError> {
        self.0.inner.gateway.chat_native(who, chat, native).await
    }

    /// See `Gateway::count_tokens`.
    pub async fn count_tokens(
        &self,
        who: &Principal,
        model: &str,
        native: &steward_llm::NativeRequest,
    ) -> Result<Option<i64>, GatewayError> {
        self.0.inner.gateway.count_tokens(who, model, native).await
    }

    /// OpenAI-format embeddings for an external agent, through the same path.
    pub async fn embeddings(
        &self,
        who: &Principal,
        body: serde_json::Value,
    ) -> Result<GatewayReply, GatewayError> {
        self.0.inner.gateway.embeddings(who, body).await
    }

    /// The model aliases the gateway serves.
    /// Whether `/v1` can route `model`: an alias, or `provider/model` of a configured provider.
    pub fn routes(&self, model: &str) -> bool {
        self.0
            .inner
            .gateway
            .router
            .providers()
            .deployments(model)
            .is_ok()
    }

    pub fn models(&self) -> Vec<String> {
        self.0
            .inner
            .gateway
            .router
            .providers()
            .aliases()
            .map(str::to_string)
            .collect()
    }

    /// The circuits open on this node (opened here or by another node), and the milliseconds
    /// each stays open.
    pub fn open_circuits(&self) -> Vec<(String, u64)> {
        self.0
            .inner
            .kernel
            .router
            .breakers()
            .open_now(std::time::Instant::now())
            .into_iter()
            .map(|(l, d)| (l, d.as_millis() as u64))
            .collect()
    }
}
