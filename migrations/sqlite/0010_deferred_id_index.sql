-- no-transaction
-- The requests' id index is kept apart and filled in sorted batches (see `store/sqlite/ids.rs`).
-- Request ids are random (UUIDs, often chosen by the gateway), so every new request dirtied a
-- random page of the `approvals` primary-key index: one more 4 KiB frame in the WAL at every
-- commit, then again in the checkpoint, about a third of all that was written per request
-- (measured with `approvald-bench cycle`, BENCHMARKS.md, eleventh round). Now:
--   * `approvals` is keyed by its rowid alone (in insertion order), `id` is a plain column;
--   * `approval_ids` maps an id to its row, for every request up to `approval_ids_merged`;
--     the writer adds the newest ones there in id order about once a second, so each page of
--     it is written once per batch instead of once per request. Newer ones are found through
--     the writer's memory meanwhile, and after a restart by their rowid (above the mark);
--   * decisions name their request by (creation time, id), which `approvals_created` keeps
--     unique and in time order: the foreign key stays, checked without the id index;
--   * deliveries keep no foreign key (their writes check that the request exists).
-- SQLite cannot drop a primary key or a foreign key, so the tables are rebuilt by its
-- documented procedure, foreign keys off, in one transaction (as in 0008).
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE approvals_rebuilt (
    id              TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status = 'pending' OR status = 'approved'
                                         OR status = 'denied' OR status = 'expired'),
    tool            TEXT NOT NULL,
    agent_id        TEXT,
    session_key     TEXT,
    request_json    TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    resolution_json TEXT,
    resolved_at     INTEGER,
    fold_key        TEXT,
    delivery_owner  TEXT,
    deliveries_done INTEGER NOT NULL DEFAULT 1
);
INSERT INTO approvals_rebuilt (rowid, id, status, tool, agent_id, session_key, request_json,
                               created_at, expires_at, resolution_json, resolved_at, fold_key,
                               delivery_owner, deliveries_done)
    SELECT rowid, id, status, tool, agent_id, session_key, request_json, created_at, expires_at,
           resolution_json, resolved_at, fold_key, delivery_owner, deliveries_done
    FROM approvals ORDER BY rowid;
DROP TABLE approvals;
ALTER TABLE approvals_rebuilt RENAME TO approvals;
CREATE INDEX approvals_pending_expiry ON approvals (status, expires_at);
CREATE INDEX approvals_fold ON approvals (fold_key) WHERE status = 'pending' AND fold_key IS NOT NULL;
CREATE INDEX approvals_unfinished ON approvals (delivery_owner) WHERE deliveries_done = 0;
CREATE UNIQUE INDEX approvals_created ON approvals (created_at, id);

CREATE TABLE approval_ids (
    id  TEXT PRIMARY KEY NOT NULL,
    row INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO approval_ids (id, row) SELECT id, rowid FROM approvals ORDER BY id;
-- Every request whose rowid is at most this is in `approval_ids`.
CREATE TABLE approval_ids_merged (merged_to INTEGER NOT NULL);
INSERT INTO approval_ids_merged (merged_to) SELECT coalesce(max(rowid), 0) FROM approvals;

CREATE TABLE decisions_rebuilt (
    approval_created_at INTEGER NOT NULL,
    approval_id         TEXT NOT NULL,
    approver_key        TEXT NOT NULL,
    seq                 INTEGER NOT NULL,
    approval_json       TEXT NOT NULL,
    PRIMARY KEY (approval_created_at, approval_id, approver_key),
    FOREIGN KEY (approval_created_at, approval_id) REFERENCES approvals (created_at, id)
) WITHOUT ROWID;
INSERT INTO decisions_rebuilt (approval_created_at, approval_id, approver_key, seq, approval_json)
    SELECT approval_created_at, approval_id, approver_key, seq, approval_json FROM decisions;
DROP TABLE decisions;
ALTER TABLE decisions_rebuilt RENAME TO decisions;

CREATE TABLE deliveries_rebuilt (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    approval_id   TEXT NOT NULL,
    delivery_json TEXT NOT NULL,
    message_key   TEXT
);
INSERT INTO deliveries_rebuilt (seq, approval_id, delivery_json, message_key)
    SELECT seq, approval_id, delivery_json, message_key FROM deliveries ORDER BY seq;
DROP TABLE deliveries;
ALTER TABLE deliveries_rebuilt RENAME TO deliveries;
CREATE INDEX deliveries_by_approval ON deliveries (approval_id, seq);
CREATE INDEX deliveries_by_message ON deliveries (message_key) WHERE message_key IS NOT NULL;

COMMIT;
PRAGMA foreign_keys = ON;
