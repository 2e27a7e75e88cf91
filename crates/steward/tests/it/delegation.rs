//! Delegated credentials through the real binary — the escalation battery. An agent with an API
//! key mints a biscuit token for a sub-agent, which mints a narrower one for the next: each hop
//! is checked, and a sub-agent widening its scope is refused. The whole chain is on every audit
//! record. Revoking a link cuts off every token below it at once (a token replayed after its
//! parent was revoked is refused); so does revoking the key that began the chain; expired,
//! forged, altered and truncated tokens are refused; acting for another agent's run, or for
//! another owner where the policy forbids it, is refused. Every refusal is audited.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use common::{Backend, TestServer};
use serde_json::{json, Value};

const MODEL: &str = "mock/gpt-mock";

async fn server(b: Backend) -> TestServer {
    let upstream = common::ok_upstream().await;
    TestServer::start_with(
        b,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_LLM__PRICES__GPT-MOCK__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__GPT-MOCK__OUTPUT", "2.0"),
            ("STEWARD_LLM__PRICES__OTHER__INPUT", "1.0"),
            ("STEWARD_LLM__PRICES__OTHER__OUTPUT", "2.0"),
        ],
    )
    .await
}

async fn send(s: &TestServer, path: &str, bearer: &str, body: Value) -> (u16, Value) {
    s.post_as(bearer, path, body).await
}

