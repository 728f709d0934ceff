"""The model family seam: a base is seq2seq (T5, FRED-T5) or causal (GPT-2, ruGPT-3, Llama, Qwen...).

The family is read once from the base's config (`load_family`) and decides three things only:

1. how a training example becomes token ids (`training_example`): seq2seq feeds the prompt to the
   encoder and the reply (with EOS) to the decoder; causal feeds prompt + reply + EOS as one
   sequence and puts the loss on the reply tokens only (the prompt's labels are `IGNORE_INDEX`);
2. how a prompt is rendered (`default_template`, `chat_formatter`): the one `render_prompt`; a
   causal base with a chat template renders through it, one without gets the plain template (the
   persona's turns as labelled lines, no FRED task token, no answer marker);
3. how `generate` output is cut to the reply (`reply_tokens`): seq2seq drops the decoder start
   token, causal keeps only the tokens after the (left-padded) prompt.

Besides, it names the transformers auto class and the PEFT task type that load and wrap the base.
Everything else (data, LoRA settings, checkpoints, report, packaging, routing, fleet, operator)
is the same for both. Light: transformers is imported only to read a config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from personafleet.errors import PersonaError
from personafleet.prompt import ChatFormatter, PromptTemplate

logger = logging.getLogger(__name__)

Family = Literal["seq2seq", "causal"]
IGNORE_INDEX = -100  # label of a position the loss skips (padding; a causal prompt)

AUTO_CLASSES: dict[Family, str] = {"seq2seq": "AutoModelForSeq2SeqLM", "causal": "AutoModelForCausalLM"}
CAUSAL_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")
# The plain template of a causal base without a chat template: FRED-T5's words without its task
# token and answer marker, which mean nothing to a decoder-only model.
CAUSAL_PLAIN_TEMPLATE = PromptTemplate(prefix="", answer_marker="")


def family_of(config: Mapping[str, Any], base: str = "the base") -> Family:
    """seq2seq when the config says encoder-decoder; causal when its architecture is a causal LM
    (or, for a config that names none, when its model type has a causal-LM class and no masked-LM
    one); anything else cannot be served as a persona and is refused, naming what was seen."""
    if config.get("is_encoder_decoder"):
        return "seq2seq"
    architectures = list(config.get("architectures") or [])
    if any(name.endswith(CAUSAL_ARCHITECTURES) for name in architectures):
        return "causal"
    model_type = str(config.get("model_type") or "")
    if not architectures and model_type:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        )

        if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            return "causal"
    seen = f"model_type {model_type or '?'}, architectures {', '.join(architectures) or 'none'}"
    raise PersonaError(
        f"cannot tell the model family of {base} ({seen}): a base must be an encoder-decoder "
        f"(is_encoder_decoder, e.g. T5ForConditionalGeneration) or a causal LM (e.g. LlamaForCausalLM, GPT2LMHeadModel)"
    )


@dataclass(frozen=True)
class ModelFamily:
    name: Family
    model_type: str

    @property
    def causal(self) -> bool:
        return self.name == "causal"

    @property
    def auto_class(self) -> str:
        """The transformers class that loads the base (`getattr(transformers, family.auto_class)`)."""
        return AUTO_CLASSES[self.name]

    @property
    def peft_task_type(self) -> str:
        """PEFT's `TaskType` member for the base's LoRA adapter."""
        return "CAUSAL_LM" if self.causal else "SEQ_2_SEQ_LM"

    # --- 1. examples -------------------------------------------------------------------------
    def prepare_tokenizer(self, tokenizer: Any, base: str) -> Any:
        """A causal base pads on the left (generation continues every row from its last prompt
        token) and, when its tokenizer has no pad token (GPT-2, ruGPT-3), pads with its EOS token,
        saying so."""
        if not self.causal:
            return tokenizer
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise PersonaError(f"causal base {base} has neither a pad nor an end-of-sequence token: "
                                   "set pad_token in its tokenizer_config.json")
            tokenizer.pad_token = tokenizer.eos_token
            logger.warning("base %s has no pad token: padding with its end-of-sequence token %r "
                           "(padding is masked out of attention and loss)", base, tokenizer.eos_token)
        return tokenizer

    def encode_prompts(self, tokenizer: Any, prompts: Sequence[str], max_tokens: int) -> list[list[int]]:
        """Prompt token ids as training and serving both see them, cut at the start to `max_tokens`
        (the end holds the newest turn and the answer marker).
        A causal prompt never ends in EOS (T5-style tokenizers append one: the model would read the
        conversation as finished) and never starts with BOS twice (a chat template that writes BOS
        itself, tokenized with the tokenizer's own BOS)."""
        side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
        try:
            ids = tokenizer(list(prompts), max_length=max_tokens, truncation=True)["input_ids"]
        finally:
            tokenizer.truncation_side = side
        if not self.causal:
            return ids
        eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
        cut = []
        for row in ids:
            if row and row[-1] == eos:
                row = row[:-1]
            if bos is not None and len(row) > 1 and row[0] == row[1] == bos:
                row = row[1:]
            cut.append(row)
        return cut

    def training_example(self, prompt: list[int], reply: list[int]) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of one example; `reply` already ends with EOS."""
        if not self.causal:
            return prompt, reply
        return prompt + reply, [IGNORE_INDEX] * len(prompt) + reply

    def prompt_length(self, input_ids: Sequence[int], labels: Sequence[int]) -> int:
        """How many of an example's input ids are its prompt (the rest of a causal one is the reply)."""
        reply = sum(label != IGNORE_INDEX for label in labels)
        return len(input_ids) - reply if self.causal else len(input_ids)

    # --- 2. prompts --------------------------------------------------------------------------
    def default_template(self, tokenizer: Any) -> PromptTemplate:
        """The template a persona gets when its config names none: FRED-T5's for seq2seq; for a
        causal base its chat template when it has one, else the plain one."""
        if not self.causal:
            return PromptTemplate()
        if getattr(tokenizer, "chat_template", None):
            return CAUSAL_PLAIN_TEMPLATE.model_copy(update={"style": "chat"})
        return CAUSAL_PLAIN_TEMPLATE

    @staticmethod
    def chat_formatter(tokenizer: Any) -> ChatFormatter | None:
        """The tokenizer's chat template as `render_prompt` takes it (None: it has none)."""
        if not getattr(tokenizer, "chat_template", None):
            return None
        return lambda messages: tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # --- 3. replies --------------------------------------------------------------------------
    def reply_tokens(self, sequences: Any, prompt_width: int) -> Any:
        """The generated reply of each row of `generate`'s output (a tensor or list of rows)."""
        return sequences[:, prompt_width:] if self.causal else sequences[:, 1:]


def base_reference(base: str) -> str:
    """How a base is named everywhere (version.json, the routing table, a fleet): an existing local
    directory as its absolute path (so it is found from anywhere), anything else as the hub id given."""
    path = Path(base).expanduser()
    return str(path.resolve()) if path.exists() else base


def load_family(base: str) -> ModelFamily:
    """The family of a base (hub id or directory), from its config alone (no weights loaded)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base).to_dict()
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, HFValidationError...
        text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise PersonaError(f"cannot read the config of base {base!r}: {text}") from None
    return ModelFamily(family_of(config, base), str(config.get("model_type") or ""))


def load_base(family: ModelFamily, base: str, **kwargs: Any) -> Any:
    """`from_pretrained` through the family's auto class (kwargs: dtype, quantization...)."""
    import transformers

    loader: Callable[..., Any] = getattr(transformers, family.auto_class).from_pretrained
    return loader(base, **kwargs)
