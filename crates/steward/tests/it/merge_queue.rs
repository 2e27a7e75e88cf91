//! The merge queue on a real git repository, through the real binary, on SQLite and
//! PostgreSQL: branches are rebased and land in order after their check passes in a sandbox
//! on the result (or land as merge commits where the repository asks for that); one that conflicts with what landed before it is routed to a human (an incident); one
//! whose check fails is refused with the check's output; a conflict with the target is caught
//! at submission. Path leases keep agents off each other's files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::path::Path;
use std::process::Command;

use common::{Backend, TestServer};
use serde_json::{json, Value};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A branch off `main` as it was at the start, with `file` set to `text`.
fn branch(dir: &Path, name: &str, file: &str, text: &str) {
    git(dir, &["checkout", "-q", "-b", name, "start"]);
    std::fs::write(dir.join(file), text).unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", name]);
    git(dir, &["checkout", "-q", "main"]);
}

/// A git repository in the server's directory: `main` with one commit, tagged `start`.
fn new_repo(s: &TestServer) -> std::path::PathBuf {
    let repo = s.dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(repo.join("a.txt"), "one\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "start"]);
    git(&repo, &["tag", "start"]);
    repo
}

async fn put_repo(s: &TestServer, name: &str, body: Value) -> (u16, Value) {
    s.put(&format!("/api/v1/repos/{name}"), body).await
}

async fn branches_land_in_order_and_conflicts_go_to_a_human(b: Backend) {
    let s = TestServer::start(b).await;
    let repo = new_repo(&s);
    branch(&repo, "feat-b", "b.txt", "bee\n");
    // feat-b has two commits: both are replayed, in order.
    git(&repo, &["checkout", "-q", "feat-b"]);
    std::fs::write(repo.join("c.txt"), "sea\n").unwrap();
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "feat-b too"]);
    git(&repo, &["checkout", "-q", "main"]);
    branch(&repo, "edit-a", "a.txt", "two\n");
    branch(&repo, "edit-a-again", "a.txt", "three\n");
    branch(&repo, "breaks", "FAIL", "x\n");
    let path = repo.to_str().unwrap();

    for (body, want) in [
        (
            json!({"path": "/nowhere/at/all", "target": "main", "check": "true"}),
            400,
        ),
        (
            json!({"path": path, "target": "trunk", "check": "true"}),
            400,
        ),
        (
            json!({"path": "relative", "target": "main", "check": "true"}),
            400,
        ),
        (json!({"path": path, "target": "main"}), 400),
        (
            json!({"path": path, "target": "main", "check": "true", "strategy": "squash"}),
            400,
        ),
    ] {
        let (st, r) = put_repo(&s, "app", body.clone()).await;
        assert_eq!(st, want, "{body}: {r}");
    }
    let (st, r) = put_repo(&s, "app", json!({"path": path, "target": "main", "check": "hostname; test ! -e FAIL && test -f a.txt"})).await;
    assert_eq!(st, 200, "{r}");
    for (body, want) in [
        (json!({"branch": "-x", "submitter": "a"}), 400),
        (json!({"branch": "nope", "submitter": "a"}), 400),
        (json!({"branch": "feat-b"}), 400),
    ] {
        let (st, r) = s.post("/api/v1/repos/app/submissions", body.clone()).await;
        assert_eq!(st, want, "{body}: {r}");
    }
    let (st, _) = s
        .post(
            "/api/v1/repos/ghost/submissions",
            json!({"branch": "feat-b", "submitter": "a"}),
        )
        .await;
    assert_eq!(st, 404);

    let mut ids = Vec::new();
    for (branch, who) in [
        ("feat-b", "alice"),
        ("edit-a", "bob"),
        ("edit-a-again", "carol"),
        ("breaks", "dave"),
    ] {
        let (st, r) = s
            .post(
                "/api/v1/repos/app/submissions",
                json!({"branch": branch, "submitter": who}),
            )
            .await;
        assert_eq!((st, r["state"].as_str()), (201, Some("queued")), "{r}");
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    let subs = common::eventually("every submission decided", || async {
        let (_, r) = s.get("/api/v1/repos/app/submissions").await;
        let subs = r["submissions"].as_array()?.clone();
        subs.iter()
            .all(|x| !["queued", "checking"].contains(&x["state"].as_str().unwrap()))
            .then_some(subs)
    })
    .await;
    let states: Vec<&str> = subs.iter().map(|x| x["state"].as_str().unwrap()).collect();
    assert_eq!(
        states,
        ["landed", "landed", "conflict", "failed"],
        "{subs:?}"
    );
    assert!(
        subs[2]["detail"].as_str().unwrap().contains("a.txt"),
        "{}",
        subs[2]
    );
    let failed = subs[3]["detail"].as_str().unwrap();
    assert!(
        failed.contains("check failed") && failed.contains("sandbox"),
        "checked in a sandbox: {failed}"
    );
    // main holds what landed, in order, and nothing else.
    assert_eq!(git(&repo, &["show", "main:a.txt"]), "two\n");
    assert_eq!(git(&repo, &["show", "main:b.txt"]), "bee\n");
    assert!(
        Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["cat-file", "-e", "main:FAIL"])
            .status()
            .unwrap()
            .code()
            != Some(0)
    );
    // Rebased: a line of the branches' own commits, in order, authors kept, no merges.
    let log = git(&repo, &["log", "--format=%s|%an|%cn|%p", "main"]);
    let lines: Vec<(&str, &str, &str, usize)> = log
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            (f[0], f[1], f[2], f[3].split_whitespace().count())
        })
        .collect();
    assert_eq!(
        lines,
        [
            ("edit-a", "t", "Steward merge queue", 1),
            ("feat-b too", "t", "Steward merge queue", 1),
            ("feat-b", "t", "Steward merge queue", 1),
            ("start", "t", "t", 0),
        ],
        "{log}"
    );
    assert_eq!(git(&repo, &["show", "main:c.txt"]), "sea\n");
    assert_eq!(
        subs[1]["merged"].as_str().unwrap(),
        git(&repo, &["rev-parse", "main"]).trim()
    );
    // The conflict went to a human.
    let (_, inc) = s.get("/api/v1/incidents?state=open").await;
    let i = inc["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["supervisor"] == "merge:app")
        .cloned()
        .unwrap();
    assert!(
        i["reason"].as_str().unwrap().contains("edit-a-again"),
        "{i}"
    );
    // Submitted again, it conflicts with main at once.
    let (_, r) = s
        .post(
            "/api/v1/repos/app/submissions",
            json!({"branch": "edit-a-again", "submitter": "carol"}),
        )
        .await;
    assert_eq!(r["state"], "conflict", "{r}");
    // With a resolver agent, a conflict becomes its run instead.
    s.apply("apiVersion: steward.dev/v1\nkind: Agent\nmetadata: {name: fixer}\nspec:\n  model: scripted\n  script:\n    - {content: resolved}\n")
        .await;
    let (st, _) = put_repo(
        &s,
        "app",
        json!({"path": path, "target": "main", "check": "true", "resolver": "ghost"}),
    )
    .await;
    assert_eq!(st, 404, "the resolver must exist");
    let (st, _) = put_repo(
        &s,
        "app",
        json!({"path": path, "target": "main", "check": "true", "resolver": "fixer"}),
    )
    .await;
    assert_eq!(st, 200);
    let (_, r) = s
        .post(
            "/api/v1/repos/app/submissions",
            json!({"branch": "edit-a-again", "submitter": "carol"}),
        )
        .await;
    assert!(
        r["detail"].as_str().unwrap().contains("routed to fixer"),
        "{r}"
    );
    // A repository that asks for merge commits gets one per submission.
    branch(&repo, "feat-d", "d.txt", "dee\n");
    let (st, r) = put_repo(
        &s,
        "app",
        json!({"path": path, "target": "main", "check": "true", "strategy": "merge"}),
    )
    .await;
    assert_eq!((st, r["strategy"].as_str()), (200, Some("merge")), "{r}");
    let (_, r) = s
        .post(
            "/api/v1/repos/app/submissions",
            json!({"branch": "feat-d", "submitter": "erin"}),
        )
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let landed = common::eventually("feat-d decided", || async {
        let (_, r) = s.get("/api/v1/repos/app/submissions").await;
        r["submissions"]
            .as_array()?
            .iter()
            .find(|x| {
                x["id"] == id.as_str()
                    && !["queued", "checking"].contains(&x["state"].as_str().unwrap())
            })
            .cloned()
    })
    .await;
    assert_eq!(landed["state"], "landed", "{landed}");
    let parents = git(&repo, &["log", "-1", "--format=%p|%s", "main"]);
    assert!(
        parents
            .split('|')
            .next()
            .unwrap()
            .split_whitespace()
            .count()
            == 2
            && parents.contains("Merge feat-d"),
        "{parents}"
    );
    let (_, runs) = s.get("/api/v1/runs?agent=fixer").await;
    let fix = &runs["runs"][0];
    assert!(
        fix["input"].as_str().unwrap().contains("edit-a-again")
            && fix["input"].as_str().unwrap().contains("a.txt"),
        "{fix}"
    );

    // Path leases: a directory covers what is below it; all or none; released, free again.
    let lease = |holder: &str, paths: Value| {
        let s = &s;
        let body = json!({"holder": holder, "paths": paths, "ttl_ms": 60000});
        async move { s.post("/api/v1/repos/app/leases", body).await }
    };
    assert_eq!(lease("alice", json!(["src"])).await.0, 200);
    let (st, r) = lease("bob", json!(["docs", "src/lib.rs"])).await;
    assert_eq!(st, 409, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("leased by alice"),
        "{r}"
    );
    let (_, held) = s.get("/api/v1/repos/app/leases").await;
    assert_eq!(
        held["leases"].as_array().unwrap().len(),
        1,
        "nothing of bob's was taken: {held}"
    );
    assert_eq!(lease("bob", json!(["docs"])).await.0, 200);
    let (st, _) = s
        .post(
            "/api/v1/repos/app/leases/release",
            json!({"holder": "alice"}),
        )
        .await;
    assert_eq!(st, 204);
    assert_eq!(lease("bob", json!(["src/lib.rs"])).await.0, 200);
    let (st, _) = lease("carol", json!(["../etc"])).await;
    assert_eq!(st, 400);
}

