"""The chart rendered by the real Helm library for the default values and each switch: every object
valid against Kubernetes 1.33's schemas, secure and sized, and wired to what the parts really read."""

from __future__ import annotations

import re

import helm_python
import kubernetes_validate
import pytest
import typer

from tests.charts.conftest import (
    resolve_env,
    BOT_TOKEN,
    CHART,
    MINIMAL,
    NAMESPACE,
    RELEASE,
    container,
    env_of,
    find,
    pod_spec,
    secret_data,
    workloads,
)

KUBERNETES = "1.33"
FULLNAME = f"{RELEASE}-personafleet"
PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PodMonitor"}

SCENARIOS: dict[str, dict] = {
    "defaults": {},
    "external-db-url": {"postgres": {"enabled": False},
                        "database": {"external": {"url": "postgresql://chat:pw@db.example.com:5432/chat"}}},
    "external-db-secret": {"postgres": {"enabled": False}, "database": {"external": {"existingSecret": "my-db"}}},
    "cpu-only": {"serving": {"gpu": {"enabled": False}}},
    "service-monitor": {"metrics": {"prometheusOperator": {"enabled": True, "labels": {"release": "kps"}}}},
    "pod-monitor": {"metrics": {"prometheusOperator": {"enabled": True, "kind": "PodMonitor"}}},
    "monitoring-off": {"metrics": {"dashboards": {"enabled": False}}},
    "webhook-ingress": {"bot": {"mode": "webhook", "replicas": 3,
                                "webhook": {"url": "https://bot.example.com/telegram"},
                                "ingress": {"enabled": True, "className": "nginx",
                                            "tls": [{"hosts": ["bot.example.com"], "secretName": "bot-tls"}]}}},
    "network-policy-off": {"networkPolicy": {"enabled": False}},
    "replicated-serving": {"serving": {"replicas": 3, "topologySpread": {"whenUnsatisfiable": "DoNotSchedule"}}},
    "two-bases": {"serving": {"replicas": 2, "bases": [
        {"name": "fred", "model": "ai-forever/FRED-T5-large"},
        {"name": "rugpt3", "model": "ai-forever/rugpt3small_based_on_gpt2", "replicas": 3,
         "nodeSelector": {"pool": "l4"}, "resources": {"requests": {"cpu": "1", "memory": "6Gi"}, "limits": {"memory": "8Gi"}}},
    ]}},
    "serving-only": {"bot": {"enabled": False}, "operator": {"enabled": False}, "postgres": {"enabled": False},
                     "database": {"external": {"existingSecret": "unused"}}},
}
# Rendered without MINIMAL's token: the bot token comes from the user's own Secret.
EXISTING_BOT_SECRET = {"bot": {"telegram": {"existingSecret": "telegram", "existingSecretKey": "bot-token"}}}


@pytest.fixture(scope="module", params=[*SCENARIOS, "existing-bot-secret"])
def scenario(request, render) -> list[dict]:
    if request.param == "existing-bot-secret":
        return render(values=EXISTING_BOT_SECRET)
    return render(SCENARIOS[request.param])


