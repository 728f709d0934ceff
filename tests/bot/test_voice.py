"""Voice messages, audio files and video notes against the fake Bot API (getFile + download, as
strict as Telegram) and the stub model's `asr`: real espeak-ng speech, really encoded and decoded.
The real ASR model on real TorchServe: tests/bot/test_voice_e2e.py."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from persona_bot.routers.voice import COULD_NOT_HEAR, SPEECH_UNAVAILABLE
from personafleet import audio
from persona_training.asr_model import synthesize
from tests.bot.test_faults import scrape

SENTENCE = "база тормозит после миграции"


@pytest.fixture(scope="module")
def spoken() -> audio.Audio:
    return synthesize(SENTENCE)


async def value(service, series: str) -> float:
    """A series' current value: metrics are process-wide, so tests compare before and after."""
    for line in (await scrape(service, series.split("{")[0])).splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


TRANSCRIBED = 'persona_bot_voice_messages_total{outcome="transcribed"}'
AUDIO_COUNT = "persona_bot_voice_audio_seconds_count"
ASR_OK = 'persona_bot_asr_latency_seconds_count{outcome="ok"}'
ASR_DOWN = 'persona_bot_asr_latency_seconds_count{outcome="unavailable"}'


async def replies(database: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database)
    try:
        return await connection.fetch("SELECT message, voice FROM replies ORDER BY id")
    finally:
        await connection.close()


@pytest.mark.parametrize("kind, encoding", [
    ("voice", {}),  # Opus in OGG, 48 kHz mono: what Telegram's clients record
    ("audio", {"container": "mp3", "codec": "libmp3lame", "rate": 44_100}),
    ("video_note", {"container": "mp4", "codec": "aac", "rate": 44_100}),
])
async def test_a_recording_is_answered_as_its_transcript(running_bot, telegram, model, postgres_database, spoken,
                                                         kind, encoding):
    async with running_bot() as service:
        before = [await value(service, series) for series in (TRANSCRIBED, AUDIO_COUNT, ASR_OK)]
        telegram.recording(audio.encode(spoken, **encoding), duration=round(spoken.seconds), kind=kind, chat_id=71)
        sent = await telegram.wait_sent(1, timeout=20)
        assert sent[0]["text"] == f"[devops-dude] re: {SENTENCE}"
        assert model.requests[-1][1].message == SENTENCE
        assert model.asr_seconds[-1] == pytest.approx(spoken.seconds, abs=0.1)  # decoded to 16 kHz mono
        assert telegram.downloads and telegram.method_calls("sendChatAction")[0]["action"] == "typing"
        after = [await value(service, series) for series in (TRANSCRIBED, AUDIO_COUNT, ASR_OK)]
        assert [b - a for a, b in zip(before, after)] == [1, 1, 1]
    await asyncio.sleep(0.1)
    assert [tuple(row) for row in await replies(postgres_database)] == [(SENTENCE, True)]


async def test_the_transcript_joins_the_history_like_text(running_bot, telegram, model, spoken):
    async with running_bot():
        telegram.recording(audio.encode(spoken), duration=2, chat_id=72)
        await telegram.wait_sent(1, timeout=20)
        telegram.message("и что делать?", chat_id=72)
        await telegram.wait_sent(2)
    assert [turn.text for turn in model.requests[-1][1].context] == [SENTENCE, f"[devops-dude] re: {SENTENCE}"]


async def test_limits_are_refused_politely_before_downloading(running_bot, telegram, model, postgres_database, spoken):
    async with running_bot(VOICE_MAX_SECONDS="30", VOICE_MAX_BYTES="1000000"):
        telegram.recording(audio.encode(spoken), duration=31, chat_id=73)
        assert "30 seconds" in (await telegram.wait_sent(1))[0]["text"]
        telegram.recording(audio.encode(spoken), duration=2, declared_size=2_000_000, chat_id=73)
        assert "too big" in (await telegram.wait_sent(2))[1]["text"]
        # The declared duration lies: the decoded length decides.
        long = audio.Audio(audio.np.tile(spoken.samples, 20))
        telegram.recording(audio.encode(long), duration=2, chat_id=73)
        assert "30 seconds" in (await telegram.wait_sent(3, timeout=20))[2]["text"]
    assert not model.requests and len(model.asr_seconds) == 0
    assert telegram.downloads == ["voice/file_2.oga"]
    assert await replies(postgres_database) == []


async def test_telegram_refuses_files_over_20_mb(running_bot, telegram, model):
    async with running_bot():
        # Declared small, really 21 MB: getFile says "file is too big", as Telegram does.
        telegram.recording(b"\0" * (21 * 1024 * 1024), duration=5, declared_size=1000, chat_id=74)
        assert "too big" in (await telegram.wait_sent(1, timeout=20))[0]["text"]
    assert not telegram.downloads and not model.asr_seconds


