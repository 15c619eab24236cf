-- Tasks: what the assistant protocol and executors add to an approval (task type, costs,
-- constraints, execution status, reports). The document is JSON; the columns beside it are the
-- ones the queue endpoints filter and sum on. `execution` is NULL while the task's status still
-- follows its approval.
CREATE TABLE tasks (
    task_id     TEXT PRIMARY KEY NOT NULL,
    approval_id TEXT NOT NULL UNIQUE,
    execution   TEXT CHECK (execution IN ('running', 'completed', 'failed', 'aborted')),
    actual_cost REAL,
    duration_ms INTEGER,
    ended_at    INTEGER,
    created_at  INTEGER NOT NULL,
    task_json   TEXT NOT NULL
);
CREATE INDEX tasks_ended ON tasks (ended_at) WHERE ended_at IS NOT NULL;

-- Execution reports waiting to be forwarded to the upstream assistant service; a row leaves
-- only once the upstream has taken it, so nothing is lost while it is down or across restarts.
CREATE TABLE upstream_outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    body_json  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0
);
