//! PostgreSQL schemas of their own: a store, a test or a benchmark run in one never sees
//! another's rows, on a database it shares.

use crate::Result;

/// `base` with every connection's `search_path` set to `schema`.
pub fn url_in_schema(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// Creates a new schema, `<prefix>_<random>`, on the database at `base`: its name, and a URL
/// whose connections use it.
pub async fn new_schema(base: &str, prefix: &str) -> Result<(String, String)> {
    let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(base).await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    let url = url_in_schema(base, &schema);
    Ok((schema, url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_path_is_added_to_any_url() {
        assert_eq!(
            url_in_schema("postgres://h/db", "s1"),
            "postgres://h/db?options=-c%20search_path%3Ds1"
        );
        assert_eq!(
            url_in_schema("postgres://h/db?sslmode=disable", "s1"),
            "postgres://h/db?sslmode=disable&options=-c%20search_path%3Ds1"
        );
    }
}
