//! Agents: versioned manifests.

use crate::support::*;

on_both_backends!(agents_are_versioned);

async fn agents_are_versioned(s: &dyn Store) {
    let r = s
        .put_agents(&[agent("a", "one"), agent("b", "x")], 10)
        .await
        .unwrap();
    assert!(r.iter().all(|(_, changed)| *changed));
    let r = s.put_agents(&[agent("a", "one")], 11).await.unwrap();
    assert_eq!(
        (r[0].0.version, r[0].1),
        (1, false),
        "an unchanged spec keeps its version"
    );
    let r = s.put_agents(&[agent("a", "two")], 12).await.unwrap();
    assert_eq!((r[0].0.version, r[0].1), (2, true));
    assert_eq!(
        s.get_agent(&name("a"), Some(1))
            .await
            .unwrap()
            .unwrap()
            .spec,
        "one"
    );
    assert_eq!(
        s.get_agent(&name("a"), None).await.unwrap().unwrap().spec,
        "two"
    );
    assert!(s.get_agent(&name("zz"), None).await.unwrap().is_none());
    let all = s.list_agents().await.unwrap();
    assert_eq!(
        all.iter()
            .map(|a| (a.name.as_str(), a.version))
            .collect::<Vec<_>>(),
        vec![("a", 2), ("b", 1)]
    );
}
