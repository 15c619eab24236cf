-- Anti-fatigue: identical requests (same requester, agent, session, token, tool, command and
-- args) while one is pending fold into it. The key is a hash of those; the partial index makes
-- "is an identical one pending?" one lookup, checked in the same statement as the insert.
ALTER TABLE approvals ADD COLUMN fold_key TEXT;
CREATE INDEX approvals_fold ON approvals (fold_key) WHERE status = 'pending' AND fold_key IS NOT NULL;

-- A caller that brought its own id and was folded into another request keeps using its id:
-- the alias names the request it waits on.
CREATE TABLE approval_aliases (
    alias       TEXT PRIMARY KEY NOT NULL,
    approval_id TEXT NOT NULL
);
