"""Every parameter's domain, in one place: the values a run may take, checked before anything is written.

The notebooks' ``parameters`` cells give each parameter its default and type
(:mod:`improve_lib.core.notebook_parameters`); this table gives the numeric ones their range and the list
ones their length and items, so that NaN, infinity and impossible values (``P_UNCOND=nan``,
``NUM_PROCESSES=0``, ``RESOLUTION=100000``) stop a run with one line naming the key, the value and the
allowed range, before its folder exists (:func:`check_domains`, called by the pipeline's preflight and
by a sweep for every grid point). A test fails when a numeric parameter of any notebook has no entry here.
Text parameters with a fixed set of values are checked by the stage that reads them (``one_of``).
"""
from __future__ import annotations

import math
from typing import Any

from improve_lib.core.errors import StudyInputError

INF = math.inf
#: key -> (low, high, low_open, high_open): the closed or open interval a number must lie in.
#: Integers are counts, sizes or seeds; the upper bounds keep a typo from asking a laptop for the impossible.
#: The training config (:func:`improve_lib.diffusion.train.resolve_config`) checks its keys against this same table.
#: GRAD_CLIP 0 disables clipping; a run keeps at least one checkpoint, written at least every step.
NUMBERS: dict[str, tuple[float, float, bool, bool]] = {
    # 01
    "RESOLUTION": (8, 1024, False, False), "N_TRAIN": (1, 1_000_000, False, False),
    "N_TEST": (0, 1_000_000, False, False), "N_VALIDATION": (0, 1_000_000, False, False), "MIN_PER_CLASS": (1, 1_000_000, False, False),
    "SEED": (0, 2**32 - 1, False, False), "SPLIT_SEED": (0, 2**32 - 1, False, False),
    # 02-03
    "EMBED_BATCH_SIZE": (1, 4096, False, False), "K": (1, 1000, False, False), "GAMMA": (0, INF, True, True),
    "LAMBDA": (0, INF, False, True), "PROTO_EPOCHS": (1, 1_000_000, False, False),
    "PROTO_LR": (0, INF, True, True), "PROTO_BATCH_SIZE": (1, 1_000_000, False, False),
    # 04
    "NUM_PROCESSES": (1, 1024, False, False), "BASE_CHANNELS": (1, 1024, False, False),
    "LAYERS_PER_BLOCK": (1, 16, False, False), "NORM_GROUPS": (1, 1024, False, False),
    "DROPOUT": (0, 1, False, True), "COND_DIM": (1, 65536, False, False), "P_UNCOND": (0, 1, False, True),
    "LR": (0, INF, True, True), "WEIGHT_DECAY": (0, INF, False, True), "GRAD_CLIP": (0, INF, False, True),
    "WARMUP_STEPS": (0, 100_000_000, False, False), "EMA_DECAY": (0, 1, False, True),
    "NUM_TRAIN_TIMESTEPS": (2, 100_000, False, False), "SNR_GAMMA": (0, INF, True, True),
    "MAX_STEPS": (1, 100_000_000, False, False), "EPOCHS": (0, 1_000_000, True, False),
    "BATCH_SIZE": (1, 65536, False, False), "CHECKPOINT_EVERY": (1, 100_000_000, False, False),
    "KEEP_CHECKPOINTS": (1, 100_000, False, False), "SAMPLE_EVERY": (0, 100_000_000, False, False),
    "SAMPLE_STEPS": (1, 100_000, False, False), "SAMPLE_PER_CLASS": (1, 10_000, False, False),
    "PREVIEW_GUIDANCE_SCALE": (0, 100, False, False),
    # 04's run options (improve_lib.diffusion.train.RUN_OPTIONS): how a training runs, not what it computes
    "DATA_SHARDS": (1, 1024, False, False), "CPU_THREADS": (1, 1024, False, False),
    # 05
    "N_PER_CLASS": (1, 1_000_000, False, False), "STEPS": (1, 100_000, False, False), "ETA": (0, 1, False, False),
    "GUIDANCE_SCALE": (0, 100, False, False), "SAMPLE_BATCH_SIZE": (1, 65536, False, False),
    "DIAGNOSTIC_PER_CLASS": (0, 10_000, False, False),
    # 06
    "EVAL_EPOCHS": (1, 100_000, False, False), "EVAL_BATCH_SIZE": (1, 65536, False, False),
    "EVAL_LR": (0, INF, True, True), "N_BOOT": (1, 10_000_000, False, False),
    # 07
    "VALIDATION_PER_CLASS": (1, 100_000, False, False), "ROBUSTNESS_PER_CLASS": (0, 100_000, False, False),
    "REVIEW_PER_CLASS": (1, 1_000_000, False, False),
}
#: key -> (min length, max length, the domain of each item as in NUMBERS, or None for text items).
LISTS: dict[str, tuple[int, int, tuple[float, float, bool, bool] | None]] = {
    "ARMS": (1, 2, None), "CLASSES": (1, 1000, None), "CHANNEL_MULT": (1, 8, (1, 64, False, False)),
    "GUIDANCE_INTERVAL": (2, 2, (0, 1, False, False)), "EVAL_SEEDS": (1, 100, (0, 2**32 - 1, False, False)),
    "METRICS": (1, 1000, None),
}


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
    return f"{lo}, {hi}"


def _check_number(key: str, value: Any, domain: tuple[float, float, bool, bool], where: str) -> None:
    low, high, low_open, high_open = domain
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # the type check (check_types) names a value of the wrong type
    if not math.isfinite(value):
        raise StudyInputError(f"{where}{key}={value!r} is not a finite number; {key} takes a number in "
                              f"{_interval(*domain)}")
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        raise StudyInputError(f"{where}{key}={value!r} is outside {_interval(*domain)}, the values {key} takes")


def check_domains(params: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Raise naming the key, the value and the allowed range for the first parameter of ``params`` outside its
    domain (NaN and infinity included; None, "the notebook's own rule", always passes). Returns ``params``."""
    for key, value in params.items():
        if value is None:
            continue
        if key in NUMBERS:
            _check_number(key, value, NUMBERS[key], where)
        elif key in LISTS and isinstance(value, list):
            shortest, longest, items = LISTS[key]
            if not shortest <= len(value) <= longest:
                raise StudyInputError(f"{where}{key}={value!r} has {len(value)} item(s); {key} takes "
                                      + (f"{shortest}" if shortest == longest else f"{shortest} to {longest}"))
            if len(set(map(repr, value))) != len(value):
                raise StudyInputError(f"{where}{key}={value!r} repeats an item")
            for item in value:
                if items is not None:
                    _check_number(f"{key} item", item, items, where)
    return params
