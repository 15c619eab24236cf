//! Group commit on a writer thread: every write to the SQLite file goes through one thread
//! that owns the one writing connection. Writes queue for it, and whatever has queued while
//! the previous batch committed is written in one transaction, each write in turn (writes
//! that queue while it is applied join it), then committed once. Under load a commit (and its
//! WAL append) is shared by many writes instead of paid by each; alone, a write waits for
//! nobody. Every caller is answered only after the commit that holds its write, so
//! "acknowledged" still means "durable". Between batches the writer also finishes what the
//! background checkpoint could not, so that the WAL is rewound under steady load
//! (`catch_up`).
//!
//! Why a thread of its own with rusqlite rather than sqlx's pool: sqlx runs each statement on
//! the connection's own thread and hands every result back, two thread hand-offs per
//! statement, and on a busy machine each hand-off also waits for that thread to be scheduled.
//! Measured with `approvald-bench cycle`, those hand-offs and waits were most of the cost of
//! a write. Here the writer never waits for another thread while it has work: under load it
//! goes from batch to batch, and a write costs what SQLite itself does. Statements are
//! prepared once and cached on the connection. With `synchronous = NORMAL` a commit does not
//! wait for the disk. Reads stay on sqlx's read-only pool, beside the writer (WAL).
//!
//! A write never leaves part of itself behind when it does not apply (a compare-and-set that
//! loses writes nothing, nor its audit lines), so writes share a transaction without
//! savepoints. Should a write fail (an error, not a lost race), the batch is rolled back and
//! every write in it is retried in a transaction of its own, so one bad write cannot fail the
//! others.

use std::cell::{OnceCell, RefCell, RefMut};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, Statement, params};
use tokio::sync::oneshot;

use super::ids::{self, Fresh, Merger, RecentIds};
use crate::audit::AuditEntry;
use crate::domain::Resolution;
use crate::store::{DecisionWrite, StoreError};

/// At most this many writes share one transaction (bounds the time a batch holds the file).
const MAX_BATCH: usize = 256;

/// A WAL this long (64 MiB of 4 KiB pages) is rewound: the writer copies the rest of it into
/// the file after a background checkpoint (`catch_up`, see `checkpoint`). Not sooner, so
/// that the writer's pause for it (two fsyncs, 2 to 6 ms measured) stays rare under moderate
/// load.
pub(super) const CATCH_UP_FRAMES: i64 = 16_384;

