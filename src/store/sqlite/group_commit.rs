//! Group commit for the hot writes (a new request, a decision, a resolution): they queue for
//! the single writer connection, and whatever has queued while the previous batch committed is
//! written in one transaction, each write in turn, then committed once. Under load a commit
//! (and its WAL append) is shared by many requests instead of paid by each; alone, a write
//! waits for nobody. Every caller is answered only after the commit that holds its write, so
//! "acknowledged" still means "durable".
//!
//! Each write is one multi-statement query (the change, then its audit lines guarded by
//! `changes() = 1`): one round trip to SQLite's thread per write. A write never leaves part of
//! itself behind when it does not apply (a compare-and-set that loses writes nothing), so
//! writes share a transaction without savepoints. Should a statement
//! fail (an error, not a lost race), the batch is rolled back and every write in it is retried
//! in a transaction of its own, so one bad write cannot fail the others.

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use crate::audit::AuditEntry;
use crate::domain::Resolution;
use crate::store::{DecisionWrite, StoreError};

/// At most this many writes share one transaction (bounds the time a batch holds the writer).
const MAX_BATCH: usize = 256;

/// A new pending request (the row is already rendered to its columns).
pub(super) struct NewRow {
    pub id: String,
    pub tool: String,
    pub agent_id: Option<String>,
    pub session_key: Option<String>,
    pub json: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub fold_key: Option<String>,
    pub now: i64,
    pub owner: String,
    pub fanout: bool,
}

/// One queued write.
pub(super) enum Write {
    /// Stored unless the id exists or an identical request is pending: answers whether it was.
    Insert(Box<NewRow>, Vec<AuditEntry>),
    Decision {
        id: String,
        approver_key: String,
        approval_json: String,
        resolution: Option<Resolution>,
        audits: Vec<AuditEntry>,
    },
    /// Settle a pending request (timeout): answers whether it was still pending.
    Resolve {
        id: String,
        resolution: Resolution,
        audits: Vec<AuditEntry>,
    },
}

/// What a write answered.
pub(super) enum Outcome {
    Stored(bool),
    Decision(DecisionWrite),
}

type Job = (Write, oneshot::Sender<Result<Outcome, StoreError>>);

/// The queue in front of the writer. Cheap to clone.
#[derive(Clone)]
pub(super) struct GroupCommit {
    tx: mpsc::UnboundedSender<Job>,
}

impl GroupCommit {
    /// Start the writer task on `writer` (the one-connection pool).
    pub fn start(writer: SqlitePool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(writer, rx));
        Self { tx }
    }

    /// Queue `write` and wait until it is committed (or failed).
    pub async fn write(&self, write: Write) -> Result<Outcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((write, reply))
            .map_err(|_| StoreError("the store's writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError("the store's writer stopped before answering".into()))?
    }
}

async fn run(writer: SqlitePool, mut rx: mpsc::UnboundedReceiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let writes: Vec<&Write> = batch.iter().map(|(w, _)| w).collect();
        match together(&writer, &writes).await {
            Ok(outcomes) => {
                for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                if batch.len() > 1 {
                    tracing::warn!(error = %e, writes = batch.len(), "a grouped write failed; writing each on its own");
                }
                for (write, reply) in batch.drain(..) {
                    let one = together(&writer, &[&write]).await;
                    let _ = reply.send(one.map(|mut o| o.remove(0)));
                }
            }
        }
    }
}

