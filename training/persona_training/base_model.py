"""`persona init-base`: a tiny base built from the sample chat, for machines without a model hub.

Production adapts `ai-forever/FRED-T5-large` (seq2seq) or a decoder-only model such as ruGPT-3 or
ruDialoGPT (causal); here nothing can be downloaded, so the project makes its own base with the
same shape of artefacts, in one of four shapes. Two are seq2seq (`--arch seq2seq`):

- `t5` (the default): a Unigram tokenizer wrapped as `T5Tokenizer` (pad=0, eos=1, unk=2,
  `<extra_id_N>` sentinels as special tokens, EOS appended by the tokenizer) and a classic T5
  (ReLU feed-forward, tied embeddings);
- `fred`: FRED-T5's choices, so its tokenizer path is exercised: a GPT-2-style byte-level BPE
  (pad=0, `<s>`=1, `</s>`=2, unk `<|endoftext|>`, nothing appended when encoding), then
  `<extra_id_0>`..`<extra_id_99>`, `<LM>` and `<SC1>`..`<SC6>` as plain (non-special) added
  tokens in FRED's order, and a gated-GELU T5 with untied embeddings (no output scaling).

Two are causal (`--arch causal`):

- `llama` (the causal default): the `t5` shape's tokenizer (the same Unigram pipeline; pad=0,
  eos=1) and a `LlamaForCausalLM` (plain `nn.Linear` q/k/v/o projections, rotary positions);
- `gpt2`: GPT-2's choices, as ruGPT-3 and ruDialoGPT make them: a byte-level BPE whose only
  special token is `<|endoftext|>` (BOS = EOS, NO pad token) and a `GPT2LMHeadModel`, whose
  attention is one fused transformers `Conv1D` (`c_attn`).

Seq2seq shapes are pre-trained briefly with T5's span-corruption objective on the chat text,
causal ones with next-token prediction. Everything downstream loads them with `AutoTokenizer`
and the family's auto class (`personafleet.family`), the production path.
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
MAX_POSITIONS = 1024  # a causal base's longest prompt + reply (serving: 512 prompt tokens + up to 512 new)
GPT2_SPECIAL_TOKEN = "<|endoftext|>"  # GPT-2's BOS, EOS and unknown token alike; it has no pad token
Shape = Literal["t5", "fred", "llama", "gpt2"]
SHAPES: dict[str, tuple[Shape, ...]] = {"seq2seq": ("t5", "fred"), "causal": ("llama", "gpt2")}


class BaseModelOptions(BaseModel):
    """Size of the tiny base and its pre-training; the defaults take about a minute on 2 CPU cores."""

    model_config = ConfigDict(extra="forbid")

    shape: Shape = Field("t5", description="tokenizer and architecture choices (module docstring)")
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

    @property
    def causal(self) -> bool:
        return self.shape in SHAPES["causal"]


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


def _byte_level_bpe(texts: Sequence[str], options: BaseModelOptions, template: PromptTemplate, special: list[str]):
    """A GPT-2-style byte-level BPE trained on the chat and the template's words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    template_text = [" ".join(word for word in template.words() if not word.startswith("<")), DEFAULT_DESCRIPTION]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=options.vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(list(texts) + template_text * 20, trainer=trainer)
    return tokenizer


def train_fred_tokenizer(texts: Sequence[str], options: BaseModelOptions, template: PromptTemplate):
    """A byte-level BPE laid out like FRED-T5's tokenizer, as a `GPT2TokenizerFast`: the added
    tokens are plain ones, so `skip_special_tokens` leaves them in decoded text (as FRED's do)."""
    from tokenizers import AddedToken
    from transformers import GPT2TokenizerFast

    wrapped = GPT2TokenizerFast(
        tokenizer_object=_byte_level_bpe(texts, options, template, FRED_SPECIAL_TOKENS), pad_token="<pad>",
        bos_token="<s>", eos_token="</s>", unk_token="<|endoftext|>", add_prefix_space=False,
    )
    sentinels = [f"<extra_id_{i}>" for i in range(max(options.sentinels, FRED_SENTINELS))]
    wrapped.add_tokens([AddedToken(token, special=False, normalized=True) for token in sentinels + FRED_TASK_TOKENS])
    return wrapped