/// The statements every request and decision runs, kept prepared by [`Writer`] (see [`Hot`];
/// a test checks what SQLite makes of each: no temporary table or index, see `insert`): a new
/// request, a settle, a decision.
const INSERT_REQUEST: &str = "INSERT INTO approvals (id, status, tool, agent_id, session_key, request_json, created_at, expires_at, fold_key, delivery_owner, deliveries_done)
     VALUES (?1, 'pending', ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";
/// A settle, by the request's row (see `ids`).
const SETTLE_ROW: &str = "UPDATE approvals SET status = ?2, resolution_json = ?3, resolved_at = ?4
     WHERE rowid = ?1 AND status = 'pending'";
/// An audit line, with the creation time of the request it is about: `?6` when the write
/// knows it, else read from the request's row `?7` (NULL for none; `coalesce` reads only when
/// `?6` is NULL).
const INSERT_AUDIT: &str =
    "INSERT INTO audit (at, approval_id, event, transport, entry_json, approval_created_at)
     VALUES (?1, ?2, ?3, ?4, ?5,
             coalesce(?6, (SELECT created_at FROM approvals WHERE rowid = ?7)))";
/// Whether an identical request is pending (see [`insert`]).
const FOLD_CHECK: &str = "SELECT 1 FROM approvals INDEXED BY approvals_fold
     WHERE fold_key = ?1 AND status = 'pending' AND expires_at > ?2";
/// What a decision needs of its request (row `?1`): creation time, pending, decisions so far.
const DECISION_READ: &str = "SELECT a.created_at, a.status = 'pending',
            (SELECT COUNT(*) FROM decisions
             WHERE approval_created_at = a.created_at AND approval_id = a.id)
     FROM approvals a WHERE a.rowid = ?1";
/// A request's row by its id, once the writer has moved it into the id index (see `ids`).
const LOCATE: &str = "SELECT row FROM approval_ids WHERE id = ?1";
const INSERT_DECISION: &str =
    "INSERT INTO decisions (approval_created_at, approval_id, approver_key, seq, approval_json)
     VALUES (?1, ?2, ?3, ?4, ?5)
     ON CONFLICT DO NOTHING";

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

/// The statements every request and decision runs (see [`Writer`]).
#[derive(Clone, Copy)]
enum Hot {
    Begin,
    Commit,
    FoldCheck,
    InsertRequest,
    InsertAudit,
    DecisionRead,
    InsertDecision,
    SettleRow,
    Locate,
}

impl Hot {
    /// Every one (how many sizes [`Writer`]'s statements; each is kept at its own number).
    const ALL: [Hot; 9] = [
        Hot::Begin,
        Hot::Commit,
        Hot::FoldCheck,
        Hot::InsertRequest,
        Hot::InsertAudit,
        Hot::DecisionRead,
        Hot::InsertDecision,
        Hot::SettleRow,
        Hot::Locate,
    ];

    fn sql(self) -> &'static str {
        match self {
            Hot::Begin => "BEGIN IMMEDIATE",
            Hot::Commit => "COMMIT",
            Hot::FoldCheck => FOLD_CHECK,
            Hot::InsertRequest => INSERT_REQUEST,
            Hot::InsertAudit => INSERT_AUDIT,
            Hot::DecisionRead => DECISION_READ,
            Hot::InsertDecision => INSERT_DECISION,
            Hot::SettleRow => SETTLE_ROW,
            Hot::Locate => LOCATE,
        }
    }
}

/// The text of every statement [`Writer`] keeps prepared, for tests of what SQLite makes of
/// them.
#[cfg(test)]
pub(super) fn hot_statements() -> impl Iterator<Item = &'static str> {
    Hot::ALL.into_iter().map(Hot::sql)
}

/// The writing connection, as every write gets it, with the statements of every request and
/// decision prepared once and kept (each on its first use). rusqlite's own statement cache
/// hashes a statement's whole text twice per use and clears its bindings: about 9,000
/// instructions per request and decision (callgrind, `approvald-bench cycle`). Everything
/// else a write does goes to the connection (`Deref`), through that cache.
pub(super) struct Writer<'c> {
    conn: &'c Connection,
    hot: [OnceCell<RefCell<Statement<'c>>>; Hot::ALL.len()],
    /// The newest requests' rows by id (see `ids`).
    recent: &'c RecentIds,
    /// The ids this transaction added to `recent`: forgotten again if it rolls back.
    added: RefCell<Vec<(String, i64)>>,
    /// The ids this writer committed and has not moved into the id index yet.
    fresh: RefCell<Fresh>,
}

impl<'c> Writer<'c> {
    fn new(conn: &'c Connection, recent: &'c RecentIds) -> Self {
        Self {
            conn,
            hot: std::array::from_fn(|_| OnceCell::new()),
            recent,
            added: RefCell::new(Vec::new()),
            fresh: RefCell::new(Fresh::default()),
        }
    }

    pub(super) fn recent(&self) -> &RecentIds {
        self.recent
    }

    /// The row of `id` in the id index (not among the newest: see `ids::row_of`).
    pub(super) fn indexed_row(&self, id: &str) -> Result<Option<i64>, StoreError> {
        optional(self.statement(Hot::Locate)?.query_row([id], |r| r.get(0)))
    }

    /// A request this transaction stored at `row`: found by its id from now on.
    fn stored(&self, id: &str, row: i64) {
        self.recent.insert(id, row);
        self.added.borrow_mut().push((id.to_string(), row));
    }

