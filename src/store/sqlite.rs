//! The embedded store: one SQLite file in WAL mode.
//!
//! All writes go through a single connection on a thread of its own (`group_commit`), so
//! SQLite never answers "database is locked" to ourselves and writes share transactions under
//! load; reads use a separate small sqlx pool that WAL lets run beside the writer.
//! `synchronous = NORMAL` in WAL mode keeps every committed transaction across a process crash
//! (kill -9); only a power cut may lose the last commits.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use super::{
    AuditQuery, DecisionWrite, InsertOutcome, ListQuery, Store, StoreError, StoredAuditRow,
    from_ms, message_key, ms,
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
             (SELECT approval_json FROM decisions \
             WHERE approval_created_at = a.created_at AND approval_id = a.id ORDER BY seq)) AS approvals_json, \
         (SELECT json_group_array(json(delivery_json)) FROM \
             (SELECT delivery_json FROM deliveries WHERE approval_id = a.id ORDER BY seq)) AS deliveries_json"
    };
}

/// Where a query by id finds its row: `?1` the row the writer's memory names for it (or
/// NULL), `?2` the id, looked up in the id index when the memory does not know it. The id is
/// checked too: a row the memory names may have been rolled back and reused.
macro_rules! by_id {
    () => {
        "a.rowid = coalesce(?1, (SELECT row FROM approval_ids WHERE id = ?2)) AND a.id = ?2"
    };
}

mod checkpoint;
mod group_commit;
mod ids;

use group_commit::{AuditRow, GroupCommit, NewRow, db, optional};
use ids::RecentIds;
use rusqlite::params;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// See the module docs.
#[derive(Clone)]
pub struct SqliteStore {
    reader: SqlitePool,
    instance: String,
    /// Every write, committed in groups on the writer thread (see `group_commit`).
    writes: GroupCommit,
    /// The newest requests' rows by id, shared with the writer (see `ids`).
    recent: Arc<RecentIds>,
}

impl SqliteStore {
    /// A decision's write (see `group_commit::decide`; `created_at`: only on that request).
    async fn decide(
        &self,
        id: &str,
        created_at: Option<i64>,
        approver_key: &str,
        approval: &Approval,
        resolution: Option<&Resolution>,
        audits: &[AuditEntry],
    ) -> Result<DecisionWrite, StoreError> {
        let id = id.to_string();
        let approver_key = approver_key.to_string();
        let approval_json = crate::json::text(approval)?;
        let resolution = resolution.cloned();
        let audits = AuditRow::render(audits)?;
        self.writes
            .write(move |c| {
                group_commit::decide(
                    c,
                    &id,
                    created_at,
                    &approver_key,
                    &approval_json,
                    resolution.as_ref(),
                    &audits,
                )
            })
            .await
    }

    /// Open (creating if needed) `approvald.db` in `data_dir` and apply migrations.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError(format!(
                "cannot create data dir {}: {e}",
                data_dir.display()
            ))
        })?;
        let file = data_dir.join("approvald.db");
        // Taken first: no other process may write the file while this one keeps ids in memory.
        let recent = RecentIds::for_file(&file, Duration::from_secs(10))?;
        let options = SqliteConnectOptions::new()
            .filename(&file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        // Migrations, then the ids a stopped process had not moved (see `ids`), on a connection
        // of their own, closed before the writer thread opens its connection.
        let migrator = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&migrator).await?;
        sqlx::raw_sql(ids::RECOVER).execute(&migrator).await?;
        migrator.close().await;
        let writes = GroupCommit::start(&file, recent.clone())?;
        checkpoint::start(&file, &writes)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            // A local file: a ping before each use would be one more thread hand-off.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.read_only(true))
            .await?;
        let store = Self {
            writes,
            reader,
            instance: uuid::Uuid::new_v4().to_string(),
            recent,
        };
        store.heartbeat().await?;
        Ok(store)
    }

    /// Run one statement on the writer: how many rows it changed.
    async fn execute(
        &self,
        sql: &'static str,
        values: Vec<rusqlite::types::Value>,
    ) -> Result<usize, StoreError> {
        self.writes
            .write(move |c| {
                c.prepare_cached(sql)
                    .map_err(db)?
                    .execute(rusqlite::params_from_iter(values.iter()))
                    .map_err(db)
            })
            .await
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
}

