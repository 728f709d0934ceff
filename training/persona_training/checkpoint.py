"""Training checkpoints: everything needed to continue a run as if it had never stopped.

A checkpoint holds the trainable (LoRA) weights, the optimizer, scheduler and gradient-scaler
states, the RNG states and the loop's position (`Progress`). The frozen base is not saved: it
is reloaded from the same `--base`. Checkpoints are written to a temporary directory and
renamed into place, so a pod killed mid-write leaves the previous checkpoint intact.

Checkpoints live in the shared, writable store, so they are read with `weights_only=True`:
tensors and plain data only. A file that carries any other pickled object (code to run on
`--resume`) is refused, never executed.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from personafleet.errors import PersonaError

CHECKPOINTS = "checkpoints"
STATE_FILE = "state.pt"


@dataclass
class Progress:
    """Where the loop is, and what it has measured so far."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch: int = 0  # next batch of the epoch's (deterministic) batch list
    samples: int = 0
    train_seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss of the step)
    evals: list[tuple[int, float]] = field(default_factory=list)  # (step, validation loss)
    before: dict[str, float] = field(default_factory=dict)  # validation before any training


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted(checkpoint_dir(run_dir).glob("step-*/" + STATE_FILE))
    return found[-1].parent if found else None


def save_checkpoint(run_dir: Path, model, optimizer, scheduler, scaler, progress: Progress,
                    identity: dict[str, Any]) -> Path:
    """Write the checkpoint for `progress.step` and drop the older ones."""
    import torch

    root = checkpoint_dir(run_dir)
    final = root / f"step-{progress.step:08d}"
    partial = root / f".{final.name}.partial"
    if (final / STATE_FILE).exists():  # this step is saved already (a resumed run ending where it stopped)
        return final
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    state = {
        "identity": identity,
        "progress": asdict(progress),
        "trainable": {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    torch.save(state, partial / STATE_FILE)
    os.replace(partial, final)
    for older in root.glob("step-*"):
        if older != final:
            shutil.rmtree(older, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler, scaler, identity: dict[str, Any]) -> Progress:
    """Restore a checkpoint into freshly built objects; refuse one made for another run."""
    import torch

    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise PersonaError(
            f"{path / STATE_FILE}: refused: a checkpoint holds tensors and plain data only "
            f"({_unpickling_reason(exc)}); remove {path.parent} or drop --resume"
        ) from exc
    if state["identity"] != identity:
        changed = sorted(k for k in identity if state["identity"].get(k) != identity[k])
        raise PersonaError(
            f"{path}: checkpoint belongs to a different run (changed: {', '.join(changed)}); "
            f"drop --resume or remove {path.parent}"
        )
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["trainable"].items():
            parameters[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    progress = Progress(**state["progress"])
    progress.losses = [tuple(item) for item in progress.losses]
    progress.evals = [tuple(item) for item in progress.evals]
    return progress


def _unpickling_reason(exc: pickle.UnpicklingError) -> str:
    """The one line of torch's many-line refusal that names what the file tried to load."""
    found = re.search(r"WeightsUnpickler error: (.*?)(?: Please use|\n|$)", str(exc))
    return found[1].strip().rstrip(".") if found else str(exc).splitlines()[0]


def clear_checkpoints(run_dir: Path) -> None:
    shutil.rmtree(checkpoint_dir(run_dir), ignore_errors=True)
