//! The merge queue and path leases.

use crate::support::*;

on_both_backends!(
    the_merge_queue_checks_one_at_a_time_in_order_and_fences_lost_checks,
    path_leases_are_all_or_none_and_cover_what_lies_below
);

fn submission(id: &str, repo: &str, at: i64) -> SubmissionRecord {
    SubmissionRecord {
        id: id.into(),
        repo: repo.into(),
        branch: format!("feature/{id}"),
        submitter: "agent:dev".into(),
        state: "queued".into(),
        detail: None,
        merged: None,
        created_at: at,
        updated_at: at,
        attempts: 0,
    }
}

async fn the_merge_queue_checks_one_at_a_time_in_order_and_fences_lost_checks(s: &dyn Store) {
    let repo = RepoRecord {
        name: "app".into(),
        path: "/srv/app".into(),
        target: "main".into(),
        check_cmd: "make test".into(),
        resolver: None,
        strategy: "rebase".into(),
    };
    s.put_repo(&repo, 1).await.unwrap();
    assert_eq!(s.get_repo("app").await.unwrap().as_ref(), Some(&repo));
    // Putting it again replaces it.
    let merged = RepoRecord {
        strategy: "merge".into(),
        resolver: Some("fixer".into()),
        ..repo.clone()
    };
    s.put_repo(&merged, 2).await.unwrap();
    assert_eq!(s.list_repos().await.unwrap(), vec![merged]);
    assert!(s.get_repo("nope").await.unwrap().is_none());

    for (id, at) in [("s2", 20), ("s1", 10), ("s3", 30)] {
        s.add_submission(&submission(id, "app", at)).await.unwrap();
    }
    // An id is one submission.
    assert!(s
        .add_submission(&submission("s1", "app", 99))
        .await
        .is_err());
    let order: Vec<String> = s
        .list_submissions("app")
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(order, ["s1", "s2", "s3"]);

    // The oldest first, one at a time per repository, whoever asks.
    let first = s
        .claim_submission("app", "n1", 100, 200)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (first.id.as_str(), first.state.as_str(), first.attempts),
        ("s1", "checking", 1)
    );
    assert!(s
        .claim_submission("app", "n2", 110, 210)
        .await
        .unwrap()
        .is_none());
    assert!(s.renew_check("s1", "n1", 1, 300).await.unwrap());
    assert!(
        !s.renew_check("s1", "n2", 1, 300).await.unwrap(),
        "not n2's check"
    );
    assert!(
        !s.renew_check("s1", "n1", 2, 300).await.unwrap(),
        "not this attempt"
    );
    // A lease that ran out goes back to the queue and the check begins again, fenced: the
    // first checker can no longer renew or finish it.
    let again = s
        .claim_submission("app", "n2", 301, 400)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.id.as_str(), again.attempts), ("s1", 2));
    assert!(!s.renew_check("s1", "n1", 1, 500).await.unwrap());
    assert!(!s
        .finish_submission("s1", "n1", 1, "landed", "late", Some("abc"), 302)
        .await
        .unwrap());
    assert!(s
        .finish_submission("s1", "n2", 2, "landed", "checks passed", Some("abc"), 303)
        .await
        .unwrap());
    let landed = s.get_submission("s1").await.unwrap().unwrap();
    assert_eq!(
        (
            landed.state.as_str(),
            landed.merged.as_deref(),
            landed.detail.as_deref()
        ),
        ("landed", Some("abc"), Some("checks passed"))
    );
    // Finishing twice records nothing more.
    assert!(!s
        .finish_submission("s1", "n2", 2, "failed", "again", None, 304)
        .await
        .unwrap());

    // A node starting again gives its checks back to the queue; another repository's queue is
    // its own.
    let next = s
        .claim_submission("app", "n1", 310, 900)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.id, "s2");
    s.put_repo(
        &RepoRecord {
            name: "lib".into(),
            ..repo.clone()
        },
        3,
    )
    .await
    .unwrap();
    s.add_submission(&submission("l1", "lib", 5)).await.unwrap();
    assert_eq!(
        s.claim_submission("lib", "n2", 311, 900)
            .await
            .unwrap()
            .unwrap()
            .id,
        "l1"
    );
    assert_eq!(s.release_checks("n1", 320).await.unwrap(), 1);
    assert_eq!(
        s.get_submission("s2").await.unwrap().unwrap().state,
        "queued"
    );
    assert_eq!(
        s.get_submission("l1").await.unwrap().unwrap().state,
        "checking"
    );
    let retried = s
        .claim_submission("app", "n2", 330, 900)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((retried.id.as_str(), retried.attempts), ("s2", 2));
    assert!(s.get_submission("nope").await.unwrap().is_none());
}

async fn path_leases_are_all_or_none_and_cover_what_lies_below(s: &dyn Store) {
    let repo = RepoRecord {
        name: "app".into(),
        path: "/srv/app".into(),
        target: "main".into(),
        check_cmd: "true".into(),
        resolver: None,
        strategy: "rebase".into(),
    };
    s.put_repo(&repo, 1).await.unwrap();
    let paths = |p: &[&str]| p.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(s
        .lease_paths("app", "run:a", &paths(&["src/api/", "docs"]), 1_000, 10)
        .await
        .unwrap()
        .is_empty());
    // A path below a leased one, or above it, is in the way; nothing of the request is taken.
    let in_way = s
        .lease_paths(
            "app",
            "run:b",
            &paths(&["README", "src/api/routes.rs"]),
            1_000,
            20,
        )
        .await
        .unwrap();
    assert_eq!(in_way.len(), 1, "{in_way:?}");
    assert_eq!(
        (in_way[0].path.as_str(), in_way[0].holder.as_str()),
        ("src/api", "run:a")
    );
    let in_way = s
        .lease_paths("app", "run:b", &paths(&["src"]), 1_000, 20)
        .await
        .unwrap();
    assert_eq!(in_way.len(), 1, "{in_way:?}");
    let held: Vec<(String, String)> = s
        .path_leases("app", 30)
        .await
        .unwrap()
        .into_iter()
        .map(|l| (l.path, l.holder))
        .collect();
    assert_eq!(
        held,
        [
            ("docs".to_string(), "run:a".to_string()),
            ("src/api".into(), "run:a".into())
        ],
        "README was not taken"
    );
    // A holder may extend its own leases; a sibling path is free.
    assert!(s
        .lease_paths("app", "run:a", &paths(&["src/api"]), 2_000, 40)
        .await
        .unwrap()
        .is_empty());
    assert!(s
        .lease_paths("app", "run:b", &paths(&["src/web"]), 1_000, 40)
        .await
        .unwrap()
        .is_empty());
    // Expired leases are in nobody's way.
    assert!(s
        .lease_paths("app", "run:c", &paths(&["docs/intro.md"]), 5_000, 1_500)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.release_paths("app", "run:a").await.unwrap(), 1, "src/api");
    assert_eq!(s.release_paths("app", "run:a").await.unwrap(), 0);
    let holders: Vec<String> = s
        .path_leases("app", 1_600)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.holder)
        .collect();
    assert_eq!(
        holders,
        ["run:c"],
        "run:b's src/web lease has expired by 1600"
    );
}
