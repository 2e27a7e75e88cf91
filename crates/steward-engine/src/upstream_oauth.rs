//! Streamable HTTP to an upstream MCP server whose every request carries an OAuth 2 access
//! token (`Authorization: Bearer`). The token is asked of the cluster's shared tokens at each
//! request, not fixed when connecting: a connection lives for hours, its tokens for minutes, and
//! a refresh must not cut the calls in flight. A request the server refuses with 401 marks the
//! token for refresh (on every node) and is sent once more with a new one — refused, it was not
//! acted on, so sending it again does nothing twice.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::stream::BoxStream;
use http::{HeaderName, HeaderValue};
use rmcp::model::ClientJsonRpcMessage;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpError, StreamableHttpPostResponse,
    StreamableHttpResponseLimits,
};
use sse_stream::Sse;
use steward_tools::openapi::OAuthClient;

use crate::oauth::OAuthTokens;

type Error = StreamableHttpError<reqwest_mcp::Error>;
type Headers = HashMap<HeaderName, HeaderValue>;

/// rmcp's HTTP client, with the server's current token on every request.
#[derive(Clone)]
pub(crate) struct Authorised {
    inner: reqwest_mcp::Client,
    /// The server's name: its token's key among the shared tokens.
    server: Arc<str>,
    client: Arc<OAuthClient>,
    tokens: Arc<OAuthTokens>,
}

impl Authorised {
    pub(crate) fn new(server: &str, client: OAuthClient, tokens: Arc<OAuthTokens>) -> Self {
        Authorised {
            inner: reqwest_mcp::Client::new(),
            server: server.into(),
            client: Arc::new(client),
            tokens,
        }
    }

    async fn token(&self) -> Result<String, Error> {
        self.tokens
            .token(&self.server, &self.client)
            .await
            .map_err(|e| {
                StreamableHttpError::UnexpectedServerResponse(
                    format!("no OAuth token for the server: {e}").into(),
                )
            })
    }

    /// `send` with the current token; refused as unauthorised, once more with a new one.
    async fn with_token<T, F, Fut>(&self, send: F) -> Result<T, Error>
    where
        F: Fn(String) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let token = self.token().await?;
        match send(token.clone()).await {
            Err(e) if unauthorised(&e) => {
                self.tokens.rejected(&self.server, &token).await;
                send(self.token().await?).await
            }
            r => r,
        }
    }
}

fn unauthorised(e: &Error) -> bool {
    match e {
        StreamableHttpError::AuthRequired(_) => true,
        StreamableHttpError::HttpStatus(s) => s.status == 401,
        _ => false,
    }
}

impl StreamableHttpClient for Authorised {
    type Error = reqwest_mcp::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth: Option<String>,
        headers: Headers,
    ) -> Result<StreamableHttpPostResponse, Error> {
        self.with_token(|t| {
            self.inner.post_message(
                uri.clone(),
                message.clone(),
                session_id.clone(),
                Some(t),
                headers.clone(),
            )
        })
        .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth: Option<String>,
        headers: Headers,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, Error> {
        self.with_token(|t| {
            self.inner.post_message_with_max_sse_event_size(
                uri.clone(),
                message.clone(),
                session_id.clone(),
                Some(t),
                headers.clone(),
                max_sse_event_size,
            )
        })
        .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        _auth: Option<String>,
        headers: Headers,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, Error> {
        self.with_token(|t| {
            self.inner.post_message_with_response_limits(
                uri.clone(),
                message.clone(),
                session_id.clone(),
                Some(t),
                headers.clone(),
                limits,
            )
        })
        .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        _auth: Option<String>,
        headers: Headers,
    ) -> Result<(), Error> {
        self.with_token(|t| {
            self.inner
                .delete_session(uri.clone(), session_id.clone(), Some(t), headers.clone())
        })
        .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth: Option<String>,
        headers: Headers,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, Error> {
        self.with_token(|t| {
            self.inner.get_stream(
                uri.clone(),
                session_id.clone(),
                last_event_id.clone(),
                Some(t),
                headers.clone(),
            )
        })
        .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        _auth: Option<String>,
        headers: Headers,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, Error> {
        self.with_token(|t| {
            self.inner.get_stream_with_max_sse_event_size(
                uri.clone(),
                session_id.clone(),
                last_event_id.clone(),
                Some(t),
                headers.clone(),
                max_sse_event_size,
            )
        })
        .await
    }
}
