"""Atomic file writes: a killed run never leaves a file that later reads as valid."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from improve_lib.core import run_layout
from improve_lib.core.errors import StudyInputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsync'd and renamed onto ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def load_state_dict_file(path: str | os.PathLike, what: str) -> dict:
    """Read a local weights file (.safetensors, or a torch .pt/.pth/.bin state dict) into ``{key: tensor}``.

    Unwraps ``state_dict`` / ``model`` / ``module`` wrappers and DataParallel's ``module.`` key prefix.
    Torch files load with ``weights_only=True``: a checkpoint from elsewhere must not run pickled code.
    ``what`` names the parameter in error messages (e.g. ``"ENCODER"``, ``"CLASSIFIER_WEIGHTS"``).
    """
    path = Path(path)
    if not path.is_file():
        raise StudyInputError(f"{what}: weights file {path} not found (expected a .safetensors or .pt/.pth state dict)")
    try:
        if path.suffix.lower() == ".safetensors":
            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch/safetensors/pickle raise many types
        raise StudyInputError(f"{what}: cannot read weights file {path} ({type(exc).__name__}: {exc}); expected "
                              f"a safetensors file or a torch state dict (TorchScript archives are not supported)") from None
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(sd, dict) and isinstance(sd.get(wrapper), dict):
            sd = sd[wrapper]
    if not isinstance(sd, dict) or not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise StudyInputError(f"{what}: weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write a safetensors file atomically and byte-reproducibly: the same tensors and metadata give the same
    bytes (safetensors writes its header's metadata in a random order; here the header is sorted)."""
    raw = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    n = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to 8 bytes with spaces
    with atomic_path(path) as tmp:
        tmp.write_bytes(len(header).to_bytes(8, "little") + header + raw[8 + n:])
    return Path(path)


#: A cell starting with one of these is a formula to Excel and LibreOffice (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(text) -> str:
    """A comment as one CSV cell that a spreadsheet shows as text: line breaks become spaces, and a leading
    ``= + - @`` (which Excel and LibreOffice would evaluate as a formula) is escaped with an apostrophe."""
    text = str(text or "").replace("\r", " ").replace("\n", " ")
    return "'" + text if text[:1] in FORMULA_STARTS else text


def spreadsheet_safe_frame(df: pd.DataFrame, keep: tuple[str, ...] = ()) -> pd.DataFrame:
    """``df`` with every text cell that a spreadsheet would run as a formula (``=HYPERLINK(...)``, ``@SUM``,
    ``-2+3``) escaped with a leading apostrophe, except in the columns ``keep`` (read back by the study)."""
    out = df.copy()
    for col in out.columns:
        if col in keep or not (pd.api.types.is_object_dtype(out[col]) or pd.api.types.is_string_dtype(out[col])):
            continue
        out[col] = [("'" + v) if isinstance(v, str) and len(v) > 1 and v[:1] in FORMULA_STARTS else v
                    for v in out[col]]
    return out


def save_table(df: pd.DataFrame, run_dir: str | Path, name: str) -> dict[str, Path]:
    """Write ``tables/<name>.csv`` (formula-like text escaped) and ``tables/<name>.md`` atomically."""
    out = run_layout.tables_dir(run_dir)
    paths = {"csv": out / f"{name}.csv", "md": out / f"{name}.md"}
    with atomic_path(paths["csv"]) as tmp:
        spreadsheet_safe_frame(df).to_csv(tmp, index=False)
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(df.to_markdown(index=False, floatfmt=".2f") + "\n")
    return paths
