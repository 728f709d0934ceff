"""The fleet handler as it served before streaming (the benchmark's baseline, issue 21): TorchServe's
dynamic batching hands it a batch, and each group of equal generation options is ONE padded
`generate` that runs until its longest row is done; every reply is delivered whole.

It reuses the fleet handler's initialisation, routing, adapters and prompts; only the step
differs. Registered beside the streaming fleet by `benchmarks/serving.py --open-loop`, never
shipped.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from persona_serving.handler import FleetHandler
from persona_serving.requests import Rejected, Routed, parse, route
from personafleet.inference import InferenceResponse


class DynamicBatchingHandler(FleetHandler):
    def preprocess(self, data: list[Any]) -> list[Routed | Rejected]:
        self._refresh_routing()
        parsed = [parse(item) for item in data]
        return [item if isinstance(item, Rejected) else route(item, self.routing.table) for item in parsed]

    def inference(self, data: list[Routed | Rejected], *args: Any, **kwargs: Any) -> list[Any]:
        outcomes: list[Any] = list(data)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for index, item in enumerate(data):
            if isinstance(item, Routed):
                entry = self._resident(item.key)
                outcomes[index] = entry if isinstance(entry, Rejected) else self._prepare(item, entry)
                if not isinstance(entry, Rejected):
                    groups[tuple(sorted(outcomes[index].options.items()))].append(index)
        for indices in groups.values():
            group = [outcomes[i] for i in indices]
            texts, counts = self.fleet.generate([p.prompt for p in group], [p.entry for p in group],
                                                group[0].options)
            for index, prepared, text, count in zip(indices, group, texts, counts):
                outcomes[index] = InferenceResponse(reply=text, persona=prepared.entry.persona,
                                                    model_version=str(prepared.entry.version), tokens=count)
        return outcomes

    def postprocess(self, data: list[Any]) -> list[str]:
        bodies = []
        for index, outcome in enumerate(data):
            if isinstance(outcome, Rejected):
                self.context.set_response_status(outcome.status, outcome.error, index)
                bodies.append(outcome.body())
            else:
                bodies.append(json.dumps(outcome.model_dump(), ensure_ascii=False))
        return bodies
