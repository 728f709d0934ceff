"""The fleet handler: every persona on one base model per worker, adapters hot-loaded (contract 3),
replies decoded one step at a time and streamed (TorchServe's continuous batching).

TorchServe 0.12 with `continuousBatching: true` calls `handle` once per decoding step with every
request still streaming (resent by id, without its body) plus new ones, up to `batchSize`. A
response marked `ts_stream_next: true` goes to its client as one HTTP chunk and keeps the request
in the batch; the last one ends the stream. A request that is absent from a call was dropped by
TorchServe (its client went away): its row is retired at once.

BaseHandler's four steps, each visible: `initialize` loads the base once per worker,
`preprocess` tells continuing requests from new ones and turns every new one into a routed
request or an error value (the routing table is re-read here when its file changed),
`inference` submits new requests to the step scheduler (adapter in a slot, prompt built and
tokenized) and runs ONE step: a decoder step for the live rows, then the rows the scheduler
admits join (their first token), and the reply filter reads each row's text so far (a match
stops the row: its final event carries the fallback); `postprocess` gives each request this
step's event: a preview (the new text), nothing yet (a queued request: an empty chunk, which
TorchServe does not send), or the final event with the whole reply. Before every forward
pass the runner names the live rows' slots (`FleetModel.set_row_slots`); the base's model family
matters only to the runner (`runner_family`) and the prompt encoding (`FleetModel.encode`). The
logic lives in plain modules (requests, scheduler, runner, residency, routing_watch, reply_filter,
fleet and its slots); nothing a client sends can raise out of `handle`: one bad request never
fails the step or kills the worker.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ts.torch_handler.base_handler import BaseHandler

from persona_serving.config import BASE_DIR, SERVING_FILE, FleetConfig
from persona_serving.decoding import decode_replies, unseen
from persona_serving.fleet import AdapterUnavailable, FleetModel, pick_device
from persona_serving.metrics import (
    ADAPTER_EVICTIONS, ADAPTER_LOADS, ADAPTERS_PER_BATCH, BATCH_SIZE, CACHED_TOKENS, ERRORS, FACTS_PER_PROMPT,
    FILTERED_REPLIES, GENERATION_SECONDS, HOST_ADAPTERS, INTER_TOKEN_SECONDS, LIVE_ROWS, PERSONAS_PER_BATCH,
    QUEUED_REQUESTS, REQUESTS, RETIRED_ROWS, RETRIEVAL_SECONDS, SLOT_LOAD_SECONDS, SLOTS_IN_USE, TIME_TO_FIRST_TOKEN,
    TOKENS_GENERATED, MetricSpec, observe, persona_label, version_label,
)
from persona_serving.reply_filter import ReplyFilter, held_out_warning
from persona_serving.requests import Key, PersonaVersion, Prepared, Rejected, Routed, describe, parse, prepare, route
from persona_serving.residency import AdapterLRU
from persona_serving.routing_watch import RoutingWatch
from persona_serving.runner import Decoding, Row, StepRunner, runner_family
from persona_serving.scheduler import FinishReason, Limits, Sequence, StepScheduler
from persona_serving.streams import Continuing, Event, New, Stream, event_line
from personafleet.inference import STREAM_CONTENT_TYPE, InferenceError, InferenceResponse, PersonaAbout, StreamPreview
from personafleet.store import held_out_replies

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json; charset=utf-8"


class FleetHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        """Load the base once; adapters come from the model store when first asked for."""
        properties = context.system_properties
        model_dir = Path(properties["model_dir"])
        self.config = FleetConfig.model_validate_json((model_dir / SERVING_FILE).read_text(encoding="utf-8"))
        self.store = self.config.store()
        self.model_name = context.model_name
        self.version = str(context.manifest.get("model", {}).get("modelVersion") or "1")
        device, dtype = pick_device(properties.get("gpu_id"))
        base = str(model_dir / BASE_DIR) if self.config.bundled_base else self.config.base
        self.fleet = FleetModel(
            base, device, dtype, self.config.max_input_tokens, max_resident_adapters=self.config.max_resident_adapters,
            max_lora_rank=self.config.max_lora_rank, max_host_adapters=self.config.max_host_adapters,
            on_slot_load=self._slot_loaded,
        )
        self.adapters: AdapterLRU[Key, PersonaVersion] = AdapterLRU(
            self.config.max_resident_adapters, self._load_adapter, self._unload_adapter
        )
        self.routing = RoutingWatch(self.store)
        self.reply_filters: dict[Key, ReplyFilter] = {}  # per resident version: the fleet's rules + its persona's
        self._reported: set[tuple[Key, str]] = set()
        self._start_stepping(int(properties.get("batch_size") or 1))
        self._refresh_routing()
        self.initialized = True
        logger.info("Fleet worker ready on %s (%s, base %s, store %s, %d slots of rank <= %d, %d host adapters, %s kernel, "
                    "%d live rows, %d cached tokens)", device, dtype, base, self.store, self.config.max_resident_adapters,
                    self.config.max_lora_rank, self.config.max_host_adapters,
                    "grouped" if self.fleet.slots.rows.grouped else "gather", self.scheduler.limits.max_live_rows,
                    self.config.max_cached_tokens)

    def _start_stepping(self, max_live_rows: int) -> None:
        """The scheduler and the runner of this worker's live batch."""
        model = self.fleet.model
        eos = model.generation_config.eos_token_id  # what `generate` stops at (None: caps only)
        limits = Limits(max_live_rows, self.config.max_cached_tokens, self.config.max_resident_adapters)
        self.scheduler = StepScheduler(limits, [] if eos is None else eos if isinstance(eos, list) else [eos])
        # Rows carry their version's slot; before every forward pass the slot layers are told the rows'.
        family = runner_family(model, self.fleet.family, self.fleet.tokenizer.pad_token_id)
        self.runner = StepRunner(model, family, lambda slots: self.fleet.set_row_slots(list(slots)) or {})
        self.streams: dict[str, Stream] = {}
        self._last_step: float | None = None
        self._gauges: dict[str, float] = {}

    # Every request is a prediction. BaseHandler would send the whole batch down the explain or
    # describe path when only its FIRST request asks for it, failing everyone else's request.
    def _is_explain(self) -> bool:
        return False

    def _is_describe(self) -> bool:
        return False

    def preprocess(self, data: list[Any]) -> list[Continuing | New | Rejected]:
        ids = [self.context.get_request_id(i) for i in range(len(data))]
        self._drop_gone(set(ids))
        fresh = [i for i, request_id in enumerate(ids) if request_id not in self.streams]
        if fresh:
            self._refresh_routing()
        items: list[Continuing | New | Rejected] = []
        for request_id, item in zip(ids, data):
            if request_id in self.streams:
                items.append(Continuing(request_id))
                continue
            parsed = parse(item)
            routed = parsed if isinstance(parsed, Rejected) else route(parsed, self.routing.table)
            if isinstance(routed, Routed):
                self._observe(REQUESTS, 1, *self._persona_dimensions(routed.persona, routed.version))
            items.append(routed if isinstance(routed, Rejected) else New(request_id, routed))
        return items

    def inference(self, data: list[Continuing | New | Rejected], *args: Any, **kwargs: Any) -> list[Event | PersonaAbout | Rejected]:
        """New requests join the scheduler (or are refused alone); then one step for everyone."""
        refused = {i: self._submit(item) for i, item in enumerate(data) if isinstance(item, New)}  # or answered
        events = self._step()
        outcomes: list[Event | PersonaAbout | Rejected] = []
        for i, item in enumerate(data):
            if isinstance(item, Rejected) or refused.get(i) is not None:
                outcomes.append(item if isinstance(item, Rejected) else refused[i])  # type: ignore[arg-type]
            else:
                outcomes.append(events.get(item.request_id, Event("", done=False)))  # type: ignore[union-attr]
        return outcomes

    def postprocess(self, data: list[Event | PersonaAbout | Rejected]) -> list[str]:
        """One body per request with its status; `ts_stream_next` says whether its stream goes on.
        A request answered in full at once (refused, or done in one step) is a plain response."""
        bodies, more = [], []
        for index, outcome in enumerate(data):
            request_id = self.context.get_request_id(index)
            stream = self.streams.get(request_id)
            if isinstance(outcome, Rejected):
                self.context.set_response_content_type(index, JSON_CONTENT_TYPE)
                self.context.set_response_status(outcome.status, outcome.error, index)
                self._observe(ERRORS, 1, *self._persona_dimensions(outcome.persona, outcome.version), outcome.error)
                bodies.append(outcome.body())
                more.append(None)
                continue
            if isinstance(outcome, PersonaAbout):
                self.context.set_response_content_type(index, JSON_CONTENT_TYPE)
                bodies.append(outcome.model_dump_json())
                more.append(None)
                continue
            assert stream is not None
            self.context.set_response_content_type(index, STREAM_CONTENT_TYPE)
            if outcome.done and not stream.answered:  # not streamed after all: a plain answer, its status
                self.context.set_response_status(outcome.status, outcome.reason, index)
                more.append(None)
            else:
                more.append(not outcome.done)
            stream.answered = True
            if outcome.done:
                del self.streams[request_id]
            bodies.append(outcome.body)
        # TorchServe reads each row's stop decision from these (None: no stream header at all).
        self.context.stopping_criteria = [lambda _, go_on=go_on: None if go_on is None else not go_on for go_on in more]
        return bodies

    # --- the step ------------------------------------------------------------------------
    def _submit(self, item: New) -> PersonaAbout | Rejected | None:
        """Make the version's adapter resident, build and tokenize the prompt, queue the request;
        an `about` request is answered at once from the store (nothing to generate)."""
        routed = item.routed
        if routed.request.about:
            return describe(routed, self.store)
        entry = self._resident(routed.key)
        if isinstance(entry, Rejected):
            return entry
        prompt = self._prepare(routed, entry)
        input_ids = self.fleet.encode(prompt.prompt)
        self.streams[item.request_id] = Stream(item.request_id, entry, prompt, input_ids, self.reply_filters[routed.key])
        self.scheduler.submit(item.request_id, len(input_ids), prompt.options["max_new_tokens"], routed.key)
        return None

    def _step(self) -> dict[str, Event]:
        """One decoder step for the live rows, then the admitted rows' first tokens; retire who is done."""
        started = time.perf_counter()
        if self.runner.ids and self._last_step is not None:
            self._observe(INTER_TOKEN_SECONDS, started - self._last_step)
        tokens, failed = self._run(self.runner.step, list(self.scheduler.running))
        joining = self._join(self.scheduler.admit(), failed)
        first, failed_joining = self._run(lambda: self.runner.admit(joining), [row.id for row in joining])
        failed |= failed_joining
        for request_id in first:
            stream = self.streams[request_id]
            self._observe(TIME_TO_FIRST_TOKEN, time.perf_counter() - stream.arrived,
                          *self._persona_dimensions(stream.entry.persona, stream.entry.version))
        finished = self.scheduler.record(tokens | first)
        finished += [self.scheduler.cancel(request_id, FinishReason.ERROR) for request_id in failed]
        texts = self._texts_so_far(tokens | first)
        finished += self._stop_filtered(texts)
        self.runner.retire({sequence.id for sequence in finished if sequence is not None})
        self._last_step = time.perf_counter() if self.runner.ids else None
        events = self._previews(texts)
        for sequence in finished:
            if sequence is not None:
                events[sequence.id] = self._final(sequence, failed.get(sequence.id))
        self._observe_batch()
        return events

    def _run(self, forward: Any, rows: list[str]) -> tuple[dict[str, int], dict[str, Rejected]]:
        """A forward pass's tokens; if it raised (e.g. CUDA out of memory), its rows fail alone."""
        try:
            return forward(), {}
        except Exception as exc:  # noqa: BLE001 - the rows of this pass fail, the worker keeps serving
            logger.exception("A decoding step failed for %d rows", len(rows))
            detail = f"{exc.__class__.__name__}: {exc}"
            return {}, {request_id: Rejected(503, "generation_failed", detail) for request_id in rows}

    def _join(self, admitted: list[Sequence], failed: dict[str, Rejected]) -> list[Row]:
        """Rows for the admitted requests; one whose adapter was evicted meanwhile is loaded again."""
        rows = []
        for sequence in admitted:
            stream = self.streams[sequence.id]
            entry = self._resident((stream.entry.persona, stream.entry.version))
            if isinstance(entry, Rejected):
                failed[sequence.id] = entry
                continue
            rows.append(Row(sequence.id, stream.input_ids, Decoding.from_options(stream.prompt.options), self.fleet.slot(entry)))
        return rows

    def _texts_so_far(self, tokens: dict[str, int]) -> dict[str, str]:
        """The reply text so far of each row that got a token and goes on."""
        ids = [request_id for request_id in tokens if request_id in self.scheduler.running]
        return dict(zip(ids, decode_replies(self.fleet.tokenizer, [self.scheduler.running[i].generated for i in ids])))

    def _stop_filtered(self, texts: dict[str, str]) -> list[Sequence | None]:
        """Rows whose text so far breaks a reply filter rule stop now (contract 2): their final event
        carries the fallback, and nothing more of the text is shown."""
        stopped = []
        for request_id, text in texts.items():
            stream = self.streams[request_id]
            if stream.reply_filter and (rule := stream.reply_filter.check(text)) is not None:
                stream.rule = rule
                stopped.append(self.scheduler.cancel(request_id, FinishReason.FILTERED))
        return stopped

    def _previews(self, texts: dict[str, str]) -> dict[str, Event]:
        """One preview per new token of a row that goes on: the text it adds (empty while it is not
        visible text yet), so a client sees every step, its first token included."""
        events = {}
        for request_id, text in texts.items():
            if request_id not in self.scheduler.running:  # stopped by the reply filter
                continue
            stream, delta = self.streams[request_id], unseen(self.streams[request_id].shown, text)
            preview = StreamPreview(delta=delta, tokens=len(self.scheduler.running[request_id].generated),
                                    model_version=None if stream.shown else str(stream.entry.version))
            stream.shown += delta
            events[request_id] = Event(event_line(preview.model_dump(exclude_none=True)), done=False)
        return events

    def _final(self, sequence: Sequence, error: Rejected | None) -> Event:
        """The last event: the whole reply (authoritative; the fallback when a reply filter rule
        matched it, or its text so far), or the error that ended the row."""
        stream = self.streams[sequence.id]
        dimensions = self._persona_dimensions(stream.entry.persona, stream.entry.version)
        self._observe(RETIRED_ROWS, 1, sequence.finish_reason.value)  # type: ignore[union-attr]
        if error is not None:
            self._observe(ERRORS, 1, *dimensions, error.error)
            body = InferenceError(error=error.error, detail=error.detail, status=error.status)
            return Event(event_line(body.model_dump()), done=True, status=error.status, reason=error.error)
        tokens = [t for t in sequence.generated if t != self.fleet.tokenizer.pad_token_id]
        self._observe(TOKENS_GENERATED, len(tokens), *dimensions)
        self._observe(GENERATION_SECONDS, time.perf_counter() - stream.arrived, *dimensions)
        text = decode_replies(self.fleet.tokenizer, [sequence.generated])[0]
        finish_reason = sequence.finish_reason.value  # type: ignore[union-attr]
        if (rule := stream.rule or stream.reply_filter.check(text)) is not None:
            text, finish_reason = stream.reply_filter.fallback, FinishReason.FILTERED.value
            self._observe(FILTERED_REPLIES, 1, dimensions[0], rule)
            logger.info("Reply of %s v%d replaced by the fallback (rule %s)", stream.entry.persona, stream.entry.version, rule)
        reply = InferenceResponse(
            reply=text, persona=stream.entry.persona, model_version=str(stream.entry.version), tokens=len(tokens),
            finish_reason=finish_reason, facts=list(stream.prompt.facts) if stream.prompt.show_facts else None,
        )
        return Event(event_line(reply.model_dump(exclude_none=True)), done=True)  # facts only when asked for

    def _drop_gone(self, present: set[str]) -> None:
        """Requests TorchServe no longer sends lost their client: their rows leave at once."""
        gone = [request_id for request_id in self.streams if request_id not in present]
        for request_id in gone:
            self.scheduler.cancel(request_id)
            del self.streams[request_id]
            self._observe(RETIRED_ROWS, 1, FinishReason.CANCELLED.value)
        if gone:
            self.runner.retire(set(gone))
            logger.info("Retired %d row(s) whose client went away", len(gone))

    def _observe_batch(self) -> None:
        """The live batch's gauges, recorded when they change (each record is a log line)."""
        live = self.scheduler.running.values()
        if live:
            self._observe(BATCH_SIZE, len(live))
            self._observe(PERSONAS_PER_BATCH, len({sequence.adapter[0] for sequence in live}))  # type: ignore[index]
            self._observe(ADAPTERS_PER_BATCH, len({sequence.adapter for sequence in live}))
        for spec, value in ((LIVE_ROWS, len(live)), (QUEUED_REQUESTS, len(self.scheduler.waiting)),
                            (CACHED_TOKENS, self.runner.cached_tokens)):
            if self._gauges.get(spec.name) != value:
                self._gauges[spec.name] = value
                self._observe(spec, value)

    def _prepare(self, routed: Routed, entry: PersonaVersion) -> Prepared:
        """The request's prompt, with its version's facts; retrieval is measured where there are facts."""
        prepared = prepare(routed, entry, self.config.limits, self.fleet.chat)
        if entry.knowledge is not None:
            self._observe(RETRIEVAL_SECONDS, prepared.retrieval_seconds)
            self._observe(FACTS_PER_PROMPT, len(prepared.facts))
        return prepared

    # --- adapters and routing ------------------------------------------------------------
    def _resident(self, key: Key) -> PersonaVersion | Rejected:
        """The version's entry, its adapter put into a slot if needed; a 503 value when it cannot be."""
        try:
            entry, _ = self.adapters.get(key, busy=self.scheduler.live_adapters())
        except AdapterUnavailable as exc:
            if (key, str(exc)) not in self._reported:  # logged once per version and reason
                self._reported.add((key, str(exc)))
                logger.error("Cannot serve %s v%d: %s", key[0], key[1], exc)
            return Rejected(503, "adapter_unavailable", str(exc), *key)
        finally:
            self._observe(SLOTS_IN_USE, self.fleet.slots_in_use)
            host = self.fleet.slots.host  # 0 with the host tier off: a panel shows the tier is off, not "no data"
            self._observe(HOST_ADAPTERS, len(host) if host is not None else 0)
        return entry

    def _load_adapter(self, key: Key) -> PersonaVersion:
        entry = self.fleet.load(self.store, *key)
        self.reply_filters[key] = ReplyFilter(self.config.reply_filter, entry.spec.reply_filter)
        if warning := held_out_warning(self.reply_filters[key], held_out_replies(entry.folder), f"{key[0]} v{key[1]}"):
            logger.warning("%s", warning)
        logger.info("Loaded %s v%d into slot %d", key[0], key[1], self.fleet.slot(entry))
        return entry

    def _slot_loaded(self, tier: str, seconds: float) -> None:
        self._observe(SLOT_LOAD_SECONDS, seconds, tier)
        self._observe(ADAPTER_LOADS, 1)

    def _unload_adapter(self, key: Key, entry: PersonaVersion) -> None:
        self.fleet.unload(entry)
        self.reply_filters.pop(key, None)
        self._observe(ADAPTER_EVICTIONS, 1)
        logger.info("Evicted %s v%d", *key)

    def _refresh_routing(self) -> None:
        """Take a changed routing table into force; a persona whose serving version moved while its
        old one was resident gets the new adapter loaded first, so the switch costs no request."""
        table = self.routing.poll()
        if table is None:
            return
        for persona, entry in table.personas.items():
            before = self.routing.table.resolve(persona)
            if before is not None and before != entry.serving and (persona, before) in self.adapters:
                self._resident((persona, entry.serving))
        self.routing.accept(table)
        logger.info("Routing table in force: %s", {p: r.serving for p, r in table.personas.items()})

    def _persona_dimensions(self, persona: str | None, version: int | None) -> tuple[str, str]:
        """The `persona` and `version` label values (contract 3), bounded by `persona_label`."""
        return persona_label(persona, self.routing.table, self.config.max_persona_labels), version_label(version)

    def _observe(self, spec: MetricSpec, value: float, *extra_dimensions: str) -> None:
        observe(self.context, spec, value, [self.model_name, self.version, *extra_dimensions])

