"""`persona prepare`: Telegram exports -> dialogue records (train.jsonl, val.jsonl, stats.json).

Consecutive messages of one author within the merge gap are one turn (`personafleet.prompt`'s
rule, which the bot applies to its history too). Every message gets exactly one fate: it becomes
(the start of) the reply of a record, or it is dropped for one reason counted in stats.json
(`merged` for the messages joined to the one before). A record's context is the replied-to turn
(always kept when it still exists) plus the newest earlier turns of the same chat inside the time
window, oldest first, each cut to the per-message cap, then to the turn and character budgets by
`personafleet.prompt.fit_context`. A turn that follows its own author's turn (after the merge gap,
nobody in between) answers nobody and is not a reply: the bot only ever answers someone else.

The split is leak-free by construction: a conversation is a group of messages linked by context
(time window or reply), found with a union-find over every record's context, so no message is
seen in training and in validation. Conversations go to validation in an order fixed by a hash
of (seed, chat id, first message id) until the validation share is reached: the same inputs and
seed give the same files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from personafleet.errors import PersonaError
from personafleet.prompt import (
    CONTEXT_CHARS,
    CONTEXT_TURNS,
    CONTEXT_WINDOW_SECONDS,
    MERGE_GAP_SECONDS,
    MESSAGE_CHARS,
    Turn,
    cap_text,
    continues_turn,
    fit_context,
    join_turn,
)
from personafleet.records import DialogueRecord, Source, Utterance, write_records
from persona_training.authorship import AUTHORSHIP_FILE, AuthoredText, write_authored_texts
from persona_training.telegram import Chat, Message, load_export
from persona_training.text import clean_text

PROGRESS_MIN_MESSAGES = 20_000  # smaller exports finish before a progress bar says anything
TOP_AUTHORS = 10


class PrepareOptions(BaseModel):
    """How messages become records. Defaults follow the seed project (3 turns, 3 h, 200/500 chars)
    and are the shape the bot sends (`personafleet.prompt`)."""

    model_config = ConfigDict(extra="forbid")

    persona_id: str | None = Field(None, description="keep only replies by this from_id")
    context_turns: int = Field(CONTEXT_TURNS, ge=1)
    window_minutes: float = Field(CONTEXT_WINDOW_SECONDS / 60, ge=0)
    merge_gap_seconds: float = Field(MERGE_GAP_SECONDS, ge=0, description="one author's messages this close are one turn")
    max_message_chars: int = Field(MESSAGE_CHARS, ge=1, description="longer replies are dropped, longer context turns cut")
    max_context_chars: int = Field(CONTEXT_CHARS, ge=1)
    val_fraction: float = Field(0.1, ge=0.0, le=0.9)
    seed: int = 13
    scrub: bool = False


class DropReason(StrEnum):
    """Why a message is not the reply of any record (checked in this order)."""

    SERVICE = "service"  # joins, pins, title changes
    OTHER_AUTHOR = "other_author"  # --persona-id names someone else
    DELETED_ACCOUNT = "deleted_account"  # "from": null
    NO_AUTHOR = "no_author"  # no from_id at all
    FORWARDED = "forwarded"  # someone else's words
    MEDIA_ONLY = "media_only"  # photo, sticker, voice... without a caption
    EMPTY = "empty"  # no text and no media
    URL_ONLY = "url_only"  # nothing left once URLs are stripped
    MERGED = "merged"  # joined to the message before it: the same author within --merge-gap-seconds
    TOO_LONG = "too_long"  # longer than --max-message-chars
    NO_CONTEXT = "no_context"  # nothing to answer: no replied-to message, nothing in the window
    OWN_TURN = "own_turn"  # the turn before it is its own author's: it answers nobody
    DUPLICATE = "duplicate"  # same context and reply as an earlier record, or a double-send


@dataclass(slots=True)
class Line:
    """A turn as the data step sees it: one message, or a burst of one author's messages merged."""

    message_id: int  # the first message's
    time: float  # when the first message was sent
    reply_to: int | None  # the first message's
    utterance: Utterance | None  # None: it cannot be a context turn
    drop: DropReason | None  # None: it can be a record's reply
    end: float = 0.0  # when the last message was sent
    merged_ids: list[int] = field(default_factory=list)  # the later messages' ids
    own_words: bool = False  # its author's own text (not forwarded): a sample of how they write