# ---- every scenario ------------------------------------------------------------------------
def test_every_object_is_valid_for_kubernetes(scenario):
    for obj in scenario:
        if obj["kind"] in PROMETHEUS_OPERATOR_KINDS:
            check_monitor(obj, scenario)
        else:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def check_monitor(monitor: dict, objects: list[dict]) -> None:
    """Prometheus Operator kinds have no schema in kubernetes-validate: check the structure, and
    that the endpoints name a port of every Service (or pod) the selector picks."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    endpoints = spec["endpoints" if monitor["kind"] == "ServiceMonitor" else "podMetricsEndpoints"]
    assert endpoints and all(set(e) <= {"port", "path", "interval"} for e in endpoints)
    assert all(re.fullmatch(r"\d+(ms|s|m|h)", e["interval"]) for e in endpoints)
    if monitor["kind"] == "ServiceMonitor":
        targets = [(s["metadata"]["labels"], [p["name"] for p in s["spec"]["ports"]])
                   for s in objects if s["kind"] == "Service"]
    else:
        targets = [(w["spec"]["template"]["metadata"]["labels"],
                    [p["name"] for c in pod_spec(w)["containers"] for p in c.get("ports", [])]) for w in workloads(objects)]
    selected = [ports for labels, ports in targets if selects(spec["selector"], labels)]
    components = {v for e in spec["selector"]["matchExpressions"] for v in e["values"]}
    assert len(selected) == len(components), "the selector must pick one target per component"
    for ports in selected:
        assert all(e["port"] in ports for e in endpoints)


def selects(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels + In expressions) against a label set."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_every_pod_runs_as_non_root_with_resource_requests(scenario):
    for workload in workloads(scenario):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] > 0
        for box in spec["containers"] + spec.get("initContainers", []):
            where = f"{workload['metadata']['name']}/{box['name']}"
            security = box["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert {"cpu", "memory"} <= set(box["resources"]["requests"]), where
            assert "memory" in box["resources"]["limits"], where


def test_every_persona_command_parses_with_the_real_cli(scenario):
    """The args the chart passes exist in the `persona` CLI, with values of the right type."""
    commands = [box["command"] + box.get("args", []) for w in workloads(scenario)
                for box in pod_spec(w)["containers"] if box.get("command") == ["persona"]]
    assert commands  # serving at least
    for argv in commands:
        parse_cli(argv[1:])


def parse_cli(args: list[str]) -> dict:
    """Parse `persona ARGS` exactly as the CLI would, without running it; returns the parameters."""
    from persona_cli.main import app

    group = typer.main.get_command(app)
    command = group.get_command(group.context_class(group), args[0])
    assert command is not None, f"`persona {args[0]}` is not a command"
    return command.make_context(args[0], list(args[1:])).params


def test_every_object_carries_the_standard_labels(scenario):
    for obj in scenario:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "personafleet"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/component"]


def test_services_and_probes_name_ports_the_pods_have(scenario):
    pods = [(w["spec"]["template"]["metadata"]["labels"], pod_spec(w)) for w in workloads(scenario)]
    for service in (o for o in scenario if o["kind"] == "Service"):
        backends = [spec for labels, spec in pods if selects({"matchLabels": service["spec"]["selector"]}, labels)]
        assert backends, service["metadata"]["name"]  # one workload; the serving Service: each base's fleet
        for backend in backends:
            names = {p["name"] for c in backend["containers"] for p in c.get("ports", [])}
            assert {p["targetPort"] for p in service["spec"]["ports"]} <= names
    for _, spec in pods:
        for box in spec["containers"]:
            names = {p["name"] for p in box.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                if "httpGet" in box.get(probe, {}):
                    assert box[probe]["httpGet"]["port"] in names


# ---- lint and the schema of values ---------------------------------------------------------
def test_helm_lint_passes_with_no_warnings():
    result = helm_python.lint(CHART, MINIMAL, strict=True, namespace=NAMESPACE)
    assert result["errors"] == []
    assert [m for m in result["messages"] if m["severity"] > 1] == []  # 1 = INFO ("icon is recommended")


@pytest.mark.parametrize(("values", "message"), [
    ({}, "the bot needs a Telegram token"),
    (MINIMAL | {"postgres": {"enabled": False}}, "needs database.external.url or database.external.existingSecret"),
    (MINIMAL | {"bot": {"telegram": {"token": BOT_TOKEN}, "mode": "webhook"}}, "bot.mode=webhook needs bot.webhook.url"),
    (MINIMAL | {"bot": {"telegram": {"token": "not-a-token"}}}, "/bot/telegram/token"),
    (MINIMAL | {"serving": {"replicas": "two"}}, "/serving/replicas"),
    (MINIMAL | {"serving": {"bases": [{"name": "Fred!", "model": "m"}]}}, "/serving/bases/0/name"),
    (MINIMAL | {"serving": {"bases": [{"name": "fred"}]}}, "missing property 'model'"),
    (MINIMAL | {"serving": {"bases": [{"name": "a", "model": "m"}, {"name": "a", "model": "n"}]}}, "the name a is used twice"),
    (MINIMAL | {"serving": {"bases": [{"name": "a", "model": "m"}, {"name": "b", "model": "m"}]}}, "the model m is served twice"),
    (MINIMAL | {"bot": {"telegram": {"token": BOT_TOKEN}, "colour": "blue"}}, "'colour' not allowed"),
])
def test_bad_values_fail_with_a_message_naming_the_fix(render, values, message):
    with pytest.raises(helm_python.HelmError, match=re.escape(message)):
        render(values=values)


# ---- the bot -------------------------------------------------------------------------------
def test_polling_runs_exactly_one_replica(render):
    bot = find(render(), "Deployment", "-bot")
    assert bot["spec"]["replicas"] == 1 and bot["spec"]["strategy"]["type"] == "Recreate"
    with pytest.raises(helm_python.HelmError, match="polling runs exactly one replica"):
        render({"bot": {"replicas": 3}})
    with pytest.raises(helm_python.HelmError, match="needs bot.mode=webhook"):
        render({"bot": {"ingress": {"enabled": True}}})


def test_webhook_mode_scales_and_routes_only_the_webhook_path(render):
    objects = render(SCENARIOS["webhook-ingress"])
    bot = find(objects, "Deployment", "-bot")
    assert bot["spec"]["replicas"] == 3 and "strategy" not in bot["spec"]
    env = env_of(bot)
    assert env["BOT_MODE"]["value"] == "webhook"
    assert env["WEBHOOK_URL"]["value"] == "https://bot.example.com/telegram"
    assert env["WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == f"{FULLNAME}-bot-webhook"
    rule = find(objects, "Ingress", "-bot")["spec"]["rules"][0]
    assert rule["host"] == "bot.example.com"
    assert [(p["path"], p["backend"]["service"]["port"]["name"]) for p in rule["http"]["paths"]] == [("/telegram", "webhook")]
    policy = find(objects, "NetworkPolicy", "-bot")
    assert {r["ports"][0]["port"] for r in policy["spec"]["ingress"]} == {"metrics", "webhook"}


def test_the_bot_settings_load_from_the_rendered_environment(render, tmp_path):
    """The bot's own settings loader accepts what the chart sets (Secrets resolved as kubelet would)."""
    from persona_bot.settings import load_settings

    objects = render(SCENARIOS["webhook-ingress"])
    settings = load_settings(resolve_env(objects, find(objects, "Deployment", "-bot"), tmp_path))
    assert settings.bot_mode == "webhook" and settings.bot_token.get_secret_value() == BOT_TOKEN
    assert settings.inference_url == f"http://{FULLNAME}-serving:8080"
    assert settings.database_url.get_secret_value().startswith("postgresql://personafleet:")
    assert settings.listen_host == "0.0.0.0" and settings.metrics_port == 9090 and settings.webhook_port == 8443