/// Every write of `writes` in one transaction, in order; their outcomes once committed.
async fn together(writer: &SqlitePool, writes: &[&Write]) -> Result<Vec<Outcome>, StoreError> {
    let mut tx = writer.begin().await?;
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut i = 0;
    while i < writes.len() {
        // A run of resolutions (an expiry storm: thousands due in the same second) goes in
        // two statements, not one per request.
        let run = writes[i..]
            .iter()
            .take_while(|w| matches!(w, Write::Resolve { .. }))
            .count();
        if run >= 2 {
            outcomes.extend(resolve_many(&mut tx, &writes[i..i + run]).await?);
            i += run;
        } else {
            outcomes.push(apply(&mut tx, writes[i]).await?);
            i += 1;
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Settle several requests in one `UPDATE ... FROM (VALUES ...) RETURNING id` (each still
/// only if pending), then write the audit lines of those that were, in one `INSERT`.
async fn resolve_many(
    conn: &mut sqlx::SqliteConnection,
    writes: &[&Write],
) -> Result<Vec<Outcome>, StoreError> {
    // An id twice in one run (two expiries racing) is settled by its first write only.
    let mut seen = std::collections::HashSet::new();
    let first: Vec<bool> = writes
        .iter()
        .map(|w| match w {
            Write::Resolve { id, .. } => seen.insert(id.as_str()),
            _ => false,
        })
        .collect();
    let count = first.iter().filter(|f| **f).count();
    let rows = placeholders(count, 4, 1);
    let sql = format!(
        "UPDATE approvals SET status = v.column2, resolution_json = v.column3, resolved_at = v.column4
         FROM (VALUES {}) AS v
         WHERE approvals.id = v.column1 AND approvals.status = 'pending'
         RETURNING approvals.id",
        rows
    );
    // Numbered placeholders only; its text changes with the count, so it is not cached.
    let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).persistent(false);
    for (write, first) in writes.iter().zip(&first) {
        if let Write::Resolve { id, resolution, .. } = write
            && *first
        {
            query = query
                .bind(id.as_str())
                .bind(resolution.verdict.status().as_str())
                .bind(serde_json::to_string(resolution)?)
                .bind(resolution.resolved_at.timestamp_millis());
        }
    }
    let won: std::collections::HashSet<String> =
        query.fetch_all(&mut *conn).await?.into_iter().collect();
    let mut audits: Vec<&AuditEntry> = Vec::new();
    let mut outcomes = Vec::with_capacity(writes.len());
    for (write, first) in writes.iter().zip(&first) {
        if let Write::Resolve { id, audits: a, .. } = write {
            let settled = *first && won.contains(id);
            if settled {
                audits.extend(a.iter());
            }
            outcomes.push(Outcome::Stored(settled));
        }
    }
    if !audits.is_empty() {
        let rows = placeholders(audits.len(), 5, 1);
        let sql = format!(
            "INSERT INTO audit (at, approval_id, event, transport, entry_json) VALUES {}",
            rows
        );
        let query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
        let owned: Vec<AuditEntry> = audits.into_iter().cloned().collect();
        bind_audits(query, &owned)?.execute(&mut *conn).await?;
    }
    Ok(outcomes)
}

/// `(?a, ?b, ...), (...)`: `rows` groups of `width` numbered placeholders, from `?first` on.
fn placeholders(rows: usize, width: usize, first: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols: Vec<String> = (0..width)
                .map(|c| format!("?{}", first + r * width + c))
                .collect();
            format!("({})", cols.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `INSERT INTO audit` of `n` rows bound from `?first` on, written only when the statement
/// before it in the same query changed exactly one row: a change and its audit lines go to
/// SQLite in one round trip, and a change that did not apply leaves no audit line.
fn audit_after_change(n: usize, first: usize) -> String {
    let rows = placeholders(n, 5, first);
    format!(
        "INSERT INTO audit (at, approval_id, event, transport, entry_json)
         SELECT column1, column2, column3, column4, column5 FROM (VALUES {})
         WHERE changes() = 1;",
        rows
    )
}

/// Bind `entries` (5 values each) after whatever `query` has.
fn bind_audits<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    entries: &[AuditEntry],
) -> Result<sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>, StoreError> {
    for entry in entries {
        query = query
            .bind(entry.at.timestamp_millis())
            .bind(entry.approval_id.clone())
            .bind(entry.event.as_str())
            .bind(entry.transport.map(|t| t.as_str()))
            .bind(serde_json::to_string(entry)?);
    }
    Ok(query)
}

async fn apply(conn: &mut sqlx::SqliteConnection, write: &Write) -> Result<Outcome, StoreError> {
    match write {
        Write::Insert(row, audits) => {
            let mut sql = String::from(
                "INSERT INTO approvals (id, status, tool, agent_id, session_key, request_json, created_at, expires_at, fold_key, delivery_owner, deliveries_done)
                 SELECT ?1, 'pending', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10, ?11
                 WHERE ?8 IS NULL OR NOT EXISTS (
                     SELECT 1 FROM approvals INDEXED BY approvals_fold
                     WHERE fold_key = ?8 AND status = 'pending' AND expires_at > ?9)
                 ON CONFLICT (id) DO NOTHING;",
            );
            if !audits.is_empty() {
                sql.push_str(&audit_after_change(audits.len(), 12));
            }
            // Numbered placeholders only: no value is part of the text.
            let query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(&row.id)
                .bind(&row.tool)
                .bind(&row.agent_id)
                .bind(&row.session_key)
                .bind(&row.json)
                .bind(row.created_at)
                .bind(row.expires_at)
                .bind(&row.fold_key)
                .bind(row.now)
                .bind(&row.owner)
                .bind(!row.fanout);
            let done = bind_audits(query, audits)?.execute(&mut *conn).await?;
            match done.rows_affected() {
                0 => Ok(Outcome::Stored(false)),
                n if n == 1 + audits.len() as u64 => Ok(Outcome::Stored(true)),
                n => Err(StoreError(format!(
                    "inserting {} changed {n} rows, not {}",
                    row.id,
                    1 + audits.len()
                ))),
            }
        }
        Write::Decision {
            id,
            approver_key,
            approval_json,
            resolution,
            audits,
        } => {
            let mut sql = String::from(
                "INSERT INTO decisions (approval_id, approver_key, seq, approval_json)
                 SELECT ?1, ?2, (SELECT COUNT(*) FROM decisions WHERE approval_id = ?1), ?3
                 WHERE EXISTS (SELECT 1 FROM approvals WHERE id = ?1 AND status = 'pending')
                 ON CONFLICT (approval_id, approver_key) DO NOTHING;",
            );
            let mut next = 4;
            if resolution.is_some() {
                // The settle, only when the decision went in (and so the request was pending).
                sql.push_str(
                    "UPDATE approvals SET status = ?4, resolution_json = ?5, resolved_at = ?6
                     WHERE id = ?1 AND status = 'pending' AND changes() = 1;",
                );
                next = 7;
            }
            if !audits.is_empty() {
                sql.push_str(&audit_after_change(audits.len(), next));
            }
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .bind(approver_key)
                .bind(approval_json);
            if let Some(r) = resolution {
                query = query
                    .bind(r.verdict.status().as_str())
                    .bind(serde_json::to_string(r)?)
                    .bind(r.resolved_at.timestamp_millis());
            }
            let done = bind_audits(query, audits)?.execute(&mut *conn).await?;
            let expected = 1 + u64::from(resolution.is_some()) + audits.len() as u64;
            match done.rows_affected() {
                0 => {
                    // Nothing was written: say why.
                    let status: Option<String> =
                        sqlx::query_scalar("SELECT status FROM approvals WHERE id = ?1")
                            .bind(id)
                            .fetch_optional(&mut *conn)
                            .await?;
                    Ok(Outcome::Decision(if status.as_deref() == Some("pending") {
                        DecisionWrite::ApproverAlreadyDecided
                    } else {
                        DecisionWrite::NotPending
                    }))
                }
                n if n == expected => Ok(Outcome::Decision(DecisionWrite::Recorded)),
                // The insert saw it pending and this transaction holds the only writer, so the
                // settle cannot lose; if it did, the batch is retried write by write.
                n => Err(StoreError(format!(
                    "a decision on {id} changed {n} rows, not {expected}"
                ))),
            }
        }
        Write::Resolve {
            id,
            resolution,
            audits,
        } => {
            let mut sql = String::from(
                "UPDATE approvals SET status = ?2, resolution_json = ?3, resolved_at = ?4
                 WHERE id = ?1 AND status = 'pending';",
            );
            if !audits.is_empty() {
                sql.push_str(&audit_after_change(audits.len(), 5));
            }
            let query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .bind(resolution.verdict.status().as_str())
                .bind(serde_json::to_string(resolution)?)
                .bind(resolution.resolved_at.timestamp_millis());
            let done = bind_audits(query, audits)?.execute(&mut *conn).await?;
            match done.rows_affected() {
                0 => Ok(Outcome::Stored(false)),
                n if n == 1 + audits.len() as u64 => Ok(Outcome::Stored(true)),
                n => Err(StoreError(format!(
                    "resolving {id} changed {n} rows, not {}",
                    1 + audits.len()
                ))),
            }
        }
    }
}
