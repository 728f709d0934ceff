"""What a published LoRA adapter may hold for the fleet to serve it (contract 1).

The fleet serves adapters from slots (docs/serving.md, "The slot layer"): per targeted linear
layer one low-rank pair, A [r, in] and B [out, r], added as `x @ A.T @ B.T * alpha / r`.
Whatever else PEFT can train - DoRA's magnitudes, trained biases, LoRA on embeddings, whole
modules to save, a rank wider than the slots - has no place in a slot. So `persona train`
refuses to train it, `persona package` refuses to publish it and a worker refuses to load it
(that version's requests only). The rules live here, once, as plain checks of PEFT's
`adapter_config.json`, of the weight names in `adapter_model.safetensors`, and of the base's
layer types (torch is imported only by the function that needs it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from personafleet.errors import PersonaError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# The largest rank any fleet serves: `persona train` and `persona package` refuse wider adapters;
# a worker's `maxLoraRank` (at most this) is the width of its slots.
MAX_LORA_RANK = 64
# PEFT saves `base_model.model.<module path>.lora_A.weight` (the adapter name stripped).
WEIGHT_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.(?P<part>lora_A|lora_B)\.weight")

# LoraConfig settings that make a layer compute something other than the low-rank product.
UNSERVABLE = {
    "use_dora": "DoRA (use_dora)",
    "lora_bias": "a trained LoRA bias (lora_bias)",
    "modules_to_save": "whole trained modules (modules_to_save)",
    "trainable_token_indices": "trained embedding rows (trainable_token_indices)",
    "target_parameters": "LoRA on bare parameters (target_parameters)",
    "layer_replication": "replicated layers (layer_replication)",
    "alora_invocation_tokens": "activated LoRA (alora_invocation_tokens)",
    "use_qalora": "QA-LoRA (use_qalora)",
    "use_bdlora": "block-diagonal LoRA (use_bdlora)",
    "velora_config": "VeLoRA (velora_config)",
    "monteclora_config": "MonteCLoRA (monteclora_config)",
    "arrow_config": "Arrow routing (arrow_config)",
    "kasa_config": "KaSA (kasa_config)",
    "megatron_config": "Megatron layers (megatron_config)",
}


def adapter_rank(config: Mapping[str, Any]) -> int:
    """The widest rank an adapter uses (`r`, or a larger one from `rank_pattern`)."""
    return max([int(config.get("r") or 0), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def config_problem(config: Mapping[str, Any], max_rank: int = MAX_LORA_RANK) -> str | None:
    """Why slots cannot serve an adapter with this `adapter_config.json`, or None."""
    if config.get("peft_type") != "LORA":
        return f"it is not a LoRA adapter (peft_type {config.get('peft_type')!r})"
    for key, what in UNSERVABLE.items():
        if config.get(key):
            return f"it uses {what}, which the fleet's slots cannot serve"
    if (config.get("bias") or "none") != "none":
        return f"it trains biases (bias={config['bias']!r}), which the fleet's slots cannot serve"
    if adapter_rank(config) > max_rank:
        return f"its rank {adapter_rank(config)} is above the fleet's maxLoraRank {max_rank}"
    return None


def check_config(config: Mapping[str, Any], where: str, max_rank: int = MAX_LORA_RANK) -> None:
    """A PersonaError naming `where` when slots cannot serve this adapter config."""
    if problem := config_problem(config, max_rank):
        raise PersonaError(f"{where}: {problem}")


def weight_module(key: str) -> tuple[str, str]:
    """(module path, "lora_A" | "lora_B") of a saved weight; a PersonaError for anything else
    (`lora_embedding_A`: LoRA on an embedding; `lora_magnitude_vector`: DoRA; a bias ...)."""
    if match := WEIGHT_KEY.fullmatch(key):
        return match["module"], match["part"]
    if "lora_embedding_" in key:
        raise PersonaError(f"{key}: LoRA on an embedding, which the fleet's slots cannot serve")
    raise PersonaError(f"{key}: not a LoRA A/B weight, which the fleet's slots cannot serve")


def target_modules(keys: Iterable[str]) -> set[str]:
    """The module paths an adapter's saved weights target (each must have its A and B)."""
    parts: dict[str, set[str]] = {}
    for key in keys:
        module, part = weight_module(key)
        parts.setdefault(module, set()).add(part)
    if lone := sorted(module for module, have in parts.items() if have != {"lora_A", "lora_B"}):
        raise PersonaError(f"{lone[0]}: the adapter holds only one of lora_A and lora_B")
    return set(parts)


def servable_layer_types() -> tuple[type, ...]:
    """The layer types a slot can wrap: torch's Linear and GPT-2's Conv1D (ruGPT-3, ruDialoGPT)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    return nn.Linear, Conv1D


def check_targets(model: Any, modules: Iterable[str]) -> None:
    """A PersonaError when a targeted module is missing from `model` or is no linear layer."""
    types = servable_layer_types()
    for name in sorted(modules):
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise PersonaError(f"target module {name}: the base has no such layer") from None
        if not isinstance(layer, types):
            kind = "an embedding" if "Embedding" in type(layer).__name__ else f"a {type(layer).__name__}"
            raise PersonaError(f"target module {name} is {kind}: the fleet's slots serve LoRA on linear layers only")
