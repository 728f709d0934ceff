"""Dialogue records as model inputs: the prompt serving renders, the reply as the target
(in the base's family's layout: `personafleet.family`).

Batching is where CPU and GPU time goes: prompts vary from a dozen to hundreds of tokens, so
batches are padded only to their own longest example (dynamic padding) and examples of similar
length are put together (length grouping) so there is little padding to pay for.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from personafleet.errors import PersonaError
from personafleet.family import IGNORE_INDEX, ModelFamily
from personafleet.knowledge import Knowledge, retrieve
from personafleet.persona import PersonaSpec
from personafleet.prompt import ChatFormatter, render_prompt, record_turns
from personafleet.records import DialogueRecord, read_records


@dataclass
class DialogueData:
    """Training and validation records gathered from one or more `persona prepare` outputs."""

    train: list[DialogueRecord]
    val: list[DialogueRecord]
    sources: list[str]


def load_dialogues(data_dirs: Sequence[Path]) -> DialogueData:
    """Concatenate `train.jsonl` and `val.jsonl` of every directory; a directory may lack val.jsonl
    (a feedback export) as long as another has one."""
    train: list[DialogueRecord] = []
    val: list[DialogueRecord] = []
    for directory in data_dirs:
        if not directory.is_dir():
            raise PersonaError(f"{directory}: no such data directory (run `persona prepare --out {directory}`)")
        train_file, val_file = directory / "train.jsonl", directory / "val.jsonl"
        if not train_file.is_file() and not val_file.is_file():
            raise PersonaError(f"{directory}: no train.jsonl or val.jsonl (not a `persona prepare` output)")
        if train_file.is_file():
            train += read_records(train_file)
        if val_file.is_file():
            val += read_records(val_file)
    where = ", ".join(map(str, data_dirs))
    if not train:
        raise PersonaError(f"no training records in {where}: the dataset is empty")
    if not val:
        raise PersonaError(f"no validation records in {where}: evaluation needs a non-empty val.jsonl")
    return DialogueData(train=train, val=val, sources=[str(d) for d in data_dirs])


def prompt_for(record: DialogueRecord, persona: PersonaSpec, knowledge: Knowledge | None = None,
               chat: ChatFormatter | None = None) -> str:
    """The model input for a record: exactly what serving renders for the same conversation,
    with the facts the same `retrieve` picks there (and the base's chat template, if the persona's
    template uses it)."""
    turns = record_turns(record)
    return render_prompt(persona.template, persona.description, turns, retrieve(knowledge, turns), chat)


@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]


def tokenize_records(
    records: Sequence[DialogueRecord], tokenizer, family: ModelFamily, persona: PersonaSpec, max_source: int,
    max_target: int, knowledge: Knowledge | None = None,
) -> list[TokenizedExample]:
    """Prompts as serving encodes them (`family.encode_prompts`) and replies ending with the
    end-of-sequence token, which T5 tokenizers append and FRED-T5's GPT-2-style one (and causal
    tokenizers) do not: without it the model never learns to stop. Overlong prompts lose their
    start, as in serving (the end holds the newest turn and the answer marker); overlong replies
    lose their end. The family lays prompt and reply out (causal: one sequence, reply-only loss)."""
    chat = family.chat_formatter(tokenizer)
    prompts = [prompt_for(record, persona, knowledge, chat) for record in records]
    replies = [record.reply.text for record in records]
    sources = family.encode_prompts(tokenizer, prompts, max_source)
    targets = tokenizer(text_target=replies, max_length=max_target, truncation=True,
                        add_special_tokens=not family.causal)["input_ids"]
    eos = tokenizer.eos_token_id
    targets = [ids if ids and ids[-1] == eos else ids[:max_target - 1] + [eos] for ids in targets]
    return [TokenizedExample(*family.training_example(source, target)) for source, target in zip(sources, targets)]


def token_stats(examples: Sequence[TokenizedExample], family: ModelFamily, max_source: int, max_target: int) -> dict:
    """What the report says about the data: prompt and reply sizes, and how much truncation cost."""
    sources = [family.prompt_length(e.input_ids, e.labels) for e in examples]
    targets = [sum(label != IGNORE_INDEX for label in e.labels) for e in examples]
    return {
        "examples": len(examples),
        "source_tokens": {"mean": round(sum(sources) / len(sources), 1), "max": max(sources)},
        "target_tokens": {"mean": round(sum(targets) / len(targets), 1), "max": max(targets)},
        "truncated_sources": sum(length >= max_source for length in sources),  # at the limit: cut, or just fitting
        "truncated_targets": sum(length >= max_target for length in targets),
    }


def collate(examples: Sequence[TokenizedExample], pad_id: int = 0) -> dict:
    """Pad a batch to its own longest input and target; padded labels are IGNORE_INDEX."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    depth = max(len(e.labels) for e in examples)
    return {
        "input_ids": torch.tensor([e.input_ids + [pad_id] * (width - len(e.input_ids)) for e in examples]),
        "attention_mask": torch.tensor(
            [[1] * len(e.input_ids) + [0] * (width - len(e.input_ids)) for e in examples]
        ),
        "labels": torch.tensor([e.labels + [IGNORE_INDEX] * (depth - len(e.labels)) for e in examples]),
    }


class LengthGroupedBatches:
    """Deterministic batches per epoch: shuffle, sort groups of `group_size` batches by length,
    then shuffle the batch order. An epoch's batches depend only on (seed, epoch), which is
    what lets `--resume` continue with exactly the batches an uninterrupted run would see."""

    def __init__(self, lengths: Sequence[int], batch_size: int, group_size: int, seed: int):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.group = batch_size * group_size
        self.seed = seed

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def epoch(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        batches: list[list[int]] = []
        for start in range(0, len(order), self.group):
            group = sorted(order[start:start + self.group], key=self.lengths.__getitem__, reverse=True)
            batches += [group[i:i + self.batch_size] for i in range(0, len(group), self.batch_size)]
        rng.shuffle(batches)
        return batches


def data_fingerprint(examples: Sequence[TokenizedExample]) -> str:
    """A short hash of the tokenized data, so `--resume` can refuse a changed dataset."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps([example.input_ids, example.labels]).encode())
    return digest.hexdigest()[:16]
