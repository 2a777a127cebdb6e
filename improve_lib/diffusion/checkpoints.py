"""Checkpoints of a training run: complete or ignored, resumed only under the same configuration, and
loaded without unpickling anything.

``models/<arm>/checkpoint-<step>/`` holds ``accelerator.save_state`` (model weights as safetensors; the
optimizer and the RNG states as torch files, which accelerate loads with ``weights_only=True``), the EMA
weights as ``ema.safetensors`` with its counters in ``ema.json`` (accelerate would pickle a registered EMA
object and unpickle it on resume: code hidden in a checkpoint someone sent would run), and, written last,
``training_state.json`` (step, the configuration that must not change, the model config). A folder
without that file was cut short by a kill and is ignored (and cleaned up once a later checkpoint is
complete). Resuming compares the stored configuration key by key and names the first that changed.
"""
from __future__ import annotations

import contextlib
import errno
import json
import re
import shutil
from pathlib import Path
from typing import Any

from diffusers.training_utils import EMAModel
from safetensors.torch import load_file

from improve_lib.core.errors import StudyInputError
from improve_lib.core.files import atomic_write_json, save_safetensors
from improve_lib.diffusion import training_objective

STATE_FILE = "training_state.json"
STATE_FORMAT = 1
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# A key added to the training config after a checkpoint was written counts as the value that reproduces
# what that checkpoint's code did (and only that value resumes it).
LEGACY_VALUES: dict[str, Any] = {"CLASS_EMBEDDING_COMBINE": "concat", "ATTENTION": False, **training_objective.LEGACY_VALUES}


def list_checkpoints(directory) -> list[tuple[int, Path, bool]]:
    """``(step, folder, complete)`` for each ``checkpoint-<step>`` under ``directory``, by step.

    A checkpoint is complete when its ``training_state.json`` exists: that file is written last."""
    out = []
    d = Path(directory)
    if d.is_dir():
        for p in d.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p, (p / STATE_FILE).is_file()))
    return sorted(out)


def latest_complete(directory) -> Path | None:
    """The newest complete checkpoint folder under ``directory``, or None."""
    complete = [p for _, p, c in list_checkpoints(directory) if c]
    return complete[-1] if complete else None


def check_resume(state_path: Path, new: dict[str, Any], ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read ``training_state.json`` and check that ``new`` (the resume keys of the run about to
    continue) equals the stored configuration but for the keys ``ignore``; returns the stored state.
    Raises naming the changed key, or the unreadable file."""
    try:
        state = json.loads(Path(state_path).read_text())
        old = state["resume_config"]
        int(state["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StudyInputError(f"checkpoint {state_path.parent} is corrupt: {state_path.name} is unreadable "
                              f"({exc}); delete that folder to resume from an earlier checkpoint") from None
    new = json.loads(json.dumps(new))  # compare as stored (tuples -> lists)
    old = {**{k: v for k, v in LEGACY_VALUES.items() if k in new and k not in old}, **old}
    for key in sorted((set(old) | set(new)) - set(ignore)):
        if old.get(key) != new.get(key):
            raise StudyInputError(
                f"cannot resume from {state_path.parent}: {key} changed from {old.get(key)!r} to {new.get(key)!r}. "
                f"Restore {key}, or train into a fresh folder (new RUN_DIR or ARM_NAME, or delete "
                f"{state_path.parent.parent})")
    return state


def mark_incomplete(path: Path) -> None:
    """Before a checkpoint folder is (over)written: it is incomplete until :func:`mark_complete`."""
    (Path(path) / STATE_FILE).unlink(missing_ok=True)


def mark_complete(path: Path, step: int, resume_config: dict[str, Any], model_config: dict[str, Any]) -> None:
    """Write ``training_state.json`` last: from now on the folder is a complete checkpoint."""
    # No wall-clock time in here: a rerun must reproduce the checkpoint byte for byte (manifest outputs).
    atomic_write_json(Path(path) / STATE_FILE, {"format": STATE_FORMAT, "step": int(step),
                                                "resume_config": resume_config, "model_config": model_config})


def prune(out_dir, keep: int, current: int) -> None:
    """Keep the newest ``keep`` complete checkpoints; drop older ones and stale incomplete ones."""
    ckpts = list_checkpoints(out_dir)
    complete = [p for s, p, c in ckpts if c]
    for p in complete[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    for s, p, c in ckpts:
        if not c and s < current:
            shutil.rmtree(p, ignore_errors=True)


EMA_WEIGHTS, EMA_STATE = "ema.safetensors", "ema.json"


def save_ema(ema: EMAModel, folder: Path) -> None:
    """The EMA weights as safetensors and its counters as JSON: nothing in a checkpoint is a pickle."""
    state = ema.state_dict()
    save_safetensors({f"shadow.{i}": t for i, t in enumerate(state["shadow_params"])}, Path(folder) / EMA_WEIGHTS)
    atomic_write_json(Path(folder) / EMA_STATE, {k: v for k, v in state.items() if k != "shadow_params"})


def load_ema(ema: EMAModel, folder: Path, device) -> None:
    """Restore :func:`save_ema`'s files into ``ema`` (on ``device``); a checkpoint without them (written by
    an older version, whose EMA was pickled) is refused rather than unpickled."""
    weights, counters = Path(folder) / EMA_WEIGHTS, Path(folder) / EMA_STATE
    if not weights.is_file() or not counters.is_file():
        raise StudyInputError(f"checkpoint {folder} has no {EMA_WEIGHTS}/{EMA_STATE} (an older checkpoint keeps its EMA "
                              f"in a pickle, which is never loaded); delete it to train this arm from the start")
    shadow = load_file(str(weights))
    params = [shadow[f"shadow.{i}"].to(device) for i in range(len(shadow))]
    if len(params) != len(ema.shadow_params) or any(a.shape != b.shape for a, b in zip(params, ema.shadow_params)):
        raise StudyInputError(f"checkpoint {folder}: {EMA_WEIGHTS} does not match the model's parameters")
    ema.load_state_dict({**json.loads(counters.read_text()), "shadow_params": params})


def refuse_pickled_state(folder: Path) -> None:
    """A checkpoint holding accelerate's pickled custom state (``custom_checkpoint_*.pkl``: an older version
    kept its EMA there, or someone planted it) is refused before anything in it is read."""
    pickles = sorted(p.name for p in Path(folder).glob("custom_checkpoint_*.pkl"))
    if pickles:
        raise StudyInputError(f"checkpoint {folder} holds pickled state {pickles}, which this project never "
                              f"unpickles (it could run code): delete that folder to resume from an earlier checkpoint")


@contextlib.contextmanager
def disk_errors(path: Path, previous: Path | None):
    """A full disk while writing checkpoint ``path`` becomes a clear error saying where training resumes
    (``previous``, the last complete checkpoint); ``path`` stays incomplete and is ignored on resume.
    torch reports a full disk as a RuntimeError of its zip writer, not as ENOSPC, so the free space is
    looked at whenever writing fails."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
        folder = next((p for p in Path(path).parents if p.exists()), Path("/"))
        if not (full or shutil.disk_usage(folder).free < LOW_SPACE):
            raise
        raise StudyInputError(f"no space left on the disk while writing {path} ({exc}): free some space and run "
                              f"again; training resumes from {previous or 'the first step'}") from None


LOW_SPACE = 16 * 2 ** 20  # bytes: below this a failed write counts as a full disk
