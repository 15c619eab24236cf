//! The shared store: PostgreSQL, for several approvald instances behind a load balancer.
//!
//! SQLite keeps one process's state on its disk; with more than one instance (for availability,
//! or rolling restarts with no gap) they must share their state, so they share one PostgreSQL
//! database and each is only a cache in front of it. The semantics are the SQLite store's,
//! method by method; what this module adds is that they hold across instances, under
//! PostgreSQL's default READ COMMITTED isolation:
//!
//! - **Every resolution is a compare-and-set.** `record_decision` and `resolve` settle a request
//!   with `UPDATE .. WHERE id = $1 AND status = 'pending'` in one transaction with the decision
//!   row and the audit rows, so of any number of racing resolvers on any instances exactly one
//!   wins, and a loser writes nothing. A decision is stored only while its request is pending
//!   (the request row is locked first), and one approver counts once (the decisions primary
//!   key, with `ON CONFLICT DO NOTHING`).
//! - **Identical requests fold across instances.** Inserts with a fold key take a transaction
//!   advisory lock on the key before checking for an identical pending request, so two racing
//!   identical requests (wherever they arrive) store one request and fold the other into it.
//! - **A dead instance's fan-outs are taken over once.** Instances heartbeat into `instances`
//!   (on the database's clock, so machine clock skew does not matter); claiming a stale owner's
//!   unfinished fan-outs is one `UPDATE .. FOR UPDATE SKIP LOCKED`, so each goes to one claimer.
//! - **Tasks move by compare-and-set** on their execution status (`IS NOT DISTINCT FROM`).
//! - **The audit log is append-only** (triggers refuse UPDATE, DELETE and TRUNCATE) and its
//!   `seq` order is commit order: appenders serialise on an advisory lock held to commit, so a
//!   reader paging with "after seq N" never misses a row that committed late.
//! - **Migrations run once** however many instances start together: sqlx's migrator holds a
//!   session advisory lock (keyed on the database name) while it applies them.
//!
//! Advisory locks taken here use the two-key form `(class, key)`, whose key space is separate
//! from the single-`bigint` form (sqlx's migrator lock and any other lock keyed by a `bigint`):
//! classes [`LOCK_CLASS_FOLD`] and [`LOCK_CLASS_AUDIT`] are this module's.

use std::str::FromStr;
use std::time::Duration;

use approvald_channel::MessageRef;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Row};

use super::{
    AuditQuery, DecisionWrite, InsertOutcome, ListQuery, Store, StoreError, StoredAuditRow,
    from_ms, message_key, ms,
};
use crate::audit::AuditEntry;
use crate::domain::{Approval, ApprovalRecord, ApprovalRequest, Delivery, Resolution, Status};
use crate::rules::StandingRule;
use crate::tasks::{TaskRecord, TaskStatus};

/// Advisory lock class of fold-key inserts: `pg_advisory_xact_lock(LOCK_CLASS_FOLD, hashtext(key))`.
pub const LOCK_CLASS_FOLD: i32 = 0x4150_0001;
/// Advisory lock class (key 0) every audit append holds until its transaction ends.
pub const LOCK_CLASS_AUDIT: i32 = 0x4150_0002;

/// The columns a whole record is read from, decisions and deliveries included as JSON arrays,
/// so one query (not three) loads a request: reads are most of the work per request.
macro_rules! record_columns {
    () => {
        "SELECT a.id, a.status, a.request_json, a.resolution_json, \
         COALESCE((SELECT json_agg(d.approval_json::json ORDER BY d.seq) \
                   FROM decisions d WHERE d.approval_id = a.id), '[]')::text AS approvals_json, \
         COALESCE((SELECT json_agg(v.delivery_json::json ORDER BY v.seq) \
                   FROM deliveries v WHERE v.approval_id = a.id), '[]')::text AS deliveries_json"
    };
}

