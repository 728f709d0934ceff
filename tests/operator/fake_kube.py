"""A small, honest in-process Kubernetes API server for the operator's tests.

No kube-apiserver can run here, so this implements the slice of its HTTP API that kopf and the
official `kubernetes` client use, with the semantics they depend on:

- discovery (`/api`, `/apis`, `/api/v1`, `/apis/GROUP/VERSION`, with `X/status` subresources);
- create / get / list / replace / patch / delete, namespaced, with label selectors;
- a global `resourceVersion`, `uid`, `creationTimestamp`, and `generation` that grows only when
  something other than metadata and status changes;
- list + watch from a resourceVersion as newline-delimited JSON; every write is a watch event;
- merge patches (strategic merge treated as merge; refused with 415 for custom resources, as the
  real server does), JSON patches with `test` (422 on mismatch), optimistic concurrency on PUT;
- the status subresource: the main endpoint ignores `status`, `/status` changes only `status`;
- deletion with finalizers (deletionTimestamp first) and garbage collection of dependents through
  ownerReferences (what the real garbage collector does, done at once);
- CustomResourceDefinitions refused as the API server refuses them (a non-structural schema, CEL
  rules over the static cost budget: `admission.py`, `cel_cost.py`), and once created their
  resources pruned and validated against the openAPIV3Schema and its CEL rules; Jobs checked as
  the API server checks their resources (422);
- every request recorded as the (verb, resource) RBAC would authorise (`FakeKube.access`), with the
  `update` on the owner's `finalizers` that OwnerReferencesPermissionEnforcement demands for a
  `blockOwnerDeletion` owner reference (kubernetes.md #6).

Tests drive it over HTTP like any client, or directly through `FakeKube.create/patch/...` (the
"kubelet" and "Job controller" parts). Everything runs on the test's event loop.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import jsonpatch
from aiohttp import web

from tests.operator.admission import crd_errors, custom_resource_errors, job_errors


@dataclass(frozen=True)
class Kind:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status: bool = False  # has the status subresource
    custom: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS = (
    Kind("", "v1", "namespaces", "Namespace", namespaced=False, status=True),
    Kind("", "v1", "configmaps", "ConfigMap"),
    Kind("", "v1", "secrets", "Secret"),
    Kind("", "v1", "events", "Event"),
    Kind("", "v1", "endpoints", "Endpoints"),
    Kind("", "v1", "pods", "Pod", status=True),
    Kind("batch", "v1", "jobs", "Job", status=True),
    Kind("personafleet.io", "v1alpha1", "personamodels", "PersonaModel", status=True, custom=True),
    Kind("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", namespaced=False,
         status=True),
)
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def response(self) -> web.Response:
        body = {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": self.reason, "message": self.message, "code": self.code}
        return web.json_response(body, status=self.code)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def prune(value: Any, schema: dict) -> Any:
    """Drop fields a structural schema does not declare, unless it preserves unknown fields."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return value
    if isinstance(value, dict):
        if "properties" in schema:
            return {k: prune(v, schema["properties"][k]) for k, v in value.items() if k in schema["properties"]}
        if isinstance(schema.get("additionalProperties"), dict):
            return {k: prune(v, schema["additionalProperties"]) for k, v in value.items()}
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"]) for item in value]
    return value


def matches_labels(obj: dict, selector: str | None) -> bool:
    """Equality- and existence-based label selectors (`a=b,c!=d,e,!f`, `g in (x,y)`)."""
    labels = obj.get("metadata", {}).get("labels") or {}
    for term in _split_selector(selector or ""):
        if " in " in term or " notin " in term:
            key, op, values = term.split(None, 2)
            allowed = {v.strip() for v in values.strip("()").split(",")}
            if (labels.get(key) in allowed) != (op == "in"):
                return False
        elif "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _split_selector(selector: str) -> Iterator[str]:
    depth, start = 0, 0
    for i, char in enumerate(selector):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            yield selector[start:i].strip()
            start = i + 1
    if selector[start:].strip():
        yield selector[start:].strip()