both_backends!(
    merge_queue_on,
    branches_land_in_order_and_conflicts_go_to_a_human
);

async fn submit(s: &TestServer, branch: &str) -> String {
    let (st, r) = s
        .post(
            "/api/v1/repos/app/submissions",
            json!({"branch": branch, "submitter": "a"}),
        )
        .await;
    assert_eq!(st, 201, "{r}");
    r["id"].as_str().unwrap().to_string()
}

/// Submission `id` of `repo`, once its check has decided it.
async fn decided(s: &TestServer, repo: &str, id: &str) -> Value {
    common::eventually(&format!("submission {id} decided"), || async {
        let (_, r) = s.get(&format!("/api/v1/repos/{repo}/submissions")).await;
        r["submissions"]
            .as_array()?
            .iter()
            .find(|x| {
                x["id"] == id && !["queued", "checking"].contains(&x["state"].as_str().unwrap())
            })
            .cloned()
    })
    .await
}

/// kill -9 in the middle of a check, and again just after the target ref moved: the node
/// starting again takes its own dead check back at once (not after a timeout), clears the
/// worktree it left, and lands each branch exactly once.
async fn a_crashed_check_is_taken_back_and_lands_once(b: Backend) {
    // A git that, while `stall` exists, hangs just after moving a ref: a crash lands there.
    let tools = tempfile::tempdir().unwrap();
    let stall = tools.path().join("stall");
    std::fs::write(
        tools.path().join("git"),
        "#!/bin/sh\nPATH=\"${PATH#*:}\"\ngit \"$@\"; rc=$?\nif [ $rc -eq 0 ] && [ \"$3\" = update-ref ] && [ -e \"$MQ_STALL\" ]; then touch \"$MQ_STALL.hit\"; sleep 60; fi\nexit $rc\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", tools.path().join("git").to_str().unwrap()])
        .status()
        .unwrap();
    let path = format!(
        "{}:{}",
        tools.path().display(),
        std::env::var("PATH").unwrap()
    );
    let mut s =
        TestServer::start_with(b, &[("PATH", &path), ("MQ_STALL", stall.to_str().unwrap())]).await;
    let repo = new_repo(&s);
    branch(&repo, "slow", "s.txt", "ess\n");
    branch(&repo, "feat", "f.txt", "eff\n");
    let (st, r) = put_repo(
        &s,
        "app",
        json!({"path": repo.to_str().unwrap(), "target": "main", "check": "sleep 2", "strategy": "merge"}),
    )
    .await;
    assert_eq!(st, 200, "{r}");
    // Killed while the check runs.
    let slow = submit(&s, "slow").await;
    common::eventually("the check started", || async {
        let (_, r) = s.get("/api/v1/repos/app/submissions").await;
        (r["submissions"][0]["state"] == "checking").then_some(())
    })
    .await;
    s.kill9();
    s.spawn();
    let landed = decided(&s, "app", &slow).await;
    assert_eq!(landed["state"], "landed", "{landed}");
    let worktrees = git(&repo, &["worktree", "list", "--porcelain"]);
    assert_eq!(
        worktrees.matches("worktree ").count(),
        1,
        "the dead check's worktree is gone: {worktrees}"
    );

    // Killed after the target moved and before the landing was recorded.
    std::fs::write(&stall, "").unwrap();
    let feat = submit(&s, "feat").await;
    let hit = std::path::PathBuf::from(format!("{}.hit", stall.display()));
    common::eventually("the target ref moved", || async {
        hit.exists().then_some(())
    })
    .await;
    s.kill9();
    std::fs::remove_file(&stall).unwrap();
    s.spawn();
    let landed = decided(&s, "app", &feat).await;
    assert_eq!(landed["state"], "landed", "{landed}");
    assert_eq!(
        landed["merged"].as_str().unwrap(),
        git(&repo, &["rev-parse", "main"]).trim()
    );
    let merges = git(&repo, &["log", "--merges", "--format=%s", "main"]);
    assert_eq!(
        merges
            .lines()
            .filter(|l| l.starts_with("Merge feat "))
            .count(),
        1,
        "feat landed once: {merges}"
    );
    assert_eq!(git(&repo, &["show", "main:f.txt"]), "eff\n");
}

both_backends!(
    a_crashed_check_on,
    a_crashed_check_is_taken_back_and_lands_once
);
