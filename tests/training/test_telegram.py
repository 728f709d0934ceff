"""Reading Telegram Desktop exports: both shapes, every text shape, and every way a file can be wrong."""

import json
import shutil
from pathlib import Path

import pytest

from personafleet.errors import PersonaError
from persona_training.telegram import DELETED_ACCOUNT, TextEntity, flatten_text, load_export, parse_export

EXPORTS = Path(__file__).parent / "fixtures" / "exports"


def test_single_chat_export_keeps_chat_identity_and_every_message():
    (chat,) = load_export(EXPORTS / "single_chat.json")
    assert (chat.id, chat.name, chat.type) == (777, "Fixture: ops chat", "private_supergroup")
    assert len(chat.messages) == 29
    assert [m.type for m in chat.messages].count("service") == 2


def test_account_export_reads_chats_list_and_left_chats():
    chats = load_export(EXPORTS / "account.json")
    assert [(c.id, c.type) for c in chats] == [
        (1002, "personal_chat"), (1001, "saved_messages"), (4242, "private_group"), (9001, "public_supergroup"),
    ]
    assert chats[1].name is None and chats[1].messages == []
    assert chats[2].messages[2].reply_to_message_id == 8


def test_a_directory_holding_result_json_is_read(tmp_path):
    shutil.copy(EXPORTS / "account.json", tmp_path / "result.json")
    assert len(load_export(tmp_path)) == 4


@pytest.mark.parametrize(
    ("text", "flat"),
    [
        ("plain words", "plain words"),
        ("", ""),
        (["see ", {"type": "link", "text": "https://k8s.io"}, " now"], "see https://k8s.io now"),
        ([{"type": "code", "text": "kubectl get po"}], "kubectl get po"),
        (["ask ", {"type": "mention_name", "text": "Anna", "user_id": 5}, "!"], "ask Anna!"),
    ],
)
def test_text_is_flattened_from_strings_and_entity_lists(text, flat):
    (chat,) = parse_export({"id": 1, "messages": [{"id": 1, "type": "message", "date": "2024-01-01T00:00:00", "text": text}]})
    assert flatten_text(chat.messages[0].text) == flat


def test_segments_wrap_plain_strings_and_keep_entity_types():
    (chat,) = load_export(EXPORTS / "single_chat.json")
    message = {m.id: m for m in chat.messages}[4]
    assert [s.type for s in message.segments()] == ["plain", "link", "plain"]
    assert message.segments()[1] == TextEntity(type="link", text="https://example.com/x")


def test_message_flags_come_from_the_keys_real_exports_use():
    (chat,) = load_export(EXPORTS / "single_chat.json")
    by_id = {m.id: m for m in chat.messages}
    assert by_id[8].forwarded and not by_id[9].forwarded
    assert by_id[5].has_media and by_id[6].has_media and by_id[7].has_media and not by_id[3].has_media
    assert by_id[10].sender is None and by_id[10].author_name == DELETED_ACCOUNT and by_id[10].from_id == "user1099"
    assert by_id[35].from_id is None


def test_timestamp_prefers_date_unixtime_and_falls_back_to_date():
    (chat,) = load_export(EXPORTS / "single_chat.json")
    by_id = {m.id: m for m in chat.messages}
    assert by_id[2].timestamp == 1700000060
    assert by_id[38].timestamp == 1700000000 + 608 * 60  # no date_unixtime: an older export


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("missing.json", "no such file"),
        ("not_json.json", "not valid JSON"),
        ("truncated.json", "truncated"),
        ("not_telegram.json", "not a Telegram Desktop export"),
        ("bad_message.json", "messages.0.id"),
    ],
)
def test_bad_files_raise_one_line_errors_naming_the_file(name, says):
    with pytest.raises(PersonaError) as caught:
        load_export(EXPORTS / name)
    message = str(caught.value)
    assert says in message and name in message and "\n" not in message


@pytest.mark.parametrize("document", [[1, 2], "text", {"chats": {"about": "no list"}}, {"messages": "nope"}])
def test_json_that_is_no_export_is_refused(document):
    with pytest.raises(PersonaError, match="not a Telegram Desktop export"):
        parse_export(json.loads(json.dumps(document)))
