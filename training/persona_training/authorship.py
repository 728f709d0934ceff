"""Who wrote this? A classifier that tells the persona's messages from the other authors' of the
same export: the judge of whether generated replies read like the persona.

`persona prepare` writes every author's own turns (`authorship.jsonl`, beside train.jsonl), each
in the split of its conversation, so the classifier is trained on the training side only and
never saw a held-out message. Features are character n-grams (1-4, inside word boundaries, case
kept: capitals, punctuation, emoji and the Latin/Cyrillic mix are style) weighted by TF-IDF; the
model is a logistic regression, persona against everyone else, with balanced class weights (the
persona is often the most active author: balancing keeps "always the persona" from being a cheap
answer). A text is attributed to the persona when the model gives it at least even odds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from personafleet.errors import PersonaError

AUTHORSHIP_FILE = "authorship.jsonl"
MIN_MESSAGES = 20  # fewer training messages by the persona, or by everyone else: no authorship figure


@dataclass(frozen=True)
class AuthoredText:
    """One turn as its author wrote it, and the split of its conversation."""

    author: str
    text: str
    split: Literal["train", "val"]


def write_authored_texts(path: Path, texts: Iterable[AuthoredText]) -> None:
    with path.open("w", encoding="utf-8") as out:
        for text in texts:
            out.write(json.dumps(asdict(text), ensure_ascii=False) + "\n")


def read_authored_texts(data_dirs: Sequence[Path]) -> list[AuthoredText]:
    """The authorship samples of every data directory that has them (a feedback export has none)."""
    texts: list[AuthoredText] = []
    for directory in data_dirs:
        path = directory / AUTHORSHIP_FILE
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                try:
                    texts.append(AuthoredText(**json.loads(line)))
                except (ValueError, TypeError) as exc:
                    raise PersonaError(f"{path}:{number}: not an authorship record ({exc})") from None
    return texts


class AuthorshipSkipped(Exception):
    """No classifier can be trained on these data (the reason is the report's note)."""


class AuthorshipClassifier:
    """Character n-grams + logistic regression: the persona against the other authors."""

    def __init__(self, persona: str, train: Sequence[AuthoredText], *, seed: int = 13):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        mine = sum(text.author == persona for text in train)
        others = len(train) - mine
        if mine < MIN_MESSAGES:
            raise AuthorshipSkipped(f"the persona ({persona}) has {mine} training messages; "
                                    f"the classifier needs at least {MIN_MESSAGES}")
        if others < MIN_MESSAGES:
            raise AuthorshipSkipped(f"no other author to tell the persona from ({others} messages by others, "
                                    f"at least {MIN_MESSAGES} needed): a single-author export")
        self.persona = persona
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), lowercase=False,
                                          sublinear_tf=True, min_df=2, max_features=200_000)
        features = self.vectorizer.fit_transform([text.text for text in train])
        self.model = LogisticRegression(C=4.0, class_weight="balanced", max_iter=1000, random_state=seed)
        self.model.fit(features, [text.author == persona for text in train])
        self.summary = {"train_messages": {"persona": mine, "others": others},
                        "authors": len({text.author for text in train}), "features": len(self.vectorizer.vocabulary_)}

    def attribute(self, texts: Sequence[str]) -> list[bool]:
        """Whether each text reads as the persona's (an empty text is nobody's)."""
        kept = [i for i, text in enumerate(texts) if text.strip()]
        attributed = [False] * len(texts)
        if kept:
            for i, mine in zip(kept, self.model.predict(self.vectorizer.transform([texts[i] for i in kept]))):
                attributed[i] = bool(mine)
        return attributed

    def persona_share(self, texts: Sequence[str]) -> float:
        """Share of `texts` the classifier attributes to the persona: the fidelity figure."""
        return sum(self.attribute(texts)) / len(texts) if texts else 0.0

    def held_out_scores(self, val: Sequence[AuthoredText]) -> dict[str, float | int]:
        """How far the figure can be trusted, on real held-out messages of every author: balanced
        accuracy (the mean of the persona's recall and the others' recall) and the persona's
        recall and precision."""
        from sklearn.metrics import balanced_accuracy_score, precision_score, recall_score

        truth = [text.author == self.persona for text in val]
        if not any(truth) or all(truth):
            return {"messages": len(truth)}  # one side missing: no accuracy to speak of
        predicted = self.attribute([text.text for text in val])
        return {
            "messages": len(truth),
            "balanced_accuracy": round(float(balanced_accuracy_score(truth, predicted)), 4),
            "persona_recall": round(float(recall_score(truth, predicted, zero_division=0.0)), 4),
            "persona_precision": round(float(precision_score(truth, predicted, zero_division=0.0)), 4),
        }
