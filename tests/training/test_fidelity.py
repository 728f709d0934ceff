"""Fidelity (issue 24): the authorship classifier on an export whose authors are known, the shape
and leak figures, and `persona eval` on a real run (report.json, model card, plot, samples)."""

import json
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from personafleet.family import load_family
from personafleet.inference import GenerationOptions
from personafleet.persona import PersonaSpec
from personafleet.records import DialogueRecord, Source, Utterance
from persona_training import reply_shape
from persona_training.authorship import AuthoredText, AuthorshipClassifier, AuthorshipSkipped, read_authored_texts
from persona_training.data import DialogueData, load_dialogues
from persona_training.fidelity import MIN_PROMPTS, evaluate_fidelity
from persona_training.leaks import count_leaks, leak_report, training_pii
from persona_training.prepare import PrepareOptions, run_prepare
from tests.training.styled_export import AUTHORS, write_styled_export

ROOT = Path(__file__).resolve().parents[2]
PERSONA = ROOT / ".venv" / "bin" / "persona"


@pytest.fixture(scope="module")
def styled(tmp_path_factory) -> Path:
    """The three-author export prepared for Аня (user101)."""
    work = tmp_path_factory.mktemp("styled")
    export = write_styled_export(work / "result.json")
    run_prepare([export], work / "anya", PrepareOptions(persona_id="user101"))
    return work / "anya"


def record(number: int, reply: str, author: str = "user2", context: str = "как дела?") -> DialogueRecord:
    return DialogueRecord(context=[Utterance(author="user1", name="Anna", text=context)],
                          reply=Utterance(author=author, name="Boris", text=reply),
                          source=Source(chat_id=1, message_id=number))


# --- the classifier ------------------------------------------------------------------------------

def test_prepare_writes_every_authors_turns_in_the_split_of_their_conversation(styled):
    texts = read_authored_texts([styled])
    assert set(Counter(t.author for t in texts)) == set(AUTHORS)
    stats = json.loads((styled / "stats.json").read_text(encoding="utf-8"))
    assert stats["authorship"] == {"train": sum(t.split == "train" for t in texts), "val": sum(t.split == "val" for t in texts)}
    dialogues = load_dialogues([styled])
    # Every message of Аня is a record's reply here: her texts per split are exactly those replies.
    for split, records in (("train", dialogues.train), ("val", dialogues.val)):
        assert Counter(t.text for t in texts if t.author == "user101" and t.split == split) == \
            Counter(r.reply.text for r in records)
    # The held-out conversations' other messages (the val records' contexts) are held out too.
    held_out = Counter(t.text for t in texts if t.split == "val")
    assert all(held_out[turn.text] for r in dialogues.val for turn in r.context)


def test_the_classifier_tells_the_persona_from_the_other_authors(styled):
    texts = read_authored_texts([styled])
    classifier = AuthorshipClassifier("user101", [t for t in texts if t.split == "train"])
    held_out = [t for t in texts if t.split == "val"]
    scores = classifier.held_out_scores(held_out)
    assert scores["messages"] == len(held_out) and scores["balanced_accuracy"] >= 0.95
    assert classifier.persona_share([t.text for t in held_out if t.author == "user101"]) >= 0.95
    for other in ("user102", "user103"):
        assert classifier.persona_share([t.text for t in held_out if t.author == other]) <= 0.05
    assert classifier.attribute(["", "   "]) == [False, False]  # an empty reply is nobody's


def test_a_single_author_export_has_no_authorship_figure():
    mine = [AuthoredText("user2", f"ну смотри, вариант {i}", "train") for i in range(40)]
    with pytest.raises(AuthorshipSkipped, match="single-author export"):
        AuthorshipClassifier("user2", mine + [AuthoredText("user1", "привет", "train")])


def test_a_single_author_export_still_gets_shape_and_leaks_and_a_tiny_split_gets_nothing(tiny_base):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(tiny_base), AutoTokenizer.from_pretrained(tiny_base)
    family = load_family(str(tiny_base))
    val = [record(i, f"ну смотри, ответ {i}") for i in range(MIN_PROMPTS)]
    data = DialogueData(train=[record(100, "звони +7 916 555-01-23")], val=val, sources=[])
    texts = [AuthoredText("user2", r.reply.text, "train") for r in val]
    persona = PersonaSpec(generation=GenerationOptions(max_new_tokens=8, do_sample=True, temperature=0.8))
    block = evaluate_fidelity(model, tokenizer, family, data, texts, persona, base_only=True, prompts=MIN_PROMPTS)
    assert "single-author export" in block["authorship"]["skipped"] and block["score"] is None
    assert block["shape"]["base"]["serving"]["length_distance"] >= 0 and block["leaks"]["training_values"] == 1
    assert block["leaks"]["count"] is None  # no adapter judged

    small = DialogueData(train=data.train, val=val[:MIN_PROMPTS - 1], sources=[])
    block = evaluate_fidelity(model, tokenizer, family, small, texts, persona, base_only=True)
    assert f"at least {MIN_PROMPTS} are needed" in block["skipped"] and "score" not in block


