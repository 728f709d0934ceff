"""The PersonaModel CRD (contract 5): a valid CRD, a schema that takes the example and refuses
broken resources, and the same field names the operator reads."""

from __future__ import annotations

import copy
import re

import jsonschema
import kubernetes_validate
import pytest
import yaml

from personafleet.persona import PERSONA_NAME_PATTERN
from persona_operator.spec import PersonaModelSpec
from tests.charts.conftest import CRD, ROOT

EXAMPLE = ROOT / "examples" / "persona.yaml"


@pytest.fixture(scope="module")
def crd() -> dict:
    return yaml.safe_load(CRD.read_text())


@pytest.fixture(scope="module")
def version(crd) -> dict:
    (served,) = crd["spec"]["versions"]
    return served


@pytest.fixture(scope="module")
def schema(version) -> dict:
    return version["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def validators(schema: dict) -> list[jsonschema.protocols.Validator]:
    """Draft 4 (what OpenAPI v3 schemas follow, as the API server reads them) and jsonschema's
    default draft (what the operator's fake API server uses): the schema must mean the same to both."""
    return [jsonschema.Draft4Validator(schema), jsonschema.validators.validator_for(schema)(schema)]


def test_the_crd_is_a_valid_kubernetes_object_with_the_contract_names(crd, version):
    kubernetes_validate.validate(crd, "1.33", strict=True)
    assert crd["metadata"]["name"] == "personamodels.personafleet.io"
    assert crd["spec"]["group"] == "personafleet.io" and crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("PersonaModel", "personamodels", ["pm"])
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["Serving"] == ".status.servingVersion"
    assert columns["Age"] == ".metadata.creationTimestamp"


def test_the_schema_is_valid_in_both_drafts(schema):
    jsonschema.Draft4Validator.check_schema(schema)
    jsonschema.validators.validator_for(schema).check_schema(schema)


def test_the_name_rule_is_the_persona_name_pattern(schema):
    """metadata.name becomes the TorchServe model name: the CEL rule uses the project's pattern."""
    (rule,) = schema["x-kubernetes-validations"]
    assert re.search(r"matches\('(.*)'\)", rule["rule"]).group(1) == PERSONA_NAME_PATTERN


def test_the_example_is_valid_and_means_what_the_operator_reads(schema, example):
    for validator in validators(schema):
        validator.validate(example)
    assert example["apiVersion"] == "personafleet.io/v1alpha1" and example["kind"] == "PersonaModel"
    assert re.fullmatch(PERSONA_NAME_PATTERN, example["metadata"]["name"])
    spec = PersonaModelSpec.parse(example["spec"])
    assert spec.training.precision == "bf16" and spec.rollout.keep_versions == 2
    assert spec.dataset.exports == ["exports/devops-chat/result.json"]


def test_every_spec_field_the_operator_reads_is_in_the_schema(schema):
    """Fields the API server does not know are pruned: a name missing from the schema would
    silently never reach the operator."""
    def fields(model) -> dict[str, object]:
        return {(f.alias or name): f.annotation for name, f in model.model_fields.items()}

    def check(model, properties: dict, where: str) -> None:
        for name, annotation in fields(model).items():
            assert name in properties, f"{where}.{name} is missing from the CRD"
            nested = getattr(annotation, "model_fields", None)
            if nested is not None:
                check(annotation, properties[name]["properties"], f"{where}.{name}")

    check(PersonaModelSpec, schema["properties"]["spec"]["properties"], "spec")


STATUS = {
    "phase": "Ready", "observedGeneration": 2, "servingVersion": "2", "servingFacts": 12, "latestVersion": "2", "retries": 0,
    "message": "version 2 serves",
    "lastTraining": {"version": "2", "jobName": "devops-dude-v2", "startedAt": "2026-11-24T06:00:00Z",
                     "finishedAt": "2026-11-24T06:20:00Z", "durationSeconds": 1200.0, "evalLoss": 2.1,
                     "evalPerplexity": 8.2},
    "conditions": [{"type": "Ready", "status": "True", "reason": "Serving", "message": "version 2 serves",
                    "lastTransitionTime": "2026-11-24T06:21:00Z"}],
}


def test_the_status_the_operator_writes_is_valid(schema, example):
    for validator in validators(schema):
        validator.validate(example | {"status": STATUS})


def broken(example: dict, path: str, value: object) -> dict:
    """The example with `path` (dotted, under spec) set to `value`, or removed when value is ...."""
    resource = copy.deepcopy(example)
    *parents, leaf = path.split(".")
    node = resource["spec"]
    for key in parents:
        node = node[key]
    if value is ...:
        del node[leaf]
    else:
        node[leaf] = value
    return resource


@pytest.mark.parametrize(("path", "value"), [
    ("baseModel", ...),
    ("baseModel", ""),
    ("dataset", ...),
    ("dataset.exports", []),
    ("dataset.contextTurns", 0),
    ("training.loraRank", -4),
    ("training.loraDropout", 1.5),
    ("training.precision", "fp8"),
    ("training.targetModules", "q,v"),
    ("serving.generation.topP", 1.5),
    ("serving.workers", 0),
    ("rollout.keepVersions", 0),
    ("knowledge.facts", [""]),
    ("knowledge.files", "facts.md"),
    ("rollout.maxEvalLossIncrease", -0.1),
    ("resources.limits", {"memory": "lots"}),
    ("tolerations", [{"key": "gpu", "operator": "Maybe"}]),
])
def test_broken_resources_are_refused(schema, example, path, value):
    resource = broken(example, path, value)
    for validator in validators(schema):
        assert not validator.is_valid(resource), f"spec.{path}={value!r} was accepted"


def test_a_bad_status_phase_is_refused(schema, example):
    assert not jsonschema.Draft4Validator(schema).is_valid(example | {"status": {"phase": "Done"}})
