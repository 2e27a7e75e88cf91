//! The Responses API's stored responses: kept in the scope of the caller that made them (its
//! agent's owner, or the agent when it has none), and read or deleted only from that scope.

use crate::*;
use steward_store::StoredResponse;

/// `Engine::responses()`.
pub struct Responses<'a>(pub(crate) &'a Engine);

/// What is kept of a response: its object, the input items it was given and the conversation
/// it ends, each as JSON.
pub struct NewResponse {
    pub id: String,
    pub body: String,
    pub input_items: String,
    pub conversation: String,
}

/// Whose responses a caller sees: its owner's, or its agent's when it has no owner.
fn scope(who: &Principal) -> String {
    match &who.owner {
        Some(o) => format!("owner:{o}"),
        None => format!("agent:{}", who.agent),
    }
}

impl Responses<'_> {
    /// Keeps `r` in `who`'s scope.
    pub async fn put(&self, who: &Principal, r: NewResponse) -> steward_store::Result<()> {
        let stored = StoredResponse {
            id: r.id,
            scope: scope(who),
            body: r.body,
            input_items: r.input_items,
            conversation: r.conversation,
            created_at: self.0.now_ms(),
        };
        self.0.store().put_response(&stored).await
    }

    /// Response `id`, if `who` may read it.
    pub async fn get(
        &self,
        who: &Principal,
        id: &str,
    ) -> steward_store::Result<Option<StoredResponse>> {
        self.0.store().get_response(id, &scope(who)).await
    }

    /// Deletes response `id` if `who` may; whether there was one.
    pub async fn delete(&self, who: &Principal, id: &str) -> steward_store::Result<bool> {
        self.0.store().delete_response(id, &scope(who)).await
    }
}
