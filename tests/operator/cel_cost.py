"""The API server's static cost estimate of a CRD's CEL rules, for the fake API and the chart tests.

Before it accepts a CRD the API server estimates each `x-kubernetes-validations` rule's worst-case
cost from the schema's size bounds and refuses the CRD when one rule (times the number of times it
can run) is over 10,000,000 or all of them together are over 100,000,000 (Kubernetes docs, "CRD
validation rules: resource use by validation functions"; kubernetes.md, 2026-12-04). cel-python
evaluates rules but estimates nothing, so this module mirrors the estimate itself:

- sizes from the schema as `SchemaDeclType` derives them (apiserver `pkg/cel/common/schemas.go`):
  `maxLength` x 4 bytes, `maxItems`, `maxProperties`, the longest enum value, fixed sizes of
  date/date-time/duration; the worst case a 3 MiB request allows where the schema gives no bound;
  map keys size 0; at a resource's root, `metadata.name`/`generateName` unbounded unless the CRD
  declares both;
- the cost of each construct as cel-go's `checker/cost.go` and Kubernetes' `library/cost.go`
  charge it (selects and identifiers 1, comprehensions per element, string functions per
  character, regexes per character times pattern length, quantities per character);
- a rule's cardinality: the product of `maxItems`/`maxProperties` above it, or the worst case.

Calibrated on the real server: the requests <= limits rule without `maxLength` on its quantities
estimates 4.03 x the per-rule limit here, and kube-apiserver 1.36.2 reported "4.0x". A rule using a
construct not listed here fails the estimate with a message that names it (`UnsupportedRule`), so a
new rule is either costed or noticed, never waved through.

`legacy=True` models API servers before 1.34, which ignore `maxLength` on an int-or-string
(kubernetes/kubernetes#132837): such a value then costs as a 3 MiB string.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import celpy
from lark import Token, Tree

PER_RULE_LIMIT = 10_000_000  # StaticEstimatedCostLimit
PER_CRD_LIMIT = 100_000_000  # StaticEstimatedCRDCostLimit
MAX_REQUEST_BYTES = 3 * 1024 * 1024
UNBOUNDED_STRING = MAX_REQUEST_BYTES - 2  # a string filling a whole request, less its quotes
UNKNOWN = 2**64 - 1  # cel-go's unknown size: the estimate is then effectively infinite
STRING_TRAVERSAL = 0.1  # common.StringTraversalCostFactor
REGEX_LENGTH = 0.25  # common.RegexStringLengthCostFactor
LIST_CREATE, MAP_CREATE = 10, 30
SCALARS = {"bool", "int", "uint", "double", "timestamp", "duration"}
MACROS = {"all", "exists", "exists_one", "map", "filter"}


class UnsupportedRule(ValueError):
    """The rule uses a construct this estimate does not cost yet."""


# ---- the schema as CEL sees it ------------------------------------------------------------------
@dataclass
class Decl:
    """A schema node as a CEL declaration: its kind, its largest size, and whether the CRD bounds it."""

    kind: str  # object, map, list, string, bytes, dyn (int-or-string), int, double, bool, timestamp, duration
    max_elements: int = 0
    min_size: int = 0  # smallest JSON serialisation, which bounds how many fit in a request
    bounded: bool = True
    fields: dict[str, Decl] = field(default_factory=dict)
    elem: Decl | None = None
    key: Decl | None = None


def decl(schema: dict, *, root: bool = False, legacy: bool = False) -> Decl | None:
    """`schema` as the API server declares it to CEL; None where CEL cannot see it."""
    if schema.get("x-kubernetes-int-or-string"):
        declared = "maxLength" in schema and not legacy
        return Decl("dyn", schema["maxLength"] * 4 if declared else UNBOUNDED_STRING, 1, declared)
    if root or schema.get("x-kubernetes-embedded-resource"):
        schema = with_type_and_object_meta(schema)
    kind = schema.get("type")
    if kind == "array":
        if not isinstance(schema.get("items"), dict):
            return None
        items = decl(schema["items"], root=bool(schema["items"].get("x-kubernetes-embedded-resource")), legacy=legacy)
        if items is None:
            return None
        declared = "maxItems" in schema
        return Decl("list", schema["maxItems"] if declared else UNBOUNDED_STRING // (items.min_size + 1), 2, declared,
                    elem=items)
    if kind == "object":
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            values = decl(extra, root=bool(extra.get("x-kubernetes-embedded-resource")), legacy=legacy)
            if values is None:
                return None
            declared = "maxProperties" in schema
            return Decl("map", schema["maxProperties"] if declared else UNBOUNDED_STRING // (values.min_size + 6), 2,
                        declared, elem=values, key=Decl("string", 0, 2))
        fields, min_size = {}, 2
        required = set(schema.get("required") or ())
        for name, prop in (schema.get("properties") or {}).items():
            sub = decl(prop, root=bool(prop.get("x-kubernetes-embedded-resource")), legacy=legacy)
            if sub is None:
                continue
            fields[name] = sub
            if name in required and "default" not in prop:
                min_size += len(name) + sub.min_size + 4
        return Decl("object", 0, min_size, fields=fields)
    if kind == "string":
        fixed = {"date": 12, "date-time": 32, "duration": 32}.get(schema.get("format", ""))
        cel_kind = {"byte": "bytes", "date": "timestamp", "date-time": "timestamp", "duration": "duration"}.get(
            schema.get("format", ""), "string")
        if fixed is not None:
            return Decl(cel_kind, fixed, 2)
        if "maxLength" in schema:
            return Decl(cel_kind, schema["maxLength"] * (1 if cel_kind == "bytes" else 4), 2)
        if schema.get("enum"):
            return Decl(cel_kind, max(len(str(v)) for v in schema["enum"]), 2)
        return Decl(cel_kind, UNBOUNDED_STRING, 2, bounded=False)
    return {"boolean": Decl("bool", 0, 4), "number": Decl("double", 0, 1), "integer": Decl("int", 0, 1)}.get(kind)


def with_type_and_object_meta(schema: dict) -> dict:
    """A resource root: kind, apiVersion, metadata.name and metadata.generateName are always there,
    and unbounded unless the schema declares all four as strings."""
    props = schema.get("properties") or {}
    meta = props.get("metadata") or {}
    if (props.get("kind", {}).get("type") == "string" and props.get("apiVersion", {}).get("type") == "string"
            and meta.get("type") == "object"
            and all((meta.get("properties") or {}).get(n, {}).get("type") == "string" for n in ("name", "generateName"))):
        return schema
    string = {"type": "string"}
    return {**schema, "properties": {**props, "kind": string, "apiVersion": string,
                                     "metadata": {"type": "object", "properties": {"name": string, "generateName": string}}}}


def resolve(root: Decl, path: tuple[str, ...]) -> Decl | None:
    """The declaration a field path (`self`, field names, `@items`, `@keys`, `@values`) leads to."""
    node: Decl | None = root
    for name in path[1:]:
        if node is None:
            return None
        node = node.key if name == "@keys" else node.elem if name in ("@items", "@values") else node.fields.get(name)
    return node


def unbounded_within(node: Decl, where: str) -> Iterator[str]:
    """Every string, list and map at or under `node` without a declared bound (map keys cannot have one)."""
    if node.kind in ("string", "bytes", "dyn", "list", "map") and not node.bounded:
        yield where
    for name, sub in node.fields.items():
        yield from unbounded_within(sub, f"{where}.{name}")
    if node.elem is not None:
        yield from unbounded_within(node.elem, f"{where}[*]")


def path_name(path: tuple[str, ...]) -> str:
    """`self.requests[*]` for ("self", "requests", "@values")."""
    return "".join("[*]" if p in ("@items", "@values") else f".{p}" if i else p for i, p in enumerate(path))


# ---- the expression ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Expr:
    op: str  # literal, ident, select, has, call, list, map, macro
    args: tuple[Expr, ...] = ()
    name: str = ""  # identifier, field, function or macro name
    value: Any = None  # a literal's value
    kind: str = "dyn"  # a literal's type
    target: Expr | None = None  # receiver of a member call or macro


LITERAL_KINDS = {"INT_LIT": "int", "UINT_LIT": "uint", "FLOAT_LIT": "double", "STRING_LIT": "string",
                 "MLSTRING_LIT": "string", "BYTES_LIT": "bytes", "BOOL_LIT": "bool", "NULL_LIT": "null"}
OPERATORS = {"relation_lt": "_<_", "relation_le": "_<=_", "relation_gt": "_>_", "relation_ge": "_>=_",
             "relation_eq": "_==_", "relation_ne": "_!=_", "relation_in": "@in", "addition_add": "_+_",
             "addition_sub": "_-_", "multiplication_mul": "_*_", "multiplication_div": "_/_",
             "multiplication_mod": "_%_", "unary_not": "!_", "unary_neg": "-_"}


@cache
def parse(rule: str) -> Expr:
    """A rule's syntax tree (cel-python's parser), reduced to what the estimate needs."""
    return _convert(celpy.Environment().compile(rule))


def _children(tree: Tree) -> list:
    return [c for c in tree.children if c is not None]


def _convert(tree: Tree | Token) -> Expr:  # noqa: C901, PLR0911, PLR0912 - one case per grammar rule
    kids = _children(tree)
    rule = tree.data
    if rule in ("expr", "conditionalor", "conditionaland", "relation", "addition", "multiplication"):
        if len(kids) == 1:
            return _convert(kids[0])
        if rule == "expr":
            return Expr("call", tuple(_convert(k) for k in kids), "_?_:_")
        if rule in ("conditionalor", "conditionaland"):
            return Expr("call", (_convert(kids[0]), _convert(kids[1])), "_||_" if rule == "conditionalor" else "_&&_")
        operator, right = kids
        return Expr("call", (_convert(_children(operator)[0]), _convert(right)), OPERATORS[operator.data])
    if rule == "unary":
        if len(kids) == 1:
            return _convert(kids[0])
        return Expr("call", (_convert(kids[1]),), OPERATORS[kids[0].data])
    if rule in ("member", "primary", "paren_expr"):
        return _convert(kids[0])
    if rule == "member_dot":
        return Expr("select", (_convert(kids[0]),), str(kids[1]))
    if rule in ("member_dot_arg", "ident_arg"):
        target = _convert(kids[0]) if rule == "member_dot_arg" else None
        name = str(kids[1] if target is not None else kids[0])
        exprlist = kids[2] if target is not None and len(kids) > 2 else kids[1] if target is None and len(kids) > 1 else None
        args = tuple(_convert(a) for a in _children(exprlist)) if exprlist is not None else ()
        if name == "has" and target is None:
            (selected,) = args
            if selected.op != "select":
                raise UnsupportedRule("has() takes a field selection")
            return Expr("has", selected.args, selected.name)
        if name in MACROS and target is not None and args and args[0].op == "ident" and len(args) == 2:
            return Expr("macro", args[1:], name, value=args[0].name, target=target)
        return Expr("call", args, name, target=target)
    if rule == "member_index":
        return Expr("call", (_convert(kids[0]), _convert(kids[1])), "_[_]")
    if rule == "ident":
        return Expr("ident", name=str(kids[0]))
    if rule == "list_lit":
        return Expr("list", tuple(_convert(a) for a in _children(kids[0])) if kids else ())
    if rule == "map_lit":
        return Expr("map", tuple(_convert(a) for a in _children(kids[0])) if kids else ())
    if rule == "literal":
        token = kids[0]
        return Expr("literal", value=_literal_value(str(token)), kind=LITERAL_KINDS[token.type])
    raise UnsupportedRule(f"the cost estimate does not know the construct {rule!r}")


@cache
def _literal_value(text: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(text)).evaluate({})


# ---- the estimate --------------------------------------------------------------------------------
def _add(*values: int) -> int:
    return min(sum(values), UNKNOWN)


def _mul(a: int, b: int) -> int:
    return min(a * b, UNKNOWN)


def _factor(size: int, factor: float) -> int:
    """cel-go's MultiplyByCostFactor: float64 arithmetic, rounded up (mirrored exactly)."""
    return min(math.ceil(float(size) * factor), UNKNOWN)


