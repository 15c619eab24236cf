//! Where a request's row is, by its id: the newest requests in memory, the rest in the
//! `approval_ids` table, which the writer fills in sorted batches (migration 0010 says why).
//!
//! A new request is written to `approvals` only (its rowid follows the previous one, so its
//! page is the table's last, shared by every request in the commit) and its id goes into
//! [`RecentIds`] (and the writer's own list of what it has to move, [`Fresh`]). About once a
//! second the writer moves those into `approval_ids` in id order, a chunk per transaction
//! between its batches ([`Merger`]), so each page of that index is written once per move
//! rather than once per request; then it writes the mark in `approval_ids_merged`, below which
//! every request is in `approval_ids`. Every lookup by id asks [`RecentIds`] first, then
//! `approval_ids`. A closing store moves what is left; after a crash, the next start moves
//! the requests above the mark before anything else is written ([`RECOVER`]).
//!
//! One [`RecentIds`] per database file in a process (several store handles on one file share
//! it, as the writes of each are serialised by SQLite's write lock); a second process on the
//! same file would not see it, so the file is locked for the process ([`RecentIds::for_file`]).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use rusqlite::params;

use super::group_commit::{Writer, db};
use crate::store::StoreError;

/// The writer moves the newest ids into `approval_ids` this often (sooner when
/// [`MERGE_AT`] have gathered).
const MERGE_EVERY: Duration = Duration::from_secs(1);
/// Or as soon as this many are waiting (bounds the memory they take).
const MERGE_AT: usize = 65_536;
/// Ids moved per transaction, at least: each chunk holds the writer (and every write queued
/// behind it) for 1 to 2 ms, at most 6 (measured, BENCHMARKS.md, twelfth round).
const CHUNK: usize = 512;

/// The newest requests' rows by id: those the writer has stored but not yet moved into
/// `approval_ids`.
pub(crate) struct RecentIds {
    rows: DashMap<String, i64, foldhash::quality::RandomState>,
    /// Held while any handle on the file lives in this process: another process waits, then
    /// fails (it could not see [`Self::rows`]).
    _lock: Option<File>,
    /// Tests keep the newest ids in memory while this is set.
    #[cfg(test)]
    pub(super) held: std::sync::atomic::AtomicBool,
}

/// The [`RecentIds`] of every database file open in this process, by path.
static OPEN: Mutex<Option<HashMap<PathBuf, Weak<RecentIds>>>> = Mutex::new(None);

impl RecentIds {
    /// Without a file lock: for tests of the writer on a scratch file.
    #[cfg(test)]
    pub(super) fn unlocked() -> Arc<Self> {
        Arc::new(Self {
            rows: DashMap::default(),
            _lock: None,
            held: Default::default(),
        })
    }

    /// The one for `file` in this process, made (and the file locked, waiting up to
    /// `wait` for another process to let go) if none is open.
    pub(super) fn for_file(file: &Path, wait: Duration) -> Result<Arc<Self>, StoreError> {
        // By its directory's real path: the file itself may not exist yet.
        let key = match (file.parent(), file.file_name()) {
            (Some(dir), Some(name)) => dir
                .canonicalize()
                .map(|dir| dir.join(name))
                .unwrap_or_else(|_| file.to_path_buf()),
            _ => file.to_path_buf(),
        };
        let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
        let open = open.get_or_insert_with(HashMap::new);
        if let Some(shared) = open.get(&key).and_then(Weak::upgrade) {
            return Ok(shared);
        }
        let lock_path = key.with_extension("db.lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", lock_path.display())))?;
        let deadline = Instant::now() + wait;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(StoreError(format!(
                        "{} is in use by another approvald process (it holds {}); one process \
                         per SQLite file, PostgreSQL for several",
                        key.display(),
                        lock_path.display()
                    )));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(StoreError(format!(
                        "cannot lock {}: {e}",
                        lock_path.display()
                    )));
                }
            }
        }
        let shared = Arc::new(Self {
            rows: DashMap::default(),
            _lock: Some(lock),
            #[cfg(test)]
            held: Default::default(),
        });
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(key, Arc::downgrade(&shared));
        Ok(shared)
    }

    /// The row of `id`, if it is one of the newest.
    pub(crate) fn get(&self, id: &str) -> Option<i64> {
        self.rows.get(id).map(|r| *r)
    }

    /// The newest ids in `[lower, upper)`.
    pub(crate) fn in_range(&self, lower: &str, upper: &str) -> Vec<String> {
        self.rows
            .iter()
            .filter(|e| e.key().as_str() >= lower && e.key().as_str() < upper)
            .map(|e| e.key().clone())
            .collect()
    }

    pub(super) fn insert(&self, id: &str, row: i64) {
        self.rows.insert(id.to_string(), row);
    }

    /// Forget `id` if it still names `row` (a write rolled back, or the id moved).
    pub(super) fn forget(&self, id: &str, row: i64) {
        self.rows.remove_if(id, |_, r| *r == row);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    pub(super) fn held(&self) -> bool {
        #[cfg(test)]
        return self.held.load(std::sync::atomic::Ordering::Relaxed);
        #[cfg(not(test))]
        false
    }

    /// The lowest row among them.
    fn lowest_row(&self) -> Option<i64> {
        self.rows.iter().map(|e| *e.value()).min()
    }
}