    /// The transaction ended: committed (its ids stay) or rolled back (they go).
    fn ended(&self, committed: bool) {
        let mut added = self.added.borrow_mut();
        if committed {
            let mut fresh = self.fresh.borrow_mut();
            for (id, row) in added.drain(..) {
                fresh.push(id, row);
            }
        } else {
            for (id, row) in added.drain(..) {
                self.recent.forget(&id, row);
            }
        }
    }

    /// How many ids this writer has to move.
    pub(super) fn fresh_len(&self) -> usize {
        self.fresh.borrow().len()
    }

    /// Every id this writer has to move (it has none left).
    pub(super) fn take_fresh(&self) -> Fresh {
        std::mem::take(&mut *self.fresh.borrow_mut())
    }

    /// `which`, prepared on its first use. One write at a time on this thread, and no
    /// statement used inside another's use, so it is never borrowed twice.
    fn statement(&self, which: Hot) -> Result<RefMut<'_, Statement<'c>>, StoreError> {
        let cell = &self.hot[which as usize];
        let prepared = match cell.get() {
            Some(prepared) => prepared,
            None => {
                let statement = self.conn.prepare(which.sql()).map_err(db)?;
                cell.get_or_init(|| RefCell::new(statement))
            }
        };
        prepared
            .try_borrow_mut()
            .map_err(|_| StoreError(format!("statement in use twice: {}", which.sql())))
    }

    /// Run `which` (no rows).
    fn run(&self, which: Hot) -> Result<(), StoreError> {
        self.statement(which)?.execute([]).map(drop).map_err(db)
    }
}

impl std::ops::Deref for Writer<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

/// One queued write: applied inside the batch's transaction, answered once it committed.
trait Job: Send {
    /// Apply the write; its answer is kept until the transaction's end.
    fn apply(&mut self, w: &Writer<'_>) -> Result<(), StoreError>;
    /// Answer the caller: the kept answer if the transaction committed, else `failed`.
    fn answer(self: Box<Self>, failed: Option<StoreError>);
}

struct Queued<T, F> {
    work: F,
    answer: Option<T>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Queued<T, F>
where
    T: Send,
    F: FnMut(&Writer<'_>) -> Result<T, StoreError> + Send,
{
    fn apply(&mut self, w: &Writer<'_>) -> Result<(), StoreError> {
        self.answer = Some((self.work)(w)?);
        Ok(())
    }

    fn answer(self: Box<Self>, failed: Option<StoreError>) {
        let result = match (failed, self.answer) {
            (Some(e), _) => Err(e),
            (None, Some(answer)) => Ok(answer),
            (None, None) => Err(StoreError("a write was committed without an answer".into())),
        };
        let _ = self.reply.send(result);
    }
}

/// What the writer thread is sent.
enum Message {
    Write(Box<dyn Job>),
    /// Copy the WAL into the database file and truncate it (outside any transaction).
    Checkpoint(oneshot::Sender<Result<(), StoreError>>),
}

/// The queue in front of the writer thread. Cheap to clone; the thread (and its connection)
/// ends when the last clone is dropped.
#[derive(Clone)]
pub(super) struct GroupCommit {
    tx: mpsc::Sender<Message>,
    /// Bumped by the background checkpointer when it has copied a long WAL into the file:
    /// the writer then copies what was appended meanwhile (see `catch_up`).
    catch_up: Arc<AtomicU64>,
    /// How many writes the writer has committed (or failed): the checkpointer syncs the WAL
    /// early once enough were written, and ends once the writer and this are gone.
    written: Arc<AtomicU64>,
}

impl GroupCommit {
    /// Open the writing connection to `file` (its schema already migrated) and start the
    /// writer thread.
    pub fn start(file: &Path, recent: Arc<RecentIds>) -> Result<Self, StoreError> {
        let conn = Connection::open(file).map_err(db)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             -- Checkpoints are done by a connection of their own in the background: one
             -- here would stall the commit (and every caller waiting on it) that set it off.
             PRAGMA wal_autocheckpoint = 0;
             -- A rewound WAL is written over, not cut back (freeing its blocks only for the
             -- file system to allocate them again within the second cost more than the
             -- pause above), unless it once grew past 256 MiB.
             PRAGMA journal_size_limit = 268435456;
             -- Index pages of random ids are touched all over: keep many in memory (filled
             -- only as the database grows) rather than read them back. Not more: when a
             -- B-tree page splits, SQLite parks a page at a number past the file's end, and
             -- the commit then walks the whole cache to drop it (16 MiB here cost 4 % of the
             -- server's CPU; a 4 MiB cache 1.6 % plus a few more reads).
             PRAGMA cache_size = -4096;",
        )
        .map_err(db)?;
        conn.set_prepared_statement_cache_capacity(64);
        let (tx, rx) = mpsc::channel();
        let catch_up = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let (asked, count) = (catch_up.clone(), written.clone());
        std::thread::Builder::new()
            .name("sqlite writer".into())
            .spawn(move || write_loop(conn, rx, &asked, &count, &recent))
            .map_err(|e| StoreError(format!("cannot start the store's writer thread: {e}")))?;
        Ok(Self {
            tx,
            catch_up,
            written,
        })
    }

    /// What the background checkpointer bumps to ask for a `catch_up`. Not the queue
    /// itself: the checkpointer must not keep the writer thread alive.
    pub fn catch_up_signal(&self) -> Arc<AtomicU64> {
        self.catch_up.clone()
    }

    /// The count of writes done so far (see `written`).
    pub fn written(&self) -> Arc<AtomicU64> {
        self.written.clone()
    }

    /// Copy the WAL into the database file and empty it, after every write queued before.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.ask(Message::Checkpoint(reply), answer).await
    }

    /// Queue `work` and wait until it is committed (or failed). `work` runs on the writer
    /// thread inside a transaction; it may run twice (alone, after its batch failed), so it
    /// must not change anything outside the database.
    pub async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&Writer<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Queued {
            work,
            answer: None,
            reply,
        });
        self.ask(Message::Write(job), answer).await
    }

