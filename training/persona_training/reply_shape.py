"""The shape of a set of replies, compared with the person's real ones: how long, what they are
made of, how varied, how repetitive. Plain functions over strings (no model), so each figure is
tested on its own.

- length distance: the two-sample Kolmogorov-Smirnov statistic of the reply lengths in characters
  (0: the same distribution, 1: no overlap at all);
- profile distance: the total variation distance between the shares of Cyrillic letters, Latin
  letters, digits, punctuation, emoji, spaces and anything else (0..1);
- distinct-1 / distinct-2: distinct words (word pairs) over all words (pairs) of the set: low means
  the same words again and again;
- repetition: share of replies that repeat a word trigram within themselves ("ну ну ну ну").
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

CHAR_CLASSES = ("cyrillic", "latin", "digit", "punctuation", "emoji", "space", "other")


def char_class(char: str) -> str:
    if char.isspace():
        return "space"
    if char.isdigit():
        return "digit"
    if char.isalpha():
        name = unicodedata.name(char, "")
        return "cyrillic" if name.startswith("CYRILLIC") else "latin" if name.startswith("LATIN") else "other"
    category = unicodedata.category(char)
    if category.startswith("P"):
        return "punctuation"
    if category == "So" or "\U0001F000" <= char or char in "\u200d\ufe0f":  # pictographs, ZWJ, emoji presentation
        return "emoji"
    return "other"


def char_profile(texts: Sequence[str]) -> dict[str, float]:
    """Share of each character class over all characters of `texts`."""
    counts = dict.fromkeys(CHAR_CLASSES, 0)
    for text in texts:
        for char in text:
            counts[char_class(char)] += 1
    total = sum(counts.values()) or 1
    return {name: count / total for name, count in counts.items()}


def profile_distance(a: dict[str, float], b: dict[str, float]) -> float:
    """Total variation distance between two character profiles."""
    return sum(abs(a[name] - b[name]) for name in CHAR_CLASSES) / 2


def length_distance(texts: Sequence[str], real: Sequence[str]) -> float:
    """Kolmogorov-Smirnov statistic of the character lengths of `texts` against `real`."""
    from scipy.stats import ks_2samp

    if not texts or not real:
        return 1.0
    return float(ks_2samp([len(t) for t in texts], [len(t) for t in real]).statistic)


def distinct_n(texts: Sequence[str], n: int) -> float:
    grams = [tuple(words[i:i + n]) for words in (text.split() for text in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeats_itself(text: str, n: int = 3) -> bool:
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(grams) != len(set(grams))


def shape(texts: Sequence[str], real: Sequence[str]) -> dict[str, float]:
    """Every shape figure of `texts`, the distances measured against `real`."""
    lengths = [len(text) for text in texts]
    return {
        "mean_length": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
        "empty": round(sum(not text.strip() for text in texts) / len(texts), 4) if texts else 0.0,
        "length_distance": round(length_distance(texts, real), 4),
        "profile_distance": round(profile_distance(char_profile(texts), char_profile(real)), 4),
        "distinct_1": round(distinct_n(texts, 1), 4),
        "distinct_2": round(distinct_n(texts, 2), 4),
        "repetition": round(sum(map(repeats_itself, texts)) / len(texts), 4) if texts else 0.0,
    }
