"""The TorchServe handler: a persona's LoRA-adapted T5, batched.

BaseHandler's four steps, each visible: `initialize` loads base + adapter once per worker,
`preprocess` turns every request of the batch into a prompt or an error value, `inference` pads
and generates the valid prompts together (one `generate` per distinct set of generation options),
`postprocess` gives each request its own JSON body, status and content type. Nothing a client
sends can raise out of `handle`: one bad request never fails the batch or kills the worker.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
from ts.metrics.metric_type_enum import MetricTypes
from ts.torch_handler.base_handler import BaseHandler

from persona_serving.config import ADAPTER_DIR, BASE_DIR, SERVING_FILE, ServingConfig
from persona_serving.metrics import BATCH_SIZE, ERRORS, FACTS_PER_PROMPT, GENERATION_SECONDS, RETRIEVAL_SECONDS, \
    TOKENS_GENERATED, MetricSpec
from persona_serving.requests import Prepared, Rejected, option_groups, prepare
from personafleet import knowledge
from personafleet.inference import InferenceResponse
from personafleet.persona import PERSONA_FILE, PersonaSpec

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
Outcome = InferenceResponse | Rejected


def pick_device(gpu_id: int | None) -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 (fp16 where bf16 is missing) when TorchServe gave us a GPU, else CPU fp32."""
    if gpu_id is not None and torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.device(f"cuda:{gpu_id}"), dtype
    return torch.device("cpu"), torch.float32


class PersonaHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        """Load the base model through `from_pretrained`, apply the adapter, merge it by default."""
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.config = ServingConfig.model_validate_json((model_dir / SERVING_FILE).read_text(encoding="utf-8"))
        self.persona = PersonaSpec.model_validate_json((model_dir / PERSONA_FILE).read_text(encoding="utf-8"))
        self.knowledge = knowledge.load(model_dir)  # the facts this version was trained with, or None
        self.model_name = context.model_name
        self.version = str(context.manifest.get("model", {}).get("modelVersion") or self.config.version)
        self.device, dtype = pick_device(properties.get("gpu_id"))

        base = str(model_dir / BASE_DIR) if self.config.bundled_base else self.config.base
        adapter = model_dir / ADAPTER_DIR
        tokenizer_source = adapter if (adapter / "tokenizer_config.json").exists() else base
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
        # Prompts end with the newest turn and the answer marker: cut overlong ones at the start.
        self.tokenizer.truncation_side = "left"
        model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base, dtype=dtype), adapter)
        self.model = (model.merge_and_unload() if self.config.merge_adapter else model).to(self.device).eval()
        self.initialized = True
        logger.info(
            "Persona %s v%s ready on %s (%s, base %s, adapter %s)",
            self.persona.name, self.version, self.device, dtype,
            "bundled" if self.config.bundled_base else base, "merged" if self.config.merge_adapter else "unmerged",
        )

    # Every request is a prediction. BaseHandler would send the whole batch down the explain or
    # describe path when only its FIRST request asks for it, failing everyone else's request.
    def _is_explain(self) -> bool:
        return False

    def _is_describe(self) -> bool:
        return False

    def preprocess(self, data: list[Any]) -> list[Prepared | Rejected]:
        self._observe(BATCH_SIZE, len(data))
        prepared = [prepare(item, self.persona, self.config.limits, self.knowledge) for item in data]
        if self.knowledge is not None:
            for item in prepared:
                if isinstance(item, Prepared):
                    self._observe(RETRIEVAL_SECONDS, item.retrieval_seconds)
                    self._observe(FACTS_PER_PROMPT, item.facts)
        return prepared

    def inference(self, data: list[Prepared | Rejected], *args: Any, **kwargs: Any) -> list[Outcome]:
        """Errors pass through; each group of valid requests with equal options is one `generate`."""
        outcomes: list[Any] = list(data)
        for indices in option_groups(data).values():
            group: list[Prepared] = [data[i] for i in indices]  # type: ignore[misc]
            try:
                replies: list[Outcome] = list(self._generate([item.prompt for item in group], group[0].options))
            except Exception as exc:  # noqa: BLE001 - e.g. CUDA out of memory: fail this group, keep the worker
                logger.exception("generate() failed for %d requests", len(indices))
                replies = [Rejected(503, "generation_failed", f"{exc.__class__.__name__}: {exc}")] * len(indices)
            for index, reply in zip(indices, replies):
                outcomes[index] = reply
        return outcomes

    def _generate(self, prompts: list[str], options: dict[str, Any]) -> list[InferenceResponse]:
        """One padded `generate` for prompts that share generation options."""
        started = time.perf_counter()
        encoded = self.tokenizer(
            prompts, return_tensors="pt", padding=True, truncation=True, max_length=self.config.max_input_tokens
        ).to(self.device)
        with torch.inference_mode():
            output = self.model.generate(**encoded, **options, pad_token_id=self.tokenizer.pad_token_id)
        elapsed = time.perf_counter() - started
        sequences = output[:, 1:]  # drop the decoder start token
        counts = (sequences != self.tokenizer.pad_token_id).sum(dim=1).tolist()
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        for _ in prompts:
            self._observe(GENERATION_SECONDS, elapsed)
        self._observe(TOKENS_GENERATED, sum(counts))
        return [
            InferenceResponse(reply=text.strip(), model_version=self.version, tokens=count)
            for text, count in zip(texts, counts)
        ]

    def postprocess(self, data: list[Outcome]) -> list[str]:
        """One JSON string per request (ensure_ascii off: Cyrillic stays readable), with its status."""
        bodies = []
        for index, outcome in enumerate(data):
            self.context.set_response_content_type(index, JSON_CONTENT_TYPE)
            if isinstance(outcome, Rejected):
                self.context.set_response_status(outcome.status, outcome.error, index)
                self._observe(ERRORS, 1, outcome.error)
                bodies.append(outcome.body())
            else:
                bodies.append(json.dumps(outcome.model_dump(), ensure_ascii=False))
        return bodies

    def _observe(self, spec: MetricSpec, value: float, *extra_dimensions: str) -> None:
        """Record a custom metric; a metrics problem is logged, never allowed to fail requests."""
        try:
            metric = self.context.metrics.get_metric(spec.name, MetricTypes(spec.type))
            metric.add_or_update(value, [self.model_name, self.version, *extra_dimensions])
        except Exception as exc:  # noqa: BLE001
            logger.warning("Cannot record metric %s: %s", spec.name, exc)
