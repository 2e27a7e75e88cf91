//! Trace spans: kept once however often they are sent, read by trace in start order, listed by
//! session and end user, swept by age in bounded batches.

use crate::support::*;
use steward_store::{SpanRecord, TraceFilter};

on_both_backends!(
    spans_are_kept_once_and_read_by_trace,
    old_spans_are_swept_in_batches,
    traces_are_listed_by_session_and_end_user,
);

fn span(trace: &str, id: &str, parent: Option<&str>, start: i64, received: i64) -> SpanRecord {
    SpanRecord {
        trace_id: trace.into(),
        span_id: id.into(),
        parent_span_id: parent.map(str::to_string),
        name: format!("span {id}"),
        kind: "internal".into(),
        service: Some("svc".into()),
        sent_by: "agent:a".into(),
        start_ns: start,
        end_ns: start + 10,
        status: "ok".into(),
        status_message: None,
        attributes: r#"{"gen_ai.operation.name":"chat"}"#.into(),
        events: "[]".into(),
        resource: r#"{"service.name":"svc"}"#.into(),
        received_at: received,
        session_id: None,
        end_user: None,
    }
}

async fn spans_are_kept_once_and_read_by_trace(s: &dyn Store) {
    let t = "0af7651916cd43dd8448eb211c80319c";
    let batch = vec![
        span(t, "b7ad6b7169203331", None, 100, 1),
        span(t, "00f067aa0ba902b7", Some("b7ad6b7169203331"), 150, 1),
        span(t, "00f067aa0ba902b8", Some("b7ad6b7169203331"), 120, 1),
        span(
            "ffffffffffffffffffffffffffffffff",
            "0000000000000001",
            None,
            1,
            1,
        ),
    ];
    assert_eq!(s.put_spans(&batch).await.unwrap(), 4);
    // An exporter retrying sends the same spans again, with one new one.
    let mut again = batch.clone();
    again.push(span(t, "00f067aa0ba902b9", None, 200, 2));
    assert_eq!(s.put_spans(&again).await.unwrap(), 1);
    let got = s.trace_spans(t).await.unwrap();
    let ids: Vec<&str> = got.iter().map(|x| x.span_id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "b7ad6b7169203331",
            "00f067aa0ba902b8",
            "00f067aa0ba902b7",
            "00f067aa0ba902b9"
        ]
    );
    assert_eq!(got[0], batch[0], "kept as given");
    assert!(s.trace_spans("nope").await.unwrap().is_empty());
    // More than one statement's worth in one call.
    let many: Vec<SpanRecord> = (0..1_234)
        .map(|i| span("1111", &format!("{i:016x}"), None, i, 3))
        .collect();
    assert_eq!(s.put_spans(&many).await.unwrap(), 1_234);
    assert_eq!(s.trace_spans("1111").await.unwrap().len(), 1_234);
}

async fn old_spans_are_swept_in_batches(s: &dyn Store) {
    let spans: Vec<SpanRecord> = (0..25)
        .map(|i| {
            span(
                "2222",
                &format!("{i:016x}"),
                None,
                i,
                if i < 20 { 10 } else { 50 },
            )
        })
        .collect();
    s.put_spans(&spans).await.unwrap();
    assert_eq!(s.sweep_spans(50, 8).await.unwrap(), 8);
    assert_eq!(s.sweep_spans(50, 8).await.unwrap(), 8);
    assert_eq!(s.sweep_spans(50, 8).await.unwrap(), 4);
    assert_eq!(s.sweep_spans(50, 8).await.unwrap(), 0);
    let left = s.trace_spans("2222").await.unwrap();
    assert_eq!(left.len(), 5, "the newer ones stay");
    assert!(left.iter().all(|x| x.received_at == 50));
}

async fn traces_are_listed_by_session_and_end_user(s: &dyn Store) {
    let with =
        |trace: &str, id: &str, start: i64, session: Option<&str>, user: Option<&str>| SpanRecord {
            session_id: session.map(str::to_string),
            end_user: user.map(str::to_string),
            ..span(trace, id, None, start, 1)
        };
    s.put_spans(&[
        with("t1", "01", 100, Some("s1"), Some("ana")),
        with("t1", "02", 150, None, None),
        with("t2", "01", 300, Some("s1"), Some("bo")),
        with("t3", "01", 200, Some("s2"), Some("ana")),
    ])
    .await
    .unwrap();
    let list = |session: Option<&str>, user: Option<&str>, limit: i64| {
        let f = TraceFilter {
            session_id: session.map(str::to_string),
            end_user: user.map(str::to_string),
            limit,
        };
        async move { s.list_traces(&f).await.unwrap() }
    };
    let s1 = list(Some("s1"), None, 10).await;
    let ids: Vec<&str> = s1.iter().map(|t| t.trace_id.as_str()).collect();
    assert_eq!(ids, ["t2", "t1"], "the session's traces, latest first");
    let t1 = &s1[1];
    assert_eq!(
        (t1.start_ns, t1.end_ns, t1.spans),
        (100, 160, 2),
        "the whole trace"
    );
    assert_eq!(t1.session_id.as_deref(), Some("s1"));
    let ana = list(None, Some("ana"), 10).await;
    let ids: Vec<&str> = ana.iter().map(|t| t.trace_id.as_str()).collect();
    assert_eq!(ids, ["t3", "t1"]);
    assert_eq!(list(Some("s1"), Some("ana"), 10).await.len(), 1);
    assert_eq!(list(None, None, 2).await.len(), 2, "limited");
    assert!(list(Some("nope"), None, 10).await.is_empty());
}
