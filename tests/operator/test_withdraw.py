"""Withdrawing a failed version from the routing table, at every point a rollout can fail."""

from __future__ import annotations

from personafleet.routing import RoutingTable
from persona_operator.rollout import withdraw_version


def table(**personas) -> RoutingTable:
    return RoutingTable.model_validate({"personas": {name: {"serving": s, "versions": v} for name, (s, v) in personas.items()}})


def test_before_the_switch_the_version_is_unlisted_and_the_serving_one_stays():
    routes = table(alice=(1, [1, 2]))
    withdraw_version(routes, "alice", 2, previous=1)
    assert routes.personas["alice"].serving == 1 and routes.personas["alice"].versions == [1]


def test_after_the_switch_the_previous_version_serves_again():
    routes = table(alice=(2, [1, 2]), bob=(4, [4]))
    withdraw_version(routes, "alice", 2, previous=1)
    assert routes.personas["alice"].serving == 1 and routes.personas["alice"].versions == [1]
    assert routes.personas["bob"].serving == 4  # others untouched


def test_a_pruned_previous_version_is_listed_again():
    routes = table(alice=(3, [3]))
    withdraw_version(routes, "alice", 3, previous=1)
    assert routes.personas["alice"].serving == 1 and routes.personas["alice"].versions == [1]


def test_a_first_version_leaves_the_table():
    routes = table(alice=(1, [1]))
    withdraw_version(routes, "alice", 1, previous=None)
    assert "alice" not in routes.personas


def test_the_serving_version_itself_is_never_withdrawn():
    routes = table(alice=(2, [1, 2]))
    withdraw_version(routes, "alice", 2, previous=2)  # a retry of what already serves
    assert routes.personas["alice"].serving == 2 and routes.personas["alice"].versions == [1, 2]
    withdraw_version(routes, "carol", 1, previous=None)  # not routed at all: nothing to do
    assert set(routes.personas) == {"alice"}
