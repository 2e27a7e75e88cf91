//! Reading a chat completion's event stream as the gateway passes it on: whole `data:`
//! payloads, however the upstream's bytes were cut.

#[derive(Default)]
pub struct DataLines {
    /// Bytes of an event not yet complete.
    pending: Vec<u8>,
}

impl DataLines {
    /// The `data:` payloads of the events `bytes` completes (`[DONE]` included), in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let raw: Vec<u8> = self.pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&raw);
            out.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.trim().to_string()),
            );
        }
        out
    }
}

/// One server-sent event.
pub fn event(kind: &str, data: &serde_json::Value) -> String {
    format!("event: {kind}\ndata: {data}\n\n")
}

/// An HTTP response streaming `events` as server-sent events.
pub fn response<S>(events: S) -> axum::response::Response
where
    S: futures::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + 'static,
{
    use axum::http::header;
    use axum::response::IntoResponse;
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        axum::body::Body::from_stream(events),
    )
        .into_response()
}
