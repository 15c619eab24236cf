//! `cluster-wait` (issue 10): two approvald instances on one PostgreSQL database. Callers are
//! blocked in `tool.approval.request` on instance A; decisions go to instance B at a steady
//! rate; the figure is the time from sending the decision to B to the blocked caller's answer
//! on A, which B's announcement (`NOTIFY`) and A's wake-up carry. The floor is the same run
//! with callers and decisions on one instance of the same database: the ratio is what crossing
//! instances costs.

use serde_json::{Value, json};
use sqlx::Connection;

use crate::Env;
use crate::proc::{self, ServerProcess};
use crate::stats::{Goal, Report, ratio};
use crate::wait_latency::{WaitOptions, drive_approvald};

/// The PostgreSQL server the scenario makes its database on.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub async fn run(env: &Env, opts: WaitOptions, server_url: &str) -> anyhow::Result<Value> {
    println!(
        "\ncluster-wait: two instances on PostgreSQL, callers on A, decisions on B at {}/s for {} s",
        opts.rate, opts.seconds
    );
    let db = Database::create(server_url).await?;
    let result = measure(env, opts, &db.url).await;
    db.drop_it().await;
    result
}

async fn measure(env: &Env, opts: WaitOptions, database_url: &str) -> anyhow::Result<Value> {
    let a = instance(env, database_url).await?;
    let b = instance(env, database_url).await?;
    let crossing = drive_approvald(&a, &b, opts).await?;
    let alone = drive_approvald(&a, &a, opts).await?;
    a.stop().await;
    b.stop().await;

    let mut r = Report::new(
        "cluster-wait",
        format!(
            "cluster-wait: decision sent to B -> caller blocked on A answered, {} decisions at {}/s",
            crossing.latency.count(),
            opts.rate
        ),
    );
    r.field("rate", json!(opts.rate))
        .field("seconds", json!(opts.seconds))
        .field("samples", json!(crossing.latency.count()))
        .figure("latency p50", "p50_ms", crossing.latency.p50(), "ms")
        .target(
            "latency p99",
            "p99_ms",
            crossing.latency.p99(),
            "ms",
            Goal::Below(50.0),
        )
        .figure("latency max", "max_ms", crossing.latency.max(), "ms")
        .figure("errors", "errors", crossing.errors as f64, "")
        .figure(
            "resolve retries (unknown_id on B)",
            "resolve_retries",
            crossing.retries as f64,
            "",
        )
        .figure(
            "other processes' CPU (noise)",
            "other_cpu_pct",
            crossing.other_cpu.as_secs_f64() * 100.0 / crossing.window.as_secs_f64().max(1e-9),
            "%",
        )
        .figure(
            "floor: one instance p50",
            "floor_p50_ms",
            alone.latency.p50(),
            "ms",
        )
        .figure(
            "floor: one instance p99",
            "floor_p99_ms",
            alone.latency.p99(),
            "ms",
        )
        .figure(
            "ratio to floor (p99)",
            "ratio_to_floor",
            ratio(crossing.latency.p99(), alone.latency.p99()),
            "x",
        );
    if let Some(e) = crossing.first_error.as_ref().or(alone.first_error.as_ref()) {
        r.note(&format!("first error: {e}"));
        r.field("first_error", json!(e));
    }
    Ok(r.finish())
}

/// One approvald on `database_url`, its own data dir and port.
async fn instance(env: &Env, database_url: &str) -> anyhow::Result<ServerProcess> {
    let dir = env.data_dir();
    let port = proc::free_port();
    let config = proc::write_config(&dir, &dir.join("db"), port);
    let text = std::fs::read_to_string(&config)?;
    let text = text.replacen(
        "[storage]\n",
        &format!("[storage]\nurl = {database_url:?}\n"),
        1,
    );
    std::fs::write(&config, text)?;
    ServerProcess::approvald(&config, port, env.root()).await
}

/// A database of its own on the PostgreSQL server, dropped at the end.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    async fn create(admin: &str) -> anyhow::Result<Self> {
        let name = format!("approvald_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach PostgreSQL (set --database-url): {e}"))?;
        // The name is ours (hex), safe in the statement.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        let (base, query) = match admin.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (admin, None),
        };
        let root = base.rsplit_once('/').map_or(base, |(r, _)| r);
        let url = match query {
            Some(q) => format!("{root}/{name}?{q}"),
            None => format!("{root}/{name}"),
        };
        Ok(Self {
            admin: admin.to_string(),
            name,
            url,
        })
    }

    async fn drop_it(self) {
        if let Ok(mut conn) = sqlx::PgConnection::connect(&self.admin).await {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    }
}
