"""The chart's own values and the README's example, through the operator, into a created Job.

The operator runs with the Settings the rendered Deployment's environment gives it and creates
its Job through the real `kubernetes` client (its models, its serialisation) against the fake API
server, which checks the Job as the API server does (issue 11.1: an integer `nvidia.com/gpu: 1`
never got past the client).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import kubernetes
import pytest
import yaml

from persona_operator.jobs import training_job
from persona_operator.settings import Settings
from persona_operator.spec import PersonaModelSpec
from tests.charts.conftest import ROOT, find, resolve_env
from tests.fixtures.torchserve import free_port
from tests.operator.harness import Cluster, Operator, eventually, fake_cluster, persona_model

EXAMPLE = ROOT / "examples" / "persona.yaml"


def chart_settings(render, tmp_path) -> Settings:
    """The operator's Settings from the rendered Deployment's environment (default values)."""
    objects = render()
    return Settings.from_env(resolve_env(objects, find(objects, "Deployment", "-operator"), tmp_path))


@asynccontextmanager
async def operator_from_chart(render, tmp_path) -> AsyncIterator[Cluster]:
    """A fake cluster with the operator configured by the chart's rendered environment (only what
    cannot be the same in a test process differs: namespace, store, ports)."""
    async with fake_cluster(tmp_path) as cluster:
        settings = chart_settings(render, tmp_path).model_copy(update={
            "namespace": cluster.namespace, "store_path": cluster.store, "health_port": free_port(),
            "listen_address": "127.0.0.1"})
        operator = Operator(settings)
        await operator.start()
        try:
            yield cluster
        finally:
            await operator.stop()


@pytest.mark.parametrize("resource", ["chart-defaults", "readme-example"])
async def test_the_job_goes_through_the_real_client(render, tmp_path, resource):
    """Straight through the client's models and serialisation: no operator loop hides the error."""
    body = persona_model("alice") if resource == "chart-defaults" else yaml.safe_load(EXAMPLE.read_text())
    async with fake_cluster(tmp_path) as cluster:
        owner = cluster.kube.create("personamodels", body)
        manifest = training_job(owner, PersonaModelSpec.parse(owner["spec"]), 1, chart_settings(render, tmp_path))

        def create() -> dict:
            kubernetes.config.load_kube_config()
            api = kubernetes.client.ApiClient()
            created = kubernetes.client.BatchV1Api(api).create_namespaced_job(cluster.namespace, manifest)
            return api.sanitize_for_serialization(created)

        created = await asyncio.to_thread(create)
    assert created["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def job_pod(cluster: Cluster, persona: str) -> dict:
    (job,) = cluster.jobs(persona)
    return job["spec"]["template"]["spec"]


async def test_the_chart_defaults_reach_a_created_job(render, tmp_path):
    defaults = yaml.safe_load((ROOT / "charts" / "personafleet" / "values.yaml").read_text())["training"]
    async with operator_from_chart(render, tmp_path) as cluster:
        cluster.apply(persona_model("alice"))
        await eventually(lambda: cluster.jobs("alice"), timeout=30)
        pod = job_pod(cluster, "alice")
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits == {name: str(value) for name, value in defaults["resources"]["limits"].items()}
    assert limits["nvidia.com/gpu"] == "1"
    assert pod["tolerations"] == defaults["tolerations"] and pod["automountServiceAccountToken"] is False


async def test_the_readme_example_reaches_a_created_job(render, tmp_path):
    example = yaml.safe_load(EXAMPLE.read_text())
    async with operator_from_chart(render, tmp_path) as cluster:
        cluster.apply(copy.deepcopy(example))
        name = example["metadata"]["name"]
        await eventually(lambda: cluster.jobs(name), timeout=30)
        pod = job_pod(cluster, name)
        status = await eventually(lambda: cluster.status(name).get("phase") == "Training" and cluster.status(name))
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "4", "memory": "24Gi"},
                                                 "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"}}
    assert status["latestVersion"] == "1"
