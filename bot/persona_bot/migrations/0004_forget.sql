-- /clear forgets a chat: its histories are deleted and the replies recorded so far keep no text
-- (context, message and reply emptied); `forgotten` marks them, so votes on them still count but
-- `persona export-feedback` never exports them (docs/bot.md).
ALTER TABLE replies ADD COLUMN forgotten boolean NOT NULL DEFAULT false;
