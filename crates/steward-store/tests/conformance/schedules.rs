//! Schedules.

use crate::support::*;

on_both_backends!(a_schedule_fires_once_for_each_time_it_is_due);

async fn a_schedule_fires_once_for_each_time_it_is_due(s: &dyn Store) {
    let sched = ScheduleRecord {
        name: "nightly".into(),
        cron: Some("0 0 3 * * *".into()),
        queue: Some("jobs".into()),
        agent: None,
        payload: "{}".into(),
        missed: "once".into(),
        next_at: Some(100),
        last_fired_at: None,
        fired: 0,
        created_at: 1,
    };
    s.put_schedule(&sched, 1).await.unwrap();
    assert_eq!(
        s.get_schedule("nightly").await.unwrap().unwrap().next_at,
        Some(100)
    );
    assert!(s.due_schedules(99, 10).await.unwrap().is_empty());
    assert_eq!(s.due_schedules(100, 10).await.unwrap().len(), 1);
    // Two nodes saw it due at 100: one moves it on, the other finds it moved.
    assert!(s
        .advance_schedule("nightly", 100, Some(200), 1, 100)
        .await
        .unwrap());
    assert!(!s
        .advance_schedule("nightly", 100, Some(200), 1, 101)
        .await
        .unwrap());
    let after = s.get_schedule("nightly").await.unwrap().unwrap();
    assert_eq!((after.next_at, after.fired), (Some(200), 1));
    assert!(s.due_schedules(150, 10).await.unwrap().is_empty());
    assert_eq!(s.list_schedules().await.unwrap().len(), 1);
    assert!(s.delete_schedule("nightly").await.unwrap());
    assert!(!s.delete_schedule("nightly").await.unwrap());
    assert!(s.get_schedule("nightly").await.unwrap().is_none());
}
