import pytest

from personafleet.errors import PersonaError
from personafleet.records import DialogueRecord, read_records, write_records

RECORD = {
    "context": [{"author": "user1", "name": "Аня", "text": "привет"}],
    "reply": {"author": "user2", "name": "Boris", "text": "hi"},
    "source": {"chat_id": -100123, "message_id": 42},
}


def test_records_round_trip_through_json_lines_keeping_cyrillic_readable(tmp_path):
    path = tmp_path / "train.jsonl"
    assert write_records(path, [DialogueRecord.model_validate(RECORD)] * 2) == 2
    assert "привет" in path.read_text(encoding="utf-8")
    assert [r.model_dump() for r in read_records(path)] == [RECORD, RECORD]


@pytest.mark.parametrize(
    "line, where",
    [
        ('{"context": [], "reply": {"author": "a", "name": "b", "text": "c"}, "source": {"chat_id": 1, "message_id": 2}}', "context"),
        ('{"context": [{"author": "a", "name": "b", "text": "c"}], "source": {"chat_id": 1, "message_id": 2}}', "reply"),
        ("not json", "record"),
    ],
)
def test_a_bad_line_is_reported_with_file_line_and_field(tmp_path, line, where):
    path = tmp_path / "bad.jsonl"
    path.write_text(__import__("json").dumps(RECORD, ensure_ascii=False) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(PersonaError, match=rf"bad.jsonl:2: not a dialogue record \({where}"):
        read_records(path)


def test_a_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(PersonaError, match="cannot read"):
        read_records(tmp_path / "nope.jsonl")


def test_a_file_that_is_not_utf8_is_a_user_error_naming_the_line(tmp_path):
    path = tmp_path / "train.jsonl"
    write_records(path, [DialogueRecord.model_validate(RECORD)])
    path.write_bytes(path.read_bytes() + b"\xff\xfe garbage\n")
    with pytest.raises(PersonaError, match=r"train.jsonl:2: not UTF-8 text"):
        read_records(path)
