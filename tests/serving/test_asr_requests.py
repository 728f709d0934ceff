"""Per-request rules of the ASR handler, without a server: each bad body is its own 4xx."""

from __future__ import annotations

import numpy as np
import pytest

from persona_serving.asr import AsrConfig, Clip, is_silent, prepare_clip, windows
from persona_serving.requests import Rejected
from personafleet import audio

CONFIG = AsrConfig(model="unused", max_seconds=10, max_bytes=1_000_000)
TONE = audio.Audio((0.3 * np.sin(np.arange(2 * audio.SAMPLE_RATE) * 2 * np.pi * 440 / audio.SAMPLE_RATE)).astype(np.float32))


def test_an_encoded_file_and_raw_samples_become_the_same_clip():
    encoded = prepare_clip({"body": bytearray(audio.encode(TONE))}, {}, CONFIG)
    raw = prepare_clip({"body": TONE.samples.tobytes()}, {"Content-Type": "application/x-pcm-f32le"}, CONFIG)
    pcm = prepare_clip({"body": (TONE.samples * 32767).astype("<i2").tobytes()},
                       {"content-type": "application/x-pcm-s16le; rate=16000"}, CONFIG)
    for clip in (encoded, raw, pcm):
        assert isinstance(clip, Clip) and clip.language == "ru"
        assert clip.audio.seconds == pytest.approx(2.0, abs=0.01)


def test_the_language_header_overrides_the_archive():
    clip = prepare_clip({"body": TONE.samples.tobytes()},
                        {"Content-Type": "application/x-pcm-f32le", "X-ASR-Language": "EN"}, CONFIG)
    assert isinstance(clip, Clip) and clip.language == "en"


@pytest.mark.parametrize("body, headers, status, error", [
    (b"", {}, 400, "invalid_audio"),
    ({"json": "object"}, {}, 400, "invalid_audio"),
    (b"RIFF\0\0\0\0WAVEjunk" * 10, {}, 400, "invalid_audio"),
    (b"\0\0\0", {"Content-Type": "application/x-pcm-f32le"}, 400, "invalid_audio"),
    (np.array([np.nan], dtype="<f4").tobytes(), {"Content-Type": "application/x-pcm-f32le"}, 400, "invalid_audio"),
    (b"\0" * 1_000_001, {}, 413, "too_large"),
    (np.zeros(11 * audio.SAMPLE_RATE, dtype="<i2").tobytes(), {"Content-Type": "application/x-pcm-s16le"}, 413, "too_long"),
    (np.zeros(10, dtype="<i2").tobytes(), {"Content-Type": "application/x-pcm-s16le", "X-ASR-Language": "r1"}, 400, "invalid_language"),
])
def test_bad_bodies_are_refused_alone(body, headers, status, error):
    refused = prepare_clip({"body": body}, headers, CONFIG)
    assert isinstance(refused, Rejected) and (refused.status, refused.error) == (status, error)


def test_long_audio_is_cut_into_windows_and_silence_is_detected():
    clip = audio.Audio(np.concatenate([TONE.samples, np.zeros(audio.SAMPLE_RATE, dtype=np.float32)]))
    pieces = windows(clip, 2 * audio.SAMPLE_RATE)
    assert [len(piece) for piece in pieces] == [32_000, 16_000]
    assert [is_silent(piece) for piece in pieces] == [False, True]


def test_a_serving_pod_leaves_out_a_speech_archive_it_cannot_serve(tmp_path):
    """`persona serve --foreground` (a pod) logs and loads no `asr`; `persona serve` by hand fails."""
    from persona_serving.server import ServeOptions, stage_asr
    from personafleet.errors import PersonaError

    store = tmp_path / "store"
    (store / "asr").mkdir(parents=True)
    (store / "asr" / "asr.mar").write_bytes(b"not an archive")
    options = ServeOptions(model_store=store, bases=["unused"], workdir=tmp_path / "serve")
    assert stage_asr(options, required=False) == []
    assert not (options.links / "asr.mar").exists()
    with pytest.raises(PersonaError, match="not a model archive"):
        stage_asr(options, required=True)
    assert stage_asr(options.model_copy(update={"model_store": tmp_path / "empty"}), required=True) == []