    /// Send `message` to the writer thread and wait for its `answer`.
    async fn ask<T>(
        &self,
        message: Message,
        answer: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.tx
            .send(message)
            .map_err(|_| StoreError("the store's writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError("the store's writer stopped before answering".into()))?
    }
}

fn write_loop(
    conn: Connection,
    rx: mpsc::Receiver<Message>,
    catch_up_asked: &AtomicU64,
    written: &AtomicU64,
    recent: &RecentIds,
) {
    let writer = Writer::new(&conn, recent);
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    let mut seen = 0;
    let mut merger = Merger::new();
    loop {
        // Waiting for a write no longer than the newest ids may wait to be moved.
        let first = match merger.due_in(&writer) {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(wait) => rx.recv_timeout(wait),
        };
        let first = match first {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = merger.step(&writer) {
                    tracing::warn!(error = %e, "moving the newest ids into the id index failed");
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The store is closed: move what is left, so the next start has nothing to.
                if let Err(e) = merger.finish(&writer) {
                    tracing::warn!(error = %e, "moving the newest ids into the id index failed");
                }
                break;
            }
        };
        let mut checkpoint = None;
        match first {
            Message::Write(job) => batch.push(job),
            Message::Checkpoint(reply) => checkpoint = Some(reply),
        }
        // What has queued meanwhile, until a checkpoint (done after this batch) or a full batch.
        let mut queued = |batch: &mut Vec<Box<dyn Job>>| {
            while checkpoint.is_none() && batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Message::Write(job)) => batch.push(job),
                    Ok(Message::Checkpoint(reply)) => checkpoint = Some(reply),
                    Err(_) => break,
                }
            }
        };
        queued(&mut batch);
        let writes = write_batch(&writer, &mut batch, &mut queued);
        written.fetch_add(writes as u64, Ordering::Relaxed);
        if let Err(e) = merger.step(&writer) {
            tracing::warn!(error = %e, "moving the newest ids into the id index failed");
        }
        let asked = catch_up_asked.load(Ordering::Relaxed);
        if asked != seen {
            seen = asked;
            catch_up(&conn);
        }
        if let Some(reply) = checkpoint {
            let done = conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(db);
            let _ = reply.send(done);
        }
    }
}

