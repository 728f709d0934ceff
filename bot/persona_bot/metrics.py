"""The bot's Prometheus metrics, registered at import (the charts' Grafana test collects them).

Labels are `persona`, `version` (the persona version that answered, "3"; "none" when none did, as
in serving's metrics) and `outcome` only: never a user or chat id, which would make one series per
person.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Telegram users notice delays above ~1 s; the model dominates, so buckets reach 30 s.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REPLY_LATENCY = Histogram(
    "persona_bot_reply_latency_seconds",
    "Time from receiving a message to having sent the persona's reply.",
    ["persona"],
    buckets=LATENCY_BUCKETS,
)
MODEL_LATENCY = Histogram(
    "persona_bot_model_latency_seconds",
    "Time of one inference call (retries included), by outcome.",
    ["persona", "outcome"],
    buckets=LATENCY_BUCKETS,
)
FIRST_DRAFT_LATENCY = Histogram(
    "persona_bot_first_draft_seconds",
    "Time from receiving a message to sending the first draft of its reply (private chats).",
    ["persona"],
    buckets=LATENCY_BUCKETS,
)
UPDATES = Counter(
    "persona_bot_updates_total",
    "Telegram updates processed, by outcome (handled, ignored, error).",
    ["outcome"],
)
REPLIES = Counter(
    "persona_bot_replies_total",
    "Messages the persona was asked to answer, by the version that answered (none: no version did) and outcome "
    "(ok, stopped: the user stopped it with words shown, inference_unavailable, inference_rejected, rate_limited).",
    ["persona", "version", "outcome"],
)
FEEDBACK_VOTES = Counter(
    "persona_bot_feedback_votes_total",
    "Votes on replies, by the version that wrote the reply (none: unknown) and outcome "
    "(up, down, unknown_reply, store_unavailable).",
    ["persona", "version", "outcome"],
)
NO_VERSION = "none"  # the `version` of outcomes no version answered (serving's metrics say the same)


def replied(persona: str, version: str, outcome: str = "ok") -> None:
    """Count a reply of `version` (ok, or stopped with words shown), and make its vote series exist
    at 0 so the first votes show up in `increase()` (a canary's analysis counts ratings per version
    from the first one)."""
    REPLIES.labels(persona, version, outcome).inc()
    for outcome in ("up", "down"):
        FEEDBACK_VOTES.labels(persona, version, outcome)
STORE_ERRORS = Counter(
    "persona_bot_store_errors_total",
    "Database operations that failed because the database was unavailable.",
)
STORE_UP = Gauge(
    "persona_bot_store_up",
    "1 while the conversation database answers, 0 during an outage.",
)
IN_FLIGHT = Gauge(
    "persona_bot_updates_in_flight",
    "Updates being processed right now.",
)
ASR_LATENCY = Histogram(
    "persona_bot_asr_latency_seconds",
    "Time of one transcription call to the ASR model, by outcome (ok, unavailable, rejected).",
    ["outcome"],
    buckets=LATENCY_BUCKETS,
)
VOICE_AUDIO_SECONDS = Histogram(
    "persona_bot_voice_audio_seconds",
    "Length of each voice message, audio file or video note the bot decoded.",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300),
)
VOICE_MESSAGES = Counter(
    "persona_bot_voice_messages_total",
    "Voice messages, audio files and video notes addressed to the bot, by outcome "
    "(transcribed, too_long, too_large, file_not_found, invalid_file_id, download_not_found, fetch_failed, "
    "undecodable, empty, asr_unavailable, asr_not_served, asr_rejected).",
    ["outcome"],
)
