//! PostgreSQL for the process tests: the configured server, a schema of a test's own, and
//! a `database_url` that puts everything in it.
#![allow(dead_code)]

const URL_VAR: &str = "TOKENWARDEN_TEST_POSTGRES_URL";

/// The server to test against. A PostgreSQL test is ignored unless the variable was set when
/// it was built (see `build.rs`), so one that runs needs it: without it this panics, and the
/// test fails instead of passing untested.
pub fn url() -> String {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{URL_VAR} is not set, but this test was built with PostgreSQL enabled: set it \
             (scripts/test does) or rebuild without it to mark the test ignored"
        ),
    }
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
