"""`persona init-base`: a tiny T5 built from the sample chat, for machines without a model hub.

Production adapts `ai-forever/FRED-T5-large`; here nothing can be downloaded, so the project
makes its own base with the same shape of artefacts, in one of two shapes:

- `t5` (the default): a Unigram tokenizer wrapped as `T5Tokenizer` (pad=0, eos=1, unk=2,
  `<extra_id_N>` sentinels as special tokens, EOS appended by the tokenizer) and a classic T5
  (ReLU feed-forward, tied embeddings);
- `fred`: FRED-T5's choices, so its tokenizer path is exercised: a GPT-2-style byte-level BPE
  (pad=0, `<s>`=1, `</s>`=2, unk `<|endoftext|>`, nothing appended when encoding), then
  `<extra_id_0>`..`<extra_id_99>`, `<LM>` and `<SC1>`..`<SC6>` as plain (non-special) added
  tokens in FRED's order, and a gated-GELU T5 with untied embeddings (no output scaling).

Either is pre-trained briefly with T5's span-corruption objective on the chat text. Everything
downstream loads it with `AutoTokenizer` / `AutoModelForSeq2SeqLM.from_pretrained`, the
production path.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from personafleet.errors import PersonaError
from personafleet.persona import DEFAULT_DESCRIPTION
from personafleet.prompt import PromptTemplate

log = logging.getLogger(__name__)

DEFAULT_CORPUS = Path("examples/sample-export/result.json")
BASE_INFO_FILE = "persona_base.json"
SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]  # ids 0, 1, 2: T5's convention
FRED_SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|endoftext|>"]  # pad=0, bos=1, eos=2 as in FRED's config.json
FRED_SENTINELS = 100  # FRED-T5's added tokens: <extra_id_0..99>, then <LM>, then <SC1>..<SC6>
FRED_TASK_TOKENS = ["<LM>", *(f"<SC{i}>" for i in range(1, 7))]


class BaseModelOptions(BaseModel):
    """Size of the tiny T5 and its pre-training; the defaults take about a minute on 2 CPU cores."""

    model_config = ConfigDict(extra="forbid")

    shape: Literal["t5", "fred"] = Field("t5", description="tokenizer and architecture choices (module docstring)")
    vocab_size: int = Field(4000, ge=64, description="upper bound; a small corpus yields fewer pieces")
    d_model: int = Field(128, ge=8)
    d_ff: int = Field(512, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    sentinels: int = Field(16, ge=1, description="<extra_id_N> tokens; <extra_id_0> marks the answer")
    steps: int = Field(400, ge=1, description="pre-training optimizer steps")
    batch_size: int = Field(32, ge=1)
    chunk_tokens: int = Field(64, ge=8, description="length of each pre-training text chunk")
    learning_rate: float = Field(3e-3, gt=0)
    noise_density: float = Field(0.15, gt=0, lt=1)
    mean_span: float = Field(3.0, ge=1)
    seed: int = 13


def corpus_texts(exports: Sequence[Path]) -> list[str]:
    """Every readable message text of the exports, in chat order."""
    from persona_training.telegram import flatten_text, load_export

    texts: list[str] = []
    for export in exports:
        for chat in load_export(export):
            texts.extend(
                text for message in chat.messages
                if message.type == "message" and (text := flatten_text(message.text).strip())
            )
    if not texts:
        raise PersonaError(f"no message text in {', '.join(map(str, exports))}: nothing to build a tokenizer from")
    return texts


def train_tokenizer(texts: Sequence[str], options: BaseModelOptions, template: PromptTemplate):
    """A Unigram tokenizer on the chat text and the template's words, as a `T5Tokenizer`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import T5Tokenizer

    template_text = [" ".join(template.words()), DEFAULT_DESCRIPTION]
    corpus = list(texts) + template_text * 20  # frequent enough to get whole-word pieces
    tokenizer = Tokenizer(models.Unigram())
    # The same pre-tokenizer T5Tokenizer rebuilds around the vocabulary, so pieces line up.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    trainer = trainers.UnigramTrainer(
        vocab_size=options.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        unk_token="<unk>",
        initial_alphabet=sorted({char for text in corpus for char in text if not char.isspace()}),
        max_piece_length=12,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    vocab = [tuple(entry) for entry in json.loads(tokenizer.to_str())["model"]["vocab"]]
    sentinels = [f"<extra_id_{i}>" for i in range(options.sentinels)]
    extra = [word for word in (template.prefix, template.answer_marker) if word not in sentinels]
    return T5Tokenizer(vocab=vocab, extra_ids=options.sentinels, additional_special_tokens=extra + sentinels)