@dataclass
class _Watcher:
    kind: Kind
    namespace: str | None
    selector: str | None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class FakeKube:
    """The object store, its watch fan-out, and the HTTP app that exposes both."""

    def __init__(self, crd_schemas: dict[str, dict] | None = None):
        self.objects: dict[tuple[str, str | None, str], dict] = {}  # (plural, namespace, name) -> object
        self.history: list[tuple[int, Kind, dict]] = []  # (resourceVersion, kind, event)
        self.access: list[tuple[str, str, str]] = []  # (apiGroup, resource, verb) of every request, in order
        self._rv = 0
        self._watchers: list[_Watcher] = []
        self._schemas = crd_schemas or {}
        self._kinds = {k.plural: k for k in KINDS}
        self.create("namespaces", {"metadata": {"name": "default"}})

    # ---- the store ------------------------------------------------------------------------
    def kind(self, plural: str) -> Kind:
        try:
            return self._kinds[plural]
        except KeyError:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({plural})") from None

    def get(self, plural: str, namespace: str | None, name: str) -> dict:
        kind = self.kind(plural)
        obj = self.objects.get((plural, namespace if kind.namespaced else None, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{plural} "{name}" not found')
        return copy.deepcopy(obj)

    def list(self, plural: str, namespace: str | None = None, selector: str | None = None) -> list[dict]:
        self.kind(plural)
        return [copy.deepcopy(obj) for (p, ns, _), obj in sorted(self.objects.items(), key=lambda kv: (kv[0][1] or '', kv[0][2]))
                if p == plural and (namespace is None or ns == namespace) and matches_labels(obj, selector)]

    def create(self, plural: str, body: dict, namespace: str | None = None) -> dict:
        kind = self.kind(plural)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        ns = (namespace or meta.get("namespace") or "default") if kind.namespaced else None
        if kind.namespaced and ("namespaces", None, ns) not in self.objects:
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found')
        key = (plural, ns, meta["name"])
        if key in self.objects:
            raise ApiError(409, "AlreadyExists", f'{plural} "{meta["name"]}" already exists')
        if kind.status and kind.plural != "namespaces":
            obj.pop("status", None)  # the status subresource ignores status on create
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        if ns:
            meta["namespace"] = ns
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        self._validate(kind, obj)
        if kind.plural == "customresourcedefinitions":
            self._serve(obj)
        return self._store(kind, key, obj, "ADDED")

    def _serve(self, crd: dict) -> None:
        """Validate the resources of a created CRD against its storage version's schema."""
        storage = next(v for v in crd["spec"]["versions"] if v.get("storage"))
        self._schemas[crd["spec"]["names"]["plural"]] = storage["schema"]["openAPIV3Schema"]

    def replace(self, plural: str, namespace: str | None, name: str, body: dict, *, subresource: str | None = None) -> dict:
        kind = self.kind(plural)
        current = self.get(plural, namespace, name)
        wanted = body.get("metadata", {}).get("resourceVersion")
        if wanted and wanted != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": '
                                            "the object has been modified; please apply your changes to the latest version")
        return self._update(kind, current, copy.deepcopy(body), subresource)

    def patch(self, plural: str, namespace: str | None, name: str, patch: Any, *,
              content_type: str = "application/merge-patch+json", subresource: str | None = None) -> dict:
        kind = self.kind(plural)
        current = self.get(plural, namespace, name)
        if content_type == "application/json-patch+json":
            try:
                wanted = jsonpatch.apply_patch(current, patch)
            except jsonpatch.JsonPatchTestFailed as exc:
                raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {exc}") from None
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise ApiError(422, "Invalid", str(exc)) from None
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if content_type.startswith("application/strategic") and kind.custom:
                raise ApiError(415, "UnsupportedMediaType",
                               "the body of the request was in an unknown format - accepted media types include: "
                               "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml")
            wanted = merge_patch(current, patch)
        else:
            raise ApiError(415, "UnsupportedMediaType", f"unsupported patch type {content_type}")
        return self._update(kind, current, wanted, subresource)

    def delete(self, plural: str, namespace: str | None, name: str) -> dict:
        kind = self.kind(plural)
        current = self.get(plural, namespace, name)
        if current["metadata"].get("finalizers"):
            if not current["metadata"].get("deletionTimestamp"):
                current["metadata"]["deletionTimestamp"] = _now()
                return self._store(kind, self._key(kind, current), current, "MODIFIED")
            return current
        return self._remove(kind, current)

    def _update(self, kind: Kind, current: dict, wanted: dict, subresource: str | None) -> dict:
        meta = current["metadata"]
        if subresource == "status":
            updated = copy.deepcopy(current)
            if "status" in wanted:
                updated["status"] = wanted["status"]
            else:
                updated.pop("status", None)
        else:
            updated = wanted
            if kind.status:  # the main endpoint cannot change status
                updated.pop("status", None)
                if "status" in current:
                    updated["status"] = current["status"]
            # Immutable and server-owned metadata.
            new_meta = updated.setdefault("metadata", {})
            for owned in ("uid", "creationTimestamp", "generation", "namespace", "name", "deletionTimestamp"):
                if owned in meta:
                    new_meta[owned] = meta[owned]
                else:
                    new_meta.pop(owned, None)
            if self._essence(updated) != self._essence(current):
                new_meta["generation"] = meta.get("generation", 1) + 1
        updated["apiVersion"], updated["kind"] = kind.api_version, kind.kind
        self._validate(kind, updated)
        if kind.plural == "customresourcedefinitions":
            self._serve(updated)
        if updated["metadata"].get("deletionTimestamp") and not updated["metadata"].get("finalizers"):
            return self._remove(kind, updated)
        if updated == current:
            return current  # a no-op write keeps its resourceVersion, as on the real server
        return self._store(kind, self._key(kind, current), updated, "MODIFIED")

    @staticmethod
    def _essence(obj: dict) -> dict:
        return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}

    @staticmethod
    def _key(kind: Kind, obj: dict) -> tuple[str, str | None, str]:
        meta = obj["metadata"]
        return kind.plural, meta.get("namespace") if kind.namespaced else None, meta["name"]

    def _validate(self, kind: Kind, obj: dict) -> None:
        """Prune unknown fields (as the API server does for structural schemas), then validate:
        custom resources against their CRD's schema and CEL rules, Jobs as the API server does."""
        schema = self._schemas.get(kind.plural)
        if schema is not None:
            for key, value in list(obj.items()):
                if key not in ("apiVersion", "kind", "metadata"):
                    if key in schema.get("properties", {}):
                        obj[key] = prune(value, schema["properties"][key])
                    else:
                        del obj[key]
            errors = custom_resource_errors(obj, schema)
        elif kind.plural == "jobs":
            errors = job_errors(obj)
        elif kind.plural == "customresourcedefinitions":
            errors = crd_errors(obj)
        else:
            errors = []
        if errors:
            group = f".{kind.group}" if kind.group else ""
            raise ApiError(422, "Invalid", f'{kind.kind}{group} "{obj["metadata"].get("name")}" is invalid: '
                                           + "; ".join(errors))

    def _store(self, kind: Kind, key: tuple, obj: dict, event_type: str) -> dict:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self.objects[key] = obj
        self._emit(kind, event_type, obj)
        return copy.deepcopy(obj)

    def _remove(self, kind: Kind, obj: dict) -> dict:
        self.objects.pop(self._key(kind, obj), None)
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._emit(kind, "DELETED", obj)
        uid = obj["metadata"]["uid"]
        for (plural, ns, name), dependent in list(self.objects.items()):
            if any(ref.get("uid") == uid for ref in dependent["metadata"].get("ownerReferences", [])):
                self.delete(plural, ns, name)  # the garbage collector's background propagation
        return copy.deepcopy(obj)

    def _emit(self, kind: Kind, event_type: str, obj: dict) -> None:
        event = {"type": event_type, "object": copy.deepcopy(obj)}
        self.history.append((self._rv, kind, event))
        for watcher in self._watchers:
            if self._watched(watcher, obj):
                watcher.queue.put_nowait(event)

    @staticmethod
    def _watched(watcher: _Watcher, obj: dict) -> bool:
        return (obj["kind"] == watcher.kind.kind
                and (watcher.namespace is None or obj["metadata"].get("namespace") == watcher.namespace)
                and matches_labels(obj, watcher.selector))

    # ---- HTTP -----------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        return app

    async def close_watches(self) -> None:
        """Open watch streams would keep the server from shutting down: end them."""
        for watcher in self._watchers:
            watcher.queue.put_nowait(None)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._route(request)
        except ApiError as exc:
            return exc.response()

    async def _route(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if parts == ["api"]:
            return web.json_response({"kind": "APIVersions", "versions": ["v1"]})
        if parts == ["apis"]:
            return web.json_response(self._group_list())
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", f"no route for {request.path}")
        if not rest:
            return web.json_response(self._resource_list(group, version))
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            namespace, rest = rest[1], rest[2:]
        kind = self.kind(rest[0])
        if (kind.group, kind.version) != (group, version):
            raise ApiError(404, "NotFound", f"{rest[0]} is not served by {group}/{version}")
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if subresource not in (None, "status") or (subresource and not kind.status):
            raise ApiError(404, "NotFound", f"no subresource {subresource} on {kind.plural}")
        query = request.query
        await self._record(request, kind, name, subresource)
        if name is None:
            if request.method == "GET" and query.get("watch") in ("true", "1"):
                return await self._watch(request, kind, namespace)
            if request.method == "GET":
                return web.json_response(self._list_body(kind, namespace, query.get("labelSelector")))
            if request.method == "POST":
                return web.json_response(self.create(kind.plural, await request.json(), namespace), status=201)
        else:
            if request.method == "GET":
                return web.json_response(self.get(kind.plural, namespace, name))
            if request.method == "PUT":
                return web.json_response(self.replace(kind.plural, namespace, name, await request.json(), subresource=subresource))
            if request.method == "PATCH":
                content_type = request.headers.get("Content-Type", "").split(";")[0]
                return web.json_response(self.patch(kind.plural, namespace, name, await request.json(),
                                                    content_type=content_type, subresource=subresource))
            if request.method == "DELETE":
                return web.json_response(self.delete(kind.plural, namespace, name))
        raise ApiError(405, "MethodNotAllowed", f"{request.method} is not supported here")

    async def _record(self, request: web.Request, kind: Kind, name: str | None, subresource: str | None) -> None:
        """The (apiGroup, resource, verb) RBAC authorises this request as; creating or replacing an
        object whose owner reference blocks the owner's deletion also needs `update` on the owner's
        `finalizers` (OwnerReferencesPermissionEnforcement)."""
        if request.method == "GET":
            verb = "watch" if request.query.get("watch") in ("true", "1") else "get" if name else "list"
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                    "DELETE": "delete" if name else "deletecollection"}.get(request.method, request.method.lower())
        self.access.append((kind.group, kind.plural + (f"/{subresource}" if subresource else ""), verb))
        if verb in ("create", "update") and request.can_read_body:
            body = await request.json()  # aiohttp keeps the body for the handler
            for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
                owner = next((k for k in KINDS if (k.api_version, k.kind) == (ref.get("apiVersion"), ref.get("kind"))), None)
                if ref.get("blockOwnerDeletion") and owner is not None:
                    self.access.append((owner.group, f"{owner.plural}/finalizers", "update"))

    def _list_body(self, kind: Kind, namespace: str | None, selector: str | None) -> dict:
        return {"kind": f"{kind.kind}List", "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(self._rv)},
                "items": self.list(kind.plural, namespace, selector)}

    async def _watch(self, request: web.Request, kind: Kind, namespace: str | None) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 3600)
        watcher = _Watcher(kind, namespace, request.query.get("labelSelector"))
        for rv, event_kind, event in self.history:  # replay what the client has not seen yet
            if rv > since and event_kind == kind and self._watched(watcher, event["object"]):
                watcher.queue.put_nowait(event)
        self._watchers.append(watcher)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while (remaining := deadline - loop.time()) > 0:
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if event is None:
                    break
                await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.remove(watcher)
        return response

    def _group_list(self) -> dict:
        groups = sorted({(k.group, k.version) for k in KINDS if k.group})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
            {"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
             "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}} for g, v in groups]}

    def _resource_list(self, group: str, version: str) -> dict:
        resources = []
        for kind in KINDS:
            if (kind.group, kind.version) != (group, version):
                continue
            resources.append({"name": kind.plural, "singularName": kind.kind.lower(), "namespaced": kind.namespaced,
                              "kind": kind.kind, "verbs": VERBS})
            if kind.status:
                resources.append({"name": f"{kind.plural}/status", "singularName": "", "namespaced": kind.namespaced,
                                  "kind": kind.kind, "verbs": ["get", "patch", "update"]})
        if not resources:
            raise ApiError(404, "NotFound", f"no API group {group}/{version}")
        groupversion = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": groupversion, "resources": resources}
