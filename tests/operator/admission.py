"""What the API server refuses, for the fake API: a CRD itself (a non-structural schema, CEL rules
over the cost budget), a custom resource against its CRD's schema and CEL rules, and the Job rules
that matter for the fields the operator sets (quantities, requests <= limits).

The CEL rules run in cel-python (a maintained CEL implementation), with the values typed as the
API server types them (a `type: number` field is a double even when written `32`) and with the
part of Kubernetes' quantity library the CRD uses (`isQuantity`, `quantity`, `compareTo`).
Messages follow the API server's `FIELD: Invalid value: "TYPE": MESSAGE` form, with `<nil>` for a
root rule without `fieldPath` (kubernetes.md #3).
"""

from __future__ import annotations

import re
from decimal import Decimal
from functools import cache
from typing import Any

import celpy
import jsonschema
from celpy import celtypes

from tests.operator.cel_cost import budget_errors, version_schemas

QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
                      r"(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))?$")
SUFFIXES = {"": 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6,
            "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
            "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(text: str) -> Decimal | None:
    """The value of a Kubernetes quantity string, or None when it is not one."""
    found = QUANTITY.match(text)
    if found is None:
        return None
    number, suffix = Decimal(found.group(1)), found.group(2) or ""
    if suffix[:1] in ("e", "E"):
        return number * Decimal(10) ** Decimal(suffix[1:])
    return number * Decimal(SUFFIXES[suffix])


class Quantity:
    """A value of CEL's Kubernetes `quantity` type."""

    def __init__(self, value: Decimal):
        self.value = value


def _cel_quantity(text: celtypes.StringType) -> Quantity:
    value = quantity(str(text))
    if value is None:
        raise ValueError(f"invalid quantity {text!r}")
    return Quantity(value)


def _cel_compare(left: Quantity, right: Quantity) -> celtypes.IntType:
    return celtypes.IntType((left.value > right.value) - (left.value < right.value))


CEL_FUNCTIONS = {
    "isQuantity": lambda text: celtypes.BoolType(quantity(str(text)) is not None),
    "quantity": _cel_quantity,
    "compareTo": _cel_compare,
}


@cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=CEL_FUNCTIONS)


