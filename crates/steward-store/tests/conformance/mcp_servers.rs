//! Upstream MCP servers as configured.

use crate::support::*;
use steward_store::McpServerRecord;

on_both_backends!(mcp_servers_are_kept_by_name_and_replaced_whole);

async fn mcp_servers_are_kept_by_name_and_replaced_whole(s: &dyn Store) {
    let record = |name: &str, command: &str, at: i64| McpServerRecord {
        name: name.into(),
        transport: "stdio".into(),
        command: command.into(),
        env: r#"{"A":"1"}"#.into(),
        url: String::new(),
        headers: "{}".into(),
        oauth: String::new(),
        owner: String::new(),
        created_at: at,
        updated_at: at,
    };
    s.put_mcp_server(&record("b", r#"["b"]"#, 1)).await.unwrap();
    s.put_mcp_server(&record("a", r#"["a1"]"#, 2))
        .await
        .unwrap();
    s.put_mcp_server(&record("a", r#"["a2","x"]"#, 3))
        .await
        .unwrap();
    let all = s.mcp_servers().await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert_eq!(
        all[0].command, r#"["a2","x"]"#,
        "a second put replaces the first"
    );
    assert_eq!(
        (all[0].created_at, all[0].updated_at),
        (2, 3),
        "created once, updated after"
    );
    // From a command to a URL (with an OAuth client): the whole definition is replaced.
    let http = McpServerRecord {
        transport: "http".into(),
        command: "[]".into(),
        env: "{}".into(),
        url: "http://127.0.0.1:9/mcp".into(),
        headers: r#"{"X-Team":"a"}"#.into(),
        oauth: r#"{"token_url":"http://127.0.0.1:9/token","client_id":"c"}"#.into(),
        owner: "team-web".into(),
        ..record("b", "", 4)
    };
    s.put_mcp_server(&http).await.unwrap();
    let b = s.mcp_servers().await.unwrap().remove(1);
    assert_eq!(
        b,
        McpServerRecord {
            created_at: 1,
            ..http
        }
    );
    assert!(s.delete_mcp_server("a").await.unwrap());
    assert!(
        !s.delete_mcp_server("a").await.unwrap(),
        "there was none left"
    );
    assert_eq!(s.mcp_servers().await.unwrap().len(), 1);
}
