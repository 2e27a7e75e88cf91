//! Supervisors and their incidents.

use crate::support::*;

on_both_backends!(a_supervisor_state_moves_on_once_per_version);

async fn a_supervisor_state_moves_on_once_per_version(s: &dyn Store) {
    let v = s
        .put_supervisor("tree", "{}", "{\"g\":1}", "running", 10)
        .await
        .unwrap();
    assert_eq!(s.get_supervisor("tree").await.unwrap(), Some(v.clone()));
    let incident = IncidentRecord {
        id: "inc_1".into(),
        supervisor: "tree".into(),
        reason: "gave up".into(),
        state: "open".into(),
        created_at: 20,
        resolved_at: None,
        resolution: None,
    };
    // Two nodes read the same version: one writes, with its incident; the other writes nothing.
    assert!(s
        .update_supervisor(
            "tree",
            v.version,
            "{\"g\":2}",
            "failed",
            Some(&incident),
            20
        )
        .await
        .unwrap());
    let stale = IncidentRecord {
        id: "inc_2".into(),
        ..incident.clone()
    };
    assert!(!s
        .update_supervisor("tree", v.version, "{\"g\":3}", "running", Some(&stale), 21)
        .await
        .unwrap());
    let now = s.get_supervisor("tree").await.unwrap().unwrap();
    assert_eq!(
        (now.state.as_str(), now.status.as_str()),
        ("{\"g\":2}", "failed")
    );
    let open = s.list_incidents(Some("open")).await.unwrap();
    assert_eq!(open.len(), 1, "the refused write opened nothing: {open:?}");
    // A replayed incident is opened once; resolving is once.
    s.open_incident(&incident).await.unwrap();
    assert_eq!(s.list_incidents(None).await.unwrap().len(), 1);
    let done = s
        .resolve_incident("inc_1", "fixed", 30)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (done.state.as_str(), done.resolution.as_deref()),
        ("resolved", Some("fixed"))
    );
    assert!(s
        .resolve_incident("inc_1", "again", 31)
        .await
        .unwrap()
        .is_none());
    // Replacing the spec is a new version.
    let replaced = s
        .put_supervisor("tree", "{\"new\":1}", "{}", "running", 40)
        .await
        .unwrap();
    assert!(replaced.version > now.version);
    assert_eq!(s.list_supervisors().await.unwrap().len(), 1);
}
