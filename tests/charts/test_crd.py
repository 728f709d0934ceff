"""The PersonaModel CRD (contract 5): a valid CRD, a schema that takes the example and refuses
broken resources, and the same field names the operator reads."""

from __future__ import annotations

import copy
import re

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from personafleet.errors import PersonaError
from personafleet.names import PERSONA_NAME_PATTERN
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
    assert columns["Canary"] == ".status.canary.weight"  # the canary's share of the conversations (issue 23)


def test_the_schema_is_valid_in_both_drafts(schema):
    jsonschema.Draft4Validator.check_schema(schema)
    jsonschema.validators.validator_for(schema).check_schema(schema)


def test_the_name_rule_is_the_persona_name_pattern(schema):
    """metadata.name becomes the TorchServe model name: the CEL rule uses the project's pattern."""
    (rule,) = schema["x-kubernetes-validations"]
    assert re.search(r"matches\('(.*)'\)", rule["rule"]).group(1) == PERSONA_NAME_PATTERN


def test_the_example_is_valid_and_means_what_the_operator_reads(schema, example):
    from tests.operator.admission import custom_resource_errors

    for validator in validators(schema):
        validator.validate(example)
    assert custom_resource_errors(example, schema) == []  # the CEL rules too
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


def test_a_canary_status_the_operator_writes_is_valid(schema, example):
    """Every field of `status.canary` (persona_operator.canary) is in the schema: a missing one would
    be pruned by the API server and never shown."""
    from datetime import datetime, timezone

    from persona_operator.analysis import Judgment, Measurement
    from persona_operator.canary import CanaryState
    from persona_operator.spec import CanarySection

    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    canary = CanaryState.first(3, 2, CanarySection(), now).status(
        Measurement(ratings=25.0, like_ratio=0.8, requests=120.0, error_rate=0.01),
        Judgment("pass", "AnalysisPassed", "👍 share 0.80 over 25 ratings"), now)
    status = STATUS | {"phase": "Canary", "canary": canary,
                       "conditions": [{"type": "Canary", "status": "Unknown", "reason": "AwaitingData", "message": "3/20"}]}
    canary_schema = schema["properties"]["status"]["properties"]["canary"]
    assert set(canary) == set(canary_schema["properties"])
    assert set(canary["analysis"]) == set(canary_schema["properties"]["analysis"]["properties"])
    for validator in validators(schema):
        validator.validate(example | {"status": status})


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
    ("serving.generation.maxNewTokens", 513),
    ("rollout.keepVersions", 0),
    ("knowledge.facts", [""]),
    ("knowledge.files", "facts.md"),
    ("rollout.maxEvalLossIncrease", -0.1),
    ("rollout.minFidelity", 1.5),
    ("rollout.maxFidelityDrop", -0.1),
    ("rollout.maxLeaks", -1),
    ("rollout.strategy", "BlueGreen"),
    ("rollout.canary", {"steps": [0]}),
    ("rollout.canary", {"steps": list(range(1, 22))}),
    ("rollout.canary", {"analysis": {"minLikeRatio": 1.5}}),
    ("rollout.canary", {"analysis": {"queries": {"ratings": "x" * 2001}}}),
    ("resources.limits", {"memory": "lots"}),
    ("tolerations", [{"key": "gpu", "operator": "Maybe"}]),
])
def test_broken_resources_are_refused(schema, example, path, value):
    resource = broken(example, path, value)
    for validator in validators(schema):
        assert not validator.is_valid(resource), f"spec.{path}={value!r} was accepted"


def test_a_bad_status_phase_is_refused(schema, example):
    assert not jsonschema.Draft4Validator(schema).is_valid(example | {"status": {"phase": "Done"}})


# ---- CEL rules (issue 11.2, 11.7) ------------------------------------------------------------
def rules(schema: dict, path: str = "") -> list[tuple[str, dict, dict]]:
    """(path, schema node, rule) of every x-kubernetes-validations rule."""
    found = [(path, schema, rule) for rule in schema.get("x-kubernetes-validations") or []]
    for key, sub in (schema.get("properties") or {}).items():
        found += rules(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found += rules(schema[key], f"{path}[*]")
    return found


def resolve(schema: dict, field_path: str) -> dict | None:
    """The sub-schema a `fieldPath` (`.a.b`) names, as the API server checks it when the CRD is created."""
    node = schema
    for key in field_path.strip(".").split("."):
        node = (node.get("properties") or {}).get(key)
        if node is None:
            return None
    return node


def test_every_rule_on_an_object_names_its_field_and_the_field_exists(schema):
    """kubernetes.md #3: a rule without fieldPath on an object reports `<nil>: Invalid value`."""
    objects = [(path, node, rule) for path, node, rule in rules(schema) if node.get("type") == "object"]
    assert len(objects) >= 2  # the name rule and requests <= limits
    for path, node, rule in objects:
        assert rule.get("fieldPath"), f"the rule at {path or '<root>'} has no fieldPath"
        assert resolve(node, rule["fieldPath"]) is not None, f"{path}: {rule['fieldPath']} is not in the schema"
        assert rule.get("message")


def test_every_rule_compiles_in_cel():
    import celpy

    for _path, _node, rule in rules(yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]):
        celpy.Environment().compile(rule["rule"])