def test_an_existing_bot_token_secret_is_used_and_none_is_created(render):
    objects = render(values=EXISTING_BOT_SECRET)
    token = env_of(find(objects, "Deployment", "-bot"))["BOT_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "telegram", "key": "bot-token"}
    assert not [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-bot")]


# ---- serving -------------------------------------------------------------------------------
def test_serving_runs_the_fleet_behind_the_auth_front_with_the_token_secret(render):
    objects = render({"serving": {"baseModel": "/store/bases/fred", "maxResidentAdapters": 5, "maxLoraRank": 32,
                                  "maxHostAdapters": 7}, "metrics": {"maxPersonaLabels": 7}})
    serving = find(objects, "Deployment", "-serving")
    params = parse_cli(container(serving)["args"])
    assert params["foreground"] and params["host"] == "0.0.0.0"
    assert (str(params["model_store"]), params["base"], params["max_resident_adapters"]) == ("/store", ["/store/bases/fred"], 5)
    assert (params["max_lora_rank"], params["max_host_adapters"], params["max_persona_labels"]) == (32, 7, 7)
    defaults = parse_cli(container(find(render(), "Deployment", "-serving"))["args"])
    assert (defaults["base"], defaults["max_persona_labels"]) == (["ai-forever/FRED-T5-large"], 100)
    assert params.get("models_file") is None  # what serves is the store's routing table (contract 2)
    assert str(params["auth_token_file"]) == "/var/run/secrets/persona/inference-token"
    assert str(params["management_token_file"]) == "/var/run/secrets/persona/management-token"
    volumes = {v["name"]: v for v in pod_spec(serving)["volumes"]}
    assert "models" not in volumes and not [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-models")]
    assert volumes["tokens"]["secret"]["secretName"] == f"{FULLNAME}-serving-token"
    assert volumes["store"]["persistentVolumeClaim"] == {"claimName": f"{FULLNAME}-store", "readOnly": True}
    assert find(objects, "PersistentVolumeClaim", "-store")["spec"]["accessModes"] == ["ReadWriteMany"]
    probes = {p: container(serving)[p]["httpGet"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert all(probe == {"path": "/ping", "port": "inference"} for probe in probes.values())
    assert [p["port"] for p in find(objects, "Service", "-serving")["spec"]["ports"]] == [8080, 8082]  # never 8081


def test_the_fleet_serving_settings_come_from_the_chart_and_let_every_persona_cap_through(render):
    """Batching, workers and timeouts are the fleet's (no PersonaModel sets them any more), and the
    fleet's reply cap lets through the largest serving.generation.maxNewTokens the CRD accepts."""
    from personafleet.names import MAX_NEW_TOKENS

    params = parse_cli(container(find(render(), "Deployment", "-serving"))["args"])
    assert params["max_new_tokens"] == MAX_NEW_TOKENS and params["max_cached_tokens"] == 16384
    custom = {"workers": 2, "batchSize": 4, "maxBatchDelayMs": 50, "responseTimeoutSeconds": 90, "maxNewTokens": 200,
              "maxCachedTokens": 4096}
    params = parse_cli(container(find(render({"serving": custom}), "Deployment", "-serving"))["args"])
    assert [params[k] for k in ("workers", "batch_size", "max_batch_delay_ms", "response_timeout", "max_new_tokens",
                                "max_cached_tokens")] == [2, 4, 50, 90, 200, 4096]


def test_gpu_mode_schedules_on_the_gpu_pool_and_cpu_mode_does_not(render):
    gpu = find(render({"serving": {"nodeSelector": {"pool": "gpu"}}}), "Deployment", "-serving")
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod_spec(gpu)["nodeSelector"] == {"pool": "gpu"}
    assert pod_spec(gpu)["tolerations"][0]["key"] == "nvidia.com/gpu"
    cpu = find(render({"serving": {"gpu": {"enabled": False}, "nodeSelector": {"pool": "gpu"}}}), "Deployment", "-serving")
    assert "nvidia.com/gpu" not in container(cpu)["resources"]["limits"]
    assert "nodeSelector" not in pod_spec(cpu) and "tolerations" not in pod_spec(cpu)
    assert gpu["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}  # no spare GPU needed
    assert "strategy" not in cpu["spec"]


# ---- the operator --------------------------------------------------------------------------
def test_the_operator_settings_load_from_the_rendered_environment(render, tmp_path):
    """Contract 6: the operator's own Settings accept every variable the chart sets, and they
    point at the objects the chart made."""
    from persona_operator.settings import ENVIRONMENT, Settings

    objects = render({"training": {"nodeSelector": {"pool": "gpu"}}})
    operator = find(objects, "Deployment", "-operator")
    env = resolve_env(objects, operator, tmp_path)
    assert set(env) <= set(ENVIRONMENT)
    settings = Settings.from_env(env)
    assert settings.namespace == NAMESPACE
    assert settings.training_image == "personafleet-serve:0.1.0"
    assert settings.store_pvc == find(objects, "PersistentVolumeClaim", "-store")["metadata"]["name"]
    assert settings.database_secret == f"{FULLNAME}-feedback-export"  # the read-only export login, not the bot's
    assert settings.training_defaults.node_selector == {"pool": "gpu"}
    assert settings.training_defaults.resources["limits"]["nvidia.com/gpu"] == 1
    assert settings.training_max_resources == {"nvidia.com/gpu": 1, "cpu": "16", "memory": "64Gi"}
    token_file = env_of(operator)["PERSONA_SERVING_TOKEN_FILE"]["value"]
    mounts = {m["mountPath"]: m["name"] for m in container(operator)["volumeMounts"]}
    assert token_file == "/var/run/secrets/persona/inference-token" and mounts["/var/run/secrets/persona"] == "token"
    token_volume = next(v for v in pod_spec(operator)["volumes"] if v["name"] == "token")
    assert token_volume["secret"]["items"] == [{"key": "inference-token", "path": "inference-token"}]  # no management key
    store_mount = next(m for m in container(operator)["volumeMounts"] if m["name"] == "store")
    assert store_mount["mountPath"] == str(settings.store_path) and not store_mount.get("readOnly")  # writes routing.json
    serving_labels = find(objects, "Deployment", "-serving")["spec"]["template"]["metadata"]["labels"]
    selector = dict(pair.split("=") for pair in settings.serving_selector.split(","))
    assert selector.items() <= serving_labels.items() and selector["app.kubernetes.io/component"] == "serving"
    assert parse_cli(container(operator)["args"])["standalone"] is True
    assert operator["spec"]["replicas"] == 1 and operator["spec"]["strategy"]["type"] == "Recreate"
    assert settings.prometheus_url is None  # no canary without a Prometheus the chart names (issue 23)
    with_prometheus = render({"operator": {"prometheusUrl": "http://prometheus.monitoring:9090"}})
    canary = resolve_env(with_prometheus, find(with_prometheus, "Deployment", "-operator"), tmp_path)
    assert Settings.from_env(canary).prometheus_url == "http://prometheus.monitoring:9090"


def test_operator_rbac_is_namespaced_and_least_privilege(render):
    objects = render()
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    rules = find(objects, "Role", "-operator")["rules"]
    granted = {(group, resource, verb) for r in rules for group in r["apiGroups"] for resource in r["resources"]
               for verb in r["verbs"]}
    assert not any("*" in entry for entry in granted)
    assert not any(resource == "secrets" for _, resource, _ in granted)
    assert ("personafleet.io", "personamodels/status", "patch") in granted
    assert ("batch", "jobs", "create") in granted and ("", "events", "create") in granted
    assert not any(resource == "configmaps" for _, resource, _ in granted)  # the routing table replaced models.json
    binding = find(objects, "RoleBinding", "-operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{FULLNAME}-operator", "namespace": NAMESPACE}]
    assert pod_spec(find(objects, "Deployment", "-operator"))["serviceAccountName"] == f"{FULLNAME}-operator"
    for name in ("-serving", "-bot"):  # only the operator talks to the API server
        assert pod_spec(find(objects, "Deployment", name))["automountServiceAccountToken"] is False


# ---- network policies ----------------------------------------------------------------------
def test_management_is_reachable_from_no_pod_and_metrics_only_from_prometheus(render):
    objects = render()
    rules = {r["ports"][0]["port"]: r["from"] for r in find(objects, "NetworkPolicy", "-serving")["spec"]["ingress"]}
    operator = find(objects, "Deployment", "-operator")["spec"]["template"]["metadata"]["labels"]
    bot = find(objects, "Deployment", "-bot")["spec"]["template"]["metadata"]["labels"]
    assert set(rules) == {"inference", "metrics"}  # a policy denies every port it does not list
    assert rules["metrics"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                                 "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    assert [selects(peer["podSelector"], bot) or selects(peer["podSelector"], operator) for peer in rules["inference"]] == [True, True]
    postgres = find(objects, "NetworkPolicy", "-postgres")["spec"]["ingress"]
    assert [r["ports"][0]["port"] for r in postgres] == ["postgres"]
    training_pod = {"app.kubernetes.io/managed-by": "persona-operator", "app.kubernetes.io/component": "training"}
    assert any(selects(peer["podSelector"], training_pod) for peer in postgres[0]["from"])  # export-feedback


# ---- monitoring ----------------------------------------------------------------------------
def test_scrape_annotations_without_the_prometheus_operator_and_monitors_with_it(render):
    plain = render()
    assert not [o for o in plain if o["kind"] in PROMETHEUS_OPERATOR_KINDS]
    for name, port in (("-serving", "8082"), ("-bot", "9090"), ("-operator", "9090")):
        workload = find(plain, "Deployment", name)
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == port
        assert {p["name"]: str(p["containerPort"]) for p in container(workload)["ports"]}["metrics"] == port
    monitored = render(SCENARIOS["service-monitor"])
    monitor = find(monitored, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    assert not [key for w in workloads(monitored) for key in w["spec"]["template"]["metadata"].get("annotations", {})
                if key.startswith("prometheus.io/")]


def test_the_dashboard_configmap_is_labelled_for_the_grafana_sidecar(render):
    configmap = find(render(), "ConfigMap", "-dashboards")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["data"]["personafleet.json"] == (CHART / "dashboards" / "personafleet.json").read_text()
    assert not [o for o in render(SCENARIOS["monitoring-off"]) if o["metadata"]["name"].endswith("-dashboards")]


def test_the_asr_model_is_packaged_served_and_wired_to_the_bot(render):
    objects = render()
    serving = pod_spec(find(objects, "Deployment", "-serving"))
    (init,) = serving["initContainers"]
    packaged = parse_cli(init["args"])
    assert packaged["model"] == "openai/whisper-large-v3-turbo" and packaged["language"] == "ru"
    assert packaged["bundle"] is False and str(packaged["out"]) == "/home/persona/asr"
    served = parse_cli(container(find(objects, "Deployment", "-serving"))["args"])
    assert str(served["asr"]) == "/home/persona/asr/asr.mar"
    assert {"name": "home", "mountPath": "/home/persona"} in init["volumeMounts"]
    env = env_of(find(objects, "Deployment", "-bot"))
    assert env["VOICE"]["value"] == "true" and env["ASR_URL"]["value"] == f"http://{FULLNAME}-serving:8080"
    assert env["VOICE_MAX_SECONDS"]["value"] == "60" and env["VOICE_MAX_BYTES"]["value"] == "20971520"
    # The asr model shares the serving replicas' inference port: the bot, the operator's smoke test
    # and the clients the user lists are all that may reach it.
    policy = find(objects, "NetworkPolicy", "-serving")
    inference = next(rule for rule in policy["spec"]["ingress"] if rule["ports"] == [{"port": "inference", "protocol": "TCP"}])
    components = [peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in inference["from"]]
    assert components == ["bot", "operator"]


def test_asr_off_serves_no_speech_model_and_the_bot_ignores_recordings(render):
    objects = render({"asr": {"enabled": False}})
    serving = find(objects, "Deployment", "-serving")
    assert "initContainers" not in pod_spec(serving)
    assert parse_cli(container(serving)["args"])["asr"] is None
    env = env_of(find(objects, "Deployment", "-bot"))
    assert env["VOICE"]["value"] == "false" and "ASR_URL" not in env


@pytest.mark.parametrize("values", [{"asr": {"language": "Russian"}}, {"bot": {"voice": {"maxBytes": 30000000}}}])
def test_bad_asr_values_are_refused_by_the_schema(render, values):
    with pytest.raises(Exception):
        render(values)


# ---- availability: disruption budgets and topology spread (issue 26) ------------------------
def budgets(objects: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["labels"]["app.kubernetes.io/component"]: o for o in objects if o["kind"] == "PodDisruptionBudget"}


def test_replicated_serving_and_bot_get_budgets_that_select_their_pods(render):
    objects = render({**SCENARIOS["webhook-ingress"], "serving": {"replicas": 3}})
    found = budgets(objects)
    assert set(found) == {"serving", "bot"}
    for component, budget in found.items():
        kubernetes_validate.validate(budget, KUBERNETES, strict=True)
        assert budget["spec"]["maxUnavailable"] == 1 and budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        (deployment,) = [w for w in workloads(objects) if w["metadata"]["labels"]["app.kubernetes.io/component"] == component]
        assert selects(budget["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])
        others = [w for w in workloads(objects) if w is not deployment]
        assert not any(selects(budget["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"]) for w in others)


@pytest.mark.parametrize("values", [
    {},  # one serving replica, a polling bot
    {"bot": {"replicas": 1, "mode": "webhook", "webhook": {"url": "https://bot.example.com/t"}}},
    {"serving": {"replicas": 3, "podDisruptionBudget": {"enabled": False}}},
])
def test_no_budget_for_a_single_replica_or_when_switched_off(render, values):
    assert "serving" not in budgets(render(values)) and "bot" not in budgets(render(values))


def test_serving_replicas_spread_over_the_gpu_pools_nodes(render):
    pool = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    serving = find(render({"serving": {"replicas": 2, "nodeSelector": pool}}), "Deployment", "-serving")
    spec = pod_spec(serving)
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["maxSkew"] == 1
    # The domains are the nodes the pod may run on: the GPU pool's (its selector and tolerations).
    assert spec["nodeSelector"] == pool and spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert (spread["nodeAffinityPolicy"], spread["nodeTaintsPolicy"]) == ("Honor", "Honor")
    assert spread["matchLabelKeys"] == ["pod-template-hash"]
    assert selects(spread["labelSelector"], serving["spec"]["template"]["metadata"]["labels"])
    assert "topologySpreadConstraints" not in pod_spec(find(render({}), "Deployment", "-serving"))  # one replica


@pytest.mark.parametrize(("values", "says"), [
    ({"serving": {"topologySpread": {"whenUnsatisfiable": "Sometimes"}}}, "whenUnsatisfiable"),
    ({"serving": {"podDisruptionBudget": {"maxUnavailable": 0}}}, "maxUnavailable"),
    ({"bot": {"podDisruptionBudget": {"enabeld": True}}}, "enabeld"),
])
def test_bad_availability_values_are_refused_by_the_schema(render_text, values, says):
    from tests.charts.conftest import merge

    with pytest.raises(Exception, match=says):
        render_text(merge(MINIMAL, values))


# ---- several bases (issue 22) ----------------------------------------------------------------
def test_each_base_gets_its_own_fleet_with_its_pool_and_replicas_and_fronts_that_know_the_others(render, tmp_path):
    from persona_operator.settings import Settings

    objects = render(SCENARIOS["two-bases"])
    fred, rugpt3 = find(objects, "Deployment", "-serving-fred"), find(objects, "Deployment", "-serving-rugpt3")
    assert (fred["spec"]["replicas"], rugpt3["spec"]["replicas"]) == (2, 3)  # serving.replicas unless the base says
    assert pod_spec(rugpt3)["nodeSelector"] == {"pool": "l4"} and "nodeSelector" not in pod_spec(fred)
    assert container(rugpt3)["resources"] == {"requests": {"cpu": "1", "memory": "6Gi"},
                                              "limits": {"memory": "8Gi", "nvidia.com/gpu": 1}}
    for deployment, base, other, other_name in ((fred, "ai-forever/FRED-T5-large", "ai-forever/rugpt3small_based_on_gpt2", "rugpt3"),
                                                (rugpt3, "ai-forever/rugpt3small_based_on_gpt2", "ai-forever/FRED-T5-large", "fred")):
        params = parse_cli(container(deployment)["args"])
        assert params["base"] == [base]
        assert params["fleet"] == [f"{other}=http://{FULLNAME}-serving-{other_name}:8080"]
        name = deployment["metadata"]["name"].rsplit("-", 1)[1]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["personafleet.io/base"] == name and deployment["spec"]["selector"]["matchLabels"]["personafleet.io/base"] == name
        service = find(objects, "Service", f"-serving-{name}")
        assert service["spec"]["selector"].items() <= labels.items()
        assert not selects({"matchLabels": service["spec"]["selector"]},
                           (rugpt3 if deployment is fred else fred)["spec"]["template"]["metadata"]["labels"])
    common = find(objects, "Service", f"{FULLNAME}-serving")  # the bot's: any serving pod
    assert all(common["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in (fred, rugpt3))
    assert budgets(objects)["serving"]["spec"]["selector"]["matchLabels"].items() <= fred["spec"]["template"]["metadata"]["labels"].items()
    operator = find(objects, "Deployment", "-operator")
    settings = Settings.from_env(resolve_env(objects, operator, tmp_path))
    assert settings.serving_bases == {"ai-forever/FRED-T5-large": "fred", "ai-forever/rugpt3small_based_on_gpt2": "rugpt3"}
    pods = settings.replica_selector("ai-forever/rugpt3small_based_on_gpt2")
    assert dict(pair.split("=") for pair in pods.split(",")).items() <= rugpt3["spec"]["template"]["metadata"]["labels"].items()


def test_without_bases_one_fleet_keeps_its_names_and_the_operator_checks_no_base(render, tmp_path):
    from persona_operator.settings import Settings

    objects = render()
    serving = [o["metadata"]["name"] for o in objects if o["kind"] in ("Deployment", "Service") and "-serving" in o["metadata"]["name"]]
    assert sorted(serving) == [f"{FULLNAME}-serving", f"{FULLNAME}-serving"]
    assert not parse_cli(container(find(objects, "Deployment", "-serving"))["args"])["fleet"]
    settings = Settings.from_env(resolve_env(objects, find(objects, "Deployment", "-operator"), tmp_path))
    assert settings.serving_bases == {}


def test_with_several_bases_serving_pods_may_call_each_others_inference_port_only(render):
    objects = render(SCENARIOS["two-bases"])
    rules = {r["ports"][0]["port"]: r["from"] for r in find(objects, "NetworkPolicy", "-serving")["spec"]["ingress"]}
    fred = find(objects, "Deployment", "-serving-fred")["spec"]["template"]["metadata"]["labels"]
    assert any(selects(peer["podSelector"], fred) for peer in rules["inference"])
    assert not any(selects(peer.get("podSelector", {"matchLabels": {"x": "y"}}), fred) for peer in rules["metrics"])
    single = {r["ports"][0]["port"]: r["from"] for r in find(render(), "NetworkPolicy", "-serving")["spec"]["ingress"]}
    serving = find(render(), "Deployment", "-serving")["spec"]["template"]["metadata"]["labels"]
    assert not any(selects(peer["podSelector"], serving) for peer in single["inference"])


def test_the_fleet_reply_filter_is_mounted_where_persona_serve_reads_it(render, tmp_path):
    """serving.replyFilter -> a ConfigMap -> the file `persona serve --reply-filter` loads with the
    real rules (a pattern that does not compile would stop the pod with its name)."""
    from persona_serving.reply_filter import load_rules

    rules = {"blocklist": ["дурак"], "patterns": [{"name": "insults", "regex": r"\bидиот\w*"}], "pii": ["phone"],
             "fallback": "Не буду."}
    objects = render({"serving": {"replyFilter": rules}})
    serving = find(objects, "Deployment", "-serving")
    params = parse_cli(container(serving)["args"])
    mount = next(m for m in container(serving)["volumeMounts"] if m["name"] == "reply-filter")
    assert str(params["reply_filter"]) == f"{mount['mountPath']}/reply-filter.yaml" and mount["readOnly"]
    volume = next(v for v in pod_spec(serving)["volumes"] if v["name"] == "reply-filter")
    config_map = find(objects, "ConfigMap", "-reply-filter")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    (tmp_path / "reply-filter.yaml").write_text(config_map["data"]["reply-filter.yaml"], encoding="utf-8")
    assert load_rules(tmp_path / "reply-filter.yaml").model_dump(exclude_none=True) == rules
    default = find(render(), "Deployment", "-serving")["spec"]["template"]["metadata"]["annotations"]
    assert serving["spec"]["template"]["metadata"]["annotations"]["checksum/reply-filter"] != default["checksum/reply-filter"]


@pytest.mark.parametrize("reply_filter", [
    {"patterns": [{"name": "Bad Name", "regex": "x"}]},
    {"pii": ["passport"]},
    {"blocklist": [""]},
    {"typo": []},
])
def test_bad_reply_filter_values_are_refused_by_the_schema(render, reply_filter):
    with pytest.raises(Exception, match="replyFilter"):
        render({"serving": {"replyFilter": reply_filter}})