def to_cel(value: Any, schema: dict) -> Any:
    """`value` as the API server hands it to CEL: typed by the schema, not by how JSON spelled it."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or not schema:
        return celpy.json_to_cel(value)
    if isinstance(value, dict):
        properties, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        return celtypes.MapType({celtypes.StringType(k): to_cel(v, properties.get(k) or (extra if isinstance(extra, dict) else {}))
                                 for k, v in value.items()})
    if isinstance(value, list):
        return celtypes.ListType([to_cel(item, schema.get("items") or {}) for item in value])
    if schema.get("type") == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return celtypes.DoubleType(value)
    return celpy.json_to_cel(value)


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}.get(type(value), "object")


def cel_errors(value: Any, schema: dict, path: str = "") -> list[str]:
    """Every `x-kubernetes-validations` rule of `schema` (and its sub-schemas) that `value` breaks."""
    errors = []
    for rule in schema.get("x-kubernetes-validations") or []:
        if "oldSelf" in rule["rule"]:
            continue  # transition rules need the stored object; the CRD has none
        try:
            passed = bool(_program(rule["rule"]).evaluate({"self": to_cel(value, schema)}))
            detail = rule.get("message") or f"failed rule: {rule['rule']}"
        except celpy.CELEvalError as exc:
            passed, detail = False, f"rule evaluation error: {exc.args[0]}"
        if not passed:
            field = path + rule.get("fieldPath", "")
            errors.append(f'{field.lstrip(".") or "<nil>"}: Invalid value: "{_type_name(value)}": {detail}')
    if isinstance(value, dict):
        properties, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key) or (extra if isinstance(extra, dict) else None)
            if sub is not None:
                errors += cel_errors(item, sub, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            errors += cel_errors(item, schema["items"], f"{path}[{index}]")
    return errors


_VALIDATORS: dict[int, tuple[dict, jsonschema.protocols.Validator]] = {}  # id -> (schema kept alive, validator)


def _validator(schema: dict) -> jsonschema.protocols.Validator:
    """One checked validator per schema (`jsonschema.validate` checks the schema on every call)."""
    if id(schema) not in _VALIDATORS:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        _VALIDATORS[id(schema)] = (schema, cls(schema))
    return _VALIDATORS[id(schema)][1]


def custom_resource_errors(obj: dict, schema: dict) -> list[str]:
    """What the API server says about a custom resource: its schema first, then its CEL rules."""
    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors({k: v for k, v in obj.items() if k != "metadata"}))
    if error is not None:
        return [f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"]
    return cel_errors(obj, schema)


def job_errors(job: dict) -> list[str]:
    """The API server's checks of a Job's containers and their resources: valid quantities, requests <= limits."""
    containers = ((job.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers")
    if not containers:
        return ["spec.template.spec.containers: Required value"]
    errors = []
    for index, container in enumerate(containers):
        where = f"spec.template.spec.containers[{index}].resources"
        resources = container.get("resources") or {}
        values: dict[str, dict[str, Decimal]] = {}
        for section in ("limits", "requests"):
            values[section] = {}
            for name, amount in (resources.get(section) or {}).items():
                parsed = quantity(str(amount)) if isinstance(amount, (str, int)) and not isinstance(amount, bool) else None
                if parsed is None:
                    errors.append(f'{where}.{section}[{name}]: Invalid value: "{amount}": quantities must match '
                                  "the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")
                else:
                    values[section][name] = parsed
        for name, request in values["requests"].items():
            limit = values["limits"].get(name)
            if limit is not None and request > limit:
                errors.append(f'{where}.requests[{name}]: Invalid value: "{resources["requests"][name]}": '
                              f"must be less than or equal to {name} limit of {resources['limits'][name]}")
    return errors


INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]
BRANCH_GENERICS = ("type", "description", "nullable", "default", "additionalProperties", "title")


def crd_errors(crd: dict) -> list[str]:
    """What the API server says about a CustomResourceDefinition it refuses: schemas that are not
    structural (the checks a CRD author trips on), then CEL rules over the cost budget."""
    errors = []
    for where, schema in version_schemas(crd):
        errors += _structural_errors(schema, where, root=True)
    return errors or budget_errors(crd)


def _structural_errors(schema: dict, where: str, *, root: bool = False, specified: bool = False) -> list[str]:
    errors = []
    int_or_string = schema.get("x-kubernetes-int-or-string")
    if specified and not schema.get("type") and not int_or_string and not schema.get("x-kubernetes-preserve-unknown-fields"):
        errors.append(f"{where}.type: Required value: must not be empty for specified object fields")
    for keyword in ("anyOf", "allOf", "oneOf"):
        for index, branch in enumerate(schema.get(keyword) or []):
            if int_or_string and keyword == "anyOf" and schema["anyOf"] == INT_OR_STRING:
                continue  # the one shape of an int-or-string allowed to name types
            errors += [f"{where}.{keyword}[{index}].{generic}: Forbidden: must be empty to be structural"
                       for generic in BRANCH_GENERICS if generic in branch]
    if root and "metadata" in (schema.get("properties") or {}):
        metadata = schema["properties"]["metadata"]
        if set(metadata) - {"type", "properties"} or set(metadata.get("properties") or {}) - {"name", "generateName"}:
            errors.append(f"{where}.properties[metadata]: Forbidden: must not specify anything other than name and "
                          "generateName, but metadata is implicitly specified")
    for name, sub in (schema.get("properties") or {}).items():
        errors += _structural_errors(sub, f"{where}.properties[{name}]", specified=True)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            errors += _structural_errors(schema[key], f"{where}.{key}", specified=True)
    return errors
