//! The memory service over a real store, on SQLite and PostgreSQL: read your own write,
//! history in both times, two nodes following each other, erasure that leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use serde_json::json;
use steward_memory::{
    Limits, Memory, MemoryError, Method, NewEntity, NewMemory, NewRelation, Query,
};
use steward_store::{MemoryErase, Store};
use steward_testkit::{Backend, FreshStore, ManualClock};

async fn open(store: &Arc<dyn Store>, clock: &Arc<ManualClock>) -> Memory {
    Memory::open(store.clone(), clock.clone(), Limits::default(), None)
        .await
        .unwrap()
}

fn new(scope: &str, text: &str) -> NewMemory {
    NewMemory {
        scope: scope.into(),
        text: text.into(),
        ..NewMemory::default()
    }
}

async fn add(m: &Memory, n: NewMemory) -> String {
    let p = m.prepare("admin", n).await.unwrap();
    m.commit(p, None).await.unwrap().record.id
}

fn query(text: &str, scope: &str) -> Query {
    Query {
        text: text.into(),
        scopes: vec![scope.into()],
        limit: 10,
        ..Query::default()
    }
}

fn texts(m: &Memory, q: &Query) -> Vec<String> {
    m.search_now(q)
        .unwrap()
        .hits
        .iter()
        .map(|h| h.record.text.clone())
        .collect()
}

