-- Audit lines and decisions are looked up by their request. Keyed by the request's id alone
-- (a random UUID), every new line and every decision dirtied an index page somewhere in the
-- middle of the file, and each such page is one more 4 KiB frame in the WAL at commit: that
-- was most of what a write cost. Keyed by the request's creation time first, new entries land
-- at the end of the index, where the pages are already in memory and shared by a whole batch.
-- Measured (a request, its decision, three audit lines; batches of 32): 5.8 WAL frames per
-- request before, 3.6 after.

-- The audit trail: the creation time of the request a line is about (NULL for lines about no
-- request). Filled for existing lines; the append-only trigger is lifted for that and put back.
ALTER TABLE audit ADD COLUMN approval_created_at INTEGER;
DROP TRIGGER audit_no_update;
UPDATE audit SET approval_created_at =
    (SELECT created_at FROM approvals WHERE approvals.id = audit.approval_id)
    WHERE approval_id IS NOT NULL;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
DROP INDEX audit_by_approval;
CREATE INDEX audit_by_approval ON audit (approval_created_at, approval_id, seq);

-- Decisions: stored in key order (WITHOUT ROWID). The key still makes "the same person never
-- counts twice" hold in the database: a request's creation time is fixed by its id.
CREATE TABLE decisions_by_time (
    approval_created_at INTEGER NOT NULL,
    approval_id         TEXT NOT NULL REFERENCES approvals (id),
    approver_key        TEXT NOT NULL,
    seq                 INTEGER NOT NULL,
    approval_json       TEXT NOT NULL,
    PRIMARY KEY (approval_created_at, approval_id, approver_key)
) WITHOUT ROWID;
INSERT INTO decisions_by_time (approval_created_at, approval_id, approver_key, seq, approval_json)
    SELECT a.created_at, d.approval_id, d.approver_key, d.seq, d.approval_json
    FROM decisions d JOIN approvals a ON a.id = d.approval_id;
DROP TABLE decisions;
ALTER TABLE decisions_by_time RENAME TO decisions;