/// A whole record from a row of `record_columns!`.
fn record_from(row: &sqlx::sqlite::SqliteRow) -> Result<ApprovalRecord, StoreError> {
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

#[async_trait]
impl Store for SqliteStore {
    async fn insert_request(
        &self,
        req: &ApprovalRequest,
        fold_key: Option<&str>,
        audits: &[AuditEntry],
        fanout: bool,
    ) -> Result<InsertOutcome, StoreError> {
        let json = crate::json::text(req)?;
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
            let audits = AuditRow::render(audits)?;
            let stored = self
                .writes
                .write(move |c| group_commit::insert(c, &row, &audits))
                .await?;
            if stored {
                return Ok(InsertOutcome::Inserted);
            }
            if let Some(existing) = self.get(&req.id).await? {
                return Ok(InsertOutcome::Exists(Box::new(existing)));
            }
            // On the writer: the fold target is looked up and the alias recorded together.
            let alias = req.id.clone();
            let key = fold_key.map(str::to_string);
            let now = ms(Utc::now());
            let folded = self
                .writes
                .write(move |c| {
                    let id: Option<String> = optional(
                        c.prepare_cached(
                            "SELECT id FROM approvals INDEXED BY approvals_fold
                             WHERE fold_key = ?1 AND status = 'pending' AND expires_at > ?2 LIMIT 1",
                        )
                        .map_err(db)?
                        .query_row(params![key, now], |r| r.get(0)),
                    )?;
                    if let Some(id) = &id {
                        c.prepare_cached(
                            "INSERT INTO approval_aliases (alias, approval_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                        )
                        .map_err(db)?
                        .execute(params![alias, id])
                        .map_err(db)?;
                    }
                    Ok(id)
                })
                .await?;
            if let Some(id) = folded
                && let Some(rec) = self.get(&id).await?
            {
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
            " FROM approvals a WHERE ",
            by_id!()
        ))
        .bind(self.recent.get(id))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(record_from).transpose()
    }

    async fn get_by_any_id(&self, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        // The request's own id wins, then an alias, then a task's id.
        if let Some(record) = self.get(id).await? {
            return Ok(Some(record));
        }
        if let Some(target) = self.alias_target(id).await?
            && let Some(record) = self.get(&target).await?
        {
            return Ok(Some(record));
        }
        match self.task_by_id(id).await? {
            Some(task) => self.get(&task.approval_id).await,
            None => Ok(None),
        }
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<ApprovalRecord>, StoreError> {
        // One statement whatever their number (expiry loads thousands at once): the rows the
        // memory knows, and the id index for the others, each list as one JSON array.
        let (mut rows, mut indexed) = (Vec::new(), Vec::new());
        for id in ids {
            match self.recent.get(id) {
                Some(row) => rows.push(row),
                None => indexed.push(id),
            }
        }
        let found = sqlx::query(concat!(
            record_columns!(),
            " FROM approvals a WHERE a.rowid IN (SELECT value FROM json_each(?1) UNION ALL \
             SELECT row FROM approval_ids WHERE id IN (SELECT value FROM json_each(?2)))"
        ))
        .bind(serde_json::to_string(&rows)?)
        .bind(serde_json::to_string(&indexed)?)
        .fetch_all(&self.reader)
        .await?;
        let records = found
            .iter()
            .map(record_from)
            .collect::<Result<Vec<_>, _>>()?;
        // The ids are checked too (see `get`).
        let asked: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        Ok(records
            .into_iter()
            .filter(|r| asked.contains(r.request.id.as_str()))
            .collect())
    }

    async fn status(&self, id: &str) -> Result<Option<Status>, StoreError> {
        let status: Option<String> =
            sqlx::query_scalar(concat!("SELECT status FROM approvals a WHERE ", by_id!()))
                .bind(self.recent.get(id))
                .bind(id)
                .fetch_optional(&self.reader)
                .await?;
        status
            .map(|s| Status::from_str(&s).map_err(StoreError))
            .transpose()
    }

    async fn ids_with_prefix(&self, prefix: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        // Callers pass only [0-9a-zA-Z-], so no LIKE wildcard can sneak in; a range scan on the
        // id index, and the newest ids in memory, do the rest.
        let upper = format!("{prefix}\u{10FFFF}");
        let mut ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM approval_ids WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT ?3",
        )
        .bind(prefix)
        .bind(&upper)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        ids.extend(self.recent.in_range(prefix, &upper));
        ids.sort_unstable();
        ids.dedup();
        ids.truncate(limit as usize);
        Ok(ids)
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
        rows.iter().map(record_from).collect()
    }

    async fn record_decision(
        &self,
        id: &str,
        approver_key: &str,
        approval: &Approval,
        resolution: Option<&Resolution>,
        audits: &[AuditEntry],
    ) -> Result<DecisionWrite, StoreError> {
        self.decide(id, None, approver_key, approval, resolution, audits)
            .await
    }

    async fn record_decision_after_insert(
        &self,
        id: &str,
        created_at: DateTime<Utc>,
        approver_key: &str,
        approval: &Approval,
        resolution: Option<&Resolution>,
        audits: &[AuditEntry],
    ) -> Result<DecisionWrite, StoreError> {
        // The one writer applies writes in the order they were queued (`group_commit`).
        let created_at = Some(ms(created_at));
        self.decide(id, created_at, approver_key, approval, resolution, audits)
            .await
    }

    async fn resolve(
        &self,
        id: &str,
        resolution: &Resolution,
        audits: &[AuditEntry],
    ) -> Result<bool, StoreError> {
        let id = id.to_string();
        let resolution = resolution.clone();
        let audits = AuditRow::render(audits)?;
        self.writes
            .write(move |c| group_commit::resolve(c, &id, &resolution, &audits))
            .await
    }

    async fn record_delivery(&self, id: &str, delivery: &Delivery) -> Result<(), StoreError> {
        let id = id.to_string();
        let json = serde_json::to_string(delivery)?;
        let key = delivery.message.as_ref().map(message_key);
        self.writes
            .write(move |c| {
                // What a foreign key checked before the id index was kept apart (see `ids`).
                if ids::row_of(c, &id)?.is_none() {
                    return Err(StoreError(format!("no request {id} to record a delivery of")));
                }
                c.prepare_cached(
                    "INSERT INTO deliveries (approval_id, delivery_json, message_key) VALUES (?1, ?2, ?3)",
                )
                .map_err(db)?
                .execute(params![id, json, key])
                .map_err(db)?;
                Ok(())
            })
            .await
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
        let rows = AuditRow::render(std::slice::from_ref(entry))?;
        self.writes
            .write(move |c| group_commit::audit(c, &rows, None))
            .await
    }

    async fn audit_list(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let sql = if q.approval_id.is_some() {
            // Lines about no (longer) stored request have no creation time: `IS` matches NULL.
            concat!(
                "SELECT seq, approval_id, event, transport, entry_json FROM audit
                 WHERE approval_created_at IS (SELECT created_at FROM approvals a WHERE ",
                by_id!(),
                ") AND approval_id = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4"
            )
        } else {
            "SELECT seq, approval_id, event, transport, entry_json FROM audit
             WHERE ?2 IS NULL AND seq > ?3 ORDER BY seq LIMIT ?4"
        };
        let recent = q.approval_id.as_deref().and_then(|id| self.recent.get(id));
        let rows: Vec<StoredAuditRow> = sqlx::query_as(sql)
            .bind(recent)
            .bind(&q.approval_id)
            .bind(q.after_seq)
            .bind(q.limit.max(1) as i64)
            .fetch_all(&self.reader)
            .await?;
        rows.into_iter().map(StoredAuditRow::into_entry).collect()
    }

    async fn add_standing_rule(&self, rule: &StandingRule) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO standing_rules (id, rule_json, created_at) VALUES (?1, ?2, ?3)",
            vec![
                rule.id.clone().into(),
                serde_json::to_string(rule)?.into(),
                ms(rule.created_at).into(),
            ],
        )
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
        let prefix = id.to_string();
        let upper = format!("{id}\u{10FFFF}");
        let now = Utc::now();
        let revoked: Option<String> = self
            .writes
            .write(move |c| {
                let candidates = c
                    .prepare_cached(
                        "SELECT id FROM standing_rules WHERE id >= ?1 AND id < ?2 AND revoked_at IS NULL LIMIT 2",
                    )
                    .map_err(db)?
                    .query_map(params![prefix, upper], |r| r.get::<_, String>(0))
                    .map_err(db)?
                    .collect::<Result<Vec<String>, _>>()
                    .map_err(db)?;
                let [only] = candidates.as_slice() else {
                    return Ok(None);
                };
                c.prepare_cached(
                    "UPDATE standing_rules SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                )
                .map_err(db)?
                .execute(params![only, ms(now)])
                .map_err(db)?;
                c.prepare_cached("SELECT rule_json FROM standing_rules WHERE id = ?1")
                    .map_err(db)?
                    .query_row([only], |r| r.get(0))
                    .map(Some)
                    .map_err(db)
            })
            .await?;
        let Some(json) = revoked else {
            return Ok(None);
        };
        let mut rule: StandingRule = serde_json::from_str(&json)?;
        rule.revoked_at = Some(now);
        Ok(Some(rule))
    }

    async fn task_insert(&self, task: &TaskRecord) -> Result<bool, StoreError> {
        let changed = self
            .execute(
                "INSERT INTO tasks (task_id, approval_id, execution, actual_cost, duration_ms, ended_at, created_at, task_json) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
                vec![
                    task.task_id.clone().into(),
                    task.approval_id.clone().into(),
                    task.execution.map(|s| s.as_str().to_string()).into(),
                    task.actual_cost.into(),
                    task.duration_ms.map(|d| d as i64).into(),
                    task.ended_at.map(ms).into(),
                    ms(task.created_at).into(),
                    serde_json::to_string(task)?.into(),
                ],
            )
            .await?;
        Ok(changed == 1)
    }

    async fn task_update(
        &self,
        task: &TaskRecord,
        expected: Option<TaskStatus>,
    ) -> Result<bool, StoreError> {
        let changed = self
            .execute(
                "UPDATE tasks SET execution = ?2, actual_cost = ?3, duration_ms = ?4, ended_at = ?5, task_json = ?6 \
                 WHERE task_id = ?1 AND execution IS ?7",
                vec![
                    task.task_id.clone().into(),
                    task.execution.map(|s| s.as_str().to_string()).into(),
                    task.actual_cost.into(),
                    task.duration_ms.map(|d| d as i64).into(),
                    task.ended_at.map(ms).into(),
                    serde_json::to_string(task)?.into(),
                    expected.map(|s| s.as_str().to_string()).into(),
                ],
            )
            .await?;
        Ok(changed == 1)
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
        self.execute(
            "INSERT INTO upstream_outbox (body_json, created_at) VALUES (?1, ?2)",
            vec![body.to_string().into(), ms(Utc::now()).into()],
        )
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
        self.execute(
            "DELETE FROM upstream_outbox WHERE seq = ?1",
            vec![seq.into()],
        )
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
        self.execute(
            "INSERT INTO instances (id, last_seen) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen",
            vec![self.instance.clone().into(), ms(Utc::now()).into()],
        )
        .await?;
        Ok(())
    }

    async fn stopping(&self) -> Result<(), StoreError> {
        self.writes.checkpoint().await
    }

    async fn deliveries_finished(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_string();
        self.writes
            .write(move |c| {
                if let Some(row) = ids::row_of(c, &id)? {
                    c.prepare_cached(
                        "UPDATE approvals SET deliveries_done = 1 WHERE rowid = ?1 AND deliveries_done = 0",
                    )
                    .map_err(db)?
                    .execute([row])
                    .map_err(db)?;
                }
                Ok(())
            })
            .await
    }

    async fn claim_unfinished_deliveries(
        &self,
        stale: Duration,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let alive_since = ms(Utc::now()) - stale.as_millis() as i64;
        // One statement: claimers in other processes on the same file cannot interleave.
        let instance = self.instance.clone();
        let ids = self
            .writes
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE approvals SET delivery_owner = ?1
                     WHERE rowid IN (
                         SELECT a.rowid FROM approvals a
                         WHERE a.deliveries_done = 0 AND a.status = 'pending'
                           AND a.delivery_owner IS NOT ?1
                           AND NOT EXISTS (SELECT 1 FROM instances i
                                           WHERE i.id = a.delivery_owner AND i.last_seen >= ?2)
                         ORDER BY a.created_at LIMIT ?3)
                     RETURNING id",
                )
                .map_err(db)?
                .query_map(params![instance, alive_since, i64::from(limit)], |r| {
                    r.get(0)
                })
                .map_err(db)?
                .collect::<Result<Vec<String>, _>>()
                .map_err(db)
            })
            .await?;
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Decision, RiskClass};

    /// A request to store, made at `created_at`, expiring an hour later.
    fn request(id: &str, created_at: DateTime<Utc>) -> ApprovalRequest {
        ApprovalRequest {
            id: id.into(),
            tool: "shell".into(),
            summary: None,
            command: Some(format!("echo {id}")),
            args: None,
            risk_class: RiskClass::Medium,
            agent_id: None,
            session_key: None,
            requester: None,
            origin: None,
            estimated_cost: None,
            created_at,
            expires_at: created_at + chrono::Duration::hours(1),
            allowed_decisions: vec![Decision::ApproveOnce, Decision::Deny],
            requested_via_token: None,
        }
    }

    /// A decision by a rule, on request `id`.
    fn approval() -> Approval {
        Approval {
            approver: crate::domain::ApproverIdentity::rules("r"),
            decision: Decision::ApproveOnce,
            reason: None,
            decided_at: Utc::now(),
        }
    }

    /// Store a new pending request for each of `ids`.
    async fn store_new(store: &SqliteStore, ids: &[&str]) {
        for id in ids {
            store
                .insert_request(&request(id, Utc::now()), None, &[], false)
                .await
                .expect("insert");
        }
    }

    /// Poll `done` until it holds (10 s at most).
    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "waited too long for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What the file's id index (`approval_ids`) holds, read beside the store.
    fn indexed_ids(dir: &Path) -> (Vec<String>, i64) {
        let conn = rusqlite::Connection::open(dir.join("approvald.db")).expect("open the file");
        let ids = conn
            .prepare("SELECT id FROM approval_ids ORDER BY id")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<Vec<String>, _>>()
            .expect("ids");
        let mark = conn
            .query_row("SELECT merged_to FROM approval_ids_merged", [], |r| {
                r.get(0)
            })
            .expect("mark");
        (ids, mark)
    }

    /// Every lookup by id a user depends on, for requests `ids` (all pending, undecided).
    async fn found_by_id(store: &SqliteStore, ids: &[&str]) {
        for id in ids {
            let rec = store.get(id).await.expect("get").expect("found");
            assert_eq!(rec.request.id, *id);
            assert_eq!(
                store.status(id).await.expect("status"),
                Some(Status::Pending)
            );
            let short = &id[..9];
            assert_eq!(
                store.ids_with_prefix(short, 10).await.expect("prefix"),
                vec![id.to_string()],
                "short id {short}"
            );
            assert!(
                store.get_by_any_id(id).await.expect("any").is_some(),
                "{id} by any id"
            );
            let again = request(id, Utc::now());
            assert!(
                matches!(
                    store.insert_request(&again, None, &[], false).await,
                    Ok(InsertOutcome::Exists(_))
                ),
                "a second request with id {id} was not refused"
            );
        }
        let many: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        assert_eq!(store.get_many(&many).await.expect("many").len(), ids.len());
    }

    /// A new request is found by its id (whole, short, among many), refused as a duplicate,
    /// decided and settled, both while its id is only in the writer's memory and once the
    /// writer has moved it into the id index; then the memory is empty and the mark covers it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_ids_are_found_before_and_after_they_move_into_the_id_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        store
            .recent
            .held
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let ids = [
            "aaaaaaaa-0001-4000-8000-000000000001",
            "bbbbbbbb-0002-4000-8000-000000000002",
            "cccccccc-0003-4000-8000-000000000003",
        ];
        store_new(&store, &ids).await;
        let (indexed, _) = indexed_ids(dir.path());
        assert!(indexed.is_empty(), "moved while held: {indexed:?}");
        assert_eq!(store.recent.len(), 3);
        found_by_id(&store, &ids).await;
        assert_eq!(
            store
                .record_decision(ids[0], "rules:r", &approval(), None, &[])
                .await
                .expect("decide"),
            DecisionWrite::Recorded
        );

        store
            .recent
            .held
            .store(false, std::sync::atomic::Ordering::Relaxed);
        store.heartbeat().await.expect("a write wakes the writer");
        eventually("the ids to move", || {
            store.recent.len() == 0 && indexed_ids(dir.path()).1 == 3
        })
        .await;
        let (indexed, mark) = indexed_ids(dir.path());
        assert_eq!(indexed, ids.to_vec());
        assert_eq!(mark, 3, "the mark covers every moved row");
        found_by_id(&store, &ids[1..]).await;
        let rec = store.get(ids[0]).await.expect("get").expect("found");
        assert_eq!(rec.approvals.len(), 1, "the decision is read back with it");
        let resolution = Resolution {
            verdict: crate::domain::Verdict::Deny,
            scope: None,
            decided_by: None,
            reason: None,
            resolved_at: Utc::now(),
        };
        assert!(
            store
                .resolve(ids[1], &resolution, &[])
                .await
                .expect("settle")
        );
        assert_eq!(
            store.status(ids[1]).await.expect("status"),
            Some(Status::Denied)
        );
    }

    /// After a stop before the writer moved the newest ids (here: the index and its mark put
    /// back to before them), the next start moves them first: found, refused as duplicates,
    /// decided.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ids_not_yet_moved_at_a_stop_are_found_after_the_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids = [
            "dddddddd-0001-4000-8000-000000000001",
            "eeeeeeee-0002-4000-8000-000000000002",
        ];
        {
            let store = SqliteStore::open(dir.path()).await.expect("open");
            store_new(&store, &ids).await;
            store.stopping().await.expect("stop");
        }
        // The writer thread ends after the store (moving what was left): wait for it to let
        // go of the file's lock, then put the index back as a crash would have left it.
        let lock = std::fs::File::open(dir.path().join("approvald.db.lock")).expect("lock file");
        eventually("the writer to end", || lock.try_lock().is_ok()).await;
        drop(lock);
        assert_eq!(
            indexed_ids(dir.path()),
            (ids.map(String::from).to_vec(), 2),
            "moved at the stop"
        );
        let unmoved = |conn: &rusqlite::Connection| {
            conn.execute_batch(
                "DELETE FROM approval_ids; UPDATE approval_ids_merged SET merged_to = 0",
            )
        };
        let conn = rusqlite::Connection::open(dir.path().join("approvald.db")).expect("file");
        conn.busy_timeout(Duration::from_secs(10)).expect("busy");
        unmoved(&conn).expect("put the index back");
        drop(conn);
        assert!(indexed_ids(dir.path()).0.is_empty());

        let store = SqliteStore::open(dir.path()).await.expect("reopen");
        let (indexed, mark) = indexed_ids(dir.path());
        assert_eq!(indexed, ids.to_vec(), "moved at the start");
        assert_eq!(mark, 2);
        found_by_id(&store, &ids).await;
        assert_eq!(
            store
                .record_decision(ids[1], "rules:r", &approval(), None, &[])
                .await
                .expect("decide"),
            DecisionWrite::Recorded
        );
    }

    /// A request whose write is rolled back is not found by its id, and its id stays free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rolled_back_request_leaves_no_id_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        let id = "ffffffff-0001-4000-8000-000000000001";
        let req = request(id, Utc::now());
        let json = crate::json::text(&req).expect("json");
        let failed = store
            .writes
            .write(move |c| {
                let row = NewRow {
                    id: id.into(),
                    tool: "shell".into(),
                    agent_id: None,
                    session_key: None,
                    json: json.clone(),
                    created_at: 1,
                    expires_at: 2,
                    fold_key: None,
                    now: 1,
                    owner: "me".into(),
                    fanout: false,
                };
                assert!(
                    group_commit::insert(c, &row, &[])?,
                    "stored in the transaction"
                );
                Err::<(), _>(StoreError("the write fails after its insert".into()))
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(
            store.recent.get(id),
            None,
            "the rolled-back id is still known"
        );
        assert!(store.get(id).await.expect("get").is_none());
        assert!(matches!(
            store.insert_request(&req, None, &[], false).await,
            Ok(InsertOutcome::Inserted)
        ));
        assert!(store.get(id).await.expect("get").is_some());
    }

    /// A second handle on the file opens while the first one's writer is in a transaction
    /// (its start waits for it, rather than failing with "database is locked"), and both
    /// find what either stored. (The migrations wait for the write; the id recovery runs
    /// after them on the same connection, with the same busy timeout.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_handle_opens_while_the_first_is_writing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = SqliteStore::open(dir.path()).await.expect("open");
        let (started, writing) = std::sync::mpsc::channel();
        let writes = first.writes.clone();
        let long = tokio::spawn(async move {
            writes
                .write(move |_| {
                    let _ = started.send(());
                    std::thread::sleep(Duration::from_millis(500));
                    Ok(())
                })
                .await
        });
        tokio::task::spawn_blocking(move || writing.recv())
            .await
            .expect("task")
            .expect("the first handle's write is under way");
        let second = SqliteStore::open(dir.path())
            .await
            .expect("a second handle opens once the write is done");
        long.await.expect("task").expect("the long write");
        let id = "abababab-0001-4000-8000-000000000001";
        store_new(&second, &[id]).await;
        assert!(first.get(id).await.expect("get").is_some());
    }

    /// One process per SQLite file: another one waits for the lock, then is told why it
    /// cannot open the file. Handles in the same process share it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_process_cannot_open_the_same_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        let second = SqliteStore::open(dir.path())
            .await
            .expect("a second handle");
        // Another process's lock is another open file description of the lock file.
        let other = std::fs::File::open(dir.path().join("approvald.db.lock")).expect("lock file");
        assert!(
            matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
            "the file is not locked while a store is open"
        );
        drop((store, second));
        let dir2 = tempfile::tempdir().expect("tempdir");
        let held = std::fs::File::create(dir2.path().join("approvald.db.lock")).expect("create");
        held.lock().expect("lock");
        let err = RecentIds::for_file(
            &dir2.path().join("approvald.db"),
            Duration::from_millis(100),
        )
        .err()
        .expect("opened a file another process holds");
        assert!(
            err.0.contains("in use by another approvald process"),
            "{}",
            err.0
        );
    }

    /// New requests fill the creation-time index's pages instead of leaving them half empty
    /// (more pages, each rewritten at every commit). Fails with the index kept descending
    /// (about half of each leaf unused).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_requests_fill_the_creation_time_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path()).await.expect("open");
        let start = Utc::now();
        for n in 0..2_000 {
            let created_at = start + chrono::Duration::milliseconds(n);
            let req = request(&uuid::Uuid::new_v4().to_string(), created_at);
            store
                .insert_request(&req, None, &[], false)
                .await
                .expect("insert");
        }
        let file = dir.path().join("approvald.db");
        let conn = rusqlite::Connection::open(file).expect("open the file");
        let (unused, size): (i64, i64) = conn
            .query_row(
                "SELECT SUM(unused), SUM(pgsize) FROM dbstat
                 WHERE name = 'approvals_created' AND pagetype = 'leaf'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("dbstat");
        let share = unused as f64 / size as f64;
        assert!(
            share < 0.25,
            "the creation-time index's leaves are {:.0} % empty",
            share * 100.0
        );
    }

    /// Migration 0008 rebuilds `approvals` with its status check written without an IN list.
    /// A database from before it keeps every request as it was, decisions still have to name
    /// a request, an unknown status is still refused, and none of the writer's statements for
    /// a request, a settle or a decision builds a temporary table or index (what the migration
    /// and the plain inserts in `group_commit` are for: fails without either).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_rebuilt_requests_table_keeps_its_rows_and_its_checks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("approvald.db");
        {
            let old = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(&file)
                        .create_if_missing(true)
                        .journal_mode(SqliteJournalMode::Wal)
                        .foreign_keys(true),
                )
                .await
                .expect("open");
            MIGRATOR
                .run_to(7, &old)
                .await
                .expect("the schema before 0008");
            let json =
                |id: &str| serde_json::to_string(&request(id, Utc::now())).expect("request json");
            sqlx::query(
                "INSERT INTO approvals (id, status, tool, agent_id, session_key, request_json,
                     created_at, expires_at, resolution_json, resolved_at, fold_key,
                     delivery_owner, deliveries_done)
                 VALUES ('settled', 'denied', 'shell', 'agent-1', 'sess', ?1, 10, 20,
                     '{\"r\":1}', 15, NULL, NULL, 1),
                        ('open', 'pending', 'shell', NULL, NULL, ?2, 11, 21, NULL, NULL,
                     'fold-1', 'instance-1', 0)",
            )
            .bind(json("settled"))
            .bind(json("open"))
            .execute(&old)
            .await
            .expect("old requests");
            sqlx::query(
                "INSERT INTO decisions (approval_created_at, approval_id, approver_key, seq,
                     approval_json) VALUES (10, 'settled', 'alice', 0, '{}')",
            )
            .execute(&old)
            .await
            .expect("old decision");
            old.close().await;
        }
        let store = SqliteStore::open(dir.path()).await.expect("open runs 0008");
        let open = store.get("open").await.expect("get").expect("kept");
        assert_eq!(
            (open.request.id.as_str(), open.status),
            ("open", Status::Pending)
        );
        assert_eq!(
            store.status("settled").await.expect("status"),
            Some(Status::Denied)
        );
        drop(store);

        let conn = rusqlite::Connection::open(&file).expect("open the file");
        conn.execute_batch("PRAGMA foreign_keys = ON")
            .expect("pragma");
        let columns: (String, Option<String>, i64, Option<String>, Option<i64>) = conn
            .query_row(
                "SELECT session_key, fold_key, deliveries_done, resolution_json, resolved_at
                 FROM approvals WHERE id = 'settled'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .expect("row");
        assert_eq!(
            columns,
            ("sess".into(), None, 1, Some("{\"r\":1}".into()), Some(15))
        );
        let (fold, owner, done): (String, String, i64) = conn
            .query_row(
                "SELECT fold_key, delivery_owner, deliveries_done FROM approvals
                 INDEXED BY approvals_fold WHERE fold_key = 'fold-1' AND status = 'pending'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("found through the fold index");
        assert_eq!(
            (fold.as_str(), owner.as_str(), done),
            ("fold-1", "instance-1", 0)
        );
        let decisions: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM decisions d JOIN approvals a ON a.id = d.approval_id",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(decisions, 1, "the decision still joins its request");
        let dangling = conn.execute(
            "INSERT INTO decisions (approval_created_at, approval_id, approver_key, seq,
                 approval_json) VALUES (1, 'nobody', 'bob', 0, '{}')",
            [],
        );
        assert!(dangling.is_err(), "a decision on no request was stored");
        let bogus = conn.execute(
            "UPDATE approvals SET status = 'bogus' WHERE id = 'open'",
            [],
        );
        assert!(bogus.is_err(), "an unknown status was stored");
        // The writer's own statements (not copies): a temporary table or index there is
        // built at every request, settle or decision.
        for sql in group_commit::hot_statements() {
            let mut plan = conn.prepare(&format!("EXPLAIN {sql}")).expect("explain");
            let mut rows = plan.raw_query();
            let mut ops = Vec::new();
            while let Some(row) = rows.next().expect("plan") {
                ops.push(row.get::<_, String>(1).expect("opcode"));
            }
            assert!(!ops.is_empty(), "no plan for {sql}");
            assert!(
                !ops.iter().any(|op| op == "OpenEphemeral"),
                "{sql} builds a temporary table or index"
            );
            // AUTOINCREMENT's bookkeeping (a scan and a rewrite of `sqlite_sequence`), three
            // times a cycle; dropped by migration 0009.
            assert!(
                !ops.iter().any(|op| op == "MemMax"),
                "{sql} keeps an AUTOINCREMENT counter"
            );
        }
    }
}
