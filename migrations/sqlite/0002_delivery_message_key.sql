-- Find the approval behind a platform message (a reply to a prompt, a press on an old button)
-- without scanning every delivery: channel, chat and message id, joined by '|'.
ALTER TABLE deliveries ADD COLUMN message_key TEXT;
CREATE INDEX deliveries_by_message ON deliveries (message_key) WHERE message_key IS NOT NULL;
