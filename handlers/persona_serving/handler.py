"""The fleet handler: every persona on one base model per worker, adapters hot-loaded (contract 3).

BaseHandler's four steps, each visible: `initialize` loads the base once per worker,
`preprocess` turns every request of the batch into a routed request or an error value (the
routing table is re-read here when its file changed), `inference` puts the needed adapters into
slots (LRU) and runs ONE padded `generate` per set of generation options, rows in slot order,
each row through its own persona's slot, `postprocess` gives each request its own JSON body, status and content
type. The logic lives in plain modules (requests, residency, routing_watch, fleet); nothing a
client sends can raise out of `handle`: one bad request never fails the batch or kills the worker.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ts.torch_handler.base_handler import BaseHandler

from persona_serving.config import BASE_DIR, SERVING_FILE, FleetConfig
from persona_serving.fleet import AdapterUnavailable, FleetModel, pick_device
from persona_serving.metrics import (
    ADAPTER_EVICTIONS, ADAPTER_LOADS, ADAPTERS_PER_BATCH, BATCH_SIZE, ERRORS, FACTS_PER_PROMPT, FILTERED_REPLIES,
    GENERATION_SECONDS, HOST_ADAPTERS, PERSONAS_PER_BATCH, REQUESTS, RETRIEVAL_SECONDS, SLOT_LOAD_SECONDS, SLOTS_IN_USE,
    TOKENS_GENERATED, MetricSpec, observe, persona_label, version_label,
)
from persona_serving.requests import (
    PersonaVersion, Prepared, Rejected, Routed, describe, key_chunks, option_groups, parse, prepare, route,
)
from persona_serving.reply_filter import ReplyFilter, held_out_warning
from persona_serving.residency import AdapterLRU
from persona_serving.routing_watch import RoutingWatch
from personafleet.inference import InferenceResponse, PersonaAbout
from personafleet.store import held_out_replies

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
Key = tuple[str, int]
Outcome = InferenceResponse | PersonaAbout | Rejected


class FleetHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        """Load the base model once; adapters come from the model store when first asked for."""
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
        self._refresh_routing()
        self.initialized = True
        logger.info("Fleet worker ready on %s (%s, base %s, store %s, %d slots of rank <= %d, %d host adapters, %s kernel)",
                    device, dtype, base, self.store, self.config.max_resident_adapters, self.config.max_lora_rank,
                    self.config.max_host_adapters, "grouped" if self.fleet.slots.rows.grouped else "gather")

    # Every request is a prediction. BaseHandler would send the whole batch down the explain or
    # describe path when only its FIRST request asks for it, failing everyone else's request.
    def _is_explain(self) -> bool:
        return False

    def _is_describe(self) -> bool:
        return False

    def preprocess(self, data: list[Any]) -> list[Routed | Rejected]:
        self._observe(BATCH_SIZE, len(data))
        self._refresh_routing()
        table = self.routing.table
        parsed = [parse(item) for item in data]
        routed = [item if isinstance(item, Rejected) else route(item, table) for item in parsed]
        for item in routed:
            if isinstance(item, Routed):
                self._observe(REQUESTS, 1, *self._persona_dimensions(item.persona, item.version))
        return routed

    def inference(self, data: list[Routed | Rejected], *args: Any, **kwargs: Any) -> list[Outcome]:
        """Errors pass through and `about` requests are answered from the store; per chunk of at
        most `max_resident_adapters` versions, the adapters are put into slots and each group of
        equal options is one `generate`, its rows in slot order (every slot layer then reads
        contiguous groups, no gather)."""
        data = [describe(item, self.store) if isinstance(item, Routed) and item.request.about else item for item in data]
        outcomes: list[Any] = list(data)
        self._observe(PERSONAS_PER_BATCH, len({item.persona for item in data if isinstance(item, Routed)}))
        for chunk in key_chunks(data, self.adapters.capacity):
            entries = {key: self._resident(key) for key in dict.fromkeys(data[i].key for i in chunk)}  # type: ignore[union-attr]
            for i in chunk:
                entry = entries[data[i].key]  # type: ignore[union-attr]
                outcomes[i] = entry if isinstance(entry, Rejected) else self._prepare(data[i], entry)  # type: ignore[arg-type]
            for indices in option_groups(outcomes).values():
                indices.sort(key=lambda i: self.fleet.slot(outcomes[i].entry))
                for index, reply in zip(indices, self._generate([outcomes[i] for i in indices])):
                    outcomes[index] = reply
        return outcomes

    def _prepare(self, routed: Routed, entry: PersonaVersion) -> Prepared:
        """The request's prompt, with its version's facts; retrieval is measured where there are facts."""
        prepared = prepare(routed, entry, self.config.limits, self.fleet.chat)
        if entry.knowledge is not None:
            self._observe(RETRIEVAL_SECONDS, prepared.retrieval_seconds)
            self._observe(FACTS_PER_PROMPT, len(prepared.facts))
        return prepared

    def _generate(self, group: list[Prepared]) -> list[Outcome]:
        """One padded `generate` for requests that share generation options, each row its adapter."""
        entries = [item.entry for item in group]
        self._observe(ADAPTERS_PER_BATCH, len({entry.key for entry in entries}))
        started = time.perf_counter()
        try:
            texts, counts = self.fleet.generate([item.prompt for item in group], entries, group[0].options)
        except Exception as exc:  # noqa: BLE001 - e.g. CUDA out of memory: fail this group, keep the worker
            logger.exception("generate() failed for %d requests", len(group))
            detail = f"{exc.__class__.__name__}: {exc}"
            return [Rejected(503, "generation_failed", detail, item.entry.persona, item.entry.version) for item in group]
        elapsed = time.perf_counter() - started
        tokens: Counter[tuple[str, ...]] = Counter()
        for item, count in zip(group, counts):
            dimensions = self._persona_dimensions(item.entry.persona, item.entry.version)
            self._observe(GENERATION_SECONDS, elapsed, *dimensions)
            tokens[dimensions] += count
        for dimensions, count in tokens.items():
            self._observe(TOKENS_GENERATED, count, *dimensions)
        return [
            InferenceResponse(reply=self._filtered(item.entry, text), persona=item.entry.persona,
                              model_version=str(item.entry.version), tokens=count,
                              facts=list(item.facts) if item.show_facts else None)
            for item, text, count in zip(group, texts, counts)
        ]

    def _filtered(self, entry: PersonaVersion, text: str) -> str:
        """The reply that may leave: the text, or the fallback when a rule matches (counted, and
        logged by rule only: the blocked text never reaches a log)."""
        outcome = self.reply_filters[(entry.persona, entry.version)].apply(text)
        if outcome.rule is not None:
            persona, _ = self._persona_dimensions(entry.persona, entry.version)
            self._observe(FILTERED_REPLIES, 1, persona, outcome.rule)
            logger.info("Reply of %s v%d replaced by the fallback (rule %s)", entry.persona, entry.version, outcome.rule)
        return outcome.reply

    def postprocess(self, data: list[Outcome]) -> list[str]:
        """One JSON string per request (ensure_ascii off: Cyrillic stays readable), with its status."""
        bodies = []
        for index, outcome in enumerate(data):
            self.context.set_response_content_type(index, JSON_CONTENT_TYPE)
            if isinstance(outcome, Rejected):
                self.context.set_response_status(outcome.status, outcome.error, index)
                self._observe(ERRORS, 1, *self._persona_dimensions(outcome.persona, outcome.version), outcome.error)
                bodies.append(outcome.body())
            else:  # optional fields a request did not ask for (facts) are left out
                bodies.append(json.dumps(outcome.model_dump(mode="json", exclude_none=True), ensure_ascii=False))
        return bodies

    # --- adapters and routing ------------------------------------------------------------
    def _resident(self, key: Key) -> PersonaVersion | Rejected:
        """The version's entry, its adapter put into a slot if needed; a 503 value when it cannot be."""
        try:
            entry, _ = self.adapters.get(key)
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
