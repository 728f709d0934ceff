"""Loading the base model and wrapping it for LoRA: the parts of training that depend on hardware.

The base is loaded only through `AutoTokenizer` and its family's auto class
(`personafleet.family`: `AutoModelForSeq2SeqLM` or `AutoModelForCausalLM`), the same path for the
tiny embedded bases (directories) and for FRED-T5-large or ruGPT-3 (hub ids or mounted
directories in production).
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from personafleet.errors import PersonaError
from personafleet.family import ModelFamily, load_base, load_family
from personafleet.lora import check_config, check_targets
from persona_training.config import TrainConfig


@dataclass
class Hardware:
    """Where training runs and in which number format."""

    device: str  # "cuda" or "cpu"
    precision: str  # "fp32", "bf16" or "fp16"

    @property
    def dtype(self):
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    def autocast(self) -> Callable[[], AbstractContextManager]:
        """A factory of autocast contexts (fp32 needs none)."""
        import torch

        if self.precision == "fp32":
            return contextlib.nullcontext
        return lambda: torch.autocast(self.device, dtype=self.dtype)


def pick_hardware(config: TrainConfig) -> Hardware:
    """`precision: auto` is bf16 on a GPU that has it, fp16 on an older GPU, fp32 on CPU.
    Asking for what the machine cannot do is refused, not silently downgraded."""
    import torch

    cuda = torch.cuda.is_available()
    if config.load_in_8bit:
        if not cuda:
            raise PersonaError("load_in_8bit needs a CUDA GPU; this machine has none (set load_in_8bit: false)")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise PersonaError("load_in_8bit needs the bitsandbytes package (pip install bitsandbytes)")
    if not cuda:
        if config.precision in ("bf16", "fp16"):
            raise PersonaError(f"precision {config.precision} needs a CUDA GPU; use fp32 or auto on CPU")
        return Hardware("cpu", "fp32")
    if config.precision == "auto":
        return Hardware("cuda", "bf16" if torch.cuda.is_bf16_supported() else "fp16")
    return Hardware("cuda", config.precision)


def load_tokenizer(base: str, family: ModelFamily | None = None):
    """The base's tokenizer; with its family, prepared for it (truncation, padding, pad token)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, HFValidationError...
        raise PersonaError(f"cannot load a tokenizer from base {base!r}: {_first_line(exc)}") from None
    return family.prepare_tokenizer(tokenizer, base) if family else tokenizer


def load_base_model(base: str, family: ModelFamily, config: TrainConfig, hardware: Hardware):
    """The frozen base, on the training device (8-bit if asked)."""
    kwargs: dict = {}
    if config.load_in_8bit:
        from transformers import BitsAndBytesConfig

        kwargs = {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": {"": 0}}
    try:
        model = load_base(family, base, **kwargs)
    except Exception as exc:  # noqa: BLE001 - see load_tokenizer
        raise PersonaError(f"cannot load a {family.name} model from base {base!r}: {_first_line(exc)}") from None
    if not config.load_in_8bit:
        model.to(hardware.device)
    return model


def lora_targets(family: ModelFamily, requested: list[str] | None) -> list[str]:
    """The modules LoRA wraps: those the config names, else PEFT's default for the base's model
    type (t5: q, v; llama, qwen2: q_proj, v_proj; gpt2: c_attn)."""
    if requested:
        return list(requested)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    defaults = DEFAULTS.get(family.model_type)
    if not defaults:
        raise PersonaError(f"no default LoRA target modules for model type {family.model_type!r}: "
                           "set target_modules in the training config")
    return list(defaults)


def targeted_modules(model, targets: list[str], base: str, model_type: str) -> list:
    """The base's modules LoRA will wrap (PEFT's rule: a module whose dotted name ends with a
    target). A target that matches none is an error naming it and the layers that could be targets."""
    import torch
    from transformers.pytorch_utils import Conv1D

    modules = list(model.named_modules())
    matches = lambda name, target: name == target or name.endswith(f".{target}")  # noqa: E731
    missing = [t for t in targets if not any(matches(name, t) for name, _ in modules)]
    if missing:
        layers = sorted({name.rsplit(".", 1)[-1] for name, module in modules
                         if isinstance(module, (torch.nn.Linear, Conv1D))})
        raise PersonaError(f"LoRA target_modules {', '.join(missing)} not in base {base} ({model_type}); "
                           f"its linear layers are: {', '.join(layers)}")
    return [module for name, module in modules if any(matches(name, t) for t in targets)]


def with_lora(model, family: ModelFamily, config: TrainConfig, base: str):
    """Wrap the base with trainable LoRA matrices on `config.target_modules` (resolved by
    `lora_targets`); everything else stays frozen."""
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers.pytorch_utils import Conv1D

    targets = lora_targets(family, config.target_modules)
    wrapped = targeted_modules(model, targets, base, family.model_type)
    if config.load_in_8bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    if config.gradient_checkpointing:
        model.config.use_cache = False
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(
        task_type=TaskType[family.peft_task_type],
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        fan_in_fan_out=any(isinstance(module, Conv1D) for module in wrapped),  # GPT-2's Conv1D stores W transposed
    )
    servable(model, lora)
    try:
        with quiet_peft():
            return get_peft_model(model, lora)
    except ValueError as exc:
        raise PersonaError(f"target_modules {targets}: {_first_line(exc)}") from None


def servable(model, lora) -> None:
    """Refuse, before any step, a LoRA the fleet's slots could not serve (personafleet.lora): an
    unservable option, or a target module that is no linear layer (an embedding, ...)."""
    from peft.tuners.tuners_utils import check_target_module_exists

    check_config(lora.to_dict(), "the LoRA settings")
    check_targets(model, [name for name, _ in model.named_modules() if name and check_target_module_exists(lora, name)])


def base_skeleton(base: str):
    """The base's module tree on the meta device (no weights read), or None when its config
    cannot be read here (e.g. a hub id without network)."""
    import torch
    import transformers
    from transformers import AutoConfig

    try:
        family = load_family(base)
    except PersonaError:
        return None
    with torch.device("meta"):
        return getattr(transformers, family.auto_class).from_config(AutoConfig.from_pretrained(base))


def merge_adapter(base: str, family: ModelFamily, run_dir: Path, out: Path) -> Path:
    """A full model with the adapter folded in (serving without peft), saved with the tokenizer.
    It reloads base and adapter from disk: the same path a consumer of the run takes."""
    from peft import PeftModel

    with quiet_peft():
        model = PeftModel.from_pretrained(load_base(family, base), run_dir).merge_and_unload()
    model.save_pretrained(out)
    load_tokenizer(base).save_pretrained(out)
    return out


@contextlib.contextmanager
def quiet_peft():
    """peft 0.21 calls a transformers 5 property that warns it is deprecated; nothing to act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