async def test_undecodable_and_empty_recordings_store_nothing(running_bot, telegram, model, postgres_database, spoken):
    undecodable, empty = (f'persona_bot_voice_messages_total{{outcome="{o}"}}' for o in ("undecodable", "empty"))
    async with running_bot() as service:
        before = [await value(service, series) for series in (undecodable, empty)]
        telegram.recording(b"OggS not really an ogg file" * 100, duration=3, chat_id=75)
        assert (await telegram.wait_sent(1))[0]["text"] == COULD_NOT_HEAR
        model.transcript = "  "
        telegram.recording(audio.encode(spoken), duration=2, chat_id=75)
        assert (await telegram.wait_sent(2, timeout=20))[1]["text"] == COULD_NOT_HEAR
        telegram.message("а текстом?", chat_id=75)  # text keeps working
        assert (await telegram.wait_sent(3))[2]["text"] == "[devops-dude] re: а текстом?"
        after = [await value(service, series) for series in (undecodable, empty)]
    assert [b - a for a, b in zip(before, after)] == [1, 1]
    assert [turn.text for turn in model.requests[-1][1].context] == []  # nothing stored as the user's text
    assert [tuple(row) for row in await replies(postgres_database)] == [("а текстом?", False)]


async def test_asr_down_or_slow_gets_the_speech_apology(running_bot, telegram, model, spoken):
    async with running_bot(ASR_TIMEOUT="0.5") as service:
        before = await value(service, ASR_DOWN)
        model.asr_failing = True
        telegram.recording(audio.encode(spoken), duration=2, chat_id=76)
        assert (await telegram.wait_sent(1, timeout=20))[0]["text"] == SPEECH_UNAVAILABLE
        model.asr_failing, model.asr_delay = False, 2.0
        telegram.recording(audio.encode(spoken), duration=2, chat_id=76)
        assert (await telegram.wait_sent(2, timeout=20))[1]["text"] == SPEECH_UNAVAILABLE
        telegram.message("ты тут?", chat_id=76)
        assert (await telegram.wait_sent(3))[2]["text"] == "[devops-dude] re: ты тут?"
        assert await value(service, ASR_DOWN) - before == 2
    assert not [request for request in model.requests if request[1].message == SENTENCE]


@pytest.mark.parametrize(("fault", "outcome", "says"), [
    ("lost", "file_not_found", "can't find that recording"),  # getFile: 404 Not Found
    ("unknown", "invalid_file_id", "wouldn't give me that recording"),  # getFile: 400 invalid file_id
    ("expired", "download_not_found", "expired before I could fetch it"),  # the download: 404
])
async def test_a_recording_telegram_does_not_hand_over_gets_its_own_reply(running_bot, telegram, model, spoken,
                                                                         fault, outcome, says):
    series, errors = f'persona_bot_voice_messages_total{{outcome="{outcome}"}}', 'persona_bot_updates_total{outcome="error"}'
    async with running_bot() as service:
        before = [await value(service, name) for name in (series, errors)]
        file_id = telegram.recording(audio.encode(spoken), duration=2, chat_id=77)["message"]["voice"]["file_id"]
        if fault == "lost":
            telegram.missing_files.add(file_id)
        elif fault == "unknown":
            del telegram.files[file_id]
        else:
            telegram.expired_paths.add(telegram.files[file_id][0])
        assert says in (await telegram.wait_sent(1, timeout=20))[0]["text"]
        telegram.message("а текстом?", chat_id=77)  # the chat keeps working
        assert (await telegram.wait_sent(2))[1]["text"] == "[devops-dude] re: а текстом?"
        after = [await value(service, name) for name in (series, errors)]
    assert [b - a for a, b in zip(before, after)] == [1, 0]  # answered, and no update failed
    assert not model.asr_seconds


async def test_no_speech_model_served_gets_the_speech_apology(running_bot, telegram, model, spoken):
    """TorchServe's 404 for a model it does not serve is not the user's audio: no "say it again"."""
    series = 'persona_bot_voice_messages_total{outcome="asr_not_served"}'
    async with running_bot() as service:
        before = await value(service, series)
        model.asr_served = False
        telegram.recording(audio.encode(spoken), duration=2, chat_id=78)
        assert (await telegram.wait_sent(1, timeout=20))[0]["text"] == SPEECH_UNAVAILABLE
        assert await value(service, series) - before == 1


async def test_groups_hear_replies_to_the_bot_and_insanity_mode(running_bot, telegram, model, spoken):
    voice = audio.encode(spoken)
    async with running_bot():
        telegram.recording(voice, duration=2, chat_id=-77, user_id=7, chat_type="group")
        telegram.message("hey", chat_id=-77, user_id=7, chat_type="group", mention=True)
        first = (await telegram.wait_sent(1))[0]
        assert first["text"] == "[devops-dude] re: hey"  # the unaddressed recording was ignored
        telegram.recording(voice, duration=2, chat_id=-77, user_id=7, chat_type="group", reply_to=first)
        assert (await telegram.wait_sent(2, timeout=20))[1]["text"] == f"[devops-dude] re: {SENTENCE}"
        telegram.message("/insanity on", chat_id=-77, user_id=7, chat_type="group")
        telegram.admins[-77] = {7}
        await telegram.wait_sent(3)
        telegram.recording(voice, duration=2, chat_id=-77, user_id=7, chat_type="group")
        assert (await telegram.wait_sent(4, timeout=20))[3]["text"] == f"[devops-dude] re: {SENTENCE}"
    assert len(model.asr_seconds) == 2


async def test_voice_off_leaves_recordings_unanswered(running_bot, telegram, model, spoken):
    async with running_bot(VOICE="false"):
        telegram.recording(audio.encode(spoken), duration=2, chat_id=78)
        telegram.message("text", chat_id=78)
        assert [m["text"] for m in await telegram.wait_sent(1)] == ["[devops-dude] re: text"]
        await asyncio.sleep(0.3)
    assert len(telegram.sent) == 1 and not telegram.downloads
