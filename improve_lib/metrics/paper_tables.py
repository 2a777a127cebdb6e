"""The IMPROVE paper's own numbers (Tables 3-6), from one data file: ``improve_lib/metrics/paper_numbers.yaml``.

Notebook 06 puts them beside this run's tables and notebook 08 draws them as reference lines; both read
them here, so a corrected value changes everywhere at once.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

PAPER_FILE = Path(__file__).with_name("paper_numbers.yaml")


@functools.cache
def paper_numbers() -> dict[str, Any]:
    """The whole file: ``{"tstr": {dataset: {...}}, "plausibility": {dataset: {...}}}``."""
    return yaml.safe_load(PAPER_FILE.read_text())


def tstr(dataset: str) -> dict[str, Any] | None:
    """Table 5 or 6 for ``dataset`` (``table`` and per metric ``{baseline, prototype, real}``), or None."""
    return paper_numbers()["tstr"].get(dataset)


def plausibility(dataset: str) -> dict[str, Any] | None:
    """Table 3 or 4 for ``dataset`` (``table``, ``baseline``, ``prototype``, ``per_class``), or None."""
    return paper_numbers()["plausibility"].get(dataset)


def paper_datasets() -> list[str]:
    """The datasets the paper reports, in the file's order."""
    return list(paper_numbers()["tstr"])
