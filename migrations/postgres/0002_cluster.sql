-- What one instance tells the others: every live event (a request, a decision, an expiry, a
-- task moving) is written here and announced with NOTIFY approvald_events carrying its seq, so
-- the other instances wake their waiters and re-send it to their SSE and WebSocket clients. A
-- listener that lost its connection catches up from the last seq it saw. Rows are kept a few
-- minutes only.
CREATE TABLE cluster_events (
    seq    BIGSERIAL PRIMARY KEY,
    origin TEXT NOT NULL,
    method TEXT NOT NULL,
    params JSONB NOT NULL,
    at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX cluster_events_at ON cluster_events (at);

-- Keys every instance must share: the control UI's session signing key, so a session made on
-- one instance is accepted by the others behind the load balancer.
CREATE TABLE cluster_keys (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
