"""The operator with several bases (issue 22): a causal persona rolled out beside a T5 one, each to
the fleet of its base, against the real fleet TorchServe (both bases in one server, one pod front
per base as the chart runs them); a PersonaModel whose base no fleet serves is refused."""

from __future__ import annotations

import httpx
import pytest

from persona_serving.bases import Fleet, fleet_names
from personafleet.routing import read_routing
from tests.fixtures.causal_model import CAUSAL_PERSONA
from tests.fixtures.torchserve import free_port
from tests.operator.harness import (
    Operator, eventually, fake_cluster, fleet_replica, fleet_server, operator_settings, persona_model, place_version,
)

ROLLOUT_TIMEOUT = 90.0
BASE_LABEL = "personafleet.io/base"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_fleets(tiny_base, causal_base, tmp_path_factory):
    """One real TorchServe with a fleet per base (T5 and causal), over a model store of its own."""
    work = tmp_path_factory.mktemp("operator-bases")
    with fleet_server(work / "store", tiny_base, work / "serve", bases=[str(tiny_base), str(causal_base)]) as server:
        yield server


async def test_a_causal_persona_rolls_out_beside_a_t5_one_each_to_its_bases_fleet(
        two_fleets, tiny_base, causal_base, tiny_run, causal_run, tmp_path):
    t5, causal, server = str(tiny_base), str(causal_base), two_fleets
    models = dict(zip(server.bases, fleet_names(server.bases)))
    port = free_port()
    ips = {"t5": "127.0.0.1", "causal": "127.0.0.2"}  # two pods, one per base
    async with fake_cluster(tmp_path, store=server.model_store) as cluster, \
            fleet_replica(server, tmp_path / "t5-0", host=ips["t5"], port=port,
                          fleets=[Fleet(t5, models[t5]), Fleet(causal, url=f"http://{ips['causal']}:{port}")]) as t5_pod, \
            fleet_replica(server, tmp_path / "causal-0", host=ips["causal"], port=port, token_file=t5_pod.token_file,
                          fleets=[Fleet(causal, models[causal]), Fleet(t5, url=f"http://{ips['t5']}:{port}")]):
        for name, ip in ips.items():
            cluster.add_serving_pod(f"{name}-0", ip, labels={BASE_LABEL: name})
        operator = Operator(operator_settings(
            cluster, serving_inference_port=port, serving_token_file=t5_pod.token_file,
            serving_bases={t5: "t5", causal: "causal"}, verify_timeout_seconds=5.0,
            rollout_timeout_seconds=ROLLOUT_TIMEOUT))
        await operator.start()
        try:
            for persona, base, run in (("t5-dude", t5, tiny_run), (CAUSAL_PERSONA, causal, causal_run)):
                cluster.apply(persona_model(persona, baseModel=base))
                job = await eventually(lambda p=persona: cluster.jobs(p))
                place_version(cluster.store, run, persona, 1, loss=2.0)
                cluster.finish_job(job[0], succeeded=True)
            for persona in ("t5-dude", CAUSAL_PERSONA):
                status = await eventually(lambda p=persona: cluster.status(p).get("phase") == "Ready" and cluster.status(p),
                                          timeout=ROLLOUT_TIMEOUT)
                assert status["servingVersion"] == "1"
            table = read_routing(cluster.store)
            assert (table.base_of("t5-dude", 1), table.base_of(CAUSAL_PERSONA, 1)) == (t5, causal)

            # The bot asks any pod: each persona is answered by the fleet of its base.
            token = t5_pod.token_file.with_name("inference-token").read_text().strip()
            async with httpx.AsyncClient(base_url=t5_pod.inference_url, timeout=60) as http:
                for persona in ("t5-dude", CAUSAL_PERSONA):
                    response = await http.post("/predictions/fleet", json={"persona": persona, "message": "привет"},
                                               headers={"Authorization": f"Bearer {token}"})
                    assert response.status_code == 200 and response.json()["persona"] == persona

            # A base no fleet serves: refused before any Job, with an Event.
            cluster.apply(persona_model("fred-dude", baseModel="ai-forever/FRED-T5-large"))
            status = await eventually(lambda: cluster.status("fred-dude").get("phase") == "Failed"
                                      and cluster.status("fred-dude"))
            trained = next(c for c in status["conditions"] if c["type"] == "Trained")
            assert trained["reason"] == "BaseNotServed"
            assert "spec.baseModel ai-forever/FRED-T5-large: no fleet serves this base" in status["message"]
            assert cluster.jobs("fred-dude") == []
            assert any(e["reason"] == "BaseNotServed" for e in cluster.events("BaseNotServed"))
        finally:
            await operator.stop()
