//! The background checkpointer: a thread of its own that copies the WAL into the database file
//! while the writer goes on, and keeps what the disk is asked to do at any one moment small.
//!
//! Under a steady load the WAL gains tens of megabytes a second (about 200 MB/s at 15,000
//! requests and decisions a second, measured with `approvald-bench cycle`). Left alone, all of
//! it reached the disk in two bursts: the checkpoint's own `fsync` of the WAL (70 to 90 ms, the
//! machine busy meanwhile) and, at the writer's `catch_up`, the `fsync` of the database file
//! for everything the second's checkpoints had copied into it (22 to 33 ms, during which no
//! write could commit). SQLite syncs the database file only at a checkpoint that finishes the
//! WAL, which only the writer can do under load. So this thread:
//!
//! - every tenth of a second, once enough has been written, syncs the WAL from a descriptor of
//!   its own, so that a checkpoint's sync of the WAL finds little left to write;
//! - every second, copies the WAL into the database file (PASSIVE: it never waits for, nor
//!   blocks, the writer or readers) and, when the WAL is long, makes more passes, syncing the
//!   database file after each, before it asks the writer to finish the job. The writer's
//!   pause then only covers what was written during the last pass (2 to 6 ms, measured).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ffi};

use super::group_commit::{self, GroupCommit, db};
use crate::store::StoreError;

/// How often the thread wakes up.
const TICK: Duration = Duration::from_millis(100);

/// How often the WAL is copied into the database file.
const PASS_EVERY: Duration = Duration::from_secs(1);

/// The WAL is synced early once this many writes were committed since it was last synced (a
/// few megabytes of WAL): under a light load the second's checkpoint syncs it anyway.
const SYNC_WAL_AFTER_WRITES: u64 = 1_000;

/// Start the checkpointer for the database `file` written by `writes`. The thread ends within
/// a tick of the writer's (which ends with the last clone of `writes`): it holds only a weak
/// reference to the writer's count of writes, and stops when that is gone.
pub(super) fn start(file: &Path, writes: &GroupCommit) -> Result<(), StoreError> {
    start_with(file, writes, group_commit::CATCH_UP_FRAMES).map(drop)
}

/// `start`, with the WAL length (in frames) past which the writer is asked to catch up.
fn start_with(
    file: &Path,
    writes: &GroupCommit,
    long: i64,
) -> Result<std::thread::JoinHandle<()>, StoreError> {
    let conn = Connection::open(file).map_err(db)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(db)?;
    // As the writer's: a checkpoint syncs the WAL before it copies and the file once done.
    conn.execute_batch("PRAGMA synchronous = NORMAL")
        .map_err(db)?;
    let wal = wal_of(file);
    let catch_up = writes.catch_up_signal();
    let written = std::sync::Arc::downgrade(&writes.written());
    std::thread::Builder::new()
        .name("sqlite checkpoint".into())
        .spawn(move || run(&conn, &wal, &catch_up, &written, long))
        .map_err(|e| StoreError(format!("cannot start the store's checkpoint thread: {e}")))
}

fn run(
    conn: &Connection,
    wal: &Path,
    catch_up: &AtomicU64,
    written: &std::sync::Weak<AtomicU64>,
    long: i64,
) {
    let mut last_pass = Instant::now();
    let mut synced_at = 0;
    loop {
        std::thread::sleep(TICK);
        // The writer (and with it the store) is gone.
        let Some(now_written) = written.upgrade().map(|w| w.load(Ordering::Relaxed)) else {
            return;
        };
        if now_written.wrapping_sub(synced_at) >= SYNC_WAL_AFTER_WRITES {
            synced_at = now_written;
            if let Err(e) = sync_wal(wal) {
                tracing::warn!(error = %e, "syncing the WAL in the background failed");
            }
        }
        if last_pass.elapsed() >= PASS_EVERY {
            last_pass = Instant::now();
            if let Err(e) = checkpoint_once(conn, catch_up, long) {
                tracing::warn!(error = %e, "WAL checkpoint failed (retried in a second)");
            }
        }
    }
}