async fn call(s: &TestServer, bearer: &str, model: &str) -> (u16, Value) {
    send(
        s,
        "/v1/chat/completions",
        bearer,
        json!({"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await
}

/// Mints a token with `bearer` for `body.to`; returns the link's id and the holder's
/// credential: an API key of its own (made here) with the token (`key|token`).
async fn delegate(s: &TestServer, bearer: &str, body: Value) -> (String, String) {
    let (st, d) = send(s, "/v1/delegations", bearer, body.clone()).await;
    assert_eq!(st, 201, "{d}");
    let (st, k) = s
        .post(
            "/api/v1/keys",
            json!({"agent": body["to"].as_str().unwrap()}),
        )
        .await;
    assert_eq!(st, 201, "{k}");
    (
        d["id"].as_str().unwrap().to_string(),
        format!(
            "{}|{}",
            k["key"].as_str().unwrap(),
            d["token"].as_str().unwrap()
        ),
    )
}

/// The token of a `key|token` credential.
fn token(credential: &str) -> &str {
    credential.split_once('|').unwrap().1
}

async fn api_key(s: &TestServer, agent: &str, owner: &str) -> String {
    let (st, _) = s
        .post(
            &format!("/api/v1/agents/{agent}/resume"),
            json!({"reason": "registered", "owner": owner}),
        )
        .await;
    assert_eq!(st, 200);
    let (_, k) = s.post("/api/v1/keys", json!({"agent": agent})).await;
    k["key"].as_str().unwrap().to_string()
}

fn message(e: &Value) -> &str {
    e["error"]["message"].as_str().unwrap_or("")
}

async fn a_chain_narrows_hop_by_hop_and_is_on_every_record(b: Backend) {
    let s = server(b).await;
    let key = api_key(&s, "lead", "alice").await;

    let (helper_link, helper) = delegate(
        &s,
        &key,
        json!({"to": "helper", "actions": ["llm.call"], "models": [MODEL, "mock/other"],
               "budget_usd": 1.0, "ttl_s": 600}),
    )
    .await;
    assert_eq!(call(&s, &helper, MODEL).await.0, 200);
    let (intern_link, intern) = delegate(
        &s,
        &helper,
        json!({"to": "intern", "models": [MODEL], "budget_usd": 0.5}),
    )
    .await;
    let (st, r) = call(&s, &intern, MODEL).await;
    assert_eq!(st, 200, "{r}");
    // Inherited from the hop above: no tools, and nothing past its expiry.
    let (_, link) = s.get(&format!("/api/v1/delegations/{intern_link}")).await;
    assert_eq!(link["parent_id"], helper_link.as_str(), "{link}");
    assert_eq!(link["scope"]["actions"], json!(["llm.call"]), "{link}");
    assert!(
        link.get("token").is_none(),
        "a listed link never shows its token"
    );

    // The intern may not use what its own link left out, though the helper may.
    let (st, e) = call(&s, &intern, "mock/other").await;
    assert_eq!(st, 403, "{e}");
    assert!(
        message(&e).contains("does not allow calling mock/other"),
        "{e}"
    );
    assert_eq!(call(&s, &helper, "mock/other").await.0, 200);

    // Widening, in every dimension, is refused — and names what was asked beyond the grant.
    for (asked, says) in [
        (
            json!({"to": "intern", "models": [MODEL, "mock/big"]}),
            "mock/big",
        ),
        (
            json!({"to": "intern", "actions": ["llm.call", "tool.call"]}),
            "tool.call",
        ),
        (json!({"to": "intern", "budget_usd": 5.0}), "budget"),
        (json!({"to": "intern", "ttl_s": 86_400}), "expiry"),
    ] {
        let (st, e) = send(&s, "/v1/delegations", &helper, asked.clone()).await;
        assert_eq!(st, 403, "{asked} -> {e}");
        assert!(message(&e).contains(says), "{asked} -> {e}");
    }
    // Malformed requests are told what is wrong.
    for bad in [
        json!({"to": "intern", "actions": ["rm.rf"]}),
        json!({"to": "intern", "models": ["a b"]}),
        json!({"to": "not a name"}),
        json!({"to": "intern", "budget_usd": -1}),
        json!({"to": "intern", "ttl_s": 0}),
        json!({"to": "intern", "wizard": true}),
        json!({"models": [MODEL]}),
    ] {
        let (st, e) = send(&s, "/v1/delegations", &helper, bad.clone()).await;
        assert_eq!(st, 400, "{bad} -> {e}");
    }

    // A link's budget holds everyone below it.
    let (tiny_link, tiny) =
        delegate(&s, &helper, json!({"to": "intern", "budget_usd": 0.00001})).await;
    let (st, e) = call(&s, &tiny, MODEL).await;
    assert_eq!(st, 402, "{e}");
    assert!(
        message(&e).contains(&format!("delegation:{tiny_link}")),
        "{e}"
    );

    common::settled(&s).await;
    let records = common::audit_records(&s).await;
    let by_intern = records
        .iter()
        .find(|r| r["event"] == "syscall" && r["principal"] == "agent:intern")
        .expect("the intern's call is audited");
    assert_eq!(
        by_intern["chain"],
        json!(["user:alice", "agent:lead", "agent:helper", "agent:intern"]),
        "{by_intern}"
    );
    assert_eq!(
        by_intern["delegations"],
        json!([helper_link, intern_link]),
        "{by_intern}"
    );
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "delegation" && r["decision"] == "deny")
        .collect();
    assert_eq!(refused.len(), 4, "every widening is audited: {refused:?}");
    assert!(records.iter().any(|r| r["event"] == "decision"
        && r["decision"] == "deny"
        && r["resource"] == "mock/other"
        && r["principal"] == "agent:intern"));
    let granted = records
        .iter()
        .filter(|r| r["event"] == "delegation" && r["decision"] == "allow")
        .count();
    assert_eq!(granted, 3);
}
both_backends!(
    a_chain_narrows_hop_by_hop_and_is_on_every_record,
    a_chain_narrows_hop_by_hop_and_is_on_every_record
);

async fn revoking_a_link_cuts_off_everything_below(b: Backend) {
    let s = server(b).await;
    let (_, k) = s.post("/api/v1/keys", json!({"agent": "lead"})).await;
    let (key_id, key) = (
        k["id"].as_str().unwrap().to_string(),
        k["key"].as_str().unwrap().to_string(),
    );
    let (_, helper) = delegate(&s, &key, json!({"to": "helper"})).await;
    let (intern_link, intern) = delegate(&s, &helper, json!({"to": "intern"})).await;
    let (temp_link, temp) = delegate(&s, &intern, json!({"to": "temp"})).await;
    for t in [&helper, &intern, &temp] {
        assert_eq!(call(&s, t, MODEL).await.0, 200);
    }

    let (st, r) = s
        .post(
            &format!("/api/v1/delegations/{intern_link}/revoke"),
            json!({"reason": "intern left"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    let mut cut = vec![intern_link.clone(), temp_link.clone()];
    cut.sort();
    assert_eq!(r["revoked"], json!(cut));
    let (st, e) = call(&s, &intern, MODEL).await;
    assert_eq!(st, 401, "{e}");
    assert!(message(&e).contains("intern left"), "{e}");
    // Replayed after its parent was revoked: still signed correctly, still refused.
    let (st, e) = call(&s, &temp, MODEL).await;
    assert_eq!(st, 401, "{e}");
    assert!(message(&e).contains("revoked"), "{e}");
    // Nor can a cut-off token mint a way back in.
    let (st, _) = send(&s, "/v1/delegations", &temp, json!({"to": "temp2"})).await;
    assert_eq!(st, 401);
    assert_eq!(
        call(&s, &helper, MODEL).await.0,
        200,
        "the link above lives"
    );
    let (st, _) = s
        .post(
            "/api/v1/delegations/dlg_nope/revoke",
            json!({"reason": "x"}),
        )
        .await;
    assert_eq!(st, 404);

    // A suspended agent anywhere on the chain stops it; resumed, it works again.
    s.post("/api/v1/agents/helper/suspend", json!({"reason": "audit"}))
        .await;
    let (st, e) = call(&s, &helper, MODEL).await;
    assert_eq!(st, 403, "{e}");
    s.post("/api/v1/agents/helper/resume", json!({"reason": "ok"}))
        .await;
    assert_eq!(call(&s, &helper, MODEL).await.0, 200);

    // Expired.
    let (_, brief) = delegate(&s, &helper, json!({"to": "intern", "ttl_s": 1})).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (st, e) = call(&s, &brief, MODEL).await;
    assert_eq!(st, 401, "{e}");
    assert!(message(&e).contains("expired"), "{e}");

    // Revoking the key that began the chain cuts off the whole chain.
    s.post(
        &format!("/api/v1/keys/{key_id}/revoke"),
        json!({"reason": "rotated out"}),
    )
    .await;
    let (st, e) = call(&s, &helper, MODEL).await;
    assert_eq!(st, 401, "{e}");
    assert!(message(&e).contains("rotated out"), "{e}");

    let records = common::audit_records(&s).await;
    let refusals = records
        .iter()
        .filter(|r| r["event"] == "authentication" && r["decision"] == "deny")
        .count();
    assert!(refusals >= 6, "every refused token is audited: {refusals}");
    let revoke = records
        .iter()
        .find(|r| r["action"] == "delegation.revoke")
        .expect("the revocation is audited");
    assert!(
        revoke["error"].as_str().unwrap().contains(&temp_link),
        "{revoke}"
    );
}
both_backends!(
    revoking_a_link_cuts_off_everything_below,
    revoking_a_link_cuts_off_everything_below
);

async fn forged_altered_and_truncated_tokens_are_refused(b: Backend) {
    use biscuit_auth::{builder::BlockBuilder, KeyPair, UnverifiedBiscuit};
    use prost::Message;

    let s = server(b).await;
    let (_, k) = s.post("/api/v1/keys", json!({"agent": "lead"})).await;
    let key = k["key"].as_str().unwrap().to_string();
    let (helper_link, helper) = delegate(
        &s,
        &key,
        json!({"to": "helper", "models": [MODEL, "mock/other"]}),
    )
    .await;
    let (_, intern) = delegate(&s, &helper, json!({"to": "intern", "models": [MODEL]})).await;

    // Signed by someone else's key, naming a real link.
    let forged = biscuit_auth::Biscuit::builder()
        .code(format!("link(\"{helper_link}\"); holder(\"helper\");"))
        .unwrap()
        .build(&KeyPair::new())
        .unwrap()
        .to_base64()
        .unwrap();
    let intern_key = intern.split_once('|').unwrap().0.to_string();
    let with_key = |t: String| format!("{intern_key}|{t}");
    let intern = token(&intern).to_string();
    // Cut short, and altered in the middle.
    let cut = intern[..intern.len() - 12].to_string();
    let mut altered = intern.clone().into_bytes();
    let mid = altered.len() / 2;
    altered[mid] = if altered[mid] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    // The intern drops its own link, hoping to hold the helper's token.
    let truncated = {
        let raw = UnverifiedBiscuit::from_base64(&intern)
            .unwrap()
            .to_vec()
            .unwrap();
        let mut proto = biscuit_auth::format::schema::Biscuit::decode(raw.as_slice()).unwrap();
        proto.blocks.clear();
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE.encode(proto.encode_to_vec())
    };
    for (what, t) in [
        ("forged", with_key(forged)),
        ("cut", with_key(cut)),
        ("altered", with_key(altered)),
        ("truncated", with_key(truncated)),
        ("junk", with_key("not-a-token".to_string())),
    ] {
        let (st, e) = call(&s, &t, MODEL).await;
        assert_eq!(st, 401, "{what}: {e}");
    }

    // Offline attenuation by the holder is honoured, and can only narrow: the helper adds a
    // block of its own that allows only MODEL.
    let helper_key = helper.split_once('|').unwrap().0;
    let narrowed = UnverifiedBiscuit::from_base64(token(&helper))
        .unwrap()
        .append(
            BlockBuilder::new()
                .code(format!(
                    "link(\"{helper_link}\"); check if resource(\"model\", \"{MODEL}\");"
                ))
                .unwrap(),
        )
        .unwrap()
        .to_base64()
        .unwrap();
    let narrowed = format!("{helper_key}|{narrowed}");
    assert_eq!(call(&s, &narrowed, MODEL).await.0, 200);
    assert_eq!(call(&s, &narrowed, "mock/other").await.0, 403);
    assert_eq!(call(&s, &helper, "mock/other").await.0, 200);

    let refusals = common::audit_records(&s)
        .await
        .into_iter()
        .filter(|r| r["event"] == "authentication" && r["decision"] == "deny")
        .count();
    assert_eq!(refusals, 5, "each forged token is audited");
}
both_backends!(
    forged_altered_and_truncated_tokens_are_refused,
    forged_altered_and_truncated_tokens_are_refused
);

async fn another_owners_runs_and_principals_are_off_limits(b: Backend) {
    let s = server(b).await;
    let alice_key = api_key(&s, "lead", "alice").await;
    api_key(&s, "contractor", "bob").await;
    // A run of bob's agent.
    api_key(&s, "bobs-agent", "bob").await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: bobs-agent}\nspec:\n  model: scripted\n  script: [{content: hi}]\n").await;
    let bobs_run = s.start_run("bobs-agent", "go").await;

    // Alice's agent may not spend as, or write into the record of, bob's run.
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(&alice_key)
        .header("X-Steward-Run", &bobs_run)
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let e: Value = r.json().await.unwrap();
    assert!(message(&e).contains("bobs-agent"), "{e}");

    // Owners are in every policy decision: here, no agent may act for another owner.
    let (st, e) = s.put_policies(r#"
@id("models") permit (principal, action in [Steward::Action::"llm.call", Steward::Action::"agent.delegate"], resource);
@id("only-for-its-own-owner")
forbid (principal, action, resource) unless { principal.owner == context.on_behalf_of };
"#,
    )
    .await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(call(&s, &alice_key, MODEL).await.0, 200);
    let (_, for_bob) = delegate(&s, &alice_key, json!({"to": "contractor"})).await;
    let (st, e) = call(&s, &for_bob, MODEL).await;
    assert_eq!(st, 403, "{e}");
    assert!(message(&e).contains("only-for-its-own-owner"), "{e}");

    let records = common::audit_records(&s).await;
    assert!(records.iter().any(|r| r["decision"] == "deny"
        && r["resource"] == format!("run:{bobs_run}")
        && r["principal"] == "agent:lead"));
    let denied = records
        .iter()
        .find(|r| r["decision"] == "deny" && r["principal"] == "agent:contractor")
        .expect("the cross-owner call is audited");
    assert_eq!(denied["policy_ids"], json!(["only-for-its-own-owner"]));
    assert_eq!(
        denied["chain"],
        json!(["user:alice", "agent:lead", "agent:contractor"])
    );
}
both_backends!(
    another_owners_runs_and_principals_are_off_limits,
    another_owners_runs_and_principals_are_off_limits
);

/// Two nodes on one PostgreSQL, sharing the vault key: a token minted on one is honoured by
/// the other, and a revocation on one reaches the other within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_revocations_hold_across_nodes() {
    let upstream = common::ok_upstream().await;
    let vault_key = "ab".repeat(32);
    let a = TestServer::start_with(
        Backend::Postgres,
        &[
            ("STEWARD_LLM__PROVIDERS__MOCK__KIND", "openai"),
            ("STEWARD_LLM__PROVIDERS__MOCK__BASE_URL", &upstream),
            ("STEWARD_VAULT_KEY", &vault_key),
        ],
    )
    .await;
    let b = TestServer::join(&a);
    let (_, k) = a.post("/api/v1/keys", json!({"agent": "lead"})).await;
    let (link, token) = delegate(&a, k["key"].as_str().unwrap(), json!({"to": "helper"})).await;
    assert_eq!(call(&b, &token, "mock/m").await.0, 200);
    let (st, _) = a
        .post(
            &format!("/api/v1/delegations/{link}/revoke"),
            json!({"reason": "done"}),
        )
        .await;
    assert_eq!(st, 200);
    common::eventually("the other node refuses the revoked token", || async {
        (call(&b, &token, "mock/m").await.0 == 401).then_some(())
    })
    .await;
}

/// A managed run delegates too: `spawn_agent` may grant the child fewer tools (or models, or a
/// budget); the child may use nothing beyond the grant, may not grant its own children more,
/// and revoking the grant stops the child's next step.
async fn a_run_grants_its_child_less_than_it_holds(b: Backend) {
    let s = TestServer::start(b).await;
    // The worker's manifest lists three tools; its parent grants it one, plus spawn_agent.
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: worker}\nspec:\n  model: scripted\n  tools: [echo, scratchpad_set, spawn_agent]\n  script:\n    - toolCalls: [{name: echo, arguments: {x: 1}}]\n    - toolCalls: [{name: scratchpad_set, arguments: {key: k, value: v}}]\n    - toolCalls: [{name: spawn_agent, arguments: {agent: sub, input: x, tools: [echo, scratchpad_set]}}]\n    - toolCalls: [{name: spawn_agent, arguments: {agent: sub, input: x, tools: [echo]}}]\n    - {delayMs: 1500, toolCalls: [{name: echo, arguments: {x: 2}}]}\n    - content: worker done\n").await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: sub}\nspec:\n  model: scripted\n  tools: [echo]\n  script: [{content: sub done}]\n").await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: boss}\nspec:\n  model: scripted\n  tools: [spawn_agent]\n  script:\n    - toolCalls: [{name: spawn_agent, arguments: {agent: worker, input: go, tools: [echo, spawn_agent]}}]\n    - content: boss done\n").await;
    let boss = s.start_run("boss", "go").await;
    let worker = common::eventually("the worker run", || async {
        let (_, runs) = s.get("/api/v1/runs?agent=worker").await;
        runs["runs"][0]["id"].as_str().map(str::to_string)
    })
    .await;
    // While the worker thinks, its grant is revoked: its next tool call is refused.
    common::eventually("the worker's spawns are done", || async {
        let tools = s
            .journal(&worker)
            .await
            .into_iter()
            .filter(|e| e["phase"] == "outcome" && e["kind"] == "tool")
            .count();
        (tools >= 4).then_some(())
    })
    .await;
    let (st, r) = s
        .post(
            &format!("/api/v1/delegations/run:{worker}/revoke"),
            json!({"reason": "task reassigned"}),
        )
        .await;
    assert_eq!(st, 200, "{r}");
    assert_eq!(s.wait_run(&boss).await["state"], "succeeded");
    // Its next model turn is refused too, which ends it.
    let (_, w) = s.get(&format!("/api/v1/runs/{worker}")).await;
    assert_eq!(w["state"], "failed", "{w}");

    let tools: Vec<Value> = s
        .journal(&worker)
        .await
        .into_iter()
        .filter(|e| e["phase"] == "outcome" && e["kind"] == "tool")
        .collect();
    let ok: Vec<bool> = tools.iter().map(|t| t["ok"] == true).collect();
    assert_eq!(ok, [true, false, false, true, false], "{tools:#?}");
    assert!(
        tools[1]["body"].to_string().contains("outside what run"),
        "{}",
        tools[1]
    );
    assert!(
        tools[2]["body"].to_string().contains("scratchpad_set"),
        "{}",
        tools[2]
    );
    assert!(
        tools[4]["body"].to_string().contains("task reassigned"),
        "{}",
        tools[4]
    );
    let (_, link) = s.get(&format!("/api/v1/delegations/run:{worker}")).await;
    assert_eq!(link["issuer"], "boss", "{link}");
    assert_eq!(
        link["scope"]["tools"],
        json!(["echo", "spawn_agent"]),
        "{link}"
    );
}
both_backends!(
    a_run_grants_its_child_less_than_it_holds,
    a_run_grants_its_child_less_than_it_holds
);

