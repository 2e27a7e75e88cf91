//! SQLite on a filesystem that fills up: a real tmpfs of a few MiB, mounted for the test (the
//! tests run as root). A write the disk refuses is an error, never an acknowledgement; once
//! space returns, every write acknowledged after it is in the file — the single write
//! connection is not left believing it is inside a transaction that SQLite already rolled back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use steward_store::*;
use steward_types::config::StoreConfig;
use steward_types::{AgentName, RunId};

/// A tmpfs of `mib` MiB, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(mib: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount(8)");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

async fn with_agent(store: &dyn Store) {
    let agent = NewAgent {
        name: AgentName::parse("a").unwrap(),
        spec_json: "{}".into(),
        spec_hash: "h".into(),
    };
    store.put_agents(&[agent], 1).await.unwrap();
}

fn run(id: &RunId, input: String) -> NewRun {
    NewRun {
        id: id.clone(),
        agent: AgentName::parse("a").unwrap(),
        agent_version: 1,
        parent_id: None,
        input,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_after_a_full_disk_are_durable_once_space_returns() {
    let disk = SmallDisk::mount(4);
    let url = format!("sqlite://{}", disk.dir.path().join("t.db").display());
    let store = open(&url, &StoreConfig::default()).await.unwrap();
    with_agent(&*store).await;
    // Fill the disk: a ballast file, then runs with large inputs until SQLite says it is full.
    let ballast = disk.dir.path().join("ballast");
    let free = {
        let st = nix_free(disk.dir.path());
        st.saturating_sub(512 * 1024)
    };
    std::fs::write(&ballast, vec![0u8; free as usize]).unwrap();
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..200 {
        let id = RunId::from_uuid(uuid::Uuid::now_v7());
        match store.create_run(&run(&id, "x".repeat(64 * 1024)), i).await {
            Ok(_) => acknowledged.push(id),
            Err(e) => {
                refused += 1;
                let why = e
                    .unavailable()
                    .unwrap_or_else(|| panic!("not told apart: {e}"));
                assert!(why.contains("disk holding the database is full"), "{why}");
            }
        }
    }
    assert!(refused > 0, "the disk never filled");
    // Space returns; writes go on, with no restart.
    std::fs::remove_file(&ballast).unwrap();
    for i in 0..20 {
        let id = RunId::from_uuid(uuid::Uuid::now_v7());
        store
            .create_run(&run(&id, format!("after {i}")), 1_000 + i)
            .await
            .unwrap();
        acknowledged.push(id);
    }
    drop(store);
    // Every acknowledged run is in the file, as a fresh process finds it.
    let reopened = open(&url, &StoreConfig::default()).await.unwrap();
    let mut missing = Vec::new();
    for id in &acknowledged {
        if reopened.get_run(id).await.unwrap().is_none() {
            missing.push(id.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged runs are not in the database, among them {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(3)]
    );
}

/// Bytes free on the filesystem holding `path`.
fn nix_free(path: &std::path::Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// PostgreSQL: every connection of the store killed by the server (as a failover or an
/// operator's `pg_terminate_backend` does) in the middle of its work. Writes that failed are
/// errors the store tells apart (the database cannot be reached), never acknowledgements; the
/// pool replaces its connections, writes go on, and every acknowledged run is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_survive_their_connections_being_killed() {
    let base = steward_testkit::pg_base();
    let (schema, url) = steward_store::pg_schema::new_schema(&base, "t")
        .await
        .unwrap();
    let admin = sqlx::PgPool::connect(&base).await.unwrap();
    let url = format!("{url}&application_name={schema}");
    let store = open(&url, &StoreConfig::default()).await.unwrap();
    with_agent(&*store).await;
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let (mut acknowledged, mut failed) = (Vec::new(), Vec::new());
            for i in 0..300 {
                let id = RunId::from_uuid(uuid::Uuid::now_v7());
                match store.create_run(&run(&id, format!("{i}")), i).await {
                    Ok(_) => acknowledged.push(id),
                    Err(e) => failed.push(e),
                }
            }
            (acknowledged, failed)
        })
    };
    let mut killed = 0;
    for _ in 0..5 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let rows: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
        )
        .bind(&schema)
        .fetch_all(&admin)
        .await
        .unwrap();
        killed += rows.iter().filter(|(k,)| *k).count();
    }
    let (acknowledged, failed) = writer.await.unwrap();
    assert!(killed > 0, "no connection was killed");
    eprintln!(
        "{killed} connections killed; {} writes acknowledged, {} refused",
        acknowledged.len(),
        failed.len()
    );
    assert!(
        acknowledged.len() > 100,
        "{} acknowledged",
        acknowledged.len()
    );
    for e in &failed {
        assert!(e.unavailable().is_some(), "not told apart: {e}");
    }
    // Writes go on on fresh connections.
    let id = RunId::from_uuid(uuid::Uuid::now_v7());
    store
        .create_run(&run(&id, "after".into()), 1_000)
        .await
        .unwrap();
    let reopened = open(&url, &StoreConfig::default()).await.unwrap();
    for id in acknowledged.iter().chain([&id]) {
        assert!(
            reopened.get_run(id).await.unwrap().is_some(),
            "acknowledged run {id} is not in the database"
        );
    }
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}