/// The row of `id`, as the writer sees it (in its transaction).
pub(super) fn row_of(w: &Writer<'_>, id: &str) -> Result<Option<i64>, StoreError> {
    if let Some(row) = w.recent().get(id) {
        return Ok(Some(row));
    }
    w.indexed_row(id)
}

/// Move into `approval_ids` every request above the mark (those a stopped process had not
/// moved): run when a store opens, before its writer starts.
pub(super) const RECOVER: &str = "BEGIN IMMEDIATE;
     INSERT INTO approval_ids (id, row)
         SELECT id, rowid FROM approvals
         WHERE rowid > (SELECT merged_to FROM approval_ids_merged) ORDER BY id
         ON CONFLICT DO NOTHING;
     UPDATE approval_ids_merged SET merged_to = (SELECT coalesce(max(rowid), 0) FROM approvals);
     COMMIT;";

/// The ids a writer committed and has not moved yet, by their first byte: a chunk of the
/// next move is a run of whole buckets, sorted when its turn comes, so a move never sorts (nor
/// holds the writer for) more than a chunk at a time.
#[derive(Default)]
pub(super) struct Fresh {
    buckets: Vec<Vec<(String, i64)>>,
    len: usize,
}

impl Fresh {
    pub(super) fn push(&mut self, id: String, row: i64) {
        if self.buckets.is_empty() {
            self.buckets.resize_with(256, Vec::new);
        }
        let first = id.as_bytes().first().copied().unwrap_or(0);
        self.buckets[usize::from(first)].push((id, row));
        self.len += 1;
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }
}

/// The writer's moves of the newest ids into `approval_ids`, a chunk at a time.
pub(super) struct Merger {
    /// The move under way: what is left of it, and the next bucket.
    round: Fresh,
    next: usize,
    /// The last move's mark is still to be written.
    mark_due: bool,
    last: Instant,
}

impl Merger {
    pub(super) fn new() -> Self {
        Self {
            round: Fresh::default(),
            next: 0,
            mark_due: false,
            last: Instant::now(),
        }
    }

    /// How long the writer may wait for a write before [`Self::step`] has work: `None`, for
    /// ever (nothing to move).
    pub(super) fn due_in(&self, w: &Writer<'_>) -> Option<Duration> {
        if w.recent().held() {
            return None;
        }
        if self.round.len > 0 || self.mark_due || w.fresh_len() >= MERGE_AT {
            return Some(Duration::ZERO);
        }
        if w.fresh_len() == 0 {
            return None;
        }
        Some(MERGE_EVERY.saturating_sub(self.last.elapsed()))
    }

