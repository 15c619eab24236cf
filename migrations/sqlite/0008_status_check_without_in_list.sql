-- no-transaction
-- The status check is written as comparisons rather than `status IN (...)`: for an IN list of
-- more than two values SQLite builds a temporary index every time the check runs, which is at
-- every new request and every settle (about 2 % of the server's CPU in `approvald-bench
-- cycle`). The values allowed are the same. SQLite cannot change a table's check, so the table
-- is rebuilt by its documented procedure: foreign keys off (decisions and deliveries refer to
-- this table), a new table, the rows copied, the old one dropped, the new one renamed, its
-- indexes made again, all in one transaction. That is why this migration runs outside the one
-- sqlx would give it: foreign keys cannot be switched off inside a transaction.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
CREATE TABLE approvals_rebuilt (
    id              TEXT PRIMARY KEY NOT NULL,
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
CREATE INDEX approvals_created ON approvals (created_at, id);
COMMIT;
PRAGMA foreign_keys = ON;
