//! Agents' memory through the real binary, on SQLite and PostgreSQL: each agent's own scopes
//! and nobody else's unless a policy says so, corrections kept as history, erasure with its
//! report, two nodes sharing one memory, a kill -9 losing nothing acknowledged, and bad input
//! refused with nothing written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{as_agent, audit_records, cli, eventually, key_of, send, Backend, TestServer};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};

const AGENTS: &str = "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: alice-bot}\nspec:\n  model: scripted\n  script:\n    - {content: x}\n---\napiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: bob-bot}\nspec:\n  model: scripted\n  script:\n    - {content: x}\n";

async fn get_as(s: &TestServer, key: &str, path: &str) -> (u16, Value) {
    send(as_agent(
        reqwest::Client::new().get(format!("{}{path}", s.url)),
        key,
    ))
    .await
}

fn texts(r: &Value) -> Vec<String> {
    r["results"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|h| h["memory"]["text"].as_str().unwrap().to_string())
        .collect()
}

async fn search(s: &TestServer, key: Option<&str>, query: &str, scope: &str) -> (u16, Value) {
    let body = json!({"query": query, "scopes": [scope]});
    match key {
        Some(k) => s.post_as(k, "/api/v1/memories/search", body).await,
        None => s.post("/api/v1/memories/search", body).await,
    }
}

