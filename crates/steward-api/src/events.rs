//! `GET /api/v1/runs/{id}/events`: a run's journal as Server-Sent Events, live. Each entry is an
//! `entry` event (a `JournalItem`); when the run ends, or waits for a human, an `end` event
//! carries the `Run` and the stream closes.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::stream::{self, Stream, StreamExt};
use steward_engine::Engine;

use crate::error::ApiResult;
use crate::extract::ApiQuery;
use crate::routes::{check_id, JournalQuery};
use crate::wire::{JournalItem, Run};

/// How long a follower waits for a local journal append before reading again anyway (the run
/// may be driven by another node).
const REREAD: Duration = Duration::from_millis(250);

struct Follow {
    engine: Engine,
    id: String,
    /// The last (seq, phase) sent.
    cursor: Option<(i64, i64)>,
    done: bool,
}

#[utoipa::path(get, path = "/api/v1/runs/{id}/events", params(("id" = String, Path), JournalQuery),
    responses((status = 200, description = "text/event-stream of `entry` events (JournalItem) and a final `end` event (Run)"),
        (status = 404, body = crate::error::ErrorBody)))]
pub async fn run_events(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<JournalQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    check_id(&id)?;
    engine.runs().get(&id).await?;
    let start = Follow {
        engine,
        id,
        cursor: q.after.map(|s| (s, 1)),
        done: false,
    };
    let events = stream::unfold(start, |mut f| async move {
        if f.done {
            return None;
        }
        let batch = next_batch(&mut f).await;
        Some((stream::iter(batch.into_iter().map(Ok)), f))
    })
    .flatten();
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// Waits until there is something to send and returns it.
async fn next_batch(f: &mut Follow) -> Vec<Event> {
    let tick = f.engine.journal_tick();
    loop {
        let appended = tick.notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        // The state first: if it is final, the entries read after it are complete.
        let run = match f.engine.runs().get(&f.id).await {
            Ok(r) => r,
            Err(e) => {
                f.done = true;
                return vec![Event::default().event("error").data(e.to_string())];
            }
        };
        let after = f.cursor.map(|(seq, _)| seq - 1);
        let entries = match f.engine.runs().journal(&f.id, after, 1000).await {
            Ok(e) => e,
            Err(e) => {
                f.done = true;
                return vec![Event::default().event("error").data(e.to_string())];
            }
        };
        let mut out = Vec::new();
        let more = entries.len() == 1000;
        for e in entries {
            if f.cursor.is_some_and(|c| (e.seq, e.phase) <= c) {
                continue;
            }
            f.cursor = Some((e.seq, e.phase));
            let item = JournalItem::from(e);
            out.push(
                Event::default()
                    .event("entry")
                    .json_data(&item)
                    .unwrap_or_else(|_| Event::default().event("entry")),
            );
        }
        let finished =
            run.state.is_terminal() || run.wait_kind.as_deref() == Some(steward_store::WAIT_HUMAN);
        if finished && !more {
            f.done = true;
            let run = Run::from(run);
            out.push(
                Event::default()
                    .event("end")
                    .json_data(&run)
                    .unwrap_or_else(|_| Event::default().event("end")),
            );
        }
        if !out.is_empty() {
            return out;
        }
        let _ = tokio::time::timeout(REREAD, appended).await;
    }
}
