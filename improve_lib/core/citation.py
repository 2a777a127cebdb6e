"""How to cite a study: this software and the works it rests on (the IMPROVE paper, the datasets), read from the
repository's ``CITATION.cff``, the one source for the model card, the report site and the README."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CFF = Path(__file__).resolve().parents[2] / "CITATION.cff"
#: where CITATION.cff cannot be read (a copy of the library without its repository)
FALLBACK = "Cite this software, the IMPROVE paper and the datasets as in `CITATION.cff` of the IMPROVE study's repository."


def _authors(entry: dict[str, Any]) -> str:
    names = [a.get("name") or " ".join(p for p in (a.get("given-names"), a.get("family-names")) if p)
             for a in entry.get("authors", [])]
    return ", ".join(n for n in names if n)


def _line(entry: dict[str, Any]) -> str:
    venue = entry.get("journal") or (entry.get("publisher") or {}).get("name")
    if venue and entry.get("volume"):
        venue += f" {entry['volume']}" + (f", {entry['start']}" if entry.get("start") else "")
    doi = f"https://doi.org/{entry['doi']}" if entry.get("doi") else entry.get("url")
    parts = [_authors(entry) + (f" ({entry['year']})" if entry.get("year") else ""), f"*{entry['title']}*", venue,
             doi, f"License: {entry['license']}" if entry.get("license") else None]
    return ". ".join(str(p).rstrip(".") for p in parts if p) + "."


def references(path: Path = CFF) -> list[str]:
    """One Markdown line per work to cite: this software first, then the references of ``CITATION.cff`` (the paper,
    the datasets with their licenses); ``[FALLBACK]`` where the file is absent."""
    if not path.is_file():
        return [FALLBACK]
    cff = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [_line(cff)] + [_line(ref) for ref in cff.get("references", [])]
