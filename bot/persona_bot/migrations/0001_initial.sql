-- Chats, their conversation history per persona, the bot's replies and the votes on them.

CREATE TABLE chats (
    chat_id     bigint PRIMARY KEY,
    persona     text,                         -- NULL: the bot's default persona
    insanity    boolean NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The recent turns of one chat with one persona, oldest first: [{"role": ..., "text": ...}, ...],
-- already trimmed to the model's context budget.
CREATE TABLE histories (
    chat_id     bigint NOT NULL,
    persona     text NOT NULL,
    turns       jsonb NOT NULL DEFAULT '[]'::jsonb,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chat_id, persona)
);

-- Every reply the bot sent, with the turns the model saw: what a vote rates and what
-- `persona export-feedback` turns into training records.
CREATE TABLE replies (
    id             bigserial PRIMARY KEY,
    chat_id        bigint NOT NULL,
    message_id     bigint NOT NULL,           -- the reply's Telegram message id
    persona        text NOT NULL,
    model_version  text NOT NULL,
    context        jsonb NOT NULL,            -- turns before the user's message
    message        text NOT NULL,             -- the user's message
    reply          text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (chat_id, message_id)
);

CREATE TABLE votes (
    reply_id  bigint NOT NULL REFERENCES replies (id) ON DELETE CASCADE,
    user_id   bigint NOT NULL,
    value     smallint NOT NULL CHECK (value IN (-1, 1)),
    voted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (reply_id, user_id)
);

CREATE INDEX replies_persona ON replies (persona);
