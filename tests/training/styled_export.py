"""A seeded Telegram export of three authors who talk about the same things in measurably different
styles: the known answer for the authorship classifier (tests) and the fidelity benchmark.

- Аня (`user101`): short, lower case, Russian, no final full stop, ")))" and "короче";
- Борис Петрович (`user102`): long, formal Russian sentences, capitalised, semicolons, "Полагаю";
- Chris (`user103`): English in Latin letters, SHOUTED words, "!!!" and emoji.

Every message answers the one before it (a reply within the context window), so each author's
messages are replies of records that `persona prepare --persona-id` keeps.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

AUTHORS = {"user101": "Аня", "user102": "Борис Петрович", "user103": "Chris"}
TOPICS_RU = ["деплой", "кластер", "релиз", "алерты", "база", "бэкап", "сервер", "логи", "очередь", "кэш"]
TOPICS_EN = ["deploy", "cluster", "release", "alerts", "database", "backup", "server", "logs", "queue", "cache"]
VERBS_RU = ["упал", "тормозит", "поднялся", "сломался", "завис", "работает", "обновился"]
VERBS_EN = ["crashed", "is slow", "is up", "broke", "hangs", "works", "got updated"]


def anya(rng: random.Random) -> str:
    topic, verb = rng.choice(TOPICS_RU), rng.choice(VERBS_RU)
    parts = [rng.choice(["короче", "ну", "ваще", "блин"]), topic, verb, rng.choice(["щас гляну", "опять", "ну и ладно", ""])]
    return " ".join(p for p in parts if p) + rng.choice([")))", "", " )", "(("])


def boris(rng: random.Random) -> str:
    topic, verb = rng.choice(TOPICS_RU), rng.choice(VERBS_RU)
    opener = rng.choice(["Полагаю,", "Коллеги,", "Смею заметить,", "Следовательно,"])
    return (f"{opener} {topic} {verb} по причине, которую необходимо установить; "
            f"предлагаю проверить {rng.choice(TOPICS_RU)} и {rng.choice(TOPICS_RU)}, затем доложить о результатах. "
            f"{rng.choice(['Благодарю за внимание.', 'Прошу учесть.', 'Жду ваших соображений.'])}")


def chris(rng: random.Random) -> str:
    topic, verb = rng.choice(TOPICS_EN), rng.choice(VERBS_EN)
    return (f"{rng.choice(['OMG', 'WOW', 'LOL', 'YES'])} the {topic} {verb}!!! "
            f"{rng.choice(['SHIP IT', 'FIX IT', 'ON IT', 'LETS GO'])} {rng.choice(['🔥', '🚀', '💥', '😎'])}")


STYLES = {"user101": anya, "user102": boris, "user103": chris}


def styled_export(messages: int = 900, seed: int = 7) -> dict:
    """A single-chat export of `messages` messages; the authors take turns in a random order."""
    rng = random.Random(seed)
    start = datetime(2025, 1, 6, 9, 0, tzinfo=timezone.utc)
    when, rows, last_author = start, [], None
    for number in range(1, messages + 1):
        author = rng.choice([a for a in AUTHORS if a != last_author])
        when += timedelta(minutes=rng.uniform(6, 40))  # past the merge gap: one message, one turn
        if rng.random() < 0.08:
            when += timedelta(hours=6)  # a new conversation now and then: the split has several
        row = {"id": number, "type": "message", "date": when.strftime("%Y-%m-%dT%H:%M:%S"),
               "date_unixtime": str(int(when.timestamp())), "from": AUTHORS[author], "from_id": author,
               "text": STYLES[author](rng)}
        if number > 1:
            row["reply_to_message_id"] = number - 1
        rows.append(row)
        last_author = author
    return {"name": "styles", "type": "private_group", "id": 4242, "messages": rows}


def write_styled_export(path: Path, messages: int = 900, seed: int = 7) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(styled_export(messages, seed), ensure_ascii=False), encoding="utf-8")
    return path
