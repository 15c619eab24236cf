//! Durable state behind a small trait whose operations are exactly what the engine needs, so a
//! PostgreSQL backend can be added without touching the engine. Anything that must survive a
//! restart goes through here; the engine's in-memory maps are only caches and waiter lists.

/// (Shared by both backends.) A task's status in SQL: its execution status once it has one, else what its approval says
/// (a macro so queries stay static strings).
macro_rules! task_status {
    () => {
        "COALESCE(t.execution, CASE a.status WHEN 'pending' THEN 'pending_approval' \
         WHEN 'approved' THEN 'approved' WHEN 'denied' THEN 'rejected' ELSE 'expired' END)"
    };
}

mod postgres;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use std::sync::Arc;

use approvald_channel::MessageRef;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::audit::AuditEntry;
use crate::domain::{Approval, ApprovalRecord, ApprovalRequest, Delivery, Resolution, Status};
use crate::rules::StandingRule;
use crate::tasks::{TaskRecord, TaskStatus};

/// Open the configured store: PostgreSQL when `storage.url` names one, else SQLite in
/// `storage.data_dir`. The PostgreSQL store is also answered on its own, for the cluster
/// wake-ups and the leader lock that share its database.
pub async fn open(
    config: &crate::config::StorageConfig,
) -> Result<(Arc<dyn Store>, Option<PostgresStore>), StoreError> {
    match &config.url {
        Some(url) if config.is_postgres() => {
            let pg = PostgresStore::connect_with_pool(url, config.max_connections).await?;
            Ok((Arc::new(pg.clone()), Some(pg)))
        }
        _ => Ok((Arc::new(SqliteStore::open(&config.data_dir).await?), None)),
    }
}

/// Times are kept as milliseconds since the epoch in both backends.
fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}

/// How a delivered message is looked up again: thread ids are left out because a reply in a
/// thread names the chat and the message, not always the thread.
pub fn message_key(m: &MessageRef) -> String {
    format!("{}|{}|{}", m.channel, m.to, m.message_id)
}

/// A storage failure. Its text is for logs; API answers say only "internal error".
#[derive(Debug, thiserror::Error)]
#[error("storage error: {0}")]
pub struct StoreError(pub String);

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError(e.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError(format!("bad stored JSON: {e}"))
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError(format!("migration failed: {e}"))
    }
}

/// The answer to inserting a request.
#[derive(Debug)]
pub enum InsertOutcome {
    Inserted,
    /// A request with this id already exists (as it is now).
    Exists(Box<ApprovalRecord>),
    /// An identical request is pending (same fold key): this one was not stored.
    Folded(Box<ApprovalRecord>),
}

/// The answer to recording a decision.
#[derive(Debug, PartialEq, Eq)]
pub enum DecisionWrite {
    /// Stored (and, when a resolution was given, the request is now resolved).
    Recorded,
    /// This approver already has a decision on this request; nothing changed.
    ApproverAlreadyDecided,
    /// The request is no longer pending (another resolver won); nothing changed.
    NotPending,
    /// Only from [`Store::record_decision_after_insert`]: the request it was checked against
    /// is not stored (not yet, or another took its place); nothing changed.
    NotStored,
}

/// Which requests to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub status: Option<Status>,
    pub agent_id: Option<String>,
    pub tool: Option<String>,
    pub limit: u32,
    /// Only requests older than this (created_at ms, id) position.
    pub before: Option<(i64, String)>,
}

/// Which audit entries to list, oldest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub approval_id: Option<String>,
    pub after_seq: i64,
    pub limit: u32,
}

/// An audit row as both stores read it back (`SELECT seq, approval_id, event, transport,
/// entry_json`): the columns and the line's JSON text, made whole by
/// [`AuditEntry::from_stored`].
#[derive(sqlx::FromRow)]
struct StoredAuditRow {
    seq: i64,
    approval_id: Option<String>,
    event: String,
    transport: Option<String>,
    entry_json: String,
}

