"""The ASR model on a real TorchServe: the tiny Whisper from `persona init-asr`, packaged by
`persona package-asr`, registered by `persona serve` from STORE/asr/asr.mar."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from persona_training.asr_model import synthesize
from personafleet import audio
from personafleet.asr_client import AsrClient
from personafleet.client import InferenceRejected, TokenSource
from tests.fixtures.asr import trained_sentences

pytestmark = pytest.mark.slow


async def post(server, body: bytes, content_type: str = "application/octet-stream", **headers: str) -> httpx.Response:
    auth = TokenSource(token_file=server.key_file).headers()
    async with httpx.AsyncClient(base_url=server.inference_url, timeout=60) as http:
        return await http.post("/predictions/asr", content=body, headers=auth | headers | {"Content-Type": content_type})


async def test_a_voice_message_comes_back_as_its_words(asr_torchserve, asr_model):
    sentence = trained_sentences(asr_model)[0]
    clip = synthesize(sentence)
    response = await post(asr_torchserve, audio.encode(clip))  # Opus in OGG, 48 kHz, like Telegram's
    assert response.status_code == 200, response.text
    assert response.json() == {"text": sentence, "seconds": pytest.approx(clip.seconds, abs=0.01)}


async def test_raw_samples_and_a_batch_with_bad_requests(asr_torchserve, asr_model):
    sentences = trained_sentences(asr_model)[1:4]
    clips = [synthesize(sentence) for sentence in sentences]
    async with AsrClient(asr_torchserve.inference_url, token_file=asr_torchserve.key_file, timeout=60) as client:
        # Sent together, they share a batch with requests that fail alone.
        results = await asyncio.gather(
            *(client.transcribe(clip, "ru") for clip in clips),
            post(asr_torchserve, clips[0].samples.astype("<f4").tobytes(), "application/x-pcm-f32le"),
            post(asr_torchserve, b"definitely not audio" * 50),
            post(asr_torchserve, b"\x01\x02\x03", "application/x-pcm-s16le"),
            post(asr_torchserve, audio.encode(clips[0]), **{"X-ASR-Language": "r1"}),
        )
    assert [result.text for result in results[:3]] == sentences
    raw, garbage, odd, language = results[3:]
    assert (raw.status_code, raw.json()["text"]) == (200, sentences[0])
    assert (garbage.status_code, garbage.json()["error"]) == (400, "invalid_audio")
    assert (odd.status_code, odd.json()["error"]) == (400, "invalid_audio")
    assert (language.status_code, language.json()["error"]) == (400, "invalid_language")


async def test_silence_has_no_words_and_long_audio_is_refused(asr_torchserve):
    silence = np.zeros(3 * audio.SAMPLE_RATE, dtype="<f4").tobytes()
    response = await post(asr_torchserve, silence, "application/x-pcm-f32le")
    assert response.json() == {"text": "", "seconds": 3.0}
    too_long = np.zeros(61 * audio.SAMPLE_RATE, dtype="<i2").tobytes()  # the archive's limit: 60 s
    response = await post(asr_torchserve, too_long, "application/x-pcm-s16le")
    assert (response.status_code, response.json()["error"]) == (413, "too_long")
    async with AsrClient(asr_torchserve.inference_url, token_file=asr_torchserve.key_file) as client:
        with pytest.raises(InferenceRejected) as refused:
            await client.transcribe(audio.Audio(np.zeros(0, dtype=np.float32)))
    assert refused.value.status == 400


async def test_asr_metrics_are_exported(asr_torchserve, asr_model):
    await post(asr_torchserve, audio.encode(synthesize(trained_sentences(asr_model)[0])))
    await post(asr_torchserve, b"junk")
    async with httpx.AsyncClient() as http:
        metrics = (await http.get(asr_torchserve.metrics_url)).text
    assert 'persona_asr_transcription_seconds_bucket{model_name="asr",model_version="1",le="+Inf",}' in metrics \
        or "persona_asr_transcription_seconds_bucket" in metrics
    assert "persona_asr_audio_seconds_count" in metrics
    assert 'reason="invalid_audio"' in metrics


def test_persona_transcribe_prints_what_the_model_hears(asr_torchserve, asr_model, tmp_path):
    """What `make demo` runs: a WAV file -> the served asr model -> the words on stdout."""
    import subprocess
    import sys

    sentence = trained_sentences(asr_model)[0]
    wav = tmp_path / "voice.wav"
    subprocess.run(["espeak-ng", "-v", "ru", "-w", str(wav), sentence], check=True, timeout=60)
    result = subprocess.run(
        [sys.executable, "-m", "persona_cli", "transcribe", str(wav), "--url", asr_torchserve.inference_url,
         "--token-file", str(asr_torchserve.key_file)], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (0, sentence + "\n"), result.stderr
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not really")
    result = subprocess.run([sys.executable, "-m", "persona_cli", "transcribe", str(broken), "--url",
                             asr_torchserve.inference_url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("persona: error: ") and result.stderr.count("\n") == 1