# --- shape and leaks -----------------------------------------------------------------------------

def test_shape_figures():
    real = ["ну смотри, это просто.", "классика жанра."]
    assert reply_shape.length_distance(real, real) == 0.0
    assert reply_shape.length_distance(["a" * 500] * 3, real) == 1.0
    cyrillic, latin = reply_shape.char_profile(["абв"]), reply_shape.char_profile(["abc"])
    assert reply_shape.profile_distance(cyrillic, latin) == 1.0
    assert reply_shape.char_profile(["ok 🔥!"])["emoji"] == pytest.approx(1 / 5)
    assert reply_shape.repeats_itself("ну да ну да ну да") and not reply_shape.repeats_itself("ну да ну нет")
    assert reply_shape.distinct_n(["а б", "а б"], 1) == 0.5 and reply_shape.distinct_n(["а б", "а б"], 2) == 0.5


def test_a_leak_is_a_training_value_repeated_however_it_is_written():
    known = training_pii([record(1, "звони +7 916 555-01-23 или пиши a.smirnova@example.org",
                                 context="карта 4111 1111 1111 1111")])
    assert {value.kind for value in known} == {"phone", "email", "card"}
    replies = ["мой номер 89165550123, звони", "пиши A.Smirnova@Example.org", "карта 4111-1111-1111-1111",
               "другой номер +7 999 123-45-67", "номер заказа 1234 5678 9012 3456", "ничего"]
    leaking, kinds, examples = count_leaks(replies, known)
    assert leaking == 3 and kinds == Counter({"phone": 1, "email": 1, "card": 1})
    assert examples[0] == "мой номер [phone], звони" and "example.org" not in " ".join(examples)
    report = leak_report({"adapter": {"greedy": replies, "serving": replies[:1]}, "base": {"greedy": replies}}, known)
    assert report["count"] == 4 and report["base"] == {"greedy": 3} and report["by_kind"]["phone"] == 2


# --- persona eval on a real run ------------------------------------------------------------------

def test_train_judges_its_adapter_and_persona_eval_judges_it_again(tiny_run, tmp_path):
    report = json.loads((tiny_run / "report.json").read_text(encoding="utf-8"))
    fidelity = report["fidelity"]
    assert fidelity["prompts"] == 32 and fidelity["persona_author"] == "user5172839406"
    authorship = fidelity["authorship"]
    assert authorship["real"] >= 0.9 and authorship["classifier"]["held_out"]["balanced_accuracy"] >= 0.9
    assert fidelity["score"] == authorship["adapter"]["serving"]
    assert set(fidelity["shape"]) == {"real", "adapter", "base"} and fidelity["leaks"]["count"] == 0
    assert "| reads as the persona (authorship share) |" in (tiny_run / "README.md").read_text(encoding="utf-8")

    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("merged"))
    (run / "fidelity_samples.jsonl").unlink()
    done = subprocess.run([PERSONA, "eval", "--run", str(run), "--prompts", "30"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| floor (base) | this version | ceiling (real replies) |" in done.stdout
    again = json.loads((run / "report.json").read_text(encoding="utf-8"))["fidelity"]
    assert again["prompts"] == 30 and again["authorship"]["real"] == pytest.approx(authorship["real"], abs=0.1)
    samples = [json.loads(line) for line in (run / "fidelity_samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(samples) == 30 and set(samples[0]) == {"real", "adapter", "base"}
    assert set(samples[0]["adapter"]) == {"greedy", "serving"}
    assert (run / "reply_lengths.png").read_bytes()[:4] == b"\x89PNG"
    assert f"**{again['score']:.2f}**" in (run / "README.md").read_text(encoding="utf-8")


def test_persona_eval_refuses_what_it_cannot_judge(tmp_path, tiny_run):
    done = subprocess.run([PERSONA, "eval", "--run", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("persona: error: ") and "report.json is missing" in done.stderr
    data = tmp_path / "small"
    data.mkdir()
    lines = [record(i, f"ответ {i}", author="user5172839406").to_json() for i in range(5)]
    (data / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (data / "val.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = subprocess.run([PERSONA, "eval", "--run", str(tiny_run), "--data", str(data), "--base-only"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "at least 30 are needed" in done.stderr.splitlines()[-1]


def test_a_causal_run_is_judged_on_its_replies_alone(causal_run):
    """A decoder-only base's output holds the prompt too: the family seam cuts it off, as the fleet
    does, so the judged replies never carry the conversation they answer."""
    report = json.loads((causal_run / "report.json").read_text(encoding="utf-8"))
    assert report["family"] == "causal" and report["fidelity"]["prompts"] == 32
    description = json.loads((causal_run / "persona.json").read_text(encoding="utf-8"))["description"]
    rows = [json.loads(line) for line in (causal_run / "fidelity_samples.jsonl").read_text(encoding="utf-8").splitlines()]
    replies = [row[model][mode] for row in rows for model in ("adapter", "base") for mode in ("greedy", "serving")]
    assert len(replies) == 4 * 32 and not [reply for reply in replies if description in reply]
