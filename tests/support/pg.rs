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

/// `url` with its database name replaced by `name`.
pub fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let mut out = format!("{scheme}://{authority}/{name}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
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

/// A database of its own on the test server for one test, dropped (best effort) when the
/// test ends, even when it fails.
pub struct TestDatabase {
    pub url: String,
    admin_url: String,
    name: String,
}

impl TestDatabase {
    pub async fn create(admin_url: &str) -> TestDatabase {
        let name = format!("approvald_t_{}", uuid::Uuid::new_v4().simple());
        let url = ensure_database(admin_url, &name).await;
        TestDatabase {
            url,
            admin_url: admin_url.to_string(),
            name,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Its own thread and runtime: Drop may run inside (or outside) the test's runtime.
        let dropper = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
                        .execute(&mut admin)
                        .await
                    {
                        eprintln!("could not drop test database {name}: {e}");
                    }
                    let _ = admin.close().await;
                }
            });
        });
        let _ = dropper.join();
    }
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
