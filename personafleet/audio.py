"""Audio in, 16 kHz mono float32 out: what every speech model of the Whisper family listens to.

Decoding uses PyAV (FFmpeg's libraries, shipped inside its wheels: no system ffmpeg), so
Telegram's voice notes (Opus in OGG), audio files (MP3, M4A, ...) and video notes (MP4 with AAC)
decode alike. Shared by the bot (which measures and checks the audio before sending it), the
ASR handler (which accepts encoded files as well as raw samples) and `persona init-asr`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000


class AudioError(ValueError):
    """The bytes are not audio this module can decode (or contain no sound at all)."""


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # float32, mono, SAMPLE_RATE Hz, in [-1, 1]

    @property
    def seconds(self) -> float:
        return len(self.samples) / SAMPLE_RATE


def decode(data: bytes, *, max_seconds: float | None = None) -> Audio:
    """Decode an encoded file's first audio stream to 16 kHz mono float32.

    Stops reading past `max_seconds` (plus a little) so a huge file costs no more than the limit;
    the caller compares `seconds` with its limit to refuse it."""
    import av  # imported here: the bot's text-only paths never pay for FFmpeg's libraries

    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise AudioError("no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            chunks: list[np.ndarray] = []
            total = 0
            cap = None if max_seconds is None else int((max_seconds + 1) * SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    total += chunks[-1].size
                if cap is not None and total > cap:
                    break
            else:
                for out in resampler.resample(None):  # flush what the resampler holds back
                    chunks.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except (av.FFmpegError, ValueError, IndexError, EOFError) as exc:
        raise AudioError(f"undecodable audio: {exc.__class__.__name__}: {str(exc)[:200]}") from None
    if not chunks:
        raise AudioError("no audio samples")
    return Audio(np.concatenate(chunks).astype(np.float32, copy=False))


def from_pcm(data: bytes, dtype: str) -> Audio:
    """Raw 16 kHz mono samples: `float32` (little-endian, [-1, 1]) or `int16` (PCM)."""
    if dtype not in ("float32", "int16"):
        raise AudioError(f"raw audio must be float32 or int16, not {dtype}")
    width = np.dtype(dtype).itemsize
    if not data or len(data) % width:
        raise AudioError(f"raw {dtype} audio must be a non-empty multiple of {width} bytes")
    samples = np.frombuffer(data, dtype=f"<{'f4' if dtype == 'float32' else 'i2'}")
    if dtype == "int16":
        samples = samples.astype(np.float32) / 32768.0
    if not np.all(np.isfinite(samples)):
        raise AudioError("raw float32 audio contains NaN or infinity")
    return Audio(np.clip(samples, -1.0, 1.0).astype(np.float32))


def encode(clip: Audio, *, container: str = "ogg", codec: str = "libopus", rate: int = 48_000,
           bitrate: int = 32_000) -> bytes:
    """Encode mono audio; the defaults are how Telegram sends voice messages: Opus in OGG, 48 kHz."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as output:
        stream = output.add_stream(codec, rate=rate, layout="mono")
        stream.bit_rate = bitrate
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(
            (np.clip(clip.samples, -1, 1) * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = SAMPLE_RATE
        for resampled in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(resampled):
                output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return buffer.getvalue()
