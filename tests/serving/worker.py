"""A fleet handler driven as TorchServe's continuous batching drives it, without TorchServe: each
call carries every request still streaming (by id, without its body) plus new ones, and each
answer's stream decision is read exactly as TorchServe reads it (`stopping_criteria`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

from persona_serving.config import SERVING_FILE, FleetConfig
from persona_serving.fleet import FleetModel
from persona_serving.handler import FleetHandler
from persona_serving.metrics import write_metrics_config
from persona_serving.requests import Routed, prepare
from personafleet.inference import (
    GenerationLimits, InferenceError, InferenceRequest, InferenceResponse, StreamPreview, parse_event,
)


@dataclass
class Answer:
    body: str
    go_on: bool | None  # None: a plain response (no stream header); True: more follows; False: the last chunk
    status: int


class Worker:
    """One handler and the request ids TorchServe would still send it."""

    def __init__(self, handler: FleetHandler, context: Context):
        self.handler, self.context = handler, context
        self.streaming: set[str] = set()

    def step(self, new: dict[str, dict] | None = None, drop: set[str] = frozenset()) -> dict[str, Answer]:
        """One handler call: continuing requests (bodies already sent) first, then new ones."""
        self.streaming -= drop
        ids = sorted(self.streaming) + list(new or {})
        data = [{} for _ in self.streaming] + [{"body": body} for body in (new or {}).values()]
        self.context.request_ids = dict(enumerate(ids))
        self.context.request_processor = [RequestProcessor({}) for _ in ids]
        self.context.stopping_criteria = None
        bodies = self.handler.handle(data, self.context)
        answers = {}
        for index, (request_id, body) in enumerate(zip(ids, bodies)):
            decision = self.context.stopping_criteria[index](body)
            go_on = None if decision is None else not decision
            answers[request_id] = Answer(body, go_on, self.context.get_response_status(index)[0] or 200)
            if go_on:
                self.streaming.add(request_id)
            else:
                self.streaming.discard(request_id)
        return answers

    def run(self, joining: list[dict[str, dict]], answers: dict[str, list[Answer]] | None = None,
            *, finish: bool = True) -> dict[str, list[Answer]]:
        """Step i brings the requests `joining[i]`; then (`finish`) steps until every stream ended."""
        answers = {} if answers is None else answers
        for new in joining:
            for request_id, answer in self.step(new).items():
                answers.setdefault(request_id, []).append(answer)
        return self.until_done(answers) if finish else answers

    def until_done(self, answers: dict[str, list[Answer]]) -> dict[str, list[Answer]]:
        while self.streaming:
            for request_id, answer in self.step().items():
                answers.setdefault(request_id, []).append(answer)
        return answers


MAX_INPUT_TOKENS = 64


def start_worker(workdir: Path, base: Path, store: Path, *, max_new_tokens: int, model_version: str = "1",
                 **settings) -> Worker:
    """A handler on `store`'s versions of `base`, as a TorchServe worker with batchSize 4 initializes it
    (`settings`: FleetConfig fields)."""
    defaults = dict(max_resident_adapters=2, max_input_tokens=MAX_INPUT_TOKENS, max_cached_tokens=4096)
    config = FleetConfig(base=str(base), model_store=str(store), limits=GenerationLimits(max_new_tokens=max_new_tokens),
                         **(defaults | settings))
    (workdir / SERVING_FILE).write_text(config.model_dump_json(), encoding="utf-8")
    metrics = MetricsCacheYamlImpl(str(write_metrics_config(workdir / "metrics.yaml")))
    metrics.initialize_cache()
    context = Context("fleet", str(workdir), {"model": {"modelVersion": model_version}}, 4, None, "0.12.0",
                      metrics=metrics)
    handler = FleetHandler()
    handler.initialize(context)
    return Worker(handler, context)


def final(answers: list[Answer]) -> InferenceResponse | InferenceError:
    event = parse_event(answers[-1].body)
    assert not isinstance(event, StreamPreview)
    return event


def whole_reply_path(base: Path, store: Path, *, max_new_tokens: int) -> Callable[[dict], str]:
    """The whole-reply path (`FleetModel.generate`, what served before streaming): the reply to one
    request body, from its persona's v1."""
    fleet = FleetModel(str(base), torch.device("cpu"), torch.float32, MAX_INPUT_TOKENS)
    entries = {}

    def reply(body: dict) -> str:
        key = (body["persona"], 1)
        if key not in entries:
            entries[key] = fleet.load(store, *key)
        prepared = prepare(Routed(InferenceRequest.model_validate(body), *key), entries[key],
                           GenerationLimits(max_new_tokens=max_new_tokens), fleet.chat)
        texts, _ = fleet.generate([prepared.prompt], [entries[key].adapter_name], prepared.options)
        return texts[0]

    return reply