/// A grant's budget bounds the child's model calls: a worst case that does not fit is refused,
/// naming the grant's account; a child granted enough runs.
async fn a_granted_budget_bounds_the_child(b: Backend) {
    let s = server(b).await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: priced}\nspec:\n  model: mock/gpt-mock\n").await;
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: boss}\nspec:\n  model: scripted\n  tools: [spawn_agent]\n  script:\n    - toolCalls: [{name: spawn_agent, arguments: {agent: priced, input: hi, budget_usd: 0.00000001}}]\n    - toolCalls: [{name: spawn_agent, arguments: {agent: priced, input: hi, budget_usd: 1}}]\n    - content: boss done\n").await;
    let boss = s.start_run("boss", "go").await;
    assert_eq!(s.wait_run(&boss).await["state"], "succeeded");
    let (_, runs) = s.get("/api/v1/runs?agent=priced").await;
    let mut runs = runs["runs"].as_array().unwrap().clone();
    runs.sort_by_key(|r| r["created_at"].as_i64());
    assert_eq!(runs.len(), 2);
    let starved = &runs[0];
    assert_eq!(starved["error"]["code"], "budget_exceeded", "{starved}");
    let id = starved["id"].as_str().unwrap();
    assert!(
        starved["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("delegation:run:{id}")),
        "{starved}"
    );
    assert_eq!(runs[1]["state"], "succeeded", "{}", runs[1]);
}
both_backends!(
    a_granted_budget_bounds_the_child,
    a_granted_budget_bounds_the_child
);