impl StoredAuditRow {
    fn into_entry(self) -> Result<AuditEntry, StoreError> {
        AuditEntry::from_stored(
            self.seq,
            self.approval_id,
            &self.event,
            self.transport.as_deref(),
            &self.entry_json,
        )
        .map_err(StoreError)
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Store a new pending request. With a `fold_key`, an identical pending request (same
    /// key, not past its deadline) takes its place, decided in the same statement as the insert
    /// so two racing identical requests still make one.
    ///
    /// `fanout`: prompts are to be sent for it, so it is recorded as this instance's fan-out,
    /// unfinished until `deliveries_finished` (false: nothing to send, nothing to take over).
    async fn insert_request(
        &self,
        req: &ApprovalRequest,
        fold_key: Option<&str>,
        audits: &[AuditEntry],
        fanout: bool,
    ) -> Result<InsertOutcome, StoreError>;
    async fn get(&self, id: &str) -> Result<Option<ApprovalRecord>, StoreError>;
    /// The request `id` names: its own id, else an id folded into it (an alias), else its
    /// task's id. A store may do it in one statement (one round trip for an id it does not
    /// know, as a decision that overtakes its request looks up first).
    async fn get_by_any_id(&self, id: &str) -> Result<Option<ApprovalRecord>, StoreError> {
        if let Some(rec) = self.get(id).await? {
            return Ok(Some(rec));
        }
        let target = match self.alias_target(id).await? {
            Some(t) => Some(t),
            None => self.task_by_id(id).await?.map(|t| t.approval_id),
        };
        match target {
            Some(t) if t != id => self.get(&t).await,
            _ => Ok(None),
        }
    }
    /// The requests of these ids that exist, in one read (an expiry storm), in no given order.
    async fn get_many(&self, ids: &[String]) -> Result<Vec<ApprovalRecord>, StoreError>;
    /// Just the status: a cheap check where the whole record is not needed.
    async fn status(&self, id: &str) -> Result<Option<Status>, StoreError>;
    /// Ids starting with `prefix`, at most `limit`.
    async fn ids_with_prefix(&self, prefix: &str, limit: u32) -> Result<Vec<String>, StoreError>;
    async fn list(&self, query: &ListQuery) -> Result<Vec<ApprovalRecord>, StoreError>;
    /// Record one approver's decision (one row per `approver_key`), only while the request is pending, and (atomically with
    /// it) resolve the request when `resolution` is given: a compare-and-set on `pending`.
    async fn record_decision(
        &self,
        id: &str,
        approver_key: &str,
        approval: &Approval,
        resolution: Option<&Resolution>,
        audits: &[AuditEntry],
    ) -> Result<DecisionWrite, StoreError>;
    /// [`Self::record_decision`] on a request whose insert is queued but perhaps not written
    /// yet, for a store whose one writer applies writes in the order they were queued: the
    /// decision is queued behind the insert and usually shares its commit, instead of waiting
    /// for that commit before it is even queued. It applies only if by then the pending
    /// request stored under `id` is the one the decision was checked against (created at
    /// `created_at`); else [`DecisionWrite::NotStored`] and nothing changes. A store that
    /// cannot order writes so answers `NotStored` to every call (the default).
    async fn record_decision_after_insert(
        &self,
        id: &str,
        created_at: DateTime<Utc>,
        approver_key: &str,
        approval: &Approval,
        resolution: Option<&Resolution>,
        audits: &[AuditEntry],
    ) -> Result<DecisionWrite, StoreError> {
        let _ = (id, created_at, approver_key, approval, resolution, audits);
        Ok(DecisionWrite::NotStored)
    }
    /// Resolve without a new decision (timeout). Compare-and-set: false if no longer pending.
    /// `audits` are written with it, in the same transaction, only when it wins.
    async fn resolve(
        &self,
        id: &str,
        resolution: &Resolution,
        audits: &[AuditEntry],
    ) -> Result<bool, StoreError>;
    async fn record_delivery(&self, id: &str, delivery: &Delivery) -> Result<(), StoreError>;
    /// The approval a delivered message belongs to (channel, chat and message id must match).
    async fn approval_for_message(
        &self,
        message: &MessageRef,
    ) -> Result<Option<String>, StoreError>;
    /// Every pending request and its deadline (to re-arm timers at start).
    async fn pending_deadlines(&self) -> Result<Vec<(String, DateTime<Utc>)>, StoreError>;
    async fn count_by_status(&self) -> Result<Vec<(Status, u64)>, StoreError>;
    async fn audit_append(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    async fn audit_list(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;
    async fn add_standing_rule(&self, rule: &StandingRule) -> Result<(), StoreError>;
    /// Standing rules, revoked ones included when asked.
    async fn standing_rules(&self, include_revoked: bool) -> Result<Vec<StandingRule>, StoreError>;
    /// Revoke by id (or unique prefix); the revoked rule, or None if unknown/already revoked.
    async fn revoke_standing_rule(&self, id: &str) -> Result<Option<StandingRule>, StoreError>;

    // ----- tasks ----------------------------------------------------------------------
    /// Insert a task; false (nothing written) when its task id or approval already has one.
    async fn task_insert(&self, task: &TaskRecord) -> Result<bool, StoreError>;
    /// Replace a task only while its execution status is still `expected` (compare-and-set:
    /// of two racing transitions exactly one wins).
    async fn task_update(
        &self,
        task: &TaskRecord,
        expected: Option<TaskStatus>,
    ) -> Result<bool, StoreError>;
    async fn task_by_id(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError>;
    async fn task_by_approval(&self, approval_id: &str) -> Result<Option<TaskRecord>, StoreError>;
    /// Every approval counted as a task, by task status.
    async fn task_status_counts(&self) -> Result<Vec<(TaskStatus, u64)>, StoreError>;
    /// Total actual cost (USD) and execution time (ms) reported.
    async fn task_totals(&self) -> Result<(f64, u64), StoreError>;
    /// Actual cost of tasks that ended at or after `since`.
    async fn spent_since(&self, since: DateTime<Utc>) -> Result<f64, StoreError>;
    /// Approval ids of tasks, newest first, optionally of one status, and how many there are.
    async fn task_page(
        &self,
        status: Option<TaskStatus>,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<String>, u64), StoreError>;

    // ----- upstream outbox ------------------------------------------------------------
    async fn outbox_push(&self, body: &serde_json::Value) -> Result<(), StoreError>;
    /// The oldest waiting bodies, with their sequence numbers.
    async fn outbox_peek(&self, limit: u32) -> Result<Vec<(i64, serde_json::Value)>, StoreError>;
    async fn outbox_remove(&self, seq: i64) -> Result<(), StoreError>;
    async fn outbox_len(&self) -> Result<u64, StoreError>;
    /// The request an id was folded into, if it was.
    async fn alias_target(&self, alias: &str) -> Result<Option<String>, StoreError>;

    // ----- instances and unfinished fan-outs ------------------------------------------
    /// This process's id (new at every start). `insert_request` records it as the owner of the
    /// new request's fan-out, unfinished until `deliveries_finished`.
    fn instance_id(&self) -> &str;
    /// Say this instance is alive; called every few seconds.
    async fn heartbeat(&self) -> Result<(), StoreError>;

    /// The server is stopping: leave the files so the next start is quick. SQLite copies its
    /// write-ahead log into the database file and empties it (otherwise the next start reads
    /// the whole log back first). Writes still work afterwards.
    async fn stopping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Every prompt of this request was sent or failed: nobody needs to take its fan-out over.
    async fn deliveries_finished(&self, id: &str) -> Result<(), StoreError>;
    /// Take over the unfinished fan-outs of pending requests whose owner has not said it is
    /// alive for `stale`: they become this instance's. Of several claimers each id goes to one.
    async fn claim_unfinished_deliveries(
        &self,
        stale: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<String>, StoreError>;
}
