"""The reply filter (issue 24): its rules, its faults, and the real fleet handler replacing a blocked
reply by the fallback, counting it by rule, and never logging its text."""

import json
import logging
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from persona_serving.reply_filter import (
    DEFAULT_FALLBACK, ReplyFilter, TIMEOUT_RULE, held_out_warning, load_rules,
)
from persona_serving.server import reply_filter_warnings
from personafleet.errors import PersonaError
from personafleet.persona import PERSONA_FILE, PersonaSpec
from personafleet.reply_rules import ReplyFilterRules
from personafleet.routing import update_routing
from persona_training.package import publish_version

ROOT = Path(__file__).resolve().parents[2]
PERSONA = ROOT / ".venv" / "bin" / "persona"


def rules(**fields) -> ReplyFilterRules:
    return ReplyFilterRules.model_validate(fields)


# --- the rules -----------------------------------------------------------------------------------

def test_blocklist_words_and_phrases_match_whole_words_in_any_case():
    only = ReplyFilter(rules(blocklist=["дурак", "плохое слово", "ёлки"]))
    assert only.check("Ну ты ДУРАК!") == "blocklist" and only.check("это плохое \n слово") == "blocklist"
    assert only.check("это Плохое слово, да") == "blocklist" and only.check("ЁЛКИ, опять") == "blocklist"
    assert only.check("дураки и дороги") is None and only.check("Слово плохое") is None


def test_patterns_in_order_then_pii_and_the_first_rule_matched_is_named():
    both = ReplyFilter(rules(patterns=[{"name": "money", "regex": r"\d+\s*(руб|₽)"}, {"name": "any-number", "regex": r"\d"}],
                             pii=["phone", "email", "card", "url"]))
    assert both.check("дай 500 руб") == "money" and both.check("их 3") == "any-number"
    pii = ReplyFilter(rules(pii=["phone", "email", "card", "url"]))
    assert pii.check("звони +7 (916) 555-01-23") == "phone" and pii.check("пиши a.b@example.org") == "email"
    assert pii.check("карта 4111 1111 1111 1111") == "card" and pii.check("смотри github.com/org/repo") == "url"
    assert pii.check("заказ 1234 5678 9012 3456") is None  # 16 digits that fail Luhn are no card
    assert ReplyFilter(rules(pii=["email"])).check("звони +7 916 555-01-23") is None  # only the kinds asked for


def test_the_persona_fallback_wins_over_the_fleets_and_no_rules_pass_everything():
    fleet, persona = rules(blocklist=["x"], fallback="Флот."), rules(fallback="Персона.")
    assert ReplyFilter(fleet, persona).apply("x").reply == "Персона."
    assert ReplyFilter(fleet, None).apply("x").reply == "Флот." and ReplyFilter(rules(blocklist=["x"])).fallback == DEFAULT_FALLBACK
    assert ReplyFilter(fleet, persona).apply("ок").rule is None and ReplyFilter(fleet, persona).apply("ок").reply == "ок"
    empty = ReplyFilter(None, rules(fallback="y"))
    assert not empty and empty.apply("звони 8 916 555 01 23").rule is None


# --- faults --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "message"), [
    ({"patterns": [{"name": "broken", "regex": "(unclosed"}]}, "rule 'broken': invalid regular expression"),
    ({"patterns": [{"name": "phone", "regex": "x"}]}, "rule 'phone': the name is reserved"),
    ({"patterns": [{"name": "a", "regex": "x"}, {"name": "a", "regex": "y"}]}, "rule 'a' is named twice"),
    ({"patterns": [{"name": "Bad Name", "regex": "x"}]}, "patterns.0.name"),
    ({"pii": ["passport"]}, "pii.0"),
    ({"blocklist": ["  "]}, "blocklist entry"),
])
def test_a_bad_rule_is_refused_where_it_is_written_with_its_name(fields, message):
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        ReplyFilterRules.model_validate(fields)
    with pytest.raises(ValidationError, match="reply_filter"):
        PersonaSpec.model_validate({"reply_filter": fields})  # persona.json: train.yaml, package, the handler


