"""Published versions (contract 1): `version.json` marks a complete version; locally, `persona serve`
routes published personas the table does not list yet."""

import pytest

from persona_serving.server import route_unlisted
from personafleet.errors import PersonaError
from personafleet.routing import update_routing, version_dir
from personafleet.store import (
    VERSION_FILE, VersionInfo, published_version, published_versions, read_version_info, write_version_info,
)


def publish_record(store, persona: str, version: int, folder_version: int | None = None) -> None:
    folder = version_dir(store, persona, folder_version or version)
    folder.mkdir(parents=True)
    write_version_info(folder, VersionInfo(persona=persona, version=version, base="base"))


def test_only_complete_versions_in_their_own_folder_count(tmp_path):
    publish_record(tmp_path, "devops-dude", 1)
    publish_record(tmp_path, "devops-dude", 2)
    version_dir(tmp_path, "devops-dude", 3).mkdir()  # being written: no version.json yet
    publish_record(tmp_path, "pm-life", 4, folder_version=5)  # a record in the wrong folder
    (version_dir(tmp_path, "pm-life", 6)).mkdir()
    (version_dir(tmp_path, "pm-life", 6) / VERSION_FILE).write_text("{half")
    assert published_versions(tmp_path) == {"devops-dude": [1, 2]}
    with pytest.raises(PersonaError, match="no version.json"):
        read_version_info(version_dir(tmp_path, "devops-dude", 3))
    with pytest.raises(PersonaError, match="not a valid version record"):
        read_version_info(version_dir(tmp_path, "pm-life", 6))


def test_a_published_version_lives_in_the_store_under_the_name_and_number_it_records(tmp_path):
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    publish_record(store, "devops-dude", 1)
    publish_record(store, "pm-life", 3, folder_version=5)
    publish_record(elsewhere, "outsider", 1)
    (store / "outsider").symlink_to(elsewhere / "outsider")
    publish_record(elsewhere, "linked", 2)
    (store / "linked").mkdir()
    (store / "linked" / "v2").symlink_to(elsewhere / "linked" / "v2")
    (store / "alias").symlink_to(store / "devops-dude")  # inside the store, but devops-dude's record

    assert published_version(store, "devops-dude", 1).version == 1
    for persona, version, says in [("outsider", 1, "outside the model store"), ("linked", 2, "outside the model store"),
                                   ("pm-life", 5, "names pm-life v3, not pm-life v5"),
                                   ("alias", 1, "names devops-dude v1, not alias v1"), ("devops-dude", 2, "no version.json")]:
        with pytest.raises(PersonaError, match=says):
            published_version(store, persona, version)
    assert published_versions(store) == {"devops-dude": [1]}


def test_serve_routes_unlisted_personas_to_their_newest_version_and_keeps_listed_ones(tmp_path):
    publish_record(tmp_path, "devops-dude", 1)
    publish_record(tmp_path, "devops-dude", 2)
    publish_record(tmp_path, "pm-life", 1)
    update_routing(tmp_path, lambda table: table.add("devops-dude", 1, serve=True))
    table = route_unlisted(tmp_path)
    assert {name: route.serving for name, route in table.personas.items()} == {"devops-dude": 1, "pm-life": 1}
