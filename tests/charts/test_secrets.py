"""No secret value in the rendered manifests unless the user gave it, and then only in its Secret;
generated ones are random per install and never leave their Secret."""

from __future__ import annotations

import json

import yaml

from tests.charts.conftest import BOT_TOKEN, CHART, env_of, find, resolve_env, secret_data

GIVEN = {
    "bot": {"telegram": {"token": BOT_TOKEN}, "mode": "webhook", "webhook": {"url": "https://bot.example.com/tg"}},
    "serving": {"auth": {"inferenceToken": "given-inference-token", "managementToken": "given-management-token"}},
}


def outside_secrets(objects: list[dict]) -> str:
    return json.dumps([o for o in objects if o["kind"] != "Secret"], ensure_ascii=False)


def test_values_yaml_ships_no_secret():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["bot"]["telegram"]["token"] == ""
    assert values["serving"]["auth"] == {"existingSecret": "", "inferenceToken": "", "managementToken": ""}
    assert values["database"]["external"]["url"] == ""


def test_given_secrets_appear_only_in_their_secret(render):
    objects = render(GIVEN)
    text = outside_secrets(objects)
    for value in (BOT_TOKEN, "given-inference-token", "given-management-token"):
        assert value not in text
    assert secret_data(find(objects, "Secret", "-bot")) == {"token": BOT_TOKEN}
    assert secret_data(find(objects, "Secret", "-serving-token")) == {
        "inference-token": "given-inference-token", "management-token": "given-management-token"}


def test_generated_secrets_are_random_and_stay_in_their_secrets(render):
    first, second = render(GIVEN | {"serving": {}}), render(GIVEN | {"serving": {}})
    generated = []
    for objects in (first, second):
        values = {
            "postgres": secret_data(find(objects, "Secret", "-postgres"))["password"],
            "webhook": secret_data(find(objects, "Secret", "-bot-webhook"))["webhook-secret"],
            **secret_data(find(objects, "Secret", "-serving-token")),
        }
        assert all(len(v) >= 32 for v in values.values())
        text = outside_secrets(objects)
        assert not [name for name, v in values.items() if v in text]
        generated.append(values)
    assert all(generated[0][k] != generated[1][k] for k in generated[0])  # not a default baked into the chart
    database_url = secret_data(find(first, "Secret", "-database"))["DATABASE_URL"]
    assert database_url == f"postgresql://personafleet:{generated[0]['postgres']}@fleet-personafleet-postgres:5432/personafleet"


def test_existing_secrets_leave_no_secret_value_in_the_manifests(render):
    objects = render(values={
        "bot": {"telegram": {"existingSecret": "telegram"}},
        "serving": {"auth": {"existingSecret": "serving-tokens"}},
        "postgres": {"enabled": False},
        "database": {"external": {"existingSecret": "db"}},
    })
    assert [o for o in objects if o["kind"] == "Secret"] == []
    names = {v["secret"]["secretName"] for o in objects if o["kind"] == "Deployment"
             for v in o["spec"]["template"]["spec"]["volumes"] if "secret" in v}
    assert names == {"serving-tokens"}


def test_an_external_database_url_is_stored_only_in_the_database_secret(render):
    url = "postgresql://chat:s3cret@db.example.com:5432/chat"
    objects = render({"postgres": {"enabled": False}, "database": {"external": {"url": url}}})
    assert secret_data(find(objects, "Secret", "-database")) == {"DATABASE_URL": url}
    assert "s3cret" not in outside_secrets(objects)
    assert not [o for o in objects if o["kind"] == "StatefulSet"]


def test_training_jobs_get_a_read_only_export_login_not_the_bots(render, tmp_path):
    """Issue 25: PersonaModel authors with includeFeedback get the export role's login (SELECT on
    what `persona export-feedback` reads), created by the bot with the password of its own Secret."""
    from persona_bot.settings import load_settings
    from persona_operator.settings import Settings

    objects = render()
    export = secret_data(find(objects, "Secret", "-feedback-export"))
    assert export["DATABASE_URL"] == (f"postgresql://feedback_export:{export['password']}"
                                      "@fleet-personafleet-postgres:5432/personafleet")
    assert len(export["password"]) >= 32 and export["password"] not in outside_secrets(objects)
    operator = Settings.from_env(resolve_env(objects, find(objects, "Deployment", "-operator"), tmp_path))
    assert operator.database_secret == "fleet-personafleet-feedback-export"
    bot = load_settings(resolve_env(objects, find(objects, "Deployment", "-bot"), tmp_path))
    assert bot.feedback_export_role == "feedback_export"
    assert bot.feedback_export_password.get_secret_value() == export["password"]

    url = "postgresql://chat:s3cret@db.example.com:5432/chat?sslmode=require"
    external = render({"postgres": {"enabled": False}, "database": {"external": {"url": url}}})
    export = secret_data(find(external, "Secret", "-feedback-export"))
    assert export["DATABASE_URL"] == f"postgresql://feedback_export:{export['password']}@db.example.com:5432/chat?sslmode=require"
    assert "s3cret" not in json.dumps(export)

    given = render({"database": {"feedbackExport": {"role": "jobs_ro", "existingSecret": "export-login"}}})
    assert not [o for o in given if o["metadata"]["name"].endswith("-feedback-export")]
    assert env_of(find(given, "Deployment", "-operator"))["PERSONA_DATABASE_SECRET"]["value"] == "export-login"
    assert env_of(find(given, "Deployment", "-bot"))["FEEDBACK_EXPORT_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "export-login", "key": "password"}
