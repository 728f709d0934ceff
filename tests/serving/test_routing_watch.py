"""A worker's routing table: re-read on change only, an invalid table never replaces a good one."""

import os

from persona_serving.routing_watch import RoutingWatch
from personafleet.routing import ROUTING_FILE, update_routing


def test_a_changed_table_is_read_and_an_unchanged_one_is_not(tmp_path):
    watch = RoutingWatch(tmp_path)
    assert watch.poll() is None  # no table yet
    update_routing(tmp_path, lambda t: t.add("devops-dude", 1, serve=True))
    table = watch.poll()
    assert table is not None and table.resolve("devops-dude") == 1
    watch.accept(table)
    assert watch.poll() is None  # same inode, mtime and size: one stat, no read
    update_routing(tmp_path, lambda t: t.add("devops-dude", 2, serve=True))
    assert watch.poll().resolve("devops-dude") == 2


def test_an_invalid_table_is_ignored_and_the_last_good_one_stays(tmp_path, caplog):
    watch = RoutingWatch(tmp_path)
    update_routing(tmp_path, lambda t: t.add("devops-dude", 1, serve=True))
    watch.accept(watch.poll())
    for text in ('{"personas": {"devops-dude": {"serving": 1', '{"personas": {"Bad Name": {"serving": 1, "versions": [1]}}}'):
        (tmp_path / ROUTING_FILE).write_text(text)
        assert watch.poll() is None
        assert watch.table.resolve("devops-dude") == 1
    assert watch.poll() is None  # the same bad file is not read (or logged) again
    assert sum("Ignoring the routing table" in r.message for r in caplog.records) == 2
    os.remove(tmp_path / ROUTING_FILE)
    assert watch.poll() is None and watch.table.resolve("devops-dude") == 1
