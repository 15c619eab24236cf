-- Who is sending a request's prompts, and whether that fan-out finished: a process that dies
-- mid-fan-out (a crash, or one of several instances going away) leaves its requests unfinished,
-- and another process (or this one after a restart) takes them over once the owner has stopped
-- saying it is alive. Rows from before this migration count as finished.
ALTER TABLE approvals ADD COLUMN delivery_owner TEXT;
ALTER TABLE approvals ADD COLUMN deliveries_done INTEGER NOT NULL DEFAULT 1;
CREATE INDEX approvals_unfinished ON approvals (delivery_owner) WHERE deliveries_done = 0;

-- Each running process says it is alive every few seconds.
CREATE TABLE instances (
    id        TEXT PRIMARY KEY NOT NULL,
    last_seen INTEGER NOT NULL
);
