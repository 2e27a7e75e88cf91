//! Every change made through the management API leaves an audit record: who (the admin, or the
//! agent whose key a task worker used), what (the method and the route), on what (the path), and
//! how it ended (the status). Reads are not recorded, nor a task lease's heartbeat (it renews,
//! it changes nothing); request bodies never are (a secret's value travels in one). Routes whose
//! handlers record richer entries of their own — policy updates with their decision, sandbox
//! actions with their outcome, memory writes and erasures in their own commit — are left to
//! them.

use axum::extract::{MatchedPath, OriginalUri, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use steward_engine::Engine;

use crate::caller::Caller;

/// Routes that audit themselves.
const SELF_AUDITED: [&str; 3] = ["/api/v1/policies", "/api/v1/sandboxes", "/api/v1/memories"];

pub async fn audit_changes(State(engine): State<Engine>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    // The path as called (the URI a nested router sees has lost its prefix).
    let path = req
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| req.uri().path().to_string(), |u| u.path().to_string());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| path.clone(), |m| m.as_str().to_string());
    if SELF_AUDITED.iter().any(|p| route.starts_with(p)) || route.ends_with("/heartbeat") {
        return next.run(req).await;
    }
    let (principal, chain) = match req.extensions().get::<Caller>() {
        Some(Caller::Agent(p)) => (format!("agent:{}", p.agent), p.chain.clone()),
        _ => {
            let admin = format!("admin:{}", steward_gov::policy::ADMIN);
            (admin.clone(), vec![admin])
        }
    };
    let resp = next.run(req).await;
    let change = steward_engine::Change {
        principal,
        chain,
        action: format!("{method} {route}"),
        resource: path,
        status: resp.status().as_u16(),
    };
    // The change has happened (or was refused) either way: a record that cannot be written is
    // logged loudly, and the answer stands.
    if let Err(e) = engine.audit().change(change).await {
        tracing::error!(error = %e, "a management API change could not be audited");
    }
    resp
}