/// An agent reads and writes its own scopes (its agent's, its owner's) unless a policy
/// forbids; any other scope only where a policy permits, and a scope it may not read hides
/// its memories as if they did not exist. Every write and every refusal is audited, and no
/// audit record carries a memory's text.
async fn agents_reach_their_own_scopes_and_others_only_by_policy(b: Backend) {
    let s = TestServer::start(b).await;
    s.apply(AGENTS).await;
    let alice = key_of(&s, "alice-bot", "alice").await;
    let bob = key_of(&s, "bob-bot", "bob").await;
    let add = |key: &str, scope: &str, text: &str| {
        let (s, key) = (&s, key.to_string());
        let body = json!({"scope": scope, "text": text});
        async move { s.post_as(&key, "/api/v1/memories", body).await }
    };
    let (st, own) = add(&alice, "agent:alice-bot", "Prefers answers in French").await;
    assert_eq!(st, 201, "{own}");
    assert_eq!(own["memory"]["written_by"], "agent:alice-bot");
    let (st, r) = add(&alice, "user:alice", "Alice's birthday is 12 March").await;
    assert_eq!(st, 201, "its owner's scope: {r}");
    let (st, r) = add(&alice, "user:bob", "Bob owes Alice 20 euros").await;
    assert_eq!(st, 403, "another owner's scope: {r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("memory.write"),
        "the refusal names what was missing: {r}"
    );
    let (st, r) = search(&s, Some(&bob), "French", "agent:alice-bot").await;
    assert_eq!(st, 403, "{r}");
    let id = own["memory"]["id"].as_str().unwrap();
    let (st, _) = get_as(&s, &bob, &format!("/api/v1/memories/{id}")).await;
    assert_eq!(st, 404, "not readable is not there");
    let (st, r) = get_as(&s, &alice, &format!("/api/v1/memories/{id}")).await;
    assert_eq!(
        (st, r["text"].as_str()),
        (200, Some("Prefers answers in French"))
    );
    let (st, r) = search(&s, Some(&alice), "french answers", "agent:alice-bot").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(texts(&r), ["Prefers answers in French"]);

    // A shared collection: the administrator writes, a policy lets bob-bot read it.
    let (st, r) = s
        .post(
            "/api/v1/memories",
            json!({"scope": "collection:faq", "text": "Refunds take five working days"}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    assert_eq!(r["memory"]["written_by"], "admin:admin");
    let (st, _) = search(&s, Some(&bob), "refunds", "collection:faq").await;
    assert_eq!(st, 403);
    let (st, r) = s
        .put_policies(
            r#"permit (principal == Steward::Agent::"bob-bot", action == Steward::Action::"memory.read", resource == Steward::Namespace::"collection:faq");
forbid (principal == Steward::Agent::"alice-bot", action == Steward::Action::"memory.write", resource == Steward::Namespace::"agent:alice-bot");
permit (principal, action in [Steward::Action::"llm.call", Steward::Action::"tool.call"], resource);"#,
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let (st, r) = search(&s, Some(&bob), "refunds", "collection:faq").await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(texts(&r), ["Refunds take five working days"]);
    let (st, r) = add(&bob, "collection:faq", "Refunds are instant").await;
    assert_eq!(st, 403, "reading is not writing: {r}");
    let (st, r) = add(&alice, "agent:alice-bot", "Prefers answers in German").await;
    assert_eq!(st, 403, "a forbid takes even its own scope away: {r}");
    let (st, _) = search(&s, Some(&alice), "french", "agent:alice-bot").await;
    assert_eq!(st, 200, "reading its own is still allowed");

    let audit = common::audit_records(&s).await;
    let writes: Vec<&Value> = audit
        .iter()
        .filter(|r| r["action"] == "memory.write" && r["decision"] == "allow")
        .collect();
    assert_eq!(writes.len(), 3, "{writes:?}");
    let denials = audit
        .iter()
        .filter(|r| {
            r["action"].as_str().unwrap_or("").starts_with("memory.") && r["decision"] == "deny"
        })
        .count();
    assert_eq!(denials, 6, "each refusal audited");
    let reads = audit
        .iter()
        .filter(|r| r["action"] == "memory.read" && r["decision"] == "allow")
        .count();
    assert!(reads >= 4, "agents' reads are audited: {reads}");
    let all = serde_json::to_string(&audit).unwrap();
    for text in ["French", "birthday", "Refunds"] {
        assert!(
            !all.contains(text),
            "the audit log holds no memory text ({text})"
        );
    }
}

both_backends!(
    memory_scopes,
    agents_reach_their_own_scopes_and_others_only_by_policy
);

/// A correction closes the old version and keeps it in history; time travel finds it; the
/// CLI shows the history; a kill -9 loses no acknowledged write (the index is rebuilt from
/// the store); an erasure reports what went, and afterwards nothing of the fact is found.
async fn corrections_history_crash_and_erasure(b: Backend) {
    let mut s = TestServer::start(b).await;
    let (st, v1) = s
        .post(
            "/api/v1/memories",
            json!({"scope": "user:dana", "text": "Dana lives in Porto", "subject": "dana",
                   "metadata": {"confidence": 0.9, "from": ["chat", 3]}, "tags": ["home"]}),
        )
        .await;
    assert_eq!(st, 201, "{v1}");
    let v1_id = v1["memory"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        v1["memory"]["metadata"],
        json!({"confidence": 0.9, "from": ["chat", 3]})
    );
    let before_move = v1["memory"]["created_at"].as_i64().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (st, v2) = s
        .post(
            "/api/v1/memories",
            json!({"scope": "user:dana", "text": "Dana lives in Berlin", "subject": "dana",
                   "supersedes": v1_id, "source": {"message": "I just moved to Berlin"}}),
        )
        .await;
    assert_eq!(st, 201, "{v2}");
    assert_eq!(v2["superseded"]["id"], v1_id.as_str());
    assert_eq!(v2["superseded"]["superseded_by"], v2["memory"]["id"]);
    let v2_id = v2["memory"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        v2["memory"]["fact"],
        v1_id.as_str(),
        "one fact, two versions"
    );

    let (st, r) = s
        .post(
            "/api/v1/memories",
            json!({"scope": "user:dana", "text": "Dana lives in Rome", "supersedes": v1_id}),
        )
        .await;
    assert_eq!(st, 409, "an old version cannot be superseded again: {r}");

    let (_, r) = search(&s, None, "where does dana live", "user:dana").await;
    assert_eq!(texts(&r), ["Dana lives in Berlin"]);
    let (_, r) = s
        .post(
            "/api/v1/memories/search",
            json!({"query": "dana lives", "scopes": ["user:dana"], "known_at": before_move}),
        )
        .await;
    assert_eq!(
        texts(&r),
        ["Dana lives in Porto"],
        "as it was known then: {r}"
    );

    let (ok, out, err) = cli(&s, &["memory", "history", &v2_id]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].contains("Porto") && lines[0].contains("superseded by"),
        "{out}"
    );
    assert!(
        lines[1].contains("Berlin") && lines[1].contains("current"),
        "{out}"
    );

    // Acknowledged means durable: kill -9 right after, and the next life finds it.
    let (st, r) = s
        .post(
            "/api/v1/memories",
            json!({"scope": "user:dana", "text": "Dana's cat is called Miso", "subject": "dana"}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    s.kill9();
    s.spawn();
    let (_, r) = search(&s, None, "cat", "user:dana").await;
    assert_eq!(texts(&r), ["Dana's cat is called Miso"]);

    let (ok, out, err) = cli(
        &s,
        &[
            "memory",
            "erase",
            "--scope",
            "user:dana",
            "--subject",
            "dana",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.starts_with("erased 2 facts (3 versions)"), "{out}");
    let (_, r) = s
        .post(
            "/api/v1/memories/search",
            json!({"query": "dana", "scopes": ["user:dana"], "include_history": true}),
        )
        .await;
    assert!(texts(&r).is_empty(), "{r}");
    let (st, _) = s.get(&format!("/api/v1/memories/{v1_id}")).await;
    assert_eq!(st, 404);
    let (st, _) = s.get(&format!("/api/v1/memories/{v2_id}/history")).await;
    assert_eq!(st, 404);
}

both_backends!(memory_history, corrections_history_crash_and_erasure);

/// Two nodes on one database: what one writes the other finds, what one erases the other
/// stops finding.
async fn two_nodes_share_one_memory(b: Backend) {
    let one = TestServer::start(b).await;
    let two = TestServer::join(&one);
    let (st, r) = one
        .post(
            "/api/v1/memories",
            json!({"scope": "org", "text": "The office closes at six on Fridays"}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    eventually("the second node to find the memory", || async {
        let (_, r) = search(&two, None, "office fridays", "org").await;
        (texts(&r).len() == 1).then_some(())
    })
    .await;
    let (st, r) = two
        .post(
            "/api/v1/memories/erase",
            json!({"scope": "org", "ids": [r["memory"]["id"]]}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["rows"], 1);
    eventually("the first node to drop the erased memory", || async {
        let (_, r) = search(&one, None, "office", "org").await;
        texts(&r).is_empty().then_some(())
    })
    .await;
}

both_backends!(memory_two_nodes, two_nodes_share_one_memory);

/// Wrong types, unknown fields, oversized or deeply nested values, unknown scopes and
/// contradictory erasures: each a 400 that says what is wrong, and nothing written.
async fn bad_memory_requests_are_refused_and_write_nothing(b: Backend) {
    let s = TestServer::start(b).await;
    let deep = (0..30).fold(json!("x"), |v, _| json!({ "a": v }));
    let adds = [
        json!({"scope": "org", "text": 5}),
        json!({"scope": "org"}),
        json!({"scope": "org", "text": "t", "colour": "red"}),
        json!({"scope": "org", "text": "t", "metadata": "not an object"}),
        json!({"scope": "org", "text": "t", "metadata": {"deep": deep}}),
        json!({"scope": "org", "text": "x".repeat(33 * 1024)}),
        json!({"scope": "galaxy:far", "text": "t"}),
        json!({"scope": "user:../../etc", "text": "t"}),
        json!({"scope": "org", "text": "t", "tags": [""]}),
        json!({"scope": "org", "text": "t", "valid_from": 10, "valid_to": 5}),
        json!({"scope": "org", "text": "t", "ttl_ms": -1}),
        json!({"scope": "org", "text": "t", "entities": "Alice"}),
        json!({"scope": "org", "text": "t", "entities": [{"name": ""}]}),
        json!({"scope": "org", "text": "t", "entities": [{"name": "!!!"}]}),
        json!({"scope": "org", "text": "t", "entities": [{"name": "a\u{0}b"}]}),
        json!({"scope": "org", "text": "t", "entities": [{"name": "a", "age": 3}]}),
        json!({"scope": "org", "text": "t", "entities": (0..33).map(|i| json!({"name": format!("e{i}")})).collect::<Vec<_>>()}),
        json!({"scope": "org", "text": "t", "entities": [{"name": "a", "aliases": vec!["b"; 17]}]}),
        json!({"scope": "org", "text": "t", "relations": [{"subject": "a", "relation": "r"}]}),
        json!({"scope": "org", "text": "t", "relations": [{"subject": "a", "relation": " ", "object": "b"}]}),
        json!({"scope": "org", "text": "t", "relations": [["a", "r", "b", "c"]]}),
        json!({"scope": "org", "text": "t", "relations": [["a", "r"]]}),
        json!({"scope": "org", "text": "t", "relations": (0..17).map(|i| json!({"subject": format!("s{i}"), "relation": "r", "object": format!("o{i}")})).collect::<Vec<_>>()}),
    ];
    for body in adds {
        let (st, r) = s.post("/api/v1/memories", body.clone()).await;
        assert_eq!(st, 400, "{body}: {r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{r}"
        );
    }
    let searches = [
        json!({"query": "t"}),
        json!({"query": "t", "scopes": []}),
        json!({"query": "t", "scopes": ["org"], "limit": 0}),
        json!({"query": "t", "scopes": ["org"], "limit": 5000}),
        json!({"query": "t", "scopes": ["org"], "method": "psychic"}),
        json!({"query": "t", "scopes": ["nope"]}),
        json!({"query": "t", "scopes": ["org"], "method": "vector"}),
    ];
    for body in searches {
        let (st, r) = s.post("/api/v1/memories/search", body.clone()).await;
        assert_eq!(st, 400, "{body}: {r}");
    }
    let erasures = [
        json!({"scope": "org"}),
        json!({"scope": "org", "ids": ["a"], "all": true}),
        json!({"scope": "org", "ids": []}),
        json!({"scope": "org", "entity": ""}),
        json!({"scope": "org", "entity": "x", "subject": "y"}),
    ];
    for body in erasures {
        let (st, r) = s.post("/api/v1/memories/erase", body.clone()).await;
        assert_eq!(st, 400, "{body}: {r}");
    }
    let (_, r) = s
        .post(
            "/api/v1/memories/search",
            json!({"query": "", "scopes": ["org"], "include_history": true}),
        )
        .await;
    assert!(texts(&r).is_empty(), "nothing was written: {r}");
}

both_backends!(
    memory_bad_input,
    bad_memory_requests_are_refused_and_write_nothing
);

/// Over HTTP: a memory names entities and states an edge; a question sharing no word with it
/// reaches it through the graph; erasing the entity by another spelling takes it all and says
/// what went.
async fn the_graph_over_http(b: Backend) {
    let s = TestServer::start(b).await;
    let (st, added) = s
        .post(
            "/api/v1/memories",
            json!({"scope": "user:jon", "text": "We finally moved to Denver",
                "entities": [{"name": "Jon", "kind": "person", "aliases": ["Jonathan"]}],
                "relations": [{"subject": "Jon", "relation": "lives_in", "object": "Denver"}]}),
        )
        .await;
    assert_eq!(st, 201, "{added}");
    let names: Vec<&str> = added["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Jon", "Denver"]);
    let (st, r) = s
        .post(
            "/api/v1/memories/search",
            json!({"query": "Which city does jon live in?", "scopes": ["user:jon"]}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["results"][0]["memory"]["id"], added["memory"]["id"]);
    assert_eq!(
        r["results"][0]["scores"]["graph_path"],
        "Jon -lives_in-> Denver"
    );
    let (st, report) = s
        .post(
            "/api/v1/memories/erase",
            json!({"scope": "user:jon", "entity": "jonathan"}),
        )
        .await;
    assert_eq!(st, 200, "{report}");
    assert_eq!(report["rows"], 1);
    assert_eq!(report["relations"], 1);
    assert_eq!(report["entities"].as_array().unwrap().len(), 2);
    let (_, r) = s
        .post(
            "/api/v1/memories/search",
            json!({"query": "jon", "scopes": ["user:jon"], "method": "graph"}),
        )
        .await;
    assert!(texts(&r).is_empty(), "{r}");
}

both_backends!(memory_graph_over_http, the_graph_over_http);

/// `steward memory export` from a server on SQLite, `steward memory import` into one on
/// PostgreSQL: the same memories, history and all; an agent may import only into scopes it
/// may write, and a refused import writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memories_move_between_servers_through_the_cli() {
    let from = TestServer::start(Backend::Sqlite).await;
    let to = TestServer::start(Backend::Postgres).await;
    let (_, v1) = from
        .post(
            "/api/v1/memories",
            json!({"scope": "user:fay", "text": "Fay drinks oat milk"}),
        )
        .await;
    let (st, _) = from
        .post(
            "/api/v1/memories",
            json!({"scope": "user:fay", "text": "Fay drinks soy milk", "supersedes": v1["memory"]["id"]}),
        )
        .await;
    assert_eq!(st, 201);
    let (ok, export, err) = cli(&from, &["memory", "export", "--scope", "user:fay"]);
    assert!(ok, "{err}");
    assert_eq!(export.lines().count(), 3, "{export}");
    let file = to.dir.path().join("fay.jsonl");
    std::fs::write(&file, &export).unwrap();

    to.apply(AGENTS).await;
    let key = key_of(&to, "bob-bot", "bob").await;
    let (st, r) = send(as_agent(
        reqwest::Client::new()
            .post(format!("{}/api/v1/memories/import", to.url))
            .header("content-type", "application/x-ndjson")
            .body(export.clone()),
        &key,
    ))
    .await;
    assert_eq!(st, 403, "bob-bot may not write user:fay: {r}");
    // Nor claim, in its own scope, that someone else wrote a memory.
    let import_as_bob = |body: String| {
        let (to, key) = (&to, key.clone());
        async move {
            send(as_agent(
                reqwest::Client::new()
                    .post(format!("{}/api/v1/memories/import", to.url))
                    .header("content-type", "application/x-ndjson")
                    .body(body),
                &key,
            ))
            .await
        }
    };
    let header = export.lines().next().unwrap();
    let forged = export
        .lines()
        .nth(1)
        .unwrap()
        .replace("user:fay", "agent:bob-bot")
        .replacen("\"id\":\"", "\"id\":\"bob", 1);
    let (st, r) = import_as_bob(format!("{header}\n{forged}\n")).await;
    assert_eq!(st, 403, "written by admin:admin, imported by bob-bot: {r}");
    let own = forged.replace(
        "\"written_by\":\"admin:admin\"",
        "\"written_by\":\"agent:bob-bot\"",
    );
    let (st, r) = import_as_bob(format!("{header}\n{own}\n")).await;
    assert_eq!(st, 200, "its own memory, in its own scope: {r}");

    let (ok, out, err) = cli(&to, &["memory", "import", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "imported 2 versions (0 already there, unchanged)"
    );
    let (_, r) = search(&to, None, "milk", "user:fay").await;
    assert_eq!(texts(&r), ["Fay drinks soy milk"]);
    let (ok, again, err) = cli(&to, &["memory", "export", "--scope", "user:fay"]);
    assert!(ok, "{err}");
    assert_eq!(again, export, "byte for byte");
    let (ok, _, err) = cli(&to, &["memory", "import", "/nonexistent/file.jsonl"]);
    assert!(
        !ok && err.contains("reading /nonexistent/file.jsonl"),
        "{err}"
    );
}

/// A managed agent remembers with `memory_add` and recalls with `memory_search` in its own
/// scope; a scope it may not read is refused and the refusal shown to the model; what it
/// wrote carries its run and step as provenance and is found over the API.
async fn a_managed_agent_remembers_and_recalls(b: Backend) {
    let s = TestServer::start(b).await;
    s.apply(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: keeper}\nspec:\n  model: scripted\n  tools: [memory_add, memory_search]\n  script:\n    - toolCalls: [{name: memory_add, arguments: {text: \"The deploy key rotates on Mondays\", subject: deploys, tags: [ops]}}]\n    - toolCalls: [{name: memory_search, arguments: {query: \"when does the deploy key rotate\"}}]\n    - toolCalls: [{name: memory_search, arguments: {query: \"salary\", scopes: [\"user:stranger\"]}}]\n    - content: done\n",
    )
    .await;
    let id = s.start_run("keeper", "").await;
    let run = s.wait_run(&id).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let j = s.journal(&id).await;
    let outcomes: Vec<&Value> = j
        .iter()
        .filter(|e| e["phase"] == "outcome" && e["kind"] == "tool")
        .collect();
    assert_eq!(outcomes.len(), 3, "{j:?}");
    let added = &outcomes[0]["body"]["ok"];
    assert_eq!(added["scope"], "agent:keeper", "{added}");
    let found = &outcomes[1]["body"]["ok"]["results"];
    assert_eq!(
        found[0]["text"], "The deploy key rotates on Mondays",
        "{found}"
    );
    assert_eq!(found[0]["id"], added["id"]);
    let refusal = outcomes[2]["body"]["error"].as_str().unwrap_or_default();
    assert!(
        refusal.contains("memory.read") && refusal.contains("user:stranger"),
        "the model is told why: {}",
        outcomes[2]
    );

    let (st, m) = s
        .get(&format!(
            "/api/v1/memories/{}",
            added["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(st, 200, "{m}");
    assert_eq!(m["written_by"], "agent:keeper");
    assert_eq!(m["source"]["run"], id.as_str());
    assert_eq!(m["tags"], json!(["ops"]));
    let audit = common::audit_records(&s).await;
    let by_run: Vec<(&str, &str)> = audit
        .iter()
        .filter(|r| {
            r["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("memory."))
        })
        .map(|r| {
            (
                r["action"].as_str().unwrap(),
                r["decision"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by_run,
        [
            ("memory.write", "allow"),
            ("memory.read", "allow"),
            ("memory.read", "deny")
        ],
        "each access decided and audited"
    );
}

both_backends!(memory_tools, a_managed_agent_remembers_and_recalls);

/// Runs writing memories are killed (-9) three times and carry on from their journals: every
/// run finishes, and every memory a step wrote is there exactly once — a step retried after
/// the crash finds what its first try wrote.
async fn killed_runs_write_each_memory_once(b: Backend) {
    const RUNS: usize = 12;
    const NOTES: usize = 12;
    let mut s = TestServer::start(b).await;
    let script: String = (0..NOTES)
        .map(|i| format!("    - {{delayMs: 40, toolCalls: [{{name: memory_add, arguments: {{text: \"note {i} of {{{{input}}}}\"}}}}]}}\n"))
        .collect();
    s.apply(&format!(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: scribe}}\nspec:\n  model: scripted\n  tools: [memory_add]\n  maxSteps: 40\n  script:\n{script}    - content: done\n"
    ))
    .await;
    let mut runs = Vec::new();
    for r in 0..RUNS {
        runs.push(s.start_run("scribe", &format!("run{r}")).await);
    }
    for pause in [120, 200, 280] {
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        s.kill9();
        s.spawn();
    }
    for id in &runs {
        let run = s.wait_run(id).await;
        assert_eq!(run["state"], "succeeded", "{run}");
    }
    let (ok, export, err) = cli(&s, &["memory", "export", "--scope", "agent:scribe"]);
    assert!(ok, "{err}");
    let mut texts: Vec<String> = export
        .lines()
        .skip(1)
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    texts.sort();
    let mut want: Vec<String> = (0..RUNS)
        .flat_map(|r| (0..NOTES).map(move |i| format!("note {i} of run{r}")))
        .collect();
    want.sort();
    assert_eq!(texts, want, "each note once, none lost");
}

both_backends!(memory_crash, killed_runs_write_each_memory_once);

/// A server with the embedding model (`memory.model_dir`) embeds what is written in the
/// background and finds it by meaning; the results say how each method ranked them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_the_model_searches_by_meaning() {
    let model = std::env::var("STEWARD_TEST_MEMORY_MODEL").expect(
        "STEWARD_TEST_MEMORY_MODEL: a directory holding all-MiniLM-L6-v2 (run scripts/fetch-memory-model DIR)",
    );
    let s = TestServer::start_with(Backend::Sqlite, &[("STEWARD_MEMORY__MODEL_DIR", &model)]).await;
    for text in [
        "Hana is allergic to shellfish",
        "Hana's flight to Oslo leaves at 7am",
        "Hana prefers window seats",
    ] {
        let (st, r) = s
            .post(
                "/api/v1/memories",
                json!({"scope": "user:hana", "text": text}),
            )
            .await;
        assert_eq!(st, 201, "{r}");
    }
    let hit = eventually("the memories to be embedded and found by meaning", || async {
        let (st, r) = s
            .post(
                "/api/v1/memories/search",
                json!({"query": "seafood intolerance", "scopes": ["user:hana"], "method": "vector", "limit": 1}),
            )
            .await;
        assert_eq!(st, 200, "{r}");
        let first = r["results"].get(0)?.clone();
        (first["memory"]["text"] == "Hana is allergic to shellfish").then_some(first)
    })
    .await;
    assert!(hit["scores"]["vector"].as_f64().unwrap() > 0.3, "{hit}");
    let (_, r) = s
        .post(
            "/api/v1/memories/search",
            json!({"query": "seafood intolerance", "scopes": ["user:hana"]}),
        )
        .await;
    assert_eq!(texts(&r)[0], "Hana is allergic to shellfish", "hybrid: {r}");
    assert_eq!(r["results"][0]["scores"]["vector_rank"], 1);
}

/// Serves `app` on a loopback port of its own; its `/v1` base URL.
async fn serve(app: axum::Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    url
}

/// A mock OpenAI-compatible upstream on loopback that keeps every chat request it is sent and
/// answers "ok". Returns its `/v1` base URL and the requests.
async fn recording_upstream() -> (String, Arc<Mutex<Vec<Value>>>) {
    use axum::routing::post;
    use axum::Json;
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body.clone());
                Json(json!({"id": "x", "object": "chat.completion", "created": 1, "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))
            }
        }),
    );
    (serve(app).await, seen)
}

/// `spec.memory`: before its first model call a run recalls its owner's memories relevant to
/// its input — a journaled `memory_search` step — and the model is sent them; another
/// person's memories are not among them, and a scope no policy opens is refused (audited) and
/// the run goes on without.
async fn a_run_recalls_relevant_memories_into_its_context(b: Backend) {
    let (upstream, seen) = recording_upstream().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_LLM__PRICES__GPT-MOCK__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__GPT-MOCK__OUTPUT", "2.0"),
        ],
    )
    .await;
    for (scope, text) in [
        ("user:ana", "Ana is vegetarian and allergic to walnuts"),
        ("user:ana", "Ana's quarterly report is due in March"),
        ("user:bo", "Bo is vegetarian too, and keeps it private"),
    ] {
        let (st, r) = s
            .post("/api/v1/memories", json!({"scope": scope, "text": text}))
            .await;
        assert_eq!(st, 201, "{r}");
    }
    s.apply(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: host}\nspec:\n  model: mock/gpt-mock\n  systemPrompt: You plan dinners.\n  memory: {recall: 3}\n---\napiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: snoop}\nspec:\n  model: mock/gpt-mock\n  memory: {scopes: [\"user:bo\"]}\n",
    )
    .await;
    key_of(&s, "host", "ana").await;
    key_of(&s, "snoop", "ana").await;

    let id = s
        .start_run("host", "Plan a vegetarian dinner for Ana")
        .await;
    let run = s.wait_run(&id).await;
    assert_eq!(run["state"], "succeeded", "{run}");
    let sent = seen.lock().unwrap().pop().expect("the model was called");
    let messages = sent["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "system", "user"], "{sent}");
    let recalled = messages[1]["content"].as_str().unwrap();
    assert!(
        recalled.contains("Ana is vegetarian and allergic to walnuts"),
        "{recalled}"
    );
    assert!(
        !recalled.contains("Bo is"),
        "another person's memory: {recalled}"
    );
    let j = s.journal(&id).await;
    let first = j.iter().find(|e| e["phase"] == "intent").unwrap();
    assert_eq!(
        (first["kind"].as_str(), first["name"].as_str()),
        (Some("tool"), Some("memory_search")),
        "{j:?}"
    );
    assert_eq!(first["body"]["query"], "Plan a vegetarian dinner for Ana");

    let id = s.start_run("snoop", "What does Bo eat?").await;
    let run = s.wait_run(&id).await;
    assert_eq!(
        run["state"], "succeeded",
        "the run goes on without memories: {run}"
    );
    let sent = seen.lock().unwrap().pop().unwrap();
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user"], "nothing recalled: {sent}");
    assert!(!sent.to_string().contains("keeps it private"));
    let refused = audit_records(&s).await.into_iter().any(|r| {
        r["action"] == "memory.read"
            && r["resource"]
                .as_str()
                .is_some_and(|x| x.contains("user:bo"))
            && r["decision"] == "deny"
    });
    assert!(refused, "the refusal is audited");

    // A recall that is not one: refused when applied, saying what is wrong.
    for (memory, says) in [
        ("{recall: 50}", "spec.memory.recall"),
        ("{maxTokens: 0}", "spec.memory.maxTokens"),
        ("{recal: 3}", "recal"),
        ("5", "memory"),
    ] {
        let (status, body) = s
            .post_raw(
                "/api/v1/agents",
                "application/yaml",
                format!("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {{name: odd}}\nspec:\n  model: mock/gpt-mock\n  memory: {memory}\n"),
            )
            .await;
        assert_eq!(status, 400, "{memory}: {body}");
        assert!(body.to_string().contains(says), "{memory}: {body}");
    }
}

both_backends!(
    memory_recall,
    a_run_recalls_relevant_memories_into_its_context
);

/// A run killed (`kill -9`) after its recall is journaled is told, when it resumes, exactly
/// what it recalled the first time — one recall step, the same outcome — and finishes.
async fn a_resumed_run_recalls_what_its_first_life_did(b: Backend) {
    let mut s = TestServer::start(b).await;
    s.apply(
        "apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: recaller}\nspec:\n  model: scripted\n  memory: {recall: 3}\n  script:\n    - {delayMs: 1500, content: done}\n",
    )
    .await;
    let (st, r) = s
        .post(
            "/api/v1/memories",
            json!({"scope": "agent:recaller", "text": "The tea order goes out on Fridays"}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    let mut runs = Vec::new();
    for i in 0..4 {
        runs.push(
            s.start_run("recaller", &format!("when does the tea order go out {i}"))
                .await,
        );
    }
    let recall_of = |j: &[Value]| -> Vec<Value> {
        j.iter()
            .filter(|e| e["kind"] == "tool" && e["name"] == "memory_search")
            .cloned()
            .collect()
    };
    let mut before = Vec::new();
    for id in &runs {
        let entries = eventually("the recall step's outcome", || async {
            let entries = recall_of(&s.journal(id).await);
            entries
                .iter()
                .any(|e| e["phase"] == "outcome")
                .then_some(entries)
        })
        .await;
        before.push(entries);
    }
    s.kill9();
    s.spawn();
    for (id, before) in runs.iter().zip(&before) {
        let run = s.wait_run(id).await;
        assert_eq!(run["state"], "succeeded", "{run}");
        let after = recall_of(&s.journal(id).await);
        assert_eq!(&after, before, "recalled once, replayed after the kill");
        let outcome = after.iter().find(|e| e["phase"] == "outcome").unwrap();
        assert_eq!(
            outcome["body"]["ok"]["results"][0]["text"],
            "The tea order goes out on Fridays"
        );
    }
}

both_backends!(
    memory_recall_crash,
    a_resumed_run_recalls_what_its_first_life_did
);

/// A mock OpenAI-compatible embeddings endpoint on loopback: letter counts as vectors (so
/// texts sharing letters are near), a token per 4 bytes in its usage. Its `/v1` base URL.
async fn embeddings_upstream() -> String {
    use axum::routing::post;
    use axum::Json;
    let app = axum::Router::new().route(
        "/v1/embeddings",
        post(|Json(body): Json<Value>| async move {
            let inputs: Vec<String> = match &body["input"] {
                Value::String(s) => vec![s.clone()],
                Value::Array(a) => a
                    .iter()
                    .map(|t| t.as_str().unwrap_or("").to_string())
                    .collect(),
                _ => vec![],
            };
            let tokens: usize = inputs.iter().map(|t| t.len().div_ceil(4)).sum();
            let data: Vec<Value> = inputs
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let mut v = [0.01f64; 26];
                    for c in t
                        .to_ascii_lowercase()
                        .bytes()
                        .filter(u8::is_ascii_lowercase)
                    {
                        v[usize::from(c - b'a')] += 1.0;
                    }
                    json!({"object": "embedding", "index": i, "embedding": v.to_vec()})
                })
                .collect();
            Json(
                json!({"object": "list", "data": data, "model": body["model"],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
            )
        }),
    );
    serve(app).await
}

/// `[memory] embeddings_model`: embeddings come from an OpenAI-compatible endpoint through the
/// router, as the agent `memory` — audited, and held on its own budget account. With that
/// account spent, new memories wait unembedded and hybrid search still answers by full text.
async fn embeddings_through_the_router_on_their_own_budget(b: Backend) {
    let upstream = embeddings_upstream().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_LLM__PRICES__EMBED-MOCK__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__EMBED-MOCK__OUTPUT", "1.0"),
            ("STEWARD_MEMORY__EMBEDDINGS_MODEL", "mock/embed-mock"),
        ],
    )
    .await;
    for text in [
        "zebras buzz loudly",
        "apples and bananas",
        "a quiet kayak trip",
    ] {
        let (st, r) = s
            .post(
                "/api/v1/memories",
                json!({"scope": "user:gus", "text": text}),
            )
            .await;
        assert_eq!(st, 201, "{r}");
    }
    let by_meaning = |q: &'static str| {
        let s = &s;
        async move {
            s.post(
                "/api/v1/memories/search",
                json!({"query": q, "scopes": ["user:gus"], "method": "vector"}),
            )
            .await
        }
    };
    let found = eventually("the memories embedded through the router", || async {
        let (st, r) = by_meaning("buzzing zebra").await;
        (st == 200 && r["results"].as_array().is_some_and(|a| a.len() == 3)).then_some(r)
    })
    .await;
    assert_eq!(
        found["results"][0]["memory"]["text"], "zebras buzz loudly",
        "{found}"
    );
    assert!(
        audit_records(&s)
            .await
            .iter()
            .any(|r| r["action"] == "llm.embeddings"
                && r["principal"] == "agent:memory"
                && r["resource"]
                    .as_str()
                    .is_some_and(|m| m.contains("embed-mock"))),
        "each embedding call is on the record, as the agent memory"
    );

    // Its own account, spent: nothing more is embedded; full text still answers.
    let (st, r) = s
        .put("/api/v1/budgets/agent:memory", json!({"cap_usd": 0.0}))
        .await;
    assert_eq!(st, 200, "{r}");
    let (st, r) = s
        .post(
            "/api/v1/memories",
            json!({"scope": "user:gus", "text": "xylophone lessons on Tuesdays"}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let (st, r) = s
        .post(
            "/api/v1/memories/search",
            json!({"query": "xylophone", "scopes": ["user:gus"]}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(
        r["results"][0]["memory"]["text"],
        "xylophone lessons on Tuesdays"
    );
    assert!(r["results"][0]["scores"]["vector"].is_null(), "{r}");
    let (st, r) = by_meaning("xylophone").await;
    assert_eq!(st, 503, "a search by meaning alone says why it cannot: {r}");
    assert!(r.to_string().contains("budget"), "{r}");
}

both_backends!(
    memory_router_embeddings,
    embeddings_through_the_router_on_their_own_budget
);

/// A mock model for curation on loopback: it answers with the decisions a curating model
/// would make for the test's conversation — a fact to add, the stored home to update (its id
/// read from the prompt), and two decisions that must be skipped — after a delay when the
/// conversation says "slowly". Its `/v1` base URL and the requests it was sent.
async fn curating_upstream() -> (String, Arc<Mutex<Vec<Value>>>) {
    use axum::routing::post;
    use axum::Json;
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body.clone());
                let asked = body["messages"][1]["content"].as_str().unwrap_or("").to_string();
                if asked.contains("slowly") {
                    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
                }
                let home = asked
                    .lines()
                    .find(|l| l.contains("Denver"))
                    .and_then(|l| l.trim_start_matches("- ").split(':').next())
                    .unwrap_or("none")
                    .to_string();
                let pet = if asked.contains("slowly") { "Biscuit" } else { "Miso" };
                let facts = json!({"facts": [
                    {"action": "add", "text": format!("Jon has a cat named {pet}"), "subject": "jon",
                     "entities": ["Jon", pet], "relations": [{"subject": "Jon", "relation": "has_pet", "object": pet}]},
                    {"action": "update", "target": home, "text": "Jon lives in Austin",
                     "relations": [{"subject": "Jon", "relation": "lives_in", "object": "Austin"}]},
                    {"action": "add"},
                    {"action": "update", "target": "mem_of_someone_else", "text": "Jon owes me money"}
                ]});
                Json(json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-mock",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": facts.to_string()}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}}))
            }
        }),
    );
    (serve(app).await, seen)
}

async fn curate(s: &TestServer, content: &str) -> String {
    let (st, c) = s
        .post(
            "/api/v1/memories/curate",
            json!({"scope": "user:jon", "messages": [{"role": "user", "content": content}],
                "source": {"thread": "t1"}}),
        )
        .await;
    assert_eq!(st, 202, "{c}");
    assert_eq!(c["state"], "queued");
    c["id"].as_str().unwrap().to_string()
}

async fn ended(s: &TestServer, id: &str) -> Value {
    eventually("the curation to end", || async {
        let (st, c) = s.get(&format!("/api/v1/memories/curations/{id}")).await;
        assert_eq!(st, 200, "{c}");
        (c["state"] == "done" || c["state"] == "failed").then_some(c)
    })
    .await
}

/// Curation: messages queued for a model, which decides against the stored memories most like
/// them — a fact added with its entities, a stored one superseded, nonsense skipped — applied
/// to the request's scope only, with the cost reported per memory; a node killed mid-call
/// leaves the request to be finished after, writing nothing twice; a spent budget fails it.
async fn a_model_curates_memories_from_messages(b: Backend) {
    let (upstream, seen) = curating_upstream().await;
    let mut s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_LLM__PRICES__GPT-MOCK__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__GPT-MOCK__OUTPUT", "2.0"),
            ("STEWARD_MEMORY__CURATION_MODEL", "mock/gpt-mock"),
        ],
    )
    .await;
    let (st, denver) = s
        .post(
            "/api/v1/memories",
            json!({"scope": "user:jon", "text": "Jon lives in Denver"}),
        )
        .await;
    assert_eq!(st, 201, "{denver}");
    let denver = denver["memory"]["id"].as_str().unwrap().to_string();
    let id = curate(
        &s,
        "We moved to Austin last week! Miso the cat loves the yard.",
    )
    .await;
    let c = ended(&s, &id).await;
    assert_eq!(c["state"], "done", "{c}");
    assert_eq!(c["prompt"], "memory-curate.v2");
    let written = c["result"]["written"].as_array().unwrap().clone();
    assert_eq!(written.len(), 2, "{c}");
    assert_eq!(c["result"]["skipped"].as_array().unwrap().len(), 2, "{c}");
    let cost = c["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0, "{c}");
    assert_eq!(
        c["result"]["cost_usd_per_memory"].as_f64().unwrap(),
        cost / 2.0
    );
    let asked = seen.lock().unwrap()[0].clone();
    assert!(asked["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("You curate long-term memory"));
    assert!(
        asked["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains(&denver),
        "the stored memory is shown by id"
    );

    let (_, home) = search(&s, None, "where does Jon live", "user:jon").await;
    assert_eq!(texts(&home)[0], "Jon lives in Austin", "{home}");
    let (_, history) = s.get(&format!("/api/v1/memories/{denver}/history")).await;
    assert_eq!(
        history["versions"].as_array().unwrap().len(),
        2,
        "{history}"
    );
    assert_eq!(history["versions"][1]["source"]["curation"], id.as_str());
    let (_, pet) = s
        .post(
            "/api/v1/memories/search",
            json!({"query": "what pet does Jon have", "scopes": ["user:jon"], "method": "graph"}),
        )
        .await;
    assert_eq!(texts(&pet)[0], "Jon has a cat named Miso", "{pet}");

    // Killed while the model is thinking: taken up again after, its decisions applied once.
    let slow = curate(&s, "Speaking slowly now: we adopted a second cat, Biscuit.").await;
    eventually("the slow call to be in flight", || async {
        (seen.lock().unwrap().len() == 2).then_some(())
    })
    .await;
    s.kill9();
    s.spawn();
    let c = ended(&s, &slow).await;
    assert_eq!(c["state"], "done", "{c}");
    assert_eq!(c["attempts"], 2, "{c}");
    let (_, all) = s
        .post(
            "/api/v1/memories/search",
            json!({"query": "Biscuit", "scopes": ["user:jon"], "include_history": true, "method": "bm25"}),
        )
        .await;
    assert_eq!(
        texts(&all),
        ["Jon has a cat named Biscuit"],
        "written once: {all}"
    );

    // Its own budget account, spent: the request fails, saying why; nothing is written.
    let (st, r) = s
        .put(
            "/api/v1/budgets/agent:memory-curator",
            json!({"cap_usd": 0.0}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let parrot = curate(&s, "We also got a parrot.").await;
    let c = ended(&s, &parrot).await;
    assert_eq!(c["state"], "failed", "{c}");
    assert!(c["error"].as_str().unwrap().contains("budget"), "{c}");
    // The same from the CLI, which waits and says why.
    let file = s.dir.path().join("conversation.txt");
    std::fs::write(&file, "We also got a goldfish.").unwrap();
    let (ok, _, err) = cli(
        &s,
        &[
            "memory",
            "curate",
            "--scope",
            "user:jon",
            "--wait",
            file.to_str().unwrap(),
        ],
    );
    assert!(
        !ok && err.contains("failed") && err.contains("budget"),
        "{err}"
    );

    // Bad requests say what is wrong.
    for body in [
        json!({"scope": "user:jon", "messages": []}),
        json!({"scope": "user:jon", "messages": [{"role": "boss", "content": "x"}]}),
        json!({"scope": "user:jon", "messages": [{"role": "user", "content": ""}]}),
        json!({"scope": "galaxy:x", "messages": [{"role": "user", "content": "x"}]}),
        json!({"scope": "user:jon", "messages": [{"role": "user"}]}),
    ] {
        let (st, r) = s.post("/api/v1/memories/curate", body.clone()).await;
        assert_eq!(st, 400, "{body}: {r}");
    }
    let (st, _) = s.get("/api/v1/memories/curations/cur_nope").await;
    assert_eq!(st, 404);
}

both_backends!(memory_curation, a_model_curates_memories_from_messages);

/// Waits until the curating model has been asked `n` times (the latest call is in flight).
async fn calls_reached(seen: &Arc<Mutex<Vec<Value>>>, n: usize) {
    eventually("the model call to be in flight", || async {
        (seen.lock().unwrap().len() == n).then_some(())
    })
    .await
}

/// Every version in `scope` that mentions Biscuit, history included.
async fn biscuits(s: &TestServer, scope: &str) -> Vec<String> {
    let (_, r) = s
        .post(
            "/api/v1/memories/search",
            json!({"query": "Biscuit", "scopes": [scope], "include_history": true, "method": "bm25"}),
        )
        .await;
    texts(&r)
}

/// An agent's curation request is decided again when its decisions are about to be applied:
/// the agent suspended, or a policy forbidding the write, while the model was thinking fails
/// the request saying why, with nothing written; left alone, the same request is applied.
async fn a_curation_is_authorized_again_before_it_is_applied(b: Backend) {
    let (upstream, seen) = curating_upstream().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_MEMORY__CURATION_MODEL", "mock/gpt-mock"),
        ],
    )
    .await;
    s.apply(AGENTS).await;
    let alice = key_of(&s, "alice-bot", "alice").await;
    let scope = "agent:alice-bot";
    let request = |content: &str| {
        let (s, alice) = (&s, alice.clone());
        let body = json!({"scope": scope, "messages": [{"role": "user", "content": content}]});
        async move {
            let (st, c) = s.post_as(&alice, "/api/v1/memories/curate", body).await;
            assert_eq!(st, 202, "{c}");
            c["id"].as_str().unwrap().to_string()
        }
    };

    // Suspended while the model thinks: nothing is applied.
    let id = request("Speaking slowly: we adopted a cat, Biscuit.").await;
    calls_reached(&seen, 1).await;
    let (st, r) = s
        .post(
            "/api/v1/agents/alice-bot/suspend",
            json!({"reason": "audit"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let c = ended(&s, &id).await;
    assert_eq!(c["state"], "failed", "{c}");
    assert!(c["error"].as_str().unwrap().contains("suspended"), "{c}");
    assert!(biscuits(&s, scope).await.is_empty(), "nothing written");
    let (st, r) = s
        .post(
            "/api/v1/agents/alice-bot/resume",
            json!({"reason": "cleared"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");

    // A policy forbidding the write, put in place while the model thinks: refused, audited.
    let id = request("Speaking slowly: we adopted a cat, Biscuit.").await;
    calls_reached(&seen, 2).await;
    let (st, r) = s
        .put_policies(
            r#"forbid (principal == Steward::Agent::"alice-bot", action == Steward::Action::"memory.write", resource == Steward::Namespace::"agent:alice-bot");
permit (principal, action in [Steward::Action::"llm.call", Steward::Action::"tool.call"], resource);"#,
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let c = ended(&s, &id).await;
    assert_eq!(c["state"], "failed", "{c}");
    assert!(
        c["error"]
            .as_str()
            .unwrap()
            .contains("may not memory.write"),
        "{c}"
    );
    assert!(biscuits(&s, scope).await.is_empty(), "nothing written");
    let refused = audit_records(&s)
        .await
        .into_iter()
        .filter(|r| r["action"] == "memory.write" && r["decision"] == "deny")
        .count();
    assert!(refused >= 1, "the refusal is audited");

    // The same request with its authority unchanged is applied.
    let (st, r) = s
        .put_policies(
            r#"permit (principal, action in [Steward::Action::"llm.call", Steward::Action::"tool.call"], resource);"#,
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let id = request("Speaking slowly: we adopted a cat, Biscuit.").await;
    let c = ended(&s, &id).await;
    assert_eq!(c["state"], "done", "{c}");
    assert_eq!(biscuits(&s, scope).await, ["Jon has a cat named Biscuit"]);
}

both_backends!(
    memory_curation_reauthorized,
    a_curation_is_authorized_again_before_it_is_applied
);

/// A curation asked for through a delegation (alice-bot's grant to bob-bot) is decided again
/// link by link before it is applied: the grant revoked while the model thinks fails the
/// request saying so, with nothing written; a grant left in place is applied.
async fn a_delegated_curation_dies_with_its_grant(b: Backend) {
    let (upstream, seen) = curating_upstream().await;
    let s = TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_MEMORY__CURATION_MODEL", "mock/gpt-mock"),
        ],
    )
    .await;
    s.apply(AGENTS).await;
    let (st, r) = s
        .put_policies(
            r#"permit (principal, action in [Steward::Action::"memory.write", Steward::Action::"memory.read"], resource == Steward::Namespace::"collection:pets");
permit (principal == Steward::Agent::"alice-bot", action == Steward::Action::"agent.delegate", resource == Steward::Agent::"bob-bot");
permit (principal, action in [Steward::Action::"llm.call", Steward::Action::"tool.call"], resource);"#,
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let alice = key_of(&s, "alice-bot", "alice").await;
    let scope = "collection:pets";
    // alice-bot grants bob-bot; bob-bot asks with its own key and the grant.
    let grant = || async {
        let (st, d) = s
            .post_as(&alice, "/v1/delegations", json!({"to": "bob-bot"}))
            .await;
        assert_eq!(st, 201, "{d}");
        let (st, k) = s.post("/api/v1/keys", json!({"agent": "bob-bot"})).await;
        assert_eq!(st, 201, "{k}");
        (
            d["id"].as_str().unwrap().to_string(),
            format!(
                "{}|{}",
                k["key"].as_str().unwrap(),
                d["token"].as_str().unwrap()
            ),
        )
    };
    let request = |credential: String| {
        let s = &s;
        let body = json!({"scope": scope, "messages": [{"role": "user", "content": "Speaking slowly: we adopted a cat, Biscuit."}]});
        async move {
            let (st, c) = s
                .post_as(&credential, "/api/v1/memories/curate", body)
                .await;
            assert_eq!(st, 202, "{c}");
            c["id"].as_str().unwrap().to_string()
        }
    };

    let (link, bob) = grant().await;
    let id = request(bob.clone()).await;
    calls_reached(&seen, 1).await;
    let (st, r) = s
        .post(
            &format!("/api/v1/delegations/{link}/revoke"),
            json!({"reason": "bob moved teams"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let c = ended(&s, &id).await;
    assert_eq!(c["state"], "failed", "{c}");
    assert!(c["error"].as_str().unwrap().contains("revoked"), "{c}");
    assert!(biscuits(&s, scope).await.is_empty(), "nothing written");
    // The revoked grant cannot ask again.
    let (st, _) = s
        .post_as(
            &bob,
            "/api/v1/memories/curate",
            json!({"scope": scope, "messages": [{"role": "user", "content": "again"}]}),
        )
        .await;
    assert_eq!(st, 401);

    // A grant left in place: the same request is applied.
    let (_, bob) = grant().await;
    let id = request(bob).await;
    let c = ended(&s, &id).await;
    assert_eq!(c["state"], "done", "{c}");
    assert_eq!(biscuits(&s, scope).await, ["Jon has a cat named Biscuit"]);
}

both_backends!(
    memory_curation_delegated,
    a_delegated_curation_dies_with_its_grant
);

/// A mock curating model on loopback that answers every conversation with `facts`; its `/v1`
/// base URL and the requests it was sent.
async fn answering_upstream(facts: Value) -> (String, Arc<Mutex<Vec<Value>>>) {
    use axum::routing::post;
    use axum::Json;
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |Json(body): Json<Value>| {
            let (kept, facts) = (kept.clone(), facts.clone());
            async move {
                kept.lock().unwrap().push(body);
                Json(json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-mock",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": facts.to_string()}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}}))
            }
        }),
    );
    (serve(app).await, seen)
}

/// Entity resolution when curating: the model is shown the entities the related memories name
/// with their aliases; a name it gives that no entity is known by, but that means a known one
/// by its embedding ("Acme Corp" for "Acme Corporation"), joins that entity as an alias —
/// in the fact's entities and in its edges — instead of making a duplicate; a name that only
/// resembles one ("Ada Byron" beside "Ada Lovelace") stays an entity of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curation_merges_an_entity_named_another_way() {
    let model = std::env::var("STEWARD_TEST_MEMORY_MODEL").expect(
        "STEWARD_TEST_MEMORY_MODEL: a directory holding all-MiniLM-L6-v2 (run scripts/fetch-memory-model DIR)",
    );
    let (upstream, seen) = answering_upstream(json!({"facts": [
        {"action": "add", "text": "Acme Corp is opening an office in Lyon",
         "entities": ["Acme Corp", {"name": "Lyon", "aliases": ["Lyons"]}],
         "relations": [{"subject": "Acme Corp", "relation": "has_office_in", "object": "Lyon"}]},
        {"action": "add", "text": "Ada Byron mentors new hires at Acme",
         "entities": ["Ada Byron"],
         "relations": [{"subject": "Ada Byron", "relation": "mentors_at", "object": "Acme Corp"}]}
    ]}))
    .await;
    let s = TestServer::start_with(
        Backend::Sqlite,
        &[
            ("STEWARD_MEMORY__MODEL_DIR", &model),
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_LLM__PRICES__GPT-MOCK__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__GPT-MOCK__OUTPUT", "2.0"),
            ("STEWARD_MEMORY__CURATION_MODEL", "mock/gpt-mock"),
        ],
    )
    .await;
    let (st, r) = s
        .post(
            "/api/v1/memories",
            json!({"scope": "user:ada", "text": "Ada Lovelace works at Acme Corporation",
                "entities": [{"name": "Ada Lovelace", "kind": "person", "aliases": ["Ada"]}],
                "relations": [{"subject": "Ada Lovelace", "relation": "works_at", "object": "Acme Corporation"}]}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    eventually("the memory to be embedded", || async {
        let (_, r) = s
            .post(
                "/api/v1/memories/search",
                json!({"query": "employer", "scopes": ["user:ada"], "method": "vector", "limit": 1}),
            )
            .await;
        (!texts(&r).is_empty()).then_some(())
    })
    .await;
    let (st, c) = s
        .post(
            "/api/v1/memories/curate",
            json!({"scope": "user:ada", "messages": [{"role": "user",
                "content": "Ada says Acme Corp is opening an office in Lyon, and Ada Byron mentors the new hires."}]}),
        )
        .await;
    assert_eq!(st, 202, "{c}");
    let c = ended(&s, c["id"].as_str().unwrap()).await;
    assert_eq!(c["state"], "done", "{c}");
    assert_eq!(c["result"]["written"].as_array().unwrap().len(), 2, "{c}");
    let asked = seen.lock().unwrap()[0]["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        asked.contains("Known entities:\n") && asked.contains("- Ada Lovelace (also: Ada)"),
        "the known entities are shown with their aliases: {asked}"
    );

    let (ok, export, err) = cli(&s, &["memory", "export", "--scope", "user:ada"]);
    assert!(ok, "{err}");
    let entities: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l.get("entity").is_some())
        .collect();
    let named = |name: &str| -> Vec<Value> {
        entities
            .iter()
            .filter(|e| e["names"].as_array().unwrap().iter().any(|n| n == name))
            .cloned()
            .collect()
    };
    let acme = named("Acme Corp");
    assert_eq!(acme.len(), 1, "{export}");
    assert_eq!(
        acme[0]["name"], "Acme Corporation",
        "merged into the known one: {export}"
    );
    assert_eq!(named("Acme Corporation").len(), 1);
    assert_eq!(named("Lyons").len(), 1, "an alias the model gave is kept");
    let ada = named("Ada Byron");
    assert_eq!(ada.len(), 1, "{export}");
    assert_ne!(
        ada[0]["entity"],
        named("Ada Lovelace")[0]["entity"],
        "another person"
    );
    assert_eq!(
        entities.len(),
        4,
        "Ada Lovelace, Acme, Lyon, Ada Byron: {export}"
    );

    // The edge the model stated with the other name reaches the known entity: a question
    // about the company finds the new fact through the graph.
    let (_, r) = s
        .post(
            "/api/v1/memories/search",
            json!({"query": "Where does Acme Corporation have offices?", "scopes": ["user:ada"], "method": "graph"}),
        )
        .await;
    assert!(
        texts(&r).contains(&"Acme Corp is opening an office in Lyon".to_string()),
        "{r}"
    );
}
