-- The creation-time index is read newest first, but kept oldest first. A new request has the
-- latest creation time: in a descending index it went to the left edge, where SQLite splits a
-- full page in two and the new entries keep filling only the first half, so every page stayed
-- half empty and each commit rewrote more of them. At the right edge of an ascending index
-- pages fill up. SQLite reads an index backwards as readily as forwards, so "newest first"
-- queries use it as before.
DROP INDEX approvals_created;
CREATE INDEX approvals_created ON approvals (created_at, id);
