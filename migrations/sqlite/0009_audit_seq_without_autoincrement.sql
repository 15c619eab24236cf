-- Audit lines are numbered by their rowid alone: `seq INTEGER PRIMARY KEY`, no AUTOINCREMENT.
-- AUTOINCREMENT differs only in never giving a new line the number of a deleted last line, and
-- audit lines are never deleted (the append-only trigger refuses it), so numbering goes on as
-- before: one more than the last line. What it cost: every audit insert also looked up and
-- rewrote the table's row in `sqlite_sequence`, three times for each request and its decision
-- in `approvald-bench cycle`. SQLite cannot drop AUTOINCREMENT from a table, so the table is
-- rebuilt: a new one, the lines copied with their numbers, the old one dropped (its index and
-- triggers with it), the new one renamed, its index and triggers made again.
CREATE TABLE audit_rebuilt (
    seq                 INTEGER PRIMARY KEY,
    at                  INTEGER NOT NULL,
    approval_id         TEXT,
    event               TEXT NOT NULL,
    transport           TEXT,
    entry_json          TEXT NOT NULL,
    approval_created_at INTEGER
);
INSERT INTO audit_rebuilt (seq, at, approval_id, event, transport, entry_json, approval_created_at)
    SELECT seq, at, approval_id, event, transport, entry_json, approval_created_at
    FROM audit ORDER BY seq;
DROP TABLE audit;
ALTER TABLE audit_rebuilt RENAME TO audit;
CREATE INDEX audit_by_approval ON audit (approval_created_at, approval_id, seq);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
DELETE FROM sqlite_sequence WHERE name = 'audit';
