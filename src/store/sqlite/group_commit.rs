//! Group commit for the hot writes (a new request, a decision, a resolution): they queue for
//! the single writer connection, and whatever has queued while the previous batch committed is
//! written in one transaction, each write in turn, then committed once. Under load a commit
//! (and its WAL append) is shared by many requests instead of paid by each; alone, a write
//! waits for nobody. Every caller is answered only after the commit that holds its write, so
//! "acknowledged" still means "durable".
//!
//! A write never leaves part of itself behind when it does not apply (a compare-and-set that
//! loses writes nothing), so writes share a transaction without savepoints. Should a statement
//! fail (an error, not a lost race), the batch is rolled back and every write in it is retried
//! in a transaction of its own, so one bad write cannot fail the others.

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::{append_audits, settle};
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
    for write in writes {
        outcomes.push(apply(&mut tx, write).await?);
    }
    tx.commit().await?;
    Ok(outcomes)
}

async fn apply(conn: &mut sqlx::SqliteConnection, write: &Write) -> Result<Outcome, StoreError> {
    match write {
        Write::Insert(row, audits) => {
            let done = sqlx::query(
                "INSERT INTO approvals (id, status, tool, agent_id, session_key, request_json, created_at, expires_at, fold_key, delivery_owner, deliveries_done)
                 SELECT ?1, 'pending', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?10, ?11
                 WHERE ?8 IS NULL OR NOT EXISTS (
                     SELECT 1 FROM approvals INDEXED BY approvals_fold
                     WHERE fold_key = ?8 AND status = 'pending' AND expires_at > ?9)
                 ON CONFLICT (id) DO NOTHING",
            )
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
            .bind(!row.fanout)
            .execute(&mut *conn)
            .await?;
            let stored = done.rows_affected() == 1;
            if stored {
                append_audits(conn, audits).await?;
            }
            Ok(Outcome::Stored(stored))
        }
        Write::Decision {
            id,
            approver_key,
            approval_json,
            resolution,
            audits,
        } => {
            let inserted = sqlx::query(
                "INSERT INTO decisions (approval_id, approver_key, seq, approval_json)
                 SELECT ?1, ?2, (SELECT COUNT(*) FROM decisions WHERE approval_id = ?1), ?3
                 WHERE EXISTS (SELECT 1 FROM approvals WHERE id = ?1 AND status = 'pending')
                 ON CONFLICT (approval_id, approver_key) DO NOTHING",
            )
            .bind(id)
            .bind(approver_key)
            .bind(approval_json)
            .execute(&mut *conn)
            .await?;
            if inserted.rows_affected() == 0 {
                // Nothing was written: say why.
                let status: Option<String> =
                    sqlx::query_scalar("SELECT status FROM approvals WHERE id = ?1")
                        .bind(id)
                        .fetch_optional(&mut *conn)
                        .await?;
                return Ok(Outcome::Decision(if status.as_deref() == Some("pending") {
                    DecisionWrite::ApproverAlreadyDecided
                } else {
                    DecisionWrite::NotPending
                }));
            }
            // The insert saw it pending and this transaction holds the only writer: the
            // settle cannot lose. If it did, the batch would be retried write by write.
            if let Some(resolution) = resolution
                && !settle(conn, id, resolution).await?
            {
                return Err(StoreError(format!(
                    "{id} stopped being pending inside one transaction"
                )));
            }
            append_audits(conn, audits).await?;
            Ok(Outcome::Decision(DecisionWrite::Recorded))
        }
        Write::Resolve {
            id,
            resolution,
            audits,
        } => {
            let won = settle(conn, id, resolution).await?;
            if won {
                append_audits(conn, audits).await?;
            }
            Ok(Outcome::Stored(won))
        }
    }
}