macro_rules! on_both {
    ($($name:ident),*) => {
        mod sqlite { $( #[tokio::test] async fn $name() { super::$name(super::Backend::Sqlite).await } )* }
        mod postgres { $( #[tokio::test] async fn $name() { super::$name(super::Backend::Postgres).await } )* }
    };
}

on_both!(
    a_write_is_found_by_the_next_search_with_its_metadata_unchanged,
    a_correction_keeps_the_old_fact_in_history_and_out_of_current_results,
    a_second_node_follows_writes_and_erasures,
    bad_input_is_refused_and_nothing_is_written,
    a_time_to_live_ends_a_memory,
    a_scope_gives_its_memories_a_time_to_live,
    old_memories_fade_by_their_scope_half_life,
    the_graph_connects_questions_to_facts_that_share_no_words,
    erased_text_is_left_in_no_file_of_the_database
);

async fn a_write_is_found_by_the_next_search_with_its_metadata_unchanged(b: Backend) {
    let fresh = FreshStore::open(b).await;
    let clock = Arc::new(ManualClock::at(1_000));
    let m = open(&fresh.store, &clock).await;
    let metadata = json!({"source": "crm", "score": 0.75, "nested": {"list": [1, "two", null]}});
    let p = m
        .prepare(
            "agent:a",
            NewMemory {
                metadata: Some(metadata.clone()),
                tags: vec!["food".into()],
                source: Some(json!({"message": "msg_1"})),
                ..new("user:alice", "Alice is allergic to peanuts")
            },
        )
        .await
        .unwrap();
    let id = m.commit(p, None).await.unwrap().record.id;
    let found = m
        .search_now(&query("peanut allergy", "user:alice"))
        .unwrap();
    assert_eq!(
        found.hits.len(),
        1,
        "found in the same breath as it was written"
    );
    let hit = &found.hits[0];
    assert_eq!(hit.record.id, id);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&hit.record.metadata).unwrap(),
        metadata
    );
    assert_eq!(hit.record.written_by, "agent:a");
    assert!(hit.bm25.unwrap() > 0.0 && hit.score > 0.0);
    assert!(
        m.search_now(&query("peanut", "user:bob"))
            .unwrap()
            .hits
            .is_empty(),
        "another scope sees nothing"
    );

    // A fresh node rebuilds the same index from the rows.
    let again = open(&fresh.store, &clock).await;
    assert_eq!(texts(&again, &query("peanuts", "user:alice")).len(), 1);
}

async fn a_correction_keeps_the_old_fact_in_history_and_out_of_current_results(b: Backend) {
    let fresh = FreshStore::open(b).await;
    let clock = Arc::new(ManualClock::at(1_000));
    let m = open(&fresh.store, &clock).await;
    let paris = add(&m, new("user:alice", "Alice lives in Paris")).await;
    clock.set(5_000);
    let lisbon = add(
        &m,
        NewMemory {
            supersedes: Some(paris.clone()),
            source: Some(json!({"message": "I moved to Lisbon last month"})),
            valid_from: Some(4_000),
            ..new("user:alice", "Alice lives in Lisbon")
        },
    )
    .await;
    assert_eq!(
        texts(&m, &query("where does alice live", "user:alice")),
        ["Alice lives in Lisbon"]
    );
    let mut then = query("alice lives", "user:alice");
    then.known_at = Some(2_000);
    then.valid_at = Some(2_000);
    assert_eq!(
        texts(&m, &then),
        ["Alice lives in Paris"],
        "as known and true then"
    );

    let history = m.history(&lisbon).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].id, paris);
    assert_eq!(history[0].valid_to, Some(4_000));
    assert_eq!(history[0].expired_at, Some(5_000));
    assert_eq!(history[0].superseded_by.as_deref(), Some(lisbon.as_str()));
    assert_eq!(
        m.history(&paris).await.unwrap(),
        history,
        "from either version"
    );

    // Superseding an old version again is a conflict, and writes nothing.
    let e = m
        .prepare(
            "admin",
            NewMemory {
                supersedes: Some(paris.clone()),
                ..new("user:alice", "Alice lives in Rome")
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(e, MemoryError::Conflict(_)), "{e}");
    assert_eq!(m.history(&paris).await.unwrap().len(), 2);
}

async fn a_second_node_follows_writes_and_erasures(b: Backend) {
    let fresh = FreshStore::open(b).await;
    let clock = Arc::new(ManualClock::at(1_000));
    let one = open(&fresh.store, &clock).await;
    let two = open(&fresh.store, &clock).await;
    let id = add(&one, new("org", "the release is on friday")).await;
    assert!(texts(&two, &query("release", "org")).is_empty());
    two.follow_changes().await.unwrap();
    assert_eq!(texts(&two, &query("release", "org")).len(), 1);

    clock.advance(10);
    let moved = add(
        &one,
        NewMemory {
            supersedes: Some(id.clone()),
            ..new("org", "the release moved to monday")
        },
    )
    .await;
    two.follow_changes().await.unwrap();
    assert_eq!(
        texts(&two, &query("release", "org")),
        ["the release moved to monday"],
        "the closed version left current results on the follower too"
    );

    let report = one
        .erase(
            &MemoryErase::Ids {
                scope: "org".into(),
                ids: vec![moved],
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!((report.facts, report.rows), (1, 2));
    assert!(report.index_postings > 0);
    two.follow_changes().await.unwrap();
    let mut all = query("release", "org");
    all.include_history = true;
    assert!(
        texts(&two, &all).is_empty(),
        "gone from the follower, history too"
    );
    assert_eq!(two.indexed(), 0);
}

async fn bad_input_is_refused_and_nothing_is_written(b: Backend) {
    let fresh = FreshStore::open(b).await;
    let clock = Arc::new(ManualClock::at(1_000));
    let m = open(&fresh.store, &clock).await;
    let deep = (0..20).fold(json!(1), |v, _| json!([v]));
    let cases = [
        new("team:x", "t"),
        new("org", "   "),
        new("org", &"x".repeat(40_000)),
        NewMemory {
            metadata: Some(json!([1, 2])),
            ..new("org", "t")
        },
        NewMemory {
            metadata: Some(json!({ "deep": deep })),
            ..new("org", "t")
        },
        NewMemory {
            metadata: Some(json!({ "big": "y".repeat(20_000) })),
            ..new("org", "t")
        },
        NewMemory {
            tags: vec![String::new()],
            ..new("org", "t")
        },
        NewMemory {
            tags: (0..40).map(|i| i.to_string()).collect(),
            ..new("org", "t")
        },
        NewMemory {
            valid_from: Some(10),
            valid_to: Some(5),
            ..new("org", "t")
        },
        NewMemory {
            ttl_ms: Some(0),
            ..new("org", "t")
        },
        NewMemory {
            subject: Some("a\nb".into()),
            ..new("org", "t")
        },
        NewMemory {
            supersedes: Some("mem_none".into()),
            ..new("org", "t")
        },
    ];
    for c in cases {
        let e = m.prepare("admin", c.clone()).await.unwrap_err();
        assert!(
            matches!(e, MemoryError::BadRequest(_) | MemoryError::NotFound(_)),
            "{c:?}: {e}"
        );
    }
    let mut q = query("t", "org");
    q.limit = 1000;
    assert!(matches!(m.search_now(&q), Err(MemoryError::BadRequest(_))));
    assert!(fresh
        .store
        .memories_changed(0, "", 10)
        .await
        .unwrap()
        .is_empty());
}

async fn a_time_to_live_ends_a_memory(b: Backend) {
    let fresh = FreshStore::open(b).await;
    let clock = Arc::new(ManualClock::at(1_000));
    let m = open(&fresh.store, &clock).await;
    add(
        &m,
        NewMemory {
            ttl_ms: Some(500),
            ..new("run:r1", "scratch note about the build")
        },
    )
    .await;
    add(&m, new("run:r1", "keep the build logs")).await;
    assert_eq!(texts(&m, &query("build", "run:r1")).len(), 2);
    clock.set(1_500);
    assert_eq!(
        texts(&m, &query("build", "run:r1")),
        ["keep the build logs"]
    );
    assert_eq!(m.sweep_expired().await.unwrap(), 1);
    assert_eq!(
        fresh.store.memories_changed(0, "", 10).await.unwrap().len(),
        1
    );
}

/// `[memory.ttl_ms]`: a scope's memories live as long as its most specific pattern says when a
/// write sets no `ttl_ms`; a write's own wins; scopes no pattern matches keep theirs forever.
async fn a_scope_gives_its_memories_a_time_to_live(b: Backend) {
    let fresh = FreshStore::open(b).await;
    let clock = Arc::new(ManualClock::at(1_000));
    let limits = Limits::default()
        .with_scope_ttls([
            ("run:*".to_string(), 100),
            ("run:long*".to_string(), 10_000),
            ("collection:scratch".to_string(), 300),
        ])
        .unwrap();
    let m = Memory::open(fresh.store.clone(), clock.clone(), limits, None)
        .await
        .unwrap();
    let expiry = |id: String| {
        let m = &m;
        async move { m.get(&id).await.unwrap().expires_at }
    };
    assert_eq!(expiry(add(&m, new("run:r1", "a")).await).await, Some(1_100));
    assert_eq!(
        expiry(add(&m, new("run:longjob", "b")).await).await,
        Some(11_000),
        "the longest pattern"
    );
    assert_eq!(
        expiry(add(&m, new("collection:scratch", "c")).await).await,
        Some(1_300)
    );
    assert_eq!(
        expiry(add(&m, new("collection:scratchpad", "d")).await).await,
        None,
        "not a prefix pattern"
    );
    assert_eq!(expiry(add(&m, new("org", "e")).await).await, None);
    let own = NewMemory {
        ttl_ms: Some(5),
        ..new("run:r1", "f")
    };
    assert_eq!(
        expiry(add(&m, own).await).await,
        Some(1_005),
        "the write's own"
    );
    clock.set(1_400);
    assert_eq!(m.sweep_expired().await.unwrap(), 3);

    for (pattern, ms) in [
        ("*", 10),
        ("galaxy:x", 10),
        ("run:*x*", 10),
        ("org", 0),
        ("org", -5),
    ] {
        let e = Limits::default()
            .with_scope_ttls([(pattern.to_string(), ms)])
            .unwrap_err();
        assert!(
            e.to_string().contains("memory.ttl_ms"),
            "{pattern} {ms}: {e}"
        );
    }
}

/// `[memory.decay_half_life_ms]`: in a scope that fades, an old fact that matches best gives way
/// to a newer one that matches less well, its score halved for each half-life of age, and says
/// so in `decay`; it still comes back when nothing newer matches, and as it was at a time asked
/// (`valid_at`). A scope without a half-life ranks as before; a recency search is not reordered.
async fn old_memories_fade_by_their_scope_half_life(b: Backend) {
    let fresh = FreshStore::open(b).await;
    let clock = Arc::new(ManualClock::at(1_000));
    let limits = Limits::default()
        .with_scope_half_lives([("user:*".to_string(), 1_000)])
        .unwrap();
    let m = Memory::open(fresh.store.clone(), clock.clone(), limits, None)
        .await
        .unwrap();
    let old = "Jon lives in Denver, Jon lives downtown in Denver";
    let newer = "Jon lives in Austin now";
    for scope in ["user:jon", "collection:notes"] {
        clock.set(1_000);
        add(&m, new(scope, old)).await;
        clock.set(4_000);
        add(&m, new(scope, newer)).await;
    }
    clock.set(5_000);
    for method in [Method::FullText, Method::Hybrid] {
        let q = |scope: &str| Query {
            method,
            ..query("where does Jon live in Denver", scope)
        };
        assert_eq!(
            texts(&m, &q("collection:notes")),
            [old, newer],
            "{method:?}: no half-life, the better match first"
        );
        let faded = m.search_now(&q("user:jon")).unwrap().hits;
        assert_eq!(faded[0].record.text, newer, "{method:?}");
        assert_eq!(faded[0].decay, Some(0.5), "{method:?}: one half-life old");
        assert_eq!(faded[1].decay, Some(1.0 / 16.0), "{method:?}: four");
        // As it was at 2,000: only the old fact was true, one half-life old.
        let then = m
            .search_now(&Query {
                valid_at: Some(2_000),
                ..q("user:jon")
            })
            .unwrap()
            .hits;
        assert_eq!(then.len(), 1);
        assert_eq!(
            (then[0].record.text.as_str(), then[0].decay),
            (old, Some(0.5))
        );
    }
    assert_eq!(
        texts(&m, &query("Denver downtown", "user:jon")),
        [old],
        "nothing newer matches: the old fact still comes back"
    );
    let recent = Query {
        method: Method::Recency,
        ..query("", "user:jon")
    };
    assert_eq!(texts(&m, &recent), [newer, old]);
    assert!(m.search_now(&recent).unwrap().hits[0].decay.is_none());

    for (pattern, ms) in [("*", 10), ("galaxy:x", 10), ("org", 0)] {
        let e = Limits::default()
            .with_scope_half_lives([(pattern.to_string(), ms)])
            .unwrap_err();
        assert!(
            e.to_string().contains("memory.decay_half_life_ms"),
            "{pattern} {ms}: {e}"
        );
    }
}

/// Where a backend keeps its bytes, read as files: SQLite's database, log and shared memory;
/// PostgreSQL's data files of every table and index of the test's schema, their TOAST tables
/// and TOAST indexes included, read by the server itself (`pg_read_binary_file`) after a
/// checkpoint has written every page out.
async fn database_files(fresh: &FreshStore) -> Vec<(String, Vec<u8>)> {
    if fresh.url.starts_with("sqlite") {
        return std::fs::read_dir(fresh.dir.path())
            .unwrap()
            .filter_map(|e| {
                let p = e.unwrap().path();
                Some((p.display().to_string(), std::fs::read(&p).ok()?))
            })
            .collect();
    }
    let pool = sqlx::PgPool::connect(&fresh.url).await.unwrap();
    sqlx::raw_sql("CHECKPOINT").execute(&pool).await.unwrap();
    let paths: Vec<String> = sqlx::query_scalar(
        "WITH own AS (SELECT c.oid, c.reltoastrelid FROM pg_class c \
                      JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema()), \
              toast AS (SELECT reltoastrelid AS oid FROM own WHERE reltoastrelid <> 0), \
              toast_index AS (SELECT indexrelid AS oid FROM pg_index WHERE indrelid IN (SELECT oid FROM toast)), \
              rels AS (SELECT oid FROM own UNION SELECT oid FROM toast UNION SELECT oid FROM toast_index) \
         SELECT pg_relation_filepath(oid) FROM rels WHERE pg_relation_filepath(oid) IS NOT NULL",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(paths.len() > 20, "every relation of the schema: {paths:?}");
    let mut files = Vec::new();
    for p in paths {
        let bytes: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT pg_read_binary_file($1, 0, 67108864, true)")
                .bind(&p)
                .fetch_one(&pool)
                .await
                .unwrap();
        files.extend(bytes.map(|b| (p, b)));
    }
    pool.close().await;
    files
}

/// Erased text is nowhere in the database's files afterwards. SQLite: not in the database,
/// not in its write-ahead log, not in an index's pages. PostgreSQL: not in any table's or
/// index's data file, nor in TOAST (one text is long enough to be stored out of line).
async fn erased_text_is_left_in_no_file_of_the_database(b: Backend) {
    let fresh = FreshStore::open(b).await;
    let clock = Arc::new(ManualClock::at(1_000));
    let m = open(&fresh.store, &clock).await;
    let secret = "Quetzalcoatl-7731 is my bank PIN";
    // Hex does not compress, so PostgreSQL keeps this one out of line uncompressed.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let long: String = (0..3000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{:x}", x >> 60)
        })
        .collect();
    let mut ids = Vec::new();
    for i in 0..50 {
        let text = if i == 0 {
            format!("{secret} {long} {secret}")
        } else {
            format!("{secret} (note {i})")
        };
        ids.push(
            add(
                &m,
                NewMemory {
                    subject: Some("Quetzalcoatl-7731-subject".into()),
                    entities: vec![NewEntity {
                        name: "Quetzalcoatl-7731 Bank".into(),
                        kind: None,
                        aliases: vec!["Q7731 Savings".into()],
                    }],
                    ..new("user:carol", &text)
                },
            )
            .await,
        );
        add(&m, new("user:carol", &format!("an ordinary note {i}"))).await;
    }
    let holds = |files: &[(String, Vec<u8>)], needle: &str| -> Vec<String> {
        files
            .iter()
            .filter(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
            .map(|(p, _)| p.clone())
            .collect()
    };
    let before = database_files(&fresh).await;
    for needle in ["Quetzalcoatl-7731", "Q7731 Savings", &long[..64]] {
        assert!(
            !holds(&before, needle).is_empty(),
            "the check can see {needle:?} before"
        );
    }
    let report = m
        .erase(
            &MemoryErase::Subject {
                scope: "user:carol".into(),
                subject: "Quetzalcoatl-7731-subject".into(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(report.rows, 50);
    assert_eq!(
        report.entities.len(),
        1,
        "the bank no memory names any more"
    );
    assert!(report.files_scrubbed, "nothing kept the database busy");
    let after = database_files(&fresh).await;
    for needle in ["Quetzalcoatl-7731", "Q7731 Savings", &long[..64]] {
        assert_eq!(holds(&after, needle), Vec::<String>::new(), "{needle:?}");
    }
    assert!(
        !holds(&after, "an ordinary note 49").is_empty(),
        "the rest is kept"
    );
    assert_eq!(texts(&m, &query("ordinary", "user:carol")).len(), 10);
    assert!(texts(&m, &query("bank PIN", "user:carol")).is_empty());
}

/// An export imported into another store — SQLite into PostgreSQL and back — exports to the
/// same bytes, history, links, metadata and times included; importing it again changes
/// nothing; a malformed export or one that clashes with what is stored writes nothing.
#[tokio::test]
async fn an_export_round_trips_byte_for_byte_between_backends() {
    let lite = FreshStore::sqlite().await;
    let pg = FreshStore::postgres().await;
    let clock = Arc::new(ManualClock::at(1_000));
    let a = open(&lite.store, &clock).await;
    let b = open(&pg.store, &clock).await;
    let first = add(
        &a,
        NewMemory {
            subject: Some("erin".into()),
            tags: vec!["home".into(), "city".into()],
            metadata: Some(json!({"z": 1, "a": {"nested": [true, null, 2.5]}, "ünï": "cødé"})),
            source: Some(json!({"message": "msg_7", "run": "run_1"})),
            valid_to: Some(9_000),
            ttl_ms: Some(86_400_000),
            ..new("user:erin", "Erin lives in Quito")
        },
    )
    .await;
    clock.advance(5);
    add(
        &a,
        NewMemory {
            supersedes: Some(first),
            ..new("user:erin", "Erin lives in Lima")
        },
    )
    .await;
    add(&a, new("org", "The VPN rotates keys monthly")).await;
    let scopes = ["user:erin".to_string(), "org".to_string()];
    let exported = a.export(&scopes).await.unwrap();
    assert_eq!(exported.lines().count(), 4, "{exported}");
    assert!(exported.starts_with("{\"format\":\"steward-memory\",\"version\":1}\n"));

    let read = b.read_export(&exported).unwrap();
    assert_eq!(b.import(read, None).await.unwrap(), (3, 0));
    assert_eq!(b.export(&scopes).await.unwrap(), exported, "the same bytes");
    assert_eq!(
        texts(&b, &query("Lima", "user:erin")),
        ["Erin lives in Lima"]
    );
    let again = b.read_export(&exported).unwrap();
    assert_eq!(b.import(again, None).await.unwrap(), (0, 3), "idempotent");

    // Back the other way, into a third store: still the same bytes.
    let lite2 = FreshStore::sqlite().await;
    let c = open(&lite2.store, &clock).await;
    let read = c.read_export(&b.export(&scopes).await.unwrap()).unwrap();
    c.import(read, None).await.unwrap();
    assert_eq!(c.export(&scopes).await.unwrap(), exported);

    // Malformed: each names its line, and nothing is read.
    let header = "{\"format\":\"steward-memory\",\"version\":1}\n";
    let line2 = exported.lines().nth(1).unwrap();
    let bad = [
        ("", "empty"),
        ("{\"format\":\"other\",\"version\":1}\n", "line 1"),
        ("[1,2]\n", "line 1"),
        (&format!("{header}{{\"id\":1}}\n"), "line 2"),
        (&format!("{header}{line2}\n{line2}\n"), "line 3"),
        (
            &format!(
                "{header}{}\n",
                line2.replace("\"scope\":\"org\"", "\"scope\":\"galaxy:x\"")
            ),
            "line 2",
        ),
        (
            &format!(
                "{header}{}\n",
                line2.replace("\"fact\"", "\"colour\":1,\"fact\"")
            ),
            "line 2",
        ),
        (
            &format!("{header}{}\n", &line2[..line2.len() / 2]),
            "line 2",
        ),
    ];
    for (text, says) in bad {
        let e = c.read_export(text).unwrap_err().to_string();
        assert!(e.contains(says), "{text:?}: {e}");
    }

    // A clash with what is stored: all or nothing.
    let clash = exported.replace("The VPN rotates keys monthly", "The VPN never rotates keys");
    let fresh = FreshStore::sqlite().await;
    let d = open(&fresh.store, &clock).await;
    d.import(
        d.read_export(&exported.lines().take(2).collect::<Vec<_>>().join("\n"))
            .unwrap(),
        None,
    )
    .await
    .unwrap();
    let e = d
        .import(d.read_export(&clash).unwrap(), None)
        .await
        .unwrap_err();
    assert!(matches!(e, MemoryError::Conflict(_)), "{e}");
    assert!(e.to_string().contains("nothing was imported"), "{e}");
    let mut erin = query("", "user:erin");
    erin.include_history = true;
    assert!(
        texts(&d, &erin).is_empty(),
        "the conflicting import wrote nothing"
    );
    assert_eq!(
        texts(&d, &query("vpn", "org")),
        ["The VPN rotates keys monthly"]
    );
    assert_eq!(d.export(&scopes).await.unwrap().lines().count(), 2);
}

/// A small embedder for tests of where embeddings go (not of what they mean): letter counts,
/// scaled to unit length, under a model id of the test's choosing.
struct Letters(&'static str);

impl steward_memory::Embedder for Letters {
    fn model(&self) -> &str {
        self.0
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        Ok(texts
            .iter()
            .map(|t| {
                let mut v = [0.01f32; 26];
                for c in t
                    .to_ascii_lowercase()
                    .bytes()
                    .filter(u8::is_ascii_lowercase)
                {
                    v[usize::from(c - b'a')] += 1.0;
                }
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter().map(|x| x / norm).collect()
            })
            .collect())
    }
}

/// An export carries each version's embedding with its model: a store embedding with the
/// same model uses it as it is (nothing embedded again, found by vector search at once), one
/// with another model embeds again, one with none keeps it for later; the bytes round-trip.
#[tokio::test]
async fn embeddings_travel_in_an_export_and_are_not_made_again() {
    let lite = FreshStore::sqlite().await;
    let pg = FreshStore::postgres().await;
    let clock = Arc::new(ManualClock::at(1_000));
    let with = |store: &Arc<dyn Store>, model: Option<&'static str>| {
        Memory::open(
            store.clone(),
            clock.clone(),
            Limits::default(),
            model.map(|m| Arc::new(Letters(m)) as Arc<dyn steward_memory::Embedder>),
        )
    };
    let a = with(&lite.store, Some("letters-1")).await.unwrap();
    for t in ["zebras buzz", "apples and bananas", "quiet kayak"] {
        add(&a, new("user:ivy", t)).await;
    }
    assert_eq!(a.embed_pending().await.unwrap(), 3);
    let scopes = ["user:ivy".to_string()];
    let exported = a.export(&scopes).await.unwrap();
    assert_eq!(
        exported
            .matches("\"embedding\":{\"model\":\"letters-1\"")
            .count(),
        3,
        "{exported}"
    );

    let b = with(&pg.store, Some("letters-1")).await.unwrap();
    b.import(b.read_export(&exported).unwrap(), None)
        .await
        .unwrap();
    assert_eq!(b.embedded(), 3, "searchable by meaning on import");
    assert_eq!(
        b.embed_pending().await.unwrap(),
        0,
        "nothing embedded again"
    );
    let zebra = b
        .search(&Query {
            method: Method::Vector,
            ..query("buzzing zebra", "user:ivy")
        })
        .await
        .unwrap();
    assert_eq!(zebra.hits[0].record.text, "zebras buzz");
    assert_eq!(b.export(&scopes).await.unwrap(), exported, "the same bytes");

    // Another model: the versions are embedded again by it.
    let other = FreshStore::sqlite().await;
    let c = with(&other.store, Some("letters-2")).await.unwrap();
    c.import(c.read_export(&exported).unwrap(), None)
        .await
        .unwrap();
    assert_eq!(c.embedded(), 0, "another model's vectors are not compared");
    assert_eq!(c.embed_pending().await.unwrap(), 3);
    assert_eq!(c.embedded(), 3);
    assert!(c
        .export(&scopes)
        .await
        .unwrap()
        .contains("\"model\":\"letters-2\""));

    // No model: the embeddings are kept as they came, for a node that has one.
    let none = FreshStore::sqlite().await;
    let d = with(&none.store, None).await.unwrap();
    d.import(d.read_export(&exported).unwrap(), None)
        .await
        .unwrap();
    assert_eq!(d.export(&scopes).await.unwrap(), exported);

    // An embedding that is not one: the line is named, nothing is read.
    let line = exported.lines().nth(1).unwrap();
    let vector = line
        .split("\"vector\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let long = steward_memory::embed::encode(&vec![1.0 / 9_000f32.sqrt(); 9_000]);
    let header = exported.lines().next().unwrap();
    for (bad, says) in [
        (line.replace(vector, "not base64!"), "embedding.vector"),
        (line.replace(vector, "AAAAAAAAAAA="), "embedding.vector"),
        (
            line.replace(vector, &steward_memory::embed::encode(&[3.0, 4.0])),
            "unit length",
        ),
        (line.replace(vector, &long), "embedding.vector"),
        (line.replace("letters-1", ""), "embedding.model"),
        (
            line.replace(
                "\"model\":\"letters-1\"",
                "\"model\":\"letters-1\",\"dims\":26",
            ),
            "dims",
        ),
    ] {
        let e = d
            .read_export(&format!("{header}\n{bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains(says), "{bad}: {e}");
    }
}

/// The embedding model's files (scripts/fetch-memory-model puts them there; `.ci/run` does).
fn model_dir() -> std::path::PathBuf {
    std::env::var_os("STEWARD_TEST_MEMORY_MODEL")
        .map(Into::into)
        .expect("STEWARD_TEST_MEMORY_MODEL: a directory holding all-MiniLM-L6-v2 (run scripts/fetch-memory-model DIR)")
}

/// With the embedding model, search finds memories that say what the query asks in other
/// words; a second node follows the embeddings; an erased memory's embedding goes with it.
#[tokio::test]
async fn embeddings_find_what_full_text_cannot() {
    let fresh = FreshStore::sqlite().await;
    let clock = Arc::new(ManualClock::at(1_000));
    let model: Arc<dyn steward_memory::Embedder> =
        Arc::new(steward_memory::embed::MiniLm::load(&model_dir()).unwrap());
    let open_embedding = || {
        Memory::open(
            fresh.store.clone(),
            clock.clone(),
            Limits::default(),
            Some(model.clone()),
        )
    };
    let m = open_embedding().await.unwrap();
    let puppy = add(&m, new("user:gus", "Gus adopted a golden retriever puppy")).await;
    add(&m, new("user:gus", "Gus bought a new laptop for work")).await;
    add(&m, new("user:gus", "The quarterly report is due on Friday")).await;
    assert_eq!(m.embed_pending().await.unwrap(), 3);
    assert_eq!(m.embed_pending().await.unwrap(), 0, "nothing left to embed");

    let ask = |method| Query {
        method,
        ..query("which dog does he have", "user:gus")
    };
    let full_text = m.search(&ask(Method::FullText)).await.unwrap();
    assert!(full_text.hits.is_empty(), "no word in common");
    let by_meaning = m.search(&ask(Method::Vector)).await.unwrap();
    assert_eq!(by_meaning.hits[0].record.id, puppy);
    assert!(by_meaning.hits[0].vector.unwrap() > by_meaning.hits[1].vector.unwrap());
    let hybrid = m.search(&ask(Method::Hybrid)).await.unwrap();
    assert_eq!(hybrid.hits[0].record.id, puppy);

    let two = open_embedding().await.unwrap();
    assert_eq!(
        two.embedded(),
        3,
        "a node starting later loads the stored embeddings"
    );
    m.erase(
        &MemoryErase::Ids {
            scope: "user:gus".into(),
            ids: vec![puppy.clone()],
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(m.embedded(), 2);
    assert!(
        fresh
            .store
            .memory_vectors_changed(0, "", 10)
            .await
            .unwrap()
            .iter()
            .all(|v| v.id != puppy),
        "the stored embedding is erased with its memory"
    );
    two.follow_changes().await.unwrap();
    assert_eq!(two.embedded(), 2);
    let found = two.search(&ask(Method::Vector)).await.unwrap();
    assert!(found.hits.iter().all(|h| h.record.id != puppy));
}

fn states(scope: &str, text: &str, edges: &[(&str, &str, &str)]) -> NewMemory {
    NewMemory {
        relations: edges
            .iter()
            .map(|(s, r, o)| NewRelation {
                subject: s.to_string(),
                relation: r.to_string(),
                object: o.to_string(),
            })
            .collect(),
        ..new(scope, text)
    }
}

/// Entities and edges written with memories let a question reach facts that share no word
/// with it, one or two hops away, in current knowledge only; erasing an entity takes every
/// fact naming it, its edges and its names; an export carries the graph, byte for byte.
async fn the_graph_connects_questions_to_facts_that_share_no_words(b: Backend) {
    let fresh = FreshStore::open(b).await;
    let clock = Arc::new(ManualClock::at(1_000));
    let m = open(&fresh.store, &clock).await;
    let scope = "user:jon";
    let first_home = add(
        &m,
        states(
            scope,
            "We moved to Denver last spring",
            &[("Jon", "lives_in", "Denver")],
        ),
    )
    .await;
    clock.advance(10);
    add(
        &m,
        NewMemory {
            entities: vec![NewEntity {
                name: "Jon".into(),
                kind: Some("person".into()),
                aliases: vec!["Jonathan".into()],
            }],
            ..states(
                scope,
                "Started at Acme on Monday",
                &[("Jon", "works_at", "Acme")],
            )
        },
    )
    .await;
    clock.advance(10);
    let office = add(
        &m,
        states(
            scope,
            "Their office is near the harbour in Boston",
            &[("acme", "located_in", "Boston")],
        ),
    )
    .await;
    for i in 0..20 {
        clock.advance(1);
        add(
            &m,
            new(scope, &format!("Small talk number {i} about the weather")),
        )
        .await;
    }
    let ask = |text: &str, method| Query {
        method,
        ..query(text, scope)
    };
    let full_text = m
        .search(&ask("Which city does Jon live in?", Method::FullText))
        .await
        .unwrap();
    assert!(
        full_text.hits.iter().all(|h| h.record.id != first_home),
        "no word in common"
    );
    let graph = m
        .search(&ask("Which city does Jon live in?", Method::Graph))
        .await
        .unwrap();
    assert_eq!(graph.hits[0].record.id, first_home);
    assert_eq!(graph.hits[0].graph, Some(1.0));
    assert_eq!(
        graph.hits[0].graph_path.as_deref(),
        Some("Jon -lives_in-> Denver")
    );
    let hybrid = m
        .search(&ask("Which city does Jon live in?", Method::Hybrid))
        .await
        .unwrap();
    assert_eq!(hybrid.hits[0].record.id, first_home);
    // By an alias, two hops away: Jonathan -works_at-> Acme -located_in-> Boston.
    let two = m
        .search(&ask("Where is Jonathan's employer located?", Method::Graph))
        .await
        .unwrap();
    let reached = two
        .hits
        .iter()
        .find(|h| h.record.id == office)
        .expect("two hops away");
    assert_eq!(
        reached.graph_path.as_deref(),
        Some("Acme -located_in-> Boston")
    );

    // A correction: the edge of the version it superseded is history, not current knowledge.
    clock.advance(10);
    let moved = add(
        &m,
        NewMemory {
            supersedes: Some(first_home.clone()),
            ..states(
                scope,
                "Now settled in Austin",
                &[("jon", "lives_in", "Austin")],
            )
        },
    )
    .await;
    let now = m
        .search(&ask("Where does Jon live?", Method::Graph))
        .await
        .unwrap();
    assert_eq!(now.hits[0].record.id, moved);
    assert!(now.hits.iter().all(|h| h.record.id != first_home));
    let mut then = ask("Where does Jon live?", Method::Graph);
    then.include_history = true;
    let then = m.search(&then).await.unwrap();
    assert!(then.hits.iter().any(|h| h.record.id == first_home));

    // An export carries the graph; another store answers the same from it.
    let exported = m.export(&[scope.to_string()]).await.unwrap();
    assert!(
        exported.lines().nth(1).unwrap().starts_with("{\"entity\":"),
        "{exported}"
    );
    let other = FreshStore::open(match b {
        Backend::Sqlite => Backend::Postgres,
        Backend::Postgres => Backend::Sqlite,
    })
    .await;
    let copy = open(&other.store, &clock).await;
    copy.import(copy.read_export(&exported).unwrap(), None)
        .await
        .unwrap();
    assert_eq!(
        copy.export(&[scope.to_string()]).await.unwrap(),
        exported,
        "the same bytes"
    );
    let there = copy
        .search(&ask("Where does Jon live?", Method::Graph))
        .await
        .unwrap();
    assert_eq!(there.hits[0].record.id, moved);
    let orphan_ref = exported
        .lines()
        .filter(|l| !l.starts_with("{\"entity\""))
        .collect::<Vec<_>>()
        .join("\n");
    let e = copy.read_export(&orphan_ref).unwrap_err().to_string();
    assert!(e.contains("entities") || e.contains("relations"), "{e}");

    // Erasing Jon by another spelling: every fact naming him, history included, his edges,
    // and the entities only those facts named.
    let report = m
        .erase(
            &MemoryErase::Entity {
                scope: scope.into(),
                entity: "JONATHAN".into(),
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(report.rows, 3, "the home in both versions, and the job");
    assert_eq!(report.relations, 3);
    assert_eq!(
        report.entities.len(),
        3,
        "Jon, Denver, Austin; Acme and Boston remain"
    );
    assert!(m
        .search(&ask("Where does Jon live?", Method::Graph))
        .await
        .unwrap()
        .hits
        .is_empty());
    let left = m.export(&[scope.to_string()]).await.unwrap();
    for gone in ["Jon", "Jonathan", "Denver", "Austin"] {
        assert!(
            !left.contains(&format!("\"{gone}\"")),
            "{gone} is still in {left}"
        );
    }
    assert!(left.contains("\"Boston\""));
}
