"""The ASR client: how the bot asks the served speech model for a transcript.

`POST /predictions/asr` with the audio as the body: raw 16 kHz mono 16-bit PCM
(`application/x-pcm-s16le`; the bot decodes Telegram's files itself) or any encoded file
(`application/octet-stream`); `X-ASR-Language` overrides the archive's language. Answer:
`{"text": ..., "seconds": ...}`. Same token handling as the inference client (`AuthorizedClient`),
same errors (`InferenceRejected` for 4xx, `InferenceUnavailable` otherwise). Connection failures
are retried; a timeout is not (the server is still transcribing: a retry would double the load).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel

from personafleet.audio import Audio
from personafleet.client import PredictionClient

ASR_MODEL = "asr"
PCM_S16LE = "application/x-pcm-s16le"


class Transcript(BaseModel):
    text: str
    seconds: float


def pcm16(clip: Audio) -> bytes:
    """16 kHz mono samples as little-endian 16-bit PCM: half the bytes of float32, same speech."""
    return (np.clip(clip.samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


class AsrClient(PredictionClient):
    """Async client for `POST /predictions/asr` (module docstring: the contract)."""

    def __init__(self, base_url: str, *, token: str | None = None, token_file: str | Path | None = None, timeout: float = 30.0,
                 retries: int = 1, backoff: float = 0.5, model: str = ASR_MODEL):
        super().__init__(base_url, token=token, token_file=token_file, timeout=timeout, retries=retries, backoff=backoff)
        self.path = f"/predictions/{model}"

    async def transcribe(self, clip: Audio, language: str | None = None) -> Transcript:
        """The transcript of 16 kHz mono audio; raises `InferenceRejected` or `InferenceUnavailable`."""
        headers = {"Content-Type": PCM_S16LE} | ({"X-ASR-Language": language} if language else {})
        return await self._predict(self.path, Transcript, content=pcm16(clip), headers=headers)
