"""The fake API server keeps the promises the operator's tests rely on (it is test infrastructure,
but a fake that lies would make every operator test meaningless)."""

from __future__ import annotations

import asyncio
import copy

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.operator.fake_kube import ApiError, FakeKube
from tests.operator.harness import CRD_PATH, fake_cluster, persona_model


def test_generation_grows_with_the_spec_only_and_status_needs_its_subresource():
    kube = FakeKube()
    created = kube.create("personamodels", persona_model("alice"))
    assert created["metadata"]["generation"] == 1
    kube.patch("personamodels", "default", "alice", {"metadata": {"annotations": {"a": "b"}}, "status": {"phase": "X"}})
    unchanged = kube.get("personamodels", "default", "alice")
    assert unchanged["metadata"]["generation"] == 1 and "status" not in unchanged
    kube.patch("personamodels", "default", "alice", {"status": {"phase": "Ready"}, "spec": {"baseModel": "y"}},
               subresource="status")
    after_status = kube.get("personamodels", "default", "alice")
    assert after_status["status"] == {"phase": "Ready"} and after_status["spec"]["baseModel"] != "y"
    kube.patch("personamodels", "default", "alice", {"spec": {"baseModel": "other"}})
    assert kube.get("personamodels", "default", "alice")["metadata"]["generation"] == 2


def test_json_patch_test_failure_is_422_and_strategic_merge_on_custom_resources_is_415():
    kube = FakeKube()
    kube.create("personamodels", persona_model("alice"))
    with pytest.raises(ApiError) as conflict:
        kube.patch("personamodels", "default", "alice",
                   [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"}],
                   content_type="application/json-patch+json")
    assert conflict.value.code == 422
    with pytest.raises(ApiError) as unsupported:
        kube.patch("personamodels", "default", "alice", {"spec": {}},
                   content_type="application/strategic-merge-patch+json")
    assert unsupported.value.code == 415


def test_finalizers_hold_deletion_and_dependents_are_collected():
    kube = FakeKube()
    owner = kube.create("personamodels", {**persona_model("alice"),
                                          "metadata": {"name": "alice", "finalizers": ["x/y"]}})
    kube.create("jobs", {"metadata": {"name": "alice-v1", "ownerReferences": [
        {"apiVersion": "personafleet.io/v1alpha1", "kind": "PersonaModel", "name": "alice", "uid": owner["metadata"]["uid"]}]},
        "spec": {"template": {"spec": {"containers": [{"name": "train", "image": "x"}]}}}})
    kube.delete("personamodels", "default", "alice")
    assert kube.get("personamodels", "default", "alice")["metadata"]["deletionTimestamp"]
    kube.patch("personamodels", "default", "alice", {"metadata": {"finalizers": []}})
    assert kube.list("personamodels") == [] and kube.list("jobs") == []


async def test_official_client_lists_watches_from_a_resource_version_and_patches(tmp_path):
    async with fake_cluster(tmp_path):
        kubernetes.config.load_kube_config()
        core = kubernetes.client.CoreV1Api()

        def run() -> tuple[list, dict]:
            listed = core.list_namespaced_config_map("default")
            core.create_namespaced_config_map("default", {"metadata": {"name": "m", "labels": {"k": "v"}}, "data": {"a": "1"}})
            core.patch_namespaced_config_map("m", "default", {"data": {"b": "2"}})
            with pytest.raises(ApiException) as missing:
                core.read_namespaced_config_map("nope", "default")
            assert missing.value.status == 404
            stream = kubernetes.watch.Watch().stream(core.list_namespaced_config_map, "default", label_selector="k=v",
                                                     resource_version=listed.metadata.resource_version, timeout_seconds=1)
            events = [(e["type"], dict(e["object"].data)) for e in stream]
            return events, core.read_namespaced_config_map("m", "default").data

        events, data = await asyncio.to_thread(run)
    assert events == [("ADDED", {"a": "1"}), ("MODIFIED", {"a": "1", "b": "2"})]
    assert data == {"a": "1", "b": "2"}


def test_crd_schema_prunes_unknown_fields_and_refuses_invalid_ones():
    schema = {"type": "object", "properties": {
        "spec": {"type": "object", "required": ["baseModel"], "properties": {"baseModel": {"type": "string"}}},
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}
    kube = FakeKube({"personamodels": schema})
    created = kube.create("personamodels", {"metadata": {"name": "a"}, "spec": {"baseModel": "x", "typo": 1}})
    assert created["spec"] == {"baseModel": "x"}
    with pytest.raises(ApiError) as invalid:
        kube.create("personamodels", {"metadata": {"name": "b"}, "spec": {"baseModel": 3}})
    assert invalid.value.code == 422 and "spec.baseModel" in invalid.value.message


def test_crd_cel_rules_are_enforced_with_the_field_they_name():
    schema = {"type": "object", "properties": {"spec": {
        "type": "object", "properties": {"rate": {"type": "number", "x-kubernetes-validations": [
            {"rule": "self > 0.0", "message": "must be greater than 0"}]}, "low": {"type": "integer"},
            "high": {"type": "integer"}},
        "x-kubernetes-validations": [{"rule": "self.low <= self.high", "fieldPath": ".low", "message": "low > high"}]}},
        "x-kubernetes-validations": [{"rule": "self.metadata.name.startsWith('a')", "message": "starts with a"}]}
    kube = FakeKube({"personamodels": schema})
    kube.create("personamodels", {"metadata": {"name": "a"}, "spec": {"rate": 2, "low": 1, "high": 2}})  # 2: a double here
    for body, expected in (({"rate": 0, "low": 1, "high": 2}, 'spec.rate: Invalid value: "integer": must be greater than 0'),
                           ({"rate": 1, "low": 3, "high": 2}, 'spec.low: Invalid value: "object": low > high')):
        with pytest.raises(ApiError) as invalid:
            kube.create("personamodels", {"metadata": {"name": "a2"}, "spec": body})
        assert invalid.value.code == 422 and expected in invalid.value.message
    with pytest.raises(ApiError) as unnamed:
        kube.create("personamodels", {"metadata": {"name": "b"}, "spec": {"rate": 1, "low": 1, "high": 1}})
    assert '<nil>: Invalid value: "object": starts with a' in unnamed.value.message  # kubernetes.md #3


@pytest.mark.parametrize(("resources", "expected"), [
    ({"requests": {"memory": "48Gi"}, "limits": {"memory": "32Gi"}}, "must be less than or equal to memory limit of 32Gi"),
    ({"limits": {"memory": "lots"}}, 'resources.limits[memory]: Invalid value: "lots"'),
    ({"requests": {"cpu": "1500m"}, "limits": {"cpu": "1"}}, "must be less than or equal to cpu limit of 1"),
    ({"requests": {"cpu": "500m", "memory": "1G"}, "limits": {"cpu": 1, "memory": "1Gi"}}, None),
])
def test_jobs_are_refused_as_the_api_server_refuses_them(resources, expected):
    kube = FakeKube()
    job = {"metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": [
        {"name": "train", "image": "x", "resources": resources}]}}}}
    if expected is None:
        kube.create("jobs", job)
        return
    with pytest.raises(ApiError) as refused:
        kube.create("jobs", job)
    assert refused.value.code == 422 and expected in refused.value.message


