"""The routing table (contract 2): one version rule, atomic locked updates, strict parsing."""

from __future__ import annotations

import json
import threading

import pytest

from personafleet.errors import PersonaError
from personafleet.names import parse_version
from personafleet.routing import ROUTING_FILE, read_routing, update_routing, version_dir


@pytest.mark.parametrize("text, expected", [("3", 3), (3, 3), ("v12", 12), (" 7 ", 7)])
def test_versions_are_positive_integers(text, expected):
    assert parse_version(text) == expected


@pytest.mark.parametrize("text", ["1.0", "03", "0", "v0", "-1", "latest", "", True])
def test_other_version_names_are_refused_with_the_rule(text):
    with pytest.raises(PersonaError, match="positive integer"):
        parse_version(text)


def test_version_dir_follows_the_store_layout(tmp_path):
    assert version_dir(tmp_path, "devops-dude", 4) == tmp_path / "devops-dude" / "v4"


def test_missing_table_is_empty_and_updates_are_written(tmp_path):
    assert read_routing(tmp_path).personas == {}
    update_routing(tmp_path, lambda t: t.add("devops-dude", 1, serve=True))
    update_routing(tmp_path, lambda t: t.add("devops-dude", 2, serve=False))
    table = read_routing(tmp_path)
    assert table.resolve("devops-dude") == 1
    assert table.resolve("devops-dude", 2) == 2
    assert table.resolve("devops-dude", 3) is None
    assert table.resolve("nobody") is None
    update_routing(tmp_path, lambda t: t.add("devops-dude", 2, serve=True))
    assert read_routing(tmp_path).resolve("devops-dude") == 2


def test_prune_keeps_newest_and_never_the_serving_version(tmp_path):
    def fill(table):
        for v in (1, 2, 3, 4):
            table.add("p", v, serve=(v == 2))

    table = update_routing(tmp_path, fill)
    dropped = table.prune("p", 2)
    assert dropped == [1]
    assert table.personas["p"].versions == [2, 3, 4]
    table.withdraw("p", 4)
    table.withdraw("p", 2)  # serving: stays
    assert table.personas["p"].versions == [2, 3]


@pytest.mark.parametrize("text", ['{"personas": {"p": {"serving": 1}}', "not json",
                                  '{"personas": {"Bad_Name": {"serving": 1, "versions": [1]}}}'])
def test_invalid_table_is_a_user_error(tmp_path, text):
    (tmp_path / ROUTING_FILE).write_text(text)
    with pytest.raises(PersonaError, match="routing table"):
        read_routing(tmp_path)


def test_concurrent_writers_lose_no_update(tmp_path):
    def writer(persona):
        for v in range(1, 21):
            update_routing(tmp_path, lambda t: t.add(persona, v, serve=True))

    threads = [threading.Thread(target=writer, args=(f"p{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    table = json.loads((tmp_path / ROUTING_FILE).read_text())
    assert {name: route["serving"] for name, route in table["personas"].items()} == {f"p{i}": 20 for i in range(4)}
    assert not list(tmp_path.glob(".routing-*"))


def test_each_versions_base_is_recorded_and_an_old_table_stays_valid(tmp_path):
    """Issue 22: the table records the base a version was published for (optional field)."""
    old = {"personas": {"devops-dude": {"serving": 1, "versions": [1]}}}
    (tmp_path / ROUTING_FILE).write_text(json.dumps(old))
    assert read_routing(tmp_path).base_of("devops-dude", 1) is None
    update_routing(tmp_path, lambda t: t.add("devops-dude", 1, serve=True))
    assert json.loads((tmp_path / ROUTING_FILE).read_text()) == old  # written as before: no empty `bases`

    update_routing(tmp_path, lambda t: t.add("devops-dude", 2, serve=False, base="ai-forever/rugpt3small_based_on_gpt2"))
    update_routing(tmp_path, lambda t: t.add("devops-dude", 3, serve=True, base="ai-forever/FRED-T5-large"))
    table = read_routing(tmp_path)
    assert (table.base_of("devops-dude", 1), table.base_of("devops-dude", 2)) == (None, "ai-forever/rugpt3small_based_on_gpt2")
    update_routing(tmp_path, lambda t: t.add("devops-dude", 2, serve=True))  # switching keeps the recorded base
    assert read_routing(tmp_path).base_of("devops-dude", 2) == "ai-forever/rugpt3small_based_on_gpt2"
    update_routing(tmp_path, lambda t: (t.withdraw("devops-dude", 3), t.prune("devops-dude", 1)))
    written = json.loads((tmp_path / ROUTING_FILE).read_text())["personas"]["devops-dude"]
    assert written == {"serving": 2, "versions": [2], "bases": {"2": "ai-forever/rugpt3small_based_on_gpt2"}}