@pytest.mark.parametrize(("resources", "refused"), [
    ({"requests": {"memory": "48Gi"}, "limits": {"memory": "32Gi"}}, True),   # issue 11.2's 422
    ({"requests": {"nvidia.com/gpu": 2}, "limits": {"nvidia.com/gpu": 1}}, True),
    ({"requests": {"cpu": "1500m"}, "limits": {"cpu": 1}}, True),
    ({"requests": {"memory": "32Gi"}, "limits": {"memory": "32Gi"}}, False),
    ({"requests": {"cpu": "500m", "memory": "1G"}, "limits": {"cpu": 1, "memory": "1Gi"}}, False),
    ({"requests": {"cpu": "8"}, "limits": {"memory": "1Gi"}}, False),  # no limit of that name
    ({"requests": {"cpu": "8"}}, False),
])
def test_requests_above_limits_are_refused_by_a_cel_rule(schema, example, resources, refused):
    from tests.operator.admission import custom_resource_errors

    errors = custom_resource_errors(example | {"spec": {**example["spec"], "resources": resources}}, schema)
    assert bool(errors) == refused, errors
    if refused:
        assert errors[0].startswith('spec.resources.requests: Invalid value: "object": every request must be at most')


def test_a_bad_name_is_reported_on_metadata_name(schema, example):
    from tests.operator.admission import custom_resource_errors

    errors = custom_resource_errors(example | {"metadata": {"name": "Devops_Dude"}}, schema)
    assert errors and errors[0].startswith('metadata.name: Invalid value: "object": the name is the persona')


def test_the_reply_cap_is_the_one_packaging_and_serving_enforce(schema):
    from personafleet.inference import GenerationLimits
    from personafleet.names import MAX_NEW_TOKENS

    generation = schema["properties"]["spec"]["properties"]["serving"]["properties"]["generation"]["properties"]
    assert generation["maxNewTokens"]["maximum"] == MAX_NEW_TOKENS
    with pytest.raises(ValidationError):
        GenerationLimits(max_new_tokens=MAX_NEW_TOKENS + 1)
    with pytest.raises(PersonaError, match="maxNewTokens"):
        PersonaModelSpec.parse({"baseModel": "b", "dataset": {"exports": ["a"]},
                                "serving": {"generation": {"maxNewTokens": MAX_NEW_TOKENS + 1}}})


def test_the_lora_rank_cap_is_the_one_training_and_the_slots_enforce(schema, example):
    """A PersonaModel asking for a rank the fleet's slots cannot hold is refused at `kubectl apply`,
    not after hours of training by `persona package` or the worker."""
    from persona_training.config import TrainConfig
    from personafleet.lora import MAX_LORA_RANK

    training = schema["properties"]["spec"]["properties"]["training"]["properties"]
    assert training["loraRank"]["maximum"] == MAX_LORA_RANK
    with pytest.raises(ValidationError):
        TrainConfig(lora_rank=MAX_LORA_RANK + 1)
    for validator in validators(schema):
        assert not validator.is_valid(broken(example, "training.loraRank", MAX_LORA_RANK + 1))


def test_absolute_export_paths_are_refused(schema, example):
    resource = broken(example, "dataset.exports", ["/etc/passwd"])
    for validator in validators(schema):
        assert not validator.is_valid(resource)


def test_dot_dot_segments_in_store_paths_are_refused_by_a_cel_rule(schema, example):
    """docs/kubernetes.md: exports (and knowledge files) stay inside the model store, refused at apply time."""
    from tests.operator.admission import custom_resource_errors

    for path, refused in (("../secrets/result.json", True), ("exports/../../etc/passwd", True), ("exports/..", True),
                          ("..", True), ("exports/a..b/result.json", False), ("exports/.hidden/result.json", False),
                          ("exports/devops-chat/result.json", False)):
        for field in ("dataset.exports", "knowledge.files"):
            errors = custom_resource_errors(broken(example, field, [path]), schema)
            assert bool(errors) == refused, (field, path, errors)
            if refused:
                assert "no '..' path segment" in errors[0]


# ---- what a real API server charges for the rules (issue 27) --------------------------------------
# The API server estimates every rule's worst-case cost from the schema's bounds and refuses the
# whole CRD when one is over budget; cel-python estimates nothing, so tests/operator/cel_cost.py
# mirrors the estimate. These tests walk every rule of every version: a field or rule another
# branch adds is checked without anyone listing it here.
MARGIN = 2  # the calibrated (1.34+) estimate must stay under half of each limit


def every_rule(crd: dict, *, legacy: bool = False) -> list:
    from tests.operator.cel_cost import rule_costs, version_schemas

    return [rule for where, schema in version_schemas(crd) for rule in rule_costs(schema, where, legacy=legacy)]