/// Copy into the database file the little the WAL gained while the background checkpoint
/// ran, so that the whole WAL is in the file and the next commit starts it over from its
/// beginning. Without this, under steady load the WAL is never wholly copied at one moment
/// (the writer appends while the background copies), SQLite never rewinds it, and it grows
/// without end: 15 MB a second at 200 requests and decisions a second (measured), 1.5 GB in
/// a 10-second saturation benchmark. Only the writer can do it: between its batches nothing
/// is appended.
fn catch_up(conn: &Connection) {
    let started = std::time::Instant::now();
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    }) {
        Ok((frames, copied)) => tracing::debug!(
            frames,
            copied,
            took_us = started.elapsed().as_micros() as u64,
            "WAL caught up"
        ),
        Err(e) => tracing::warn!(error = %e, "WAL catch-up checkpoint failed"),
    }
}

/// Write `batch` (emptied) in one transaction, or each on its own if that fails. Writes that
/// queue while the batch is being applied join it (`queued`) before the commit. How many
/// writes that was.
fn write_batch(w: &Writer<'_>, batch: &mut Vec<Box<dyn Job>>, queued: &mut Joiners<'_>) -> usize {
    if batch.is_empty() {
        return 0;
    }
    let result = together(w, batch, queued);
    let writes = batch.len();
    match result {
        Ok(()) => batch.drain(..).for_each(|job| job.answer(None)),
        Err(e) => {
            if batch.len() > 1 {
                tracing::warn!(error = %e, writes = batch.len(), "a grouped write failed; writing each on its own");
            }
            for job in batch.drain(..) {
                let mut alone = vec![job];
                let failed = together(w, &mut alone, &mut |_| {}).err();
                if let Some(job) = alone.pop() {
                    job.answer(failed);
                }
            }
        }
    }
    writes
}

pub(super) fn db(e: rusqlite::Error) -> StoreError {
    StoreError(e.to_string())
}

/// Adds to a batch the writes that have queued since it was taken.
type Joiners<'a> = dyn FnMut(&mut Vec<Box<dyn Job>>) + 'a;

/// Every job of `jobs` in one transaction, in order, and those `queued` adds while they are
/// applied (under load a commit is the most expensive part of a write: the writes that
/// arrive meanwhile share it instead of waiting for the next); rolled back if any fails.
fn together(
    w: &Writer<'_>,
    jobs: &mut Vec<Box<dyn Job>>,
    queued: &mut Joiners<'_>,
) -> Result<(), StoreError> {
    // Prepared once like the writes: parsing these two each batch cost more than some of the
    // writes in it.
    w.run(Hot::Begin)?;
    let mut applied = Ok(());
    let mut next = 0;
    while applied.is_ok() && next < jobs.len() {
        // A write that panics fails alone (the batch is retried without it) instead of
        // taking the writer thread, and every later write, down with it.
        let job = &mut jobs[next];
        applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.apply(w)))
            .unwrap_or_else(|_| Err(StoreError("a write failed unexpectedly (panicked)".into())));
        next += 1;
        if next == jobs.len() {
            queued(jobs);
        }
    }
    let done = applied.and_then(|()| w.run(Hot::Commit));
    if done.is_err() && !w.is_autocommit() {
        let _ = w.execute_batch("ROLLBACK");
    }
    w.ended(done.is_ok());
    done
}

