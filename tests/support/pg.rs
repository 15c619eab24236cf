//! PostgreSQL for tests: the server named by `APPROVALD_TEST_DATABASE_URL` (CI sets it; on this
//! machine kind one runs at 127.0.0.1:5432), one fresh database per test so tests run in
//! parallel without seeing each other. Without the variable, PostgreSQL tests say loudly that
//! they were skipped and pass, so the README's test command works on a machine without one.
#![allow(dead_code)]

use std::path::Path;

/// The variable naming the test server, e.g. `postgres://postgres@127.0.0.1:5432/test`.
pub const URL_VAR: &str = "APPROVALD_TEST_DATABASE_URL";

/// The server's URL, or `None` after printing that `what` was skipped.
pub fn server_url(what: &str) -> Option<String> {
    match std::env::var(URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            eprintln!(
                "\n*** SKIPPED: {what} needs PostgreSQL: set {URL_VAR}=postgres://postgres@127.0.0.1:5432/test to run it ***\n"
            );
            None
        }
    }
}

/// `url` with its database name replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    // postgres://user@host:port/dbname: the database is after the slash following the host.
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let root = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// Create database `db` on the server at `url` unless it exists; answer its URL.
pub async fn ensure_database(url: &str, db: &str) -> String {
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the PostgreSQL test server");
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(db)
        .fetch_optional(&mut admin)
        .await
        .expect("look up the test database");
    if exists.is_none() {
        // The name is ours (hex), so it is safe to put in the statement.
        let create = format!("CREATE DATABASE \"{db}\"");
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(create))
            .execute(&mut admin)
            .await
        {
            // Two tests may race to create the same one.
            let taken = e.to_string().contains("already exists");
            assert!(taken, "cannot create test database {db}: {e}");
        }
    }
    let _ = admin.close().await;
    with_database(url, db)
}

/// A new, empty database for one test; answers its URL.
pub async fn fresh_database(url: &str) -> String {
    let db = format!("approvald_t_{}", uuid::Uuid::new_v4().simple());
    ensure_database(url, &db).await
}

/// The database a test server on data dir `dir` uses when the suite runs on PostgreSQL: the
/// same dir (a restart) gives the same database.
pub async fn database_for_dir(url: &str, dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    ensure_database(url, &format!("approvald_d_{:016x}", h.finish())).await
}

/// True when the suite was asked to run its servers on PostgreSQL
/// (`APPROVALD_TEST_STORE=postgres` with `APPROVALD_TEST_DATABASE_URL`).
pub fn suite_on_postgres() -> Option<String> {
    let wanted = std::env::var("APPROVALD_TEST_STORE").is_ok_and(|v| v == "postgres");
    if !wanted {
        return None;
    }
    let url = std::env::var(URL_VAR).ok().filter(|u| !u.trim().is_empty());
    assert!(
        url.is_some(),
        "APPROVALD_TEST_STORE=postgres needs {URL_VAR}"
    );
    url
}