    /// Move the next chunk (starting a move when one is due), or write the mark of a move
    /// that is done, in a transaction of its own. Between the writer's batches only.
    pub(super) fn step(&mut self, w: &Writer<'_>) -> Result<(), StoreError> {
        if self.due_in(w) != Some(Duration::ZERO) {
            return Ok(());
        }
        if self.round.len == 0 && !self.mark_due {
            self.round = w.take_fresh();
            self.next = 0;
        }
        let start = self.next;
        w.execute_batch("BEGIN IMMEDIATE").map_err(db)?;
        let applied = if self.round.len > 0 {
            self.move_chunk(w).map(Some)
        } else {
            self.write_mark(w).map(|()| None)
        };
        let failed = match applied {
            Ok(moved) => match w.execute_batch("COMMIT") {
                Ok(()) => {
                    self.done(w, moved);
                    return Ok(());
                }
                Err(e) => {
                    // Not moved after all: the chunk's ids go back (they are still in `recent`).
                    if let Some(chunk) = moved {
                        self.put_back(start, chunk);
                    }
                    db(e)
                }
            },
            Err(e) => e,
        };
        let _ = w.execute_batch("ROLLBACK");
        self.last = Instant::now();
        Err(failed)
    }

    /// A step committed: `moved`, the ids it moved (`None`: it wrote the mark).
    fn done(&mut self, w: &Writer<'_>, moved: Option<Vec<(String, i64)>>) {
        match moved {
            Some(chunk) => {
                for (id, row) in &chunk {
                    w.recent().forget(id, *row);
                }
                if self.round.len == 0 {
                    self.mark_due = true;
                }
            }
            None => {
                self.mark_due = false;
                self.last = Instant::now();
            }
        }
    }

    /// Every id this writer has left to move, and the mark, now (the store is closing).
    pub(super) fn finish(&mut self, w: &Writer<'_>) -> Result<(), StoreError> {
        self.last = Instant::now().checked_sub(MERGE_EVERY).unwrap_or(self.last);
        while self.due_in(w) == Some(Duration::ZERO) {
            self.step(w)?;
        }
        Ok(())
    }

    /// In the open transaction: the next run of buckets (at least a chunk, or the rest),
    /// sorted and inserted. Which ids those were.
    fn move_chunk(&mut self, w: &Writer<'_>) -> Result<Vec<(String, i64)>, StoreError> {
        let start = self.next;
        let mut chunk = Vec::new();
        while self.next < self.round.buckets.len() && chunk.len() < CHUNK {
            chunk.append(&mut self.round.buckets[self.next]);
            self.next += 1;
        }
        self.round.len -= chunk.len();
        chunk.sort_unstable();
        // Another handle's writer on this file may have moved some of them already.
        let inserted = (|| {
            let mut insert = w
                .prepare_cached(
                    "INSERT INTO approval_ids (id, row) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                )
                .map_err(db)?;
            for (id, row) in &chunk {
                insert.execute(params![id, row]).map_err(db)?;
            }
            Ok(())
        })();
        match inserted {
            Ok(()) => Ok(chunk),
            Err(e) => {
                self.put_back(start, chunk);
                Err(e)
            }
        }
    }

    /// `chunk`, taken from bucket `start` on, is to be moved again.
    fn put_back(&mut self, start: usize, mut chunk: Vec<(String, i64)>) {
        self.round.len += chunk.len();
        self.round.buckets[start].append(&mut chunk);
        self.next = start;
    }

    /// In the open transaction: the mark. Every committed request not in `recent` is in
    /// `approval_ids` (a request stays in `recent` until it is moved), so every row below the
    /// lowest one there is; with none there, every row is. No other writer is in a
    /// transaction now, so none of `recent` is uncommitted.
    fn write_mark(&self, w: &Writer<'_>) -> Result<(), StoreError> {
        let mark = match w.recent().lowest_row() {
            Some(row) => row - 1,
            None => w
                .query_row("SELECT coalesce(max(rowid), 0) FROM approvals", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(db)?,
        };
        w.prepare_cached("UPDATE approval_ids_merged SET merged_to = max(merged_to, ?1)")
            .map_err(db)?
            .execute([mark])
            .map_err(db)?;
        Ok(())
    }
}