/// The WAL file beside the database `file`.
fn wal_of(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Sync the WAL's contents to the disk from a descriptor of our own. Safe beside SQLite: it
/// holds no POSIX lock on the WAL file (its WAL locks are on the `-shm` file), so closing
/// this descriptor releases nothing of SQLite's. A missing WAL (not created yet) is fine.
fn sync_wal(wal: &Path) -> Result<(), StoreError> {
    match std::fs::File::open(wal) {
        Ok(f) => f
            .sync_data()
            .map_err(|e| StoreError(format!("cannot sync the WAL: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError(format!("cannot open the WAL to sync it: {e}"))),
    }
}

/// One checkpoint. A WAL of `long` frames or more gets more passes, each copying what was
/// appended during the one before (less each time) and followed by a sync of the database
/// file, so that what is left for the writer's `catch_up`, which holds every write back
/// while it runs, is little; then the writer is asked for it (`catch_up` is bumped).
fn checkpoint_once(conn: &Connection, catch_up: &AtomicU64, long: i64) -> Result<(), StoreError> {
    let mut copied_before = 0;
    for pass in 0..4 {
        // (busy, frames in the WAL, frames copied into the file)
        let (frames, copied): (i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .map_err(db)?;
        if pass == 0 && frames < long {
            return Ok(());
        }
        sync_database_file(conn)?;
        if frames - copied_before < 2_048 {
            break;
        }
        copied_before = copied;
    }
    catch_up.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Sync the database file of `conn` to the disk, through SQLite's own handle of it. Not
/// through a descriptor of our own: closing any descriptor of a file drops every POSIX lock
/// this process holds on it, and SQLite holds its locks on the database file.
fn sync_database_file(conn: &Connection) -> Result<(), StoreError> {
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: `conn.handle()` is the open connection `conn` owns, used only on this thread
    // while `conn` is borrowed. SQLITE_FCNTL_FILE_POINTER writes one `sqlite3_file` pointer
    // (the connection's own handle of its main database file, valid while the connection
    // is open) into `file`, which is that type.
    let rc = unsafe {
        ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&raw mut file).cast(),
        )
    };
    if rc != ffi::SQLITE_OK || file.is_null() {
        return Err(StoreError(format!(
            "cannot reach the database file to sync it (SQLite code {rc})"
        )));
    }
    // SAFETY: `file` is the live `sqlite3_file` SQLite just handed out; its methods table is
    // set for as long as the file is open (checked for null all the same).
    let sync = unsafe { (*file).pMethods.as_ref() }.and_then(|m| m.xSync);
    let Some(sync) = sync else {
        return Err(StoreError(
            "the database file cannot be synced (no xSync)".into(),
        ));
    };
    // SAFETY: xSync is called with the file it belongs to, from the one thread using the
    // connection, with a documented flag.
    let rc = unsafe { sync(file, ffi::SQLITE_SYNC_NORMAL) };
    if rc == ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(StoreError(format!(
            "syncing the database file failed (SQLite code {rc})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checkpoint copies a short WAL and leaves the writer alone; a long one it copies
    /// too and then asks the writer to finish the job (whose rewinding `group_commit`'s tests
    /// check).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_long_wal_asks_the_writer_to_catch_up() {
        let (_dir, file, writer) = group_commit::tests::writer_on("n INTEGER PRIMARY KEY");
        let checkpointer = Connection::open(&file).expect("checkpointer");
        let asked = writer.catch_up_signal();
        let write_rows = |from: i64| {
            let w = writer.clone();
            async move {
                for n in from..from + 20 {
                    w.write(move |c| c.execute("INSERT INTO t (n) VALUES (?1)", [n]).map_err(db))
                        .await
                        .expect("write");
                }
            }
        };
        write_rows(0).await;
        checkpoint_once(&checkpointer, &asked, 1_000_000).expect("checkpoint");
        assert_eq!(
            asked.load(Ordering::Relaxed),
            0,
            "a short WAL needs no catch-up"
        );
        write_rows(100).await;
        checkpoint_once(&checkpointer, &asked, 10).expect("checkpoint");
        assert_eq!(
            asked.load(Ordering::Relaxed),
            1,
            "a long WAL asks the writer once"
        );
    }

    /// Both syncs work on a live database beside the writer, and a WAL that is not there yet
    /// is not an error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_database_and_its_wal_are_synced_beside_the_writer() {
        let (dir, file, writer) = group_commit::tests::writer_on("n INTEGER PRIMARY KEY");
        writer
            .write(|c| c.execute("INSERT INTO t (n) VALUES (1)", []).map_err(db))
            .await
            .expect("write");
        let checkpointer = Connection::open(&file).expect("checkpointer");
        sync_database_file(&checkpointer).expect("the database file is synced");
        sync_wal(&wal_of(&file)).expect("the WAL is synced");
        sync_wal(&dir.path().join("none.db-wal")).expect("no WAL yet is fine");
        assert!(wal_of(&file).exists(), "the WAL sits beside the file");
    }

    /// The thread checkpoints on its own (a long WAL is copied and the writer asked to
    /// finish it) and ends once the store is closed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_thread_checkpoints_until_the_store_closes() {
        let (_dir, file, writer) = group_commit::tests::writer_on("n INTEGER PRIMARY KEY");
        for n in 0..3_000 {
            writer
                .write(move |c| c.execute("INSERT INTO t (n) VALUES (?1)", [n]).map_err(db))
                .await
                .expect("write");
        }
        let thread = start_with(&file, &writer, 10).expect("start");
        let asked = writer.catch_up_signal();
        let deadline = Instant::now() + Duration::from_secs(10);
        while asked.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            tokio::time::sleep(TICK).await;
        }
        assert!(
            asked.load(Ordering::Relaxed) > 0,
            "the thread copied the long WAL and asked the writer to finish it"
        );
        drop(writer);
        // Polled rather than joined: a thread that never ends must fail the test, not hang it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !thread.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(TICK).await;
        }
        assert!(thread.is_finished(), "the thread ended with the store");
        assert!(thread.join().is_ok(), "the thread ended without panicking");
    }
}