/// `Option` of a single-row query: `None` when there is no row.
pub(super) fn optional<T>(row: rusqlite::Result<T>) -> Result<Option<T>, StoreError> {
    match row {
        Ok(v) => Ok(Some(v)),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(db(e)),
    }
}

/// An audit line made ready for its row before it is queued, so the writer thread (the one
/// thread every write waits for) only binds it.
pub(super) struct AuditRow {
    at: i64,
    approval_id: Option<String>,
    event: &'static str,
    transport: Option<&'static str>,
    json: String,
}

impl AuditRow {
    pub(super) fn render(entries: &[AuditEntry]) -> Result<Vec<AuditRow>, StoreError> {
        entries
            .iter()
            .map(|entry| {
                Ok(AuditRow {
                    at: entry.at.timestamp_millis(),
                    approval_id: entry.approval_id.clone(),
                    event: entry.event.as_str(),
                    transport: entry.transport.map(|t| t.as_str()),
                    json: entry.stored_text()?,
                })
            })
            .collect()
    }
}

/// Append `rows` to the audit trail. `request`: the id and creation time of the request the
/// write is about, known to the write, so its lines need not look it up in the id index.
pub(super) fn audit(
    w: &Writer<'_>,
    rows: &[AuditRow],
    request: Option<(&str, i64)>,
) -> Result<(), StoreError> {
    let mut insert = w.statement(Hot::InsertAudit)?;
    for row in rows {
        let known = request
            .filter(|(id, _)| row.approval_id.as_deref() == Some(*id))
            .map(|(_, created_at)| created_at);
        let stored_at = match (known, &row.approval_id) {
            (None, Some(id)) => ids::row_of(w, id)?,
            _ => None,
        };
        insert
            .execute(params![
                row.at,
                row.approval_id,
                row.event,
                row.transport,
                row.json,
                known,
                stored_at,
            ])
            .map_err(db)?;
    }
    Ok(())
}

/// Settle `id` if it is still pending: whether it was.
pub(super) fn settle(
    w: &Writer<'_>,
    id: &str,
    resolution: &Resolution,
) -> Result<bool, StoreError> {
    match ids::row_of(w, id)? {
        Some(row) => settle_row(w, row, resolution),
        None => Ok(false),
    }
}

/// [`settle`] by the request's row.
fn settle_row(w: &Writer<'_>, row: i64, resolution: &Resolution) -> Result<bool, StoreError> {
    let changed = w
        .statement(Hot::SettleRow)?
        .execute(params![
            row,
            resolution.verdict.status().as_str(),
            crate::json::text(resolution)?,
            resolution.resolved_at.timestamp_millis(),
        ])
        .map_err(db)?;
    Ok(changed == 1)
}

/// Store a new pending request unless its id exists or an identical request is pending
/// (`fold_key`): whether it was stored. Its audit lines go with it. The id is checked here,
/// not by an index on the table (see `ids`): this transaction holds the only writer.
///
/// The fold check is a statement of its own rather than an `INSERT ... SELECT ... WHERE NOT
/// EXISTS`: an insert that reads its own table goes through a temporary table, and one with
/// a `SELECT` is given a statement journal (every page it touches copied first: 1.4 % of the
/// server's CPU in `approvald-bench cycle`). This transaction holds the only writer, so
/// nothing can come between the check and the insert.
pub(super) fn insert(
    w: &Writer<'_>,
    row: &NewRow,
    audits: &[AuditRow],
) -> Result<bool, StoreError> {
    if let Some(fold_key) = &row.fold_key {
        let folded = w
            .statement(Hot::FoldCheck)?
            .exists(params![fold_key, row.now])
            .map_err(db)?;
        if folded {
            return Ok(false);
        }
    }
    if ids::row_of(w, &row.id)?.is_some() {
        return Ok(false);
    }
    let changed = w
        .statement(Hot::InsertRequest)?
        .execute(params![
            row.id,
            row.tool,
            row.agent_id,
            row.session_key,
            row.json,
            row.created_at,
            row.expires_at,
            row.fold_key,
            row.owner,
            !row.fanout,
        ])
        .map_err(db)?;
    if changed == 1 {
        w.stored(&row.id, w.last_insert_rowid());
        audit(w, audits, Some((&row.id, row.created_at)))?;
    }
    Ok(changed == 1)
}

