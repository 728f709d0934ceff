"""Loading the base model and wrapping it for LoRA: the parts of training that depend on hardware.

The base is loaded only through `AutoTokenizer` / `AutoModelForSeq2SeqLM.from_pretrained`, the
same path for the tiny embedded base (a directory) and for FRED-T5-large (a hub id or a mounted
directory in production).
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


def resolve_base(base: str) -> str:
    """An existing local directory becomes an absolute path (so the adapter config points at it
    from anywhere); anything else is passed on as a hub id."""
    path = Path(base).expanduser()
    return str(path.resolve()) if path.exists() else base


def load_tokenizer(base: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base)
    except Exception as exc:  # noqa: BLE001 - transformers raises OSError, ValueError, HFValidationError...
        raise PersonaError(f"cannot load a tokenizer from base {base!r}: {_first_line(exc)}") from None


def load_base_model(base: str, config: TrainConfig, hardware: Hardware):
    """The frozen seq2seq base, on the training device (8-bit if asked)."""
    from transformers import AutoModelForSeq2SeqLM

    kwargs: dict = {}
    if config.load_in_8bit:
        from transformers import BitsAndBytesConfig

        kwargs = {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": {"": 0}}
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(base, **kwargs)
    except Exception as exc:  # noqa: BLE001 - see load_tokenizer
        raise PersonaError(f"cannot load a seq2seq model from base {base!r}: {_first_line(exc)}") from None
    if not config.load_in_8bit:
        model.to(hardware.device)
    return model


def with_lora(model, config: TrainConfig):
    """Wrap the base with trainable LoRA matrices; everything else stays frozen."""
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

    if config.load_in_8bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    if config.gradient_checkpointing:
        model.config.use_cache = False
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
    )
    servable(model, lora)
    try:
        with quiet_peft():
            return get_peft_model(model, lora)
    except ValueError as exc:
        raise PersonaError(f"target_modules {config.target_modules}: {_first_line(exc)}") from None


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
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    try:
        config = AutoConfig.from_pretrained(base)
    except (OSError, ValueError):
        return None
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with torch.device("meta"):
        return auto.from_config(config)


def merge_adapter(base: str, run_dir: Path, out: Path) -> Path:
    """A full model with the adapter folded in (serving without peft), saved with the tokenizer.
    It reloads base and adapter from disk: the same path a consumer of the run takes."""
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    with quiet_peft():
        model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base), run_dir).merge_and_unload()
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
