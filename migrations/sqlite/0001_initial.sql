-- Requests and how they ended. The request itself is kept as JSON; the columns beside it are the
-- ones queries filter and sort on.
CREATE TABLE approvals (
    id              TEXT PRIMARY KEY NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
    tool            TEXT NOT NULL,
    agent_id        TEXT,
    session_key     TEXT,
    request_json    TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    resolution_json TEXT,
    resolved_at     INTEGER
);
CREATE INDEX approvals_pending_expiry ON approvals (status, expires_at);
CREATE INDEX approvals_created ON approvals (created_at DESC, id DESC);

-- One row per person (or rule) per request: the primary key is what makes
-- "the same person never counts twice" hold in the database, not only in memory.
CREATE TABLE decisions (
    approval_id   TEXT NOT NULL REFERENCES approvals (id),
    approver_key  TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    approval_json TEXT NOT NULL,
    PRIMARY KEY (approval_id, approver_key)
);

-- Every prompt sent (or that failed), so every one of them can be edited later.
CREATE TABLE deliveries (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    approval_id   TEXT NOT NULL REFERENCES approvals (id),
    delivery_json TEXT NOT NULL
);
CREATE INDEX deliveries_by_approval ON deliveries (approval_id, seq);

-- The audit trail. Append-only: the triggers refuse any change to a written row.
CREATE TABLE audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    approval_id TEXT,
    event       TEXT NOT NULL,
    transport   TEXT,
    entry_json  TEXT NOT NULL
);
CREATE INDEX audit_by_approval ON audit (approval_id, seq);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

-- Standing rules added by "approve-always"; revoking keeps the row (revoked_at) for history.
CREATE TABLE standing_rules (
    id          TEXT PRIMARY KEY NOT NULL,
    rule_json   TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
