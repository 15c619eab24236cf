-- The PostgreSQL schema: the five SQLite migrations (0001..0005) in one. Times are milliseconds
-- since the epoch (BIGINT) and documents are JSON kept as TEXT, exactly as on SQLite, so both
-- stores read back byte-identical documents. Ids are compared bytewise (COLLATE "C"), like
-- SQLite's BINARY collation: listing order and prefix lookups do not depend on the server's
-- locale.

-- Requests and how they ended. The request itself is kept as JSON; the columns beside it are the
-- ones queries filter and sort on.
--   fold_key: identical requests (same requester, agent, session, token, tool, command, args)
--     fold into a pending one; inserts with a key serialise on an advisory lock on it.
--   delivery_owner / deliveries_done: which instance is sending the request's prompts and
--     whether that fan-out finished; another instance takes unfinished fan-outs over once their
--     owner has stopped saying it is alive (see `instances`).
CREATE TABLE approvals (
    id              TEXT COLLATE "C" PRIMARY KEY,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired')),
    tool            TEXT NOT NULL,
    agent_id        TEXT,
    session_key     TEXT,
    request_json    TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    resolution_json TEXT,
    resolved_at     BIGINT,
    fold_key        TEXT,
    delivery_owner  TEXT,
    deliveries_done BOOLEAN NOT NULL DEFAULT TRUE
);
CREATE INDEX approvals_pending_expiry ON approvals (status, expires_at);
CREATE INDEX approvals_created ON approvals (created_at DESC, id DESC);
CREATE INDEX approvals_fold ON approvals (fold_key) WHERE status = 'pending' AND fold_key IS NOT NULL;
CREATE INDEX approvals_unfinished ON approvals (created_at) WHERE NOT deliveries_done;

-- One row per person (or rule) per request: the primary key is what makes
-- "the same person never counts twice" hold in the database, not only in memory. `seq` only
-- orders a request's decisions.
CREATE TABLE decisions (
    approval_id   TEXT COLLATE "C" NOT NULL REFERENCES approvals (id),
    approver_key  TEXT NOT NULL,
    seq           BIGSERIAL NOT NULL,
    approval_json TEXT NOT NULL,
    PRIMARY KEY (approval_id, approver_key)
);

-- Every prompt sent (or that failed), so every one of them can be edited later. `message_key`
-- (channel, chat and message id joined by '|') finds the approval behind a platform message.
CREATE TABLE deliveries (
    seq           BIGSERIAL PRIMARY KEY,
    approval_id   TEXT COLLATE "C" NOT NULL REFERENCES approvals (id),
    delivery_json TEXT NOT NULL,
    message_key   TEXT
);
CREATE INDEX deliveries_by_approval ON deliveries (approval_id, seq);
CREATE INDEX deliveries_by_message ON deliveries (message_key) WHERE message_key IS NOT NULL;

-- The audit trail. Append-only: the triggers refuse any change to a written row, and TRUNCATE.
-- Writers take an advisory lock before appending (see the store), so `seq` order is commit
-- order and a reader paging with "after seq N" never skips a row that commits late.
CREATE TABLE audit (
    seq         BIGSERIAL PRIMARY KEY,
    at          BIGINT NOT NULL,
    approval_id TEXT COLLATE "C",
    event       TEXT NOT NULL,
    transport   TEXT,
    entry_json  TEXT NOT NULL
);
CREATE INDEX audit_by_approval ON audit (approval_id, seq);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- Standing rules added by "approve-always"; revoking keeps the row (revoked_at) for history.
CREATE TABLE standing_rules (
    id          TEXT COLLATE "C" PRIMARY KEY,
    rule_json   TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- Tasks: what the assistant protocol and executors add to an approval (task type, costs,
-- constraints, execution status, reports). The document is JSON; the columns beside it are the
-- ones the queue endpoints filter and sum on. `execution` is NULL while the task's status still
-- follows its approval.
CREATE TABLE tasks (
    task_id     TEXT COLLATE "C" PRIMARY KEY,
    approval_id TEXT COLLATE "C" NOT NULL UNIQUE,
    execution   TEXT CHECK (execution IN ('running', 'completed', 'failed', 'aborted')),
    actual_cost DOUBLE PRECISION,
    duration_ms BIGINT,
    ended_at    BIGINT,
    created_at  BIGINT NOT NULL,
    task_json   TEXT NOT NULL
);
CREATE INDEX tasks_ended ON tasks (ended_at) WHERE ended_at IS NOT NULL;

-- Execution reports waiting to be forwarded to the upstream assistant service; a row leaves
-- only once the upstream has taken it, so nothing is lost while it is down or across restarts.
CREATE TABLE upstream_outbox (
    seq        BIGSERIAL PRIMARY KEY,
    body_json  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0
);

-- A caller that brought its own id and was folded into another request keeps using its id:
-- the alias names the request it waits on.
CREATE TABLE approval_aliases (
    alias       TEXT COLLATE "C" PRIMARY KEY,
    approval_id TEXT COLLATE "C" NOT NULL
);

-- Each running instance says it is alive every few seconds. `last_seen` is the database's clock
-- (milliseconds), not the instance's, so clock skew between machines does not matter.
CREATE TABLE instances (
    id        TEXT PRIMARY KEY,
    last_seen BIGINT NOT NULL
);
