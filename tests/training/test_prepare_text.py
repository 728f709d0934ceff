"""Text cleaning: no URL survives, and --scrub leaves placeholders instead of personal data."""

import pytest

from persona_training.telegram import TextEntity
from persona_training.text import EMAIL, MENTION, PHONE, clean_text


def plain(text: str) -> list[TextEntity]:
    return [TextEntity(type="plain", text=text)]


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("see https://kubernetes.io/docs/ now", "see now"),
        ("docs at http://example.com?a=1&b=2", "docs at"),
        ("mirror www.example.org/page too", "mirror too"),
        ("join t.me/devops_ru and github.com/org/repo", "join and"),
        ("ftp://files.example.com/x.tar.gz", ""),
        ("values.yaml and rate(http_requests_total[5m]) stay", "values.yaml and rate(http_requests_total[5m]) stay"),
        ("  spaces\n\nand\tnewlines  ", "spaces and newlines"),
    ],
)
def test_urls_are_stripped_from_plain_text(text, cleaned):
    assert clean_text(plain(text)) == cleaned


def test_link_entities_are_dropped_and_text_links_keep_their_words():
    segments = [
        TextEntity(type="plain", text="read "),
        TextEntity(type="text_link", text="the docs", href="https://k8s.io"),
        TextEntity(type="plain", text=" or "),
        TextEntity(type="link", text="k8s.io"),
    ]
    assert clean_text(segments) == "read the docs or"


def test_without_scrub_personal_data_is_left_alone():
    text = "mail ops@example.com, call +7 916 555-01-23, ask @boris_k8s"
    assert clean_text(plain(text)) == text


@pytest.mark.parametrize(
    ("text", "cleaned"),
    [
        ("mail ops.team+ci@example.co.uk now", f"mail {EMAIL} now"),
        ("call +7 916 555-01-23 or 8 (916) 555 01 23", f"call {PHONE} or {PHONE}"),
        ("US +1 415 555 0199.", f"US {PHONE}."),
        ("ask @boris_k8s and @Anna_SRE", f"ask {MENTION} and {MENTION}"),
        ("pod 10.42.3.17 port 8080 v1.30", "pod 10.42.3.17 port 8080 v1.30"),
    ],
)
def test_scrub_replaces_typed_emails_phones_and_mentions(text, cleaned):
    assert clean_text(plain(text), scrub=True) == cleaned


def test_scrub_uses_the_entities_telegram_marked():
    segments = [
        TextEntity(type="email", text="a@b.io"),
        TextEntity(type="plain", text=" "),
        TextEntity(type="phone", text="555-0199"),
        TextEntity(type="plain", text=" "),
        TextEntity(type="mention_name", text="Anna Smirnova"),
    ]
    assert clean_text(segments, scrub=True) == f"{EMAIL} {PHONE} {MENTION}"
