"""`persona transcribe`: what the served ASR model hears in an audio file, through the bot's client.

The file is decoded here (PyAV: WAV, OGG/Opus, MP3, M4A, ...) to 16 kHz mono, as the bot decodes a
voice message, and sent to `POST /predictions/asr`; the transcript is printed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from persona_serving.chat import local_endpoint
from persona_serving.server import DEFAULT_WORKDIR
from personafleet import audio
from personafleet.asr_client import AsrClient
from personafleet.client import InferenceRejected, InferenceUnavailable
from personafleet.errors import PersonaError


def transcribe_file(
    path: Path, *, url: str | None = None, token_file: Path | None = None, workdir: Path = DEFAULT_WORKDIR,
    language: str | None = None, timeout: float = 60,
) -> str:
    """The transcript of `path`; any problem is a `PersonaError` worded for the user."""
    if url is None:
        url, token_file = local_endpoint(workdir)
        if url is None:
            raise PersonaError(f"no `persona serve` running from {workdir}; pass --url")
    try:
        clip = audio.decode(path.read_bytes())
    except audio.AudioError as exc:
        raise PersonaError(f"{path}: {exc}") from None

    async def run() -> str:
        async with AsrClient(url, token_file=token_file, timeout=timeout) as client:
            return (await client.transcribe(clip, language)).text

    try:
        return asyncio.run(run())
    except (InferenceRejected, InferenceUnavailable) as exc:
        raise PersonaError(f"the ASR model did not answer: {exc}") from None