/// A token is usable only by the agent it names, with that agent's own key: not by the agent
/// that minted it, not by anyone who copied it, not alone.
async fn a_token_is_bound_to_its_holder(b: Backend) {
    let s = server(b).await;
    let a_key = api_key(&s, "a", "alice").await;
    let b_key = api_key(&s, "b", "alice").await;
    let c_key = api_key(&s, "c", "alice").await;
    let (st, d) = send(&s, "/v1/delegations", &a_key, json!({"to": "b"})).await;
    assert_eq!(st, 201, "{d}");
    let t = d["token"].as_str().unwrap();
    // The minter using the token it minted for b, a bystander with a copy, the token alone.
    for (who, cred) in [
        ("the minter", format!("{a_key}|{t}")),
        ("a bystander", format!("{c_key}|{t}")),
    ] {
        let (st, e) = call(&s, &cred, MODEL).await;
        assert_eq!(st, 403, "{who}: {e}");
        assert!(message(&e).contains("minted for agent b"), "{who}: {e}");
        let (st, _) = send(&s, "/v1/delegations", &cred, json!({"to": "c"})).await;
        assert_eq!(st, 403, "{who} may not mint below it");
    }
    let (st, e) = call(&s, t, MODEL).await;
    assert_eq!(st, 401, "{e}");
    assert!(message(&e).contains("X-Steward-Delegation"), "{e}");
    // Its holder, with its own key.
    assert_eq!(call(&s, &format!("{b_key}|{t}"), MODEL).await.0, 200);

    // A worker may not complete another agent's leased task with a token minted "for" it.
    let (st, e) = s.put_policies(r#"@id("work") permit (principal, action in [Steward::Action::"llm.call", Steward::Action::"agent.delegate", Steward::Action::"task.enqueue", Steward::Action::"task.lease"], resource);"#,
    )
    .await;
    assert_eq!(st, 200, "{e}");
    let (st, e) = s
        .post_as(&b_key, "/api/v1/queues/jobs/tasks", json!({"payload": "x"}))
        .await;
    assert_eq!(st, 201, "{e}");
    let (st, lease) = s
        .post_as(&b_key, "/api/v1/queues/jobs/lease", json!({"worker": "b"}))
        .await;
    assert_eq!(st, 200, "{lease}");
    let (_, d) = send(&s, "/v1/delegations", &a_key, json!({"to": "b"})).await;
    let as_b = format!("{a_key}|{}", d["token"].as_str().unwrap());
    let (st, e) = s
        .post_as(&as_b, "/api/v1/queues/jobs/lease", json!({"worker": "b"}))
        .await;
    assert_eq!(st, 403, "{e}");

    let records = common::audit_records(&s).await;
    let refused = records
        .iter()
        .filter(|r| r["event"] == "authentication" && r["decision"] == "deny")
        .count();
    assert!(refused >= 5, "each misuse is audited: {refused}");
}
both_backends!(
    a_token_is_bound_to_its_holder,
    a_token_is_bound_to_its_holder
);