def train_fred_tokenizer(texts: Sequence[str], options: BaseModelOptions, template: PromptTemplate):
    """A byte-level BPE laid out like FRED-T5's tokenizer, as a `GPT2TokenizerFast`: the added
    tokens are plain ones, so `skip_special_tokens` leaves them in decoded text (as FRED's do)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    template_text = [" ".join(word for word in template.words() if not word.startswith("<")), DEFAULT_DESCRIPTION]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=options.vocab_size,
        special_tokens=FRED_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(list(texts) + template_text * 20, trainer=trainer)
    wrapped = GPT2TokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<|endoftext|>", add_prefix_space=False,
    )
    sentinels = [f"<extra_id_{i}>" for i in range(max(options.sentinels, FRED_SENTINELS))]
    wrapped.add_tokens([AddedToken(token, special=False, normalized=True) for token in sentinels + FRED_TASK_TOKENS])
    return wrapped


def tiny_t5_config(vocab_size: int, options: BaseModelOptions, tokenizer=None):
    from transformers import T5Config

    shared = dict(
        vocab_size=vocab_size,
        d_model=options.d_model,
        d_kv=options.d_model // options.num_heads,
        d_ff=options.d_ff,
        num_layers=options.num_layers,
        num_decoder_layers=options.num_layers,
        num_heads=options.num_heads,
        dropout_rate=0.0,
    )
    if options.shape == "fred":  # FRED-T5-large's config.json, scaled down
        return T5Config(
            **shared,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        )
    return T5Config(**shared, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)


def untie_output_embeddings(model) -> None:
    """Give the model its own output projection, as FRED-T5 has (config.json: tie_word_embeddings
    false, two matrices in the checkpoint). transformers 5 builds every T5 tied, but loads a
    checkpoint holding two different matrices untied: this makes the saved base such a checkpoint."""
    import torch

    factor = model.config.initializer_factor  # T5's initialisation of an untied lm_head
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * factor)
    model.config.tie_word_embeddings = False


def span_corrupt(
    ids: Sequence[int], sentinel_ids: Sequence[int], rng: random.Random, density: float, mean_span: float
) -> tuple[list[int], list[int]]:
    """T5's denoising pair: spans of `ids` replaced by sentinels in the input, spelled out in the target."""
    noise = max(1, round(len(ids) * density))
    spans = min(len(sentinel_ids), max(1, round(noise / mean_span)), len(ids) - noise)
    starts = sorted(rng.sample(range(len(ids) - noise), spans))
    lengths = [noise // spans + (1 if i < noise % spans else 0) for i in range(spans)]
    inputs: list[int] = []
    targets: list[int] = []
    position = 0
    for number, (start, length) in enumerate(zip(starts, lengths)):
        start += sum(lengths[:number])  # offsets are in the text without the earlier spans
        inputs += list(ids[position:start]) + [sentinel_ids[number]]
        targets += [sentinel_ids[number]] + list(ids[start:start + length])
        position = start + length
    inputs += list(ids[position:])
    return inputs, targets


def text_chunks(tokenizer, texts: Iterable[str], chunk_tokens: int) -> list[list[int]]:
    """The chat as one token stream cut into equal chunks, so neighbouring messages give context."""
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
    return [stream[i:i + chunk_tokens] for i in range(0, len(stream) - chunk_tokens + 1, chunk_tokens)]


def init_base(
    out: Path,
    exports: Sequence[Path] = (DEFAULT_CORPUS,),
    options: BaseModelOptions | None = None,
    template: PromptTemplate | None = None,
) -> dict:
    """Build, pre-train and save the tiny base into `out`; returns what was built (also saved)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import T5ForConditionalGeneration, get_scheduler

    from persona_training.data import TokenizedExample, collate

    options = options or BaseModelOptions()
    template = template or PromptTemplate()
    started = time.monotonic()
    texts = corpus_texts(exports)
    tokenizer = (train_fred_tokenizer if options.shape == "fred" else train_tokenizer)(texts, options, template)
    chunks = text_chunks(tokenizer, texts, options.chunk_tokens)
    if not chunks:
        raise PersonaError(f"the corpus is too small: fewer than {options.chunk_tokens} tokens of text")

    torch.manual_seed(options.seed)
    model = T5ForConditionalGeneration(tiny_t5_config(len(tokenizer), options, tokenizer))
    if options.shape == "fred":
        untie_output_embeddings(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=options.steps // 10,
                              num_training_steps=options.steps)
    sentinel_ids = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(options.sentinels)])
    eos = tokenizer.eos_token_id
    rng = random.Random(options.seed)
    model.train()
    losses: list[float] = []
    progress = tqdm(range(options.steps), desc="pre-training base", unit="step", mininterval=1.0)
    for _ in progress:
        pairs = [span_corrupt(chunk, sentinel_ids, rng, options.noise_density, options.mean_span)
                 for chunk in rng.choices(chunks, k=options.batch_size)]
        batch = collate([TokenizedExample(source + [eos], target + [eos]) for source, target in pairs])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.3f}")

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tail = losses[-max(1, len(losses) // 10):]
    info = {
        "corpus": [str(path) for path in exports],
        "messages": len(texts),
        "chunks": len(chunks),
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "options": options.model_dump(),
        "pretraining_loss": {"first": losses[0], "last": sum(tail) / len(tail)},
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / BASE_INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log.info("tiny base saved to %s: %d parameters, loss %.2f -> %.2f in %.0f s", out, info["parameters"],
             losses[0], info["pretraining_loss"]["last"], info["seconds"])
    return info

