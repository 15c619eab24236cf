//! The embedded store: one SQLite file in WAL mode.
//!
//! All writes go through a single connection, so SQLite never answers "database is locked" to
//! ourselves and each write is one short transaction; reads use a separate small pool that WAL
//! lets run beside the writer. `synchronous = NORMAL` in WAL mode keeps every committed
//! transaction across a process crash (kill -9); only a power cut may lose the last commits.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{
    AuditQuery, DecisionWrite, InsertOutcome, ListQuery, Store, StoreError, from_ms, message_key,
    ms,
};
use crate::audit::AuditEntry;
use crate::domain::{Approval, ApprovalRecord, ApprovalRequest, Delivery, Resolution, Status};
use crate::rules::StandingRule;
use crate::tasks::{TaskRecord, TaskStatus};
use approvald_channel::MessageRef;

/// The columns a whole record is read from, decisions and deliveries included as JSON arrays,
/// so one query (not three) loads a request: reads are most of the work per request.
macro_rules! record_columns {
    () => {
        "SELECT a.id, a.status, a.request_json, a.resolution_json, \
         (SELECT json_group_array(json(approval_json)) FROM \
             (SELECT approval_json FROM decisions WHERE approval_id = a.id ORDER BY seq)) AS approvals_json, \
         (SELECT json_group_array(json(delivery_json)) FROM \
             (SELECT delivery_json FROM deliveries WHERE approval_id = a.id ORDER BY seq)) AS deliveries_json"
    };
}

mod group_commit;

use group_commit::{GroupCommit, NewRow, Outcome, Write};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// See the module docs.
#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    instance: String,
    /// The hot writes, committed in groups (see `group_commit`).
    batch: GroupCommit,
}

/// Copy the WAL into the database file every second (PASSIVE: never waits for, nor blocks,
/// the writer or readers), for as long as the store is open.
async fn checkpoint_in_background(checkpointer: SqlitePool, writer: SqlitePool) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if writer.is_closed() {
            checkpointer.close().await;
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&checkpointer)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed (retried in a second)");
        }
    }
}