def test_every_rule_reads_only_bounded_strings_lists_and_maps(crd):
    """What a rule reads must have maxLength / maxItems / maxProperties: without one the API
    server assumes a 3 MiB string or as many items as fit in a request."""
    rules = every_rule(crd)
    assert len(rules) >= 4
    for rule in rules:
        assert not rule.unbounded, f"{rule.where} reads {', '.join(rule.unbounded)} with no declared bound"


def test_every_rule_and_the_whole_crd_fit_the_api_servers_cost_budget_with_a_margin(crd):
    from tests.operator.cel_cost import PER_CRD_LIMIT, PER_RULE_LIMIT

    rules = every_rule(crd)
    for rule in rules:
        assert rule.total * MARGIN <= PER_RULE_LIMIT, f"{rule.where}: estimated {rule.total:,} ({rule.expression})"
    assert sum(rule.total for rule in rules) * MARGIN <= PER_CRD_LIMIT
    # API servers before 1.34 ignore maxLength on an int-or-string (a quantity costs as 3 MiB);
    # the chart must install there too.
    legacy = every_rule(crd, legacy=True)
    for rule in legacy:
        assert rule.total <= PER_RULE_LIMIT, f"{rule.where}: estimated {rule.total:,} before Kubernetes 1.34"
    assert sum(rule.total for rule in legacy) <= PER_CRD_LIMIT


def test_the_estimate_refuses_the_rule_a_real_api_server_refused(crd):
    """kube-apiserver 1.36.2 refused the chart's first requests <= limits rule, its quantities without
    maxLength: "estimated rule cost exceeds budget by factor of 4.0x" (issue 27). The estimate
    must say the same, word for word."""
    from tests.operator.cel_cost import budget_errors

    refused = copy.deepcopy(crd)
    resources = refused["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["resources"]
    resources["x-kubernetes-validations"][0]["rule"] = (
        "!has(self.requests) || !has(self.limits) || self.requests.all(name, !(name in self.limits)"
        " || !isQuantity(string(self.requests[name])) || !isQuantity(string(self.limits[name]))"
        " || quantity(string(self.requests[name])).compareTo(quantity(string(self.limits[name]))) <= 0)")
    for section in ("limits", "requests"):
        resources["properties"][section]["maxProperties"] = 16
        resources["properties"][section]["additionalProperties"].pop("maxLength", None)  # one anchor
    assert budget_errors(refused) == [
        "spec.validation.openAPIV3Schema.properties[spec].properties[resources].x-kubernetes-validations[0].rule: "
        "Forbidden: estimated rule cost exceeds budget by factor of 4.0x (try simplifying the rule, or adding "
        "maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)"]
    assert budget_errors(crd) == []


@pytest.mark.parametrize(("rule", "schema_of_self", "expected"), [
    ("self > 0.0", {"type": "number"}, 2),  # ident 1 + comparison 1 (cel-go's own tests)
    ("has(self.a)", {"type": "object", "properties": {"a": {"type": "string"}}}, 2),
    ("self.matches('^[a-z]+$')", {"type": "string", "maxLength": 10}, 5 * 2 + 1),  # ceil(41*0.1) * ceil(8*0.25) + self
    ("self.all(x, x.startsWith('ab'))", {"type": "array", "maxItems": 10, "items": {"type": "string"}},
     1 + 1 + 10 * (2 + 1 + 1 + 1)),
    ("self.exists(x, x == 'a')", {"type": "array", "maxItems": 4, "items": {"type": "string", "maxLength": 5}},
     1 + 1 + 4 * (3 + 1 + 1 + 1)),
    ("size(self) < 3", {"type": "object", "maxProperties": 5, "additionalProperties": {"type": "string"}}, 3),
])
def test_the_estimate_of_single_constructs(rule, schema_of_self, expected):
    from tests.operator.cel_cost import rule_costs

    (cost,) = rule_costs(schema_of_self | {"x-kubernetes-validations": [{"rule": rule}]})
    assert cost.cost == expected


def test_unbounded_reads_and_unknown_constructs_are_named():
    from tests.operator.cel_cost import UnsupportedRule, rule_costs

    tags = {"type": "object", "x-kubernetes-validations": [{"rule": "self.tags.all(t, t.size() < 10)"}],
            "properties": {"tags": {"type": "array", "items": {"type": "string"}}, "note": {"type": "string"}}}
    (cost,) = rule_costs(tags)
    assert cost.unbounded == ("self.tags", "self.tags[*]")  # the list and its strings; `note` is not read
    with pytest.raises(UnsupportedRule, match="format"):
        rule_costs({"type": "string", "x-kubernetes-validations": [{"rule": "'%s'.format([self]) != ''"}]})


def test_the_causal_base_example_is_valid_too(schema):
    """Issue 22: examples/persona-causal.yaml, a persona on ruGPT-3 small, passes the CRD and its CEL rules."""
    from tests.operator.admission import custom_resource_errors

    example = yaml.safe_load((ROOT / "examples" / "persona-causal.yaml").read_text())
    for validator in validators(schema):
        validator.validate(example)
    assert custom_resource_errors(example, schema) == []
    spec = PersonaModelSpec.parse(example["spec"])
    assert spec.base_model == "ai-forever/rugpt3small_based_on_gpt2" and spec.training.target_modules is None
