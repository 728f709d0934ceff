"""Speech recognition for the ASR TorchServe model: request rules and the model, without TorchServe.

A request's body is audio: an encoded file (OGG/Opus, MP3, M4A, WAV, ... decoded by PyAV) or raw
16 kHz mono samples when its Content-Type says so (`application/x-pcm-f32le` or
`application/x-pcm-s16le`). The answer is `{"text": ..., "seconds": ...}`. Every rule about bad
input gives a `Rejected` value for that request alone, as for the persona model.

The model is any Hugging Face speech-to-text checkpoint loadable through `AutoProcessor` +
`AutoModelForSpeechSeq2Seq` (the Whisper family). Audio longer than the feature extractor's window
(30 s for Whisper, 5 s for the tiny one) is cut into windows; all windows of a batch go through one
`generate`, with the language forced (Whisper otherwise guesses it per window).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from persona_serving.requests import Rejected
from personafleet import audio
from personafleet.whisper import transcribe_windows

logger = logging.getLogger(__name__)

ASR_MODEL_NAME = "asr"  # the TorchServe model name: POST /predictions/asr
ASR_CONFIG_FILE = "asr.json"
ASR_MODEL_DIR = "model"
RAW_CONTENT_TYPES = {"application/x-pcm-f32le": "float32", "application/x-pcm-s16le": "int16"}
LANGUAGE_HEADER = "x-asr-language"
# A window quieter than this (RMS of samples in [-1, 1], about -54 dBFS) holds no speech: it is
# not sent to the model, which would otherwise hallucinate words into silence.
SILENCE_RMS = 2e-3


class AsrConfig(BaseModel):
    """What an ASR archive tells its handler (`asr.json`); `persona package-asr` writes it."""

    model_config = ConfigDict(extra="forbid")

    name: str = "asr"
    version: str = "1"
    model: str = Field(description="hub id or path of the checkpoint; ignored when bundled")
    bundled: bool = Field(False, description="the checkpoint travels inside the .mar under model/")
    language: str | None = Field("ru", description="forced language (Whisper code); None lets the model detect it")
    max_seconds: float = Field(120.0, gt=0, description="longer audio is refused (413)")
    # TorchServe itself refuses bodies over its max_request_size (6553500 bytes by default) first.
    max_bytes: int = Field(6_553_500, gt=0, description="larger bodies are refused (413)")
    max_new_tokens: int = Field(224, ge=1, description="tokens per window")


@dataclass(frozen=True)
class Clip:
    """A valid request: its audio and the language to transcribe it in."""

    audio: audio.Audio
    language: str | None


@dataclass(frozen=True)
class Transcript:
    text: str
    seconds: float

    def body(self) -> str:
        return json.dumps({"text": self.text, "seconds": round(self.seconds, 3)}, ensure_ascii=False)


def asr_archive_path(store: Path) -> Path:
    """`STORE/asr/asr.mar`: where `persona package-asr` puts the archive and `persona serve` finds it."""
    return store / ASR_MODEL_NAME / f"{ASR_MODEL_NAME}.mar"


def header(headers: dict[str, Any], name: str) -> str | None:
    """A request header, whatever the case of its name."""
    for key, value in headers.items():
        if key.lower() == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def prepare_clip(item: Any, headers: dict[str, Any], config: AsrConfig) -> Clip | Rejected:
    """One raw TorchServe request -> audio to transcribe, or the reason it is refused."""
    body = item.get("body", item.get("data")) if isinstance(item, dict) else item
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not isinstance(body, (bytes, bytearray)) or not body:
        return Rejected(400, "invalid_audio", "the body must be audio bytes (an encoded file or raw 16 kHz samples)")
    if len(body) > config.max_bytes:
        return Rejected(413, "too_large", f"{len(body)} bytes; the limit is {config.max_bytes}")
    content_type = (header(headers, "content-type") or "").split(";")[0].strip().lower()
    try:
        if content_type in RAW_CONTENT_TYPES:
            clip = audio.from_pcm(bytes(body), RAW_CONTENT_TYPES[content_type])
        else:
            clip = audio.decode(bytes(body), max_seconds=config.max_seconds)
    except audio.AudioError as exc:
        return Rejected(400, "invalid_audio", str(exc))
    if clip.seconds > config.max_seconds:
        return Rejected(413, "too_long", f"more than {config.max_seconds:g} s of audio")
    language = header(headers, LANGUAGE_HEADER) or config.language
    if language is not None and not language.isalpha():
        return Rejected(400, "invalid_language", f"{language!r} is not a language code such as ru")
    return Clip(clip, language.lower() if language else None)


def windows(clip: audio.Audio, size: int) -> list[np.ndarray]:
    """The clip cut into consecutive windows of `size` samples (the last one shorter)."""
    return [clip.samples[start:start + size] for start in range(0, max(1, len(clip.samples)), size)]


def is_silent(samples: np.ndarray) -> bool:
    return samples.size == 0 or float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) < SILENCE_RMS


class Transcriber:
    """A speech-to-text checkpoint on one device, transcribing batches of clips."""

    def __init__(self, source: str, device: Any, dtype: Any, max_new_tokens: int) -> None:
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(source)
        self.model = AutoModelForSpeechSeq2Seq.from_pretrained(source, dtype=dtype).to(device).eval()
        self.device, self.dtype = device, dtype
        extractor = self.processor.feature_extractor
        self.window = int(extractor.chunk_length * extractor.sampling_rate)
        # The decoder's positions bound the tokens per window (the prompt takes four).
        self.max_new_tokens = min(max_new_tokens, self.model.config.max_target_positions - 4)

    def transcribe(self, clips: list[Clip]) -> list[str]:
        """One text per clip; one `generate` per language over every window with sound."""
        pieces: dict[int, list[str]] = defaultdict(list)
        by_language: dict[str | None, list[tuple[int, int, np.ndarray]]] = defaultdict(list)
        for owner, clip in enumerate(clips):
            for order, samples in enumerate(windows(clip.audio, self.window)):
                if not is_silent(samples):
                    by_language[clip.language].append((owner, order, samples))
        for language, group in by_language.items():
            texts = self._generate([samples for _, _, samples in group], language)
            for (owner, order, _), text in sorted(zip(group, texts), key=lambda pair: pair[0][:2]):
                pieces[owner].append(text)
        return [" ".join(" ".join(pieces[owner]).split()) for owner in range(len(clips))]

    def _generate(self, samples: list[np.ndarray], language: str | None) -> list[str]:
        return transcribe_windows(self.model, self.processor, samples, language=language, max_tokens=self.max_new_tokens,
                                  device=self.device, dtype=self.dtype)