impl SqliteStore {
    /// Open (creating if needed) `approvald.db` in `data_dir` and apply migrations.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join("approvald.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // The writer never checkpoints: a checkpoint copies the WAL into the database file
        // and syncs it, which would stall the commit (and every caller waiting on it) that
        // happened to trigger it. A connection of its own does it in the background instead.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        MIGRATOR.run(&writer).await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        tokio::spawn(checkpoint_in_background(checkpointer, writer.clone()));
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.read_only(true))
            .await?;
        let store = Self {
            batch: GroupCommit::start(writer.clone()),
            writer,
            reader,
            instance: uuid::Uuid::new_v4().to_string(),
        };
        store.heartbeat().await?;
        Ok(store)
    }

    /// The JSON documents in the first column of `sql` (one `?1` = `id`), decoded.
    async fn json_rows<T: serde::de::DeserializeOwned>(
        &self,
        sql: &'static str,
        id: &str,
    ) -> Result<Vec<T>, StoreError> {
        sqlx::query(sql)
            .bind(id)
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|r| Ok(serde_json::from_str(r.try_get::<&str, _>(0)?)?))
            .collect()
    }

    async fn load(&self, row: sqlx::sqlite::SqliteRow) -> Result<ApprovalRecord, StoreError> {
        let status: String = row.try_get("status")?;
        let request: ApprovalRequest = serde_json::from_str(row.try_get("request_json")?)?;
        let resolution: Option<String> = row.try_get("resolution_json")?;
        let resolution: Option<Resolution> =
            resolution.map(|r| serde_json::from_str(&r)).transpose()?;
        let approvals = serde_json::from_str(row.try_get("approvals_json")?)?;
        let deliveries = serde_json::from_str(row.try_get("deliveries_json")?)?;
        Ok(ApprovalRecord {
            request,
            status: Status::from_str(&status).map_err(StoreError)?,
            approvals,
            resolution,
            deliveries,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn insert_request(
        &self,
        req: &ApprovalRequest,
        fold_key: Option<&str>,
        audits: &[AuditEntry],
        fanout: bool,
    ) -> Result<InsertOutcome, StoreError> {
        let json = serde_json::to_string(req)?;
        // Twice at most: an identical pending request may settle between the two statements.
        for _ in 0..2 {
            let row = NewRow {
                id: req.id.clone(),
                tool: req.tool.clone(),
                agent_id: req.agent_id.clone(),
                session_key: req.session_key.clone(),
                json: json.clone(),
                created_at: ms(req.created_at),
                expires_at: ms(req.expires_at),
                fold_key: fold_key.map(str::to_string),
                now: ms(Utc::now()),
                owner: self.instance.clone(),
                fanout,
            };
            if let Outcome::Stored(true) = self
                .batch
                .write(Write::Insert(Box::new(row), audits.to_vec()))
                .await?
            {
                return Ok(InsertOutcome::Inserted);
            }
            if let Some(existing) = self.get(&req.id).await? {
                return Ok(InsertOutcome::Exists(Box::new(existing)));
            }
            let folded: Option<String> = sqlx::query_scalar(
                "SELECT id FROM approvals INDEXED BY approvals_fold
                 WHERE fold_key = ?1 AND status = 'pending' AND expires_at > ?2 LIMIT 1",
            )
            .bind(fold_key)
            .bind(ms(Utc::now()))
            .fetch_optional(&self.writer)
            .await?;
            if let Some(id) = folded
                && let Some(rec) = self.get(&id).await?
            {
                sqlx::query(
                    "INSERT INTO approval_aliases (alias, approval_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                )
                .bind(&req.id)
                .bind(&id)
                .execute(&self.writer)
                .await?;
                return Ok(InsertOutcome::Folded(Box::new(rec)));
            }
        }
        Err(StoreError(format!(
            "insert of {} was neither stored nor folded",
            req.id
        )))
    }

    async fn get(&self, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        let row = sqlx::query(concat!(
            record_columns!(),
            " FROM approvals a WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        match row {
            Some(row) => Ok(Some(self.load(row).await?)),
            None => Ok(None),
        }
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<ApprovalRecord>, StoreError> {
        // The ids as one JSON array: one statement text whatever their number.
        let rows = sqlx::query(concat!(
            record_columns!(),
            " FROM approvals a WHERE a.id IN (SELECT value FROM json_each(?1))"
        ))
        .bind(serde_json::to_string(ids)?)
        .fetch_all(&self.reader)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.load(row).await?);
        }
        Ok(out)
    }

    async fn status(&self, id: &str) -> Result<Option<Status>, StoreError> {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM approvals WHERE id = ?1")
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        status
            .map(|s| Status::from_str(&s).map_err(StoreError))
            .transpose()
    }

    async fn ids_with_prefix(&self, prefix: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        // Callers pass only [0-9a-zA-Z-], so no LIKE wildcard can sneak in; a range scan on the
        // primary key does the rest.
        let upper = format!("{prefix}\u{10FFFF}");
        let rows =
            sqlx::query("SELECT id FROM approvals WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT ?3")
                .bind(prefix)
                .bind(upper)
                .bind(limit as i64)
                .fetch_all(&self.reader)
                .await?;
        rows.into_iter()
            .map(|r| Ok(r.try_get::<String, _>("id")?))
            .collect()
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<ApprovalRecord>, StoreError> {
        let mut sql = String::from(concat!(record_columns!(), " FROM approvals a WHERE 1 = 1"));
        if q.status.is_some() {
            sql.push_str(" AND status = ?1");
        }
        if q.agent_id.is_some() {
            sql.push_str(" AND agent_id = ?2");
        }
        if q.tool.is_some() {
            sql.push_str(" AND tool = ?3");
        }
        if q.before.is_some() {
            sql.push_str(" AND (created_at < ?4 OR (created_at = ?4 AND id < ?5))");
        }
        sql.push_str(" ORDER BY created_at DESC, id DESC LIMIT ?6");
        let (before_ms, before_id) = q.before.clone().unwrap_or_default();
        // Built only from the fixed fragments above; every value is a bound parameter.
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(q.status.map(|s| s.as_str()))
            .bind(&q.agent_id)
            .bind(&q.tool)
            .bind(before_ms)
            .bind(before_id)
            .bind(q.limit.max(1) as i64)
            .fetch_all(&self.reader)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.load(row).await?);
        }
        Ok(out)
    }

    async fn record_decision(
        &self,
        id: &str,
        approver_key: &str,
        approval: &Approval,
        resolution: Option<&Resolution>,
        audits: &[AuditEntry],
    ) -> Result<DecisionWrite, StoreError> {
        let write = Write::Decision {
            id: id.to_string(),
            approver_key: approver_key.to_string(),
            approval_json: serde_json::to_string(approval)?,
            resolution: resolution.cloned(),
            audits: audits.to_vec(),
        };
        match self.batch.write(write).await? {
            Outcome::Decision(d) => Ok(d),
            Outcome::Stored(_) => Err(StoreError("a decision answered as a store".into())),
        }
    }

    async fn resolve(
        &self,
        id: &str,
        resolution: &Resolution,
        audits: &[AuditEntry],
    ) -> Result<bool, StoreError> {
        let write = Write::Resolve {
            id: id.to_string(),
            resolution: resolution.clone(),
            audits: audits.to_vec(),
        };
        match self.batch.write(write).await? {
            Outcome::Stored(won) => Ok(won),
            Outcome::Decision(_) => Err(StoreError("a resolution answered as a decision".into())),
        }
    }

    async fn record_delivery(&self, id: &str, delivery: &Delivery) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO deliveries (approval_id, delivery_json, message_key) VALUES (?1, ?2, ?3)",
        )
        .bind(id)
        .bind(serde_json::to_string(delivery)?)
        .bind(delivery.message.as_ref().map(message_key))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn approval_for_message(
        &self,
        message: &MessageRef,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT approval_id FROM deliveries WHERE message_key = ?1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(message_key(message))
        .fetch_optional(&self.reader)
        .await?)
    }

    async fn pending_deadlines(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, expires_at FROM approvals WHERE status = 'pending' ORDER BY expires_at",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get("id")?, from_ms(r.try_get("expires_at")?))))
            .collect()
    }

    async fn count_by_status(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM approvals GROUP BY status")
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter()
            .map(|r| {
                let s: String = r.try_get("status")?;
                let n: i64 = r.try_get("n")?;
                Ok((Status::from_str(&s).map_err(StoreError)?, n as u64))
            })
            .collect()
    }

    async fn audit_append(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit (at, approval_id, event, transport, entry_json) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(ms(entry.at))
        .bind(&entry.approval_id)
        .bind(entry.event.as_str())
        .bind(entry.transport.map(|t| t.as_str()))
        .bind(serde_json::to_string(entry)?)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn audit_list(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let sql = if q.approval_id.is_some() {
            "SELECT seq, entry_json FROM audit WHERE approval_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
        } else {
            "SELECT seq, entry_json FROM audit WHERE ?1 IS NULL AND seq > ?2 ORDER BY seq LIMIT ?3"
        };
        let rows = sqlx::query(sql)
            .bind(&q.approval_id)
            .bind(q.after_seq)
            .bind(q.limit.max(1) as i64)
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter()
            .map(|r| {
                let mut e: AuditEntry = serde_json::from_str(r.try_get("entry_json")?)?;
                e.seq = r.try_get("seq")?;
                Ok(e)
            })
            .collect()
    }

    async fn add_standing_rule(&self, rule: &StandingRule) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO standing_rules (id, rule_json, created_at) VALUES (?1, ?2, ?3)")
            .bind(&rule.id)
            .bind(serde_json::to_string(rule)?)
            .bind(ms(rule.created_at))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn standing_rules(&self, include_revoked: bool) -> Result<Vec<StandingRule>, StoreError> {
        let rows = sqlx::query(
            "SELECT rule_json, revoked_at FROM standing_rules WHERE ?1 OR revoked_at IS NULL ORDER BY created_at",
        )
        .bind(include_revoked)
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| {
                let mut rule: StandingRule = serde_json::from_str(r.try_get("rule_json")?)?;
                rule.revoked_at = r.try_get::<Option<i64>, _>("revoked_at")?.map(from_ms);
                Ok(rule)
            })
            .collect()
    }

    async fn revoke_standing_rule(&self, id: &str) -> Result<Option<StandingRule>, StoreError> {
        let upper = format!("{id}\u{10FFFF}");
        let candidates: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM standing_rules WHERE id >= ?1 AND id < ?2 AND revoked_at IS NULL LIMIT 2",
        )
        .bind(id)
        .bind(&upper)
        .fetch_all(&self.writer)
        .await?;
        let [only] = candidates.as_slice() else {
            return Ok(None);
        };
        let now = Utc::now();
        sqlx::query(
            "UPDATE standing_rules SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
        )
        .bind(only)
        .bind(ms(now))
        .execute(&self.writer)
        .await?;
        let json: String = sqlx::query_scalar("SELECT rule_json FROM standing_rules WHERE id = ?1")
            .bind(only)
            .fetch_one(&self.writer)
            .await?;
        let mut rule: StandingRule = serde_json::from_str(&json)?;
        rule.revoked_at = Some(now);
        Ok(Some(rule))
    }

    async fn task_insert(&self, task: &TaskRecord) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO tasks (task_id, approval_id, execution, actual_cost, duration_ms, ended_at, created_at, task_json) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
        )
        .bind(&task.task_id)
        .bind(&task.approval_id)
        .bind(task.execution.map(TaskStatus::as_str))
        .bind(task.actual_cost)
        .bind(task.duration_ms.map(|d| d as i64))
        .bind(task.ended_at.map(ms))
        .bind(ms(task.created_at))
        .bind(serde_json::to_string(task)?)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn task_update(
        &self,
        task: &TaskRecord,
        expected: Option<TaskStatus>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE tasks SET execution = ?2, actual_cost = ?3, duration_ms = ?4, ended_at = ?5, task_json = ?6 \
             WHERE task_id = ?1 AND execution IS ?7",
        )
        .bind(&task.task_id)
        .bind(task.execution.map(TaskStatus::as_str))
        .bind(task.actual_cost)
        .bind(task.duration_ms.map(|d| d as i64))
        .bind(task.ended_at.map(ms))
        .bind(serde_json::to_string(task)?)
        .bind(expected.map(TaskStatus::as_str))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn task_by_id(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self
            .json_rows("SELECT task_json FROM tasks WHERE task_id = ?1", task_id)
            .await?
            .pop())
    }

    async fn task_by_approval(&self, approval_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self
            .json_rows(
                "SELECT task_json FROM tasks WHERE approval_id = ?1",
                approval_id,
            )
            .await?
            .pop())
    }

    async fn task_status_counts(&self) -> Result<Vec<(TaskStatus, u64)>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_status!(),
            " AS s, COUNT(*) AS n FROM approvals a LEFT JOIN tasks t ON t.approval_id = a.id GROUP BY s"
        ))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| {
                let s: String = r.try_get("s")?;
                let n: i64 = r.try_get("n")?;
                Ok((TaskStatus::from_str(&s).map_err(StoreError)?, n as u64))
            })
            .collect()
    }

    async fn task_totals(&self) -> Result<(f64, u64), StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(actual_cost), 0.0) AS cost, COALESCE(SUM(duration_ms), 0) AS ms FROM tasks",
        )
        .fetch_one(&self.reader)
        .await?;
        let cost: f64 = row.try_get("cost")?;
        let total_ms: i64 = row.try_get("ms")?;
        Ok((cost, total_ms.max(0) as u64))
    }

    async fn spent_since(&self, since: DateTime<Utc>) -> Result<f64, StoreError> {
        let spent: f64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(actual_cost), 0.0) FROM tasks WHERE ended_at >= ?1",
        )
        .bind(ms(since))
        .fetch_one(&self.reader)
        .await?;
        Ok(spent)
    }

    async fn task_page(
        &self,
        status: Option<TaskStatus>,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<String>, u64), StoreError> {
        let total: i64 = sqlx::query_scalar(concat!(
            "SELECT COUNT(*) FROM approvals a LEFT JOIN tasks t ON t.approval_id = a.id WHERE (?1 IS NULL OR ",
            task_status!(),
            " = ?1)"
        ))
        .bind(status.map(TaskStatus::as_str))
        .fetch_one(&self.reader)
        .await?;
        let ids: Vec<String> = sqlx::query_scalar(concat!(
            "SELECT a.id FROM approvals a LEFT JOIN tasks t ON t.approval_id = a.id WHERE (?1 IS NULL OR ",
            task_status!(),
            " = ?1) ORDER BY a.created_at DESC, a.id DESC LIMIT ?2 OFFSET ?3"
        ))
        .bind(status.map(TaskStatus::as_str))
        .bind(i64::from(limit))
        .bind(i64::from(offset))
        .fetch_all(&self.reader)
        .await?;
        Ok((ids, total.max(0) as u64))
    }

    async fn outbox_push(&self, body: &serde_json::Value) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO upstream_outbox (body_json, created_at) VALUES (?1, ?2)")
            .bind(body.to_string())
            .bind(ms(Utc::now()))
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn outbox_peek(&self, limit: u32) -> Result<Vec<(i64, serde_json::Value)>, StoreError> {
        let rows = sqlx::query("SELECT seq, body_json FROM upstream_outbox ORDER BY seq LIMIT ?1")
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get("seq")?;
                let body: String = r.try_get("body_json")?;
                Ok((seq, serde_json::from_str(&body)?))
            })
            .collect()
    }

    async fn outbox_remove(&self, seq: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM upstream_outbox WHERE seq = ?1")
            .bind(seq)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn alias_target(&self, alias: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT approval_id FROM approval_aliases WHERE alias = ?1")
                .bind(alias)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM upstream_outbox")
            .fetch_one(&self.reader)
            .await?;
        Ok(n.max(0) as u64)
    }

    fn instance_id(&self) -> &str {
        &self.instance
    }

    async fn heartbeat(&self) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO instances (id, last_seen) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
        )
        .bind(&self.instance)
        .bind(ms(Utc::now()))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn deliveries_finished(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE approvals SET deliveries_done = 1 WHERE id = ?1 AND deliveries_done = 0",
        )
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn claim_unfinished_deliveries(
        &self,
        stale: Duration,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let alive_since = ms(Utc::now()) - stale.as_millis() as i64;
        // One statement: claimers in other processes on the same file cannot interleave.
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE approvals SET delivery_owner = ?1
             WHERE id IN (
                 SELECT a.id FROM approvals a
                 WHERE a.deliveries_done = 0 AND a.status = 'pending'
                   AND a.delivery_owner IS NOT ?1
                   AND NOT EXISTS (SELECT 1 FROM instances i
                                   WHERE i.id = a.delivery_owner AND i.last_seen >= ?2)
                 ORDER BY a.created_at LIMIT ?3)
             RETURNING id",
        )
        .bind(&self.instance)
        .bind(alive_since)
        .bind(i64::from(limit))
        .fetch_all(&self.writer)
        .await?;
        Ok(ids)
    }
}
