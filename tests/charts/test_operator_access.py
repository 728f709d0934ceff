"""Least privilege, measured: what the operator asks of the API server in a PersonaModel's life is
exactly what the chart's Role grants (issue 11.7).

The fake API server records every request as the (apiGroup, resource, verb) RBAC authorises it
as; the Role is the rendered one, so a change on either side (a new call, a dropped rule) fails here.
"""

from __future__ import annotations

from persona_operator.jobs import training_job
from persona_operator.spec import PersonaModelSpec
from tests.charts.conftest import find
from tests.operator.harness import Operator, eventually, fake_cluster, operator_settings, persona_model


def granted(render) -> set[tuple[str, str, str]]:
    objects = render()
    rules = find(objects, "Role", "-operator")["rules"]
    return {(group, resource, verb) for rule in rules for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


async def test_the_operator_uses_exactly_what_its_role_grants(render, tmp_path):
    async with fake_cluster(tmp_path) as cluster:
        kube, settings = cluster.kube, operator_settings(cluster)
        # A Job left by a namesake that is gone (the garbage collector has yet to remove it): the
        # operator's create meets 409 and reads the Job instead.
        gone = {**persona_model("carol"), "metadata": {"name": "carol", "uid": "gone", "generation": 1}}
        kube.create("jobs", training_job(gone, PersonaModelSpec.parse(gone["spec"]), 1, settings))
        setup = len(kube.access)
        operator = Operator(settings)
        await operator.start()
        try:
            cluster.apply(persona_model("alice"))
            cluster.apply(persona_model("carol"))
            await eventually(lambda: cluster.status("alice").get("phase") == "Training")
            await eventually(lambda: cluster.status("carol").get("phase") == "Training")
            cluster.apply(persona_model("alice", training={"loraRank": 16}))  # supersedes alice-v1
            job = await eventually(lambda: [j for j in cluster.jobs("alice") if j["metadata"]["name"] == "alice-v2"])
            run = cluster.store / "alice" / "v2" / "run"
            run.mkdir(parents=True)
            (run / "report.json").write_text('{"eval": {"after": {"loss": 2.5, "perplexity": 12.2}}}')
            cluster.finish_job(job[0], succeeded=True)
            await eventually(lambda: cluster.status("alice").get("phase") == "Pending")  # looks for serving pods
            kube.delete("personamodels", "default", "alice")
            await eventually(lambda: not [p for p in kube.list("personamodels") if p["metadata"]["name"] == "alice"])
            await eventually(lambda: cluster.events("TrainingStarted"))
        finally:
            await operator.stop()
        used = set(kube.access[setup:])
    allowed = granted(render)
    assert used - allowed == set(), "the operator used what its Role lacks"
    assert allowed - used == set(), "the Role grants what the operator never uses"