@dataclass
class Node:
    """What the estimate knows about one evaluated subexpression."""

    cost: int
    kind: str = "dyn"
    path: tuple[str, ...] | None = None  # from `self`/`oldSelf` through the schema
    size: int | None = None  # largest size when the expression itself says (literals, call results)
    entry: int | None = None  # largest element of a literal list or map


@dataclass
class Estimator:
    """Walks one rule, charging what cel-go's coster charges; `read` collects the paths the rule
    reads whole (not only passes through on the way to a field)."""

    root: Decl
    locals: dict[str, list[Node]] = field(default_factory=dict)
    read: set[tuple[str, ...]] = field(default_factory=set)

    def size(self, node: Node) -> int:
        """cel-go's sizeOrUnknown: computed size, else the schema's (by path), else 1 for scalars."""
        if node.size is not None:
            return node.size
        if node.path:
            found = resolve(self.root, node.path)
            if found is not None:
                return found.max_elements
        return 1 if node.kind in SCALARS else UNKNOWN

    def kind_at(self, path: tuple[str, ...]) -> str:
        found = resolve(self.root, path)
        return "struct" if found is not None and found.kind == "object" else found.kind if found else "dyn"

    def cost(self, expr: Expr, whole: bool = True) -> Node:
        node = getattr(self, f"_{expr.op}")(expr)
        if whole and node.path:
            self.read.add(node.path)
        return node

    def _literal(self, expr: Expr) -> Node:
        value = expr.value
        size = len(str(value)) if expr.kind == "string" else len(value) if expr.kind == "bytes" else 1
        return Node(0, expr.kind, size=size)

    def _ident(self, expr: Expr) -> Node:
        if expr.name in ("self", "oldSelf"):
            return Node(1, self.kind_at(("self",)), path=("self",))
        if self.locals.get(expr.name):
            local = self.locals[expr.name][-1]  # its schema size (by path) comes before a literal's
            return Node(1, local.kind, local.path, None if local.path else local.size)
        if expr.name in ("int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type"):
            return Node(1, "type")
        raise UnsupportedRule(f"unknown identifier {expr.name!r}")

    def _select(self, expr: Expr) -> Node:
        operand = self.cost(expr.args[0], whole=False)
        cost = operand.cost + (1 if operand.kind in ("struct", "map") else 0)
        path = operand.path + (expr.name,) if operand.path else None
        return Node(cost, self.kind_at(path) if path else "dyn", path)

    def _has(self, expr: Expr) -> Node:
        return Node(1 + self.cost(expr.args[0], whole=False).cost, "bool")

    def _list(self, expr: Expr) -> Node:
        items = [self.cost(e) for e in expr.args]
        entry = max((self.size(i) for i in items), default=0)
        return Node(_add(LIST_CREATE, *(i.cost for i in items)), "list", size=len(items), entry=entry)

    def _map(self, expr: Expr) -> Node:
        parts = [self.cost(e) for e in expr.args]
        entry = max((self.size(p) for p in parts[1::2]), default=0)
        return Node(_add(MAP_CREATE, *(p.cost for p in parts)), "map", size=len(parts) // 2, entry=entry)

    def _macro(self, expr: Expr) -> Node:
        """A comprehension: the range once, then (loop condition + step) per element, as cel-go's
        macros expand them (accumulator reads cost 1, `[]` literals 10)."""
        target = self.cost(expr.target)
        count = self.size(target)
        element_path = target.path + ("@keys" if target.kind == "map" else "@items",) if target.path else None
        element = Node(0, self.kind_at(element_path) if element_path else "dyn", element_path, target.entry)
        self.locals.setdefault(expr.value, []).append(element)
        try:
            body = self.cost(expr.args[0]).cost
        finally:
            self.locals[expr.value].pop()
        condition, step, init, result = {
            "all": (2, 1 + body, 0, 1),  # @not_strictly_false(r); r && p
            "exists": (3, 1 + body, 0, 1),  # @not_strictly_false(!r); r || p
            "exists_one": (0, body + 2, 0, 2),  # p ? r + 1 : r; r == 1
            "map": (0, 1 + 1 + LIST_CREATE + body, LIST_CREATE, 1),  # r + [f(x)]
            "filter": (0, body + 1 + 1 + LIST_CREATE + 1, LIST_CREATE, 1),  # p ? r + [x] : r
        }[expr.name]
        cost = _add(target.cost, init, result, _mul(count, condition + step))
        kind = "bool" if expr.name in ("all", "exists", "exists_one") else "list"
        return Node(cost, kind, size=count if kind == "list" else None)

    def _call(self, expr: Expr) -> Node:  # noqa: C901, PLR0911, PLR0912 - one case per function
        name = expr.name
        if name in ("_&&_", "_||_"):
            left, right = (self.cost(a) for a in expr.args)
            return Node(_add(left.cost, right.cost), "bool")
        if name == "_?_:_":
            cond, yes, no = (self.cost(a) for a in expr.args)
            return Node(_add(cond.cost, max(yes.cost, no.cost)), yes.kind, size=max(self.size(yes), self.size(no)))
        target = self.cost(expr.target) if expr.target is not None else None
        args = [self.cost(a, whole=not (name == "_[_]" and i == 0)) for i, a in enumerate(expr.args)]
        paid = _add(*(a.cost for a in args), target.cost if target else 0)
        sizes = [self.size(a) for a in args]
        kinds = [a.kind for a in args]
        if name in ("_==_", "_!=_") or (name in ("_<_", "_<=_", "_>_", "_>=_") and _both(kinds, ("string", "bytes"))):
            own = _factor(min(sizes), STRING_TRAVERSAL)
            if name not in ("_==_", "_!=_") and "dyn" in kinds:
                own = max(own, 1)  # a dyn operand also matches the numeric overloads
            return Node(_add(paid, own), "bool")
        if name in ("!_", "-_", "_<_", "_<=_", "_>_", "_>=_", "_-_", "_*_", "_/_", "_%_"):
            return Node(_add(paid, 1), "bool" if name.startswith(("!", "_<", "_>")) else kinds[0])
        if name == "_+_":
            if _both(kinds, ("string", "bytes")):
                joined = _add(*sizes)
                own = _factor(joined, STRING_TRAVERSAL) if "dyn" not in kinds else max(1, _factor(joined, STRING_TRAVERSAL))
                return Node(_add(paid, own), kinds[0] if kinds[0] != "dyn" else kinds[1], size=joined)
            if _both(kinds, ("list",)):
                return Node(_add(paid, 1), "list", size=_add(*sizes))
            return Node(_add(paid, 1), kinds[0])
        if name == "@in":
            container = kinds[1]
            own = 1 if container in ("map", "struct") else sizes[1] if container == "list" else max(1, sizes[1])
            return Node(_add(paid, own), "bool")
        if name == "_[_]":
            container = args[0]
            suffix = "@values" if container.kind == "map" else "@items"
            path = container.path + (suffix,) if container.path else None
            return Node(_add(paid, 1), self.kind_at(path) if path else "dyn", path, size=container.entry)
        if name == "size":
            return Node(_add(paid, 1), "int")
        if name == "string" and target is None:
            (arg,) = args
            if arg.kind in ("bytes", "dyn"):  # bytes_to_string is among a dyn argument's overloads
                return Node(_add(paid, max(1, _factor(sizes[0], STRING_TRAVERSAL))), "string", size=sizes[0])
            return Node(_add(paid, 1), "string")  # string_to_string, int64_to_string, ...: size unknown
        if name in ("int", "uint", "double", "bool", "dyn", "type", "duration", "timestamp") and target is None:
            result = {"dyn": args[0].kind, "type": "type"}.get(name, name)
            return Node(_add(paid, 1), result, size=sizes[0] if name == "dyn" else None)
        if name in ("isQuantity", "quantity") and target is None:
            return Node(_add(paid, _factor(sizes[0], STRING_TRAVERSAL)), "bool" if name == "isQuantity" else "quantity")
        if target is None:
            raise UnsupportedRule(f"the cost estimate does not know the function {name}()")
        own_size = self.size(target)
        if name == "matches":
            text = _factor(_add(own_size, 1), STRING_TRAVERSAL)
            return Node(_add(paid, _mul(text, _factor(sizes[0], REGEX_LENGTH))), "bool")
        if name == "contains":
            return Node(_add(paid, _mul(_factor(own_size, STRING_TRAVERSAL), _factor(sizes[0], STRING_TRAVERSAL))), "bool")
        if name in ("startsWith", "endsWith"):
            return Node(_add(paid, _factor(sizes[0], STRING_TRAVERSAL)), "bool")
        if name in ("lowerAscii", "upperAscii", "trim", "substring"):
            return Node(_add(paid, _factor(own_size, STRING_TRAVERSAL)), "string", size=own_size)
        if name == "split":
            limit = expr.args[1].value if len(expr.args) > 1 and expr.args[1].op == "literal" else own_size
            return Node(_add(paid, _factor(own_size, 2 * STRING_TRAVERSAL)), "list", size=limit)
        if name in ("compareTo", "isGreaterThan", "isLessThan", "add", "sub", "sign", "asInteger", "isInteger",
                    "asApproximateFloat"):
            result = {"add": "quantity", "sub": "quantity", "asApproximateFloat": "double"}.get(name, "int")
            return Node(_add(paid, 1), "bool" if name.startswith("is") else result)
        raise UnsupportedRule(f"the cost estimate does not know the method .{name}()")


def _both(kinds: list[str], wanted: tuple[str, ...]) -> bool:
    return all(k in wanted or k == "dyn" for k in kinds) and any(k in wanted for k in kinds)


# ---- a whole CRD ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class RuleCost:
    """One rule (or messageExpression) as the API server charges it."""

    where: str  # the API server's field path of the rule
    expression: str
    cost: int  # one evaluation
    cardinality: int  # how many times it can run in one object
    unbounded: tuple[str, ...]  # what the rule reads that has no declared bound

    @property
    def total(self) -> int:
        return _mul(self.cost, self.cardinality)


def rule_costs(schema: dict, where: str = "openAPIV3Schema", *, legacy: bool = False) -> list[RuleCost]:
    """Every rule of a version's openAPIV3Schema with its estimate, walked as the API server walks it."""
    found: list[RuleCost] = []
    _walk(schema, where, True, 1, found, legacy)
    return found


def _walk(schema: dict, where: str, root: bool, cardinality: int | None, found: list[RuleCost], legacy: bool) -> None:
    rules = schema.get("x-kubernetes-validations") or []
    if rules:
        scope = decl(schema, root=root, legacy=legacy)
        if scope is None:
            raise UnsupportedRule(f"{where}: rules on a schema CEL cannot see")
        times = cardinality if cardinality is not None else MAX_REQUEST_BYTES // (scope.min_size + 1)
        for index, rule in enumerate(rules):
            for key in ("rule", "messageExpression"):
                if rule.get(key):
                    estimator = Estimator(scope)
                    cost = estimator.cost(parse(rule[key])).cost
                    unbounded = tuple(sorted({u for p in estimator.read for u in _unbounded_at(scope, p)}))
                    found.append(RuleCost(f"{where}.x-kubernetes-validations[{index}].{key}", rule[key], cost,
                                          times, unbounded))
    factor = _growth(schema)
    inner = None if cardinality is None or factor is None else cardinality * factor
    for name, sub in (schema.get("properties") or {}).items():
        _walk(sub, f"{where}.properties[{name}]", False, inner, found, legacy)
    if isinstance(schema.get("additionalProperties"), dict):
        _walk(schema["additionalProperties"], f"{where}.additionalProperties", False, inner, found, legacy)
    if isinstance(schema.get("items"), dict):
        _walk(schema["items"], f"{where}.items", False, inner, found, legacy)


def _unbounded_at(scope: Decl, path: tuple[str, ...]) -> Iterator[str]:
    node = resolve(scope, path)
    if node is not None and path[-1] != "@keys":
        yield from unbounded_within(node, path_name(path))


def _growth(schema: dict) -> int | None:
    """How many times a child can occur per occurrence of `schema` (None: unbounded)."""
    if schema.get("type") == "array":
        return schema.get("maxItems")
    if schema.get("type") == "object" and isinstance(schema.get("additionalProperties"), dict):
        return schema.get("maxProperties")
    return 1


def version_schemas(crd: dict) -> list[tuple[str, dict]]:
    """(field path, openAPIV3Schema) per version; one shared path when every version's schema is the
    same, as the API server names it (`spec.validation`)."""
    versions = crd["spec"]["versions"]
    schemas = [v["schema"]["openAPIV3Schema"] for v in versions]
    if all(s == schemas[0] for s in schemas):
        return [("spec.validation.openAPIV3Schema", schemas[0])]
    return [(f"spec.versions[{i}].schema.openAPIV3Schema", s) for i, s in enumerate(schemas)]


def budget_errors(crd: dict) -> list[str]:
    """What the API server says about a CRD over the CEL cost budget (empty: within it)."""
    errors = []
    for where, schema in version_schemas(crd):
        costs = rule_costs(schema, where)
        for rule in costs:
            if rule.total > PER_RULE_LIMIT:
                noun = "rule" if rule.where.endswith(".rule") else "messageExpression"
                errors.append(f"{rule.where}: Forbidden: {over_budget(f'estimated {noun} cost', rule.total, PER_RULE_LIMIT)}")
        total = sum(rule.total for rule in costs)
        if total > PER_CRD_LIMIT:
            for rule in sorted(costs, key=lambda r: -r.total)[:4]:
                if rule.total >= PER_CRD_LIMIT // 100:
                    errors.append(f"{rule.where}: Forbidden: contributed to estimated rule cost total exceeding "
                                  "cost limit for entire OpenAPIv3 schema")
            errors.append(f"{where}: Forbidden: " + over_budget(
                "x-kubernetes-validations estimated rule cost total for entire OpenAPIv3 schema", total, PER_CRD_LIMIT))
    return errors


def over_budget(what: str, cost: int, limit: int) -> str:
    """The API server's wording (getCostErrorMessage)."""
    factor = cost / limit
    shown = "more than 100x" if factor > 100 else f"{factor:f}x" if factor < 1.5 else f"{factor:.1f}x"
    return (f"{what} exceeds budget by factor of {shown} (try simplifying the rule, or adding maxItems, "
            "maxProperties, and maxLength where arrays, maps, and strings are declared)")