def train_gpt2_tokenizer(texts: Sequence[str], options: BaseModelOptions, template: PromptTemplate):
    """GPT-2's (and ruGPT-3's) layout: a byte-level BPE whose one special token is BOS, EOS and
    unknown at once, and no pad token (the family seam sets one when the base is loaded)."""
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast(
        tokenizer_object=_byte_level_bpe(texts, options, template, [GPT2_SPECIAL_TOKEN]),
        bos_token=GPT2_SPECIAL_TOKEN, eos_token=GPT2_SPECIAL_TOKEN, unk_token=GPT2_SPECIAL_TOKEN, add_prefix_space=False,
    )


def tiny_causal_model(options: BaseModelOptions, tokenizer):
    """A LlamaForCausalLM or GPT2LMHeadModel of the options' size over the tokenizer's vocabulary."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if options.shape == "gpt2":
        return GPT2LMHeadModel(GPT2Config(
            vocab_size=len(tokenizer), n_positions=MAX_POSITIONS, n_embd=options.d_model, n_layer=options.num_layers,
            n_head=options.num_heads, n_inner=options.d_ff, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        ))
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=options.d_model, intermediate_size=options.d_ff,
        num_hidden_layers=options.num_layers, num_attention_heads=options.num_heads,
        num_key_value_heads=options.num_heads, max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
    ))


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


TOKENIZERS = {"t5": train_tokenizer, "fred": train_fred_tokenizer, "llama": train_tokenizer, "gpt2": train_gpt2_tokenizer}


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


def descend(model, loss, optimizer, scheduler) -> float:
    """One optimizer step on `loss`, gradients clipped to norm 1: the step of both embedded
    pre-trainings (this base and the tiny Whisper); the loss's value."""
    import torch

    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()


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
    tokenizer = TOKENIZERS[options.shape](texts, options, template)
    chunks = text_chunks(tokenizer, texts, options.chunk_tokens)
    if not chunks:
        raise PersonaError(f"the corpus is too small: fewer than {options.chunk_tokens} tokens of text")

    torch.manual_seed(options.seed)
    rng = random.Random(options.seed)
    if options.causal:
        model = tiny_causal_model(options, tokenizer)
        pairs = lambda: [(chunk, chunk) for chunk in rng.choices(chunks, k=options.batch_size)]  # noqa: E731 - next token
    else:
        model = T5ForConditionalGeneration(tiny_t5_config(len(tokenizer), options, tokenizer))
        if options.shape == "fred":
            untie_output_embeddings(model)
        sentinel_ids = tokenizer.convert_tokens_to_ids([f"<extra_id_{i}>" for i in range(options.sentinels)])
        eos = tokenizer.eos_token_id
        pairs = lambda: [  # noqa: E731 - T5's denoising
            (source + [eos], target + [eos]) for source, target in
            (span_corrupt(chunk, sentinel_ids, rng, options.noise_density, options.mean_span)
             for chunk in rng.choices(chunks, k=options.batch_size))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=options.steps // 10,
                              num_training_steps=options.steps)
    model.train()
    losses: list[float] = []
    progress = tqdm(range(options.steps), desc="pre-training base", unit="step", mininterval=1.0)
    for _ in progress:
        batch = collate([TokenizedExample(source, target) for source, target in pairs()])
        losses.append(descend(model, model(**batch).loss, optimizer, scheduler))
        progress.set_postfix(loss=f"{losses[-1]:.3f}")

    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tail = losses[-max(1, len(losses) // 10):]
    info = {
        "family": "causal" if options.causal else "seq2seq",
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
    log.info("tiny %s base saved to %s: %d parameters, loss %.2f -> %.2f in %.0f s", options.shape, out, info["parameters"],
             losses[0], info["pretraining_loss"]["last"], info["seconds"])
    return info

