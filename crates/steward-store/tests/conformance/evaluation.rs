//! Scores and the claims nodes take before paying for one.

use crate::support::*;

on_both_backends!(one_node_at_a_time_claims_a_score_and_none_after_it_is_kept);

async fn one_node_at_a_time_claims_a_score_and_none_after_it_is_kept(s: &dyn Store) {
    let claim = |node: &'static str, now: i64| async move {
        s.claim_score("run-1", "judge", node, now, now + 100)
            .await
            .unwrap()
    };
    assert!(claim("a", 0).await, "the first claim");
    assert!(
        !claim("b", 50).await,
        "another node's is held until it runs out"
    );
    assert!(claim("a", 60).await, "a node renews its own");
    assert!(claim("b", 160).await, "an expired claim is taken over");
    assert!(!claim("a", 170).await);
    assert!(
        s.claim_score("run-1", "other", "a", 170, 270)
            .await
            .unwrap(),
        "claims are per evaluator"
    );

    let score = ScoreRecord {
        run_id: "run-1".into(),
        evaluator: "judge".into(),
        sampled: 1,
        score: Some(1.0),
        passed: Some(1),
        reason: None,
        cost_nanos: 5,
        agent: "clerk".into(),
        at: 200,
    };
    assert!(s.put_score(&score).await.unwrap());
    assert!(
        !s.put_score(&score).await.unwrap(),
        "one score per run and evaluator"
    );
    for (node, now) in [("b", 210), ("a", 10_000)] {
        assert!(
            !claim(node, now).await,
            "scored: nobody claims it again ({node} at {now})"
        );
    }
}