@dataclass(slots=True)
class Candidate:
    """A record before de-duplication and the split, with the message positions it links."""

    chat_index: int
    record: DialogueRecord
    positions: list[int]  # the reply's position first, then its context's


@dataclass
class PrepareStats:
    exports: list[str]
    chats: int = 0
    messages_read: int = 0
    records: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    conversations: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    dropped: dict[str, int] = field(default_factory=lambda: {reason.value: 0 for reason in DropReason})
    authors: list[dict[str, object]] = field(default_factory=list)
    authorship: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    options: dict[str, object] = field(default_factory=dict)


def run_prepare(exports: Sequence[Path], out: Path, options: PrepareOptions) -> PrepareStats:
    """Read the exports, build and split the records, write them to `out` atomically, print a summary."""
    if out.exists() and not out.is_dir():
        raise PersonaError(f"--out {out} exists and is not a directory")
    if not exports:
        raise PersonaError("no export given")
    chats = [chat for path in exports for chat in load_export(path)]
    options = _resolve_persona(chats, options)
    stats = PrepareStats(exports=[str(path) for path in exports], chats=len(chats), options=options.model_dump())
    train, val, texts = build_dataset(chats, options, stats)
    _write(out, train, val, texts, stats)
    print(summary(stats, out))
    return stats


def build_dataset(
    chats: Sequence[Chat], options: PrepareOptions, stats: PrepareStats
) -> tuple[list[DialogueRecord], list[DialogueRecord], list[AuthoredText]]:
    """All the rules: the records of every chat, de-duplicated and split into (train, val), and
    every author's own turns, each in the split of its conversation (the authorship classifier's
    data: trained on the train side only, so it never saw a held-out message)."""
    total = sum(len(chat.messages) for chat in chats)
    stats.messages_read = total
    candidates: list[Candidate] = []
    conversations: list[list[int]] = []  # per chat: union-find parents over message positions
    chat_lines: list[list[Line]] = []
    with tqdm(total=total, unit="msg", desc="prepare", disable=total < PROGRESS_MIN_MESSAGES) as progress:
        for chat_index, chat in enumerate(chats):
            lines = _merge_turns([_line(message, options) for message in chat.messages], options, stats)
            parents = list(range(len(lines)))
            for candidate in _chat_candidates(chat_index, chat.id, lines, options, stats):
                candidates.append(candidate)
                for position in candidate.positions[1:]:
                    _union(parents, candidate.positions[0], position)
            conversations.append(parents)
            chat_lines.append(lines)
            progress.update(len(chat.messages))
    kept = _deduplicate(candidates, stats)
    train, val, val_keys = _split(kept, conversations, chats, options, stats)
    _count_authors(chats, train + val, stats)
    if not train:
        raise PersonaError(f"no dialogue records could be made; dropped: {_format_drops(stats)}")
    texts = _authored_texts(chat_lines, conversations, val_keys, options)
    stats.authorship = {split: sum(text.split == split for text in texts) for split in ("train", "val")}
    return train, val, texts


def _authored_texts(
    chat_lines: list[list[Line]], conversations: list[list[int]], val_keys: set[tuple[int, int]],
    options: PrepareOptions,
) -> list[AuthoredText]:
    """Every author's own turns within the length cap, in their conversation's split (a turn no
    record links to is its own conversation: training side)."""
    texts = []
    for chat_index, lines in enumerate(chat_lines):
        for position, line in enumerate(lines):
            if line.own_words and line.utterance is not None and len(line.utterance.text) <= options.max_message_chars:
                split = "val" if (chat_index, _find(conversations[chat_index], position)) in val_keys else "train"
                texts.append(AuthoredText(author=line.utterance.author, text=line.utterance.text, split=split))
    return texts