/// Record one approver's decision on a pending request and, with `resolution`, settle it.
/// With `created_at`: only on the request created then (`NotStored` when none of this id is
/// stored, or another one is).
#[allow(clippy::too_many_arguments)]
pub(super) fn decide(
    w: &Writer<'_>,
    id: &str,
    created_at: Option<i64>,
    approver_key: &str,
    approval_json: &str,
    resolution: Option<&Resolution>,
    audits: &[AuditRow],
) -> Result<DecisionWrite, StoreError> {
    // Read first, then a plain insert, for the reasons given at `insert`.
    let request = match ids::row_of(w, id)? {
        Some(row) => optional(w.statement(Hot::DecisionRead)?.query_row([row], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, i64>(2)?,
                row,
            ))
        }))?,
        None => None,
    };
    if let Some(expected) = created_at
        && request.is_none_or(|(stored, ..)| stored != expected)
    {
        return Ok(DecisionWrite::NotStored);
    }
    let Some((created_at, true, decided_before, row)) = request else {
        return Ok(DecisionWrite::NotPending);
    };
    let changed = w
        .statement(Hot::InsertDecision)?
        .execute(params![
            created_at,
            id,
            approver_key,
            decided_before,
            approval_json
        ])
        .map_err(db)?;
    if changed == 0 {
        return Ok(DecisionWrite::ApproverAlreadyDecided);
    }
    // The read saw it pending and this transaction holds the only writer, so the settle
    // cannot lose; if it did, the batch is retried write by write.
    if let Some(r) = resolution
        && !settle_row(w, row, r)?
    {
        return Err(StoreError(format!(
            "a decision on {id} was recorded but its request did not settle"
        )));
    }
    audit(w, audits, Some((id, created_at)))?;
    Ok(DecisionWrite::Recorded)
}

