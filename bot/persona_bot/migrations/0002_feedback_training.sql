-- Whether a chat's 👍-rated exchanges may become training data (`persona export-feedback`), set
-- by the chat's admins with /feedback on|off: true = opted in, false = opted out, NULL = no choice
-- yet, which keeps private chats out (their id is positive) and lets groups in (docs/bot.md).
ALTER TABLE chats ADD COLUMN feedback_training boolean;
