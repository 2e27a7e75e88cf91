//! Memories: versions never overwritten, superseding in one commit, following by change
//! time, and erasure that leaves ids only.

use crate::support::*;
use steward_store::{
    CurationRecord, EntityMention, MemoryErase, MemoryGraph, MemoryImport, MemoryRecord,
    MemoryVector,
};

on_both_backends!(
    a_superseded_memory_is_closed_and_linked_in_the_same_commit,
    only_a_current_version_of_the_same_scope_can_be_superseded,
    changes_are_followed_in_order_of_their_time,
    erasure_removes_every_version_and_leaves_ids_only,
    an_expired_version_is_erased_alone,
    an_import_is_all_or_nothing_and_keeps_what_it_is_given,
    embeddings_belong_to_versions_that_exist_and_go_with_them,
    entities_resolve_by_any_name_and_go_when_nothing_names_them,
    a_failed_curation_waits_before_it_is_taken_again,
);

fn mem(id: &str, scope: &str, text: &str, at: i64) -> MemoryRecord {
    MemoryRecord {
        id: id.into(),
        lineage: id.into(),
        scope: scope.into(),
        text: text.into(),
        subject: None,
        tags: r#"["a"]"#.into(),
        metadata: r#"{"k":"v"}"#.into(),
        source: Some(r#"{"message":"m1"}"#.into()),
        written_by: "agent:x".into(),
        valid_from: at,
        valid_to: None,
        created_at: at,
        expired_at: None,
        superseded_by: None,
        expires_at: None,
        updated_at: at,
    }
}

fn next(id: &str, of: &MemoryRecord, text: &str, at: i64) -> MemoryRecord {
    MemoryRecord {
        lineage: of.lineage.clone(),
        ..mem(id, &of.scope, text, at)
    }
}

async fn a_superseded_memory_is_closed_and_linked_in_the_same_commit(s: &dyn Store) {
    let v1 = mem("m1", "user:alice", "lives in Paris", 100);
    assert_eq!(s.add_memory(&v1, None, None).await.unwrap(), None);
    assert_eq!(
        s.memory("m1").await.unwrap().unwrap(),
        v1,
        "read back as written"
    );
    let v2 = next("m2", &v1, "lives in Lisbon", 200);
    let head = s.audit_head().await.unwrap().0;
    let closed = s
        .add_memory(
            &v2,
            Some("m1"),
            Some((200, r#"{"event":"syscall"}"#.into())),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed.expired_at, Some(200));
    assert_eq!(
        closed.valid_to,
        Some(200),
        "true until the new version became true"
    );
    assert_eq!(closed.superseded_by.as_deref(), Some("m2"));
    assert_eq!(closed.updated_at, 200, "followers see the change");
    assert_eq!(
        s.audit_head().await.unwrap().0,
        head + 1,
        "the audit record in the commit"
    );
    let history = s.memory_versions("m1").await.unwrap();
    assert_eq!(
        history.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["m1", "m2"]
    );
    assert_eq!(history[0].text, "lives in Paris", "nothing overwritten");

    // A version already closed earlier in the world keeps its own end.
    let mut w1 = mem("w1", "org", "was CEO", 10);
    w1.valid_to = Some(50);
    s.add_memory(&w1, None, None).await.unwrap();
    let closed = s
        .add_memory(&next("w2", &w1, "is chair", 300), Some("w1"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed.valid_to, Some(50));
}

async fn only_a_current_version_of_the_same_scope_can_be_superseded(s: &dyn Store) {
    let v1 = mem("m1", "user:alice", "one", 1);
    s.add_memory(&v1, None, None).await.unwrap();
    s.add_memory(&next("m2", &v1, "two", 2), Some("m1"), None)
        .await
        .unwrap();
    let head = s.audit_head().await.unwrap().0;
    let e = s
        .add_memory(
            &next("m3", &v1, "three", 3),
            Some("m1"),
            Some((3, "{}".into())),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, steward_store::Error::Conflict(_)), "{e}");
    assert!(
        s.memory("m3").await.unwrap().is_none(),
        "nothing half-written"
    );
    assert_eq!(s.audit_head().await.unwrap().0, head, "nor audited");

    let other = MemoryRecord {
        scope: "user:bob".into(),
        ..next("m4", &v1, "four", 4)
    };
    assert!(s.add_memory(&other, Some("m2"), None).await.is_err());
    assert!(s.memory("m4").await.unwrap().is_none());
    assert!(s
        .add_memory(&next("m5", &v1, "five", 5), Some("nope"), None)
        .await
        .is_err());
    assert_eq!(s.memory("m2").await.unwrap().unwrap().expired_at, None);
}

async fn changes_are_followed_in_order_of_their_time(s: &dyn Store) {
    for i in 0..25 {
        s.add_memory(
            &mem(&format!("m{i:02}"), "org", "x", 100 + i / 10),
            None,
            None,
        )
        .await
        .unwrap();
    }
    let mut seen = Vec::new();
    let (mut since, mut after) = (0, String::new());
    loop {
        let page = s.memories_changed(since, &after, 7).await.unwrap();
        if page.is_empty() {
            break;
        }
        let last = page.last().unwrap();
        (since, after) = (last.updated_at, last.id.clone());
        seen.extend(page.into_iter().map(|m| m.id));
    }
    let want: Vec<String> = (0..25).map(|i| format!("m{i:02}")).collect();
    assert_eq!(
        seen, want,
        "every version once, in (time, id) order, across pages"
    );
    assert!(s.memories_changed(101, "m19", 100).await.unwrap().len() == 5);
}

async fn erasure_removes_every_version_and_leaves_ids_only(s: &dyn Store) {
    let v1 = mem("a1", "user:alice", "alice secret one", 1);
    s.add_memory(&v1, None, None).await.unwrap();
    s.add_memory(&next("a2", &v1, "alice secret two", 2), Some("a1"), None)
        .await
        .unwrap();
    let mut about = mem("b1", "user:alice", "about carol", 3);
    about.subject = Some("carol".into());
    s.add_memory(&about, None, None).await.unwrap();
    s.add_memory(&mem("c1", "user:bob", "bob's", 4), None, None)
        .await
        .unwrap();

    // By id of any version: the whole fact goes, in its scope only.
    let none = s
        .erase_memories(
            &MemoryErase::Ids {
                scope: "user:bob".into(),
                ids: vec!["a2".into()],
            },
            10,
            None,
        )
        .await
        .unwrap();
    assert!(
        none.memories.is_empty(),
        "an id of another scope erases nothing"
    );
    let head = s.audit_head().await.unwrap().0;
    let mut gone = s
        .erase_memories(
            &MemoryErase::Ids {
                scope: "user:alice".into(),
                ids: vec!["a2".into()],
            },
            10,
            Some((10, r#"{"ids":["a1","a2"]}"#.into())),
        )
        .await
        .unwrap()
        .memories;
    gone.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(
        gone.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["a1", "a2"]
    );
    assert!(gone
        .iter()
        .all(|e| e.lineage == "a1" && e.scope == "user:alice"));
    assert_eq!(s.audit_head().await.unwrap().0, head + 1);
    assert!(s.memory("a1").await.unwrap().is_none());
    assert!(
        s.memory_versions("a1").await.unwrap().is_empty(),
        "history too"
    );
    let tomb = s.memory_erasures(0).await.unwrap();
    assert_eq!(tomb, [("a1".to_string(), 10), ("a2".to_string(), 10)]);

    let by_subject = s
        .erase_memories(
            &MemoryErase::Subject {
                scope: "user:alice".into(),
                subject: "carol".into(),
            },
            11,
            None,
        )
        .await
        .unwrap();
    assert_eq!(by_subject.memories.len(), 1);
    let scope = s
        .erase_memories(&MemoryErase::Scope("user:bob".into()), 12, None)
        .await
        .unwrap();
    assert_eq!(scope.memories.len(), 1);
    assert!(s.memories_changed(0, "", 100).await.unwrap().is_empty());
    assert_eq!(s.memory_erasures(12).await.unwrap().len(), 1);
}

async fn an_expired_version_is_erased_alone(s: &dyn Store) {
    let mut short = mem("s1", "org", "short lived", 1);
    short.expires_at = Some(100);
    s.add_memory(&short, None, None).await.unwrap();
    s.add_memory(&mem("k1", "org", "kept", 1), None, None)
        .await
        .unwrap();
    assert!(s
        .erase_memories(&MemoryErase::Expired, 99, None)
        .await
        .unwrap()
        .memories
        .is_empty());
    let gone = s
        .erase_memories(&MemoryErase::Expired, 100, None)
        .await
        .unwrap()
        .memories;
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].id, "s1");
    assert!(s.memory("k1").await.unwrap().is_some());
}

async fn an_import_is_all_or_nothing_and_keeps_what_it_is_given(s: &dyn Store) {
    let v1 = MemoryRecord {
        expired_at: Some(20),
        superseded_by: Some("i2".into()),
        valid_to: Some(20),
        ..mem("i1", "user:a", "first", 10)
    };
    let v2 = next("i2", &v1, "second", 20);
    let vector = |id: &str, model: &str| MemoryVector {
        id: id.into(),
        model: model.into(),
        vector: "AACAPw==".into(),
        updated_at: 30,
    };
    let head = s.audit_head().await.unwrap().0;
    assert_eq!(
        s.import_memories(
            &MemoryImport {
                versions: vec![v1.clone(), v2.clone()],
                // One for a version not in the import and not stored: it has nowhere to go.
                vectors: vec![vector("i1", "m1"), vector("nowhere", "m1")],
                ..MemoryImport::default()
            },
            Some((30, "{}".into()))
        )
        .await
        .unwrap(),
        (2, 0)
    );
    assert_eq!(
        s.memory_vectors(&["i1".into(), "i2".into(), "nowhere".into()])
            .await
            .unwrap(),
        [vector("i1", "m1")],
        "the embedding came in with its version, in the same commit"
    );
    assert_eq!(s.audit_head().await.unwrap().0, head + 1);
    assert_eq!(s.memory("i1").await.unwrap().unwrap(), v1, "kept as given");
    assert_eq!(
        s.scope_memories("user:a", (i64::MIN, ""), 10)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>(),
        ["i1", "i2"]
    );

    // Again, with a later change time: nothing new, nothing changed.
    let again = MemoryRecord {
        updated_at: 99,
        ..v2.clone()
    };
    assert_eq!(
        s.import_memories(
            &MemoryImport {
                versions: vec![again],
                vectors: vec![vector("i2", "m1")],
                ..MemoryImport::default()
            },
            None
        )
        .await
        .unwrap(),
        (0, 1)
    );
    // A version embedded already keeps its own embedding.
    assert_eq!(
        s.import_memories(
            &MemoryImport {
                versions: vec![v1.clone()],
                vectors: vec![vector("i1", "m2")],
                ..MemoryImport::default()
            },
            None
        )
        .await
        .unwrap(),
        (0, 1)
    );
    assert_eq!(
        s.memory_vectors(&["i1".into()]).await.unwrap()[0].model,
        "m1"
    );

    // A new version beside one that differs from what is stored: neither goes in.
    let fresh = mem("i3", "user:a", "third", 40);
    let altered = MemoryRecord {
        text: "changed".into(),
        ..v1.clone()
    };
    let head = s.audit_head().await.unwrap().0;
    let e = s
        .import_memories(
            &MemoryImport {
                versions: vec![fresh, altered],
                vectors: vec![vector("i3", "m1")],
                ..MemoryImport::default()
            },
            Some((50, "{}".into())),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, steward_store::Error::Conflict(_)), "{e}");
    assert!(
        s.memory("i3").await.unwrap().is_none(),
        "nothing half-written"
    );
    assert!(s.memory_vectors(&["i3".into()]).await.unwrap().is_empty());
    assert_eq!(s.memory("i1").await.unwrap().unwrap().text, "first");
    assert_eq!(s.audit_head().await.unwrap().0, head);
}

async fn embeddings_belong_to_versions_that_exist_and_go_with_them(s: &dyn Store) {
    s.add_memory(&mem("e1", "org", "one", 1), None, None)
        .await
        .unwrap();
    s.add_memory(&mem("e2", "org", "two", 2), None, None)
        .await
        .unwrap();
    let backlog = |model: &'static str| async move {
        s.memories_to_embed(model, (i64::MIN, ""), 10)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(backlog("m1").await, ["e1", "e2"], "oldest first");
    let rest = s.memories_to_embed("m1", (1, "e1"), 10).await.unwrap();
    assert_eq!(rest.len(), 1, "paged after the last one read");
    assert_eq!(rest[0].id, "e2");
    let v = |id: &str, model: &str, at: i64| MemoryVector {
        id: id.into(),
        model: model.into(),
        vector: "AACAPw==".into(),
        updated_at: at,
    };
    assert_eq!(
        s.put_memory_vectors(&[v("e1", "m1", 5), v("gone", "m1", 5)])
            .await
            .unwrap(),
        1,
        "no embedding for a version that does not exist"
    );
    assert_eq!(backlog("m1").await, ["e2"]);
    assert_eq!(
        backlog("m2").await,
        ["e1", "e2"],
        "another model's embedding does not count"
    );
    s.put_memory_vectors(&[v("e1", "m2", 6)]).await.unwrap();
    let changed = s.memory_vectors_changed(0, "", 10).await.unwrap();
    assert_eq!(changed, [v("e1", "m2", 6)], "replaced, one per version");
    s.erase_memories(
        &MemoryErase::Ids {
            scope: "org".into(),
            ids: vec!["e1".into()],
        },
        7,
        None,
    )
    .await
    .unwrap();
    assert!(s
        .memory_vectors_changed(0, "", 10)
        .await
        .unwrap()
        .is_empty());
}

fn entity(id: &str, name: &str, aliases: &[&str]) -> EntityMention {
    EntityMention {
        id: id.into(),
        name: name.into(),
        kind: Some("thing".into()),
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
    }
}

async fn entities_resolve_by_any_name_and_go_when_nothing_names_them(s: &dyn Store) {
    let graph = |entities: Vec<EntityMention>, relations: &[(usize, &str, usize)]| MemoryGraph {
        entities,
        relations: relations
            .iter()
            .map(|(a, r, b)| (*a, r.to_string(), *b))
            .collect(),
    };
    let (_, named) = s
        .add_memory_graph(
            &mem("g1", "user:a", "Alice works at Acme", 1),
            None,
            &graph(
                vec![
                    entity("e_alice", "Alice", &["Al"]),
                    entity("e_acme", "Acme", &[]),
                ],
                &[(0, "works_at", 1)],
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        named.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["e_alice", "e_acme"]
    );
    // Another spelling of a name, or an alias, is the same entity; its new names are learnt.
    let (_, named) = s
        .add_memory_graph(
            &mem("g2", "user:a", "She moved to Denver", 2),
            None,
            &graph(
                vec![
                    entity("e_new", "  ALICE ", &["Alice Smith"]),
                    entity("e_denver", "Denver", &[]),
                ],
                &[(0, "lives_in", 1)],
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(named[0].id, "e_alice");
    assert_eq!(
        named[0].name, "Alice",
        "the first name stays the entity's name"
    );
    s.add_memory_graph(
        &mem("g3", "user:a", "Acme's office is in Denver", 3),
        None,
        &graph(
            vec![entity("x1", "acme", &[]), entity("x2", "denver", &[])],
            &[(0, "located_in", 1)],
        ),
        None,
    )
    .await
    .unwrap();
    // The same name in another scope is another entity.
    let (_, other) = s
        .add_memory_graph(
            &mem("g4", "user:b", "Alice is a cat", 4),
            None,
            &graph(vec![entity("e_cat", "Alice", &[])], &[]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(other[0].id, "e_cat");
    let names = s.memory_entity_names(&["e_alice".into()]).await.unwrap();
    assert_eq!(
        names.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(),
        ["Al", "Alice", "Alice Smith"]
    );

    let edges = |g: &steward_store::GraphAround| {
        g.relations
            .iter()
            .map(|r| (r.memory.clone(), r.relation.clone()))
            .collect::<Vec<_>>()
    };
    let scopes = ["user:a".to_string()];
    let one = s
        .memory_graph_around(&scopes, &["al".into()], 1, 100)
        .await
        .unwrap();
    assert_eq!(one.seeds.len(), 1);
    assert_eq!(one.seeds[0].id, "e_alice");
    let mut mentions: Vec<&str> = one.mentions.iter().map(|(m, _)| m.as_str()).collect();
    mentions.sort_unstable();
    assert_eq!(mentions, ["g1", "g2"]);
    assert_eq!(
        edges(&one),
        [
            ("g1".to_string(), "works_at".to_string()),
            ("g2".into(), "lives_in".into())
        ]
    );
    let two = s
        .memory_graph_around(&scopes, &["alice".into()], 2, 100)
        .await
        .unwrap();
    assert_eq!(edges(&two).len(), 3, "Acme and Denver lead to g3");
    assert!(s
        .memory_graph_around(&["user:c".into()], &["alice".into()], 2, 100)
        .await
        .unwrap()
        .seeds
        .is_empty());
    let (named, stated) = s.memory_graph_of(&["g1".into()]).await.unwrap();
    assert_eq!(named.len(), 2);
    assert_eq!(stated.len(), 1);
    assert_eq!(
        (stated[0].subject.as_str(), stated[0].object.as_str()),
        ("e_alice", "e_acme")
    );

    // Erasing by an alias erases every fact naming the entity, then the entity and its names.
    let report = s
        .erase_memories(
            &MemoryErase::Entity {
                scope: "user:a".into(),
                entity: "AL".into(),
            },
            10,
            None,
        )
        .await
        .unwrap();
    let mut gone: Vec<&str> = report.memories.iter().map(|m| m.id.as_str()).collect();
    gone.sort_unstable();
    assert_eq!(gone, ["g1", "g2"]);
    assert_eq!((report.relations, report.mentions), (2, 4));
    assert_eq!(
        report.entities,
        ["e_alice"],
        "Acme and Denver are still named by g3"
    );
    assert!(s
        .memory_entity_names(&["e_alice".into()])
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .memory_graph_around(&scopes, &["alice smith".into()], 2, 100)
        .await
        .unwrap()
        .seeds
        .is_empty());
    assert_eq!(
        s.memory_graph_around(&["user:b".into()], &["alice".into()], 1, 100)
            .await
            .unwrap()
            .seeds[0]
            .id,
        "e_cat",
        "the other scope's Alice is untouched"
    );
    let report = s
        .erase_memories(
            &MemoryErase::Ids {
                scope: "user:a".into(),
                ids: vec!["g3".into()],
            },
            11,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        report.entities,
        ["e_acme", "e_denver"],
        "no orphans are left"
    );

    // A relation naming an entity the memory does not: nothing of it is written.
    let e = s
        .add_memory_graph(
            &mem("g5", "user:a", "broken", 12),
            None,
            &graph(vec![entity("e_x", "X", &[])], &[(0, "knows", 3)]),
            None,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("knows"), "{e}");
    assert!(s.memory("g5").await.unwrap().is_none());
    assert!(s
        .memory_graph_around(&scopes, &["x".into()], 1, 100)
        .await
        .unwrap()
        .seeds
        .is_empty());
}

/// A curation whose try failed goes back in the queue with why, and is not taken again before
/// its pause is over; then it is, counting the try. One that died running is taken once its
/// lease runs out.
async fn a_failed_curation_waits_before_it_is_taken_again(s: &dyn Store) {
    let c = CurationRecord {
        id: "cur_1".into(),
        scope: "user:jon".into(),
        requested_by: "agent:x".into(),
        input: r#"{"messages":[]}"#.into(),
        state: "queued".into(),
        attempts: 0,
        lease_until: 0,
        prompt: "memory-curate.v1".into(),
        model: "m".into(),
        reply: None,
        cost_nanos: 0,
        result: None,
        error: None,
        created_at: 1_000,
        updated_at: 1_000,
    };
    s.add_curation(&c, None).await.unwrap();
    let taken = s.claim_curation(2_000, 12_000).await.unwrap().unwrap();
    assert_eq!((taken.state.as_str(), taken.attempts), ("running", 1));
    assert!(
        s.claim_curation(3_000, 13_000).await.unwrap().is_none(),
        "leased"
    );

    s.requeue_curation("cur_1", "m (try 1): upstream 500", 5_000, 3_000)
        .await
        .unwrap();
    let waiting = s.curation("cur_1").await.unwrap().unwrap();
    assert_eq!(waiting.state, "queued");
    assert_eq!(waiting.error.as_deref(), Some("m (try 1): upstream 500"));
    assert!(
        s.claim_curation(4_999, 14_999).await.unwrap().is_none(),
        "not before its pause is over"
    );
    let again = s.claim_curation(5_000, 15_000).await.unwrap().unwrap();
    assert_eq!((again.state.as_str(), again.attempts), ("running", 2));

    // Its node died: taken over once the lease has run out, not before.
    assert!(s.claim_curation(14_999, 24_999).await.unwrap().is_none());
    let over = s.claim_curation(15_001, 25_001).await.unwrap().unwrap();
    assert_eq!(over.attempts, 3);
    // A requeue of a request no longer running (ended meanwhile) changes nothing.
    s.end_curation("cur_1", "done", Some("{}"), None, 16_000)
        .await
        .unwrap();
    s.requeue_curation("cur_1", "late", 17_000, 16_500)
        .await
        .unwrap();
    assert_eq!(s.curation("cur_1").await.unwrap().unwrap().state, "done");
}