/// Settle a pending request without a decision (timeout): whether it was still pending.
pub(super) fn resolve(
    w: &Writer<'_>,
    id: &str,
    resolution: &Resolution,
    audits: &[AuditRow],
) -> Result<bool, StoreError> {
    let settled = settle(w, id, resolution)?;
    if settled {
        audit(w, audits, None)?;
    }
    Ok(settled)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A writer on a new file whose table `t` has `columns`; the file's directory goes with
    /// the first part.
    pub(in crate::store::sqlite) fn writer_on(
        columns: &str,
    ) -> (tempfile::TempDir, std::path::PathBuf, GroupCommit) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("t.db");
        Connection::open(&file)
            .and_then(|c| {
                c.execute_batch(&format!(
                    "PRAGMA journal_mode = WAL; CREATE TABLE t ({columns})"
                ))
            })
            .expect("schema");
        let writer = GroupCommit::start(&file, RecentIds::unlocked()).expect("start");
        (dir, file, writer)
    }

    /// How many rows table `t` holds, asked through the writer.
    async fn rows_in_t(writer: &GroupCommit) -> i64 {
        writer
            .write(|c| {
                c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0))
                    .map_err(db)
            })
            .await
            .expect("the writer answers")
    }

    /// A write that queues while a batch is being applied is committed with it rather than
    /// after it: seen from outside while it is applied, the batch before it is not committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_queued_while_a_batch_is_applied_shares_its_commit() {
        let (_dir, file, writer) = writer_on("n INTEGER PRIMARY KEY");
        let (started, applying) = std::sync::mpsc::channel();
        let first = tokio::spawn({
            let w = writer.clone();
            async move {
                w.write(move |c| {
                    let _ = started.send(());
                    std::thread::sleep(Duration::from_millis(300));
                    c.execute("INSERT INTO t (n) VALUES (1)", []).map_err(db)
                })
                .await
            }
        });
        tokio::task::spawn_blocking(move || applying.recv())
            .await
            .expect("task")
            .expect("the first write is being applied");
        let outside = file.clone();
        let seen_outside = writer
            .write(move |c| {
                c.execute("INSERT INTO t (n) VALUES (2)", []).map_err(db)?;
                Connection::open(&outside)
                    .and_then(|o| o.query_row("SELECT COUNT(*) FROM t", [], |r| r.get::<_, i64>(0)))
                    .map_err(db)
            })
            .await
            .expect("second write");
        first.await.expect("task").expect("first write");
        assert_eq!(
            seen_outside, 0,
            "the first write was committed on its own before the second was applied"
        );
    }

    /// The WAL is rewound even when a background checkpoint never sees it whole: after such
    /// a checkpoint (some frames copied, more appended since), the writer asked to catch up
    /// copies the rest, and the next commit starts the WAL over instead of growing it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_wal_the_background_cannot_finish_is_rewound_by_the_writer() {
        let (_dir, file, writer) = writer_on("n INTEGER PRIMARY KEY, b BLOB");
        let rows = |from: i64| {
            let w = writer.clone();
            async move {
                for n in from..from + 50 {
                    w.write(move |c| {
                        c.execute("INSERT INTO t (n, b) VALUES (?1, zeroblob(3000))", [n])
                            .map_err(db)
                    })
                    .await
                    .expect("write");
                }
            }
        };
        // Frames in the WAL, as the background checkpointer sees them (copying them).
        let background = Connection::open(&file).expect("checkpointer");
        let checkpoint = || {
            background
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
                .expect("checkpoint")
        };
        let reader = Connection::open(&file).expect("reader");
        rows(0).await;
        // What happens under steady load, step by step: a reader is busy while the
        // background copies the WAL and the writer appends more, so SQLite cannot rewind it.
        reader.execute_batch("BEGIN").expect("begin");
        let seen: i64 = reader
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("read");
        assert_eq!(seen, 50);
        let first = checkpoint();
        rows(100).await;
        reader.execute_batch("COMMIT").expect("end of the read");
        writer.catch_up_signal().fetch_add(1, Ordering::Relaxed);
        rows(200).await; // the first of these is followed by the catch-up
        // Rewound after the first of the last 50 rows: about as long as after the first 50
        // (150 rows long if it had grown on).
        let now = checkpoint();
        assert!(
            now < 2 * first,
            "the WAL went on growing ({now} frames, {first} after the first 50 rows): not rewound"
        );
        assert_eq!(rows_in_t(&writer).await, 150);
    }

    /// A batch with a failing write and a panicking one: those two get their errors, every
    /// other write in the batch is committed, and the writer keeps working.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_bad_write_fails_alone_and_the_writer_lives_on() {
        let (_dir, _file, writer) = writer_on("n INTEGER PRIMARY KEY");
        let mut calls = Vec::new();
        for n in 0..50_i64 {
            let w = writer.clone();
            calls.push(tokio::spawn(async move {
                w.write(move |c| {
                    if n == 20 {
                        panic!("a bug in one write");
                    }
                    // 30 writes its row twice: a constraint error after a row went in, which
                    // the rollback must take out again.
                    let rows = if n == 30 { vec![30, 30] } else { vec![n] };
                    for r in rows {
                        c.execute("INSERT INTO t (n) VALUES (?1)", [r])
                            .map_err(db)?;
                    }
                    Ok(n)
                })
                .await
            }));
        }
        let mut failed = Vec::new();
        for (n, call) in calls.into_iter().enumerate() {
            if call.await.expect("task").is_err() {
                failed.push(n);
            }
        }
        assert_eq!(failed, [20, 30]);
        assert_eq!(rows_in_t(&writer).await, 48, "the writer still answers");
    }
}