/// A delegated call carries no more authority than every agent on its chain holds: an agent
/// the policy refuses gains nothing by delegating to one it permits, and minting is itself
/// decided (`agent.delegate`) and audited.
async fn every_agent_on_a_chain_is_decided(b: Backend) {
    let s = server(b).await;
    let lowly = api_key(&s, "lowly", "alice").await;
    let vip = api_key(&s, "vip", "alice").await;
    let (st, e) = s.put_policies(r#"
@id("vip-calls") permit (principal == Steward::Agent::"vip", action == Steward::Action::"llm.call", resource);
@id("anyone-delegates") permit (principal, action == Steward::Action::"agent.delegate", resource);
@id("never-to-root") forbid (principal, action == Steward::Action::"agent.delegate", resource == Steward::Agent::"root");
@id("queues") permit (principal == Steward::Agent::"vip", action in [Steward::Action::"task.enqueue", Steward::Action::"task.lease"], resource);
"#,
    )
    .await;
    assert_eq!(st, 200, "{e}");
    assert_eq!(call(&s, &lowly, MODEL).await.0, 403);
    assert_eq!(call(&s, &vip, MODEL).await.0, 200);
    // lowly delegates to vip: the token's calls are lowly's authority too, and lowly has none.
    let (_, d) = send(&s, "/v1/delegations", &lowly, json!({"to": "vip"})).await;
    let under_lowly = format!("{vip}|{}", d["token"].as_str().unwrap());
    let (st, e) = call(&s, &under_lowly, MODEL).await;
    assert_eq!(st, 403, "{e}");
    assert!(message(&e).contains("lowly"), "{e}");
    let (st, e) = s
        .post_as(
            &under_lowly,
            "/api/v1/queues/jobs/tasks",
            json!({"payload": "x"}),
        )
        .await;
    assert_eq!(st, 403, "{e}");
    assert!(message(&e).contains("lowly"), "{e}");
    // vip delegating to lowly does not make lowly a vip either: each link is decided.
    let (_, d) = send(&s, "/v1/delegations", &vip, json!({"to": "lowly"})).await;
    let under_vip = format!("{lowly}|{}", d["token"].as_str().unwrap());
    let (st, e) = call(&s, &under_vip, MODEL).await;
    assert_eq!(st, 403, "{e}");
    // Minting is decided: a forbid on delegating to root holds.
    let (st, e) = send(&s, "/v1/delegations", &vip, json!({"to": "root"})).await;
    assert_eq!(st, 403, "{e}");
    assert!(message(&e).contains("never-to-root"), "{e}");
    // Without a permit, nothing is minted.
    let (st, e) = s
        .put_policies(
            r#"@id("calls") permit (principal, action == Steward::Action::"llm.call", resource);"#,
        )
        .await;
    assert_eq!(st, 200, "{e}");
    let (st, e) = send(&s, "/v1/delegations", &vip, json!({"to": "lowly"})).await;
    assert_eq!(st, 403, "{e}");
    assert!(message(&e).contains("agent.delegate"), "{e}");

    let records = common::audit_records(&s).await;
    let denied: Vec<&Value> = records
        .iter()
        .filter(|r| r["action"] == "agent.delegate" && r["decision"] == "deny")
        .collect();
    assert_eq!(denied.len(), 2, "{denied:?}");
    assert_eq!(denied[0]["policy_ids"], json!(["never-to-root"]));
    assert!(records.iter().any(|r| r["action"] == "agent.delegate"
        && r["decision"] == "allow"
        && r["policy_ids"] == json!(["anyone-delegates"])));
}
both_backends!(
    every_agent_on_a_chain_is_decided,
    every_agent_on_a_chain_is_decided
);

/// Agents with no recorded owner share nothing: neither may attach its calls to the other's
/// runs.
async fn no_owner_matches_no_owner(b: Backend) {
    let s = server(b).await;
    let (_, k) = s.post("/api/v1/keys", json!({"agent": "stray"})).await;
    let stray = k["key"].as_str().unwrap().to_string();
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: loner}\nspec:\n  model: scripted\n  script: [{content: hi}]\n").await;
    let run = s.start_run("loner", "go").await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.url))
        .bearer_auth(&stray)
        .header("X-Steward-Run", &run)
        .json(&json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}
both_backends!(no_owner_matches_no_owner, no_owner_matches_no_owner);
