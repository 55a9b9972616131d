//! PostgreSQL for the process tests: the configured server, a schema of a test's own, and
//! a `database_url` that puts everything in it.
#![allow(dead_code)]

const URL_VAR: &str = "TOKENWARDEN_TEST_POSTGRES_URL";

/// The server to test against, or `None` (and a note on stderr) when it is not configured.
pub fn url(test: &str) -> Option<String> {
    let url = std::env::var(URL_VAR).ok().filter(|u| !u.is_empty());
    if url.is_none() {
        eprintln!("skipped {test}: {URL_VAR} is not set");
    }
    url
}

/// Runs one administrative statement (CREATE or DROP SCHEMA) on a connection of its own.
pub async fn admin(url: &str, sql: String) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .expect("admin statement");
}

/// Creates `schema` and returns `url` with every session's `search_path` set to it.
pub async fn schema_url(url: &str, schema: &str) -> String {
    admin(url, format!("CREATE SCHEMA \"{schema}\"")).await;
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options[search_path]={schema}")
}

/// Drops a test's own schema (only test schemas).
pub async fn drop_schema(url: &str, schema: &str) {
    assert!(schema.starts_with("tw_"), "only test schemas");
    admin(url, format!("DROP SCHEMA \"{schema}\" CASCADE")).await;
}