def chart_crd() -> dict:
    return yaml.safe_load(CRD_PATH.read_text())


def resources_of(crd: dict) -> dict:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["resources"]


def test_the_charts_crd_is_taken_and_then_refuses_what_its_rules_refuse():
    kube = FakeKube()
    kube.create("customresourcedefinitions", chart_crd())
    over = persona_model("alice")
    over["spec"]["resources"] = {"requests": {"nvidia.com/gpu": 2}, "limits": {"nvidia.com/gpu": 1}}
    with pytest.raises(ApiError) as refused:
        kube.create("personamodels", over)
    assert refused.value.code == 422 and "every request must be at most its limit" in refused.value.message
    over["spec"]["resources"]["requests"]["nvidia.com/gpu"] = "1"
    kube.create("personamodels", over)


def test_a_crd_over_the_cel_cost_budget_is_refused_like_a_real_api_server():
    """Issue 27: kube-apiserver 1.36.2 refused the chart's CRD (quantities without maxLength under a
    rule that parses each one); the fake must too, with the same message, and serve nothing."""
    crd = chart_crd()
    resources = resources_of(crd)
    resources["properties"]["requests"]["maxProperties"] = 16
    resources["properties"]["requests"]["additionalProperties"].pop("maxLength")  # shared with limits
    kube = FakeKube()
    with pytest.raises(ApiError) as refused:
        kube.create("customresourcedefinitions", crd)
    assert refused.value.code == 422
    assert refused.value.message.startswith(
        'CustomResourceDefinition.apiextensions.k8s.io "personamodels.personafleet.io" is invalid: '
        "spec.validation.openAPIV3Schema.properties[spec].properties[resources].x-kubernetes-validations[0].rule: "
        "Forbidden: estimated rule cost exceeds budget by factor of")
    assert kube.list("customresourcedefinitions") == []
    unchecked = persona_model("alice")
    unchecked["spec"]["typo"] = True
    assert kube.create("personamodels", unchecked)["spec"]["typo"] is True  # no schema: nothing pruned


def test_keywords_inside_an_int_or_strings_any_of_make_the_crd_non_structural():
    """kubernetes.md (2026-12-04): maxLength goes beside the anyOf; a type in a branch is refused."""
    crd = chart_crd()
    quantity = resources_of(crd)["properties"]["limits"]["additionalProperties"]
    quantity["anyOf"] = [{"type": "integer"}, {"type": "string", "maxLength": quantity.pop("maxLength")}]
    with pytest.raises(ApiError) as refused:
        FakeKube().create("customresourcedefinitions", copy.deepcopy(crd))
    assert refused.value.code == 422
    assert ("properties[resources].properties[limits].additionalProperties.anyOf[0].type: Forbidden: "
            "must be empty to be structural") in refused.value.message
