-- The rate limit, shared by every bot replica and kept across restarts: one row per sender (a user,
-- or a chat posting as itself) holding its theoretical arrival time (GCRA, `Store.take_turn`). A row
-- whose `tat` is past is a full bucket, the same as no row: those are deleted now and then.
CREATE TABLE rate_limits (
    sender_id  bigint PRIMARY KEY,
    tat        timestamptz NOT NULL
);
CREATE INDEX rate_limits_tat ON rate_limits (tat);
