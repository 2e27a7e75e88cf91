//! What every management operation can answer besides its own responses, added to the
//! document so that it is true for generated clients and fuzzers: a malformed request (400),
//! a missing admin token (401), a request that took too long (408), a store that cannot serve
//! (503), a server fault (500); a body too large (413) where there is a body, an unknown id
//! (404) where the path names one, and for sandboxes a state that does not allow it (409) or
//! no free slot (429). All in the API's error format.

use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};
use utoipa::Modify;

pub struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, doc: &mut OpenApi) {
        for (path, item) in doc.paths.paths.iter_mut() {
            if !path.starts_with("/api/") {
                continue;
            }
            let named = path.contains('{');
            let sandbox = path.starts_with("/api/v1/sandboxes");
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                add_common(op, named, sandbox);
            }
        }
    }
}

fn add_common(op: &mut Operation, named: bool, sandbox: bool) {
    let mut common = vec![
        (
            "400",
            "The request is malformed: the message says what to fix",
        ),
        (
            "401",
            "The admin token (or the agent's credential) is missing or wrong",
        ),
        (
            "408",
            "The request did not complete within server.request_timeout_ms",
        ),
        ("500", "A server fault; the server log has the details"),
        ("503", "The store cannot serve now; try again"),
    ];
    if op.request_body.is_some() {
        common.push(("413", "The body is larger than this endpoint takes"));
    }
    if named {
        common.push(("404", "Nothing by that name or id"));
    }
    if sandbox {
        common.push((
            "409",
            "The sandbox is not in a state to do this (paused, ended, busy)",
        ));
        common.push((
            "429",
            "Every sandbox slot is taken for longer than sandbox.queue_ms; try again",
        ));
    }
    for (status, description) in common {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| {
                RefOr::T(
                    ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorBody")))
                                .build(),
                        )
                        .build(),
                )
            });
    }
}