/// Now on the database's clock, in milliseconds: what heartbeats and staleness are measured in.
macro_rules! db_now_ms {
    () => {
        "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
    };
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long connecting (and, later, waiting for a free pooled connection) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pooled connections per instance unless `storage.max_connections` says otherwise.
pub const DEFAULT_POOL: u32 = 16;

/// The store several approvald instances share (see the module docs for what holds across
/// them). Cloning is cheap and keeps the instance id: a clone is the same instance.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    instance: String,
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The smallest string above every string starting with `prefix` (ids are compared bytewise):
/// with `id >= prefix` it bounds an index range scan.
fn prefix_upper(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

impl PostgresStore {
    /// Connect to `url` (`postgres://user:password@host:port/db`), apply the migrations (safe
    /// when several instances start at once) and say this new instance is alive.
    ///
    /// Errors never contain the URL's password.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with_pool(url, DEFAULT_POOL).await
    }

    /// [`Self::connect`] with at most `max_connections` pooled connections (the cluster's
    /// listener and leader connections come on top).
    pub async fn connect_with_pool(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let url_secrets = Secrets::of(url);
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            StoreError(url_secrets.scrub(&format!(
                "{what} PostgreSQL at {}: {e}",
                url_secrets.describe()
            )))
        };
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| fail("bad URL for", &e))?
            .application_name("approvald");
        // One plain connection first: the pool would retry until its timeout and then say only
        // "timed out", where this says why (refused, unknown database, bad password).
        match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
            Ok(Ok(probe)) => probe.close().await.ok(),
            Ok(Err(e)) => return Err(fail("cannot connect to", &e)),
            Err(_) => return Err(fail("cannot connect to", &"timed out")),
        };
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| fail("cannot connect to", &e))?;
        if let Err(e) = MIGRATOR.run(&pool).await {
            // Closing drops the connection that may still hold the migrator's session lock.
            pool.close().await;
            return Err(fail("cannot migrate", &e));
        }
        let store = Self {
            pool,
            instance: uuid::Uuid::new_v4().to_string(),
        };
        store
            .heartbeat()
            .await
            .map_err(|e| StoreError(url_secrets.scrub(&e.0)))?;
        Ok(store)
    }

    /// The connection pool, for what shares this database beside the store (the cluster's
    /// wake-ups, the leader lock).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// This instance's id (as [`Store::instance_id`]).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// A record from a row of `record_columns!()`.
    fn load(row: &PgRow) -> Result<ApprovalRecord, StoreError> {
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

    /// The JSON documents in the first column of `sql` (one `$1` = `id`), decoded.
    async fn json_rows<T: serde::de::DeserializeOwned>(
        &self,
        sql: &'static str,
        id: &str,
    ) -> Result<Vec<T>, StoreError> {
        sqlx::query(sql)
            .bind(id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok(serde_json::from_str(r.try_get::<&str, _>(0)?)?))
            .collect()
    }

    /// One attempt at `insert_request`'s transaction: true when the request was stored.
    async fn try_insert(
        &self,
        req: &ApprovalRequest,
        json: &str,
        fold_key: Option<&str>,
        audits: &[AuditEntry],
        fanout: bool,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(key) = fold_key {
            // Held to the end of the transaction: a racing identical insert waits here, then
            // (its next statement taking a new snapshot) sees this one's row.
            sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                .bind(LOCK_CLASS_FOLD)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        let done = sqlx::query(
            "INSERT INTO approvals (id, status, tool, agent_id, session_key, request_json, created_at,
                                    expires_at, fold_key, delivery_owner, deliveries_done)
             SELECT $1, 'pending', $2, $3, $4, $5, $6, $7, $8, $10, $11
             WHERE $8::text IS NULL OR NOT EXISTS (
                 SELECT 1 FROM approvals
                 WHERE fold_key = $8 AND status = 'pending' AND expires_at > $9)
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&req.id)
        .bind(&req.tool)
        .bind(&req.agent_id)
        .bind(&req.session_key)
        .bind(json)
        .bind(ms(req.created_at))
        .bind(ms(req.expires_at))
        .bind(fold_key)
        .bind(ms(Utc::now()))
        .bind(&self.instance)
        .bind(!fanout)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        append_audits(&mut tx, audits).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// The compare-and-set every resolution goes through: only a pending request can be settled,
/// so of two racing resolvers (on any instances) exactly one sees `true`. A loser's UPDATE waits
/// for the winner's commit, then finds the row no longer pending.
async fn settle(
    conn: &mut PgConnection,
    id: &str,
    resolution: &Resolution,
) -> Result<bool, StoreError> {
    let updated = sqlx::query(
        "UPDATE approvals SET status = $2, resolution_json = $3, resolved_at = $4
         WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(resolution.verdict.status().as_str())
    .bind(crate::json::text(resolution)?)
    .bind(ms(resolution.resolved_at))
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() == 1)
}

/// Audit entries written in the caller's transaction, so a change and its audit line are
/// durable together. Called last in a transaction: the audit lock it takes is held to commit
/// (so `seq` order is commit order), and being the last lock taken it cannot deadlock.
async fn append_audits(conn: &mut PgConnection, entries: &[AuditEntry]) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_xact_lock($1, 0)")
        .bind(LOCK_CLASS_AUDIT)
        .execute(&mut *conn)
        .await?;
    for entry in entries {
        sqlx::query(
            "INSERT INTO audit (at, approval_id, event, transport, entry_json) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(ms(entry.at))
        .bind(&entry.approval_id)
        .bind(entry.event.as_str())
        .bind(entry.transport.map(|t| t.as_str()))
        // Whole, not `stored_text`: instances of a cluster are upgraded one by one, and one
        // still running the previous build reads every field from the text.
        .bind(crate::json::text(entry)?)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl Store for PostgresStore {
    async fn insert_request(
        &self,
        req: &ApprovalRequest,
        fold_key: Option<&str>,
        audits: &[AuditEntry],
        fanout: bool,
    ) -> Result<InsertOutcome, StoreError> {
        let json = crate::json::text(req)?;
        // Twice at most: an identical pending request may settle between the two steps.
        for _ in 0..2 {
            if self
                .try_insert(req, &json, fold_key, audits, fanout)
                .await?
            {
                return Ok(InsertOutcome::Inserted);
            }
            if let Some(existing) = self.get(&req.id).await? {
                return Ok(InsertOutcome::Exists(Box::new(existing)));
            }
            let Some(key) = fold_key else { continue };
            let folded: Option<String> = sqlx::query_scalar(
                "SELECT id FROM approvals
                 WHERE fold_key = $1 AND status = 'pending' AND expires_at > $2
                 ORDER BY created_at, id LIMIT 1",
            )
            .bind(key)
            .bind(ms(Utc::now()))
            .fetch_optional(&self.pool)
            .await?;
            if let Some(id) = folded
                && let Some(rec) = self.get(&id).await?
            {
                sqlx::query(
                    "INSERT INTO approval_aliases (alias, approval_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(&req.id)
                .bind(&id)
                .execute(&self.pool)
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
            " FROM approvals a WHERE a.id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(Self::load).transpose()
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<ApprovalRecord>, StoreError> {
        let rows = sqlx::query(concat!(
            record_columns!(),
            " FROM approvals a WHERE a.id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::load).collect()
    }

    async fn status(&self, id: &str) -> Result<Option<Status>, StoreError> {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM approvals WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        status
            .map(|s| Status::from_str(&s).map_err(StoreError))
            .transpose()
    }

    async fn ids_with_prefix(&self, prefix: &str, limit: u32) -> Result<Vec<String>, StoreError> {
        // A range scan on the (bytewise) primary key; `starts_with` keeps it exact whatever the
        // prefix holds, LIKE wildcards included.
        Ok(sqlx::query_scalar(
            "SELECT id FROM approvals WHERE id >= $1 AND id < $2 AND starts_with(id, $1)
             ORDER BY id LIMIT $3",
        )
        .bind(prefix)
        .bind(prefix_upper(prefix))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn list(&self, q: &ListQuery) -> Result<Vec<ApprovalRecord>, StoreError> {
        let mut sql = String::from(concat!(record_columns!(), " FROM approvals a WHERE TRUE"));
        let mut n = 0;
        let mut param = || {
            n += 1;
            format!("${n}")
        };
        if q.status.is_some() {
            sql.push_str(&format!(" AND a.status = {}", param()));
        }
        if q.agent_id.is_some() {
            sql.push_str(&format!(" AND a.agent_id = {}", param()));
        }
        if q.tool.is_some() {
            sql.push_str(&format!(" AND a.tool = {}", param()));
        }
        if q.before.is_some() {
            let (at, id) = (param(), param());
            sql.push_str(&format!(
                " AND (a.created_at < {at} OR (a.created_at = {at} AND a.id < {id}))"
            ));
        }
        sql.push_str(&format!(
            " ORDER BY a.created_at DESC, a.id DESC LIMIT {}",
            param()
        ));
        // Built only from the fixed fragments above; every value is a bound parameter, bound
        // below in the order the placeholders were numbered.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some(status) = q.status {
            query = query.bind(status.as_str());
        }
        if let Some(agent) = &q.agent_id {
            query = query.bind(agent);
        }
        if let Some(tool) = &q.tool {
            query = query.bind(tool);
        }
        if let Some((at, id)) = &q.before {
            query = query.bind(*at).bind(id);
        }
        let rows = query
            .bind(i64::from(q.limit.max(1)))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::load).collect()
    }

    async fn record_decision(
        &self,
        id: &str,
        approver_key: &str,
        approval: &Approval,
        resolution: Option<&Resolution>,
        audits: &[AuditEntry],
    ) -> Result<DecisionWrite, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Lock the request first: a decision is stored only while it is pending, and no
        // resolver on another instance can settle it between that check and this commit.
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM approvals WHERE id = $1 FOR NO KEY UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if status.as_deref() != Some("pending") {
            tx.rollback().await?;
            return Ok(DecisionWrite::NotPending);
        }
        let inserted = sqlx::query(
            "INSERT INTO decisions (approval_id, approver_key, approval_json) VALUES ($1, $2, $3)
             ON CONFLICT (approval_id, approver_key) DO NOTHING",
        )
        .bind(id)
        .bind(approver_key)
        .bind(crate::json::text(approval)?)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(DecisionWrite::ApproverAlreadyDecided);
        }
        if let Some(resolution) = resolution
            && !settle(&mut tx, id, resolution).await?
        {
            tx.rollback().await?;
            return Ok(DecisionWrite::NotPending);
        }
        append_audits(&mut tx, audits).await?;
        tx.commit().await?;
        Ok(DecisionWrite::Recorded)
    }

    async fn resolve(
        &self,
        id: &str,
        resolution: &Resolution,
        audits: &[AuditEntry],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !settle(&mut tx, id, resolution).await? {
            tx.rollback().await?;
            return Ok(false);
        }
        append_audits(&mut tx, audits).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn record_delivery(&self, id: &str, delivery: &Delivery) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO deliveries (approval_id, delivery_json, message_key) VALUES ($1, $2, $3)",
        )
        .bind(id)
        .bind(serde_json::to_string(delivery)?)
        .bind(delivery.message.as_ref().map(message_key))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn approval_for_message(
        &self,
        message: &MessageRef,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT approval_id FROM deliveries WHERE message_key = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(message_key(message))
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn pending_deadlines(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, expires_at FROM approvals WHERE status = 'pending' ORDER BY expires_at",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get("id")?, from_ms(r.try_get("expires_at")?))))
            .collect()
    }

    async fn count_by_status(&self) -> Result<Vec<(Status, u64)>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM approvals GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                let s: String = r.try_get("status")?;
                let n: i64 = r.try_get("n")?;
                Ok((Status::from_str(&s).map_err(StoreError)?, count(n)))
            })
            .collect()
    }

    async fn audit_append(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        append_audits(&mut tx, std::slice::from_ref(entry)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn audit_list(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let rows: Vec<StoredAuditRow> = match &q.approval_id {
            Some(id) => sqlx::query_as(
                "SELECT seq, approval_id, event, transport, entry_json FROM audit
                 WHERE approval_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            )
            .bind(id),
            None => sqlx::query_as(
                "SELECT seq, approval_id, event, transport, entry_json FROM audit
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
            ),
        }
        .bind(q.after_seq)
        .bind(i64::from(q.limit.max(1)))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(StoredAuditRow::into_entry).collect()
    }

    async fn add_standing_rule(&self, rule: &StandingRule) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO standing_rules (id, rule_json, created_at) VALUES ($1, $2, $3)")
            .bind(&rule.id)
            .bind(serde_json::to_string(rule)?)
            .bind(ms(rule.created_at))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn standing_rules(&self, include_revoked: bool) -> Result<Vec<StandingRule>, StoreError> {
        let rows = sqlx::query(
            "SELECT rule_json, revoked_at FROM standing_rules WHERE $1 OR revoked_at IS NULL
             ORDER BY created_at, id",
        )
        .bind(include_revoked)
        .fetch_all(&self.pool)
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
        let candidates: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM standing_rules
             WHERE id >= $1 AND id < $2 AND starts_with(id, $1) AND revoked_at IS NULL LIMIT 2",
        )
        .bind(id)
        .bind(prefix_upper(id))
        .fetch_all(&self.pool)
        .await?;
        let [only] = candidates.as_slice() else {
            return Ok(None);
        };
        let now = Utc::now();
        // Of two instances revoking at once, one gets the rule and the other None.
        let json: Option<String> = sqlx::query_scalar(
            "UPDATE standing_rules SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL
             RETURNING rule_json",
        )
        .bind(only)
        .bind(ms(now))
        .fetch_optional(&self.pool)
        .await?;
        let Some(json) = json else { return Ok(None) };
        let mut rule: StandingRule = serde_json::from_str(&json)?;
        rule.revoked_at = Some(now);
        Ok(Some(rule))
    }

    async fn task_insert(&self, task: &TaskRecord) -> Result<bool, StoreError> {
        // A bare ON CONFLICT covers both unique keys (task id and approval).
        let done = sqlx::query(
            "INSERT INTO tasks (task_id, approval_id, execution, actual_cost, duration_ms, ended_at, created_at, task_json) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(&task.task_id)
        .bind(&task.approval_id)
        .bind(task.execution.map(TaskStatus::as_str))
        .bind(task.actual_cost)
        .bind(task.duration_ms.map(|d| i64::try_from(d).unwrap_or(i64::MAX)))
        .bind(task.ended_at.map(ms))
        .bind(ms(task.created_at))
        .bind(serde_json::to_string(task)?)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn task_update(
        &self,
        task: &TaskRecord,
        expected: Option<TaskStatus>,
    ) -> Result<bool, StoreError> {
        // Racing updates of one row serialise on its lock; the loser re-checks `execution` on
        // the winner's version and matches nothing.
        let done = sqlx::query(
            "UPDATE tasks SET execution = $2, actual_cost = $3, duration_ms = $4, ended_at = $5, task_json = $6 \
             WHERE task_id = $1 AND execution IS NOT DISTINCT FROM $7::text",
        )
        .bind(&task.task_id)
        .bind(task.execution.map(TaskStatus::as_str))
        .bind(task.actual_cost)
        .bind(task.duration_ms.map(|d| i64::try_from(d).unwrap_or(i64::MAX)))
        .bind(task.ended_at.map(ms))
        .bind(serde_json::to_string(task)?)
        .bind(expected.map(TaskStatus::as_str))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn task_by_id(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self
            .json_rows("SELECT task_json FROM tasks WHERE task_id = $1", task_id)
            .await?
            .pop())
    }

    async fn task_by_approval(&self, approval_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self
            .json_rows(
                "SELECT task_json FROM tasks WHERE approval_id = $1",
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
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let s: String = r.try_get("s")?;
                let n: i64 = r.try_get("n")?;
                Ok((TaskStatus::from_str(&s).map_err(StoreError)?, count(n)))
            })
            .collect()
    }

    async fn task_totals(&self) -> Result<(f64, u64), StoreError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(actual_cost), 0)::float8 AS cost,
                    COALESCE(SUM(duration_ms), 0)::bigint AS ms FROM tasks",
        )
        .fetch_one(&self.pool)
        .await?;
        let cost: f64 = row.try_get("cost")?;
        let total_ms: i64 = row.try_get("ms")?;
        Ok((cost, count(total_ms)))
    }

    async fn spent_since(&self, since: DateTime<Utc>) -> Result<f64, StoreError> {
        let spent: f64 = sqlx::query_scalar(
            "SELECT COALESCE(SUM(actual_cost), 0)::float8 FROM tasks WHERE ended_at >= $1",
        )
        .bind(ms(since))
        .fetch_one(&self.pool)
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
            "SELECT COUNT(*) FROM approvals a LEFT JOIN tasks t ON t.approval_id = a.id WHERE ($1::text IS NULL OR ",
            task_status!(),
            " = $1)"
        ))
        .bind(status.map(TaskStatus::as_str))
        .fetch_one(&self.pool)
        .await?;
        let ids: Vec<String> = sqlx::query_scalar(concat!(
            "SELECT a.id FROM approvals a LEFT JOIN tasks t ON t.approval_id = a.id WHERE ($1::text IS NULL OR ",
            task_status!(),
            " = $1) ORDER BY a.created_at DESC, a.id DESC LIMIT $2 OFFSET $3"
        ))
        .bind(status.map(TaskStatus::as_str))
        .bind(i64::from(limit))
        .bind(i64::from(offset))
        .fetch_all(&self.pool)
        .await?;
        Ok((ids, count(total)))
    }

    async fn outbox_push(&self, body: &serde_json::Value) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO upstream_outbox (body_json, created_at) VALUES ($1, $2)")
            .bind(body.to_string())
            .bind(ms(Utc::now()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outbox_peek(&self, limit: u32) -> Result<Vec<(i64, serde_json::Value)>, StoreError> {
        let rows = sqlx::query("SELECT seq, body_json FROM upstream_outbox ORDER BY seq LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get("seq")?;
                let body: &str = r.try_get("body_json")?;
                Ok((seq, serde_json::from_str(body)?))
            })
            .collect()
    }

    async fn outbox_remove(&self, seq: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM upstream_outbox WHERE seq = $1")
            .bind(seq)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn outbox_len(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM upstream_outbox")
            .fetch_one(&self.pool)
            .await?;
        Ok(count(n))
    }

    async fn alias_target(&self, alias: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT approval_id FROM approval_aliases WHERE alias = $1")
                .bind(alias)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    fn instance_id(&self) -> &str {
        &self.instance
    }

    async fn heartbeat(&self) -> Result<(), StoreError> {
        sqlx::query(concat!(
            "INSERT INTO instances (id, last_seen) VALUES ($1, ",
            db_now_ms!(),
            ") ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen"
        ))
        .bind(&self.instance)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn deliveries_finished(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE approvals SET deliveries_done = TRUE WHERE id = $1 AND NOT deliveries_done",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn claim_unfinished_deliveries(
        &self,
        stale: Duration,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        // Clamped so `now - stale` cannot overflow a bigint.
        let stale_ms = i64::try_from(stale.as_millis())
            .unwrap_or(i64::MAX)
            .min(i64::MAX / 4);
        // One statement: rows another claimer holds are skipped, and a row that changed since
        // this statement's snapshot (claimed by a live instance, finished, resolved) is
        // re-checked on its new version before it is taken.
        let ids: Vec<String> = sqlx::query_scalar(concat!(
            "WITH claimed AS (
                 UPDATE approvals SET delivery_owner = $1
                 WHERE id IN (
                     SELECT a.id FROM approvals a
                     WHERE NOT a.deliveries_done AND a.status = 'pending'
                       AND a.delivery_owner IS DISTINCT FROM $1
                       AND NOT EXISTS (SELECT 1 FROM instances i
                                       WHERE i.id = a.delivery_owner AND i.last_seen >= ",
            db_now_ms!(),
            " - $2)
                     ORDER BY a.created_at LIMIT $3
                     FOR UPDATE SKIP LOCKED)
                 RETURNING id, created_at)
             SELECT id FROM claimed ORDER BY created_at, id"
        ))
        .bind(&self.instance)
        .bind(stale_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids)
    }
}

/// What of a connection URL must never reach a log or an error: the password, as written and
/// percent-decoded, in the user info or as a `password=` parameter.
struct Secrets {
    url: String,
    secrets: Vec<String>,
}

impl Secrets {
    fn of(url: &str) -> Self {
        let mut secrets = vec![url.to_string()];
        if let Some(password) = userinfo_password(url) {
            secrets.push(password.to_string());
            secrets.push(percent_decode(password));
        }
        for value in query_passwords(url) {
            secrets.push(value.to_string());
            secrets.push(percent_decode(&value.replace('+', " ")));
        }
        secrets.retain(|s| !s.is_empty());
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self {
            url: url.to_string(),
            secrets,
        }
    }

    /// `text` with every secret replaced by `***`.
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), "***");
        }
        out
    }

    /// The URL as it may be shown: its passwords replaced by `***`.
    fn describe(&self) -> String {
        let mut out = self.url.clone();
        if let Some(password) = userinfo_password(&self.url)
            && !password.is_empty()
            && let Some(at) = self.url.find(password)
        {
            out.replace_range(at..at + password.len(), "***");
        }
        for value in query_passwords(&self.url) {
            if !value.is_empty() {
                out = out.replace(&format!("password={value}"), "password=***");
            }
        }
        // Whatever the parsing above missed is still never shown.
        let leftovers = Secrets {
            url: String::new(),
            secrets: self
                .secrets
                .iter()
                .filter(|s| **s != self.url)
                .cloned()
                .collect(),
        };
        leftovers.scrub(&out)
    }
}

/// The password in `scheme://user:password@host/...`, as written.
fn userinfo_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    Some(password)
}

/// The values of `password=` query parameters, as written.
fn query_passwords(url: &str) -> Vec<&str> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or(query);
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("password="))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_scrubbed_as_written_and_decoded() {
        let url = "postgres://app:p%40ss%2Fw0rd@db.internal:5432/approvald?sslmode=require";
        let s = Secrets::of(url);
        assert_eq!(
            s.describe(),
            "postgres://app:***@db.internal:5432/approvald?sslmode=require"
        );
        let text = s.scrub("auth failed for p@ss/w0rd (p%40ss%2Fw0rd)");
        assert!(
            !text.contains("p@ss/w0rd") && !text.contains("p%40ss%2Fw0rd"),
            "{text}"
        );

        let q = Secrets::of("postgres://app@db/x?password=hunter%202&sslmode=disable");
        assert_eq!(
            q.describe(),
            "postgres://app@db/x?password=***&sslmode=disable"
        );
        assert!(!q.scrub("hunter 2 / hunter%202").contains("hunter"));

        let none = Secrets::of("postgres://app@db/x");
        assert_eq!(none.describe(), "postgres://app@db/x");
    }

    #[test]
    fn prefix_bounds_cover_exactly_the_prefix() {
        let upper = prefix_upper("ab");
        assert!("ab" < upper.as_str() && "abzzzz" < upper.as_str() && "ac" > upper.as_str());
    }
}