def test_persona_serve_refuses_a_filter_file_with_a_bad_rule_on_one_line(tmp_path):
    path = tmp_path / "filter.yaml"
    path.write_text("patterns:\n  - {name: insults, regex: '[дурак'}\n", encoding="utf-8")
    with pytest.raises(PersonaError, match="rule 'insults': invalid regular expression"):
        load_rules(path)
    done = subprocess.run([PERSONA, "serve", "--model-store", str(tmp_path), "--base", "b", "--reply-filter", str(path),
                           "--workdir", str(tmp_path / "w")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "rule 'insults'" in done.stderr
    assert not (tmp_path / "w").exists()  # refused before anything starts


def test_a_pattern_that_runs_away_blocks_its_reply_instead_of_the_worker():
    slow = ReplyFilter(rules(patterns=[{"name": "runaway", "regex": r"(a|aa)+$"}]))
    assert slow.check("a" * 40 + "!") == TIMEOUT_RULE


def test_a_filter_that_blocks_the_persons_own_replies_is_warned_about():
    replies = ["ну смотри, это просто.", "классика жанра.", "работает — не трогай."]
    warning = held_out_warning(ReplyFilter(rules(patterns=[{"name": "everything", "regex": "."}])), replies, "devops-dude v3")
    assert warning is not None and "devops-dude v3 blocks 3 of its 3 real held-out replies (rule 'everything': 3)" in warning
    assert held_out_warning(ReplyFilter(rules(blocklist=["дурак"])), replies, "x") is None
    assert held_out_warning(ReplyFilter(rules(patterns=[{"name": "all", "regex": "."}])), [], "x") is None  # nothing to judge


# --- the real handler ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def blocking_store(tiny_run, tmp_path_factory) -> Path:
    """devops-dude v1 (the tiny run, judged on held-out replies when it was trained) whose persona
    filter blocks every reply."""
    store = tmp_path_factory.mktemp("filtered") / "store"
    folder = publish_version(tiny_run, "devops-dude", 1, store / "devops-dude" / "v1")
    spec = json.loads((folder / PERSONA_FILE).read_text(encoding="utf-8"))
    spec["reply_filter"] = {"patterns": [{"name": "everything", "regex": "."}], "fallback": "Не скажу."}
    (folder / PERSONA_FILE).write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    update_routing(store, lambda table: table.add("devops-dude", 1, serve=True))
    return store


def test_serve_warns_at_start_up_about_a_filter_that_blocks_the_held_out_replies(blocking_store):
    (warning,) = reply_filter_warnings(blocking_store, rules(blocklist=["дурак"]))
    assert "devops-dude v1 blocks 32 of its 32 real held-out replies (rule 'everything': 32)" in warning
    assert reply_filter_warnings(blocking_store.parent / "empty", None) == []


def test_the_handler_sends_the_fallback_counts_the_rule_and_never_logs_the_text(blocking_store, tiny_base, tmp_path, caplog):
    from persona_serving.config import FleetConfig
    from tests.fixtures.handler import in_process_handler

    config = FleetConfig(base=str(tiny_base), model_store=str(blocking_store), reply_filter=rules(blocklist=["дурак"]))
    handler = in_process_handler(tmp_path, config)
    greedy = {"max_new_tokens": 6, "do_sample": False}
    with caplog.at_level(logging.DEBUG):
        routed = handler.preprocess([{"body": {"persona": "devops-dude", "message": "что с деплоем?", "generation": greedy}}])
        (answer,) = handler.inference(routed)
    assert answer.reply == "Не скажу." and answer.model_version == "1" and answer.tokens > 0
    prepared = handler._prepare(routed[0], handler.adapters.get(("devops-dude", 1))[0])
    (generated,), _ = handler.fleet.generate([prepared.prompt], [prepared.entry], prepared.options)
    assert generated and generated != "Не скажу."
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if generated in m], "the blocked reply reached a log"
    assert any("blocks 32 of its 32 real held-out replies" in m for m in messages)  # warned at load
    counted = [m for m in messages if m.startswith("[METRICS]persona_handler_filtered_replies_total.Count:1")]
    assert len(counted) == 1 and "persona:devops-dude" in counted[0] and "rule:everything" in counted[0]