def _line(message: Message, options: PrepareOptions) -> Line:
    text = clean_text(message.segments(), scrub=options.scrub) if message.type == "message" else ""
    utterance = None
    if text and message.from_id:
        utterance = Utterance(author=message.from_id, name=message.author_name, text=text)
    drop = _drop(message, text, options)
    own_words = utterance is not None and message.sender is not None and not message.forwarded
    return Line(message.id, message.timestamp, message.reply_to_message_id, utterance, drop, message.timestamp,
                own_words=own_words)


def _merge_turns(lines: list[Line], options: PrepareOptions, stats: PrepareStats) -> list[Line]:
    """Join each message to the one before it when both are text by the same author within the
    merge gap (forwards are someone else's words: never merged). A merged turn is judged again
    against the length cap; the later messages are counted as `merged`."""
    turns: list[Line] = []
    for line in lines:
        last = turns[-1] if turns else None
        if (
            last is not None and last.utterance is not None and line.utterance is not None
            and DropReason.FORWARDED not in (last.drop, line.drop)
            and continues_turn(last.utterance.author, last.end, line.utterance.author, line.time, options.merge_gap_seconds)
        ):
            text = join_turn([last.utterance.text, line.utterance.text])
            last.utterance = last.utterance.model_copy(update={"text": text})
            if last.drop in (None, DropReason.TOO_LONG):
                last.drop = DropReason.TOO_LONG if len(text) > options.max_message_chars else None
            last.end = line.end
            last.own_words = last.own_words and line.own_words
            last.merged_ids.append(line.message_id)
            stats.dropped[DropReason.MERGED] += 1
        else:
            turns.append(line)
    return turns


def _drop(message: Message, text: str, options: PrepareOptions) -> DropReason | None:
    if message.type != "message":
        return DropReason.SERVICE
    if options.persona_id is not None and message.from_id != options.persona_id:
        return DropReason.OTHER_AUTHOR
    if message.sender is None and message.from_id:
        return DropReason.DELETED_ACCOUNT
    if not message.from_id:
        return DropReason.NO_AUTHOR
    if message.forwarded:
        return DropReason.FORWARDED
    if not text:
        if any(part.text.strip() for part in message.segments()):
            return DropReason.URL_ONLY
        return DropReason.MEDIA_ONLY if message.has_media else DropReason.EMPTY
    if len(text) > options.max_message_chars:
        return DropReason.TOO_LONG
    return None


def _chat_candidates(
    chat_index: int, chat_id: int, lines: list[Line], options: PrepareOptions, stats: PrepareStats
) -> list[Candidate]:
    index = {
        message_id: position
        for position, line in enumerate(lines)
        for message_id in (line.message_id, *line.merged_ids)
    }
    window = options.window_minutes * 60
    candidates = []
    for position, line in enumerate(lines):
        if line.drop is not None:
            stats.dropped[line.drop] += 1
            continue
        context = _context(position, lines, index, window, options)
        if not context:
            stats.dropped[DropReason.NO_CONTEXT] += 1
            continue
        assert line.utterance is not None  # a line that can be a reply has text and an author
        if lines[context[-1][0]].utterance.author == line.utterance.author:
            stats.dropped[DropReason.OWN_TURN] += 1
            continue
        record = DialogueRecord(
            context=[_with_text(lines[p].utterance, text) for p, text in context],
            reply=line.utterance,
            source=Source(chat_id=chat_id, message_id=line.message_id),
        )
        candidates.append(Candidate(chat_index, record, [position, *(p for p, _ in context)]))
    return candidates


