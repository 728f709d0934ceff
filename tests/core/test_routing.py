"""The routing table (contract 2): one version rule, atomic locked updates, strict parsing."""

from __future__ import annotations

import json
import threading

import pytest

from personafleet.errors import PersonaError
from personafleet.names import parse_version
from personafleet.routing import ROUTING_FILE, RoutingTable, conversation_key, read_routing, update_routing, version_dir


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


# ---- weighted routes (issue 23) -------------------------------------------------------------------
def canary_table(weights: dict[int, int]) -> RoutingTable:
    table = RoutingTable()
    table.add("p", 4, serve=True)
    table.add("p", 5, serve=False)
    table.weigh("p", weights)
    return table


def test_a_conversation_stays_on_its_version_and_the_shares_follow_the_weights():
    table = canary_table({4: 90, 5: 10})
    keys = [conversation_key(chat, "p") for chat in range(4000)]
    chosen = {key: table.resolve("p", conversation=key) for key in keys}
    assert all(table.resolve("p", conversation=key) == chosen[key] for key in keys[:200] for _ in range(3))
    share = sum(v == 5 for v in chosen.values()) / len(keys)
    assert 0.08 < share < 0.12
    assert table.resolve("p") == 4  # no key: the serving version
    assert table.resolve("p", 5) == 5 and table.resolve("p", 4) == 4  # pins still work


def test_a_growing_canary_keeps_its_conversations_and_takes_only_from_the_old_version():
    keys = [conversation_key(chat) for chat in range(2000)]
    before = {k: canary_table({4: 90, 5: 10}).resolve("p", conversation=k) for k in keys}
    after = {k: canary_table({4: 50, 5: 50}).resolve("p", conversation=k) for k in keys}
    assert all(after[k] == 5 for k in keys if before[k] == 5)
    moved = sum(before[k] != after[k] for k in keys) / len(keys)
    assert 0.35 < moved < 0.45


def test_serving_a_version_ends_the_canary_and_withdrawing_the_canary_sends_everyone_back():
    table = canary_table({4: 50, 5: 50})
    table.add("p", 5, serve=True)
    assert table.personas["p"].weights is None
    assert {table.resolve("p", conversation=conversation_key(c)) for c in range(50)} == {5}

    table = canary_table({4: 50, 5: 50})
    assert table.prune("p", 1) == []  # a weighted version is never pruned
    table.withdraw("p", 5)
    assert table.personas["p"].weights is None and table.personas["p"].versions == [4]
    assert {table.resolve("p", conversation=conversation_key(c)) for c in range(50)} == {4}


def test_all_weight_on_the_serving_version_is_no_canary():
    assert canary_table({4: 100, 5: 0}).personas["p"].weights is None
    assert canary_table({4: 0, 5: 100}).personas["p"].weights == {5: 100}


def test_a_table_without_weights_is_written_as_before_and_weights_round_trip(tmp_path):
    update_routing(tmp_path, lambda t: t.add("p", 1, serve=True))
    assert json.loads((tmp_path / ROUTING_FILE).read_text()) == {"personas": {"p": {"serving": 1, "versions": [1]}}}
    update_routing(tmp_path, lambda t: (t.add("p", 2, serve=False), t.weigh("p", {1: 75, 2: 25})))
    assert json.loads((tmp_path / ROUTING_FILE).read_text())["personas"]["p"]["weights"] == {"1": 75, "2": 25}
    assert read_routing(tmp_path).personas["p"].weights == {1: 75, 2: 25}


@pytest.mark.parametrize("weights, reason", [({"3": 10, "1": 90}, "does not list"), ({"1": -1, "2": 5}, "non-negative"),
                                             ({"1": 0, "2": 0}, "not all 0")])
def test_bad_weights_are_refused_with_the_reason(tmp_path, weights, reason):
    (tmp_path / ROUTING_FILE).write_text(json.dumps({"personas": {"p": {"serving": 1, "versions": [1, 2],
                                                                        "weights": weights}}}))
    with pytest.raises(PersonaError, match=reason):
        read_routing(tmp_path)
