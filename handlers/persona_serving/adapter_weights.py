"""A published adapter (PEFT's `adapter_config.json` + `adapter_model.safetensors`) read into the
form slots take: per targeted module, A [r, in] and B [out, r] with PEFT's scale (alpha / r, or
alpha / sqrt(r) with rsLoRA; `alpha_pattern` per module) folded into B, in the base's dtype.

No PEFT at inference: the file format stays PEFT's, the reading is this module's. Host copies
are pinned on CUDA (the host tier), so putting one into a slot is an asynchronous copy.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from personafleet.errors import PersonaError
from personafleet.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_config, target_modules


@dataclass(frozen=True)
class AdapterWeights:
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module path -> (A, scaled B)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.layers.values())


def read_adapter(folder: Path, dtype: torch.dtype, max_rank: int, pin: bool = False) -> AdapterWeights:
    """The adapter in `folder`; a PersonaError says why slots cannot take it."""
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_bytes())
    except (OSError, ValueError) as exc:
        raise PersonaError(f"{folder / ADAPTER_CONFIG} is unreadable: {exc.__class__.__name__}: {exc}") from None
    check_config(config, str(folder), max_rank)
    try:
        tensors = load_file(folder / ADAPTER_WEIGHTS)
    except (OSError, SafetensorError) as exc:
        raise PersonaError(f"{folder / ADAPTER_WEIGHTS} is unreadable: {exc.__class__.__name__}: {exc}") from None
    layers = {}
    for module in sorted(target_modules(tensors)):
        a = tensors[f"base_model.model.{module}.lora_A.weight"]
        b = tensors[f"base_model.model.{module}.lora_B.weight"]
        rank = _per_module(config, "rank_pattern", module, config.get("r"))
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise PersonaError(f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} are no rank-{rank} "
                               "pair, as adapter_config.json says")
        scaled = (b.float() * scale(config, module, rank)).to(dtype)
        layers[module] = (_host(a.to(dtype), pin), _host(scaled, pin))
    return AdapterWeights(layers)


def scale(config: Mapping[str, Any], module: str, rank: int) -> float:
    """PEFT's LoRA scale for one module: its alpha over its rank, or over sqrt(rank) with rsLoRA."""
    alpha = _per_module(config, "alpha_pattern", module, config.get("lora_alpha", 8))
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _per_module(config: Mapping[str, Any], patterns: str, module: str, default: Any) -> Any:
    """A `rank_pattern` / `alpha_pattern` value for `module` (the first key that matches its
    path's end, as PEFT's `get_pattern_key` matches), else `default`."""
    for pattern, value in (config.get(patterns) or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _host(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    return tensor.contiguous().pin_memory() if pin else tensor.contiguous()