def _context(
    position: int, lines: list[Line], index: dict[int, int], window: float, options: PrepareOptions
) -> list[tuple[int, str]]:
    """(position, text) of the context turns, oldest first; texts are cut to the per-message cap
    and may be cut further by the budgets."""
    line = lines[position]
    parent = index.get(line.reply_to) if line.reply_to is not None else None
    if parent is not None and (parent >= position or lines[parent].utterance is None):
        parent = None  # replied-to message has no text (a sticker, a photo): the window still works
    recent: list[int] = []  # newest first
    for earlier in range(position - 1, -1, -1):
        if len(recent) == options.context_turns or lines[earlier].end < line.time - window:
            break
        if earlier != parent and lines[earlier].utterance is not None:
            recent.append(earlier)
    recent.reverse()
    turns_left, chars_left = options.context_turns, options.max_context_chars
    chosen: list[tuple[int, str]] = []
    if parent is not None:
        chosen += _fit([parent], lines, 1, chars_left, options.max_message_chars)
        turns_left -= 1
        chars_left -= len(chosen[0][1])
    if recent and turns_left > 0 and chars_left > 0:
        chosen += _fit(recent, lines, turns_left, chars_left, options.max_message_chars)
    return sorted(chosen)


def _fit(
    positions: list[int], lines: list[Line], max_turns: int, max_chars: int, message_chars: int
) -> list[tuple[int, str]]:
    """`fit_context` over these lines, each cut to the per-message cap first: it keeps a suffix
    of them, the oldest kept maybe cut."""
    # The texts were validated as utterances already: skip validating them again as turns.
    turns = [Turn.model_construct(role="user", text=cap_text(lines[p].utterance.text, message_chars)) for p in positions]
    kept = fit_context(turns, max_turns, max_chars)
    return [(p, turn.text) for p, turn in zip(positions[len(positions) - len(kept):], kept)]


def _with_text(utterance: Utterance, text: str) -> Utterance:
    return utterance if utterance.text == text else utterance.model_copy(update={"text": text})


def _deduplicate(candidates: list[Candidate], stats: PrepareStats) -> list[Candidate]:
    """Drop repeats of an earlier (context, reply) pair, and double-sends (a reply that repeats its
    author's own message in its context)."""
    seen: set[tuple] = set()
    kept = []
    for candidate in candidates:
        record = candidate.record
        context = tuple((turn.author, turn.text) for turn in record.context)
        key = (context, record.reply.author, record.reply.text)
        if key in seen or (record.reply.author, record.reply.text) in context:
            stats.dropped[DropReason.DUPLICATE] += 1
            continue
        seen.add(key)
        kept.append(candidate)
    return kept


def _split(
    candidates: list[Candidate],
    conversations: list[list[int]],
    chats: Sequence[Chat],
    options: PrepareOptions,
    stats: PrepareStats,
) -> tuple[list[DialogueRecord], list[DialogueRecord], set[tuple[int, int]]]:
    """(train, val, the conversations held out)."""
    keys = [(c.chat_index, _find(conversations[c.chat_index], c.positions[0])) for c in candidates]
    groups: dict[tuple[int, int], list[Candidate]] = {}
    for key, candidate in zip(keys, candidates):
        groups.setdefault(key, []).append(candidate)

    def order(members: list[Candidate]) -> bytes:
        first = members[0]
        key = f"{options.seed}:{chats[first.chat_index].id}:{first.record.source.message_id}"
        return hashlib.blake2b(key.encode(), digest_size=8).digest()

    # Fill validation up to its share without overshooting; if every conversation is too big
    # for the share, the smallest one goes. Training always keeps at least one conversation.
    target = max(1, round(options.val_fraction * len(candidates))) if options.val_fraction else 0
    target = min(target, len(candidates) - 1)
    ordered = sorted(groups, key=lambda key: order(groups[key]))
    val_keys: set[tuple[int, int]] = set()
    val_size = 0
    for key in ordered:
        if val_size + len(groups[key]) <= target:
            val_keys.add(key)
            val_size += len(groups[key])
    if target and not val_keys and len(groups) > 1:
        val_keys.add(min(ordered, key=lambda key: len(groups[key])))
    train = [c.record for key, c in zip(keys, candidates) if key not in val_keys]
    val = [c.record for key, c in zip(keys, candidates) if key in val_keys]
    stats.records = {"train": len(train), "val": len(val)}
    stats.conversations = {"train": len(groups) - len(val_keys), "val": len(val_keys)}
    return train, val, val_keys


