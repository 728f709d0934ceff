"""The ASR TorchServe handler: audio in, `{"text", "seconds"}` out, batched.

BaseHandler's four steps, thin over `persona_serving.asr`: `initialize` loads the checkpoint once
per worker (bf16 on CUDA), `preprocess` decodes each request or refuses it, `inference`
transcribes the valid ones together, `postprocess` gives each request its own body and status.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ts.torch_handler.base_handler import BaseHandler

from persona_serving.asr import ASR_CONFIG_FILE, ASR_MODEL_DIR, AsrConfig, Clip, Transcriber, Transcript, prepare_clip
from persona_serving.handler import JSON_CONTENT_TYPE, pick_device
from persona_serving.metrics import ASR_AUDIO_SECONDS, ASR_ERRORS, ASR_SECONDS, BATCH_SIZE, MetricSpec, observe
from persona_serving.requests import Rejected

logger = logging.getLogger(__name__)


class AsrHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.config = AsrConfig.model_validate_json((model_dir / ASR_CONFIG_FILE).read_text(encoding="utf-8"))
        self.model_name = context.model_name
        self.version = str(context.manifest.get("model", {}).get("modelVersion") or self.config.version)
        device, dtype = pick_device(properties.get("gpu_id"))
        source = str(model_dir / ASR_MODEL_DIR) if self.config.bundled else self.config.model
        self.transcriber = Transcriber(source, device, dtype, self.config.max_new_tokens)
        self.initialized = True
        logger.info("ASR %s v%s ready on %s (%s, %s, language %s)", self.model_name, self.version, device, dtype,
                    source, self.config.language or "detected")

    # Every request is a transcription (see PersonaHandler: BaseHandler would route the whole
    # batch by its first request).
    def _is_explain(self) -> bool:
        return False

    def _is_describe(self) -> bool:
        return False

    def preprocess(self, data: list[Any]) -> list[Clip | Rejected]:
        self._observe(BATCH_SIZE, len(data))
        return [prepare_clip(item, self.context.get_all_request_header(index) or {}, self.config)
                for index, item in enumerate(data)]

    def inference(self, data: list[Clip | Rejected], *args: Any, **kwargs: Any) -> list[Transcript | Rejected]:
        valid = [index for index, item in enumerate(data) if isinstance(item, Clip)]
        outcomes: list[Any] = list(data)
        if not valid:
            return outcomes
        clips: list[Clip] = [data[index] for index in valid]  # type: ignore[misc]
        started = time.perf_counter()
        try:
            texts: list[Any] = self.transcriber.transcribe(clips)
        except Exception as exc:  # noqa: BLE001 - e.g. CUDA out of memory: fail this batch's requests, keep the worker
            logger.exception("transcription failed for %d requests", len(clips))
            texts = [Rejected(503, "transcription_failed", f"{exc.__class__.__name__}: {exc}")] * len(clips)
        elapsed = time.perf_counter() - started
        for index, clip, text in zip(valid, clips, texts):
            if isinstance(text, Rejected):
                outcomes[index] = text
                continue
            outcomes[index] = Transcript(text, clip.audio.seconds)
            self._observe(ASR_SECONDS, elapsed)
            self._observe(ASR_AUDIO_SECONDS, clip.audio.seconds)
        return outcomes

    def postprocess(self, data: list[Transcript | Rejected]) -> list[str]:
        bodies = []
        for index, outcome in enumerate(data):
            self.context.set_response_content_type(index, JSON_CONTENT_TYPE)
            if isinstance(outcome, Rejected):
                self.context.set_response_status(outcome.status, outcome.error, index)
                self._observe(ASR_ERRORS, 1, outcome.error)
            bodies.append(outcome.body())
        return bodies

    def _observe(self, spec: MetricSpec, value: float, *extra: str) -> None:
        observe(self.context, spec, value, [self.model_name, self.version, *extra])