def _find(parents: list[int], item: int) -> int:
    while parents[item] != item:
        parents[item] = parents[parents[item]]
        item = parents[item]
    return item


def _union(parents: list[int], a: int, b: int) -> None:
    root_a, root_b = _find(parents, a), _find(parents, b)
    if root_a != root_b:
        parents[max(root_a, root_b)] = min(root_a, root_b)


def _resolve_persona(chats: Sequence[Chat], options: PrepareOptions) -> PrepareOptions:
    """Accept a bare numeric id for `user<id>`; refuse an id that wrote nothing in the exports."""
    if options.persona_id is None:
        return options
    persona_id = options.persona_id.strip()
    if persona_id.isdigit():
        persona_id = f"user{persona_id}"
    authors = Counter(m.from_id for chat in chats for m in chat.messages if m.type == "message" and m.from_id)
    if persona_id not in authors:
        top = ", ".join(author for author, _ in authors.most_common(5)) or "none"
        raise PersonaError(f"--persona-id {options.persona_id}: no messages by that author (most active: {top})")
    return options.model_copy(update={"persona_id": persona_id})


def _count_authors(chats: Sequence[Chat], records: list[DialogueRecord], stats: PrepareStats) -> None:
    messages: Counter[str] = Counter()
    names: dict[str, str] = {}
    for chat in chats:
        for message in chat.messages:
            if message.type == "message" and message.from_id:
                messages[message.from_id] += 1
                names.setdefault(message.from_id, message.author_name)
    replies = Counter(record.reply.author for record in records)
    stats.authors = [
        {"author": author, "name": names[author], "messages": count, "records": replies[author]}
        for author, count in messages.most_common(TOP_AUTHORS)
    ]


def _write(
    out: Path, train: list[DialogueRecord], val: list[DialogueRecord], texts: list[AuthoredText], stats: PrepareStats
) -> None:
    """Write into a temporary sibling directory, then move the files into place: a failure
    leaves `out` as it was."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; `out` should look like any mkdir
    try:
        write_records(staging / "train.jsonl", train)
        write_records(staging / "val.jsonl", val)
        write_authored_texts(staging / AUTHORSHIP_FILE, texts)
        (staging / "stats.json").write_text(
            json.dumps(asdict(stats), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        if not out.exists():
            staging.rename(out)
            return
        for name in ("train.jsonl", "val.jsonl", AUTHORSHIP_FILE, "stats.json"):
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _format_drops(stats: PrepareStats) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in stats.dropped.items() if count) or "nothing"


def summary(stats: PrepareStats, out: Path) -> str:
    """What a person wants to see after the run: counts, drops, and whom --persona-id could name."""
    records = stats.records["train"] + stats.records["val"]
    lines = [
        f"read {stats.messages_read} messages in {stats.chats} chat(s) -> {records} records: "
        f"{stats.records['train']} train, {stats.records['val']} val "
        f"({stats.conversations['train']} + {stats.conversations['val']} conversations)",
        f"dropped: {_format_drops(stats)}",
        "top authors (for --persona-id): "
        + ", ".join(f"{a['author']} {a['name']} ({a['messages']} msgs, {a['records']} records)" for a in stats.authors[:5]),
        f"wrote {out}/train.jsonl, val.jsonl, {AUTHORSHIP_FILE}, stats.json",
    ]
    if not stats.records["val"] and stats.options.get("val_fraction"):
        lines.insert(1, "warning: validation set is empty (a single conversation cannot be split)")
    return "\n".join(lines)
